//! Text that came from a node or a task, made safe to show. A task's failure message, a node's
//! error or STATS text, a small value, a console line: any of them may hold terminal control
//! sequences (to recolour, move the cursor, retitle the window, or rewrite what was printed
//! before) or a line break followed by a line that looks like the tool's own, such as a forged
//! `cairn: ready ...`. Everything the tool prints that it did not write itself goes through here.
//!
//! The rules, the same for every function:
//!
//! - Control characters (Unicode category Cc: C0 U+0000..U+001F, DEL U+007F and C1
//!   U+0080..U+009F) are written as escapes: `\n`, `\r` and `\t` by name, the rest of C0 and DEL
//!   as `\xNN` (`\x1b` for ESC), C1 as `\u{NN}` (`\u{9b}`, the one-character CSI). Tabs are
//!   escaped too: one rule for all of Cc is easier to trust than a list of harmless ones.
//! - Characters that move or reorder text without being controls are escaped as `\u{N}`: the
//!   line and paragraph separators (U+2028, U+2029), which some viewers break lines at, and the
//!   bidirectional controls (U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069), which can
//!   make a line read differently from what it holds.
//! - Everything else is kept as it is, including non-ASCII text ("café", "日本") and the
//!   backslash. Keeping the backslash makes the rendering ambiguous (a task can print the four
//!   characters `\x1b`), but it is for reading, not for decoding, and it makes escaping
//!   idempotent: text escaped once (say, inside an error) can pass through again unchanged.

use std::fmt::Write;

/// `text` on one line with every control character and line or direction control escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text);
    out
}

/// Like [`escape`], but each `\n` stays a line break: for text that is line-oriented by design
/// (STATS' `key=value` lines, a multi-line error). A `\r` is still escaped, so a line cannot
/// overwrite itself or the one before.
pub fn escape_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        push_escaped(&mut out, line);
    }
    out
}

/// Like [`escape`] for bytes that need not be UTF-8: valid UTF-8 as [`escape`] renders it, each
/// byte of an invalid sequence as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        push_escaped(&mut out, chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Whether [`escape`] would change `c`.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escape_sequences_become_visible() {
        assert_eq!(escape("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        // OSC: set the window title, ended by BEL.
        assert_eq!(escape("\x1b]0;pwned\x07"), "\\x1b]0;pwned\\x07");
        assert_eq!(escape("a\x00b\x08c\x7f"), "a\\x00b\\x08c\\x7f");
    }

    #[test]
    fn c1_controls_are_escaped() {
        // U+009B is CSI on its own in terminals that take C1 controls from UTF-8.
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("\u{80}\u{85}\u{9f}"), "\\u{80}\\u{85}\\u{9f}");
    }

    #[test]
    fn line_breaks_and_carriage_returns_stay_on_the_line() {
        assert_eq!(escape("one\ntwo"), "one\\ntwo");
        assert_eq!(escape("done\rFAILED"), "done\\rFAILED");
        assert_eq!(escape("a\r\nb"), "a\\r\\nb");
        assert_eq!(escape("a\u{2028}b\u{2029}c"), "a\\u{2028}b\\u{2029}c");
    }

    #[test]
    fn a_forged_ready_line_stays_on_the_same_line() {
        let shown = escape("task error: oops\ncairn: ready boot_ms=1 mem_mib=1");
        assert_eq!(shown.lines().count(), 1);
        assert!(!shown.lines().any(|l| l.starts_with("cairn: ready")), "{shown}");
        assert_eq!(shown, "task error: oops\\ncairn: ready boot_ms=1 mem_mib=1");
    }

    #[test]
    fn tabs_are_escaped_like_every_other_control() {
        assert_eq!(escape("a\tb"), "a\\tb");
    }

    #[test]
    fn direction_controls_are_escaped() {
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("\u{2066}x\u{2069}\u{200f}"), "\\u{2066}x\\u{2069}\\u{200f}");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        for text in ["café", "日本", "naïve résumé, Ωμέγα", "emoji 🪨", "C:\\path\\x1b", "a=b c-d_e", ""]
        {
            assert_eq!(escape(text), text);
            assert_eq!(escape_lines(text), text);
            assert_eq!(escape_bytes(text.as_bytes()), text);
        }
    }

    #[test]
    fn escaping_twice_changes_nothing() {
        let once = escape("\x1b[2J\n\u{9b}\t\u{202e}é");
        assert_eq!(escape(&once), once);
        assert!(!once.chars().any(needs_escape));
    }

    #[test]
    fn escape_lines_keeps_the_lines_and_escapes_their_content() {
        let text = "objects=3\ntasks_run=\x1b[2J7\r\nnote=\u{9b}x\n";
        let shown = escape_lines(text);
        assert_eq!(shown, "objects=3\ntasks_run=\\x1b[2J7\\r\nnote=\\u{9b}x\n");
        assert_eq!(
            shown.lines().collect::<Vec<_>>(),
            ["objects=3", "tasks_run=\\x1b[2J7\\r", "note=\\u{9b}x"]
        );
    }

    #[test]
    fn invalid_utf8_bytes_are_escaped_one_by_one() {
        assert_eq!(escape_bytes(b"ok \xff\xfe end"), "ok \\xff\\xfe end");
        assert_eq!(escape_bytes(b"\xe6\x97\xa5\xe6\x97"), "日\\xe6\\x97");
        assert_eq!(escape_bytes(b"\x1b[0m\n"), "\\x1b[0m\\n");
    }
}
