//! The secure channel against a booted node, over real sockets (docs/PROTOCOL.md, "The secure
//! channel"; docs/SECURITY.md, "The network"): who gets in, what a peer key may do, what
//! tampering and replay get, and a node flooded with handshakes that keeps serving its client.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cairn_bootcfg::{LogLevel, Mode, NodeConfig, NodeKeys};
use cairn_channel::{PublicKey, SecretKey};
use cairn_object::{Handle, Kind, Limits};
use cairn_proto::ErrorCode;
use cairn_tests::{BOOT_TIMEOUT, Node, serving_node, serving_node_with};
use cairn_tools::client::{Client, Refused};
use cairn_tools::keys;
use cairn_tools::qemu::NodeOptions;
use cairn_tools::secure::SecureStream;

fn node() -> (Node, String, PublicKey) {
    let (node, address) = serving_node(NodeConfig { log_level: LogLevel::Info, ..NodeConfig::default() });
    let key = node.vm().node_key().expect("a serving node has a key");
    (node, address, key)
}

fn stat(address: &str, key: &str) -> u64 {
    let stats = Client::connect(address).unwrap().stats().unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {stats}"))
}

fn refused_code(err: &anyhow::Error) -> Option<ErrorCode> {
    err.downcast_ref::<Refused>().map(|r| r.code)
}

/// An object no test stores by accident (larger than a literal).
fn object(tag: &str) -> (Handle, Vec<u8>) {
    let bytes = format!("{tag}: an object of the secure channel's tests, {}", "x".repeat(100)).into_bytes();
    (Handle::blob(&bytes), bytes)
}

fn frame(request: u32, message: cairn_proto::Message) -> Vec<u8> {
    let mut out = Vec::new();
    cairn_proto::encode(&cairn_proto::Frame { request, message }, &mut out);
    out
}

/// add(a, b) uploaded; the thunk.
fn add_thunk(client: &mut Client, a: u64, b: u64) -> Handle {
    let add = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_add")).unwrap();
    let procedure = Handle::blob(&add);
    client.put(procedure, &add, |_| {}).unwrap();
    let args = [Handle::blob(&a.to_le_bytes()), Handle::blob(&b.to_le_bytes())];
    let encoding = cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), procedure, &args).unwrap();
    let thunk = cairn_object::store::name(Kind::Thunk, &encoding).unwrap();
    client.put(thunk, &encoding, |_| {}).unwrap();
    thunk
}

#[test]
fn no_key_a_wrong_key_and_an_unauthorized_key_get_nothing_stored_or_run() {
    let (_node, address, node_key) = node();
    let (handle, bytes) = object("no key");

    // No key: a plaintext PUT, as clients sent before the channel. No answer, and a close.
    let mut plain = TcpStream::connect(&address).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    plain.write_all(&frame(1, cairn_proto::Message::Put { handle, bytes: bytes.clone() })).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(answer.is_empty(), "the node answered a client without a key: {answer:?}");

    // The wrong node key: the client will not talk to a node that cannot prove the key it
    // expects (and the node cannot read a hello sealed for another key).
    let me = keys::client_key().unwrap();
    let impostor = SecretKey::from_bytes([0x42; 32]).public();
    let err = SecureStream::connect_as(&address, &me, &impostor).err().expect("refused");
    assert!(format!("{err:#}").contains(&impostor.to_string()), "{err:#}");

    // An unauthorized key: the handshake completes, and the node's one answer, sealed for that
    // key, says it is not authorized. A PUT and an EVAL sent at once run nothing.
    let stranger = SecretKey::from_bytes(keys::random_bytes().unwrap());
    let mut client = Client::connect(&address).unwrap();
    let thunk = add_thunk(&mut client, 40, 2);
    let tasks_before = stat(&address, "tasks_run");
    let mut stream = SecureStream::connect_as(&address, &stranger, &node_key).unwrap();
    let mut requests = frame(1, cairn_proto::Message::Put { handle, bytes });
    requests.extend(frame(2, cairn_proto::Message::EvalFresh { handle: thunk }));
    let _ = stream.write_all(&requests);
    let err = Client::over(SecureStream::connect_as(&address, &stranger, &node_key).unwrap()).err().unwrap();
    assert_eq!(refused_code(&err), Some(ErrorCode::Forbidden), "{err:#}");
    assert!(format!("{err:#}").contains(&format!("key {} is not authorized", stranger.public())), "{err:#}");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = stream.read_to_end(&mut Vec::new());
    assert_eq!(
        client.missing(&[handle]).unwrap(),
        [handle],
        "nothing stored for a key the node does not know"
    );
    assert_eq!(stat(&address, "tasks_run"), tasks_before, "nothing run for it");
}

/// A TCP proxy on 127.0.0.1 in front of `target`: it records the client's bytes and can flip
/// one of them on the way (at `flip`, counted from the first byte the client sent).
struct Proxy {
    address: String,
    recorded: Arc<Mutex<Vec<u8>>>,
}

fn proxy(target: &str, flip: Option<usize>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let (target, record) = (target.to_string(), recorded.clone());
    thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = TcpStream::connect(&target).unwrap();
        let (mut client_in, mut server_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (mut server_in, mut client_out) = (server, client);
        thread::spawn(move || {
            let _ = std::io::copy(&mut server_in, &mut client_out);
            let _ = client_out.shutdown(Shutdown::Write);
        });
        let mut buf = [0u8; 4096];
        let mut seen = 0;
        loop {
            let n = match client_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(at) = flip.filter(|at| (seen..seen + n).contains(at)) {
                buf[at - seen] ^= 0x20;
            }
            seen += n;
            record.lock().unwrap().extend_from_slice(&buf[..n]);
            if server_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server_out.shutdown(Shutdown::Write);
    });
    Proxy { address, recorded }
}

#[test]
fn a_byte_flipped_in_transit_ends_the_connection_and_nothing_half_done_is_stored() {
    let (_node, address, node_key) = node();
    let me = keys::client_key().unwrap();
    let big: Vec<u8> = (0..(2u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
    let handle = Handle::blob(&big);
    // Past the hello (98 bytes) and the HELLO frame's record: inside the upload.
    let proxy = proxy(&address, Some(300_000));
    let mut client = Client::over(SecureStream::connect_as(&proxy.address, &me, &node_key).unwrap()).unwrap();
    let err = client.put(handle, &big, |_| {}).expect_err("an altered upload is not stored");
    let text = format!("{err:#}");
    assert!(
        refused_code(&err) == Some(ErrorCode::BadFrame) || text.contains("closed") || text.contains("reset"),
        "{text}"
    );
    let mut direct = Client::connect(&address).unwrap();
    assert_eq!(direct.missing(&[handle]).unwrap(), [handle], "half an upload stores nothing");
    direct.put(handle, &big, |_| {}).unwrap();
    assert!(direct.get(handle, |_, _| {}).unwrap() == big);
}

#[test]
fn a_recorded_session_replayed_to_the_node_runs_nothing() {
    let (_node, address, node_key) = node();
    let me = keys::client_key().unwrap();
    let mut setup = Client::connect(&address).unwrap();
    let thunk = add_thunk(&mut setup, 2, 3);
    // A session that runs a task (EVAL-FRESH runs it every time), recorded on the way.
    let proxy = proxy(&address, None);
    {
        let mut client =
            Client::over(SecureStream::connect_as(&proxy.address, &me, &node_key).unwrap()).unwrap();
        assert_eq!(client.eval_fresh(thunk).unwrap().result, Handle::blob(&5u64.to_le_bytes()));
    }
    thread::sleep(Duration::from_millis(300));
    let recording = proxy.recorded.lock().unwrap().clone();
    let runs = stat(&address, "tasks_run");
    for _ in 0..3 {
        let mut replay = TcpStream::connect(&address).unwrap();
        replay.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = replay.write_all(&recording);
        let _ = replay.shutdown(Shutdown::Write);
        let _ = replay.read_to_end(&mut Vec::new());
    }
    assert_eq!(stat(&address, "tasks_run"), runs, "a replayed session ran its task again");
}

#[test]
fn a_flood_of_bad_handshakes_and_held_connections_does_not_stop_an_authenticated_client() {
    let (_node, address, node_key) = node();
    let mut client = Client::connect(&address).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    // The authenticated client round-trips an object all the while.
    let worker = {
        let (stop, served) = (stop.clone(), served.clone());
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let bytes =
                    format!("round trip {i} during the flood, more than a literal's 32 bytes").into_bytes();
                let handle = Handle::blob(&bytes);
                client.put(handle, &bytes, |_| {}).unwrap_or_else(|e| panic!("round trip {i}: {e:#}"));
                assert_eq!(client.get(handle, |_, _| {}).unwrap(), bytes);
                served.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let phase = Instant::now();
    // 200 connections held open before authenticating: silent, or half a hello.
    let me = keys::client_key().unwrap();
    let (_, hello) = cairn_channel::Initiator::new(&me, &node_key, [1; 32]).unwrap();
    // Opened from ten threads: QEMU's user network accepts slowly once the node turns
    // connections away (a SYN waits for its one-second retry).
    let openers: Vec<_> = (0..10)
        .map(|_| {
            let (address, hello) = (address.clone(), hello);
            thread::spawn(move || {
                (0..20)
                    .filter_map(|i| {
                        let mut c = TcpStream::connect(&address).ok()?;
                        if i % 2 == 1 {
                            let _ = c.write_all(&hello[..40]);
                        }
                        Some(c)
                    })
                    .collect::<Vec<TcpStream>>()
            })
        })
        .collect();
    let held: Vec<TcpStream> = openers.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(held.len(), 200, "the host opened every connection");
    eprintln!("200 connections held after {:?}", phase.elapsed());
    // 10,000 bad handshakes from four threads: garbage, a hello-sized garbage (the node must do
    // a Diffie-Hellman before it knows), half a hello, or nothing at all.
    let started = Instant::now();
    let flood: Vec<_> = (0..4u64)
        .map(|t| {
            let address = address.clone();
            thread::spawn(move || {
                for i in 0..2500u64 {
                    let Ok(mut c) = TcpStream::connect(&address) else { continue };
                    let n = t * 2500 + i;
                    let mut sized = vec![0u8, 96];
                    sized.extend((0..96).map(|j| (n * 31 + j) as u8));
                    let bytes: &[u8] = match n % 4 {
                        0 => b"GET / HTTP/1.1\r\n\r\n",
                        1 => &sized,
                        2 => &sized[..50],
                        _ => &[],
                    };
                    let _ = c.write_all(bytes);
                    // Then the client's side closes and it waits for the node's: a client that
                    // vanishes at once leaves QEMU's user network, not the node, behind.
                    let _ = c.shutdown(Shutdown::Write);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut reply = Vec::new();
                    let _ = c.read_to_end(&mut reply);
                    assert!(reply.is_empty(), "the node answered a bad handshake: {reply:?}");
                }
            })
        })
        .collect();
    for t in flood {
        t.join().unwrap();
    }
    let flood_time = started.elapsed();
    let during = served.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("the authenticated client was served throughout");
    eprintln!("flood of 10,000 handshakes took {flood_time:?}; {during} round trips meanwhile");
    assert!(during >= 5, "only {during} round trips during the flood");
    drop(held);
    eprintln!("held connections dropped after {:?}", phase.elapsed());
    // And a new client gets in afterwards (once the node has let go of the held connections,
    // which may take it a moment: the first attempts may meet a reset).
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        match Client::connect(&address).and_then(|mut c| c.stats()) {
            Ok(stats) => break stats,
            Err(e) if Instant::now() > deadline => panic!("no new client got in after the flood: {e:#}"),
            Err(_) => thread::sleep(Duration::from_millis(500)),
        }
    };
    assert!(stats.contains("connections_handshake_closed="), "{stats}");
}

#[test]
fn a_peer_key_does_cluster_work_but_never_jobs_replays_journals_or_statistics() {
    let peer = SecretKey::from_bytes(keys::random_bytes().unwrap());
    let keys = NodeKeys {
        secret: keys::fresh_secret().unwrap(),
        clients: vec![keys::client_key().unwrap().public()],
        peers: vec![([10, 1, 0, 9], peer.public())],
    };
    let node_key = keys.secret.public();
    let (_node, address) = serving_node_with(NodeOptions {
        config: NodeConfig { log_level: LogLevel::Info, ..NodeConfig::default() },
        keys: Some(keys),
        ..NodeOptions::default()
    });
    let mut as_peer = Client::over(SecureStream::connect_as(&address, &peer, &node_key).unwrap()).unwrap();
    let (handle, bytes) = object("peer");
    as_peer.put(handle, &bytes, |_| {}).unwrap();
    assert_eq!(as_peer.get(handle, |_, _| {}).unwrap(), bytes);
    let thunk = add_thunk(&mut as_peer, 20, 22);
    assert_eq!(as_peer.eval(thunk).unwrap().result, Handle::blob(&42u64.to_le_bytes()), "pure evaluation");
    assert_eq!(as_peer.recall(&[thunk]).unwrap().len(), 1, "memo lookups");
    let job = Handle::blob(b"not even a job, but the role is checked first");
    for (what, outcome) in [
        ("SUBMIT", as_peer.submit(job).map(|_| ())),
        ("REPLAY", as_peer.replay(job).map(|_| ())),
        ("JOURNAL", as_peer.adopt_journal(handle)),
        ("STATS", as_peer.stats().map(|_| ())),
    ] {
        let err = outcome.expect_err(what);
        assert_eq!(refused_code(&err), Some(ErrorCode::Forbidden), "{what}: {err:#}");
        assert!(format!("{err:#}").contains(what), "{what}: {err:#}");
    }
    // The connection still serves what a peer may do, and a client key still does everything.
    assert!(as_peer.missing(&[handle]).unwrap().is_empty());
    assert!(Client::connect(&address).unwrap().stats().unwrap().contains("objects="));
}

#[test]
fn one_client_cannot_close_anothers_connections_behind_a_shared_address() {
    // Behind QEMU's user networking every host client has one address. A client that keeps its
    // connections busy and opens another every 200 ms used to close other clients' persistent
    // connections whenever they had been quiet for a second: the ceiling now counts keys.
    let other = SecretKey::from_bytes(keys::random_bytes().unwrap());
    let node_keys = NodeKeys {
        secret: keys::fresh_secret().unwrap(),
        clients: vec![keys::client_key().unwrap().public(), other.public()],
        peers: Vec::new(),
    };
    let node_key = node_keys.secret.public();
    let ceilings = cairn_bootcfg::Ceilings { api_connections_per_client: 2, ..Default::default() };
    let (_node, address) = serving_node_with(NodeOptions {
        config: NodeConfig { log_level: LogLevel::Info, ceilings, ..NodeConfig::default() },
        keys: Some(node_keys),
        ..NodeOptions::default()
    });
    let mut honest = Client::connect(&address).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, address) = (stop.clone(), address.clone());
        thread::spawn(move || {
            let connect = || Client::over(SecureStream::connect_as(&address, &other, &node_key)?);
            let mut busy: Vec<Client> = (0..2).map(|_| connect().unwrap()).collect();
            let (mut refused, mut last) = (0u64, Instant::now());
            while !stop.load(Ordering::Relaxed) {
                for c in &mut busy {
                    let _ = c.stats();
                }
                if last.elapsed() >= Duration::from_millis(200) {
                    last = Instant::now();
                    match connect().and_then(|mut c| c.stats()) {
                        Err(e) if refused_code(&e) == Some(ErrorCode::Busy) => refused += 1,
                        _ => {}
                    }
                }
            }
            refused
        })
    };
    for i in 0..15 {
        thread::sleep(Duration::from_millis(1500));
        honest.stats().unwrap_or_else(|e| panic!("request {i} of the quiet client: {e:#}"));
    }
    stop.store(true, Ordering::Relaxed);
    let refused = churn.join().unwrap();
    assert!(refused >= 5, "the churning client was refused only {refused} times");
}

#[test]
fn half_closed_connections_still_count_against_their_keys_ceiling() {
    // A client that asks for much, shuts its side down and reads slowly still holds its slots:
    // only established connections used to be counted, and one key took every slot.
    let ceilings = cairn_bootcfg::Ceilings { api_connections_per_client: 2, ..Default::default() };
    let (_node, address) =
        serving_node(NodeConfig { log_level: LogLevel::Info, ceilings, ..NodeConfig::default() });
    let big: Vec<u8> = (0..(8u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let handle = Handle::blob(&big);
    Client::connect(&address).unwrap().put(handle, &big, |_| {}).unwrap();
    let held: Vec<SecureStream> = (0..2)
        .map(|_| {
            let mut c = SecureStream::connect(&address).unwrap();
            let mut gets = frame(1, cairn_proto::Message::Get { handle });
            gets.extend(frame(2, cairn_proto::Message::Get { handle }));
            c.write_all(&gets).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            c
        })
        .collect();
    thread::sleep(Duration::from_secs(1));
    let err =
        Client::connect(&address).and_then(|mut c| c.stats()).expect_err("a third connection of the key");
    assert_eq!(refused_code(&err), Some(ErrorCode::Busy), "{err:#}");
    assert!(format!("{err:#}").contains("holds the 2 connections one client may have"), "{err:#}");
    drop(held);
}

#[test]
fn a_node_without_keys_serves_no_api_and_says_why() {
    let mut node = Node::boot_with(NodeOptions {
        config: NodeConfig { mode: Mode::Serve, log_level: LogLevel::Info, ..NodeConfig::default() },
        api_port: Some(cairn_tests::free_port()),
        no_keys: true,
        ..NodeOptions::default()
    });
    node.expect(r"^cairn: entropy rdseed=\d+ rdrand=\d+ virtio-rng=\d+$", BOOT_TIMEOUT);
    node.expect(r"^cairn: api off: no node keys: fw_cfg has no file opt/cairn/keys$", BOOT_TIMEOUT);
}
