//! What the host needs to run nodes (QEMU, OVMF, qemu-img), found or installed by
//! `cairn-hostsetup`, the one install routine `cairn` and `.ci/run` share.

use std::path::PathBuf;

use anyhow::Context;
use cairn_boot::Firmware;
pub use cairn_hostsetup::Ovmf;

/// Installs whatever of QEMU, qemu-img and OVMF is missing (or says how), all at once so that
/// the QEMU packages come from one version.
fn ensure_installed() -> anyhow::Result<()> {
    cairn_hostsetup::ensure(&mut |line| eprintln!("cairn: {line}"))
}

/// The QEMU binary, installing QEMU first if it is missing and we may.
pub fn qemu() -> anyhow::Result<PathBuf> {
    if let Some(q) = cairn_hostsetup::locate_qemu()? {
        return Ok(q);
    }
    ensure_installed()?;
    cairn_hostsetup::locate_qemu()?.context("qemu-system-x86_64 is still not on PATH after installing")
}

/// OVMF firmware for UEFI boots, installing it first if it is missing and we may.
pub fn ovmf() -> anyhow::Result<Ovmf> {
    if let Some(o) = cairn_hostsetup::locate_ovmf()? {
        return Ok(o);
    }
    ensure_installed()?;
    cairn_hostsetup::locate_ovmf()?.context("OVMF firmware is still missing after installing")
}

pub fn qemu_img() -> anyhow::Result<PathBuf> {
    if let Some(q) = cairn_hostsetup::locate_qemu_img() {
        return Ok(q);
    }
    ensure_installed()?;
    cairn_hostsetup::locate_qemu_img().context("qemu-img is still not on PATH after installing")
}

/// Everything a boot with `firmware` needs.
pub fn check_for(firmware: Firmware) -> anyhow::Result<(PathBuf, Option<Ovmf>)> {
    let qemu = qemu()?;
    let ovmf = match firmware {
        Firmware::Bios => None,
        Firmware::Uefi => Some(ovmf()?),
    };
    Ok((qemu, ovmf))
}
