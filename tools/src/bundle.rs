//! Journal bundles (docs/IO.md): a journal with everything a replay needs, in one file, so a
//! job can be replayed on another node or machine. The format:
//!
//! ```text
//! cairn-bundle 1
//! journal blob:…
//! object HANDLE LEN\n<LEN bytes>\n   (repeated)
//! ```
//!
//! Reading a bundle checks every object against its handle.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, anyhow, bail};
use cairn_io::{Job, Journal};
use cairn_object::{Handle, Kind, Thunk, Tree};

use crate::client::Client;
use crate::untrusted::escape;

const MAGIC: &str = "cairn-bundle 1";

#[derive(Debug)]
pub struct Bundle {
    pub journal: Handle,
    pub objects: BTreeMap<Handle, Vec<u8>>,
}

impl Bundle {
    /// Gathers a journal, its job, the job's whole input graph and every response from a node.
    pub fn export(client: &mut Client, journal: Handle) -> anyhow::Result<Bundle> {
        let mut objects = BTreeMap::new();
        let journal_bytes = client.get(journal, |_, _| {}).context("fetching the journal")?;
        // The decoder quotes the line it stopped at: a node's bytes.
        let decoded = Journal::decode(&journal_bytes)
            .map_err(|e| anyhow!("{journal} is not a journal: {}", escape(&e.to_string())))?;
        objects.insert(journal, journal_bytes);
        let mut pending: Vec<Handle> = vec![decoded.job];
        pending.extend(decoded.responses());
        let mut seen = BTreeSet::new();
        while let Some(handle) = pending.pop() {
            if handle.is_literal() || !seen.insert(handle) {
                continue;
            }
            let bytes = client.get(handle, |_, _| {}).with_context(|| format!("fetching {handle}"))?;
            match handle.kind() {
                Kind::Tree => pending.extend(Tree::decode(&bytes)?.iter()),
                Kind::Thunk => {
                    let thunk = Thunk::decode(&bytes)?;
                    pending.push(thunk.procedure());
                    pending.extend(thunk.args());
                }
                _ => {}
            }
            objects.insert(handle, bytes);
        }
        // The job must load from what was gathered.
        Job::load(&decoded.job, |h| objects.get(h).cloned()).map_err(|e| anyhow!("{e}"))?;
        Ok(Bundle { journal, objects })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{MAGIC}\njournal {}\n", self.journal).into_bytes();
        for (handle, bytes) in &self.objects {
            out.extend_from_slice(format!("object {handle} {}\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
            out.push(b'\n');
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> anyhow::Result<Bundle> {
        let line = |bytes: &mut &[u8]| -> anyhow::Result<String> {
            let end = bytes
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| anyhow!("the bundle ends in the middle of a line"))?;
            let text = std::str::from_utf8(&bytes[..end]).context("a bundle line is not UTF-8")?.to_string();
            *bytes = &bytes[end + 1..];
            Ok(text)
        };
        if !bytes.starts_with(format!("{MAGIC}\n").as_bytes()) {
            bail!("not a journal bundle (expected `{MAGIC}` first)");
        }
        line(&mut bytes)?;
        let journal = line(&mut bytes)?;
        let journal: Handle =
            journal.strip_prefix("journal ").ok_or_else(|| anyhow!("expected `journal HANDLE`"))?.parse()?;
        let mut objects = BTreeMap::new();
        while !bytes.is_empty() {
            let header = line(&mut bytes)?;
            let mut words = header.split(' ');
            let (Some("object"), Some(handle), Some(len), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                bail!("expected `object HANDLE LEN`, found `{}`", escape(&header));
            };
            let handle: Handle = handle.parse()?;
            let len: usize = len.parse().with_context(|| format!("bad length in `{}`", escape(&header)))?;
            // A bundle may come from anywhere: its length is checked without arithmetic.
            if bytes.get(len) != Some(&b'\n') {
                bail!("the bundle is cut short inside {handle}");
            }
            let body = bytes[..len].to_vec();
            bytes = &bytes[len + 1..];
            let actual = cairn_object::store::name(handle.kind(), &body)?;
            if actual != handle {
                bail!("the bundle's {handle} holds other bytes (they are {actual})");
            }
            objects.insert(handle, body);
        }
        if !objects.contains_key(&journal) {
            bail!("the bundle lacks its journal {journal}");
        }
        Ok(Bundle { journal, objects })
    }

    /// The journal, decoded.
    pub fn journal(&self) -> anyhow::Result<Journal> {
        let bytes = self
            .objects
            .get(&self.journal)
            .ok_or_else(|| anyhow!("the bundle lacks its journal {}", self.journal))?;
        Journal::decode(bytes).map_err(|e| anyhow!("{}", escape(&e.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_round_trip_and_catch_tampering() {
        let job = Handle::blob(&[3u8; 64]);
        let response = b"a response that is not a literal blob at all".to_vec();
        let mut journal = Journal::new(job);
        journal.record(cairn_io::Entry {
            at_ms: 5,
            effect: cairn_object::io::Effect::HttpGet,
            request: Handle::blob(&[1u8; 50]),
            response: Handle::blob(&response),
        });
        let journal_bytes = journal.encode().into_bytes();
        let journal_handle = Handle::blob(&journal_bytes);
        let bundle = Bundle {
            journal: journal_handle,
            objects: [(journal_handle, journal_bytes), (Handle::blob(&response), response.clone())].into(),
        };
        let encoded = bundle.encode();
        let back = Bundle::decode(&encoded).unwrap();
        assert_eq!(back.objects, bundle.objects);
        assert_eq!(back.journal().unwrap(), journal);

        let at = encoded.windows(response.len()).position(|w| w == response.as_slice()).unwrap();
        let mut tampered = encoded.clone();
        tampered[at] ^= 1;
        assert!(Bundle::decode(&tampered).unwrap_err().to_string().contains("holds other bytes"));
        assert!(Bundle::decode(&encoded[..encoded.len() - 3]).unwrap_err().to_string().contains("cut short"));
        assert!(Bundle::decode(b"hello\n").unwrap_err().to_string().contains("not a journal bundle"));
        // A length no file can hold is refused, not overflowed.
        let huge = format!("{MAGIC}\njournal {journal_handle}\nobject {journal_handle} {}\nx\n", usize::MAX);
        assert!(Bundle::decode(huge.as_bytes()).unwrap_err().to_string().contains("cut short"));
        let hostile = format!("{MAGIC}\njournal {journal_handle}\nobject \x1b[2J\n");
        let err = Bundle::decode(hostile.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("\\x1b[2J") && !err.contains('\x1b'), "{err}");
    }
}
