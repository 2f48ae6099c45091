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

/// `--api`: none, or one node API address (HOST:PORT) per node, each its own.
fn check_apis(apis: &[String], nodes: usize) -> anyhow::Result<()> {
    if !apis.is_empty() && apis.len() != nodes {
        anyhow::bail!("--api names {} addresses for {} nodes: give one per node, or none", apis.len(), nodes);
    }
    // Checked before anything is written: an address given twice would trust the later node's
    // key for both, one that is no HOST:PORT would stop the command with the disks written.
    for (i, api) in apis.iter().enumerate() {
        if api
            .rsplit_once(':')
            .and_then(|(host, port)| (!host.is_empty()).then_some(port))
            .and_then(|p| p.parse::<u16>().ok())
            .is_none_or(|p| p == 0)
            || api.contains('/')
            || api.starts_with('.')
        {
            anyhow::bail!("--api `{api}` is not a node's API address (HOST:PORT)");
        }
        if apis[..i].contains(api) {
            anyhow::bail!("--api {api} is given for two nodes: each node has its own");
        }
    }
    Ok(())
}

pub fn config_disk(args: &ConfigDiskArgs) -> anyhow::Result<ExitCode> {
    check_apis(&args.apis, args.nodes)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_addresses_are_checked_before_anything_is_written() {
        let apis = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert!(check_apis(&[], 3).is_ok());
        assert!(check_apis(&apis(&["127.0.0.1:7070", "10.0.0.2:7070"]), 2).is_ok());
        assert!(check_apis(&apis(&["127.0.0.1:7070"]), 2).is_err(), "one per node");
        let err = check_apis(&apis(&["127.0.0.1:7070", "127.0.0.1:7070"]), 2).unwrap_err();
        assert!(err.to_string().contains("two nodes"), "{err}");
        for bad in ["127.0.0.1", "127.0.0.1:0", ":7070", "a/b:7070", "..:7070", "host:http"] {
            assert!(check_apis(&apis(&["127.0.0.1:7070", bad]), 2).is_err(), "{bad}");
        }
    }
}
