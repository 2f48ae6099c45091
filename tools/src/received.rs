//! Objects a node sends over its console (`cairn: object NAME HANDLE LEN`, base64 lines,
//! `cairn: object-end`), checked against their handle before anyone uses them.

use anyhow::{Context, bail};
use base64::Engine;
use cairn_object::Handle;

use crate::untrusted::{escape, needs_escape};

/// The largest object accepted over a console. At 115200 baud this is hours of base64, far more
/// than any node sends (the default job's image is 144 KiB); it bounds what a node's header can
/// make the tool hold.
pub const MAX_OBJECT: usize = 64 << 20;

#[derive(Debug, PartialEq, Eq)]
pub struct Received {
    pub name: String,
    pub handle: Handle,
    pub bytes: Vec<u8>,
}

/// Collects one object at a time from console lines.
#[derive(Default)]
pub struct Receiver {
    pending: Option<(String, Handle, usize, String)>,
}

pub enum Line {
    /// Not part of an object: show it.
    Console,
    /// Swallowed into an object still arriving.
    Consumed,
    /// The last line of an object, which checked out.
    Done(Received),
}

impl Receiver {
    pub fn feed(&mut self, line: &str) -> anyhow::Result<Line> {
        if let Some((name, handle, len, mut text)) = self.pending.take() {
            if line != "cairn: object-end" {
                text.push_str(line.trim());
                // No more base64 than `len` bytes need: the header bounds what is kept.
                if text.len() > len.div_ceil(3) * 4 {
                    bail!("object {name}: more base64 than {len} bytes need");
                }
                self.pending = Some((name, handle, len, text));
                return Ok(Line::Consumed);
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .with_context(|| format!("object {name} is not valid base64"))?;
            if bytes.len() != len {
                bail!("object {name}: expected {len} bytes, got {}", bytes.len());
            }
            let actual = Handle::blob(&bytes);
            if actual != handle {
                bail!("object {name} does not match its handle: claimed {handle}, received {actual}");
            }
            return Ok(Line::Done(Received { name, handle, bytes }));
        }
        let Some(rest) = line.strip_prefix("cairn: object ") else { return Ok(Line::Console) };
        let parts: Vec<&str> = rest.split(' ').collect();
        let [name, handle, len] = parts[..] else { bail!("malformed object header: {}", escape(line)) };
        // The name becomes a file name in the output directory.
        if name.is_empty() || name.contains('/') || name.starts_with('.') || name.chars().any(needs_escape) {
            bail!("object name \"{}\" is not a plain file name", escape(name));
        }
        let handle: Handle = handle.parse().with_context(|| format!("object {name}"))?;
        let len: usize = len.parse().with_context(|| format!("object {name}: bad length"))?;
        if len as u64 != handle.size() {
            bail!("object {name}: the header says {len} bytes, its handle {handle} says otherwise");
        }
        if len > MAX_OBJECT {
            bail!("object {name}: {len} bytes is more than the {MAX_OBJECT} taken over a console");
        }
        self.pending = Some((name.to_string(), handle, len, String::new()));
        Ok(Line::Consumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(name: &str, bytes: &[u8]) -> Vec<String> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut lines = vec![format!("cairn: object {name} {} {}", Handle::blob(bytes), bytes.len())];
        lines.extend(b64.as_bytes().chunks(76).map(|c| String::from_utf8(c.to_vec()).unwrap()));
        lines.push("cairn: object-end".into());
        lines
    }

    #[test]
    fn receives_and_verifies() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut r = Receiver::default();
        assert!(matches!(r.feed("job: hello").unwrap(), Line::Console));
        let lines = send("x.ppm", &data);
        for line in &lines[..lines.len() - 1] {
            assert!(matches!(r.feed(line).unwrap(), Line::Consumed));
        }
        match r.feed(lines.last().unwrap()).unwrap() {
            Line::Done(got) => assert_eq!((got.name.as_str(), got.bytes), ("x.ppm", data)),
            _ => panic!("expected the object"),
        }
    }

    #[test]
    fn tampered_objects_and_bad_names_are_refused() {
        let mut lines = send("x.ppm", &[9u8; 100]);
        // Change one base64 digit: still valid base64, but other bytes.
        let mut chars: Vec<char> = lines[1].chars().collect();
        chars[10] = if chars[10] == 'A' { 'B' } else { 'A' };
        lines[1] = chars.into_iter().collect();
        let mut r = Receiver::default();
        let mut result = Ok(Line::Consumed);
        for line in &lines {
            result = r.feed(line);
        }
        let err = result.err().expect("tampering is caught");
        assert!(err.to_string().contains("does not match its handle"), "{err}");

        let mut r = Receiver::default();
        let err = r.feed("cairn: object ../evil blob:=00 1").err().unwrap();
        assert!(err.to_string().contains("not a plain file name"));
        let err = r.feed("cairn: object \x1b[2Jx.ppm blob:=00 1").err().unwrap().to_string();
        assert!(
            err.contains("not a plain file name") && err.contains("\\x1b[2J") && !err.contains('\x1b'),
            "{err}"
        );
        assert!(r.feed("cairn: object  blob:=00 1").is_err(), "an empty name");
    }

    #[test]
    fn sizes_are_bounded_by_the_header_and_the_handle() {
        let mut r = Receiver::default();
        let err = r.feed("cairn: object x blob:=0000 3").err().unwrap().to_string();
        assert!(err.contains("says otherwise"), "{err}");
        // A header for 2 bytes, then more base64 than 2 bytes take: refused before it piles up.
        let mut r = Receiver::default();
        assert!(matches!(r.feed("cairn: object x blob:=0000 2").unwrap(), Line::Consumed));
        assert!(matches!(r.feed("AAA=").unwrap(), Line::Consumed));
        let err = r.feed("AAAA").err().unwrap().to_string();
        assert!(err.contains("more base64"), "{err}");
        // A big handle's size is no licence either.
        let big: Handle = format!("blob:{}:{}", "ab".repeat(32), MAX_OBJECT + 1).parse().unwrap();
        let err =
            Receiver::default().feed(&format!("cairn: object x {big} {}", MAX_OBJECT + 1)).err().unwrap();
        assert!(err.to_string().contains("more than"), "{err}");
    }
}
