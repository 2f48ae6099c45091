//! Node configuration: a few `key = value` lines that `boot/` writes into the image (as the
//! bootloader's ramdisk) and the kernel parses at boot. See docs/ARCHITECTURE.md, "Node
//! configuration".
//!
//! The format is deliberately tiny and human-writable: one setting per line, `#` starts a
//! comment, blank lines are ignored, unknown keys and repeated keys are errors (a typo must not
//! silently fall back to a default).

#![no_std]

extern crate alloc;

mod ceilings;
pub mod external;
pub mod fw_cfg;
mod keys;
pub use keys::{FW_CFG_NAME, KeysError, NodeKeys};

pub use ceilings::{CEILING_KEYS, CeilingKey, Ceilings};

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// What the node does once it is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Print the ready line, then stay up and serve until the host stops the VM.
    Serve,
    /// Print the ready line, run the default job, then shut down with its status.
    Job,
    /// Run the in-kernel self tests and shut down with success only if all passed.
    Selftest,
    /// Deliberately read an unmapped address, to check that faults are reported.
    FaultTest,
    /// Run the hostile and example tasks and print one line per case (tests/tests/tasks.rs).
    TaskChecks,
    /// Measure invocation, memo hits and hashing in guest time (`cairn bench`).
    Bench,
    /// Run generated syscall-fuzz programs (`fuzz_*` keys), with no network (`cairn fuzz`).
    Fuzz,
}

impl Mode {
    pub const ALL: [Mode; 7] =
        [Mode::Serve, Mode::Job, Mode::Selftest, Mode::FaultTest, Mode::TaskChecks, Mode::Bench, Mode::Fuzz];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Serve => "serve",
            Mode::Job => "job",
            Mode::Selftest => "selftest",
            Mode::FaultTest => "fault-test",
            Mode::TaskChecks => "task-checks",
            Mode::Bench => "bench",
            Mode::Fuzz => "fuzz",
        }
    }
}

/// Kernel log verbosity, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const ALL: [LogLevel; 5] =
        [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace];

    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// A static IPv4 address; without one the node asks DHCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticIp {
    pub address: [u8; 4],
    pub prefix: u8,
    pub gateway: Option<[u8; 4]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub mode: Mode,
    pub log_level: LogLevel,
    pub ip: Option<StaticIp>,
    /// The node API closes a connection that moves no bytes for this many seconds.
    pub api_idle_s: u32,
    /// The node's address on the cluster network (its second network card), if it is in one.
    pub cluster_ip: Option<StaticIp>,
    /// The other nodes of the cluster, by cluster address (docs/CLUSTER.md).
    pub peers: Vec<[u8; 4]>,
    /// A deliberate fault, for tests of the nodes that must catch it.
    pub fault: Fault,
    /// What any one task, evaluation or connection may use (docs/SECURITY.md).
    pub ceilings: Ceilings,
    /// What the `fuzz` mode runs.
    pub fuzz: Fuzz,
    /// Use a store disk that cannot flush its writes (docs/STORE.md): its data is not durable,
    /// and the node says so. Without this, such a disk stops the API.
    pub disk_without_flush: bool,
    /// Whether the boot CPU runs tasks too (the default), or only evaluates and serves while
    /// the other CPUs run them (docs/ARCHITECTURE.md, "CPUs"). With one CPU it always does.
    pub boot_cpu_tasks: bool,
    /// Whether a serving node asks a cloud's metadata server for its configuration once its
    /// network is up (docs/CLOUD.md).
    pub metadata: Metadata,
}

/// A cloud metadata server a node takes configuration from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metadata {
    None,
    /// GCE's, at 169.254.169.254 (`external::gce_request`).
    Gce,
}

/// The `fuzz` mode's programs: `programs` of them from index `first` of the run seeded with
/// `seed` (cairn-fuzz), so that any stretch of a run can be run again alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fuzz {
    pub seed: u64,
    pub programs: u64,
    pub first: u64,
}

impl Default for Fuzz {
    fn default() -> Self {
        Fuzz { seed: 1, programs: 1000, first: 0 }
    }
}

/// Faults a node can be told to have (tests only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every object this node sends in answer to GET has its first byte flipped.
    CorruptObjects,
}

impl Fault {
    pub const ALL: [Fault; 2] = [Fault::None, Fault::CorruptObjects];

    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::CorruptObjects => "corrupt-objects",
        }
    }
}

pub const DEFAULT_API_IDLE_S: u32 = 60;
const KEYS: &str = "mode, log, ip, gateway, api_idle_s, cluster_ip, peers, fault, fuzz_seed, fuzz_programs, fuzz_first, disk_without_flush, boot_cpu_tasks, metadata";

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            mode: Mode::Job,
            log_level: LogLevel::Info,
            ip: None,
            api_idle_s: DEFAULT_API_IDLE_S,
            cluster_ip: None,
            peers: Vec::new(),
            fault: Fault::None,
            ceilings: Ceilings::default(),
            fuzz: Fuzz::default(),
            disk_without_flush: false,
            boot_cpu_tasks: true,
            metadata: Metadata::None,
        }
    }
}

fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for byte in out.iter_mut() {
        let part = parts.next()?;
        // Canonical decimal: no empty parts, no leading zeros.
        if part.is_empty() || (part.len() > 1 && part.starts_with('0')) {
            return None;
        }
        *byte = part.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn fmt_ipv4(ip: [u8; 4]) -> alloc::string::String {
    alloc::format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

/// Why a configuration was rejected; `line` is 1-based.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    NotUtf8 {
        byte: usize,
    },
    MissingEquals {
        line: usize,
    },
    UnknownKey {
        line: usize,
        key: String,
    },
    DuplicateKey {
        line: usize,
        key: String,
    },
    /// `gateway` without `ip`: DHCP provides both or neither.
    GatewayWithoutIp,
    BadValue {
        line: usize,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A ceiling outside what the node can honour.
    OutOfRange {
        line: usize,
        key: &'static str,
        value: String,
        min: u64,
        max: u64,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotUtf8 { byte } => write!(f, "node config is not UTF-8 (byte {byte})"),
            ConfigError::MissingEquals { line } => {
                write!(f, "node config line {line}: expected `key = value`")
            }
            ConfigError::UnknownKey { line, key } => {
                write!(f, "node config line {line}: unknown key `{key}` (known: {KEYS}")?;
                for ceiling in CEILING_KEYS {
                    write!(f, ", {}", ceiling.key)?;
                }
                f.write_str(")")
            }
            ConfigError::DuplicateKey { line, key } => {
                write!(f, "node config line {line}: `{key}` is set twice")
            }
            ConfigError::GatewayWithoutIp => {
                write!(f, "node config: `gateway` needs `ip` (a static address)")
            }
            ConfigError::OutOfRange { line, key, value, min, max } => write!(
                f,
                "node config line {line}: `{key} = {value}` is not valid (expected a whole number from {min} to {max})"
            ),
            ConfigError::BadValue { line, key, value, expected } => write!(
                f,
                "node config line {line}: `{key} = {value}` is not valid (expected one of: {expected})"
            ),
        }
    }
}

impl NodeConfig {
    /// Parses a configuration; every key is optional and defaults as in [`NodeConfig::default`].
    pub fn parse(bytes: &[u8]) -> Result<NodeConfig, ConfigError> {
        NodeConfig::default().parse_over(bytes)
    }

    /// This configuration with the keys `bytes` sets replaced (an outside configuration over
    /// the image's own: docs/CLOUD.md). `peers` replaces the whole list; `ip` without
    /// `gateway` drops the gateway.
    pub fn parse_over(&self, bytes: &[u8]) -> Result<NodeConfig, ConfigError> {
        let text = core::str::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 { byte: e.valid_up_to() })?;
        let mut config = self.clone();
        let mut seen: Vec<&str> = Vec::new();
        let mut gateway = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let (key, value) = content.split_once('=').ok_or(ConfigError::MissingEquals { line })?;
            let (key, value) = (key.trim(), value.trim());
            if let Some(ceiling) = CEILING_KEYS.iter().find(|c| c.key == key) {
                if seen.contains(&key) {
                    return Err(ConfigError::DuplicateKey { line, key: key.into() });
                }
                seen.push(key);
                let number = value.replace('_', "").parse::<u64>().ok();
                let v = number.filter(|v| (ceiling.min..=ceiling.max).contains(v)).ok_or_else(|| {
                    ConfigError::OutOfRange {
                        line,
                        key: ceiling.key,
                        value: value.into(),
                        min: ceiling.min,
                        max: ceiling.max,
                    }
                })?;
                (ceiling.set)(&mut config.ceilings, v);
                continue;
            }
            if !KEYS.split(", ").any(|known| known == key) {
                return Err(ConfigError::UnknownKey { line, key: key.into() });
            }
            if seen.contains(&key) {
                return Err(ConfigError::DuplicateKey { line, key: key.into() });
            }
            seen.push(key);
            let bad = |expected| ConfigError::BadValue {
                line,
                key: if key == "ip" { "ip" } else { "gateway" },
                value: value.into(),
                expected,
            };
            match key {
                "ip" => {
                    let (address, prefix) = value
                        .split_once('/')
                        .ok_or_else(|| bad("an IPv4 address with a prefix, like 10.0.2.15/24"))?;
                    let address = parse_ipv4(address)
                        .ok_or_else(|| bad("an IPv4 address with a prefix, like 10.0.2.15/24"))?;
                    let prefix: u8 = prefix
                        .parse()
                        .ok()
                        .filter(|p| (1..=32).contains(p))
                        .ok_or_else(|| bad("a prefix length from 1 to 32"))?;
                    config.ip = Some(StaticIp { address, prefix, gateway: None });
                }
                "gateway" => {
                    gateway = Some(parse_ipv4(value).ok_or_else(|| bad("an IPv4 address, like 10.0.2.2"))?)
                }
                "cluster_ip" => {
                    let bad = |expected| ConfigError::BadValue {
                        line,
                        key: "cluster_ip",
                        value: value.into(),
                        expected,
                    };
                    let (address, prefix) = value
                        .split_once('/')
                        .ok_or_else(|| bad("an IPv4 address with a prefix, like 10.1.0.2/24"))?;
                    let address = parse_ipv4(address)
                        .ok_or_else(|| bad("an IPv4 address with a prefix, like 10.1.0.2/24"))?;
                    let prefix: u8 = prefix
                        .parse()
                        .ok()
                        .filter(|p| (1..=32).contains(p))
                        .ok_or_else(|| bad("a prefix length from 1 to 32"))?;
                    config.cluster_ip = Some(StaticIp { address, prefix, gateway: None });
                }
                "peers" => {
                    config.peers.clear();
                    for peer in value.split_whitespace() {
                        let ip = parse_ipv4(peer).ok_or_else(|| ConfigError::BadValue {
                            line,
                            key: "peers",
                            value: value.into(),
                            expected: "IPv4 addresses separated by spaces",
                        })?;
                        config.peers.push(ip);
                    }
                }
                "fault" => {
                    config.fault = Fault::ALL.into_iter().find(|f| f.name() == value).ok_or_else(|| {
                        ConfigError::BadValue {
                            line,
                            key: "fault",
                            value: value.into(),
                            expected: "none, corrupt-objects",
                        }
                    })?
                }
                "disk_without_flush" => {
                    config.disk_without_flush = match value {
                        "yes" => true,
                        "no" => false,
                        _ => {
                            return Err(ConfigError::BadValue {
                                line,
                                key: "disk_without_flush",
                                value: value.into(),
                                expected: "yes or no",
                            });
                        }
                    }
                }
                "metadata" => {
                    config.metadata = match value {
                        "gce" => Metadata::Gce,
                        "none" => Metadata::None,
                        _ => {
                            return Err(ConfigError::BadValue {
                                line,
                                key: "metadata",
                                value: value.into(),
                                expected: "gce or none",
                            });
                        }
                    }
                }
                "boot_cpu_tasks" => {
                    config.boot_cpu_tasks = match value {
                        "yes" => true,
                        "no" => false,
                        _ => {
                            return Err(ConfigError::BadValue {
                                line,
                                key: "boot_cpu_tasks",
                                value: value.into(),
                                expected: "yes or no",
                            });
                        }
                    }
                }
                "api_idle_s" => {
                    config.api_idle_s =
                        value.parse().ok().filter(|s| (1..=86_400).contains(s)).ok_or_else(|| {
                            ConfigError::BadValue {
                                line,
                                key: "api_idle_s",
                                value: value.into(),
                                expected: "seconds from 1 to 86400",
                            }
                        })?
                }
                "mode" => {
                    config.mode = Mode::ALL.into_iter().find(|m| m.name() == value).ok_or_else(|| {
                        ConfigError::BadValue {
                            line,
                            key: "mode",
                            value: value.into(),
                            expected: "serve, job, selftest, fault-test, task-checks, bench, fuzz",
                        }
                    })?
                }
                "fuzz_seed" | "fuzz_programs" | "fuzz_first" => {
                    let (key, min, expected) = match key {
                        "fuzz_seed" => ("fuzz_seed", 0, "a whole number"),
                        "fuzz_first" => ("fuzz_first", 0, "a whole number"),
                        _ => ("fuzz_programs", 1, "a whole number from 1"),
                    };
                    let number = value.replace('_', "").parse::<u64>().ok().filter(|n| *n >= min);
                    let n = number.ok_or_else(|| ConfigError::BadValue {
                        line,
                        key,
                        value: value.into(),
                        expected,
                    })?;
                    match key {
                        "fuzz_seed" => config.fuzz.seed = n,
                        "fuzz_first" => config.fuzz.first = n,
                        _ => config.fuzz.programs = n,
                    }
                }
                _ => {
                    config.log_level =
                        LogLevel::ALL.into_iter().find(|l| l.name() == value).ok_or_else(|| {
                            ConfigError::BadValue {
                                line,
                                key: "log",
                                value: value.into(),
                                expected: "error, warn, info, debug, trace",
                            }
                        })?
                }
            }
        }
        // The gateway goes with the address: set again when either is.
        if seen.contains(&"ip") || seen.contains(&"gateway") {
            match (&mut config.ip, gateway) {
                (Some(ip), gateway) => ip.gateway = gateway,
                (None, Some(_)) => return Err(ConfigError::GatewayWithoutIp),
                (None, None) => {}
            }
        }
        Ok(config)
    }

    /// The canonical text form; `parse(render(c)) == c`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# Cairn node configuration (docs/ARCHITECTURE.md)\n");
        out.push_str("mode = ");
        out.push_str(self.mode.name());
        out.push_str("\nlog = ");
        out.push_str(self.log_level.name());
        out.push('\n');
        if let Some(ip) = self.ip {
            out.push_str(&alloc::format!("ip = {}/{}\n", fmt_ipv4(ip.address), ip.prefix));
            if let Some(gw) = ip.gateway {
                out.push_str(&alloc::format!("gateway = {}\n", fmt_ipv4(gw)));
            }
        }
        if let Some(ip) = self.cluster_ip {
            out.push_str(&alloc::format!("cluster_ip = {}/{}\n", fmt_ipv4(ip.address), ip.prefix));
        }
        if !self.peers.is_empty() {
            let peers: Vec<String> = self.peers.iter().map(|p| fmt_ipv4(*p)).collect();
            out.push_str(&alloc::format!("peers = {}\n", peers.join(" ")));
        }
        if self.fault != Fault::None {
            out.push_str(&alloc::format!("fault = {}\n", self.fault.name()));
        }
        if self.disk_without_flush {
            out.push_str("disk_without_flush = yes\n");
        }
        if !self.boot_cpu_tasks {
            out.push_str("boot_cpu_tasks = no\n");
        }
        if self.metadata == Metadata::Gce {
            out.push_str("metadata = gce\n");
        }
        if self.api_idle_s != DEFAULT_API_IDLE_S {
            out.push_str(&alloc::format!("api_idle_s = {}\n", self.api_idle_s));
        }
        let (fuzz, default) = (self.fuzz, Fuzz::default());
        for (key, value, default) in [
            ("fuzz_seed", fuzz.seed, default.seed),
            ("fuzz_programs", fuzz.programs, default.programs),
            ("fuzz_first", fuzz.first, default.first),
        ] {
            if value != default {
                out.push_str(&alloc::format!("{key} = {value}\n"));
            }
        }
        let defaults = Ceilings::default();
        for ceiling in CEILING_KEYS {
            let value = (ceiling.get)(&self.ceilings);
            if value != (ceiling.get)(&defaults) {
                out.push_str(&alloc::format!("{} = {value}\n", ceiling.key));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
