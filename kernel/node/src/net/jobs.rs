//! Jobs submitted over the API (docs/IO.md): run live with the IO their manifest grants, or
//! replayed from a journal. Each run stores its journal as an object and remembers it as the
//! latest of its job.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::ToString;

use bytes::Bytes;
use cairn_io::{Job, JobIo, Journal};
use cairn_object::store::Store;
use cairn_object::{Handle, Kind};
use cairn_proto::session::Work;
use cairn_proto::{ErrorCode, Message};

use super::Network;
use super::client::NetTransport;
use super::peer::ServeOthers;
use crate::jobs::NodeEvaluator;

/// Jobs whose latest journal a node keeps (pinning what its replay needs); past that, the one
/// used least recently is let go of, so that journals can never pin the whole store.
const KEPT_JOURNALS: usize = 256;

/// A journal a node keeps for its job.
struct Kept {
    journal: Handle,
    /// Exactly what keeping it pinned.
    pinned: alloc::vec::Vec<Handle>,
    used: u64,
}

#[derive(Default)]
pub struct Jobs {
    /// Job → its latest journal on this node.
    latest: BTreeMap<Handle, Kept>,
    clock: u64,
    pub submitted: u64,
    pub replayed: u64,
    /// Bytes fetched from peers.
    pub fetched_bytes: u64,
    /// Thunks this node has run on a peer.
    pub relocated: u64,
    /// The cluster addresses this node may fetch from (node config `peers`).
    pub peers: alloc::vec::Vec<[u8; 4]>,
    /// This node's own cluster address, if it is in a cluster.
    pub cluster_ip: Option<[u8; 4]>,
}

fn error(code: ErrorCode, message: alloc::string::String) -> Message {
    Message::Error { code, message }
}

impl Jobs {
    /// Runs queued work that needs no peer: a job, whose IO goes out on `network`, or a replay.
    pub fn run(&mut self, work: Work, network: &mut Network, ev: &mut NodeEvaluator) -> Message {
        match work {
            Work::Submit { job } => self.submit(job, network, ev),
            Work::Replay { handle } => self.replay(handle, ev),
            Work::Eval { .. }
            | Work::Fetch { .. }
            | Work::Relocate { .. }
            | Work::Scrub
            | Work::Pin { .. }
            | Work::Gc { .. }
            | Work::Coordinate { .. } => {
                error(ErrorCode::Internal, "work the node's loop runs itself".into())
            }
        }
    }

    /// Runs FETCH or RELOCATE over the `cluster` network; while it waits on the peer, `others`
    /// serves this node's own clients what the store can answer.
    pub fn run_with_peer(
        &mut self,
        work: Work,
        cluster: Option<&mut Network>,
        others: &mut ServeOthers<'_>,
        ev: &mut NodeEvaluator,
    ) -> Message {
        match work {
            Work::Relocate { to, thunk } => {
                let cluster = match self.peer_network(cluster, to.0) {
                    Ok(cluster) => cluster,
                    Err(m) => return m,
                };
                self.relocated += 1;
                super::peer::relocate(cluster, others, ev, to, thunk)
                    .unwrap_or_else(|why| error(ErrorCode::Internal, why))
            }
            Work::Fetch { from, handles } => {
                let cluster = match self.peer_network(cluster, from.0) {
                    Ok(cluster) => cluster,
                    Err(m) => return m,
                };
                match super::peer::fetch(cluster, others, ev, from, &handles) {
                    Ok((objects, bytes)) => {
                        self.fetched_bytes += bytes;
                        Message::Fetched { objects, bytes }
                    }
                    Err(why) if why.starts_with(super::peer::WRONG_BYTES) => error(ErrorCode::WrongHash, why),
                    Err(why) => error(ErrorCode::Internal, why),
                }
            }
            Work::Eval { .. }
            | Work::Submit { .. }
            | Work::Replay { .. }
            | Work::Scrub
            | Work::Pin { .. }
            | Work::Gc { .. }
            | Work::Coordinate { .. } => error(ErrorCode::Internal, "not work for a peer".into()),
        }
    }

    /// The cluster network, if `peer` is one of this node's peers: a client may point the node
    /// only at its peers, never at an address of its choosing.
    #[allow(clippy::result_large_err, reason = "the error is the answer to send, made once")]
    fn peer_network<'n>(
        &self,
        cluster: Option<&'n mut Network>,
        peer: [u8; 4],
    ) -> Result<&'n mut Network, Message> {
        let Some(cluster) = cluster else {
            return Err(error(ErrorCode::Unexpected, "this node is not in a cluster (no cluster_ip)".into()));
        };
        if !self.peers.contains(&peer) {
            let [a, b, c, d] = peer;
            return Err(error(ErrorCode::Unexpected, format!("{a}.{b}.{c}.{d} is not a peer of this node")));
        }
        Ok(cluster)
    }

    fn submit(&mut self, handle: Handle, network: &mut Network, ev: &mut NodeEvaluator) -> Message {
        let job = match Job::load(&handle, |h| ev.store.get(h)) {
            Ok(job) => job,
            Err(e) => return error(ErrorCode::NotFound, e.to_string()),
        };
        self.submitted += 1;
        let began_us = crate::arch::clock::micros_since_boot();
        let io_before = ev.stats().io_requests;
        let mut transport = NetTransport::new(network, ev.executor.ceilings.eval_time_us);
        let mut io = JobIo::live(handle, job.manifest, &mut transport);
        let outcome = ev.eval_with_io(job.root, &mut io);
        crate::trace::record(cairn_proto::trace::Span {
            handle: Some(handle),
            ok: outcome.is_ok(),
            count: ev.stats().io_requests.saturating_sub(io_before),
            ..crate::trace::since(cairn_proto::trace::SpanKind::Job, began_us)
        });
        let mut journal = io.into_journal();
        journal.result = outcome.as_ref().ok().copied();
        let journal = match self.store_journal(&journal, ev) {
            Ok(h) => h,
            Err(m) => return m,
        };
        match outcome {
            Ok(result) => Message::JobDone { job: handle, journal, result },
            Err(e) => {
                Message::JobFailed { job: handle, journal, thunk: e.thunk, failure: e.failure.to_string() }
            }
        }
    }

    fn replay(&mut self, handle: Handle, ev: &mut NodeEvaluator) -> Message {
        let journal_handle = match handle.kind() {
            // The latest in memory, or else the one the disk kept (from before a restart).
            Kind::Tree => {
                match self.latest.get(&handle).map(|k| k.journal).or_else(|| ev.store.journal_of(&handle)) {
                    Some(j) => j,
                    None => {
                        return error(
                            ErrorCode::NotFound,
                            format!(
                                "no journal of job {handle} on this node (import one with `cairn journal import`)"
                            ),
                        );
                    }
                }
            }
            _ => handle,
        };
        let journal = match load_journal(&journal_handle, ev) {
            Ok(j) => j,
            Err(why) => return error(ErrorCode::NotFound, why),
        };
        let job = match Job::load(&journal.job, |h| ev.store.get(h)) {
            Ok(job) => job,
            Err(e) => return error(ErrorCode::NotFound, e.to_string()),
        };
        self.replayed += 1;
        let recorded = journal.result;
        let mut io = JobIo::replay(job.manifest, journal.clone());
        match ev.eval_with_io(job.root, &mut io) {
            Ok(result) => Message::Replayed { job: journal.job, journal: journal_handle, result, recorded },
            Err(e) => Message::JobFailed {
                job: journal.job,
                journal: journal_handle,
                thunk: e.thunk,
                failure: e.failure.to_string(),
            },
        }
    }

    #[allow(clippy::result_large_err, reason = "the error is the answer to send, made once")]
    fn store_journal(&mut self, journal: &Journal, ev: &mut NodeEvaluator) -> Result<Handle, Message> {
        let handle = ev
            .store
            .put(Kind::Blob, Bytes::from(journal.encode().into_bytes()))
            .map_err(|e| error(ErrorCode::StoreFull, format!("the journal does not fit: {e}")))?;
        self.set_latest(handle, journal, ev);
        Ok(handle)
    }

    /// Makes `handle` the latest journal of its job, pinning what a replay of it needs (the
    /// journal, the job with its manifest and root, every response, the result) and letting go
    /// of what the journal it replaces pinned: the store never evicts a replay's inputs.
    fn set_latest(&mut self, handle: Handle, journal: &Journal, ev: &mut NodeEvaluator) {
        // On the disk too, so that `cairn replay JOB` works after a restart. A disk that cannot
        // take the note has failed or is full, which its own answers say; the job still ran.
        if let Err(e) = ev.store.keep_journal(&journal.job, &handle) {
            log::warn!("store: the journal of job {}: {e}", journal.job);
        }
        self.clock += 1;
        let pinned = keep(journal, handle, ev);
        let kept = Kept { journal: handle, pinned, used: self.clock };
        if let Some(old) = self.latest.insert(journal.job, kept) {
            release(old, ev);
        }
        if self.latest.len() > KEPT_JOURNALS
            && let Some(oldest) = self.latest.iter().min_by_key(|(_, k)| k.used).map(|(job, _)| *job)
            && let Some(old) = self.latest.remove(&oldest)
        {
            release(old, ev);
        }
    }

    /// Makes a journal someone stored (an import) the latest of its job, once everything a
    /// replay needs is here: the job, its manifest and every response.
    pub fn adopt(
        &mut self,
        journal_handle: &Handle,
        ev: &mut NodeEvaluator,
    ) -> Result<Handle, alloc::string::String> {
        let journal = load_journal(journal_handle, ev)?;
        Job::load(&journal.job, |h| ev.store.get(h)).map_err(|e| e.to_string())?;
        if let Some(missing) = journal.responses().find(|h| !ev.store.contains(h)) {
            return Err(format!("response {missing} of the journal is not on this node"));
        }
        self.set_latest(*journal_handle, &journal, ev);
        Ok(journal.job)
    }
}

/// What a collection of the disk must keep beyond what the store finds itself (docs/STORE.md,
/// "Space"): the responses and result of every journal the disk keeps for a job (the job and
/// the journal it keeps itself, and through the job's tree its manifest and root). None if
/// there is no memory for the list: a collection without all its roots would forget what they
/// keep.
pub fn gc_roots(ev: &NodeEvaluator) -> Option<alloc::vec::Vec<Handle>> {
    let mut roots = alloc::vec::Vec::new();
    for (_, journal) in ev.store.journals_on_disk()? {
        if let Ok(journal) = load_journal(&journal, ev) {
            let wanted = journal.responses().chain(journal.result);
            roots.try_reserve(journal.entries().len() + 1).ok()?;
            roots.extend(wanted);
        }
    }
    Some(roots)
}

/// Pins what a replay of `journal` needs; returns exactly what it pinned.
fn keep(journal: &Journal, handle: Handle, ev: &mut NodeEvaluator) -> alloc::vec::Vec<Handle> {
    let job = Job::load(&journal.job, |h| ev.store.get(h)).ok();
    let parts = job.iter().flat_map(|j| [j.manifest_blob, j.root]);
    let wanted =
        [handle, journal.job].into_iter().chain(parts).chain(journal.responses()).chain(journal.result);
    let mut pinned = alloc::vec::Vec::new();
    for h in wanted {
        if pinned.try_reserve(1).is_ok() && ev.store.pin(&h) {
            pinned.push(h);
        }
    }
    pinned
}

fn release(kept: Kept, ev: &mut NodeEvaluator) {
    for h in &kept.pinned {
        ev.store.unpin(h);
    }
}

fn load_journal(handle: &Handle, ev: &NodeEvaluator) -> Result<Journal, alloc::string::String> {
    let bytes = ev.store.get(handle).ok_or_else(|| format!("{handle} is not on this node"))?;
    Journal::decode(&bytes).map_err(|e| format!("{handle} is not a journal: {e}"))
}
