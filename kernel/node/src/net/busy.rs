//! Serving while the node evaluates.
//!
//! An EVAL can run for seconds. Without this, every other client, and every peer fetching
//! inputs from this node, would wait for it. The node's networks and APIs live in [`SERVING`]:
//! the node's loop holds the lock while it polls and while it runs jobs that use the network,
//! and lets go of it for an EVAL. Meanwhile the task executor calls [`serve`] each time a
//! running task is interrupted (the 100 Hz timer, or a network card), which answers HELLO,
//! HAVE and GET from the store, read-only, and keeps everything else for later
//! (`NodeApi::busy` in `cairn_proto::session`).

use spin::Mutex;

use super::Network;
use super::api::Api;
use crate::memory::objects::NodeStore;

/// The node's networks (the user network, and the cluster network if it is in one) and the
/// API served on each.
pub struct Serving {
    pub network: Network,
    pub cluster: Option<Network>,
    pub api: Api,
    pub cluster_api: Option<Api>,
}

pub static SERVING: Mutex<Option<Serving>> = Mutex::new(None);

/// Answers what a busy node can, from `store`; does nothing unless the node's loop has let go
/// of the networks for an evaluation.
pub fn serve(store: &NodeStore) {
    // The networks are the boot CPU's: the others run tasks and never serve.
    if !crate::arch::percpu::is_boot_cpu() {
        return;
    }
    let Some(mut guard) = SERVING.try_lock() else { return };
    let Some(s) = guard.as_mut() else { return };
    s.network.device.rearm();
    s.network.poll();
    let mut moved = s.api.poll_busy(&mut s.network, store);
    if let (Some(cluster), Some(cluster_api)) = (s.cluster.as_mut(), s.cluster_api.as_mut()) {
        cluster.device.rearm();
        cluster.poll();
        moved |= cluster_api.poll_busy(cluster, store);
    }
    if moved {
        // Replies go out now rather than at the next interruption.
        s.network.poll();
        if let Some(cluster) = s.cluster.as_mut() {
            cluster.poll();
        }
    }
}
