//! The text form of a handle (docs/OBJECTS.md, "Text form"):
//! `blob:=<hex bytes>` for a literal blob, `<kind>:<64 hex digest>:<size>` otherwise.

use core::fmt;
use core::str::FromStr;

use crate::error::{TextError, TextProblem};
use crate::handle::{Handle, Kind, LITERAL_MAX, MAX_SIZE};

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.literal() {
            Some(bytes) => {
                f.write_str("blob:=")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            None => write!(f, "{}:{}:{}", self.kind(), self.digest(), self.size()),
        }
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes lowercase hex into `out`; `base` is the text position of `hex`, for errors.
fn decode_hex(hex: &[u8], out: &mut [u8], base: usize) -> Result<(), TextError> {
    for (i, pair) in hex.chunks(2).enumerate() {
        let hi = hex_value(pair[0]).ok_or(TextError { at: base + 2 * i, what: TextProblem::NotHex })?;
        let lo = hex_value(pair[1]).ok_or(TextError { at: base + 2 * i + 1, what: TextProblem::NotHex })?;
        out[i] = hi << 4 | lo;
    }
    Ok(())
}

impl FromStr for Handle {
    type Err = TextError;

    fn from_str(text: &str) -> Result<Handle, TextError> {
        let t = text.as_bytes();
        let colon = t
            .iter()
            .position(|&c| c == b':')
            .ok_or(TextError { at: t.len(), what: TextProblem::MissingColon })?;
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name().as_bytes() == &t[..colon])
            .ok_or(TextError { at: 0, what: TextProblem::UnknownKind })?;
        let rest = &t[colon + 1..];
        let invalid = |e: crate::DecodeError| TextError { at: 0, what: TextProblem::Invalid(e.problem) };

        if let Some(hex) = rest.strip_prefix(b"=") {
            let base = colon + 2;
            if hex.len() % 2 != 0 {
                return Err(TextError { at: base + hex.len(), what: TextProblem::OddLiteralLength });
            }
            let mut h = [0u8; Handle::LEN];
            h[0] = kind as u8;
            h[1] = 1;
            let len = hex.len() / 2;
            if len > LITERAL_MAX {
                let problem = crate::Problem::LiteralTooLong { size: len as u64 };
                return Err(TextError { at: base, what: TextProblem::Invalid(problem) });
            }
            h[2] = len as u8;
            decode_hex(hex, &mut h[8..8 + len], base)?;
            return Handle::from_bytes(&h).map_err(invalid);
        }

        let base = colon + 1;
        let digits = rest.iter().take_while(|&&c| c != b':').count();
        if let Some(bad) = rest[..digits].iter().position(|&c| hex_value(c).is_none()) {
            return Err(TextError { at: base + bad, what: TextProblem::NotHex });
        }
        if digits != 64 {
            return Err(TextError { at: base, what: TextProblem::DigestLength { digits } });
        }
        let size_text = rest[64..]
            .strip_prefix(b":")
            .ok_or(TextError { at: base + 64, what: TextProblem::MissingSize })?;
        let size_at = base + 65;
        let size = core::str::from_utf8(size_text)
            .ok()
            // Canonical decimal: digits only, no leading zeros.
            .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .filter(|s| *s == "0" || !s.starts_with('0'))
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&s| s <= MAX_SIZE)
            .ok_or(TextError { at: size_at, what: TextProblem::BadSize })?;
        let mut h = [0u8; Handle::LEN];
        h[0] = kind as u8;
        h[2..8].copy_from_slice(&size.to_le_bytes()[..6]);
        decode_hex(&rest[..64], &mut h[8..], base)?;
        Handle::from_bytes(&h).map_err(invalid)
    }
}
