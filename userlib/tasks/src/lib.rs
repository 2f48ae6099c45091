//! Shared helpers of the example tasks: little-endian numbers in blobs.

#![no_std]

use cairn_userlib::{Handle, TaskError};

/// Reads a blob of exactly 8 bytes as a little-endian u64.
pub fn read_u64(handle: &Handle) -> Result<u64, TaskError> {
    #[cfg(target_os = "none")]
    {
        let bytes = cairn_userlib::open(handle);
        let array: [u8; 8] =
            bytes.try_into().map_err(|_| TaskError::from(alloc_free_message(bytes.len())))?;
        Ok(u64::from_le_bytes(array))
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = handle;
        Err(TaskError::from("tasks only run on the node"))
    }
}

#[cfg(target_os = "none")]
fn alloc_free_message(len: usize) -> &'static str {
    if len < 8 {
        "expected an 8-byte number, got fewer bytes"
    } else {
        "expected an 8-byte number, got more bytes"
    }
}
