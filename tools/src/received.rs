//! Objects a node sends over its console (`cairn: object NAME HANDLE LEN`, base64 lines,
//! `cairn: object-end`), checked against their handle before anyone uses them.

use anyhow::{Context, bail};
use base64::Engine;
use cairn_object::Handle;

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
        let [name, handle, len] = parts[..] else { bail!("malformed object header: {line}") };
        if name.contains('/') || name.starts_with('.') {
            bail!("object name {name:?} is not a plain file name");
        }
        let handle: Handle = handle.parse().with_context(|| format!("object {name}"))?;
        let len: usize = len.parse().with_context(|| format!("object {name}: bad length"))?;
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
    }
}
