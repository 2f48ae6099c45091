//! Errors are values (EVAL-7): they name the failing thunk and say why.

use alloc::string::String;
use core::fmt;

use cairn_object::Handle;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The thunk or its procedure cannot be decoded or loaded.
    InvalidThunk(String),
    /// The task faulted (privileged instruction, bad access, RDTSC, ...).
    Trap(String),
    /// Unknown syscall number, or an argument outside the task's memory.
    BadSyscall(String),
    /// The task named a handle it was not given and did not create (EVAL-3).
    ForgedHandle(Handle),
    /// The task needed more than its declared memory limit.
    OutOfMemory { limit: u64 },
    /// The task returned an error message.
    TaskError(String),
    /// The task ran past the node's wall-clock budget.
    Timeout,
    /// The node could not provide memory within the declared limit.
    NodeOutOfMemory,
    /// An input is not in the node's store.
    MissingObject(Handle),
    /// More applications than the node allows for one evaluation.
    StepLimit { limit: u64 },
    /// The thunk asks for more than this node allows any task or evaluation (a node-wide
    /// ceiling, docs/SECURITY.md); says which and how much.
    NodeLimit(String),
    /// The machine, not the task, failed while the task ran (an NMI, a machine check): the task
    /// was tried again and the fault persisted.
    NodeFault(String),
    /// An IO request the job's manifest does not grant; names the capability it would need.
    MissingCapability(String),
    /// An IO request that was granted but failed (refused, timed out, a bad response), or that
    /// a replay's journal has no answer for.
    Io(String),
}

impl Failure {
    /// EVAL-5: only failures that are a property of the computation are remembered.
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            Failure::Timeout
                | Failure::NodeOutOfMemory
                | Failure::MissingObject(_)
                | Failure::StepLimit { .. }
                | Failure::NodeLimit(_)
                | Failure::NodeFault(_)
                | Failure::MissingCapability(_)
                | Failure::Io(_)
        )
    }

    /// The failure's own words, for the failures that carry some.
    fn text(&self) -> Option<&String> {
        match self {
            Failure::InvalidThunk(why)
            | Failure::Trap(why)
            | Failure::BadSyscall(why)
            | Failure::TaskError(why)
            | Failure::MissingCapability(why)
            | Failure::NodeLimit(why)
            | Failure::NodeFault(why)
            | Failure::Io(why) => Some(why),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Failure::InvalidThunk(_) => "invalid thunk",
            Failure::Trap(_) => "trap",
            Failure::BadSyscall(_) => "bad syscall",
            Failure::ForgedHandle(_) => "forged handle",
            Failure::OutOfMemory { .. } => "out of memory",
            Failure::TaskError(_) => "task error",
            Failure::Timeout => "timeout",
            Failure::NodeOutOfMemory => "node out of memory",
            Failure::MissingObject(_) => "missing object",
            Failure::StepLimit { .. } => "step limit",
            Failure::NodeLimit(_) => "node limit",
            Failure::NodeFault(_) => "node fault",
            Failure::MissingCapability(_) => "missing capability",
            Failure::Io(_) => "io",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if let Some(why) = self.text() {
            return write!(f, ": {why}");
        }
        match self {
            Failure::ForgedHandle(h) | Failure::MissingObject(h) => write!(f, ": {h}"),
            Failure::OutOfMemory { limit } => write!(f, ": limit is {limit} bytes"),
            Failure::StepLimit { limit } => write!(f, ": more than {limit} applications"),
            // The rest carry text, written above.
            _ => Ok(()),
        }
    }
}

/// The most a kept task message takes, escaped.
const MAX_MESSAGE: usize = 4096;

/// Text a task chose (its failure message) as it is kept and shown: control characters, line
/// breaks included, escaped, so that it can never forge a console line or steer a terminal it
/// is printed on, whoever prints it.
pub fn printable(text: &str) -> String {
    use core::fmt::Write;
    let mut out = String::new();
    for c in text.chars() {
        // Escaped, 4 KiB can grow fourfold: the message a task gives stays at most 4 KiB.
        if out.len() >= MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            break;
        }
        let _ = match c {
            '\n' => out.write_str("\\n"),
            '\r' => out.write_str("\\r"),
            '\t' => out.write_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\x{:02x}", c as u32),
            c if ('\u{80}'..='\u{9f}').contains(&c) => write!(out, "\\u{{{:x}}}", c as u32),
            c => out.write_char(c),
        };
    }
    out
}

/// A failed evaluation: the thunk whose task failed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalError {
    pub thunk: Handle,
    pub failure: Failure,
}

impl EvalError {
    /// Memory this error holds beyond its own size: the text of its failure.
    pub fn text_bytes(&self) -> usize {
        self.failure.text().map_or(0, String::capacity)
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.thunk, self.failure)
    }
}

impl core::error::Error for EvalError {}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn task_text_is_made_printable() {
        assert_eq!(printable("boom\ncairn: ready boot_ms=1"), "boom\\ncairn: ready boot_ms=1");
        assert_eq!(printable("\x1b[2J\r\t\x7f\u{9b}"), "\\x1b[2J\\r\\t\\x7f\\u{9b}");
        assert_eq!(printable("café 日本 \\ plain"), "café 日本 \\ plain");
        // Escaping may grow a message fourfold; it stays at most 4 KiB.
        let escaped = printable(&"\x01é".repeat(4096));
        assert!(escaped.len() <= 4096 && escaped.starts_with("\\x01é"), "{}", escaped.len());
    }
}
