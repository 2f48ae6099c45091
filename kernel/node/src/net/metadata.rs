//! A node's configuration from GCE's metadata server (docs/CLOUD.md): once the first card has
//! its address, one HTTP GET of the instance attribute `cairn-config`, which holds the text of a
//! configuration disk. The request goes out as a job's IO would, through a capability for that
//! one endpoint; nothing else is reachable this way.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use cairn_bootcfg::external::{GCE_METADATA, GCE_PATH, MAX_LEN, gce_request};
use cairn_io::{Manifest, Transport};
use cairn_object::io::{Effect, Endpoint, Request, http_body};

use super::Network;
use super::client::NetTransport;
use crate::arch::clock;

/// How long the node waits for DHCP before it gives up on the metadata server.
const ADDRESS_WAIT_US: u64 = 10_000_000;
/// How long the whole request may take.
const REQUEST_US: u64 = 20_000_000;

/// The configuration text GCE's metadata server holds for this instance, or why there is none.
pub fn gce(network: &mut Network) -> Result<Vec<u8>, String> {
    let started = clock::micros_since_boot();
    while network.address.is_none() {
        network.device.rearm();
        network.poll();
        if clock::micros_since_boot().saturating_sub(started) > ADDRESS_WAIT_US {
            return Err("no address from DHCP within 10 s, so no way to it".into());
        }
        x86_64::instructions::interrupts::enable_and_hlt();
    }
    let to = Endpoint { ip: GCE_METADATA, port: 80 };
    let manifest = Manifest::new([(Effect::HttpGet, to)]);
    let capability = manifest
        .capability_for(&Request::HttpGet { to, path: GCE_PATH.into() })
        .map_err(|e| format!("{e}"))?;
    let raw = NetTransport::new(network, REQUEST_US)
        .exchange(&capability, gce_request().as_bytes(), MAX_LEN + 4096)
        .map_err(|why| format!("GET {GCE_PATH}: {why}"))?;
    let body = http_body(&raw).map_err(|why| format!("GET {GCE_PATH}: {why}"))?;
    Ok(body.to_vec())
}
