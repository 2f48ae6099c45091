//! The node API over a real network path (host TCP → QEMU hostfwd → virtio-net → smoltcp):
//! objects up and down with their names checked, evaluation, stats, and clients that misbehave
//! while others are served (docs/PROTOCOL.md).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use cairn_boot::Firmware;
use cairn_bootcfg::{LogLevel, Mode, NodeConfig};
use cairn_object::{Handle, Kind, Limits};
use cairn_proto::{Message, decode};
use cairn_tests::{BOOT_TIMEOUT, Node, READY_LINE};
use cairn_tools::client::Client;
use cairn_tools::qemu::NodeOptions;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serving_node() -> (Node, String) {
    let port = free_port();
    let mut node = Node::boot_with(NodeOptions {
        firmware: Firmware::Bios,
        config: NodeConfig { mode: Mode::Serve, log_level: LogLevel::Info, ip: None },
        api_port: Some(port),
        ..NodeOptions::default()
    });
    node.expect(READY_LINE, BOOT_TIMEOUT);
    node.expect(r"^cairn: net ip=10\.0\.2\.15/24 ", BOOT_TIMEOUT);
    (node, format!("127.0.0.1:{port}"))
}

fn raw_exchange(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
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
    let mut loris = TcpStream::connect(&address).unwrap();
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
    assert!(stats.lines().any(|l| l == "memo_hits=1"), "{stats}");

    // Garbage and an oversized frame each get an error and a close.
    let reply = raw_exchange(&address, b"GET / HTTP/1.1\r\n\r\n");
    let (frame, _) = decode(&reply).unwrap().expect("an error frame");
    assert!(matches!(frame.message, Message::Error { code: cairn_proto::ErrorCode::BadFrame, .. }), "{frame:?}");
    let reply = raw_exchange(&address, &u32::MAX.to_le_bytes());
    let (frame, _) = decode(&reply).unwrap().expect("an error frame");
    assert!(matches!(&frame.message, Message::Error { message, .. } if message.contains("frame length")), "{frame:?}");

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
            ip: Some(cairn_bootcfg::StaticIp { address: [10, 0, 2, 15], prefix: 24, gateway: Some([10, 0, 2, 2]) }),
        },
        api_port: Some(port),
        ..NodeOptions::default()
    });
    node.expect(r"^cairn: net ip=10\.0\.2\.15/24 gateway=10\.0\.2\.2 static api_port=7070$", BOOT_TIMEOUT);
    let stats = Client::connect(&format!("127.0.0.1:{port}")).unwrap().stats().unwrap();
    assert!(stats.contains("objects="), "{stats}");
}
