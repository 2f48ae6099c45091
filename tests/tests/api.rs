//! The node API over a real network path (host TCP → QEMU hostfwd → virtio-net → smoltcp):
//! objects up and down with their names checked, evaluation, stats, and clients that misbehave
//! while others are served (docs/PROTOCOL.md).

use cairn_tests::stat;
use cairn_tools::secure::SecureStream;
use std::io::{Read, Write};
use std::time::Duration;

use cairn_bootcfg::{LogLevel, Mode, NodeConfig};
use cairn_object::{Handle, Kind, Limits};
use cairn_proto::{Message, decode};
use cairn_tests::{BOOT_TIMEOUT, Node, free_port};
use cairn_tools::client::Client;
use cairn_tools::qemu::NodeOptions;

fn serving_node() -> (Node, String) {
    serving_node_with(NodeConfig::default())
}

fn serving_node_with(config: NodeConfig) -> (Node, String) {
    cairn_tests::serving_node(NodeConfig { log_level: LogLevel::Info, ..config })
}

fn raw_exchange(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = SecureStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

#[test]
fn objects_evaluation_stats_and_misbehaving_clients() {
    let (_node, address) = serving_node();

    // A client that sends half a frame and goes quiet must not hold up anyone else.
    let mut loris = SecureStream::connect(&address).unwrap();
    loris.write_all(&[0x10, 0, 0]).unwrap();

    let mut client = Client::connect(&address).expect("HELLO");
    let small = b"small, but more than a literal's 32 bytes".to_vec();
    let big: Vec<u8> = (0..(3u32 << 20) + 4321).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let (hs, hb) = (Handle::blob(&small), Handle::blob(&big));
    assert_eq!(client.missing(&[hs, hb, Handle::blob(b"literal")]).unwrap(), [hs, hb]);
    client.put(hs, &small, |_| {}).unwrap();
    client.put(hb, &big, |_| {}).unwrap();
    assert!(client.missing(&[hs, hb]).unwrap().is_empty());
    assert_eq!(client.get(hs, |_, _| {}).unwrap(), small);
    assert!(client.get(hb, |_, _| {}).unwrap() == big, "3 MiB round trip");

    // A wrong hash is refused and nothing is stored; the connection stays usable.
    let claimed = Handle::blob(&[1u8; 64]);
    let err = client.put(claimed, &[2u8; 64], |_| {}).unwrap_err().to_string();
    assert!(err.contains("really"), "{err}");
    assert_eq!(client.missing(&[claimed]).unwrap(), [claimed]);

    // Evaluate add(2, 3) with the task ELF sent over the API.
    let add = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_add")).unwrap();
    let procedure = Handle::blob(&add);
    client.put(procedure, &add, |_| {}).unwrap();
    let args = [Handle::blob(&2u64.to_le_bytes()), Handle::blob(&3u64.to_le_bytes())];
    let thunk_bytes = cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), procedure, &args).unwrap();
    let thunk = cairn_object::store::name(Kind::Thunk, &thunk_bytes).unwrap();
    client.put(thunk, &thunk_bytes, |_| {}).unwrap();
    let first = client.eval(thunk).unwrap();
    assert_eq!(first.result, Handle::blob(&5u64.to_le_bytes()));
    assert_eq!((first.tasks_run, first.memo_hits), (1, 0));
    let again = client.eval(thunk).unwrap();
    assert_eq!((again.result, again.tasks_run, again.memo_hits), (first.result, 0, 1));

    let stats = client.stats().unwrap();
    assert!(stats.lines().any(|l| l == "tasks_run=1"), "{stats}");
    // Without a disk there is nothing to scrub, and the node says so.
    let err = client.scrub().unwrap_err();
    assert!(format!("{err:#}").contains("this node has no disk"), "{err:#}");
    assert!(stats.lines().any(|l| l == "memo_hits=1"), "{stats}");

    // Garbage and an oversized frame each get an error and a close.
    let reply = raw_exchange(&address, b"GET / HTTP/1.1\r\n\r\n");
    let (frame, _) = decode(&reply).unwrap().expect("an error frame");
    assert!(
        matches!(frame.message, Message::Error { code: cairn_proto::ErrorCode::BadFrame, .. }),
        "{frame:?}"
    );
    let reply = raw_exchange(&address, &u32::MAX.to_le_bytes());
    let (frame, _) = decode(&reply).unwrap().expect("an error frame");
    assert!(
        matches!(&frame.message, Message::Error { message, .. } if message.contains("frame length")),
        "{frame:?}"
    );

    // The quiet client is still connected, and the node still serves a new one.
    assert!(Client::connect(&address).unwrap().stats().unwrap().contains("objects="));
    drop(loris);
}

#[test]
fn a_static_address_from_the_node_config_replaces_dhcp() {
    let port = free_port();
    let mut node = Node::boot_with(NodeOptions {
        config: NodeConfig {
            mode: Mode::Serve,
            log_level: LogLevel::Info,
            ip: Some(cairn_bootcfg::StaticIp {
                address: [10, 0, 2, 15],
                prefix: 24,
                gateway: Some([10, 0, 2, 2]),
            }),
            ..NodeConfig::default()
        },
        api_port: Some(port),
        ..NodeOptions::default()
    });
    node.expect(r"^cairn: net ip=10\.0\.2\.15/24 gateway=10\.0\.2\.2 static api_port=7070$", BOOT_TIMEOUT);
    let stats = Client::connect(&format!("127.0.0.1:{port}")).unwrap().stats().unwrap();
    assert!(stats.contains("objects="), "{stats}");
}

/// Reads until the node closes the connection; how long that took, or None if it did not
/// within `limit`.
fn time_to_close(stream: &mut SecureStream, limit: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => Some(started.elapsed()),
        Err(_) => None,
    }
}

#[test]
fn idle_and_truncated_connections_are_closed_while_others_are_served() {
    let (_node, address) = serving_node_with(NodeConfig { api_idle_s: 2, ..NodeConfig::default() });

    // A frame cut short, then the client's side closed: the node closes too, without waiting
    // for the idle timeout.
    let mut truncated = SecureStream::connect(&address).unwrap();
    let mut frame = Vec::new();
    cairn_proto::encode(
        &cairn_proto::Frame { request: 1, message: Message::Hello { client: "truncated".into() } },
        &mut frame,
    );
    truncated.write_all(&frame[..frame.len() - 3]).unwrap();
    truncated.shutdown(std::net::Shutdown::Write).unwrap();
    let closed = time_to_close(&mut truncated, Duration::from_secs(30))
        .expect("the node closes a truncated connection");
    assert!(
        closed < Duration::from_millis(1500),
        "closed after {closed:?}, before the 2 s idle timeout was due"
    );

    // An upload cut short gives its memory back: the same upload then succeeds in full.
    let big: Vec<u8> = (0..(2u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let handle = Handle::blob(&big);
    let mut stream = Vec::new();
    cairn_proto::encode(
        &cairn_proto::Frame { request: 1, message: Message::PutBegin { handle, len: big.len() as u64 } },
        &mut stream,
    );
    cairn_proto::encode(
        &cairn_proto::Frame {
            request: 1,
            message: Message::PutChunk { offset: 0, bytes: big[..cairn_proto::MAX_CHUNK].to_vec() },
        },
        &mut stream,
    );
    let mut cut = SecureStream::connect(&address).unwrap();
    cut.write_all(&stream[..stream.len() - 1000]).unwrap();
    cut.shutdown(std::net::Shutdown::Write).unwrap();
    time_to_close(&mut cut, Duration::from_secs(30)).expect("the node closes a cut-off upload");
    let mut client = Client::connect(&address).unwrap();
    assert_eq!(client.missing(&[handle]).unwrap(), [handle], "half an upload stores nothing");
    client.put(handle, &big, |_| {}).unwrap();
    assert!(client.get(handle, |_, _| {}).unwrap() == big);

    // A client that goes quiet mid-frame is closed after the idle timeout, while a client that
    // keeps talking is served throughout.
    let mut loris = SecureStream::connect(&address).unwrap();
    loris.write_all(&frame[..5]).unwrap();
    let started = std::time::Instant::now();
    let watcher = std::thread::spawn(move || time_to_close(&mut loris, Duration::from_secs(30)));
    while started.elapsed() < Duration::from_secs(3) {
        assert!(client.stats().unwrap().contains("objects="));
        std::thread::sleep(Duration::from_millis(200));
    }
    let closed = watcher.join().unwrap().expect("the node closes an idle connection");
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_secs(10),
        "closed after {closed:?}"
    );
}

/// Uploads are hashed span by span while they arrive, on the helper CPU when there is one
/// (arch::smp), and the channel's keystreams are computed ahead there: the names it computes
/// are checked like any other, the bytes come back as they went, and a node with one CPU does
/// all of it itself.
#[test]
fn uploads_are_named_on_the_helper_cpu_and_without_one() {
    let big: Vec<u8> = (0..(4u32 << 20) + 777).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
    let handle = Handle::blob(&big);
    // The same length, one byte different: only hashing every span can tell.
    let mut forged = big.clone();
    forged[(3 << 20) + 5] ^= 0x40;
    for cpus in [2, 1] {
        let (_node, address) = cairn_tests::serving_node_with(NodeOptions { cpus, ..NodeOptions::default() });
        let mut client = Client::connect(&address).unwrap();
        let err = client.put(handle, &forged, |_| {}).unwrap_err().to_string();
        assert!(err.contains("really"), "{cpus} CPUs: {err}");
        assert_eq!(
            client.missing(&[handle]).unwrap(),
            [handle],
            "{cpus} CPUs: a forged upload stores nothing"
        );
        client.put(handle, &big, |_| {}).unwrap();
        assert!(client.get(handle, |_, _| {}).unwrap() == big, "{cpus} CPUs: round trip");
        let stats = client.stats().unwrap();
        assert_eq!(stat(&stats, "cpus"), cpus as u64, "{stats}");
        let helped = stat(&stats, "helper_hashed_bytes");
        // Records streamed both ways (about 65 each way per copy): their keystreams were ordered
        // ahead (net::ahead), computed by the helper or taken back by the boot CPU.
        let keystreams = stat(&stats, "keystreams_ahead") + stat(&stats, "keystreams_taken_back");
        if cpus == 1 {
            assert_eq!(helped, 0, "{stats}");
            assert_eq!(keystreams, 0, "{stats}");
        } else {
            // Both uploads were offered to the helper; the boot CPU takes what is left at the end.
            assert!(helped > 0 && helped <= 2 * big.len() as u64, "{stats}");
            assert!(keystreams >= 100, "{stats}");
        }
    }
}

/// Keystreams ordered for a connection go with it when it closes (net::ahead): after clients
/// that streamed large downloads at the same time are gone, none is left ordered, and the next
/// client's records get theirs computed ahead again.
#[test]
fn a_closed_connections_keystreams_go_with_it() {
    let (_node, address) = serving_node();
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i.wrapping_mul(2246822519) >> 11) as u8).collect();
    let handle = Handle::blob(&big);
    Client::connect(&address).unwrap().put(handle, &big, |_| {}).unwrap();
    // Several connections stream at once, so that they hold different slots.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                Client::connect(&address).unwrap().get(handle, |_, _| {}).unwrap().len()
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), big.len());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut stats = String::new();
    while std::time::Instant::now() < deadline {
        stats = Client::connect(&address).unwrap().stats().unwrap();
        if stat(&stats, "keystreams_live") == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(stat(&stats, "keystreams_live"), 0, "closed connections keep keystreams: {stats}");
    let before = stat(&stats, "keystreams_ahead");
    let mut client = Client::connect(&address).unwrap();
    assert!(client.get(handle, |_, _| {}).unwrap() == big);
    let after = client.stats().unwrap();
    assert!(stat(&after, "keystreams_ahead") >= before + 30, "{after}");
}

/// A long evaluation does not hold up other clients' reads (kernel/node/src/net/busy.rs):
/// while one client's EVAL runs a task that loops until the node's time budget stops it,
/// another client connects and downloads a 1 MiB object, and uploads another. On one CPU, the
/// task runs on the CPU that serves: what a busy node cannot do then (storing the upload,
/// STATS) waits for the task. With two, the task runs on the other CPU and the node serves
/// everything meanwhile (docs/PROTOCOL.md, "Busy nodes").
#[test]
fn a_node_answers_reads_while_it_evaluates() {
    answers_while_it_evaluates(1);
    answers_while_it_evaluates(2);
}

fn answers_while_it_evaluates(cpus: u32) {
    // With two CPUs the boot CPU runs no task: otherwise, when the other CPU is slow to wake,
    // the boot CPU takes the queued task itself after 200 us and serves only reads meanwhile.
    let config = NodeConfig { log_level: LogLevel::Info, boot_cpu_tasks: cpus == 1, ..NodeConfig::default() };
    let (_node, address) =
        cairn_tests::serving_node_with(NodeOptions { cpus, config, ..NodeOptions::default() });
    let mut setup = Client::connect(&address).unwrap();
    let hostile = std::fs::read(env!("CARGO_BIN_FILE_CAIRN_TASKS_hostile")).unwrap();
    let procedure = Handle::blob(&hostile);
    setup.put(procedure, &hostile, |_| {}).unwrap();
    let thunk_bytes =
        cairn_object::thunk::encode(Limits::new(1 << 20).unwrap(), procedure, &[Handle::blob(b"loop")])
            .unwrap();
    let looping = cairn_object::store::name(Kind::Thunk, &thunk_bytes).unwrap();
    setup.put(looping, &thunk_bytes, |_| {}).unwrap();
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2246822519) >> 7) as u8).collect();
    let big_handle = Handle::blob(&big);
    setup.put(big_handle, &big, |_| {}).unwrap();

    let evaluating = {
        let address = address.clone();
        std::thread::spawn(move || {
            let outcome =
                Client::connect(&address).unwrap().eval(looping).map(|e| e.result).map_err(|e| e.to_string());
            (outcome, std::time::Instant::now())
        })
    };
    // Give the EVAL time to reach the node and start its task.
    std::thread::sleep(Duration::from_millis(500));
    let mut reader = Client::connect(&address).expect("HELLO is answered while the node evaluates");
    assert_eq!(reader.missing(&[big_handle]).unwrap(), []);
    assert!(reader.get(big_handle, |_, _| {}).unwrap() == big);
    let read_done = std::time::Instant::now();
    // An upload streams in meanwhile; the object is stored once the evaluation has ended.
    let fresh: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(3266489917) >> 11) as u8).collect();
    let fresh_handle = Handle::blob(&fresh);
    reader.put(fresh_handle, &fresh, |_| {}).unwrap();
    // Sent while the node still evaluates: on one CPU answered only after the task, so it
    // counts it (the counter moves when a task's outcome is taken); on two, at once.
    let stats = reader.stats().unwrap();
    let stats_done = std::time::Instant::now();
    let uploaded = reader.get(fresh_handle, |_, _| {}).unwrap() == fresh;

    let (outcome, eval_done) = evaluating.join().unwrap();
    let failure = outcome.expect_err("the loop runs until the budget stops it");
    assert!(failure.contains("time"), "{failure}");
    assert!(read_done < eval_done, "the download finished only after the evaluation: it was held up by it");
    assert!(uploaded, "the upload made during the evaluation");
    if cpus == 1 {
        assert!(stats.contains("tasks_run=1"), "STATS was answered before the task ended: {stats}");
    } else {
        assert!(stats.contains("tasks_run=0"), "STATS waited for the task on the other CPU: {stats}");
        assert!(stats_done < eval_done, "STATS waited for the evaluation");
    }
}
