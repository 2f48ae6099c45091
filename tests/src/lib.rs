//! The QEMU test harness: boot a node, wait for console lines that match patterns, check how it
//! exits. Failures panic with the node's whole console transcript, so a red test says what the
//! node was doing.

use std::time::{Duration, Instant};

use cairn_boot::Firmware;
use cairn_bootcfg::{LogLevel, Mode, NodeConfig};
use cairn_tools::qemu::{NodeExit, NodeOptions, Vm};
use regex::{Captures, Regex};

pub mod nbd;
pub mod pinned;

/// Generous for TCG on a loaded 2-core CI machine; a healthy BIOS boot takes about 2 s.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Node {
    vm: Vm,
    transcript: Vec<String>,
}

impl Node {
    pub fn boot(firmware: Firmware, mode: Mode) -> Node {
        let config = NodeConfig { mode, log_level: LogLevel::Info, ..NodeConfig::default() };
        Node::boot_with(NodeOptions { firmware, config, ..NodeOptions::default() })
    }

    pub fn boot_with(opts: NodeOptions) -> Node {
        match Vm::boot(&opts) {
            Ok(vm) => Node { vm, transcript: Vec::new() },
            Err(e) => panic!("cannot boot a node: {e:#}"),
        }
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Kills QEMU at once with SIGKILL, as a crash would: nothing in the guest runs after it.
    /// (Dropping the node does the same.)
    pub fn kill(&mut self) {
        self.vm.kill();
    }

    /// Reads console lines until one matches `pattern` and returns its captures.
    pub fn expect(&mut self, pattern: &str, timeout: Duration) -> Captures<'static> {
        let re = Regex::new(pattern).expect("test pattern is a valid regex");
        let deadline = Instant::now() + timeout;
        loop {
            match self.vm.next_line(deadline) {
                Ok(Some(line)) => {
                    self.transcript.push(line.clone());
                    // Leaking the matched line lets callers keep the captures; tests are short.
                    let line: &'static str = Box::leak(line.into_boxed_str());
                    if let Some(caps) = re.captures(line) {
                        return caps;
                    }
                }
                Ok(None) => {
                    // How QEMU ended says whether the guest stopped (a status, a triple fault)
                    // or QEMU itself failed (its stderr).
                    let exit = match self.vm.wait(Instant::now() + Duration::from_secs(5)) {
                        Ok(NodeExit::QemuError { code, stderr }) => {
                            format!("QEMU exited with code {code:?}; its stderr:\n{stderr}")
                        }
                        Ok(exit) => exit.to_string(),
                        Err(e) => format!("{e:#}"),
                    };
                    self.fail(&format!("console closed before a line matched /{pattern}/: {exit}"))
                }
                Err(e) => self.fail(&format!("waiting for /{pattern}/: {e:#}")),
            }
        }
    }

    /// Reads the rest of the console and waits for the VM to end.
    pub fn finish(&mut self, timeout: Duration) -> NodeExit {
        let deadline = Instant::now() + timeout;
        loop {
            match self.vm.next_line(deadline) {
                Ok(Some(line)) => self.transcript.push(line),
                Ok(None) => break,
                Err(e) => self.fail(&format!("waiting for the node to shut down: {e:#}")),
            }
        }
        match self.vm.wait(deadline) {
            Ok(exit) => exit,
            Err(e) => self.fail(&format!("{e:#}")),
        }
    }

    /// Everything the node printed so far.
    pub fn transcript(&self) -> &[String] {
        &self.transcript
    }

    pub fn fail(&self, why: &str) -> ! {
        panic!("{why}\n--- node console ---\n{}\n--- end ---", self.transcript.join("\n"));
    }
}

/// The ready line every node prints once it is up (docs/ARCHITECTURE.md, "Console").
pub const READY_LINE: &str = r"^cairn: ready boot_ms=(\d+) mem_mib=(\d+)";

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Boots a BIOS node serving the node API (its other settings from `config`), waits for its
/// address, and returns it with the API's host address.
/// Boots a node in `task-checks` mode with `opts` and returns its `task-check NAME: OUTCOME`
/// lines by name, once it has shut down with success.
pub fn task_checks(opts: NodeOptions) -> std::collections::BTreeMap<String, String> {
    let mut node = Node::boot_with(NodeOptions {
        config: NodeConfig { mode: Mode::TaskChecks, log_level: LogLevel::Info, ..opts.config },
        ..opts
    });
    node.expect(r"^task-check done: ", BOOT_TIMEOUT * 3);
    let exit = node.finish(BOOT_TIMEOUT);
    assert_eq!(exit, NodeExit::Success, "{:?}", node.transcript());
    node.transcript()
        .iter()
        .filter_map(|l| l.strip_prefix("task-check "))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn serving_node(config: NodeConfig) -> (Node, String) {
    serving_node_with(NodeOptions { config, ..NodeOptions::default() })
}

/// A serving node booted with `opts` (its mode set to serve and its API forwarded), and the
/// API's address.
pub fn serving_node_with(opts: NodeOptions) -> (Node, String) {
    let port = free_port();
    let mut node = Node::boot_with(NodeOptions {
        config: NodeConfig { mode: Mode::Serve, ..opts.config },
        api_port: Some(port),
        ..opts
    });
    node.expect(READY_LINE, BOOT_TIMEOUT);
    node.expect(r"^cairn: net ip=10\.0\.2\.15/24 ", BOOT_TIMEOUT);
    (node, format!("127.0.0.1:{port}"))
}

/// The value of `key` in a node's STATS answer (`key=value` lines); panics, naming the key and
/// showing the answer, if it is not there.
pub fn stat(stats: &str, key: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {stats}"))
}

/// A thunk applying `procedure` to `args` with `memory` bytes, added to `objects` (to upload)
/// as its handle and encoding.
pub fn thunk(
    procedure: cairn_object::Handle,
    args: &[cairn_object::Handle],
    memory: u64,
    objects: &mut Vec<(cairn_object::Handle, Vec<u8>)>,
) -> cairn_object::Handle {
    let limits = cairn_object::Limits::new(memory).expect("a test's memory limit is whole pages");
    let bytes = cairn_object::thunk::encode(limits, procedure, args).expect("a test's thunk encodes");
    let handle = cairn_object::store::name(cairn_object::Kind::Thunk, &bytes).expect("a valid thunk");
    objects.push((handle, bytes));
    handle
}
