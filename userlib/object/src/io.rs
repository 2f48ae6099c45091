//! IO requests as objects (docs/IO.md). An IO request is a thunk whose procedure is one of the
//! literal blobs below. A task can build one and return it, like any thunk; only the kernel
//! performs it, and only for a job whose manifest grants the capability.
//!
//! | procedure | arguments | value |
//! | --- | --- | --- |
//! | `cairn:io/tcp.request` | endpoint, request bytes | every byte the peer sent before closing |
//! | `cairn:io/http.get` | URL (`http://a.b.c.d:port/path`) | the body of a 200 response |
//! | `cairn:io/tcp.send` | endpoint, bytes | the bytes sent (sent at most once per job) |
//!
//! An endpoint is a blob `a.b.c.d:port` (IPv4; there is no name resolution).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::{Handle, Limits};

/// The procedures that name IO effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    TcpRequest,
    HttpGet,
    TcpSend,
}

impl Effect {
    pub const ALL: [Effect; 3] = [Effect::TcpRequest, Effect::HttpGet, Effect::TcpSend];

    /// The name used in manifests and messages.
    pub fn name(self) -> &'static str {
        match self {
            Effect::TcpRequest => "tcp.request",
            Effect::HttpGet => "http.get",
            Effect::TcpSend => "tcp.send",
        }
    }

    pub fn from_name(name: &str) -> Option<Effect> {
        Effect::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The procedure's bytes: short enough to be a literal blob, so its handle is its content.
    pub fn procedure_bytes(self) -> &'static [u8] {
        match self {
            Effect::TcpRequest => b"cairn:io/tcp.request",
            Effect::HttpGet => b"cairn:io/http.get",
            Effect::TcpSend => b"cairn:io/tcp.send",
        }
    }

    pub fn procedure(self) -> Handle {
        Handle::blob(self.procedure_bytes())
    }

    /// The effect a procedure names, if it names one.
    pub fn of(procedure: &Handle) -> Option<Effect> {
        let bytes = procedure.literal()?;
        Effect::ALL.into_iter().find(|e| e.procedure_bytes() == bytes)
    }

    fn arity(self) -> usize {
        match self {
            Effect::HttpGet => 1,
            Effect::TcpRequest | Effect::TcpSend => 2,
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The limits every IO request carries, so that one request has one name.
pub fn limits() -> Limits {
    Limits::new(4096).expect("a valid limit")
}

/// An IPv4 address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: [u8; 4],
    pub port: u16,
}

impl Endpoint {
    /// Parses `a.b.c.d:port` in canonical decimal (no leading zeros, port 1..=65535).
    pub fn parse(text: &str) -> Option<Endpoint> {
        let (ip, port) = text.split_once(':')?;
        let mut out = [0u8; 4];
        let mut parts = ip.split('.');
        for byte in out.iter_mut() {
            *byte = canonical_decimal(parts.next()?)?.try_into().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        let port = u16::try_from(canonical_decimal(port)?).ok().filter(|p| *p != 0)?;
        Some(Endpoint { ip: out, port })
    }
}

fn canonical_decimal(text: &str) -> Option<u32> {
    if text.is_empty()
        || text.len() > 5
        || (text.len() > 1 && text.starts_with('0'))
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.ip;
        write!(f, "{a}.{b}.{c}.{d}:{}", self.port)
    }
}

/// A decoded IO request: what to do, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    TcpRequest { to: Endpoint, request: Handle },
    HttpGet { to: Endpoint, path: String },
    TcpSend { to: Endpoint, data: Handle },
}

impl Request {
    pub fn effect(&self) -> Effect {
        match self {
            Request::TcpRequest { .. } => Effect::TcpRequest,
            Request::HttpGet { .. } => Effect::HttpGet,
            Request::TcpSend { .. } => Effect::TcpSend,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        match self {
            Request::TcpRequest { to, .. } | Request::HttpGet { to, .. } | Request::TcpSend { to, .. } => *to,
        }
    }

    /// Decodes an application of `effect` to `args` (already values); `open` reads a blob.
    pub fn decode<B: AsRef<[u8]>>(
        effect: Effect,
        args: &[Handle],
        open: impl Fn(&Handle) -> Option<B>,
    ) -> Result<Request, String> {
        if args.len() != effect.arity() {
            return Err(format!("{effect} takes {} arguments, not {}", effect.arity(), args.len()));
        }
        let text = |h: &Handle, what: &str| -> Result<String, String> {
            let bytes =
                open(h).ok_or_else(|| format!("{effect}: the {what} {h} is not a blob on this node"))?;
            // An endpoint or a URL is short: a long blob is refused before it is copied.
            if bytes.as_ref().len() > MAX_TEXT_ARG {
                return Err(format!("{effect}: the {what} is longer than {MAX_TEXT_ARG} bytes"));
            }
            core::str::from_utf8(bytes.as_ref())
                .map(String::from)
                .map_err(|_| format!("{effect}: the {what} is not UTF-8"))
        };
        let endpoint = |h: &Handle| -> Result<Endpoint, String> {
            let text = text(h, "endpoint")?;
            Endpoint::parse(&text).ok_or_else(|| {
                format!("{effect}: `{}` is not an endpoint like 10.0.2.2:8080", crate::excerpt(&text))
            })
        };
        let blob = |h: &Handle, what: &str| -> Result<Handle, String> {
            if h.kind() != crate::Kind::Blob {
                return Err(format!("{effect}: the {what} must be a blob, not a {}", h.kind().name()));
            }
            Ok(*h)
        };
        Ok(match effect {
            Effect::TcpRequest => {
                Request::TcpRequest { to: endpoint(&args[0])?, request: blob(&args[1], "request")? }
            }
            Effect::TcpSend => Request::TcpSend { to: endpoint(&args[0])?, data: blob(&args[1], "data")? },
            Effect::HttpGet => {
                let url = text(&args[0], "URL")?;
                let (to, path) = parse_url(&url).ok_or_else(|| {
                    format!(
                        "http.get: `{}` is not a URL like http://10.0.2.2:8080/path",
                        crate::excerpt(&url)
                    )
                })?;
                Request::HttpGet { to, path }
            }
        })
    }
}

/// The longest endpoint or URL an IO request may name.
const MAX_TEXT_ARG: usize = 2048;

/// `http://a.b.c.d[:port]/path` → endpoint and path (`/` if none). Only printable ASCII paths.
pub fn parse_url(url: &str) -> Option<(Endpoint, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let to = if authority.contains(':') {
        Endpoint::parse(authority)?
    } else {
        Endpoint::parse(&format!("{authority}:80"))?
    };
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some((to, String::from(path)))
}

/// The bytes of an HTTP/1.0 GET (one request per connection; the server closes when done).
pub fn http_get_bytes(to: &Endpoint, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.0\r\nHost: {to}\r\nUser-Agent: cairn\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// The body of a complete HTTP/1.x response, if its status is 200; otherwise why not.
pub fn http_body(response: &[u8]) -> Result<&[u8], String> {
    let end =
        response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("the response has no end of headers")?;
    let head = core::str::from_utf8(&response[..end]).map_err(|_| "the response headers are not UTF-8")?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, status) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: `{status_line}`"));
    }
    if status != "200" {
        return Err(format!("status `{status_line}`"));
    }
    let body = &response[end + 4..];
    // With a Content-Length, the body must be exactly that long (a cut-off body is an error,
    // not a shorter page).
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            let len: usize = value.trim().parse().map_err(|_| "bad Content-Length")?;
            if body.len() != len {
                return Err(format!("body is {} bytes, Content-Length says {len}", body.len()));
            }
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::Kind;

    #[test]
    fn procedures_are_literals_and_map_back() {
        for e in Effect::ALL {
            assert!(e.procedure().is_literal());
            assert_eq!(Effect::of(&e.procedure()), Some(e));
            assert_eq!(Effect::from_name(e.name()), Some(e));
        }
        assert_eq!(Effect::of(&Handle::blob(b"cairn:io/tcp.connect")), None);
        assert_eq!(Effect::of(&Handle::blob(&[7u8; 100])), None);
    }

    #[test]
    fn endpoints_are_canonical() {
        assert_eq!(Endpoint::parse("10.0.2.2:8080"), Some(Endpoint { ip: [10, 0, 2, 2], port: 8080 }));
        for bad in [
            "10.0.2.2",
            "10.0.2:80",
            "10.0.2.2.1:80",
            "010.0.2.2:80",
            "10.0.2.2:0",
            "10.0.2.2:65536",
            "10.0.2.256:80",
            "10.0.2.2:+80",
            "a.b.c.d:80",
            "",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
        assert_eq!(format!("{}", Endpoint::parse("1.2.3.4:5").unwrap()), "1.2.3.4:5");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://10.0.2.2:8080/a/b.txt"),
            Some((Endpoint { ip: [10, 0, 2, 2], port: 8080 }, "/a/b.txt".into()))
        );
        assert_eq!(
            parse_url("http://10.0.2.2"),
            Some((Endpoint { ip: [10, 0, 2, 2], port: 80 }, "/".into()))
        );
        for bad in ["https://10.0.2.2/", "http://example.com/", "http://10.0.2.2/a b", "ftp://1.2.3.4/"] {
            assert_eq!(parse_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn requests_decode_or_say_why_not() {
        let blobs: std::collections::HashMap<Handle, Vec<u8>> =
            [b"10.0.2.2:80".to_vec(), b"http://10.0.2.2:81/x".to_vec(), b"nope".to_vec(), b"hello".to_vec()]
                .into_iter()
                .map(|b| (Handle::blob(&b), b))
                .collect();
        let open = |h: &Handle| blobs.get(h).cloned();
        let ep = Handle::blob(b"10.0.2.2:80");
        let data = Handle::blob(b"hello");
        assert_eq!(
            Request::decode(Effect::TcpSend, &[ep, data], open),
            Ok(Request::TcpSend { to: Endpoint { ip: [10, 0, 2, 2], port: 80 }, data })
        );
        assert_eq!(
            Request::decode(Effect::HttpGet, &[Handle::blob(b"http://10.0.2.2:81/x")], open),
            Ok(Request::HttpGet { to: Endpoint { ip: [10, 0, 2, 2], port: 81 }, path: "/x".into() })
        );
        let err = Request::decode(Effect::TcpSend, &[Handle::blob(b"nope"), data], open).unwrap_err();
        assert!(err.contains("`nope` is not an endpoint"), "{err}");
        assert!(Request::decode(Effect::TcpSend, &[ep], open).unwrap_err().contains("takes 2 arguments"));
        let tree = Handle::from_bytes(&{
            let mut b = *Handle::blob(&[1u8; 64]).as_bytes();
            b[0] = Kind::Tree as u8;
            b
        })
        .unwrap();
        assert!(
            Request::decode(Effect::TcpRequest, &[ep, tree], open).unwrap_err().contains("must be a blob")
        );
    }

    #[test]
    fn http_bodies() {
        assert_eq!(http_body(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"), Ok(&b"hello"[..]));
        assert_eq!(http_body(b"HTTP/1.1 200 OK\r\n\r\nno length"), Ok(&b"no length"[..]));
        assert!(http_body(b"HTTP/1.0 404 Not Found\r\n\r\n").unwrap_err().contains("404"));
        assert!(
            http_body(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nshort")
                .unwrap_err()
                .contains("Content-Length")
        );
        assert!(http_body(b"garbage").is_err());
        let req =
            String::from_utf8(http_get_bytes(&Endpoint { ip: [10, 0, 2, 2], port: 8080 }, "/a")).unwrap();
        assert!(req.starts_with("GET /a HTTP/1.0\r\nHost: 10.0.2.2:8080\r\n") && req.ends_with("\r\n\r\n"));
    }
}
