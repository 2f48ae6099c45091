//! The IO half of Cairn (docs/IO.md) as pure logic: a job's manifest and the capabilities it
//! grants, the journal of IO results, and the IO layer that performs requests for a job (or
//! answers them from a journal when replaying). The kernel supplies a [`Transport`] that opens
//! TCP connections; nothing here touches a device.

#![no_std]

extern crate alloc;

mod job;
mod journal;
mod layer;
mod manifest;
pub mod time;

pub use job::{Job, JobError};
pub use journal::{Entry, Journal, JournalError, MAX_ENTRIES as MAX_JOURNAL_ENTRIES};
pub use layer::{JobIo, RESPONSE_LIMIT, Transport};
pub use manifest::{Capability, Manifest, ManifestError, MissingCapability};
