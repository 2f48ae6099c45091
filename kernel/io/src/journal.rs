//! The journal of a job: every IO request it made, the response (an object) and when. A text
//! blob, so that it is itself content-addressed and can be read by people (docs/IO.md):
//!
//! ```text
//! cairn-journal 1
//! job tree:…
//! io 1795708800123 http.get thunk:… blob:…
//! result blob:…
//! ```

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use cairn_object::Handle;
use cairn_object::io::Effect;

const MAGIC: &str = "cairn-journal 1";

/// The most entries a journal may have: a job's IO requests are applications, and no node
/// allows more than this many in one evaluation by default. A longer journal is refused before
/// it takes memory.
pub const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// When the response arrived: ms since the Unix epoch by the node's real-time clock (its
    /// uptime in ms if it has none).
    pub at_ms: u64,
    pub effect: Effect,
    /// The IO request as applied (its arguments evaluated).
    pub request: Handle,
    pub response: Handle,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Journal {
    pub job: Handle,
    entries: Vec<Entry>,
    /// Request → its entry: a replay looks every request up, and must not scan for each.
    index: BTreeMap<Handle, usize>,
    /// The job's value, once it has one (a failed job has none).
    pub result: Option<Handle>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalError {
    pub line: usize,
    pub why: String,
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "journal line {}: {}", self.line, self.why)
    }
}

impl Journal {
    pub fn new(job: Handle) -> Journal {
        Journal { job, entries: Vec::new(), index: BTreeMap::new(), result: None }
    }

    /// The recorded response to `request`.
    pub fn answer(&self, request: &Handle) -> Option<&Entry> {
        self.index.get(request).and_then(|&i| self.entries.get(i))
    }

    /// Every entry, in the order the requests were made.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Records `entry` unless its request is answered already; false if it was, or if the
    /// journal holds [`MAX_ENTRIES`] (or the memory for one more is not there).
    pub fn record(&mut self, entry: Entry) -> bool {
        if self.index.contains_key(&entry.request)
            || self.entries.len() >= MAX_ENTRIES
            || self.entries.try_reserve(1).is_err()
        {
            return false;
        }
        self.index.insert(entry.request, self.entries.len());
        self.entries.push(entry);
        true
    }

    /// The journal without entry `i` (for tests of replays that lack an answer).
    pub fn without_entry(&self, i: usize) -> Journal {
        let mut out = Journal::new(self.job);
        for (j, e) in self.entries.iter().enumerate() {
            if j != i {
                out.record(e.clone());
            }
        }
        out.result = self.result;
        out
    }

    /// Every object a replay needs besides the job's own inputs: the responses.
    pub fn responses(&self) -> impl Iterator<Item = Handle> + '_ {
        self.entries.iter().map(|e| e.response)
    }

    pub fn encode(&self) -> String {
        let mut out = format!("{MAGIC}\njob {}\n", self.job);
        for e in &self.entries {
            out.push_str(&format!("io {} {} {} {}\n", e.at_ms, e.effect, e.request, e.response));
        }
        if let Some(result) = self.result {
            out.push_str(&format!("result {result}\n"));
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Journal, JournalError> {
        let err = |line: usize, why: String| JournalError { line, why };
        let text = core::str::from_utf8(bytes).map_err(|_| err(0, "not UTF-8".into()))?;
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, MAGIC)) => {}
            _ => return Err(err(1, format!("expected `{MAGIC}`"))),
        }
        let handle = |line: usize, text: &str| -> Result<Handle, JournalError> {
            text.parse::<Handle>().map_err(|e| err(line, format!("`{}`: {e}", cairn_object::excerpt(text))))
        };
        let job = match lines.next() {
            Some((line, l)) if l.starts_with("job ") => handle(line, &l[4..])?,
            _ => return Err(err(2, "expected `job HANDLE`".into())),
        };
        let mut journal = Journal::new(job);
        for (line, l) in lines {
            // At most six words are looked at: a line of a million spaces costs nothing more.
            let mut split = l.splitn(6, ' ');
            let words: [Option<&str>; 6] = core::array::from_fn(|_| split.next());
            match words {
                [Some("io"), Some(at_ms), Some(effect), Some(request), Some(response), None]
                    if journal.result.is_none() =>
                {
                    let at_ms = at_ms.parse().map_err(|_| {
                        err(line, format!("`{}` is not a time in ms", cairn_object::excerpt(at_ms)))
                    })?;
                    let effect = Effect::from_name(effect).ok_or_else(|| {
                        err(line, format!("unknown effect `{}`", cairn_object::excerpt(effect)))
                    })?;
                    let (request, response) = (handle(line, request)?, handle(line, response)?);
                    if journal.answer(&request).is_some() {
                        return Err(err(line, format!("{request} is answered twice")));
                    }
                    if !journal.record(Entry { at_ms, effect, request, response }) {
                        return Err(err(
                            line,
                            format!("more than the {MAX_ENTRIES} entries a journal may have"),
                        ));
                    }
                }
                [Some("result"), Some(result), None, ..] if journal.result.is_none() => {
                    journal.result = Some(handle(line, result)?)
                }
                _ => return Err(err(line, format!("unexpected `{}`", cairn_object::excerpt(l)))),
            }
        }
        Ok(journal)
    }
}
