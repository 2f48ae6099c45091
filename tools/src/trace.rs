//! Traces (docs/TRACES.md): the spans nodes record, gathered onto one time line and written in
//! the Chrome trace-event format (JSON), which Perfetto's UI and chrome://tracing open. Each
//! node is a process; each of its CPUs a thread of task spans; its evaluations, network work,
//! jobs and store each a group of threads ("lanes"), as many as their spans overlap, so that
//! every track's spans nest properly.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use cairn_proto::trace::{Span, SpanKind};
use serde_json::{Value, json};

use crate::client::Client;

/// One node's spans, with what puts its clock on the trace's.
#[derive(Clone, Debug)]
pub struct NodeTrace {
    pub name: String,
    pub spans: Vec<Span>,
    pub clock: Clock,
    /// Spans the node wrote over before they were read.
    pub lost: u64,
}

/// A node's clock (microseconds since it booted) put on the trace's: two readings of both,
/// taken before and after the job, between which time maps linearly, so that a node clock that
/// runs a little fast or slow (its rate measured at boot, under emulation) is corrected too.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub node_us: (u64, u64),
    pub trace_us: (i64, i64),
}

impl Clock {
    /// The node's clock is the trace's.
    pub fn same() -> Clock {
        Clock { node_us: (0, 1), trace_us: (0, 1) }
    }

    pub fn map(&self, node_us: u64) -> i64 {
        let (n0, n1) = self.node_us;
        let (t0, t1) = self.trace_us;
        if n1 <= n0 {
            return node_us as i64 - n0 as i64 + t0;
        }
        let rate = (t1 - t0) as f64 / (n1 - n0) as f64;
        t0 + ((node_us as i64 - n0 as i64) as f64 * rate).round() as i64
    }
}

/// A node's clock and the trace's at one moment (microseconds).
pub type Reading = (u64, i64);
/// What one TRACE answered: the next sequence number, spans lost, and spans.
type Answer = (u64, u64, Vec<Span>);

/// A reading of a node's clock against `epoch`'s, at the middle of a TRACE's round trip, and
/// what the TRACE of `since` answered.
fn reading(client: &mut Client, epoch: Instant, since: u64) -> anyhow::Result<(Reading, Answer)> {
    let before = epoch.elapsed().as_micros() as i64;
    let (now_us, next, lost, spans) = client.trace(since)?;
    let after = epoch.elapsed().as_micros() as i64;
    Ok(((now_us, (before + after) / 2), (next, lost, spans)))
}

/// Where a node's trace stands now: the next sequence number, and a reading of its clock.
pub fn cursor(client: &mut Client, epoch: Instant) -> anyhow::Result<(u64, Reading)> {
    let (clock, (next, _, _)) = reading(client, epoch, u64::MAX)?;
    Ok((next, clock))
}

/// Every span a node recorded from `since` on, read a frame at a time; the spans lost; and a
/// second reading of its clock, to pair with `cursor`'s.
pub fn spans_since(
    client: &mut Client,
    epoch: Instant,
    since: u64,
) -> anyhow::Result<(Vec<Span>, u64, Reading)> {
    let (clock, first) = reading(client, epoch, since)?;
    let (mut spans, mut at, mut lost) = (Vec::new(), since, 0);
    let mut answer = Some(first);
    loop {
        let (next, missed, more) = match answer.take() {
            Some(first) => first,
            None => {
                let (_, next, missed, more) = client.trace(at)?;
                (next, missed, more)
            }
        };
        lost += missed;
        if more.is_empty() || next <= at {
            return Ok((spans, lost, clock));
        }
        spans.extend(more);
        at = next;
    }
}

/// The lane group a span goes to (after the CPUs' own), and its name.
fn group(kind: SpanKind) -> (u32, &'static str) {
    match kind {
        SpanKind::Task => (0, "cpu"),
        SpanKind::Eval => (1, "evaluations"),
        SpanKind::Put | SpanKind::Fetch | SpanKind::Relocate => (2, "network"),
        SpanKind::Job | SpanKind::Coordinate => (3, "jobs"),
        SpanKind::Evict => (4, "store"),
    }
}

fn address(peer: [u8; 4]) -> String {
    let [a, b, c, d] = peer;
    format!("{a}.{b}.{c}.{d}")
}

/// The trace-event JSON of `nodes`' spans: timestamps in microseconds from the earliest span.
pub fn chrome_json(nodes: &[NodeTrace]) -> Value {
    let start = nodes.iter().flat_map(|n| n.spans.iter().map(|s| n.clock.map(s.begin_us))).min().unwrap_or(0);
    let mut events = Vec::new();
    for (pid, node) in nodes.iter().enumerate() {
        events.push(
            json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": node.name}}),
        );
        let mut spans = node.spans.clone();
        spans.sort_by_key(|s| (s.begin_us, std::cmp::Reverse(s.dur_us)));
        // Per track, the end of its last span: a span goes to the first lane of its group (or
        // its CPU) that is free by its start.
        let mut lanes: BTreeMap<(u32, u32), Vec<u64>> = BTreeMap::new();
        let mut named: BTreeMap<u32, String> = BTreeMap::new();
        for span in &spans {
            let (group, group_name) = group(span.kind);
            let key = if span.kind == SpanKind::Task { (0, u32::from(span.cpu)) } else { (group, 0) };
            let ends = lanes.entry(key).or_default();
            let end = span.begin_us + span.dur_us;
            let lane = match ends.iter().position(|e| *e <= span.begin_us) {
                Some(lane) => {
                    ends[lane] = end;
                    lane
                }
                None => {
                    ends.push(end);
                    ends.len() - 1
                }
            } as u32;
            let tid =
                if span.kind == SpanKind::Task { key.1 * 100 + lane } else { 100_000 + group * 100 + lane };
            named.entry(tid).or_insert_with(|| match (span.kind, lane) {
                (SpanKind::Task, 0) => format!("cpu {}", span.cpu),
                (SpanKind::Task, lane) => format!("cpu {} ({})", span.cpu, lane + 1),
                (_, 0) => group_name.to_string(),
                (_, lane) => format!("{group_name} ({})", lane + 1),
            });
            let mut args = serde_json::Map::new();
            if let Some(h) = &span.handle {
                args.insert("handle".into(), json!(h.to_string()));
            }
            if !span.ok {
                args.insert("failed".into(), json!(true));
            }
            match span.kind {
                SpanKind::Eval => {
                    args.insert("tasks_run".into(), json!(span.count));
                    args.insert("memo_hits".into(), json!(span.bytes));
                }
                SpanKind::Fetch | SpanKind::Relocate => {
                    args.insert("peer".into(), json!(address(span.peer)));
                    args.insert("objects".into(), json!(span.count));
                    args.insert("bytes".into(), json!(span.bytes));
                }
                SpanKind::Put | SpanKind::Evict => {
                    args.insert("bytes".into(), json!(span.bytes));
                    args.insert("objects".into(), json!(span.count.max(1)));
                }
                SpanKind::Job => {
                    args.insert("io_requests".into(), json!(span.count));
                }
                SpanKind::Coordinate => {
                    args.insert("tasks".into(), json!(span.count));
                }
                SpanKind::Task => {}
            }
            let ts = (node.clock.map(span.begin_us) - start).max(0);
            let dur = node.clock.map(span.begin_us + span.dur_us) - node.clock.map(span.begin_us);
            let mut event = json!({
                "name": span.kind.name(),
                "cat": group_name,
                "pid": pid,
                "tid": tid,
                "ts": ts,
                "args": args,
            });
            if span.dur_us == 0 {
                event["ph"] = json!("i");
                event["s"] = json!("t");
            } else {
                event["ph"] = json!("X");
                event["dur"] = json!(dur.max(0));
            }
            events.push(event);
        }
        for (tid, name) in named {
            events.push(
                json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}),
            );
            events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}}));
        }
    }
    let lost: u64 = nodes.iter().map(|n| n.lost).sum();
    json!({"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"lost_spans": lost}})
}

/// Checks `trace` against the format's rules as this tool writes it: every event has a known
/// phase, a process and a thread; spans and instants have timestamps in microseconds (whole,
/// not negative); spans have a duration; and on each track spans nest properly (one that starts
/// inside another ends inside it too).
pub fn validate(trace: &Value) -> anyhow::Result<()> {
    let Some(events) = trace["traceEvents"].as_array() else { bail!("no traceEvents array") };
    let mut tracks: BTreeMap<(u64, u64), Vec<(u64, u64)>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let (Some(pid), Some(tid)) = (e["pid"].as_u64(), e["tid"].as_u64()) else {
            bail!("event {i} has no whole pid and tid: {e}")
        };
        if !e["name"].is_string() {
            bail!("event {i} has no name: {e}");
        }
        match e["ph"].as_str() {
            Some("M") => {
                if !e["args"].is_object() {
                    bail!("metadata event {i} has no args: {e}");
                }
            }
            Some(ph @ ("X" | "i")) => {
                let Some(ts) = e["ts"].as_u64() else {
                    bail!("event {i} has no timestamp in whole microseconds: {e}")
                };
                if ph == "i" {
                    if !matches!(e["s"].as_str(), Some("t" | "p" | "g")) {
                        bail!("instant {i} has no scope: {e}");
                    }
                    continue;
                }
                let Some(dur) = e["dur"].as_u64() else {
                    bail!("span {i} has no duration in whole microseconds: {e}")
                };
                tracks.entry((pid, tid)).or_default().push((ts, ts + dur));
            }
            _ => bail!("event {i} has a phase this trace does not use: {e}"),
        }
    }
    for ((pid, tid), mut spans) in tracks {
        spans.sort_by_key(|&(begin, end)| (begin, std::cmp::Reverse(end)));
        let mut open: Vec<u64> = Vec::new();
        for (begin, end) in spans {
            while open.last().is_some_and(|&e| e <= begin) {
                open.pop();
            }
            if let Some(&outer) = open.last()
                && end > outer
            {
                bail!(
                    "on process {pid} thread {tid} a span from {begin} to {end} us overlaps one that ends at {outer} us"
                );
            }
            open.push(end);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: SpanKind, cpu: u8, begin_us: u64, dur_us: u64) -> Span {
        Span::new(kind, cpu, begin_us, dur_us)
    }

    #[test]
    fn overlapping_spans_get_lanes_of_their_own_and_the_result_is_valid() {
        let node = NodeTrace {
            name: "node 0".into(),
            clock: Clock { node_us: (0, 1_000_000), trace_us: (1000, 1_001_000) },
            lost: 0,
            spans: vec![
                span(SpanKind::Eval, 0, 100, 500),
                span(SpanKind::Eval, 0, 200, 500), // overlaps the first: a second lane
                span(SpanKind::Task, 1, 120, 50),
                span(SpanKind::Task, 1, 170, 30),
                span(SpanKind::Task, 2, 120, 80),
                span(SpanKind::Put, 0, 130, 0),
                span(SpanKind::Fetch, 0, 140, 20),
            ],
        };
        let other = NodeTrace {
            name: "node 1".into(),
            clock: Clock::same(),
            lost: 2,
            spans: vec![span(SpanKind::Task, 0, 1050, 10)],
        };
        let trace = chrome_json(&[node, other]);
        validate(&trace).unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        let evals: Vec<u64> =
            events.iter().filter(|e| e["name"] == "eval").map(|e| e["tid"].as_u64().unwrap()).collect();
        assert_eq!(evals.len(), 2);
        assert_ne!(evals[0], evals[1], "overlapping evaluations on lanes of their own");
        // Node 0's clock is 1000 us behind the trace's: its first span (at 100) comes 50 us
        // after node 1's task at 1050, the earliest, which is the trace's start.
        let first = events.iter().find(|e| e["name"] == "eval").unwrap();
        assert_eq!(first["ts"], 50);
        let earliest = events.iter().find(|e| e["pid"] == 1 && e["ph"] == "X").unwrap();
        assert_eq!(earliest["ts"], 0);
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        for name in ["cpu 1", "cpu 2", "evaluations", "evaluations (2)", "network"] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert_eq!(trace["otherData"]["lost_spans"], 2);
    }

    #[test]
    fn a_node_clock_running_fast_is_put_on_the_trace_linearly() {
        // The node counted 1,100,000 us while the host counted 1,000,000: 10 % fast.
        let clock = Clock { node_us: (5_000_000, 6_100_000), trace_us: (200, 1_000_200) };
        assert_eq!(clock.map(5_000_000), 200);
        assert_eq!(clock.map(5_550_000), 500_200);
        assert_eq!(clock.map(6_100_000), 1_000_200);
        // One reading only (or two alike): an offset.
        let once = Clock { node_us: (5_000_000, 5_000_000), trace_us: (200, 200) };
        assert_eq!(once.map(5_000_100), 300);
    }

    #[test]
    fn the_validator_catches_what_breaks_the_format() {
        let bad = |events: Value| validate(&json!({ "traceEvents": events })).unwrap_err().to_string();
        assert!(bad(json!([{"ph": "X", "name": "a", "pid": 0, "tid": 0, "ts": 1}])).contains("no duration"));
        assert!(
            bad(json!([{"ph": "X", "name": "a", "pid": 0, "tid": 0, "ts": 1.5, "dur": 1}]))
                .contains("timestamp")
        );
        assert!(bad(json!([{"ph": "B", "name": "a", "pid": 0, "tid": 0, "ts": 1}])).contains("phase"));
        assert!(bad(json!([{"ph": "i", "name": "a", "pid": 0, "tid": 0, "ts": 1}])).contains("scope"));
        let overlapping = json!([
            {"ph": "X", "name": "a", "pid": 0, "tid": 0, "ts": 0, "dur": 10},
            {"ph": "X", "name": "b", "pid": 0, "tid": 0, "ts": 5, "dur": 10},
        ]);
        assert!(bad(overlapping).contains("overlaps"));
        let nested = json!([
            {"ph": "X", "name": "a", "pid": 0, "tid": 0, "ts": 0, "dur": 10},
            {"ph": "X", "name": "b", "pid": 0, "tid": 0, "ts": 2, "dur": 3},
            {"ph": "X", "name": "c", "pid": 0, "tid": 0, "ts": 10, "dur": 3},
        ]);
        validate(&json!({ "traceEvents": nested })).unwrap();
    }
}
