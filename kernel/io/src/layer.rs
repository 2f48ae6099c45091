//! The IO layer of one job: checks each request against the job's manifest, has the kernel's
//! transport perform it, stores the response as an object and records it in the journal. When
//! replaying, it answers only from a journal and performs nothing.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use bytes::Bytes;
use cairn_eval::{Application, Failure, Io};
use cairn_object::io::{Effect, Request, http_body, http_get_bytes};
use cairn_object::store::Store;
use cairn_object::{Handle, Kind};

use crate::journal::{Entry, Journal};
use crate::manifest::{Capability, Manifest};

/// Largest response the node accepts from one request.
pub const RESPONSE_LIMIT: usize = 16 << 20;

/// Opens TCP connections for the IO layer. Every method takes the [`Capability`] that allows
/// it and connects to that capability's endpoint, and nowhere else.
pub trait Transport {
    /// Sends `request`, closes the sending side, and returns every byte the peer sends until
    /// it closes (at most `limit`).
    fn exchange(&mut self, capability: &Capability, request: &[u8], limit: usize) -> Result<Vec<u8>, String>;
    /// Sends `data` and closes.
    fn send(&mut self, capability: &Capability, data: &[u8]) -> Result<(), String>;
    /// Milliseconds since the Unix epoch (the node's wall clock), for the journal.
    fn now_ms(&self) -> u64;
}

pub struct JobIo<'a> {
    manifest: Manifest,
    journal: Journal,
    /// None when replaying: only the journal answers.
    transport: Option<&'a mut dyn Transport>,
}

impl<'a> JobIo<'a> {
    /// The IO layer of a job that runs live: requests are performed and recorded.
    pub fn live(job: Handle, manifest: Manifest, transport: &'a mut dyn Transport) -> JobIo<'a> {
        JobIo { manifest, journal: Journal::new(job), transport: Some(transport) }
    }

    /// The IO layer of a replay: every request must be answered by `journal`.
    pub fn replay(manifest: Manifest, journal: Journal) -> JobIo<'static> {
        JobIo { manifest, journal, transport: None }
    }

    pub fn into_journal(self) -> Journal {
        self.journal
    }

    fn perform_live<S: Store>(
        &mut self,
        store: &mut S,
        request: &Request,
        transport: &mut dyn Transport,
    ) -> Result<Handle, Failure> {
        let capability =
            self.manifest.capability_for(request).map_err(|m| Failure::MissingCapability(m.to_string()))?;
        let open = |h: &Handle| store.get(h).ok_or(Failure::MissingObject(*h));
        let io_error =
            |why: String| Failure::Io(format!("{} {}: {why}", request.effect(), request.endpoint()));
        let response = match request {
            Request::TcpRequest { request: bytes, .. } => {
                transport.exchange(&capability, &open(bytes)?, RESPONSE_LIMIT).map_err(io_error)?
            }
            Request::HttpGet { to, path } => {
                let raw = transport
                    .exchange(&capability, &http_get_bytes(to, path), RESPONSE_LIMIT)
                    .map_err(io_error)?;
                http_body(&raw)
                    .map_err(|why| Failure::Io(format!("http.get http://{to}{path}: {why}")))?
                    .to_vec()
            }
            Request::TcpSend { data, .. } => {
                transport.send(&capability, &open(data)?).map_err(io_error)?;
                return Ok(*data);
            }
        };
        store.put(Kind::Blob, Bytes::from(response)).map_err(|_| Failure::NodeOutOfMemory)
    }
}

impl<S: Store> Io<S> for JobIo<'_> {
    fn perform(&mut self, store: &mut S, effect: Effect, app: &Application<'_>) -> Result<Handle, Failure> {
        // A request the job already made has its answer: the same page twice in one job is the
        // same page, and an output is sent at most once.
        if let Some(entry) = self.journal.answer(&app.thunk) {
            let response = entry.response;
            return if store.contains(&response) {
                Ok(response)
            } else {
                Err(Failure::MissingObject(response))
            };
        }
        let request = Request::decode(effect, app.args, |h| store.get(h)).map_err(Failure::InvalidThunk)?;
        // Every request performed is journaled: one the journal has no room for is not made.
        if self.journal.entries().len() >= crate::journal::MAX_ENTRIES {
            return Err(Failure::NodeLimit(format!(
                "the job made the {} IO requests a journal may hold",
                crate::journal::MAX_ENTRIES
            )));
        }
        let Some(transport) = self.transport.take() else {
            return Err(Failure::Io(format!(
                "replay: the journal has no answer for {} ({effect} {})",
                app.thunk,
                request.endpoint()
            )));
        };
        let outcome = self.perform_live(store, &request, transport);
        let now_ms = transport.now_ms();
        self.transport = Some(transport);
        let response = outcome?;
        if !self.journal.record(Entry { at_ms: now_ms, effect, request: app.thunk, response }) {
            return Err(Failure::NodeOutOfMemory);
        }
        Ok(response)
    }
}
