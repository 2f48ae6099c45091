//! `cairn cluster up` / `down`: a background process (the cluster's daemon) boots the nodes,
//! repeats frames between them (the hub) and keeps their consoles in a log; a state file says
//! where each node's API is. Killing the daemon stops every node (their QEMUs die with it).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cairn_bootcfg::{Fault, Mode, NodeConfig, NodeKeys, StaticIp};
use serde::{Deserialize, Serialize};

use crate::qemu::{Accel, ClusterLink, NodeOptions, Vm};
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

    fn write(&self, path: &Path) -> anyhow::Result<()> {
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
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The daemon's work: boot the nodes, publish the state, then serve until killed.
pub fn serve(opts: &UpOptions, state_path: &Path, log: &mut dyn Write) -> anyhow::Result<()> {
    if !(1..=MAX_NODES).contains(&opts.nodes) {
        bail!("a cluster has 1 to {MAX_NODES} nodes");
    }
    let hub = UdpSocket::bind("127.0.0.1:0").context("cannot open the hub's socket")?;
    let hub_port = hub.local_addr()?.port();
    let mut vms = Vec::new();
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    // Every node's key up front: each node knows its peers' keys, serves them as peers, and
    // checks them when it connects to them (docs/SECURITY.md, "Keys and roles").
    let secrets = (0..opts.nodes).map(|_| crate::keys::fresh_secret()).collect::<anyhow::Result<Vec<_>>>()?;
    let client = crate::keys::client_key()?.public();
    for index in 0..opts.nodes {
        let ip = cluster_ip(index);
        let peers = (0..opts.nodes).filter(|&j| j != index).map(cluster_ip).collect();
        let fault = opts.faults.iter().find(|(i, _)| *i == index).map_or(Fault::None, |(_, f)| *f);
        let config = NodeConfig {
            mode: Mode::Serve,
            cluster_ip: Some(StaticIp { address: ip, prefix: 24, gateway: None }),
            peers,
            fault,
            ..NodeConfig::default()
        };
        let api_port = free_tcp_port()?;
        let link = ClusterLink {
            hub_port,
            local_port: free_udp_port()?,
            mac: [0x52, 0x54, 0x00, 0xc1, 0x00, index as u8 + 1],
        };
        links.push(SocketAddr::from(([127, 0, 0, 1], link.local_port)));
        let vm = Vm::boot(&NodeOptions {
            accel: opts.accel,
            memory_mib: opts.memory_mib,
            cpus: opts.cpus,
            config,
            api_port: Some(api_port),
            cluster_link: Some(link),
            keys: Some(NodeKeys {
                secret: secrets[index].clone(),
                clients: vec![client],
                peers: (0..opts.nodes)
                    .filter(|&j| j != index)
                    .map(|j| (cluster_ip(j), secrets[j].public()))
                    .collect(),
            }),
            ..NodeOptions::default()
        })
        .with_context(|| format!("cannot boot node {index}"))?;
        nodes.push(NodeState {
            index,
            api: format!("127.0.0.1:{api_port}"),
            cluster_ip: ip,
            qemu_pid: vm.pid(),
        });
        vms.push(vm);
    }
    std::thread::spawn(move || super::hub::serve(hub, links));
    let deadline = Instant::now() + Duration::from_secs(120);
    for (index, vm) in vms.iter_mut().enumerate() {
        loop {
            match vm.next_line(deadline) {
                Ok(Some(line)) => {
                    // Console lines can carry a task's words; the log is read on terminals.
                    let _ = writeln!(log, "node {index}: {}", escape(&line));
                    if line.starts_with("cairn: cluster ip=") {
                        break;
                    }
                }
                Ok(None) => bail!("node {index} stopped while booting (see the log)"),
                Err(e) => return Err(e.context(format!("node {index} did not join the cluster network"))),
            }
        }
    }
    let state = State { daemon_pid: std::process::id(), log: state_path.with_extension("log"), nodes };
    state.write(state_path)?;
    let _ = writeln!(log, "cluster up: {} nodes", state.nodes.len());
    let _ = log.flush();
    // Keep the consoles flowing into the log until killed (`cairn cluster down`).
    let mut open: Vec<bool> = vec![true; vms.len()];
    while open.iter().any(|o| *o) {
        for (index, vm) in vms.iter_mut().enumerate() {
            if !open[index] {
                continue;
            }
            match vm.next_line(Instant::now() + Duration::from_millis(50)) {
                Ok(Some(line)) => {
                    let _ = writeln!(log, "node {index}: {}", escape(&line));
                }
                Ok(None) => {
                    let _ = writeln!(log, "node {index}: QEMU exited");
                    open[index] = false;
                }
                Err(_) => {}
            }
        }
        let _ = log.flush();
    }
    Ok(())
}

/// Starts the daemon (`cairn cluster serve`, detached) and waits until the cluster is up.
pub fn up(opts: &UpOptions, state_path: &Path) -> anyhow::Result<State> {
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
    let _ = std::fs::remove_file(state_path);
    let log_path = state_path.with_extension("log");
    let log =
        std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the cairn binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "cluster",
        "serve",
        "--nodes",
        &opts.nodes.to_string(),
        "--memory",
        &opts.memory_mib.to_string(),
    ])
    .args(["--cpus", &opts.cpus.to_string()])
    .args(["--accel", &opts.accel.to_string(), "--state"])
    .arg(state_path);
    for (index, fault) in &opts.faults {
        cmd.args(["--fault", &format!("{index}={}", fault.name())]);
    }
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
            return Ok(state);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read(&log_path).unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
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

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Stops the daemon (and with it every node) and removes the state file.
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
