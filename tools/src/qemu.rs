//! Booting a node in QEMU and reading its serial console line by line.
//!
//! A [`Vm`] owns its QEMU process and the files it boots from. Dropping it, the process
//! receiving SIGINT/SIGTERM ([`install_signal_handler`]) or the process dying outright
//! (PR_SET_PDEATHSIG) all stop QEMU: the tools never leave one behind.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_boot::Firmware;
use cairn_bootcfg::{Mode, NodeConfig, NodeKeys};
use cairn_channel::PublicKey;

use crate::keys;

use crate::host;

/// QEMU exits with `(value << 1) | 1` when the guest writes `value` to isa-debug-exit; the
/// kernel writes 0x10 for success and 0x11 for failure (kernel/node/src/drivers/qemu_exit.rs).
const EXIT_SUCCESS: i32 = (0x10 << 1) | 1;
const EXIT_FAILURE: i32 = (0x11 << 1) | 1;
/// Console bytes taken as one line at most: a node that never ends a line still cannot make the
/// reader hold more than this. A longer line arrives in pieces.
const MAX_LINE: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accel {
    #[default]
    Tcg,
    /// TCG on one host thread with guest time counted in instructions (1 ns each): a run's
    /// guest-side times depend on the code it runs, not on the host's load. For comparing code
    /// paths on a noisy host; the vCPUs take turns, so it shows no parallel speed-up.
    TcgIcount,
    Kvm,
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "tcg-icount" => Ok(Accel::TcgIcount),
            "kvm" => Ok(Accel::Kvm),
            _ => Err(format!("unknown accelerator `{s}` (expected tcg, tcg-icount or kvm)")),
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Tcg => "tcg",
            Accel::TcgIcount => "tcg-icount",
            Accel::Kvm => "kvm",
        })
    }
}

#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub firmware: Firmware,
    pub accel: Accel,
    pub memory_mib: u32,
    /// Virtual CPUs: every one runs tasks (docs/ARCHITECTURE.md, "CPUs").
    pub cpus: u32,
    pub config: NodeConfig,
    /// Boot with these configuration bytes instead of `config` (tests of bad configurations).
    pub raw_config: Option<Vec<u8>>,
    /// Forward the node API (guest port 7070) to this port on 127.0.0.1.
    pub api_port: Option<u16>,
    /// A second network card on the cluster's virtual L2 (docs/CLUSTER.md).
    pub cluster_link: Option<ClusterLink>,
    /// A serving node's keys (handed over in fw_cfg, never in the image); None: a fresh node key
    /// that serves this user's client key, with no peers.
    pub keys: Option<NodeKeys>,
    /// Boot a serving node without any keys (tests of a node that must refuse to serve).
    pub no_keys: bool,
    /// A disk for the node's store (docs/STORE.md), raw or qcow2 by its name; made if missing.
    pub disk: Option<StoreDisk>,
    /// Instead of `disk`: the store's disk served over NBD (the crash tests' power-cut disk).
    pub nbd_disk: Option<NbdDisk>,
    /// The store's disk offers no FLUSH (QEMU's `write-cache=off,config-wce=off`): a device whose writes
    /// could not be made durable (tests of the node that must refuse it).
    pub disk_cannot_flush: bool,
}

/// A node's store disk: the file, and the size it is made with when it does not exist yet.
#[derive(Clone, Debug)]
pub struct StoreDisk {
    pub path: std::path::PathBuf,
    pub size: u64,
}

impl StoreDisk {
    /// Default size of a new store disk.
    pub const DEFAULT_SIZE: u64 = 4 << 30;

    fn qcow2(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "qcow2")
    }

    /// Makes the file if it does not exist: sparse raw, or qcow2 through qemu-img.
    pub fn create_if_missing(&self) -> anyhow::Result<()> {
        if self.path.exists() {
            return Ok(());
        }
        if self.qcow2() {
            let qemu_img = host::qemu_img()?;
            let output = Command::new(&qemu_img)
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&self.path)
                .arg(self.size.to_string())
                .output()
                .with_context(|| format!("cannot run {}", qemu_img.display()))?;
            if !output.status.success() {
                bail!(
                    "qemu-img could not create {}: {}",
                    self.path.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            return Ok(());
        }
        let file = std::fs::File::create_new(&self.path)
            .with_context(|| format!("cannot create the disk {}", self.path.display()))?;
        file.set_len(self.size).with_context(|| format!("cannot size the disk {}", self.path.display()))?;
        Ok(())
    }

    /// QEMU's drive: the guest's writes reach the file's page cache at once, and its flushes
    /// reach the disk (writeback caching with FLUSH offered to the guest).
    fn drive(&self) -> String {
        let format = if self.qcow2() { "qcow2" } else { "raw" };
        let path = self.path.display().to_string().replace(',', ",,");
        format!("if=none,id=store,format={format},cache=writeback,file={path}")
    }
}

/// A node's store disk exported by an NBD server on 127.0.0.1 (the test harness's, which can
/// lose what was not flushed). QEMU keeps no cache of its own for it: a guest's write is
/// answered once the server has answered it, and a guest's flush is an NBD flush. The server
/// must advertise flushes: for one that does not, QEMU answers the guest's flushes without
/// doing anything, though the device still offers FLUSH.
#[derive(Clone, Copy, Debug)]
pub struct NbdDisk {
    pub port: u16,
}

impl NbdDisk {
    fn drive(&self) -> String {
        // Writeback: the device offers the guest FLUSH (docs/STORE.md needs it).
        format!("if=none,id=store,format=raw,cache=writeback,file=nbd://127.0.0.1:{}", self.port)
    }
}

/// A node's card on the cluster network: Ethernet frames go as UDP datagrams between
/// 127.0.0.1:`local_port` and the hub at 127.0.0.1:`hub_port`.
#[derive(Clone, Copy, Debug)]
pub struct ClusterLink {
    pub hub_port: u16,
    pub local_port: u16,
    pub mac: [u8; 6],
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            firmware: Firmware::Bios,
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 2,
            config: NodeConfig::default(),
            raw_config: None,
            api_port: None,
            cluster_link: None,
            keys: None,
            disk: None,
            nbd_disk: None,
            disk_cannot_flush: false,
            no_keys: false,
        }
    }
}

/// How a node's VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeExit {
    /// The kernel shut down with a success status.
    Success,
    /// The kernel shut down with a failure status (a failed job or test, a fatal fault).
    Failure,
    /// The machine reset or powered off without a status: with `-no-reboot` this is what a
    /// triple fault looks like.
    Reset,
    /// QEMU itself failed (bad arguments, missing firmware, no KVM): its exit code and stderr.
    QemuError { code: Option<i32>, stderr: String },
}

impl NodeExit {
    fn from_status(status: ExitStatus, stderr: String) -> NodeExit {
        match status.code() {
            Some(EXIT_SUCCESS) => NodeExit::Success,
            Some(EXIT_FAILURE) => NodeExit::Failure,
            Some(0) => NodeExit::Reset,
            code => NodeExit::QemuError { code, stderr },
        }
    }

    pub fn is_success(&self) -> bool {
        *self == NodeExit::Success
    }
}

impl fmt::Display for NodeExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeExit::Success => write!(f, "node shut down with success"),
            NodeExit::Failure => write!(f, "node shut down with a failure status"),
            NodeExit::Reset => write!(f, "node reset without a status (triple fault?)"),
            NodeExit::QemuError { code, stderr } => {
                let code = code.map_or("a signal".into(), |c| format!("code {c}"));
                let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
                write!(f, "QEMU failed with {code}: {first}")
            }
        }
    }
}

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// On SIGINT or SIGTERM, stop every QEMU this process started, then exit with 130.
pub fn install_signal_handler() {
    let result = ctrlc::set_handler(|| {
        kill_all_children();
        eprintln!("cairn: interrupted; stopped QEMU");
        std::process::exit(130);
    });
    if let Err(e) = result {
        eprintln!("cairn: warning: cannot handle Ctrl-C ({e}); QEMU still stops when cairn exits");
    }
}

/// Node key files on disk (until QEMU has read them).
static KEY_FILES: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

fn forget_key_file(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    KEY_FILES.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p != path);
}

fn kill_all_children() {
    for path in KEY_FILES.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        let _ = std::fs::remove_file(path);
    }
    let pids = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pid in pids {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet (we unregister before
        // reaping), so it cannot hit an unrelated process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// A running node.
pub struct Vm {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    started: Instant,
    exit: Option<NodeExit>,
    node_key: Option<PublicKey>,
    _dir: tempfile::TempDir,
}

impl Vm {
    /// Writes a fresh image with `opts.config` and boots it.
    pub fn boot(opts: &NodeOptions) -> anyhow::Result<Vm> {
        if opts.accel == Accel::TcgIcount && opts.config.mode == Mode::Serve {
            // An idle node's clock jumps to its next timer: its idle, peer and TCP timeouts
            // would fire after a fraction of the real time.
            bail!(
                "--accel tcg-icount is for runs that serve nothing (the default job, bench): a serving node's clock would run ahead of real time whenever it idles"
            );
        }
        let (qemu, ovmf) = host::check_for(opts.firmware)?;
        let dir = tempfile::Builder::new()
            .prefix("cairn-node-")
            .tempdir()
            .context("cannot create a temporary directory for the node image")?;
        let image = dir.path().join(format!("cairn-{}.img", opts.firmware));
        match &opts.raw_config {
            Some(raw) => cairn_boot::write_raw_image_with_config_text(opts.firmware, raw, &image)?,
            None => cairn_boot::write_raw_image(opts.firmware, &opts.config, &image)?,
        }

        let mut cmd = Command::new(&qemu);
        // The BIOS stages of the bootloader need VESA, so a VGA device stays even without a display.
        cmd.args(["-nodefaults", "-vga", "std", "-display", "none", "-no-reboot", "-serial", "stdio"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .args(["-m", &opts.memory_mib.to_string(), "-smp", &opts.cpus.to_string()]);
        match opts.accel {
            // One host thread per virtual CPU, so that the CPUs really run in parallel.
            Accel::Tcg => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
            // sleep=off: a halted node's clock jumps to its next timer rather than waiting.
            Accel::TcgIcount => cmd
                .args(["-accel", "tcg,thread=single", "-cpu", "max"])
                .args(["-icount", "shift=0,align=off,sleep=off"]),
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        };
        if let Some(ovmf) = ovmf {
            let vars = dir.path().join("OVMF_VARS.fd");
            std::fs::copy(&ovmf.vars, &vars)
                .with_context(|| format!("cannot copy {}", ovmf.vars.display()))?;
            cmd.arg("-drive").arg(pflash(&ovmf.code, true)).arg("-drive").arg(pflash(&vars, false));
        }
        cmd.arg("-drive").arg(format!("format=raw,file={}", image.display()));
        let mut keys_file = None;
        let node_key = if opts.config.mode == Mode::Serve && !opts.no_keys {
            let keys = match &opts.keys {
                Some(keys) => keys.clone(),
                None => keys::keys_for_node(Vec::new())?,
            };
            // In the node's private directory, read by QEMU as it starts: deleted as soon as the
            // node prints its first line, on Ctrl-C or SIGTERM, and with the directory.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
            let path = dir.path().join("node.keys");
            KEY_FILES.lock().unwrap_or_else(|e| e.into_inner()).push(path.clone());
            keys::write_node_keys(&path, &keys)?;
            cmd.arg("-fw_cfg").arg(format!("name={},file={}", cairn_bootcfg::FW_CFG_NAME, path.display()));
            keys_file = Some(path);
            Some(keys.secret.public())
        } else {
            None
        };
        // The host's entropy for the node's pool, beside the CPU's (docs/SECURITY.md).
        cmd.args(["-device", "virtio-rng-pci"]);
        let drive = match (&opts.disk, &opts.nbd_disk) {
            (Some(_), Some(_)) => bail!("a node has one store disk: a file or an NBD export, not both"),
            (Some(disk), None) => {
                disk.create_if_missing()?;
                Some(disk.drive())
            }
            (None, Some(nbd)) => Some(nbd.drive()),
            (None, None) => None,
        };
        if let Some(drive) = drive {
            let device = if opts.disk_cannot_flush {
                "virtio-blk-pci,drive=store,write-cache=off,config-wce=off"
            } else {
                "virtio-blk-pci,drive=store"
            };
            cmd.arg("-drive").arg(drive).args(["-device", device]);
        }
        // User-mode networking: the node reaches the host at 10.0.2.2 and gets 10.0.2.15 by DHCP.
        let netdev = match opts.api_port {
            Some(port) => format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:7070"),
            None => "user,id=net0".to_string(),
        };
        cmd.args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"]);
        if let Some(link) = opts.cluster_link {
            // Second on the PCI bus, so the kernel finds it as card 1.
            let mac = link.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            cmd.args([
                "-netdev",
                &format!(
                    "socket,id=net1,udp=127.0.0.1:{},localaddr=127.0.0.1:{}",
                    link.hub_port, link.local_port
                ),
                "-device",
                &format!("virtio-net-pci,netdev=net1,mac={mac}"),
            ]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the
        // parent; it makes the kernel kill QEMU if cairn dies without running any cleanup.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", qemu.display()))?;
        CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(child.id());

        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        // The guest runs, so QEMU has read the keys: they leave the disk.
                        if let Some(path) = keys_file.take() {
                            forget_key_file(&path);
                        }
                        let line = console_text(&buf);
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = err_pipe.read_to_string(&mut text);
            sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&text);
        });
        if let (Some(port), Some(key)) = (opts.api_port, node_key) {
            keys::remember_node(&format!("127.0.0.1:{port}"), &key)?;
        }
        Ok(Vm { child, lines, stderr, started: Instant::now(), exit: None, node_key, _dir: dir })
    }

    /// A serving node's public key.
    pub fn node_key(&self) -> Option<PublicKey> {
        self.node_key
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The next console line; `Ok(None)` once the console has closed (QEMU exited), an error
    /// if nothing arrives before `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> anyhow::Result<Option<String>> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                bail!("the node printed nothing more for {:.0?}", timeout)
            }
        }
    }

    /// Waits for QEMU to exit, and says how the node ended. Console lines not yet read are lost.
    pub fn wait(&mut self, deadline: Instant) -> anyhow::Result<NodeExit> {
        if let Some(exit) = &self.exit {
            return Ok(exit.clone());
        }
        loop {
            if let Some(status) = self.child.try_wait().context("cannot wait for QEMU")? {
                self.unregister();
                // The stderr reader finishes as soon as the pipe closes.
                thread::sleep(Duration::from_millis(20));
                let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let exit = NodeExit::from_status(status, stderr);
                self.exit = Some(exit.clone());
                return Ok(exit);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("the node did not shut down in time; QEMU was stopped");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops QEMU now: SIGKILL (std's `Child::kill`), so no write QEMU has not made yet is made.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.unregister();
            self.exit = Some(NodeExit::QemuError { code: None, stderr: "killed by cairn".into() });
        }
    }

    fn unregister(&self) {
        let id = self.child.id();
        CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).retain(|&p| p != id);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pflash(path: &std::path::Path, readonly: bool) -> String {
    let ro = if readonly { ",readonly=on" } else { "" };
    format!("if=pflash,format=raw{ro},file={}", path.display())
}

/// Writes a bootable image for `firmware`, converting it to qcow2 with qemu-img if asked.
pub fn write_image(
    firmware: Firmware,
    config: &NodeConfig,
    qcow2: bool,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    if !qcow2 {
        return cairn_boot::write_raw_image(firmware, config, out);
    }
    let qemu_img = host::qemu_img()?;
    let raw = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
    cairn_boot::write_raw_image(firmware, config, raw.path())?;
    let output = Command::new(&qemu_img)
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw.path())
        .arg(out)
        .output()
        .with_context(|| format!("cannot run {}", qemu_img.display()))?;
    if !output.status.success() {
        bail!(
            "qemu-img could not convert the image to qcow2: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A console line as text: without the line ending, carriage returns, or the terminal control
/// sequences that firmware (OVMF) prints to clear the screen.
pub fn console_text(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters... final byte in @..~
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_text_strips_line_endings_and_terminal_controls() {
        assert_eq!(console_text(b"cairn: ready boot_ms=3\r\n"), "cairn: ready boot_ms=3");
        assert_eq!(console_text(b"\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: loading\n"), "BdsDxe: loading");
        assert_eq!(console_text(b"bad \xff byte\n"), "bad \u{fffd} byte");
    }

    #[test]
    fn accelerators_parse_from_what_they_show() {
        // `cairn cluster up` hands its daemon `--accel` as shown here.
        for accel in [Accel::Tcg, Accel::TcgIcount, Accel::Kvm] {
            assert_eq!(accel.to_string().parse::<Accel>(), Ok(accel));
        }
        assert_eq!("tcg-icount".parse::<Accel>(), Ok(Accel::TcgIcount));
        assert!("icount".parse::<Accel>().unwrap_err().contains("tcg, tcg-icount or kvm"));
    }

    #[test]
    fn exit_codes_map_to_node_exits() {
        use std::os::unix::process::ExitStatusExt;
        let status = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(NodeExit::from_status(status(33), String::new()), NodeExit::Success);
        assert_eq!(NodeExit::from_status(status(35), String::new()), NodeExit::Failure);
        assert_eq!(NodeExit::from_status(status(0), String::new()), NodeExit::Reset);
        let err = NodeExit::from_status(status(1), "\nqemu: could not open disk\n".into());
        assert_eq!(err.to_string(), "QEMU failed with code 1: qemu: could not open disk");
    }
}
