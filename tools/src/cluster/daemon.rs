//! The cluster's daemon (`cairn cluster serve`, started by `cairn cluster up`): boots the nodes,
//! publishes the state file, runs the switch between them, keeps their consoles in the log,
//! and follows the fault plan (docs/EXPERIMENTS.md) until it is killed.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_bootcfg::{Fault, Mode, NodeConfig, NodeKeys, StaticIp};

use super::lifecycle::{MAX_NODES, NodeState, State, UpOptions, cluster_ip, node_disk};
use crate::qemu::{ClusterLink, NodeExit, NodeOptions, StoreDisk, Vm};
use crate::untrusted::escape;

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
    // How each node was booted: a node killed through the fault plan boots again the same way.
    let mut boots = Vec::new();
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
        let disk = opts.disks.map(|d| StoreDisk { path: node_disk(state_path, index), size: d.size });
        let api_port = free_tcp_port()?;
        let link = ClusterLink {
            hub_port,
            local_port: free_udp_port()?,
            mac: [0x52, 0x54, 0x00, 0xc1, 0x00, index as u8 + 1],
        };
        links.push(SocketAddr::from(([127, 0, 0, 1], link.local_port)));
        let options = NodeOptions {
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
            disk: disk.clone(),
            ..NodeOptions::default()
        };
        let vm = Vm::boot(&options).with_context(|| format!("cannot boot node {index}"))?;
        boots.push(options);
        nodes.push(NodeState {
            index,
            api: format!("127.0.0.1:{api_port}"),
            cluster_ip: ip,
            qemu_pid: vm.pid(),
            disk: disk.map(|d| d.path),
        });
        vms.push(vm);
    }
    let switch = std::sync::Arc::new(super::hub::Control::default());
    let switch_control = switch.clone();
    std::thread::spawn(move || super::hub::serve(hub, links, switch_control));
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
                    // A node that will not serve never joins: say why now, not at the deadline.
                    if let Some(why) = line.strip_prefix("cairn: api off: ") {
                        match &nodes[index].disk {
                            Some(disk) if why.starts_with("the store's disk") => bail!(
                                "node {index}: {} (its disk is {}: move it away, or start with \
                                 --fresh-disks to empty every node's disk)",
                                escape(why),
                                disk.display()
                            ),
                            _ => bail!("node {index} serves no API: {}", escape(why)),
                        }
                    }
                }
                Ok(None) => {
                    let exit = vm.wait(Instant::now() + Duration::from_secs(5))?;
                    match (&exit, &nodes[index].disk) {
                        (NodeExit::QemuError { stderr, .. }, Some(disk)) if stderr.contains("lock") => bail!(
                            "node {index}: {} (is another QEMU using its disk {}? stop it, or start \
                             this cluster with another --state or with --no-disk)",
                            escape(&exit.to_string()),
                            disk.display()
                        ),
                        _ => bail!(
                            "node {index} stopped while booting: {} (see the log)",
                            escape(&exit.to_string())
                        ),
                    }
                }
                Err(e) => return Err(e.context(format!("node {index} did not join the cluster network"))),
            }
        }
    }
    let mut state = State { daemon_pid: std::process::id(), log: state_path.with_extension("log"), nodes };
    super::control::clear(state_path);
    state.write(state_path)?;
    let _ = writeln!(log, "cluster up: {} nodes", state.nodes.len());
    let _ = log.flush();
    // Keep the consoles flowing into the log until killed (`cairn cluster down`), and follow
    // the fault plan.
    let mut open: Vec<bool> = vec![true; vms.len()];
    let (mut watch, mut down) = (super::control::Watch::default(), Vec::new());
    loop {
        if let Some(plan) = watch.changed(state_path) {
            match plan.and_then(|p| p.check(vms.len()).map(|()| p)) {
                Ok(plan) => {
                    follow(&plan, &down, &mut vms, &boots, &mut state, &switch, log);
                    state.write(state_path)?;
                    open = vms.iter().enumerate().map(|(i, _)| open[i] || !plan.down.contains(&i)).collect();
                    down = plan.down;
                }
                Err(e) => {
                    let _ = writeln!(log, "cairn: fault plan not followed: {}", escape(&format!("{e:#}")));
                }
            }
        }
        if !open.iter().any(|o| *o) && down.is_empty() {
            break;
        }
        for (index, vm) in vms.iter_mut().enumerate() {
            if !open[index] {
                continue;
            }
            match vm.next_line(Instant::now() + Duration::from_millis(10)) {
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
        if !open.iter().any(|o| *o) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Puts a new fault plan in force: the switch's faults, nodes newly down killed, nodes no
/// longer down booted again (the state file gets their new QEMU's pid).
fn follow(
    plan: &super::control::Plan,
    was_down: &[usize],
    vms: &mut [Vm],
    boots: &[NodeOptions],
    state: &mut State,
    switch: &super::hub::Control,
    log: &mut dyn Write,
) {
    switch.set(plan.links.clone(), plan.seed);
    let _ = writeln!(log, "cairn: fault plan: links {:?}, down {:?}", plan.links, plan.down);
    for (index, vm) in vms.iter_mut().enumerate() {
        match (was_down.contains(&index), plan.down.contains(&index)) {
            (false, true) => {
                vm.kill();
                let _ = writeln!(log, "node {index}: killed (fault plan)");
            }
            (true, false) => match Vm::boot(&boots[index]) {
                Ok(new) => {
                    *vm = new;
                    state.nodes[index].qemu_pid = vm.pid();
                    let _ = writeln!(log, "node {index}: booted again (fault plan)");
                }
                Err(e) => {
                    let _ = writeln!(log, "node {index}: cannot boot again: {}", escape(&format!("{e:#}")));
                }
            },
            _ => {}
        }
    }
}
