//! The journal of a job: every IO request it made, the response (an object) and when. A text
//! blob, so that it is itself content-addressed and can be read by people (docs/IO.md):
//!
//! ```text
//! cairn-journal 1
//! job tree:…
//! io 1795708800123 http.get thunk:… blob:…
//! result blob:…
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use cairn_object::Handle;
use cairn_object::io::Effect;

const MAGIC: &str = "cairn-journal 1";

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
    pub entries: Vec<Entry>,
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
        Journal { job, entries: Vec::new(), result: None }
    }

    /// The recorded response to `request`.
    pub fn answer(&self, request: &Handle) -> Option<&Entry> {
        self.entries.iter().find(|e| e.request == *request)
    }

    pub fn record(&mut self, entry: Entry) {
        if self.answer(&entry.request).is_none() {
            self.entries.push(entry);
        }
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
            text.parse::<Handle>().map_err(|e| err(line, format!("`{text}`: {e}")))
        };
        let job = match lines.next() {
            Some((line, l)) if l.starts_with("job ") => handle(line, &l[4..])?,
            _ => return Err(err(2, "expected `job HANDLE`".into())),
        };
        let mut journal = Journal::new(job);
        for (line, l) in lines {
            let words: Vec<&str> = l.split(' ').collect();
            match words[..] {
                ["io", at_ms, effect, request, response] if journal.result.is_none() => {
                    let at_ms =
                        at_ms.parse().map_err(|_| err(line, format!("`{at_ms}` is not a time in ms")))?;
                    let effect = Effect::from_name(effect)
                        .ok_or_else(|| err(line, format!("unknown effect `{effect}`")))?;
                    let (request, response) = (handle(line, request)?, handle(line, response)?);
                    if journal.answer(&request).is_some() {
                        return Err(err(line, format!("{request} is answered twice")));
                    }
                    journal.entries.push(Entry { at_ms, effect, request, response });
                }
                ["result", result] if journal.result.is_none() => {
                    journal.result = Some(handle(line, result)?)
                }
                _ => return Err(err(line, format!("unexpected `{l}`"))),
            }
        }
        Ok(journal)
    }
}
