//! What to ask apt for, decided from what is installed and what the sources offer. Pure: the
//! facts come in as values, so every case is tested on the host without apt.
//!
//! Debian's QEMU packages insist on one version among themselves (`qemu-system-x86` depends on
//! `qemu-system-common (= its version)`, and `qemu-utils` from a newer QEMU *Breaks* an older
//! `qemu-system-common`). A machine that already has `qemu-utils` from backports therefore cannot
//! take a plain `apt-get install qemu-system-x86 qemu-utils`: every QEMU package must be pinned to
//! one version that the sources offer for all of them.

use std::collections::BTreeMap;
use std::fmt;

pub const QEMU_SYSTEM: &str = "qemu-system-x86";
pub const QEMU_UTILS: &str = "qemu-utils";
pub const OVMF: &str = "ovmf";

/// The architecture-dependent packages built from QEMU's source. They share one version string
/// (a binary rebuild suffix such as `+b3` included), and an installed one at another version
/// would break the install, so each of them is pinned along with the rest.
pub const QEMU_FAMILY: &[&str] =
    &[QEMU_SYSTEM, QEMU_UTILS, "qemu-system-common", "qemu-block-extra", "qemu-system-gui"];

/// What the host lacks, by what was looked for (a program on PATH, the firmware files).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// `qemu-system-x86_64`, from `qemu-system-x86`.
    pub qemu_system: bool,
    /// `qemu-img`, from `qemu-utils`.
    pub qemu_utils: bool,
    /// The OVMF firmware files, from `ovmf`.
    pub ovmf: bool,
}

impl Missing {
    pub fn any(&self) -> bool {
        self.qemu_system || self.qemu_utils || self.ovmf
    }

    /// The missing things, named for a person.
    pub fn describe(&self) -> String {
        let mut names = Vec::new();
        if self.qemu_system {
            names.push("QEMU (qemu-system-x86_64)");
        }
        if self.qemu_utils {
            names.push("qemu-img");
        }
        if self.ovmf {
            names.push("OVMF (UEFI firmware for QEMU)");
        }
        names.join(", ")
    }
}

/// One package as dpkg and apt see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackageState {
    /// The installed version, if the package is installed.
    pub installed: Option<String>,
    /// The version `apt-get install PACKAGE` would pick.
    pub candidate: Option<String>,
    /// Every version some configured source offers (not counting dpkg's own record).
    pub offered: Vec<String>,
}

/// What dpkg and apt know about the packages that matter here, by package name.
pub type Facts = BTreeMap<String, PackageState>;

/// An installed package that the plan replaces with another version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    pub package: String,
    pub from: String,
    pub to: String,
}

/// One `apt-get install`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `package` or `package=version`, in a fixed order.
    pub packages: Vec<String>,
    /// The one version every QEMU package gets, when QEMU packages are installed at all.
    pub qemu_version: Option<String>,
    /// Installed packages that change version (and may go down: `--allow-downgrades`).
    pub replacing: Vec<Replacement>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the apt sources offer no {0} (see /etc/apt/sources.list*; `apt-get update` refreshes the lists)"
    )]
    NotOffered(String),
    #[error(
        "no QEMU version is offered for all of {needed}: {package} is offered at {offered} only, \
         while {other} wants {version}"
    )]
    NoCommonVersion { needed: String, package: String, offered: String, other: String, version: String },
    #[error(
        "{package} {installed} is installed and the apt sources do not offer it at {version}, the \
         version the other QEMU packages need; remove it first (apt-get remove {package})"
    )]
    StrandedPackage { package: String, installed: String, version: String },
}

fn state<'a>(facts: &'a Facts, package: &str) -> Option<&'a PackageState> {
    facts.get(package)
}

fn installed<'a>(facts: &'a Facts, package: &str) -> Option<&'a str> {
    state(facts, package)?.installed.as_deref()
}

fn offered_at(facts: &Facts, package: &str, version: &str) -> bool {
    state(facts, package).is_some_and(|s| s.offered.iter().any(|v| v == version))
}

/// The version every QEMU package gets: an installed QEMU package's version if the sources offer
/// every needed package at it (installed `qemu-system-x86` first, then `qemu-utils`), otherwise
/// the `qemu-system-x86` candidate.
fn choose_qemu_version(facts: &Facts, needed: &[&str]) -> Result<String, PlanError> {
    let keep = [QEMU_SYSTEM, QEMU_UTILS]
        .iter()
        .filter_map(|p| installed(facts, p))
        .find(|v| needed.iter().all(|p| offered_at(facts, p, v)));
    if let Some(version) = keep {
        return Ok(version.to_string());
    }
    let candidate = state(facts, QEMU_SYSTEM)
        .and_then(|s| s.candidate.clone())
        .ok_or_else(|| PlanError::NotOffered(QEMU_SYSTEM.into()))?;
    for package in needed {
        if !offered_at(facts, package, &candidate) {
            let offered = state(facts, package).map(|s| s.offered.join(", ")).unwrap_or_default();
            if offered.is_empty() {
                return Err(PlanError::NotOffered(package.to_string()));
            }
            return Err(PlanError::NoCommonVersion {
                needed: needed.join(", "),
                package: package.to_string(),
                offered,
                other: QEMU_SYSTEM.into(),
                version: candidate,
            });
        }
    }
    Ok(candidate)
}

/// The install that supplies what is missing, keeping every QEMU package at one version. `None`
/// when nothing is missing.
pub fn decide(missing: Missing, facts: &Facts) -> Result<Option<Plan>, PlanError> {
    if !missing.any() {
        return Ok(None);
    }
    let mut needed: Vec<&str> = Vec::new();
    if missing.qemu_system {
        needed.push(QEMU_SYSTEM);
    }
    if missing.qemu_utils {
        needed.push(QEMU_UTILS);
    }
    let mut plan = Plan { packages: Vec::new(), qemu_version: None, replacing: Vec::new() };
    if !needed.is_empty() {
        let version = choose_qemu_version(facts, &needed)?;
        for package in QEMU_FAMILY {
            let have = installed(facts, package);
            let wanted = needed.contains(package);
            match have {
                Some(v) if v == version => {}
                Some(v) => {
                    if !offered_at(facts, package, &version) {
                        return Err(PlanError::StrandedPackage {
                            package: package.to_string(),
                            installed: v.into(),
                            version,
                        });
                    }
                    plan.replacing.push(Replacement {
                        package: package.to_string(),
                        from: v.into(),
                        to: version.clone(),
                    });
                    plan.packages.push(format!("{package}={version}"));
                }
                None if wanted => plan.packages.push(format!("{package}={version}")),
                None => {}
            }
        }
        plan.qemu_version = Some(version);
    }
    if missing.ovmf {
        if state(facts, OVMF).and_then(|s| s.candidate.as_ref()).is_none() {
            return Err(PlanError::NotOffered(OVMF.into()));
        }
        plan.packages.push(OVMF.into());
    }
    Ok(Some(plan))
}

impl Plan {
    /// The arguments to `apt-get`. Recommends are left out: they pull in a GUI and ffmpeg, which a
    /// headless node does not use, and one of them would need pinning too.
    pub fn apt_args(&self) -> Vec<String> {
        let mut args: Vec<String> =
            ["install", "-y", "-qq", "--no-install-recommends"].map(String::from).into();
        if !self.replacing.is_empty() {
            args.push("--allow-downgrades".into());
        }
        args.extend(self.packages.iter().cloned());
        args
    }

    /// One line saying which installed packages change version, if any.
    pub fn replacing_line(&self) -> Option<String> {
        if self.replacing.is_empty() {
            return None;
        }
        let what: Vec<String> =
            self.replacing.iter().map(|r| format!("{} {} with {}", r.package, r.from, r.to)).collect();
        Some(format!("replacing {} so that every QEMU package comes from one version", what.join(", ")))
    }

    /// The shell command that carries the plan out, as a person would type it: with `sudo` when
    /// not root, and `apt-get update` first.
    pub fn shell_command(&self, sudo: bool) -> String {
        let prefix = if sudo { "sudo " } else { "" };
        let args: Vec<String> = self.apt_args().iter().map(|a| shell_quote(a)).collect();
        format!("{prefix}apt-get update && {prefix}apt-get {}", args.join(" "))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "apt-get {}", self.apt_args().join(" "))
    }
}

/// `word` as the shell reads it back unchanged.
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._+:=-/,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
