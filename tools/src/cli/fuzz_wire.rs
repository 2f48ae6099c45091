//! `cairn fuzz-wire`: the wire fuzzer against a running node (cairn_fuzz::wire; docs/SECURITY.md,
//! "Clients are hostile"). Each case, a stream of mutated frames, goes over a connection of its
//! own: the client sends it, closes its side, and reads what the node answers until the node
//! closes too (it should, after a bad frame or once it has answered everything). After every
//! batch the node must still answer STATS and round-trip a fresh object on a new connection.
//! Cases travel inside the secure channel (the protocol behind authentication), or with
//! `--before-auth` as the raw first bytes of a connection (the handshake's parser).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_channel::{PublicKey, SecretKey};
use cairn_fuzz::wire::{Case, Mutator};
use cairn_object::Handle;
use cairn_proto::{Message, decode};
use cairn_tools::client::Client;
use cairn_tools::keys;
use cairn_tools::secure::SecureStream;
use clap::Args;

use super::NodeAddress;

#[derive(Args)]
pub struct FuzzWireArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    /// Frames to send (whole or mutated), over as many connections as that takes.
    #[arg(long, default_value_t = 100_000)]
    pub frames: u64,
    /// Seed of the cases: the same seed makes the same cases.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Index of the first case (to send a stretch of a run again).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Frames between checks that the node still answers.
    #[arg(long, default_value_t = 5000)]
    pub batch: u64,
    /// Seconds a connection may stay open after the client closed its side.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub linger: u64,
    /// Send each case raw, with no handshake: what a node must withstand from anyone.
    #[arg(long)]
    pub before_auth: bool,
}

/// How cases reach the node: sealed, as this user's client, or raw.
enum Channel {
    Sealed { me: SecretKey, node: PublicKey },
    Raw,
}

/// What happened on the connections so far.
#[derive(Default)]
struct Tally {
    cases: u64,
    frames: u64,
    bytes: u64,
    /// Frames the node sent, by type (errors by code).
    answers: BTreeMap<String, u64>,
    /// How connections ended: closed by the node, reset, left open past the linger, or cut
    /// while the client was still sending.
    endings: BTreeMap<&'static str, u64>,
    /// Connections reset before the node answered anything: sent again, after a pause.
    refused: u64,
    checks: u64,
    /// Checks that passed only when tried again.
    checks_retried: u64,
}

/// How much of the node's answers to one case is kept (and decoded) at most.
const MAX_ANSWER: usize = 64 << 20;

pub fn fuzz_wire(args: &FuzzWireArgs) -> anyhow::Result<ExitCode> {
    let address: SocketAddr = args
        .node
        .node
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", args.node.node))?
        .next()
        .context("no address")?;
    let channel = if args.before_auth {
        Channel::Raw
    } else {
        Channel::Sealed { me: keys::client_key()?, node: keys::node_key(&args.node.node)? }
    };
    let mutator = Mutator::new(args.seed);
    let mut tally = Tally::default();
    let served_before = served(&args.node.node)?;
    let started = Instant::now();
    let mut next_check = args.batch.max(1);
    let mut index = args.first;
    while tally.frames < args.frames {
        let case = mutator.case(index);
        let mut ending = "reset";
        for attempt in 0..4 {
            match send_case(address, &channel, &case, args.linger, &mut tally.answers) {
                // Reset before any answer: the node took no session for it (every slot was
                // busy); the case goes again, a moment later.
                Ok(("reset", 0)) if attempt < 3 => {
                    tally.refused += 1;
                    std::thread::sleep(Duration::from_millis(20 << attempt));
                }
                Ok((how, _)) => {
                    ending = how;
                    break;
                }
                Err(e) => {
                    println!("fuzz-wire: CRASH? seed={} case={index}: {e:#}", args.seed);
                    return check_or_report(args, index, &mut tally).map(|_| ExitCode::FAILURE);
                }
            }
        }
        *tally.endings.entry(ending).or_default() += 1;
        tally.cases += 1;
        tally.frames += case.frames as u64;
        tally.bytes += case.bytes.len() as u64;
        if tally.frames >= next_check || tally.frames >= args.frames {
            check_or_report(args, index, &mut tally)?;
            next_check += args.batch.max(1);
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "cairn: fuzz-wire {} frames in {} cases, {:.0} frames/s; checks {}",
                tally.frames,
                tally.cases,
                tally.frames as f64 / secs,
                tally.checks
            );
        }
        index += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let sessions = served(&args.node.node)? - served_before - tally.checks - 1;
    println!("fuzz-wire: node {} seed={} cases {}..{index}", args.node.node, args.seed, args.first);
    println!(
        "fuzz-wire: frames={} bytes={} connections={} in {secs:.1} s: {:.0} frames/s",
        tally.frames,
        tally.bytes,
        tally.cases,
        tally.frames as f64 / secs
    );
    println!("fuzz-wire: the node answered: {}", list(&tally.answers));
    println!("fuzz-wire: connections ended: {}", list(&tally.endings));
    println!(
        "fuzz-wire: the node took {sessions} connections ({} reset before any answer were sent again)",
        tally.refused
    );
    println!(
        "fuzz-wire: checks {} of {} passed ({} when tried again)",
        tally.checks, tally.checks, tally.checks_retried
    );
    println!("fuzz-wire: crashes: none");
    Ok(ExitCode::SUCCESS)
}

fn list<K: std::fmt::Display>(counts: &BTreeMap<K, u64>) -> String {
    counts.iter().map(|(k, n)| format!("{k}:{n}")).collect::<Vec<_>>().join(",")
}

/// The check, retried for a while: the node may be busy closing the connections of the cases.
fn check_or_report(args: &FuzzWireArgs, index: u64, tally: &mut Tally) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        match check(&args.node.node, args.seed, index) {
            Ok(()) => {
                tally.checks += 1;
                tally.checks_retried += u64::from(attempt > 0);
                return Ok(());
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("cairn: fuzz-wire check after case {index} failed ({e:#}); trying again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => anyhow::bail!(
                "CRASH: after case seed={} index={index} the node stopped answering for 30 s: {e:#}",
                args.seed
            ),
        }
    }
    unreachable!("the loop returns")
}

/// The node's count of connections it took (STATS `connections_served`), asked until it
/// answers (for up to 30 s).
fn served(address: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(address).and_then(|mut c| c.stats()) {
            Ok(stats) => {
                let value = stats.lines().find_map(|l| l.strip_prefix("connections_served="));
                return value.and_then(|v| v.parse().ok()).context("STATS has no connections_served");
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// STATS, and a fresh object stored and fetched back, on a new connection.
fn check(address: &str, seed: u64, index: u64) -> anyhow::Result<()> {
    let mut client = Client::connect(address)?;
    let stats = client.stats()?;
    anyhow::ensure!(stats.contains("objects="), "STATS said {}", cairn_tools::untrusted::escape(&stats));
    let bytes =
        format!("cairn fuzz-wire check, seed {seed}, after case {index}; more than a literal").into_bytes();
    let handle = Handle::blob(&bytes);
    client.put(handle, &bytes, |_| {})?;
    anyhow::ensure!(client.get(handle, |_, _| {})? == bytes, "the object came back different");
    Ok(())
}

/// Sends one case on a connection of its own and reads the answers until the node closes it;
/// how it ended and how many bytes came back. An error only if the node cannot be reached.
fn send_case(
    address: SocketAddr,
    channel: &Channel,
    case: &Case,
    linger: u64,
    answers: &mut BTreeMap<String, u64>,
) -> anyhow::Result<(&'static str, usize)> {
    let linger = Duration::from_secs(linger.max(1));
    let tcp = connect(address)?;
    tcp.set_write_timeout(Some(linger))?;
    tcp.set_read_timeout(Some(linger))?;
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn ReadWrite> = match channel {
        Channel::Raw => Box::new(tcp.try_clone()?),
        Channel::Sealed { me, node } => {
            Box::new(SecureStream::handshake(tcp.try_clone()?, me, node, &address.to_string())?)
        }
    };
    let cut = stream.write_all(&case.bytes).is_err();
    let _ = tcp.shutdown(Shutdown::Write);
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    let ending = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break if cut { "cut while sending" } else { "closed" },
            Ok(n) if received.len() < MAX_ANSWER => received.extend_from_slice(&chunk[..n]),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break "left open",
            Err(e) if e.kind() == ErrorKind::InvalidData => break "record failed",
            Err(_) => break "reset",
        }
    };
    let mut at = 0;
    while let Ok(Some((frame, used))) = decode(&received[at..]) {
        let name = match frame.message {
            Message::Error { code, .. } => format!("error-{code:?}"),
            other => format!("{other:?}").split([' ', '{', '(']).next().unwrap_or("?").to_string(),
        };
        *answers.entry(name).or_default() += 1;
        at += used;
    }
    if at < received.len() {
        *answers.entry("undecodable".into()).or_default() += 1;
    }
    Ok((ending, received.len()))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Connects, waiting out a busy moment (every slot taken) for up to 30 s.
fn connect(address: SocketAddr) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("the node at {address} refuses connections"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
