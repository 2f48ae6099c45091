//! `cairn cluster up` / `down`: a background process (the cluster's daemon, `daemon.rs`) boots the nodes,
//! repeats frames between them (the hub) and keeps their consoles in a log; a state file says
//! where each node's API is. Killing the daemon stops every node (their QEMUs die with it).
//! Each node's store disk lives beside the state file and outlives the cluster.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cairn_bootcfg::Fault;
use serde::{Deserialize, Serialize};

use crate::qemu::{Accel, StoreDisk};
use crate::untrusted::escape;

/// Node `i` is 10.1.0.(i+1)/24 on the cluster network.
pub fn cluster_ip(index: usize) -> [u8; 4] {
    [10, 1, 0, index as u8 + 1]
}

pub const MAX_NODES: usize = 16;
pub const API_PORT: u16 = 7070;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    pub index: usize,
    /// The node API on the host.
    pub api: String,
    /// The node's address on the cluster network, where peers reach its API (port 7070).
    pub cluster_ip: [u8; 4],
    pub qemu_pid: u32,
    /// The node's store disk; none: it keeps its objects in memory only.
    #[serde(default)]
    pub disk: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub daemon_pid: u32,
    pub log: PathBuf,
    pub nodes: Vec<NodeState>,
}

impl State {
    pub fn read(path: &Path) -> anyhow::Result<State> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("no cluster state at {} (start one with `cairn cluster up`)", path.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a cluster state file", path.display()))
    }

    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }
}

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub nodes: usize,
    pub memory_mib: u32,
    /// Virtual CPUs of each node.
    pub cpus: u32,
    pub accel: Accel,
    /// Deliberate faults by node index (tests).
    pub faults: Vec<(usize, Fault)>,
    /// Each node's store disk, beside the state file ([`node_disk`]); none: nodes keep their
    /// objects in memory only.
    pub disks: Option<DiskOptions>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// The size of a disk made now; one that exists keeps its own.
    pub size: u64,
    /// Delete the nodes' disks first, so that every node starts empty.
    pub fresh: bool,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions { size: StoreDisk::DEFAULT_SIZE, fresh: false }
    }
}

/// Node `index`'s store disk: beside the state file and named after it, so that clusters with
/// different state files never share one (`cairn-cluster.json` → `cairn-cluster.node-0.qcow2`).
pub fn node_disk(state_path: &Path, index: usize) -> PathBuf {
    disk_name(state_path, &index.to_string())
}

/// All the cluster's disks as one shell pattern: `cairn-cluster.node-{0..2}.qcow2`.
pub fn disks_pattern(state_path: &Path, nodes: usize) -> PathBuf {
    match nodes {
        0 | 1 => node_disk(state_path, 0),
        n => disk_name(state_path, &format!("{{0..{}}}", n - 1)),
    }
}

fn disk_name(state_path: &Path, index: &str) -> PathBuf {
    let mut name: OsString = state_path.file_stem().unwrap_or("cairn-cluster".as_ref()).to_owned();
    name.push(format!(".node-{index}.qcow2"));
    state_path.with_file_name(name)
}

/// What `up` does with the disks beside the state file.
#[derive(Debug, PartialEq, Eq)]
pub struct DiskPlan {
    /// Each node's disk, and whether it is made now (missing, or deleted by `fresh`).
    pub nodes: Vec<(PathBuf, bool)>,
    /// Disks deleted first (`fresh`).
    pub delete: Vec<PathBuf>,
    /// Disks of other node numbers (a larger cluster before, or all of them with no disks now):
    /// left as they are.
    pub unused: Vec<PathBuf>,
}

/// Looks at the disks beside `state_path` for a cluster of `nodes` nodes; refuses one that a
/// running QEMU holds, naming it. Changes nothing.
pub fn plan_disks(state_path: &Path, nodes: usize, disks: Option<DiskOptions>) -> anyhow::Result<DiskPlan> {
    let mut plan = DiskPlan { nodes: Vec::new(), delete: Vec::new(), unused: Vec::new() };
    let used = if disks.is_some() { nodes } else { 0 };
    for index in 0..MAX_NODES {
        let path = node_disk(state_path, index);
        let exists = path.symlink_metadata().is_ok();
        if index >= used {
            if exists {
                plan.unused.push(path);
            }
            continue;
        }
        if exists && in_use_by_qemu(&path) {
            bail!(
                "node {index}'s disk {} is in use by a running QEMU (another `cairn node --disk`, or a \
                 cluster whose state file was removed): stop it, or start this cluster with another \
                 --state (the disks are named after it) or with --no-disk",
                path.display()
            );
        }
        let fresh = disks.is_some_and(|d| d.fresh);
        if exists && fresh {
            plan.delete.push(path.clone());
        }
        plan.nodes.push((path, !exists || fresh));
    }
    Ok(plan)
}

impl DiskPlan {
    /// Deletes what `fresh` asked for and makes the missing disks (sparse qcow2).
    fn carry_out(&self, size: u64) -> anyhow::Result<()> {
        for path in &self.delete {
            std::fs::remove_file(path).with_context(|| {
                format!(
                    "cannot delete {} for --fresh-disks (delete it yourself, or start without the flag)",
                    path.display()
                )
            })?;
        }
        for (index, (path, make)) in self.nodes.iter().enumerate() {
            if *make {
                StoreDisk { path: path.clone(), size }.create_if_missing().with_context(|| {
                    format!(
                        "cannot make node {index}'s disk {} (its directory must be writable: choose \
                         another --state, or start with --no-disk)",
                        path.display()
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Whether some process holds locks on `path` where QEMU locks the images it has open (bytes
/// 100 to 299 of the file: QEMU's image locking), so that a second QEMU would refuse it.
pub fn in_use_by_qemu(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else { return false };
    // SAFETY: flock is plain data; all zeros is a valid value, and the fields are set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 100;
    lock.l_len = 200;
    // SAFETY: F_OFD_GETLK on a file we hold open, with a flock it fills in; it takes no lock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
    r == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
}

/// The arguments `up` starts the daemon with (`cairn cluster serve ...`).
pub fn daemon_args(opts: &UpOptions, state_path: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "cluster".to_string(),
        "serve".into(),
        "--nodes".into(),
        opts.nodes.to_string(),
        "--memory".into(),
        opts.memory_mib.to_string(),
        "--cpus".into(),
        opts.cpus.to_string(),
        "--accel".into(),
        opts.accel.to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    match opts.disks {
        // The daemon only uses the disks: `up` has deleted and made them already.
        Some(disks) => args.extend(["--disk-size".into(), disks.size.to_string().into()]),
        None => args.push("--no-disk".into()),
    }
    args.extend(["--state".into(), state_path.as_os_str().to_owned()]);
    for (index, fault) in &opts.faults {
        args.extend(["--fault".into(), format!("{index}={}", fault.name()).into()]);
    }
    args
}

/// A cluster `up` started, and what it did with the disks.
pub struct Started {
    pub state: State,
    pub disks: DiskPlan,
}

/// Deletes (`fresh`) and makes the nodes' disks, starts the daemon (`cairn cluster serve`,
/// detached) and waits until the cluster is up.
pub fn up(opts: &UpOptions, state_path: &Path) -> anyhow::Result<Started> {
    use std::os::unix::process::CommandExt;
    if !(1..=MAX_NODES).contains(&opts.nodes) {
        bail!("a cluster has 1 to {MAX_NODES} nodes");
    }
    if let Some((index, _)) = opts.faults.iter().find(|(i, _)| *i >= opts.nodes) {
        bail!("--fault names node {index}, but the cluster has nodes 0 to {}", opts.nodes - 1);
    }
    if let Ok(old) = State::read(state_path)
        && process_alive(old.daemon_pid)
    {
        bail!(
            "a cluster is already running with state {} (stop it with `cairn cluster down`)",
            state_path.display()
        );
    }
    let disks = plan_disks(state_path, opts.nodes, opts.disks)?;
    if let Some(options) = opts.disks {
        disks.carry_out(options.size)?;
    }
    let _ = std::fs::remove_file(state_path);
    let log_path = state_path.with_extension("log");
    let log =
        std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the cairn binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(daemon_args(opts, state_path));
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: setsid(2) is async-signal-safe; it detaches the daemon from our terminal and
    // process group so that it outlives this command.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the cluster daemon")?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(state) = State::read(state_path) {
            return Ok(Started { state, disks });
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read(&log_path).unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
            // The daemon's own error, when it gave one, says it all.
            if let Some(error) = log.lines().rev().find_map(|l| l.strip_prefix("cairn: error: ")) {
                bail!("the cluster daemon stopped: {} (log: {})", escape(error), log_path.display());
            }
            // Escaped again: the log also holds what QEMU and the daemon wrote themselves.
            let tail: Vec<String> = log.lines().rev().take(5).map(escape).collect();
            bail!(
                "the cluster daemon stopped ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        if Instant::now() > deadline {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            bail!("the cluster did not come up within 180 s (log: {})", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (10 s at most) until the QEMU `pid` has exited.
pub fn wait_down(pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) {
        if Instant::now() > deadline {
            bail!("QEMU {pid} is still running 10 s after its node was to be killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits (120 s at most) until node `index` runs in a QEMU other than `old_pid` and answers on
/// its API.
pub fn wait_serving(state_path: &Path, index: usize, old_pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = State::read(state_path)?;
        let node = state.nodes.get(index).ok_or_else(|| anyhow!("the cluster has no node {index}"))?;
        if node.qemu_pid != old_pid
            && process_alive(node.qemu_pid)
            && crate::client::Client::connect(&node.api).and_then(|mut c| c.stats()).is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node {index} was not serving again 120 s after its restart (log: {})",
                state.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Stops the daemon (and with it every node), waits until the nodes' QEMUs have let go of
/// their disks, and removes the state file. The disks stay.
pub fn down(state_path: &Path) -> anyhow::Result<State> {
    let state = State::read(state_path)?;
    if process_alive(state.daemon_pid) {
        // SAFETY: kill(2) on the daemon's pid from the state file; it is checked alive above.
        unsafe { libc::kill(state.daemon_pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(state.daemon_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if process_alive(state.daemon_pid) {
            // SAFETY: as above.
            unsafe { libc::kill(state.daemon_pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    // The QEMUs die with the daemon (it kills them; PR_SET_PDEATHSIG otherwise), a moment
    // later: until then they hold their disks' locks, and an `up` right after would fail.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.nodes.iter().any(|n| process_alive(n.qemu_pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(state_path).with_context(|| format!("cannot remove {}", state_path.display()))?;
    Ok(state)
}

/// Parses `INDEX=FAULT` (`--fault 1=corrupt-objects`).
pub fn parse_fault(text: &str) -> anyhow::Result<(usize, Fault)> {
    let (index, name) =
        text.split_once('=').ok_or_else(|| anyhow!("expected INDEX=FAULT, like 1=corrupt-objects"))?;
    let index = index.parse().map_err(|_| anyhow!("`{index}` is not a node index"))?;
    let fault = Fault::ALL
        .into_iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| anyhow!("unknown fault `{name}` (known: corrupt-objects)"))?;
    Ok((index, fault))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_nodes_disk_is_named_after_the_state_file_beside_it() {
        let state = Path::new("/srv/c/cairn-cluster.json");
        assert_eq!(node_disk(state, 0), Path::new("/srv/c/cairn-cluster.node-0.qcow2"));
        assert_eq!(node_disk(state, 15), Path::new("/srv/c/cairn-cluster.node-15.qcow2"));
        assert_eq!(node_disk(Path::new("lab"), 2), Path::new("lab.node-2.qcow2"));
        assert_eq!(node_disk(Path::new("a.b.json"), 1), Path::new("a.b.node-1.qcow2"));
        assert_eq!(disks_pattern(state, 3), Path::new("/srv/c/cairn-cluster.node-{0..2}.qcow2"));
        assert_eq!(disks_pattern(state, 1), Path::new("/srv/c/cairn-cluster.node-0.qcow2"));
    }

    #[test]
    fn disks_are_kept_made_or_deleted_first_and_others_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("c.json");
        for index in [0, 1, 3] {
            std::fs::write(node_disk(&state, index), b"").unwrap();
        }
        let disk = |i| node_disk(&state, i);
        let kept = Some(DiskOptions::default());
        assert_eq!(
            plan_disks(&state, 3, kept).unwrap(),
            DiskPlan {
                nodes: vec![(disk(0), false), (disk(1), false), (disk(2), true)],
                delete: vec![],
                unused: vec![disk(3)],
            }
        );
        let fresh = Some(DiskOptions { fresh: true, ..DiskOptions::default() });
        assert_eq!(
            plan_disks(&state, 2, fresh).unwrap(),
            DiskPlan {
                nodes: vec![(disk(0), true), (disk(1), true)],
                delete: vec![disk(0), disk(1)],
                unused: vec![disk(3)]
            }
        );
        assert_eq!(
            plan_disks(&state, 2, None).unwrap(),
            DiskPlan { nodes: vec![], delete: vec![], unused: vec![disk(0), disk(1), disk(3)] }
        );
        // Another state file in the same directory has disks of its own.
        let other = dir.path().join("d.json");
        assert_eq!(plan_disks(&other, 1, kept).unwrap().nodes, [(node_disk(&other, 0), true)]);
    }

    /// Takes a shared lock on one byte, as QEMU does on each image it has open.
    fn lock_like_qemu(path: &Path, byte: i64) -> std::fs::File {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        // SAFETY: as in `in_use_by_qemu`.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_RDLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = byte;
        lock.l_len = 1;
        // SAFETY: a lock on a file this test holds open.
        assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) }, 0);
        file
    }

    #[test]
    fn a_disk_a_qemu_holds_is_refused_by_name_and_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("c.json");
        let disk = node_disk(&state, 1);
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        assert!(!in_use_by_qemu(&disk));
        assert!(!in_use_by_qemu(&dir.path().join("missing.qcow2")));
        let held = lock_like_qemu(&disk, 201);
        assert!(in_use_by_qemu(&disk));
        let fresh = Some(DiskOptions { fresh: true, ..DiskOptions::default() });
        let err = plan_disks(&state, 2, fresh).unwrap_err().to_string();
        assert!(
            err.contains(&format!("node 1's disk {} is in use by a running QEMU", disk.display())),
            "{err}"
        );
        assert!(err.contains("--no-disk"), "{err}");
        assert!(disk.exists());
        // Not this cluster's disk: not checked, only mentioned.
        assert_eq!(plan_disks(&state, 1, fresh).unwrap().unused, std::slice::from_ref(&disk));
        drop(held);
        assert!(!in_use_by_qemu(&disk));
        assert_eq!(plan_disks(&state, 2, fresh).unwrap().delete, [disk]);
    }

    #[test]
    fn a_disk_that_cannot_be_made_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        // A raw disk, so that no qemu-img is needed (the name decides the format).
        let disk = dir.path().join("nowhere").join("c.node-0.raw");
        let plan = DiskPlan { nodes: vec![(disk, true)], delete: vec![], unused: vec![] };
        let err = format!("{:#}", plan.carry_out(1 << 20).unwrap_err());
        assert!(err.contains("cannot make node 0's disk") && err.contains("nowhere/c.node-0.raw"), "{err}");
        assert!(err.contains("another --state, or start with --no-disk"), "{err}");
    }
}
