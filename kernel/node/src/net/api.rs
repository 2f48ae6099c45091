//! The node API server: TCP port 7070, a few connections at once, each a protocol session
//! (`cairn_proto::session`) over the node's store and evaluator.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cairn_object::Handle;
use cairn_object::store::{OBJECT_OVERHEAD, Store, StoreError};
use cairn_proto::session::{NodeApi, UploadBuffer};

use super::Network;
use super::jobs::Jobs;
use crate::arch::clock;
use crate::jobs::NodeEvaluator;
use crate::memory::objects::{NodeStore, UploadPages};

/// An object as this node serves it: the stored bytes, or, on a node with the deliberate fault
/// of a test, bytes a peer must catch as wrong.
fn served_object(store: &NodeStore, handle: &Handle, fault: cairn_bootcfg::Fault) -> Option<Bytes> {
    let bytes = store.get(handle)?;
    if fault == cairn_bootcfg::Fault::CorruptObjects && !bytes.is_empty() && !handle.is_literal() {
        let mut corrupt = bytes.to_vec();
        corrupt[0] ^= 0xff;
        return Some(Bytes::from(corrupt));
    }
    if bytes.len() > cairn_proto::MAX_INLINE {
        // A download holds its object until sent, even one the store has since evicted: the
        // node counts what downloads hold, and starts new ones only within a bound.
        return Some(Bytes::from_owner(Downloading::new(bytes)));
    }
    Some(bytes)
}

/// Bytes downloads in progress hold.
static DOWNLOADS_HELD: AtomicU64 = AtomicU64::new(0);

/// An object's bytes while a download holds them.
struct Downloading(Bytes);

impl Downloading {
    fn new(bytes: Bytes) -> Downloading {
        DOWNLOADS_HELD.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Downloading(bytes)
    }
}

impl AsRef<[u8]> for Downloading {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Downloading {
    fn drop(&mut self) {
        DOWNLOADS_HELD.fetch_sub(self.0.len() as u64, Ordering::Relaxed);
    }
}

/// Whether a download of `len` bytes may start beside those in progress: their bytes together
/// stay within a quarter of the store's limit (one download of any size may always run).
fn may_download(store: &NodeStore, len: u64) -> bool {
    let held = DOWNLOADS_HELD.load(Ordering::Relaxed);
    held == 0 || held.saturating_add(len) <= store.stats().limit / 4
}

/// The node as sessions see it while it evaluates: its store, read-only. Sessions ask it only
/// what HELLO, HAVE, GET and an upload's bytes need (`NodeApi::busy`); storing and everything
/// else waits for the evaluation to end.
struct BusyNode<'a> {
    store: &'a NodeStore,
    fault: cairn_bootcfg::Fault,
    node_id: [u8; 32],
}

impl NodeApi for BusyNode<'_> {
    fn node_id(&self) -> [u8; 32] {
        self.node_id
    }
    fn contains(&self, handle: &Handle) -> bool {
        self.store.holds_durably(handle)
    }
    fn get(&self, handle: &Handle) -> Option<Bytes> {
        served_object(self.store, handle, self.fault)
    }
    fn put_verified(&mut self, handle: &Handle, _: Bytes) -> Result<(), StoreError> {
        Err(StoreError::Full { needed: handle.size(), used: 0, limit: 0 })
    }
    fn room(&self) -> u64 {
        self.store.room().min(self.store.disk_room())
    }
    fn may_download(&self, len: u64) -> bool {
        may_download(self.store, len)
    }
    fn upload_buffer(&mut self, len: usize) -> Option<Box<dyn UploadBuffer>> {
        // Setting pages aside changes no object: uploads stream while the node evaluates.
        Some(Box::new(Upload(self.store.upload_pages(len)?)))
    }
    fn put_upload(&mut self, handle: &Handle, _: Box<dyn UploadBuffer>) -> Result<(), StoreError> {
        Err(StoreError::Full { needed: handle.size(), used: 0, limit: 0 })
    }
    fn stats(&self) -> String {
        String::new()
    }
    fn adopt_journal(&mut self, _: &Handle) -> Result<Handle, String> {
        Err("the node is evaluating".into())
    }
    fn recall(&self, _: &Handle) -> Option<Handle> {
        None
    }
    fn busy(&self) -> bool {
        true
    }
    fn trace(&self, since: u64) -> cairn_proto::Message {
        crate::trace::read(since, cairn_proto::trace::SPANS_PER_FRAME)
    }
}

/// An object stored from a client or peer, as an instant of the trace.
fn put_span(handle: &Handle, bytes: u64, ok: bool) {
    let now = clock::micros_since_boot();
    crate::trace::record(cairn_proto::trace::Span {
        handle: Some(*handle),
        bytes,
        ok,
        ..cairn_proto::trace::Span::new(cairn_proto::trace::SpanKind::Put, 0, now, 0)
    });
}

/// An upload's pages, as the protocol session sees them.
struct Upload(UploadPages);

impl UploadBuffer for Upload {
    fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        self.0.write_at(offset, bytes)
    }
    fn into_bytes(self: Box<Self>) -> Bytes {
        self.0.finish().0
    }
    fn into_bytes_and_digest(self: Box<Self>) -> (Bytes, Option<[u8; 32]>) {
        let (bytes, digest) = self.0.finish();
        (bytes, Some(digest))
    }
}

use super::connections::Connections;
pub use super::connections::{PORT, Queued};

pub struct Api {
    connections: Connections,
    node_id: [u8; 32],
    /// Connections accepted so far (shared with the STATS a session may answer meanwhile).
    served: Cell<u64>,
    /// What this node says of its cluster in STATS (`peers=...`).
    cluster: String,
    fault: cairn_bootcfg::Fault,
    /// Microseconds the node has spent halted, waiting for work (see `stats`).
    pub idle_us: u64,
}

struct Node<'a> {
    ev: &'a mut NodeEvaluator,
    jobs: &'a mut Jobs,
    cluster: &'a str,
    fault: cairn_bootcfg::Fault,
    node_id: [u8; 32],
    served: &'a Cell<u64>,
    refusals: super::connections::Refusals,
    idle_us: u64,
}

impl NodeApi for Node<'_> {
    fn node_id(&self) -> [u8; 32] {
        self.node_id
    }
    fn contains(&self, handle: &Handle) -> bool {
        self.ev.store.holds_durably(handle)
    }
    fn get(&self, handle: &Handle) -> Option<Bytes> {
        served_object(&self.ev.store, handle, self.fault)
    }
    fn put_verified(&mut self, handle: &Handle, bytes: Bytes) -> Result<(), StoreError> {
        if !self.ev.store.contains(handle) {
            // Old memo entries go before what clients just uploaded (Evaluator::make_room).
            self.ev.make_room(bytes.len() as u64 + OBJECT_OVERHEAD);
        }
        let len = bytes.len() as u64;
        let stored = self.ev.store.put_verified(handle, bytes);
        put_span(handle, len, stored.is_ok());
        stored
    }
    fn room(&self) -> u64 {
        // What could be made free: anything may go but what is pinned and what uploads in
        // progress were promised; `upload_buffer` then makes the room, or says it cannot.
        self.ev.store.room_at_most().min(self.ev.store.disk_room())
    }
    fn may_download(&self, len: u64) -> bool {
        may_download(&self.ev.store, len)
    }
    fn upload_buffer(&mut self, len: usize) -> Option<Box<dyn UploadBuffer>> {
        self.ev.make_room(len as u64 + OBJECT_OVERHEAD);
        Some(Box::new(Upload(self.ev.store.upload_pages(len)?)))
    }
    fn put_upload(&mut self, handle: &Handle, buffer: Box<dyn UploadBuffer>) -> Result<(), StoreError> {
        // Only buffers from `upload_buffer` come back here: in pages of their own, and hashed.
        let (bytes, digest) = buffer.into_bytes_and_digest();
        let len = bytes.len() as u64;
        let stored = match digest {
            Some(digest) => self.ev.store.put_upload(handle, bytes, digest),
            None => self.ev.store.put_verified(handle, bytes),
        };
        put_span(handle, len, stored.is_ok());
        stored
    }
    fn adopt_journal(&mut self, journal: &Handle) -> Result<Handle, String> {
        self.jobs.adopt(journal, self.ev)
    }
    fn commit(&mut self) -> Result<(), String> {
        self.ev.store.sync().map_err(|e| format!("{e}"))
    }
    fn recall(&self, thunk: &Handle) -> Option<Handle> {
        // The memo in memory, or the disk's (from before a restart).
        match self.ev.recorded(thunk) {
            Some(Ok(value)) => Some(value),
            _ => None,
        }
    }
    fn trace(&self, since: u64) -> cairn_proto::Message {
        crate::trace::read(since, cairn_proto::trace::SPANS_PER_FRAME)
    }
    fn stats(&self) -> String {
        let store = self.ev.store.stats();
        let eval = self.ev.stats();
        let keystreams = super::ahead::stats();
        let evaluations = super::evaluations::stats();
        // With a disk: what it holds (docs/STORE.md).
        let disk = self.ev.store.disk_stats().map_or(String::new(), |d| {
            format!(
                "disk_objects={}\ndisk_object_bytes={}\ndisk_log_bytes={}\ndisk_free_bytes={}\ndisk_bytes={}\ndisk_memo_entries={}\ndisk_commits={}\ndisk_failed={}\n",
                d.objects,
                d.object_bytes,
                d.log_bytes,
                d.free_bytes,
                d.device_bytes,
                self.ev.store.memo_on_disk(),
                d.commits,
                u8::from(self.ev.store.disk_failed())
            )
        });
        // Each CPU's tasks and the time it spent in them (docs/ARCHITECTURE.md, "CPUs").
        let per_cpu: String = crate::arch::percpu::all()
            .map(|cpu| {
                format!(
                    "cpu{}_tasks={}\ncpu{}_task_ms={}\n",
                    cpu.index,
                    cpu.tasks.load(core::sync::atomic::Ordering::Relaxed),
                    cpu.index,
                    cpu.task_us.load(core::sync::atomic::Ordering::Relaxed) / 1000
                )
            })
            .collect();
        format!(
            "{disk}{per_cpu}tasks_started_ahead={}\ntasks_most_at_once={}\nevaluations_most_at_once={}\nevaluations_let_go={}\ncpus={}\nhelper_busy_ms={}\nhelper_hashed_bytes={}\nkeystreams_ahead={}\nkeystreams_taken_back={}\nkeystreams_live={}\nobjects={}\nstore_bytes={}\nstore_used={}\nstore_limit={}\nstore_pinned={}\nstore_evictions={}\nstore_evicted_bytes={}\ntasks_run={}\nmemo_hits={}\nmemo_entries={}\nmemo_error_bytes={}\nmemo_evictions={}\nio_requests={}\njobs_submitted={}\njobs_replayed={}\nfetched_bytes={}\nrelocated={}\n{}connections_served={}\nconnections_refused={}\nconnections_too_slow={}\nconnections_evicted={}\nconnections_idle={}\nconnections_handshake_closed={}\ntrace_missed={}\nuptime_ms={}\nidle_ms={}\n",
            eval.started_ahead,
            crate::task::most_at_once(),
            evaluations.0,
            evaluations.1,
            crate::arch::smp::cpus(),
            crate::arch::smp::busy_us() / 1000,
            crate::memory::objects::helper_hashed_bytes(),
            keystreams.0,
            keystreams.1,
            keystreams.2,
            store.objects,
            store.bytes,
            store.used,
            store.limit,
            store.pinned,
            store.evictions,
            store.evicted_bytes,
            eval.tasks_run,
            eval.memo_hits,
            self.ev.memo().len(),
            self.ev.memo().error_bytes(),
            self.ev.memo().evictions(),
            eval.io_requests,
            self.jobs.submitted,
            self.jobs.replayed,
            self.jobs.fetched_bytes,
            self.jobs.relocated,
            self.cluster,
            self.served.get(),
            self.refusals.per_client,
            self.refusals.too_slow,
            self.refusals.evicted,
            self.refusals.idle,
            self.refusals.handshake,
            crate::trace::missed(),
            clock::micros_since_boot() / 1000,
            self.idle_us / 1000
        )
    }
}

impl Api {
    /// Serves the API on `network`; `cluster` is what STATS says of the node's cluster.
    pub fn new(
        network: &mut Network,
        node_id: [u8; 32],
        config: &cairn_bootcfg::NodeConfig,
        cluster: String,
    ) -> Api {
        let connections = Connections::new(network, config.api_idle_s, &config.ceilings);
        Api { connections, node_id, served: Cell::new(0), cluster, fault: config.fault, idle_us: 0 }
    }

    /// Moves bytes between the sockets and their sessions; true if anything happened.
    pub fn poll(&mut self, network: &mut Network, ev: &mut NodeEvaluator, jobs: &mut Jobs) -> bool {
        let mut node = Node {
            ev,
            jobs,
            cluster: &self.cluster,
            fault: self.fault,
            node_id: self.node_id,
            served: &self.served,
            refusals: self.connections.refusals,
            idle_us: self.idle_us,
        };
        self.connections.poll(network, &mut node, &self.served, true)
    }

    /// [`Api::poll`] while the node evaluates (`net::busy`): sessions answer what the store
    /// alone can answer and keep the rest; no connection times out meanwhile, since the
    /// evaluation is not the clients' idleness.
    pub fn poll_busy(&mut self, network: &mut Network, store: &NodeStore) -> bool {
        let mut node = BusyNode { store, fault: self.fault, node_id: self.node_id };
        self.connections.poll(network, &mut node, &self.served, false)
    }

    /// The next job a client asked for; run it, then hand the answer to [`Api::deliver`].
    /// Work whose connection has gone is dropped, not run: nobody would get its answer. Work
    /// that needs the node quiet (see [`Api::next_needs_quiet`]) is taken only if `any`.
    pub fn next_work(&mut self, any: bool) -> Option<Queued> {
        if !any && self.next_needs_quiet() {
            return None;
        }
        self.drop_unwanted();
        self.connections.queued.pop_front()
    }

    /// Whether the next work needs no EVAL under way: anything but an EVAL or a PIN (a job's
    /// IO and journal, a GC's view of what is live, a scrub, a peer's FETCH or RELOCATE). It
    /// waits while EVALs are under way (`net::evaluations`), and the work queued behind it too.
    pub fn next_needs_quiet(&mut self) -> bool {
        use cairn_proto::session::Work;
        self.drop_unwanted();
        self.connections.queued.front().is_some_and(|q| {
            !matches!(q.work, Work::Eval { .. } | Work::Pin { .. } | Work::Coordinate { .. })
        })
    }

    fn drop_unwanted(&mut self) {
        while let Some(queued) = self.connections.queued.front() {
            if self.wanted(queued) {
                return;
            }
            self.connections.queued.pop_front();
        }
    }

    /// Whether the connection that asked for `queued` is still there to hear its answer.
    pub fn wanted(&self, queued: &Queued) -> bool {
        let slot = &self.connections.slots[queued.slot];
        slot.generation == queued.generation && slot.session.is_some()
    }

    /// Answers queued work, unless its connection has gone in the meantime.
    pub fn deliver(&mut self, queued: Queued, answer: cairn_proto::Message) {
        let slot = &mut self.connections.slots[queued.slot];
        if slot.generation == queued.generation
            && let Some(session) = slot.session.as_mut()
        {
            session.deliver(queued.request, answer);
            // A long job is activity, not idleness.
            slot.last_active = clock::micros_since_boot();
        }
    }
}
