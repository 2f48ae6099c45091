//! QEMU's fw_cfg device through its I/O ports (0x510 selector, 0x511 data): the kernel reads the
//! files the host gives QEMU with `-fw_cfg name=...,file=...` (the node's keys). Finding a file
//! in the directory is `cairn_bootcfg::fw_cfg`'s, tested on the host.

use alloc::vec;
use alloc::vec::Vec;

use cairn_bootcfg::fw_cfg::{DIRECTORY, ENTRY_LEN, MAX_ENTRIES, find};
use x86_64::instructions::port::Port;

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;
/// The selector of the signature, "QEMU" where the device exists.
const SIGNATURE: u16 = 0x0000;
/// No file the kernel reads is larger.
const MAX_FILE: u32 = 64 * 1024;

fn select(key: u16) {
    // SAFETY: writing the selector port of fw_cfg (or of nothing, where there is no such device:
    // an unused I/O port ignores writes). Only the boot CPU uses these ports, before serving.
    unsafe { Port::<u16>::new(SELECTOR).write(key) };
}

fn read(out: &mut [u8]) {
    let mut port = Port::<u8>::new(DATA);
    for byte in out {
        // SAFETY: reading the data port advances within the selected item; reads past its end
        // give zeros, and an absent device gives 0xff.
        *byte = unsafe { port.read() };
    }
}

/// Whether QEMU's fw_cfg is there.
pub fn present() -> bool {
    select(SIGNATURE);
    let mut signature = [0u8; 4];
    read(&mut signature);
    &signature == b"QEMU"
}

#[derive(Debug)]
pub enum FwCfgError {
    /// No fw_cfg device (not QEMU, or a machine without it).
    NoDevice,
    /// The device has no such file.
    NoFile,
    /// The file is larger than the kernel reads.
    TooLarge(u32),
}

/// The bytes of the fw_cfg file `name`.
pub fn file(name: &str) -> Result<Vec<u8>, FwCfgError> {
    if !present() {
        return Err(FwCfgError::NoDevice);
    }
    select(DIRECTORY);
    let mut count = [0u8; 4];
    read(&mut count);
    let count = u32::from_be_bytes(count).min(MAX_ENTRIES) as usize;
    let mut entries = vec![0u8; count * ENTRY_LEN];
    read(&mut entries);
    let (selector, size) = find(&entries, name).ok_or(FwCfgError::NoFile)?;
    if size > MAX_FILE {
        return Err(FwCfgError::TooLarge(size));
    }
    select(selector);
    let mut bytes = vec![0u8; size as usize];
    read(&mut bytes);
    Ok(bytes)
}
