//! The commands of `cairn`, one module per group; `main.rs` parses and dispatches. What several
//! groups share (a node's address, handles typed by the user, showing a small value) is here.

pub mod bench;
pub mod boot;
pub mod cloud;
pub mod cluster;
pub mod eval;
pub mod experiment;
pub mod fuzz;
pub mod fuzz_wire;
pub mod jobs;
pub mod keys;
pub mod objects;
pub mod setup;
pub mod sim;
pub mod task;
pub mod trace;

use cairn_object::{Handle, Kind};
use cairn_tools::client::Client;
use cairn_tools::untrusted::escape;
use clap::Args;

#[derive(Args, Clone)]
pub struct NodeAddress {
    /// The node API: what `cairn node` printed.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub node: String,
}

pub fn parse_handle(text: &str) -> anyhow::Result<Handle> {
    text.parse().map_err(|e| anyhow::anyhow!("`{text}` is not a handle: {e}"))
}

/// Prints a small blob's value the way `eval` and `submit` do.
pub fn print_value(client: &mut Client, result: Handle) -> anyhow::Result<()> {
    if result.kind() == Kind::Blob && result.size() <= 4096 {
        let value = client.get(result, |_, _| {})?;
        println!("{}", value_text(&value));
    }
    Ok(())
}

/// A value as one line: text if it is UTF-8 without control characters other than line breaks,
/// else hex. The text is a task's, so it is escaped: its line breaks show as `\n` and cannot
/// start a line of their own.
pub fn value_text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if text.chars().all(|c| !c.is_control() || c == '\n') => escape(text.trim_end()),
        _ => value.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_show_as_text_on_one_line_or_as_hex() {
        assert_eq!(value_text(&[5, 0, 0, 0, 0, 0, 0, 0]), "0500000000000000");
        assert_eq!(value_text(b"hello, caf\xc3\xa9\n"), "hello, café");
        // A task's value cannot add a line that looks like the tool's own.
        let forged = value_text(b"42\ncairn: ready boot_ms=1 mem_mib=1\n");
        assert_eq!(forged, "42\\ncairn: ready boot_ms=1 mem_mib=1");
        assert_eq!(forged.lines().count(), 1);
        // Control characters (C1 too) make it hex; direction controls, which are not
        // controls, pass as text and are escaped.
        assert_eq!(value_text(b"\x1b[2J"), "1b5b324a");
        assert_eq!(value_text("a\u{9b}b".as_bytes()), "61c29b62");
        assert_eq!(value_text("abc\u{202e}fed".as_bytes()), "abc\\u{202e}fed");
    }
}
