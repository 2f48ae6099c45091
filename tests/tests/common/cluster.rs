//! A three-node cluster for a test, and the jobs the cluster tests run on it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use cairn_object::Handle;
use cairn_tools::client::Client;
use cairn_tools::cluster::lifecycle::State;

pub fn cairn() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_FILE_CAIRN_TOOLS_cairn"));
    cmd.stdin(Stdio::null());
    cmd
}

pub fn show(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A cluster for one test; `cluster down` when dropped.
pub struct Cluster {
    pub state_path: PathBuf,
    pub state: State,
    /// What `cluster up` printed.
    pub up: String,
    stopped: bool,
    /// This cluster's turn on the machine (see [`LARGE`]); dropped last.
    _turn: Turn,
}

/// Clusters larger than this run alone: a dozen nodes beside another test's cluster overload two
/// cores, and tasks then run out their time budgets (which count wall time).
pub const LARGE: usize = 3;
static TURNS: RwLock<()> = RwLock::new(());

pub enum Turn {
    Shared(#[allow(dead_code, reason = "held for its lifetime")] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code, reason = "held for its lifetime")] RwLockWriteGuard<'static, ()>),
}

/// The machine to itself, for a test whose events are timed against its job (a kill at 0.8 s
/// must land mid-job, not before a job slowed by another test's cluster has reached the node).
#[allow(dead_code, reason = "not every test binary times its events")]
pub fn turn_alone() -> Turn {
    Turn::Alone(TURNS.write().unwrap_or_else(|e| e.into_inner()))
}

/// A turn on the machine for `nodes` nodes that a test brings up otherwise (`cairn experiment`).
pub fn turn(nodes: usize) -> Turn {
    // A test that panicked while holding its turn leaves the lock poisoned, not taken.
    if nodes > LARGE {
        Turn::Alone(TURNS.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Turn::Shared(TURNS.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Cluster {
    pub fn up(dir: &Path, extra: &[&str]) -> Cluster {
        Cluster::up_nodes(dir, 3, extra)
    }

    pub fn up_nodes(dir: &Path, nodes: usize, extra: &[&str]) -> Cluster {
        let turn = turn(nodes);
        let state_path = dir.join("cluster.json");
        let out = cairn()
            .args(["cluster", "up", "--nodes", &nodes.to_string(), "--state", state_path.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        let up = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(up.contains(&format!("cluster up: {nodes} nodes")), "{}", show(&out));
        let state = State::read(&state_path).unwrap();
        Cluster { state_path, state, up, stopped: false, _turn: turn }
    }

    pub fn eval(&self, job: &Path, extra: &[&str]) -> Output {
        cairn()
            .args(["eval", "--cluster", self.state_path.to_str().unwrap(), "--job", job.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    }

    /// The same, coordinated by this host rather than a node.
    pub fn eval_by_host(&self, job: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["--coordinator", "host"];
        args.extend_from_slice(extra);
        self.eval(job, &args)
    }

    pub fn client(&self, node: usize) -> Client {
        Client::connect(&self.state.nodes[node].api).unwrap()
    }

    /// `cluster down`; what it printed.
    pub fn down(mut self) -> String {
        self.stop()
    }

    pub fn stop(&mut self) -> String {
        self.stopped = true;
        let out =
            cairn().args(["cluster", "down", "--state", self.state_path.to_str().unwrap()]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        // `down` waits for the nodes' QEMUs.
        for node in &self.state.nodes {
            assert!(
                !Path::new(&format!("/proc/{}", node.qemu_pid)).exists()
                    || std::fs::read_to_string(format!("/proc/{}/stat", node.qemu_pid))
                        .unwrap_or_default()
                        .contains(") Z "),
                "node {} still runs after `cluster down`",
                node.index
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
    }
}

pub fn result_of(output: &Output) -> Handle {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.parse::<Handle>().ok())
        .unwrap_or_else(|| panic!("no result in:\n{}", show(output)))
}

/// Reads `moved between nodes N bytes` from the summary.
pub fn moved_bytes(output: &Output) -> u64 {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let at =
        stderr.find("moved between nodes ").unwrap_or_else(|| panic!("no summary in:\n{}", show(output)));
    stderr[at + 20..].split(' ').next().unwrap().parse().unwrap()
}

/// wordcount reduce over maps of CHUNKS chunks of about 96 KiB each, as files beside the job.
pub fn wordcount_job(dir: &Path, chunks: usize) -> PathBuf {
    let words = ["cairn", "stone", "path", "summit", "trail", "marker", "ridge", "valley", "mist", "granite"];
    let mut maps = Vec::new();
    for c in 0..chunks {
        let mut text = String::new();
        let mut state = 0x2545_f491_4f6c_dd1du64 ^ c as u64;
        while text.len() < 96 * 1024 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push_str(words[(state % words.len() as u64) as usize]);
            text.push(if state % 11 == 0 { '\n' } else { ' ' });
        }
        let file = dir.join(format!("chunk{c}.txt"));
        std::fs::write(&file, text).unwrap();
        maps.push(format!(
            "{{ task = \"{}\", args = [{{ text = \"map\" }}, \"{}\"] }}",
            env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount"),
            file.display()
        ));
    }
    let job = dir.join("wordcount.toml");
    std::fs::write(
        &job,
        format!(
            "[root]\ntask = \"{}\"\nargs = [{{ text = \"reduce\" }}, {}]\n",
            env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount"),
            maps.join(", ")
        ),
    )
    .unwrap();
    job
}

/// A Mandelbrot image in `tiles` x 4 tiles of 64 x 64.
pub fn mandelbrot_job(dir: &Path, columns: u32) -> PathBuf {
    let elf = env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot");
    let (w, h) = (64 * columns, 256);
    let mut tiles = Vec::new();
    for y in (0..h).step_by(64) {
        for x in (0..w).step_by(64) {
            tiles.push(format!("{{ task = \"{elf}\", memory_mib = 2, args = [{{ text = \"tile\" }}, {{ u32s = [{w}, {h}, {x}, {y}, 64, 64, 300] }}] }}"));
        }
    }
    let job = dir.join("mandelbrot.toml");
    std::fs::write(&job, format!("[root]\ntask = \"{elf}\"\nmemory_mib = 8\nargs = [{{ text = \"image\" }}, {{ u32s = [{w}, {h}, 64, 64] }}, {}]\n", tiles.join(", "))).unwrap();
    job
}
