//! What an operator asks of a node's disk (docs/STORE.md): SCRUB, with damaged objects fetched
//! again from peers that hold them; PIN and UNPIN; GC.

use alloc::format;
use alloc::vec::Vec;

use cairn_object::Handle;
use cairn_proto::session::Work;
use cairn_proto::{ErrorCode, Message};

use super::Network;
use super::jobs::Jobs;
use super::peer::ServeOthers;
use crate::jobs::NodeEvaluator;
use crate::memory::objects::{NO_DISK, NodeStore, PinRefused, ScrubReport};
use cairn_object::store::StoreError;

fn no_disk(what: &str) -> Message {
    Message::Error { code: ErrorCode::Unexpected, message: format!("{NO_DISK}: nothing to {what}") }
}

/// Every object on the disk read and checked; `serve` answers others between objects.
#[allow(clippy::result_large_err, reason = "the error is the answer to send, made once")]
pub fn scrub(store: &NodeStore) -> Result<ScrubReport, Message> {
    if store.disk_stats().is_none() {
        return Err(no_disk("scrub"));
    }
    store
        .scrub(|| super::busy::serve(store))
        .map_err(|e| Message::Error { code: ErrorCode::Internal, message: format!("scrub: {e}") })
}

/// A scrub's answer, once the damaged objects it names were fetched again, checked, from the
/// node's peers (in a cluster), one peer after another while some are still missing.
pub fn restore(
    scrubbed: Result<ScrubReport, Message>,
    jobs: &mut Jobs,
    mut cluster: Option<&mut Network>,
    others: &mut ServeOthers<'_>,
    ev: &mut NodeEvaluator,
) -> Message {
    let report = match scrubbed {
        Ok(report) => report,
        Err(answer) => return answer,
    };
    let lost = |ev: &NodeEvaluator| -> Vec<Handle> {
        report.damaged.iter().filter(|h| !ev.store.holds_durably(h)).copied().collect()
    };
    let peers = jobs.peers.clone();
    for peer in peers {
        let (missing, Some(network)) = (lost(ev), cluster.as_deref_mut()) else { break };
        if missing.is_empty() {
            break;
        }
        let fetch = Work::Fetch { from: (peer, super::api::PORT), handles: missing };
        if let Message::Error { message, .. } = jobs.run_with_peer(fetch, Some(network), others, ev) {
            log::warn!("store: scrub: fetching damaged objects again from a peer: {message}");
        }
        // What was fetched counts once it is durable.
        if let Err(e) = ev.store.sync() {
            log::warn!("store: {e}");
        }
    }
    let restored = (report.damaged.len() - lost(ev).len()) as u64;
    log::info!(
        "store: scrub: {} objects ({} bytes) checked, {} damaged ({} held again: {} written back from memory, the rest fetched from peers), {} not read for want of memory",
        report.checked,
        report.bytes,
        report.damaged_total,
        restored,
        report.rewritten,
        report.unchecked
    );
    Message::Scrubbed {
        checked: report.checked,
        bytes: report.bytes,
        damaged_total: report.damaged_total,
        damaged: report.damaged,
        restored,
        unchecked: report.unchecked,
    }
}

/// PIN or UNPIN, durable before the answer (the node commits before it answers work).
pub fn pin(store: &NodeStore, handle: Handle, pinned: bool) -> Message {
    let (code, message) = match store.set_pin(&handle, pinned) {
        Ok(()) => return Message::Pinned { handle, pinned },
        Err(PinRefused::NoDisk(why)) => (ErrorCode::Unexpected, format!("{why}: nothing to pin")),
        Err(PinRefused::NotThere(why)) => (ErrorCode::NotFound, why),
        Err(PinRefused::Disk(e @ StoreError::Full { .. })) => (ErrorCode::StoreFull, format!("{e}")),
        Err(PinRefused::Disk(e)) => (ErrorCode::Internal, format!("{e}")),
    };
    Message::Error { code, message }
}

/// GC: what nothing keeps forgotten, then the log compacted (docs/STORE.md, "Space").
pub fn collect(ev: &mut NodeEvaluator, goal: u64) -> Message {
    if ev.store.disk_stats().is_none() {
        return no_disk("collect");
    }
    let Some(roots) = super::jobs::gc_roots(ev) else {
        let message =
            "gc: no memory for the list of what the disk's journals keep; nothing was collected".into();
        return Message::Error { code: ErrorCode::Internal, message };
    };
    match ev.store.collect(&roots, (goal > 0).then_some(goal)) {
        Ok((collected, compacted)) => {
            let free = ev.store.disk_stats().map_or(0, |d| d.free_bytes);
            log::info!(
                "store: gc: {} objects ({} bytes) forgotten, {} kept; compaction copied {} bytes and gave back {} bytes of log; {} bytes free",
                collected.objects,
                collected.bytes,
                collected.kept,
                compacted.copied_bytes,
                compacted.reclaimed,
                free
            );
            Message::Collected {
                objects: collected.objects,
                bytes: collected.bytes,
                kept: collected.kept,
                copied_bytes: compacted.copied_bytes,
                reclaimed: compacted.reclaimed,
                free,
            }
        }
        Err(e) => Message::Error { code: ErrorCode::Internal, message: format!("gc: {e}") },
    }
}
