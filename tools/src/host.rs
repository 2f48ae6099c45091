//! Finding (and if allowed, installing) what the host needs to run nodes: QEMU, OVMF, qemu-img.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, bail};
use cairn_boot::Firmware;

const APT_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-utils", "ovmf"];
const OVMF_PAIRS: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
];

#[derive(Clone, Debug)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// Path of `name` on $PATH, like `command -v`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A path from an environment override, if set; an override that names a missing file is an
/// error, not a silent fallback.
fn env_path(var: &str) -> anyhow::Result<Option<PathBuf>> {
    match std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from) {
        Some(p) if !p.is_file() => bail!("{var} is set to {}, which is not a file", p.display()),
        other => Ok(other),
    }
}

fn locate_qemu() -> anyhow::Result<Option<PathBuf>> {
    Ok(env_path("CAIRN_QEMU")?.or_else(|| find_program("qemu-system-x86_64")))
}

fn locate_ovmf() -> anyhow::Result<Option<Ovmf>> {
    if let (Some(code), Some(vars)) = (env_path("CAIRN_OVMF_CODE")?, env_path("CAIRN_OVMF_VARS")?) {
        return Ok(Some(Ovmf { code, vars }));
    }
    Ok(OVMF_PAIRS
        .iter()
        .map(|(c, v)| (Path::new(c), Path::new(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .map(|(c, v)| Ovmf { code: c.into(), vars: v.into() }))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One install at a time, even when many tests boot nodes in parallel.
static INSTALL: Mutex<()> = Mutex::new(());

fn install_or_explain(missing: &str) -> anyhow::Result<()> {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let command = format!("sudo apt-get update && sudo apt-get install -y {}", APT_PACKAGES.join(" "));
    if !is_root() || find_program("apt-get").is_none() {
        bail!("{missing} is not installed; install it with: {command}");
    }
    eprintln!("cairn: {missing} is missing; installing {} with apt-get (as root)", APT_PACKAGES.join(" "));
    let lock_wait = "DPkg::Lock::Timeout=300";
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(["-o", lock_wait, "-q"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status}); install by hand with: {command}", args[0]);
        }
        Ok(())
    };
    run(&["update"])?;
    let mut install = vec!["install", "-y"];
    install.extend(APT_PACKAGES);
    run(&install)
}

/// The QEMU binary, installing QEMU first if it is missing and we may.
pub fn qemu() -> anyhow::Result<PathBuf> {
    if let Some(q) = locate_qemu()? {
        return Ok(q);
    }
    install_or_explain("QEMU (qemu-system-x86_64)")?;
    locate_qemu()?.context("qemu-system-x86_64 is still not on PATH after installing qemu-system-x86")
}

/// OVMF firmware for UEFI boots, installing it first if it is missing and we may.
pub fn ovmf() -> anyhow::Result<Ovmf> {
    if let Some(o) = locate_ovmf()? {
        return Ok(o);
    }
    install_or_explain("OVMF (UEFI firmware for QEMU)")?;
    locate_ovmf()?.context("OVMF firmware is still missing after installing the ovmf package")
}

pub fn qemu_img() -> anyhow::Result<PathBuf> {
    if let Some(q) = find_program("qemu-img") {
        return Ok(q);
    }
    install_or_explain("qemu-img")?;
    find_program("qemu-img").context("qemu-img is still not on PATH after installing qemu-utils")
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
