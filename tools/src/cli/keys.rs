//! `cairn keygen` and `cairn key ...`: this user's client key, and the keys of nodes (docs/SECURITY.md,
//! "Keys and roles").

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_channel::PublicKey;
use cairn_tools::keys;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct KeygenArgs {
    /// Replace an existing client key (nodes that serve the old key will refuse the new one).
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Print this user's client public key (made on first use), to authorize it on a node.
    Show,
    /// Record the public key of the node at ADDRESS (HOST:PORT): clients then accept exactly it.
    Trust { address: String, key: String },
    /// Write a keys file for a node you boot yourself (QEMU: `-fw_cfg name=opt/cairn/keys,file=PATH`):
    /// a fresh node key serving this user's client key; records the node's public key for ADDRESS.
    NodeFile {
        path: PathBuf,
        /// Where clients will reach the node's API (HOST:PORT).
        #[arg(long)]
        address: String,
        /// Peers, as CLUSTER_IP=PUBLIC_KEY, repeated.
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// More client public keys to serve, repeated.
        #[arg(long = "client")]
        clients: Vec<String>,
    },
}

pub fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let (path, public) = keys::keygen(args.force)?;
    eprintln!("cairn: wrote a new client key to {}", path.display());
    println!("{public}");
    Ok(ExitCode::SUCCESS)
}

fn public(text: &str) -> anyhow::Result<PublicKey> {
    PublicKey::parse(text).with_context(|| format!("`{text}` is not a public key (64 hex digits)"))
}

pub fn key(command: &KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Show => println!("{}", keys::client_key()?.public()),
        KeyCommand::Trust { address, key } => {
            keys::remember_node(address, &public(key)?)?;
            eprintln!("cairn: the node at {address} must now hold the key {key}");
        }
        KeyCommand::NodeFile { path, address, peers, clients } => {
            let peers = peers
                .iter()
                .map(|p| {
                    let (ip, key) =
                        p.split_once('=').with_context(|| format!("`{p}` is not CLUSTER_IP=KEY"))?;
                    let ip: std::net::Ipv4Addr =
                        ip.parse().with_context(|| format!("`{ip}` is not an IPv4 address"))?;
                    Ok((ip.octets(), public(key)?))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut node = keys::keys_for_node(peers)?;
            for client in clients {
                node.clients.push(public(client)?);
            }
            keys::write_node_keys(path, &node)?;
            keys::remember_node(address, &node.secret.public())?;
            eprintln!("cairn: wrote the node's keys to {} (keep it private; mode 0600)", path.display());
            println!("{}", node.secret.public());
        }
    }
    Ok(ExitCode::SUCCESS)
}
