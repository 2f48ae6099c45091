//! `cairn config-disk`: each node's configuration on a disk of its own, so that one image
//! serves every node of a cluster (docs/CLOUD.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_tools::cloud;
use cairn_tools::cluster::lifecycle::{NodeState, State};
use clap::Args;

#[derive(Args)]
pub struct ConfigDiskArgs {
    /// Nodes in the cluster: node i gets 10.1.0.(i+1)/24 on the cluster network, the others
    /// as peers, and a fresh node key that serves this user's client key.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Where to write node-I.img (raw, 1 MiB each; they hold the nodes' private keys: 0600).
    #[arg(long, short)]
    pub out_dir: PathBuf,
    /// Where clients will reach each node's API (HOST:PORT), in node order: its key is recorded
    /// for that address, and OUT_DIR/cluster.json lets `cairn eval --cluster` use the nodes.
    #[arg(long = "api", value_name = "HOST:PORT")]
    pub apis: Vec<String>,
}

pub fn config_disk(args: &ConfigDiskArgs) -> anyhow::Result<ExitCode> {
    if !args.apis.is_empty() && args.apis.len() != args.nodes {
        anyhow::bail!(
            "--api names {} addresses for {} nodes: give one per node, or none",
            args.apis.len(),
            args.nodes
        );
    }
    let client = cairn_tools::keys::client_key()?.public();
    let planned = cloud::plan_cluster(args.nodes, &[client])?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    // Every disk before any key is trusted: a cluster half written would leave disks and
    // trusted keys of nodes whose peers have other keys.
    let paths = cloud::write_config_disks(&args.out_dir, &planned)?;
    let mut nodes = Vec::new();
    for (node, path) in planned.iter().zip(&paths) {
        let [a, b, c, d] = node.cluster_ip;
        println!(
            "node {}  cluster {a}.{b}.{c}.{d}  key {}  {}",
            node.index,
            node.secret.public(),
            path.display()
        );
        if let Some(api) = args.apis.get(node.index) {
            cairn_tools::keys::remember_node(api, &node.secret.public())?;
            nodes.push(NodeState {
                index: node.index,
                api: api.clone(),
                cluster_ip: node.cluster_ip,
                qemu_pid: 0,
                disk: None,
            });
        }
    }
    if !nodes.is_empty() {
        // Nodes this host did not boot: no daemon, no QEMU to stop (`cluster down` leaves them).
        let state = State { daemon_pid: 0, log: args.out_dir.join("cluster.log"), nodes };
        let path = args.out_dir.join("cluster.json");
        std::fs::write(&path, serde_json::to_string_pretty(&state)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("then: cairn eval --cluster {} --job JOB.toml", path.display());
    } else {
        println!("then, once each node's API address is known: cairn key trust ADDRESS KEY");
    }
    Ok(ExitCode::SUCCESS)
}
