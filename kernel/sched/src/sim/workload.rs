//! The simulated jobs: graphs of synthetic objects (handles with sizes, no bytes), and what an
//! honest node computes for each task.

use alloc::vec::Vec;

use cairn_object::{Handle, Kind, Limits};

use crate::graph::{Arg, Graph, Task};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `maps` tasks, each over its own input blob of `input_bytes`, giving `output_bytes`;
    /// then a tree of reduces, `fan_in` results each, down to one root.
    MapReduce { maps: usize, input_bytes: u64, output_bytes: u64, map_us: u64, fan_in: usize, reduce_us: u64 },
    /// A chain: each task takes the one before and a blob of its own.
    Chain { length: usize, input_bytes: u64, output_bytes: u64, task_us: u64 },
}

/// A handle of `kind` and `size` whose digest is BLAKE3 of `name`: an object the simulation
/// never needs the bytes of.
pub(crate) fn synthetic(kind: Kind, size: u64, name: &[u8]) -> Handle {
    let mut h = [0u8; Handle::LEN];
    h[0] = kind as u8;
    let size = size.clamp(33, (1 << 48) - 1);
    h[2..8].copy_from_slice(&size.to_le_bytes()[..6]);
    h[8..].copy_from_slice(blake3::hash(name).as_bytes());
    Handle::from_bytes(&h).expect("a digest-form handle of at least 33 bytes")
}

fn numbered(what: &[u8], i: u64) -> Vec<u8> {
    let mut name = what.to_vec();
    name.extend_from_slice(&i.to_le_bytes());
    name
}

/// A job's graph, its objects (the coordinator's to upload), and each task's duration.
pub(crate) struct Job {
    pub graph: Graph,
    pub objects: Vec<Handle>,
    pub durations: Vec<u64>,
    pub output_bytes: Vec<u64>,
}

impl Workload {
    pub(crate) fn job(&self) -> Job {
        let procedure = synthetic(Kind::Blob, 64 << 10, b"procedure");
        let limits = Limits::new(64 << 20).expect("a valid limit");
        let mut tasks = Vec::new();
        let mut objects = alloc::vec![procedure];
        let (mut durations, mut output_bytes) = (Vec::new(), Vec::new());
        let mut task = |args: Vec<Arg>, us: u64, out: u64, tasks: &mut Vec<Task>| {
            let written =
                synthetic(Kind::Thunk, 64 + 40 * args.len() as u64, &numbered(b"thunk", tasks.len() as u64));
            tasks.push(Task { written, limits, procedure, args });
            durations.push(us);
            output_bytes.push(out);
            tasks.len() - 1
        };
        let root = match *self {
            Workload::MapReduce { maps, input_bytes, output_bytes: out, map_us, fan_in, reduce_us } => {
                let mut level: Vec<usize> = (0..maps)
                    .map(|i| {
                        let input = synthetic(Kind::Blob, input_bytes, &numbered(b"input", i as u64));
                        objects.push(input);
                        task(alloc::vec![Arg::Value(input)], map_us, out, &mut tasks)
                    })
                    .collect();
                while level.len() > 1 {
                    level = level
                        .chunks(fan_in.max(2))
                        .map(|group| {
                            task(group.iter().map(|t| Arg::Task(*t)).collect(), reduce_us, out, &mut tasks)
                        })
                        .collect();
                }
                level.first().copied()
            }
            Workload::Chain { length, input_bytes, output_bytes: out, task_us } => {
                let mut last = None;
                for i in 0..length {
                    let input = synthetic(Kind::Blob, input_bytes, &numbered(b"input", i as u64));
                    objects.push(input);
                    let mut args = alloc::vec![Arg::Value(input)];
                    args.extend(last.map(Arg::Task));
                    last = Some(task(args, task_us, out, &mut tasks));
                }
                last
            }
        };
        let root = match root {
            Some(t) => Arg::Task(t),
            None => Arg::Value(synthetic(Kind::Blob, 33, b"nothing")),
        };
        Job { graph: Graph::from_tasks(tasks, root), objects, durations, output_bytes }
    }
}

/// What a node computes for an applied thunk: honest nodes all agree.
pub(crate) fn result_of(applied: &Handle, bytes: u64, wrong: bool) -> Handle {
    let mut name = alloc::vec::Vec::from(if wrong { &b"wrong"[..] } else { &b"result"[..] });
    name.extend_from_slice(applied.as_bytes());
    synthetic(Kind::Blob, bytes, &name)
}
