//! Reading dpkg's and apt's view of the packages, and running apt-get. The parsers are pure and
//! tested on recorded output; the rest runs the commands with a fixed locale.

use std::process::Command;

use anyhow::{Context, bail};

use crate::plan::{Facts, PackageState};

/// Waiting for another apt (an unattended upgrade, a parallel test) instead of failing at once.
const LOCK_WAIT: &str = "DPkg::Lock::Timeout=300";

fn query(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    // dpkg-query exits 1 when a package is unknown to it, and still prints the others.
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installed versions from `dpkg-query -W -f '${Package}\t${db:Status-Abbrev}\t${Version}\n'`:
/// a package counts as installed when its status letter (the second) is `i`.
pub fn parse_dpkg_query(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (package, status, version) = (fields.next()?, fields.next()?, fields.next()?);
            let installed = status.chars().nth(1) == Some('i') && !version.is_empty();
            installed.then(|| (package.trim().to_string(), version.trim().to_string()))
        })
        .collect()
}

/// Candidates and offered versions from `apt-cache policy PACKAGE...` (in the C locale). A version
/// counts as offered when some source other than dpkg's status file lists it.
pub fn parse_apt_policy(out: &str) -> Vec<(String, PackageState)> {
    let mut result: Vec<(String, PackageState)> = Vec::new();
    let mut version: Option<String> = None;
    for line in out.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 0 {
            if let Some(name) = text.strip_suffix(':').filter(|n| !n.contains(' ')) {
                result.push((name.to_string(), PackageState::default()));
                version = None;
            }
            continue;
        }
        let Some((_, state)) = result.last_mut() else { continue };
        if let Some(v) = text.strip_prefix("Installed:") {
            state.installed = known(v);
        } else if let Some(v) = text.strip_prefix("Candidate:") {
            state.candidate = known(v);
        } else if text.starts_with("Version table:") {
        } else if let Some(v) = text.strip_prefix("***") {
            version = v.split_whitespace().next().map(String::from);
        } else if indent <= 6 {
            version = text.split_whitespace().next().map(String::from);
        } else if let Some(v) = &version {
            // A source line: "PRIORITY WHERE...".
            let source = text.split_whitespace().nth(1).unwrap_or("");
            if source != "/var/lib/dpkg/status" && !state.offered.contains(v) {
                state.offered.push(v.clone());
            }
        }
    }
    result
}

fn known(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty() && v != "(none)").then(|| v.to_string())
}

/// What dpkg and apt know of `packages` now.
pub fn facts(packages: &[&str]) -> anyhow::Result<Facts> {
    let mut facts = Facts::new();
    let mut policy_args = vec!["policy"];
    policy_args.extend(packages);
    for (name, state) in parse_apt_policy(&query("apt-cache", &policy_args)?) {
        facts.insert(name, state);
    }
    let mut dpkg_args = vec!["-W", "-f", "${Package}\\t${db:Status-Abbrev}\\t${Version}\\n"];
    dpkg_args.extend(packages);
    // dpkg is the authority on what is installed; apt-cache agrees, but only if its cache is fresh.
    for state in facts.values_mut() {
        state.installed = None;
    }
    for (name, version) in parse_dpkg_query(&query("dpkg-query", &dpkg_args)?) {
        facts.entry(name).or_default().installed = Some(version);
    }
    Ok(facts)
}

/// `apt-get ARGS...`, non-interactive, waiting for apt's lock. Its output (and dpkg's, hundreds of
/// lines) is kept back and shown only when it fails, the last lines of it.
pub fn apt_get(args: &[String]) -> anyhow::Result<()> {
    let out = Command::new("apt-get")
        .args(["-o", LOCK_WAIT])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run apt-get")?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        bail!(
            "apt-get {} failed ({}); it said:\n{tail}",
            args.iter().find(|a| !a.starts_with('-')).map(String::as_str).unwrap_or(""),
            out.status
        );
    }
    Ok(())
}
