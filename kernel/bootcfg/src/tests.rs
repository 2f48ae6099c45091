//! The node configuration's tests: parsing, errors, rendering round trips.

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
    assert_eq!(c.ip, Some(StaticIp { address: [10, 0, 2, 15], prefix: 24, gateway: Some([10, 0, 2, 2]) }));
    assert_eq!(NodeConfig::parse(b"gateway = 10.0.2.2").unwrap_err(), ConfigError::GatewayWithoutIp);
    for bad in
        ["ip = 10.0.2.15", "ip = 10.0.2/24", "ip = 10.0.2.300/24", "ip = 10.0.2.15/33", "ip = 010.0.2.15/24"]
    {
        let err = NodeConfig::parse(bad.as_bytes()).unwrap_err();
        assert!(matches!(err, ConfigError::BadValue { key: "ip", .. }), "{bad}: {err:?}");
    }
}

#[test]
fn cluster_keys() {
    let c =
        NodeConfig::parse(b"cluster_ip = 10.1.0.2/24\npeers = 10.1.0.1  10.1.0.3\nfault = corrupt-objects\n")
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
fn fuzz_keys() {
    let c =
        NodeConfig::parse(b"mode = fuzz\nfuzz_seed = 7\nfuzz_programs = 1_000_000\nfuzz_first = 5").unwrap();
    assert_eq!((c.mode, c.fuzz), (Mode::Fuzz, Fuzz { seed: 7, programs: 1_000_000, first: 5 }));
    assert_eq!(NodeConfig::parse(b"").unwrap().fuzz, Fuzz::default());
    for (bad, key) in [
        ("fuzz_programs = 0", "fuzz_programs"),
        ("fuzz_seed = -1", "fuzz_seed"),
        ("fuzz_first = x", "fuzz_first"),
    ] {
        let err = NodeConfig::parse(bad.as_bytes()).unwrap_err();
        assert!(matches!(err, ConfigError::BadValue { key: k, .. } if k == key), "{bad}: {err:?}");
    }
}

#[test]
fn ceilings_are_keys_with_ranges() {
    let c = NodeConfig::parse(b"task_memory_mib = 64\neval_applications = 1_000\n").unwrap();
    assert_eq!(c.ceilings.task_memory_mib, 64);
    assert_eq!(c.ceilings.task_memory_bytes(), 64 << 20);
    assert_eq!(c.ceilings.eval_applications, 1000);
    assert_eq!(c.ceilings.task_time_ms, Ceilings::default().task_time_ms);
    for bad in ["task_memory_mib = 0", "task_memory_mib = 32769", "task_time_ms = 1e3", "api_min_rate = -5"] {
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
    fn render_round_trips(mode in 0..7usize, level in 0..5usize, ip in proptest::option::of((any::<[u8; 4]>(), 1u8..=32, proptest::option::of(any::<[u8; 4]>()))), api_idle_s in 1u32..=86_400,
        cluster_ip in proptest::option::of((any::<[u8; 4]>(), 1u8..=32)), peers in proptest::collection::vec(any::<[u8; 4]>(), 0..4), fault in 0..2usize,
        fuzz in (any::<u64>(), 1u64.., any::<u64>()), disk_without_flush in any::<bool>(), boot_cpu_tasks in any::<bool>(), gce in any::<bool>()) {
        let cluster_ip = cluster_ip.map(|(address, prefix)| StaticIp { address, prefix, gateway: None });
        let ip = ip.map(|(address, prefix, gateway)| StaticIp { address, prefix, gateway });
        let config = NodeConfig { mode: Mode::ALL[mode], log_level: LogLevel::ALL[level], ip, api_idle_s, cluster_ip, peers, fault: Fault::ALL[fault], ceilings: Ceilings::default(), fuzz: Fuzz { seed: fuzz.0, programs: fuzz.1, first: fuzz.2 }, disk_without_flush, boot_cpu_tasks, metadata: if gce { Metadata::Gce } else { Metadata::None } };
        prop_assert_eq!(NodeConfig::parse(config.render().as_bytes()).unwrap(), config);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = NodeConfig::parse(&bytes);
    }
}

mod keys {
    use alloc::format;

    use cairn_channel::{PublicKey, SecretKey};

    use crate::{KeysError, NodeKeys};

    fn keys() -> NodeKeys {
        NodeKeys {
            secret: SecretKey::from_bytes([3; 32]),
            clients: alloc::vec![SecretKey::from_bytes([4; 32]).public()],
            peers: alloc::vec![([10, 1, 0, 2], SecretKey::from_bytes([5; 32]).public())],
        }
    }

    #[test]
    fn keys_round_trip_through_their_text() {
        let text = keys().to_text();
        let back = NodeKeys::parse(text.as_bytes()).unwrap();
        assert_eq!(back.secret.public(), keys().secret.public());
        assert_eq!(back.clients, keys().clients);
        assert_eq!(back.peers, keys().peers);
        assert_eq!(back.peer([10, 1, 0, 2]), Some(SecretKey::from_bytes([5; 32]).public()));
        assert_eq!(back.peer([10, 1, 0, 3]), None);
        assert_eq!(back.ring().peers.len(), 1);
    }

    #[test]
    fn bad_keys_name_the_line_but_never_the_value() {
        let secret = "ab".repeat(31) + "zz";
        let text = format!("# keys\nnode_key = {secret}\n");
        let error = NodeKeys::parse(text.as_bytes()).unwrap_err();
        assert_eq!(error, KeysError::Line { line: 2, what: "`node_key` is not 64 hex digits" });
        assert!(!format!("{error}").contains(&secret));
        assert_eq!(NodeKeys::parse(b"client_keys =\n").unwrap_err(), KeysError::Missing { key: "node_key" });
        let good = "cd".repeat(32);
        for (text, what) in [
            (format!("node_key = {good}\nnode_key = {good}"), "`node_key` given twice"),
            (format!("node_key = {good}\npeer_keys = 10.1.0.2"), "a peer is not ADDRESS=KEY"),
            (format!("node_key = {good}\npeer_keys = 10.1.0=x"), "a peer's address is not an IPv4 address"),
            (format!("node_key = {good}\nclient_keys = {good} 12"), "a client key is not 64 hex digits"),
            (
                format!("node_key = {good}\nmode = serve"),
                "unknown key (expected node_key, client_keys or peer_keys)",
            ),
        ] {
            assert_eq!(
                NodeKeys::parse(text.as_bytes()).unwrap_err(),
                KeysError::Line { line: 2, what },
                "{text}"
            );
        }
        assert_eq!(NodeKeys::parse(&[0xff]).unwrap_err(), KeysError::NotUtf8);
        let _: PublicKey = keys().secret.public();
    }

    #[test]
    fn the_image_configuration_takes_no_key() {
        let text = format!("node_key = {}\n", "cd".repeat(32));
        assert!(
            crate::NodeConfig::parse(text.as_bytes()).is_err(),
            "a private key must not be baked into an image"
        );
    }
}
