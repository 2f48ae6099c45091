//! One image, many nodes (docs/CLOUD.md): the same UEFI image booted twice in plain QEMU with
//! OVMF (no `cairn` runner: no fw_cfg keys, no configuration in the image but `mode = serve`),
//! each with its own configuration disk; both come up with their own addresses, keys and peers
//! and work as a cluster.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster::{cairn, result_of, show, wordcount_job};

/// A QEMU this test started; killed when dropped.
struct Qemu {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// Console lines until one holds `prefix` (120 s at most); all of them.
    fn until(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.contains(prefix) {
                        return seen;
                    }
                }
                Err(_) => panic!("no `{prefix}` line; the console said:\n{seen}"),
            }
        }
    }
}

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Boots `image` as QEMU alone would: OVMF, the image, a configuration disk, the API forwarded
/// to `api`, and a point-to-point cluster link from UDP port `mine` to `theirs`.
fn boot(dir: &Path, index: usize, image: &Path, config: &Path, api: u16, link: (u16, u16)) -> Qemu {
    let config = format!("if=none,id=config,format=raw,readonly=on,file={}", config.display());
    boot_with(
        dir,
        index,
        image,
        &["-drive", &config, "-device", "virtio-blk-pci,drive=config"],
        "",
        api,
        link,
    )
}

/// [`boot`] with `devices` instead of a configuration disk, and `user` added to the first
/// card's user networking options.
fn boot_with(
    dir: &Path,
    index: usize,
    image: &Path,
    devices: &[&str],
    user: &str,
    api: u16,
    (mine, theirs): (u16, u16),
) -> Qemu {
    let qemu = cairn_hostsetup::locate_qemu().unwrap().expect("QEMU (cairn setup installs it)");
    let ovmf = cairn_hostsetup::locate_ovmf().unwrap().expect("OVMF (cairn setup installs it)");
    let vars = dir.join(format!("vars-{index}.fd"));
    std::fs::copy(&ovmf.vars, &vars).unwrap();
    let mut cmd = Command::new(qemu);
    cmd.args(["-nodefaults", "-vga", "std", "-display", "none", "-no-reboot", "-serial", "stdio"])
        .args(["-m", "512", "-smp", "2", "-accel", "tcg,thread=multi", "-cpu", "max"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={}", ovmf.code.display()))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        // The one image, shared: each QEMU writes (if at all) to its own overlay.
        .arg("-drive")
        .arg(format!("format=raw,snapshot=on,file={}", image.display()))
        .args(devices)
        .args(["-device", "virtio-rng-pci"])
        .args(["-netdev", &format!("user,id=net0,hostfwd=tcp:127.0.0.1:{api}-:7070{user}")])
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .args(["-netdev", &format!("socket,id=net1,udp=127.0.0.1:{theirs},localaddr=127.0.0.1:{mine}")])
        .args(["-device", &format!("virtio-net-pci,netdev=net1,mac=52:54:00:c1:00:0{}", index + 1)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut raw = Vec::new();
        // Firmware (OVMF) output carries terminal control sequences: the lines as text.
        while reader.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            if tx.send(cairn_tools::qemu::console_text(&raw)).is_err() {
                break;
            }
            raw.clear();
        }
    });
    Qemu { child, lines }
}

/// `cairn ARGS` with its keys in `home`: what it printed, once it succeeded.
fn tool(home: &Path, args: &[&str]) -> String {
    let out = cairn().env("CAIRN_CONFIG_DIR", home).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "cairn {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_image_boots_two_differently_configured_nodes_that_form_a_cluster() {
    let _turn = common::cluster::turn(2);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let tool = |args: &[&str]| tool(&home, args);
    let image = dir.path().join("cairn-uefi.img");
    tool(&["image", "--uefi", "--mode", "serve", "-o", image.to_str().unwrap()]);
    let (api0, api1) = (free_tcp(), free_tcp());
    let disks = dir.path().join("disks");
    let planned = tool(&[
        "config-disk",
        "--nodes",
        "2",
        "--out-dir",
        disks.to_str().unwrap(),
        "--api",
        &format!("127.0.0.1:{api0}"),
        "--api",
        &format!("127.0.0.1:{api1}"),
    ]);
    // `node I  cluster IP  key KEY  PATH`: each node's key, to find in its console.
    let keys: Vec<String> = planned
        .lines()
        .filter(|l| l.starts_with("node "))
        .map(|l| l.split("key ").nth(1).unwrap().split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 2, "{planned}");
    assert_ne!(keys[0], keys[1]);
    let (udp0, udp1) = (free_udp(), free_udp());
    let nodes = [
        boot(dir.path(), 0, &image, &disks.join("node-0.img"), api0, (udp0, udp1)),
        boot(dir.path(), 1, &image, &disks.join("node-1.img"), api1, (udp1, udp0)),
    ];
    for (i, node) in nodes.iter().enumerate() {
        let console = node.until("cairn: cluster ip=");
        assert!(console.contains("cairn: config from image + config disk"), "node {i}:\n{console}");
        assert!(
            console.contains(&format!("cairn: keys node={} clients=1 peers=1", keys[i])),
            "node {i}:\n{console}"
        );
        assert!(
            console.contains(&format!("cairn: cluster ip=10.1.0.{}/24 peers=1", i + 1)),
            "node {i}:\n{console}"
        );
    }
    // Each answers as itself (the client checks the key it was told), with its own peers.
    for (i, api) in [api0, api1].iter().enumerate() {
        let stats = tool(&["stats", "--node", &format!("127.0.0.1:{api}")]);
        assert!(stats.contains(&format!("cluster_ip=10.1.0.{}", i + 1)), "{stats}");
        assert!(stats.contains(&format!("peers=10.1.0.{}", 2 - i)), "{stats}");
    }
    // And they work as a cluster: a job handed to node 0, its data spread, runs on both.
    let job = wordcount_job(dir.path(), 4);
    let state = disks.join("cluster.json");
    let out = cairn()
        .env("CAIRN_CONFIG_DIR", &home)
        .args(["eval", "--cluster", state.to_str().unwrap(), "--job", job.to_str().unwrap(), "--spread"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("node 0: ") && summary.contains("node 1: "), "both ran tasks: {}", show(&out));
    assert!(!summary.contains("lost"), "{}", show(&out));
    let by_host = cairn()
        .env("CAIRN_CONFIG_DIR", &home)
        .args([
            "eval",
            "--cluster",
            state.to_str().unwrap(),
            "--job",
            job.to_str().unwrap(),
            "--coordinator",
            "host",
        ])
        .output()
        .unwrap();
    assert_eq!(result_of(&out), result_of(&by_host), "{}", show(&by_host));
}

/// A configuration disk that is there but wrong stops the node with one line naming it: it
/// never runs half configured.
#[test]
fn a_bad_configuration_disk_stops_the_node_with_a_line_naming_it() {
    let _turn = common::cluster::turn(1);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("cairn-uefi.img");
    let out = cairn().args(["image", "--uefi", "-o", image.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let config = dir.path().join("bad.img");
    let mut text = b"# cairn config-2\nmode = serve\npeers = 10.1.0.300\n".to_vec();
    text.resize(1 << 20, 0);
    std::fs::write(&config, text).unwrap();
    let node = boot(dir.path(), 0, &image, &config, free_tcp(), (free_udp(), free_udp()));
    let console = node.until("cairn: bad node configuration");
    let line = console.lines().last().unwrap();
    assert!(line.contains("config disk") && line.contains("line 3") && line.contains("peers"), "{console}");
    assert!(!console.contains("cairn: ready"), "{console}");
}

/// An empty disk (a file of no bytes) before the configuration disk: it holds no
/// configuration (the driver cannot read nothing: the node panicked at boot), the configuration
/// is found on the second disk, and the empty one is taken for the store, which it cannot be.
#[test]
fn an_empty_disk_beside_the_configuration_disk_is_no_configuration() {
    let _turn = common::cluster::turn(1);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("cairn-uefi.img");
    let out = cairn().args(["image", "--uefi", "-o", image.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let config = dir.path().join("config.img");
    let key = "11".repeat(32);
    let mut text = format!("# cairn config-2\nmode = serve\n[keys]\nnode_key = {key}\n").into_bytes();
    text.resize(1 << 20, 0);
    std::fs::write(&config, text).unwrap();
    let empty = format!("if=none,id=empty,format=raw,file={}", empty.display());
    let config = format!("if=none,id=config,format=raw,readonly=on,file={}", config.display());
    let devices = [
        "-drive",
        &empty,
        "-device",
        "virtio-blk-pci,drive=empty",
        "-drive",
        &config,
        "-device",
        "virtio-blk-pci,drive=config",
    ];
    let node = boot_with(dir.path(), 0, &image, &devices, "", free_tcp(), (free_udp(), free_udp()));
    let console = node.until("cairn: api off");
    assert!(console.contains("cairn: config from image + config disk"), "{console}");
    assert!(!console.contains("panic"), "{console}");
    // The store's disk is the empty one (the first that is not the configuration's).
    let line = console.lines().last().unwrap();
    assert!(line.contains("the store's disk") && !line.contains("read-only"), "{console}");
}

/// On GCE the node asks the metadata server (169.254.169.254, with `Metadata-Flavor: Google`)
/// for its configuration. Here QEMU's user network is laid over 169.254.169.0/24 and its
/// `guestfwd` answers for that address from a file on this host: nothing goes to a real
/// metadata server.
#[test]
fn a_gce_image_takes_its_configuration_from_the_metadata_server() {
    let _turn = common::cluster::turn(1);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let tool = |args: &[&str]| tool(&home, args);
    // The image GCE would import, unpacked.
    let tarball = dir.path().join("cairn-gce.tar.gz");
    tool(&["image", "--cloud", "gce", "-o", tarball.to_str().unwrap()]);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&tarball).unwrap()));
    archive.unpack(dir.path()).unwrap();
    let image = dir.path().join("disk.raw");
    // The configuration GCE would hold as the instance attribute `cairn-config`.
    let api = free_tcp();
    let disks = dir.path().join("disks");
    let planned =
        tool(&["config-disk", "--out-dir", disks.to_str().unwrap(), "--api", &format!("127.0.0.1:{api}")]);
    let key = planned.split("key ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let disk = std::fs::read(disks.join("node-0.img")).unwrap();
    let text = cairn_bootcfg::external::on_disk(&disk).unwrap();
    let mut response = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", text.len()).into_bytes();
    response.extend_from_slice(text);
    std::fs::write(dir.path().join("response"), response).unwrap();
    // The server: what the guest asked goes to `request`, the response back.
    let serve = format!(
        ",net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15,guestfwd=tcp:169.254.169.254:80-cmd:sh -c 'cat > {0}/request; cat {0}/response'",
        dir.path().display()
    );
    let node = boot_with(dir.path(), 0, &image, &[], &serve, api, (free_udp(), free_udp()));
    let console = node.until("cairn: cluster ip=");
    assert!(console.contains("cairn: config from GCE metadata (169.254.169.254) too"), "{console}");
    assert!(console.contains(&format!("cairn: keys node={key} clients=1 peers=0")), "{console}");
    let request = std::fs::read_to_string(dir.path().join("request")).unwrap();
    assert!(
        request.contains("GET /computeMetadata/v1/instance/attributes/cairn-config HTTP/1.0\r\n"),
        "{request}"
    );
    assert!(request.contains("\r\nMetadata-Flavor: Google\r\n"), "{request}");
    let stats = tool(&["stats", "--node", &format!("127.0.0.1:{api}")]);
    assert!(stats.contains("cluster_ip=10.1.0.1"), "{stats}");
    // A job may not ask the metadata server what the node asked it: its attribute holds the
    // node's private key (and GCE's server the instance's credentials).
    let secret = std::str::from_utf8(text)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("node_key = "))
        .unwrap()
        .to_string();
    let job = dir.path().join("metadata.toml");
    std::fs::write(
        &job,
        "[capabilities]\ntcp_request = [\"169.254.169.254:80\"]\n\n[root]\ntcp_request = \"169.254.169.254:80\"\ndata = { text = \"GET /computeMetadata/v1/instance/attributes/cairn-config HTTP/1.0\\r\\nMetadata-Flavor: Google\\r\\n\\r\\n\" }\n",
    )
    .unwrap();
    let out = cairn()
        .env("CAIRN_CONFIG_DIR", &home)
        .args(["submit", "--node", &format!("127.0.0.1:{api}"), job.to_str().unwrap()])
        .output()
        .unwrap();
    // `submit` prints a value with control characters (the reply's CRs) as hex: not in either.
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        !show(&out).contains(&secret) && !show(&out).contains(&hex),
        "the node's private key reached a job: {}",
        show(&out)
    );
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    assert!(show(&out).contains("169.254.169.254:80"), "{}", show(&out));
    drop(node);

    // No metadata server: one line naming it, and no API.
    let node = boot_with(
        dir.path(),
        0,
        &image,
        &[],
        ",net=169.254.169.0/24,host=169.254.169.2",
        free_tcp(),
        (free_udp(), free_udp()),
    );
    let console = node.until("cairn: api off");
    let line = console.lines().last().unwrap();
    assert!(line.contains("GCE metadata (169.254.169.254)"), "{console}");
}
