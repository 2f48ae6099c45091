//! A job's manifest: the IO it may perform, one `effect endpoint` line each, and the
//! capabilities that checking a request against it yields.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use cairn_object::io::{Effect, Endpoint, Request};

/// The grants of a job: which effects at which endpoints. Its text form is canonical when
/// rendered (sorted, one per line), so equal manifests have equal handles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    grants: Vec<(Effect, Endpoint)>,
}

/// Permission to perform one effect at one endpoint.
///
/// Only [`Manifest::capability_for`] makes one, from a manifest the kernel parsed, so holding a
/// `Capability` is proof that the job declared the request; the kernel's transport takes one for
/// every connection it opens and connects only to the capability's endpoint. A task cannot make
/// one: it is not an object, has no encoding, and its fields are private to this crate.
#[derive(Debug, PartialEq, Eq)]
pub struct Capability {
    effect: Effect,
    endpoint: Endpoint,
}

impl Capability {
    pub fn effect(&self) -> Effect {
        self.effect
    }

    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }
}

/// A request the manifest does not cover; displays as the capability it would need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingCapability {
    pub effect: Effect,
    pub endpoint: Endpoint,
}

impl fmt::Display for MissingCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the job's manifest does not grant `{} {}`", self.effect, self.endpoint)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub line: usize,
    pub why: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "manifest line {}: {}", self.line, self.why)
    }
}

impl Manifest {
    pub fn new(grants: impl IntoIterator<Item = (Effect, Endpoint)>) -> Manifest {
        let mut grants: Vec<_> = grants.into_iter().collect();
        grants.sort();
        grants.dedup();
        Manifest { grants }
    }

    /// Parses `effect a.b.c.d:port` lines; blank lines and `#` comments are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let text =
            core::str::from_utf8(bytes).map_err(|_| ManifestError { line: 0, why: "not UTF-8".into() })?;
        let mut grants = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let bad = |why: String| ManifestError { line, why };
            let mut words = content.split_whitespace();
            let (Some(effect), Some(endpoint), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad("expected `effect endpoint`, like `http.get 10.0.2.2:8080`".into()));
            };
            let effect = Effect::from_name(effect).ok_or_else(|| {
                bad(alloc::format!(
                    "unknown effect `{}` (known: tcp.request, http.get, tcp.send)",
                    cairn_object::excerpt(effect)
                ))
            })?;
            let endpoint = Endpoint::parse(endpoint).ok_or_else(|| {
                bad(alloc::format!(
                    "`{}` is not an endpoint like 10.0.2.2:8080",
                    cairn_object::excerpt(endpoint)
                ))
            })?;
            // Link-local is where a cloud's metadata server answers (169.254.169.254 on GCE, AWS,
            // Azure, OpenStack): it holds the node's configuration, its private key included
            // (docs/CLOUD.md), and the instance's credentials. The node asks it with a manifest
            // of its own; no job's may name it.
            if endpoint.ip[..2] == [169, 254] {
                return Err(bad(alloc::format!(
                    "`{endpoint}` is link-local, where a cloud's metadata server answers: no job reaches it"
                )));
            }
            grants.push((effect, endpoint));
        }
        Ok(Manifest::new(grants))
    }

    /// The canonical text form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (effect, endpoint) in &self.grants {
            out.push_str(&alloc::format!("{effect} {endpoint}\n"));
        }
        out
    }

    pub fn grants(&self) -> &[(Effect, Endpoint)] {
        &self.grants
    }

    /// The capability for `request`, if the manifest grants it.
    pub fn capability_for(&self, request: &Request) -> Result<Capability, MissingCapability> {
        let (effect, endpoint) = (request.effect(), request.endpoint());
        if self.grants.contains(&(effect, endpoint)) {
            Ok(Capability { effect, endpoint })
        } else {
            Err(MissingCapability { effect, endpoint })
        }
    }
}
