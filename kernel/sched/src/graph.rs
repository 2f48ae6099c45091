//! A job as a graph of tasks: every thunk reachable from the root through thunk arguments,
//! each once, children before parents. A thunk a task *returns* (a dynamic graph) runs where
//! its parent ran, inside that node's evaluation.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use cairn_object::{Handle, Kind, Limits, Thunk};

/// Thunks nested deeper than this inside arguments are refused.
pub const MAX_DEPTH: usize = 10_000;

/// An argument: a value, or the value of another task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    Value(Handle),
    Task(usize),
}

#[derive(Clone, Debug)]
pub struct Task {
    /// The thunk as written.
    pub written: Handle,
    pub limits: Limits,
    pub procedure: Handle,
    pub args: Vec<Arg>,
}

#[derive(Debug)]
pub struct Graph {
    pub tasks: Vec<Task>,
    pub root: Arg,
    /// For each task, the tasks that take its value as an argument.
    dependents: Vec<Vec<usize>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphError {
    Missing(Handle),
    Malformed(Handle, String),
    Io(Handle),
    TooDeep,
    TooLarge(usize),
    /// More arguments in all than the builder was allowed.
    TooWide(usize),
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::Missing(h) => write!(f, "{h} is not among the job's objects"),
            GraphError::Malformed(h, why) => write!(f, "{h} is not a thunk: {why}"),
            GraphError::Io(h) => {
                write!(f, "{h} is an IO request: run jobs with IO on one node (`cairn submit`)")
            }
            GraphError::TooDeep => write!(f, "the graph is deeper than {MAX_DEPTH} thunks"),
            GraphError::TooLarge(limit) => write!(f, "the graph has more than {limit} tasks"),
            GraphError::TooWide(limit) => {
                write!(f, "the graph's tasks have more than {limit} arguments in all")
            }
        }
    }
}

/// A thunk on the way down: its arguments so far, and the next to look at.
struct Visit {
    handle: Handle,
    limits: Limits,
    procedure: Handle,
    pending: Vec<Handle>,
    args: Vec<Arg>,
}

impl Graph {
    /// The graph under `root`, opening thunks with `open`; at most `max_tasks` tasks.
    pub fn build(
        root: Handle,
        max_tasks: usize,
        open: impl Fn(&Handle) -> Option<Vec<u8>>,
    ) -> Result<Graph, GraphError> {
        Graph::build_within(root, max_tasks, usize::MAX, open)
    }

    /// [`Graph::build`], with at most `max_args` arguments over all tasks: what the graph and
    /// a scheduler over it take grows with them (a node that coordinates bounds both).
    pub fn build_within(
        root: Handle,
        max_tasks: usize,
        max_args: usize,
        open: impl Fn(&Handle) -> Option<Vec<u8>>,
    ) -> Result<Graph, GraphError> {
        let mut args_seen = 0usize;
        let mut tasks: Vec<Task> = Vec::new();
        let mut index: BTreeMap<Handle, usize> = BTreeMap::new();
        if root.kind() != Kind::Thunk {
            return Ok(Graph { tasks, root: Arg::Value(root), dependents: Vec::new() });
        }
        let mut visit = |handle: Handle| -> Result<Visit, GraphError> {
            let bytes = open(&handle).ok_or(GraphError::Missing(handle))?;
            let thunk = Thunk::decode(&bytes).map_err(|e| GraphError::Malformed(handle, e.to_string()))?;
            args_seen = args_seen.saturating_add(thunk.args().count());
            if args_seen > max_args {
                return Err(GraphError::TooWide(max_args));
            }
            if cairn_object::io::Effect::of(&thunk.procedure()).is_some() {
                return Err(GraphError::Io(handle));
            }
            // Reversed, so that popping takes them in order.
            let mut pending: Vec<Handle> = thunk.args().collect();
            pending.reverse();
            Ok(Visit {
                handle,
                limits: thunk.limits(),
                procedure: thunk.procedure(),
                args: Vec::with_capacity(pending.len()),
                pending,
            })
        };
        let mut stack = alloc::vec![visit(root)?];
        let mut done: Option<Arg> = None;
        while let Some(top) = stack.last_mut() {
            if let Some(arg) = done.take() {
                top.args.push(arg);
            }
            let Some(next) = top.pending.pop() else {
                let v = stack.pop().expect("non-empty");
                if tasks.len() >= max_tasks {
                    return Err(GraphError::TooLarge(max_tasks));
                }
                tasks.push(Task {
                    written: v.handle,
                    limits: v.limits,
                    procedure: v.procedure,
                    args: v.args,
                });
                index.insert(v.handle, tasks.len() - 1);
                done = Some(Arg::Task(tasks.len() - 1));
                continue;
            };
            if next.kind() != Kind::Thunk {
                done = Some(Arg::Value(next));
            } else if let Some(&i) = index.get(&next) {
                done = Some(Arg::Task(i));
            } else if stack.len() > MAX_DEPTH {
                return Err(GraphError::TooDeep);
            } else {
                // (No cycle is possible: a thunk is named by its bytes, which name its args.)
                stack.push(visit(next)?);
            }
        }
        let root = done.expect("the root was finished last");
        Ok(Graph::from_tasks(tasks, root))
    }

    /// A graph given directly (the simulator's): tasks refer only to earlier tasks.
    pub fn from_tasks(tasks: Vec<Task>, root: Arg) -> Graph {
        let mut dependents = alloc::vec![Vec::new(); tasks.len()];
        for (i, task) in tasks.iter().enumerate() {
            for arg in &task.args {
                if let Arg::Task(j) = arg
                    && dependents[*j].last() != Some(&i)
                {
                    dependents[*j].push(i);
                }
            }
        }
        Graph { tasks, root, dependents }
    }

    /// The tasks that take `task`'s value as an argument.
    pub fn dependents(&self, task: usize) -> &[usize] {
        &self.dependents[task]
    }

    /// Values the graph starts from (procedures and value arguments), without literals, each
    /// once, in order.
    pub fn leaves(&self) -> Vec<Handle> {
        let mut out: Vec<Handle> = Vec::new();
        for task in &self.tasks {
            out.push(task.procedure);
            out.extend(task.args.iter().filter_map(|a| match a {
                Arg::Value(h) => Some(*h),
                Arg::Task(_) => None,
            }));
        }
        if let Arg::Value(h) = self.root {
            out.push(h);
        }
        out.retain(|h| !h.is_literal());
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn procedures(&self) -> Vec<Handle> {
        let mut out: Vec<Handle> =
            self.tasks.iter().map(|t| t.procedure).filter(|h| !h.is_literal()).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}
