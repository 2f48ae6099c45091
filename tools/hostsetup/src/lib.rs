//! What the host needs to run Cairn nodes (QEMU, qemu-img, OVMF): finding it, and installing
//! what is missing with apt so that every QEMU package comes from one version. `cairn` and
//! `.ci/run` (through `cairn setup`) both install through [`ensure`].

pub mod apt;
pub mod plan;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, bail};

pub use plan::{Missing, Plan, PlanError};

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

/// `qemu-system-x86_64`: `$CAIRN_QEMU`, else from PATH.
pub fn locate_qemu() -> anyhow::Result<Option<PathBuf>> {
    Ok(env_path("CAIRN_QEMU")?.or_else(|| find_program("qemu-system-x86_64")))
}

/// `qemu-img` from PATH.
pub fn locate_qemu_img() -> Option<PathBuf> {
    find_program("qemu-img")
}

/// OVMF's code and variable store: `$CAIRN_OVMF_CODE` and `$CAIRN_OVMF_VARS`, else where
/// distributions put them.
pub fn locate_ovmf() -> anyhow::Result<Option<Ovmf>> {
    if let (Some(code), Some(vars)) = (env_path("CAIRN_OVMF_CODE")?, env_path("CAIRN_OVMF_VARS")?) {
        return Ok(Some(Ovmf { code, vars }));
    }
    Ok(OVMF_PAIRS
        .iter()
        .map(|(c, v)| (Path::new(c), Path::new(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .map(|(c, v)| Ovmf { code: c.into(), vars: v.into() }))
}

/// What of QEMU, qemu-img and OVMF the host lacks now.
pub fn missing() -> anyhow::Result<Missing> {
    Ok(Missing {
        qemu_system: locate_qemu()?.is_none(),
        qemu_utils: locate_qemu_img().is_none(),
        ovmf: locate_ovmf()?.is_none(),
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One install at a time, even when many tests boot nodes in parallel (apt's own lock orders
/// separate processes).
static INSTALL: Mutex<()> = Mutex::new(());

/// Makes sure QEMU, qemu-img and OVMF are all there: as root, installs what is missing with apt
/// (every QEMU package at one version, see [`plan`]) and then checks the result; otherwise stops
/// with the exact command that would. `log` receives the lines worth telling the user.
pub fn ensure(log: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let missing = missing()?;
    if !missing.any() {
        return Ok(());
    }
    let what = missing.describe();
    if find_program("apt-get").is_none() || find_program("dpkg-query").is_none() {
        bail!(
            "missing: {what}; this host has no apt to install it with: use your package manager, or \
             point CAIRN_QEMU, CAIRN_OVMF_CODE and CAIRN_OVMF_VARS at your own"
        );
    }
    if !is_root() {
        bail!("missing: {what}; {}", command_for_user(missing));
    }
    log(&format!("missing: {what}; installing with apt-get (as root)"));
    apt::apt_get(&["-qq".into(), "update".into()])
        .context("apt-get update failed; the package lists are needed to pick QEMU's version")?;
    let facts = apt::facts(&packages_of_interest())?;
    let plan = plan::decide(missing, &facts)?.context("nothing to install, yet something is missing")?;
    if let Some(line) = plan.replacing_line() {
        log(&line);
    }
    log(&plan.to_string());
    apt::apt_get(&plan.apt_args())
        .with_context(|| format!("installing QEMU failed; the command was: {}", plan.shell_command(false)))?;
    let versions = verify()?;
    log(&format!("installed: {}", versions.join("; ")));
    Ok(())
}

fn packages_of_interest() -> Vec<&'static str> {
    let mut all: Vec<&str> = plan::QEMU_FAMILY.to_vec();
    all.push(plan::OVMF);
    all
}

/// What a user who is not root should run: the pinned install when the package lists already
/// tell which version fits, else the update that lets `cairn` tell next time.
fn command_for_user(missing: Missing) -> String {
    let sudo = find_program("sudo").is_some();
    let as_root = if sudo { "" } else { " (as root)" };
    let planned = apt::facts(&packages_of_interest()).ok().map(|facts| plan::decide(missing, &facts));
    match planned {
        Some(Ok(Some(plan))) => {
            let mut text = format!("install{as_root} with: {}", plan.shell_command(sudo));
            if let Some(line) = plan.replacing_line() {
                text.push_str(&format!(" ({line})"));
            }
            text
        }
        Some(Err(PlanError::NotOffered(_))) | None | Some(Ok(None)) => {
            let prefix = if sudo { "sudo " } else { "" };
            format!(
                "the package lists do not say which QEMU to install: run{as_root} `{prefix}apt-get \
                 update`, then run this again for the exact command"
            )
        }
        Some(Err(e)) => format!("it cannot be installed with apt as things are: {e}"),
    }
}

/// Runs `program --version` and returns its first line.
fn version_line(program: &Path) -> anyhow::Result<String> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!("{} --version failed ({})", program.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string())
}

/// Checks that QEMU and qemu-img run and that OVMF is there; names whatever is still missing.
/// Returns a line for each: the two version lines and the firmware's path.
pub fn verify() -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut check = |name: &str, path: Option<PathBuf>| match path {
        None => problems.push(format!("{name} is not on PATH")),
        Some(p) => match version_line(&p) {
            Ok(line) => found.push(line),
            Err(e) => problems.push(format!("{e:#}")),
        },
    };
    check("qemu-system-x86_64", locate_qemu()?);
    check("qemu-img", locate_qemu_img());
    match locate_ovmf()? {
        Some(o) => found.push(format!("OVMF {}", o.code.display())),
        None => problems.push(format!(
            "no OVMF firmware at any of {}",
            OVMF_PAIRS.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
        )),
    }
    if !problems.is_empty() {
        bail!("still missing after installing: {}", problems.join("; "));
    }
    Ok(found)
}

/// `cairn setup`: installs what is missing as [`ensure`] does (or, with `dry_run`, only says what
/// it would run), then reports what is there.
pub fn setup(dry_run: bool, log: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let missing = missing()?;
    if dry_run {
        log(&format!("missing: {}", if missing.any() { missing.describe() } else { "nothing".into() }));
        match plan::decide(missing, &apt::facts(&packages_of_interest())?)? {
            None => log("nothing to install"),
            Some(plan) => {
                if let Some(line) = plan.replacing_line() {
                    log(&line);
                }
                log(&format!("would run: {}", plan.shell_command(!is_root())));
            }
        }
        return Ok(());
    }
    if missing.any() {
        // Installs, checks and says what it found.
        return ensure(log);
    }
    for line in verify()? {
        log(&line);
    }
    Ok(())
}
