//! Trace spans (docs/TRACES.md): what a node records of its work (a task run, an evaluation,
//! an upload, a fetch, ...), in a ring of fixed size, and how spans travel: fixed-size records
//! in a TRACED frame, or as one object a node without a network sends its host.

use alloc::vec::Vec;

use cairn_object::Handle;

/// What a span is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SpanKind {
    /// One application on one CPU (`handle`: the thunk as applied; `ok`: it gave a value).
    Task = 1,
    /// One evaluation (an EVAL; `handle`: its root; `count`: tasks run; `bytes`: memo hits).
    Eval = 2,
    /// An object stored from a client or peer (`handle`, `bytes`).
    Put = 3,
    /// Objects fetched from a peer (`peer`, `count` objects, `bytes`).
    Fetch = 4,
    /// A thunk run on a peer (`peer`, `handle`).
    Relocate = 5,
    /// A job with IO (`handle`: the job; `count`: IO requests performed).
    Job = 6,
    /// Objects the store let go of for room (`count`, `bytes`).
    Evict = 7,
    /// A job coordinated across the cluster (`handle`: its root; `count`: tasks).
    Coordinate = 8,
}

impl SpanKind {
    pub const ALL: [SpanKind; 8] = [
        SpanKind::Task,
        SpanKind::Eval,
        SpanKind::Put,
        SpanKind::Fetch,
        SpanKind::Relocate,
        SpanKind::Job,
        SpanKind::Evict,
        SpanKind::Coordinate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Task => "task",
            SpanKind::Eval => "eval",
            SpanKind::Put => "put",
            SpanKind::Fetch => "fetch",
            SpanKind::Relocate => "relocate",
            SpanKind::Job => "job",
            SpanKind::Evict => "evict",
            SpanKind::Coordinate => "coordinate",
        }
    }

    fn from_u8(v: u8) -> Option<SpanKind> {
        SpanKind::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

/// One span: when (microseconds since the node booted), where (the CPU), and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub kind: SpanKind,
    pub cpu: u8,
    pub ok: bool,
    pub begin_us: u64,
    /// 0 for an instant.
    pub dur_us: u64,
    pub bytes: u64,
    pub count: u64,
    pub peer: [u8; 4],
    pub handle: Option<Handle>,
}

impl Span {
    pub fn new(kind: SpanKind, cpu: u8, begin_us: u64, dur_us: u64) -> Span {
        Span { kind, cpu, ok: true, begin_us, dur_us, bytes: 0, count: 0, peer: [0; 4], handle: None }
    }
}

/// Bytes of one encoded span.
pub const SPAN_LEN: usize = 4 + 4 * 8 + 4 + Handle::LEN;

/// Appends `span` to `out`: kind, CPU, flags (bit 0 ok, bit 1 has a handle), a zero byte, the
/// four counts little-endian, the peer, and the handle (zeros if none).
pub fn encode_span(span: &Span, out: &mut Vec<u8>) {
    out.push(span.kind as u8);
    out.push(span.cpu);
    out.push(u8::from(span.ok) | u8::from(span.handle.is_some()) << 1);
    out.push(0);
    for v in [span.begin_us, span.dur_us, span.bytes, span.count] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&span.peer);
    match &span.handle {
        Some(h) => out.extend_from_slice(h.as_bytes()),
        None => out.extend_from_slice(&[0; Handle::LEN]),
    }
}

/// Decodes spans back to back; an error names the first record that is not one.
pub fn decode_spans(bytes: &[u8]) -> Result<Vec<Span>, &'static str> {
    if !bytes.len().is_multiple_of(SPAN_LEN) {
        return Err("not a whole number of spans");
    }
    bytes.chunks(SPAN_LEN).map(decode_span).collect()
}

fn decode_span(r: &[u8]) -> Result<Span, &'static str> {
    let kind = SpanKind::from_u8(r[0]).ok_or("unknown span kind")?;
    if r[2] & !0b11 != 0 || r[3] != 0 {
        return Err("reserved span bits set");
    }
    let u64_at = |at: usize| u64::from_le_bytes(r[at..at + 8].try_into().expect("8 bytes"));
    let handle = match r[2] & 2 {
        // One encoding per span: without a handle its bytes are zeros, so that no corrupted
        // byte there passes unnoticed.
        0 if r[40..40 + Handle::LEN].iter().any(|b| *b != 0) => {
            return Err("a span without a handle has handle bytes");
        }
        0 => None,
        _ => Some(Handle::from_bytes(&r[40..40 + Handle::LEN]).map_err(|_| "a span's handle is malformed")?),
    };
    Ok(Span {
        kind,
        cpu: r[1],
        ok: r[2] & 1 != 0,
        begin_us: u64_at(4),
        dur_us: u64_at(12),
        bytes: u64_at(20),
        count: u64_at(28),
        peer: r[36..40].try_into().expect("4 bytes"),
        handle,
    })
}

/// Spans one TRACED frame holds, with room for its header.
pub const SPANS_PER_FRAME: usize = (crate::MAX_FRAME - 64) / SPAN_LEN;

/// The last spans recorded, in a ring of fixed size: when it is full the oldest go. Each span
/// has a sequence number, so a reader asks for what came after what it has, and learns how many
/// it missed.
#[derive(Debug)]
pub struct Ring {
    spans: Vec<Span>,
    /// The sequence number the next span gets.
    next: u64,
}

impl Ring {
    /// A ring of `capacity` spans, its memory taken now; none if there is no room for it.
    pub fn with_capacity(capacity: usize) -> Option<Ring> {
        let mut spans = Vec::new();
        spans.try_reserve_exact(capacity.max(1)).ok()?;
        Some(Ring { spans, next: 0 })
    }

    pub fn record(&mut self, span: Span) {
        let capacity = self.spans.capacity();
        let at = (self.next % capacity as u64) as usize;
        if at < self.spans.len() {
            self.spans[at] = span;
        } else {
            self.spans.push(span);
        }
        self.next += 1;
    }

    /// The sequence number the next span will get.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Up to `max` spans from sequence number `since` on: the spans, the sequence number after
    /// the last one given, and how many between `since` and the first given were lost (written
    /// over).
    pub fn read(&self, since: u64, max: usize) -> (Vec<Span>, u64, u64) {
        let capacity = self.spans.capacity() as u64;
        let oldest = self.next.saturating_sub(capacity);
        let from = since.clamp(oldest, self.next);
        let lost = from - since.min(from);
        let to = self.next.min(from.saturating_add(max as u64));
        let spans = (from..to).map(|seq| self.spans[(seq % capacity) as usize]).collect();
        (spans, to, lost)
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn span(i: u64) -> Span {
        Span {
            count: i,
            handle: (i % 2 == 0).then(|| Handle::blob(&[i as u8; 64])),
            ..Span::new(SpanKind::Task, 1, i, 2)
        }
    }

    #[test]
    fn spans_round_trip_and_bad_records_are_named() {
        let spans: Vec<Span> = (0..5).map(span).collect();
        let mut bytes = Vec::new();
        for s in &spans {
            encode_span(s, &mut bytes);
        }
        assert_eq!(bytes.len(), 5 * SPAN_LEN);
        assert_eq!(decode_spans(&bytes).unwrap(), spans);
        assert_eq!(decode_spans(&bytes[1..]), Err("not a whole number of spans"));
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert_eq!(decode_spans(&bad), Err("unknown span kind"));
        bad[0] = 1;
        bad[2] = 4;
        assert_eq!(decode_spans(&bad), Err("reserved span bits set"));
        // Span 1 has no handle: a byte where one would be is refused, not ignored.
        let mut bad = bytes.clone();
        bad[SPAN_LEN + 60] = 1;
        assert_eq!(decode_spans(&bad), Err("a span without a handle has handle bytes"));
    }

    #[test]
    fn the_ring_keeps_the_last_spans_and_counts_what_a_reader_missed() {
        let mut ring = Ring::with_capacity(4).unwrap();
        for i in 0..3 {
            ring.record(span(i));
        }
        let (spans, next, lost) = ring.read(0, 10);
        assert_eq!((spans.iter().map(|s| s.count).collect::<Vec<_>>(), next, lost), (vec![0, 1, 2], 3, 0));
        for i in 3..10 {
            ring.record(span(i));
        }
        // Spans 0 to 5 were written over; a reader at 1 missed 5 of them.
        let (spans, next, lost) = ring.read(1, 10);
        assert_eq!(
            (spans.iter().map(|s| s.count).collect::<Vec<_>>(), next, lost),
            (vec![6, 7, 8, 9], 10, 5)
        );
        // In pieces, and nothing past the end.
        let (spans, next, _) = ring.read(6, 3);
        assert_eq!((spans.len(), next), (3, 9));
        assert_eq!(ring.read(10, 5), (vec![], 10, 0));
        assert_eq!(ring.read(u64::MAX, 5), (vec![], 10, 0), "a reader ahead of the ring gets nothing");
    }
}
