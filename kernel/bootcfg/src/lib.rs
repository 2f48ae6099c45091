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
}

impl Mode {
    pub const ALL: [Mode; 6] =
        [Mode::Serve, Mode::Job, Mode::Selftest, Mode::FaultTest, Mode::TaskChecks, Mode::Bench];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Serve => "serve",
            Mode::Job => "job",
            Mode::Selftest => "selftest",
            Mode::FaultTest => "fault-test",
            Mode::TaskChecks => "task-checks",
            Mode::Bench => "bench",
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
const KEYS: &str = "mode, log, ip, gateway, api_idle_s, cluster_ip, peers, fault";

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
        let text = core::str::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 { byte: e.valid_up_to() })?;
        let mut config = NodeConfig::default();
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
                            expected: "serve, job, selftest, fault-test, task-checks, bench",
                        }
                    })?
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
        match (&mut config.ip, gateway) {
            (Some(ip), gateway) => ip.gateway = gateway,
            (None, Some(_)) => return Err(ConfigError::GatewayWithoutIp),
            (None, None) => {}
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
        if self.api_idle_s != DEFAULT_API_IDLE_S {
            out.push_str(&alloc::format!("api_idle_s = {}\n", self.api_idle_s));
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
mod tests {
    extern crate std;
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    #[test]
    fn empty_config_is_the_default() {
        assert_eq!(NodeConfig::parse(b"").unwrap(), NodeConfig::default());
        assert_eq!(NodeConfig::parse(b"# only a comment\n\n").unwrap(), NodeConfig::default());
    }

    #[test]
    fn parses_every_mode_and_level() {
        for mode in Mode::ALL {
            for log_level in LogLevel::ALL {
                let text = alloc::format!("  mode={}  # why not\nlog =  {}\n", mode.name(), log_level.name());
                assert_eq!(
                    NodeConfig::parse(text.as_bytes()).unwrap(),
                    NodeConfig { mode, log_level, ..NodeConfig::default() }
                );
            }
        }
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let err = NodeConfig::parse(b"mode = job\nmdoe = serve\n").unwrap_err();
        assert_eq!(err, ConfigError::UnknownKey { line: 2, key: "mdoe".into() });
        assert!(err.to_string().contains("line 2"));
        assert!(err.to_string().contains("mdoe"));

        let err = NodeConfig::parse(b"mode = fast\n").unwrap_err();
        assert!(matches!(err, ConfigError::BadValue { line: 1, key: "mode", .. }));
        assert!(err.to_string().contains("fast"));

        assert_eq!(
            NodeConfig::parse(b"log = info\nlog = warn").unwrap_err(),
            ConfigError::DuplicateKey { line: 2, key: "log".into() }
        );
        assert_eq!(NodeConfig::parse(b"mode\n").unwrap_err(), ConfigError::MissingEquals { line: 1 });
        assert_eq!(NodeConfig::parse(b"mode = \xff").unwrap_err(), ConfigError::NotUtf8 { byte: 7 });
    }

    #[test]
    fn static_addresses() {
        let c = NodeConfig::parse(b"ip = 10.0.2.15/24\ngateway = 10.0.2.2\n").unwrap();
        assert_eq!(
            c.ip,
            Some(StaticIp { address: [10, 0, 2, 15], prefix: 24, gateway: Some([10, 0, 2, 2]) })
        );
        assert_eq!(NodeConfig::parse(b"gateway = 10.0.2.2").unwrap_err(), ConfigError::GatewayWithoutIp);
        for bad in [
            "ip = 10.0.2.15",
            "ip = 10.0.2/24",
            "ip = 10.0.2.300/24",
            "ip = 10.0.2.15/33",
            "ip = 010.0.2.15/24",
        ] {
            let err = NodeConfig::parse(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ConfigError::BadValue { key: "ip", .. }), "{bad}: {err:?}");
        }
    }

    #[test]
    fn cluster_keys() {
        let c = NodeConfig::parse(
            b"cluster_ip = 10.1.0.2/24\npeers = 10.1.0.1  10.1.0.3\nfault = corrupt-objects\n",
        )
        .unwrap();
        assert_eq!(c.cluster_ip, Some(StaticIp { address: [10, 1, 0, 2], prefix: 24, gateway: None }));
        assert_eq!(c.peers, [[10, 1, 0, 1], [10, 1, 0, 3]]);
        assert_eq!(c.fault, Fault::CorruptObjects);
        for (bad, key) in [
            ("cluster_ip = 10.1.0.2", "cluster_ip"),
            ("peers = 10.1.0.1 nope", "peers"),
            ("fault = melt", "fault"),
        ] {
            let err = NodeConfig::parse(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ConfigError::BadValue { key: k, .. } if k == key), "{bad}: {err:?}");
        }
    }

    #[test]
    fn api_idle_timeout() {
        assert_eq!(NodeConfig::parse(b"api_idle_s = 5").unwrap().api_idle_s, 5);
        assert_eq!(NodeConfig::parse(b"").unwrap().api_idle_s, DEFAULT_API_IDLE_S);
        for bad in ["api_idle_s = 0", "api_idle_s = -1", "api_idle_s = 86401", "api_idle_s = soon"] {
            let err = NodeConfig::parse(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ConfigError::BadValue { key: "api_idle_s", .. }), "{bad}: {err:?}");
        }
    }

    #[test]
    fn ceilings_are_keys_with_ranges() {
        let c = NodeConfig::parse(b"task_memory_mib = 64\neval_applications = 1_000\n").unwrap();
        assert_eq!(c.ceilings.task_memory_mib, 64);
        assert_eq!(c.ceilings.task_memory_bytes(), 64 << 20);
        assert_eq!(c.ceilings.eval_applications, 1000);
        assert_eq!(c.ceilings.task_time_ms, Ceilings::default().task_time_ms);
        for bad in
            ["task_memory_mib = 0", "task_memory_mib = 32769", "task_time_ms = 1e3", "api_min_rate = -5"]
        {
            let err = NodeConfig::parse(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ConfigError::OutOfRange { line: 1, .. }), "{bad}: {err:?}");
            assert!(err.to_string().contains("expected a whole number from"), "{err}");
        }
        let err = NodeConfig::parse(b"eval_depth = 5\neval_depth = 6").unwrap_err();
        assert_eq!(err, ConfigError::DuplicateKey { line: 2, key: "eval_depth".into() });
        assert!(NodeConfig::parse(b"tsk_time_ms = 5").unwrap_err().to_string().contains("task_time_ms"));
    }

    proptest! {
        #[test]
        fn ceilings_render_round_trip(values in proptest::collection::vec(any::<u64>(), CEILING_KEYS.len())) {
            let mut config = NodeConfig::default();
            for (ceiling, v) in CEILING_KEYS.iter().zip(values) {
                (ceiling.set)(&mut config.ceilings, ceiling.min + v % (ceiling.max - ceiling.min + 1));
            }
            prop_assert_eq!(NodeConfig::parse(config.render().as_bytes()).unwrap(), config);
        }

        #[test]
        fn render_round_trips(mode in 0..6usize, level in 0..5usize, ip in proptest::option::of((any::<[u8; 4]>(), 1u8..=32, proptest::option::of(any::<[u8; 4]>()))), api_idle_s in 1u32..=86_400,
            cluster_ip in proptest::option::of((any::<[u8; 4]>(), 1u8..=32)), peers in proptest::collection::vec(any::<[u8; 4]>(), 0..4), fault in 0..2usize) {
            let cluster_ip = cluster_ip.map(|(address, prefix)| StaticIp { address, prefix, gateway: None });
            let ip = ip.map(|(address, prefix, gateway)| StaticIp { address, prefix, gateway });
            let config = NodeConfig { mode: Mode::ALL[mode], log_level: LogLevel::ALL[level], ip, api_idle_s, cluster_ip, peers, fault: Fault::ALL[fault], ceilings: Ceilings::default() };
            prop_assert_eq!(NodeConfig::parse(config.render().as_bytes()).unwrap(), config);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = NodeConfig::parse(&bytes);
        }
    }
}
