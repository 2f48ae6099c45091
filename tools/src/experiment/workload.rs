//! The job an experiment runs: a built-in one (the tasks are in this binary) or a job file of
//! one's own.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

const WORDCOUNT_ELF: &[u8] = include_bytes!(env!("CARGO_BIN_FILE_CAIRN_TASKS_wordcount"));
const MANDELBROT_ELF: &[u8] = include_bytes!(env!("CARGO_BIN_FILE_CAIRN_TASKS_mandelbrot"));

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Workload {
    /// A map task per chunk of generated text, one reduce: data-heavy.
    Wordcount {
        #[serde(default = "default_chunks")]
        chunks: u32,
        #[serde(default = "default_chunk_kib")]
        chunk_kib: u32,
    },
    /// A Mandelbrot image, a task per tile and one that assembles them: compute-heavy.
    Mandelbrot {
        #[serde(default = "default_width")]
        width: u32,
        #[serde(default = "default_height")]
        height: u32,
        #[serde(default = "default_tile")]
        tile: u32,
        #[serde(default = "default_iterations")]
        iterations: u32,
    },
    /// A job file of one's own (docs/IO.md), relative to the experiment file.
    Job { path: PathBuf },
}

fn default_chunks() -> u32 {
    12
}
fn default_chunk_kib() -> u32 {
    256
}
fn default_width() -> u32 {
    512
}
fn default_height() -> u32 {
    256
}
fn default_tile() -> u32 {
    64
}
fn default_iterations() -> u32 {
    400
}

impl Workload {
    /// The job file to run: written into `dir` for a built-in workload, else the one named
    /// (relative to `experiment_dir`).
    pub fn job_file(&self, dir: &Path, experiment_dir: &Path) -> anyhow::Result<PathBuf> {
        match self {
            Workload::Job { path } => {
                let path = experiment_dir.join(path);
                if !path.is_file() {
                    bail!("workload: there is no job file {}", path.display());
                }
                Ok(path)
            }
            Workload::Wordcount { chunks, chunk_kib } => {
                if !(1..=4096).contains(chunks) || !(1..=65_536).contains(chunk_kib) {
                    bail!("workload: wordcount takes 1 to 4,096 chunks of 1 to 65,536 KiB");
                }
                write(dir, "wordcount.elf", WORDCOUNT_ELF)?;
                let mut maps = Vec::new();
                for c in 0..*chunks {
                    let name = format!("chunk-{c}.txt");
                    write(dir, &name, &text(c, *chunk_kib as usize * 1024))?;
                    maps.push(format!(
                        "{{ task = \"wordcount.elf\", args = [{{ text = \"map\" }}, \"{name}\"] }}"
                    ));
                }
                let job = format!(
                    "[root]\ntask = \"wordcount.elf\"\nargs = [{{ text = \"reduce\" }}, {}]\n",
                    maps.join(", ")
                );
                write(dir, "job.toml", job.as_bytes())?;
                Ok(dir.join("job.toml"))
            }
            Workload::Mandelbrot { width, height, tile, iterations } => {
                let fits = |v: u32| (1..=8192).contains(&v);
                if !fits(*width) || !fits(*height) || !fits(*tile) || !(1..=1_000_000).contains(iterations) {
                    bail!(
                        "workload: mandelbrot takes sizes of 1 to 8,192 pixels and 1 to 1,000,000 iterations"
                    );
                }
                if width % tile != 0 || height % tile != 0 || (width / tile) * (height / tile) > 4096 {
                    bail!(
                        "workload: mandelbrot's tile must divide width and height into at most 4,096 tiles"
                    );
                }
                write(dir, "mandelbrot.elf", MANDELBROT_ELF)?;
                let mut tiles = Vec::new();
                for y in (0..*height).step_by(*tile as usize) {
                    for x in (0..*width).step_by(*tile as usize) {
                        tiles.push(format!(
                            "{{ task = \"mandelbrot.elf\", memory_mib = 2, args = [{{ text = \"tile\" }}, {{ u32s = [{width}, {height}, {x}, {y}, {tile}, {tile}, {iterations}] }}] }}"
                        ));
                    }
                }
                // The image holds 3 bytes a pixel, and its header.
                let memory = ((u64::from(*width) * u64::from(*height) * 3 * 2) >> 20) + 8;
                let job = format!(
                    "[root]\ntask = \"mandelbrot.elf\"\nmemory_mib = {memory}\nargs = [{{ text = \"image\" }}, {{ u32s = [{width}, {height}, {tile}, {tile}] }}, {}]\n",
                    tiles.join(", ")
                );
                write(dir, "job.toml", job.as_bytes())?;
                Ok(dir.join("job.toml"))
            }
        }
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// `len` bytes of words, the same for the same chunk number.
fn text(chunk: u32, len: usize) -> Vec<u8> {
    const WORDS: [&str; 10] =
        ["cairn", "stone", "path", "summit", "trail", "marker", "ridge", "valley", "mist", "granite"];
    let mut out = Vec::with_capacity(len + 16);
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(chunk);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(WORDS[(state % 10) as usize].as_bytes());
        out.push(if state % 11 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_workloads_write_job_files_that_read() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, tasks) in [
            (Workload::Wordcount { chunks: 3, chunk_kib: 4 }, 4),
            (Workload::Mandelbrot { width: 128, height: 64, tile: 32, iterations: 10 }, 9),
        ] {
            let sub = dir.path().join(format!("{tasks}"));
            std::fs::create_dir(&sub).unwrap();
            let job = kind.job_file(&sub, dir.path()).unwrap();
            let read = crate::jobfile::JobFile::read(&job).unwrap();
            let objects: std::collections::HashMap<_, _> = read.objects.into_iter().collect();
            let graph =
                cairn_sched::Graph::build(read.root, usize::MAX, |h| objects.get(h).cloned()).unwrap();
            assert_eq!(graph.tasks.len(), tasks);
        }
        assert_eq!(text(1, 1000), text(1, 1000));
        assert_ne!(text(1, 1000), text(2, 1000));
    }

    #[test]
    fn workloads_out_of_range_or_missing_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = |w: Workload| format!("{:#}", w.job_file(dir.path(), dir.path()).unwrap_err());
        assert!(err(Workload::Wordcount { chunks: 0, chunk_kib: 4 }).contains("chunks"));
        assert!(
            err(Workload::Mandelbrot { width: 100, height: 64, tile: 32, iterations: 1 }).contains("divide")
        );
        assert!(err(Workload::Job { path: "nowhere.toml".into() }).contains("nowhere.toml"));
    }
}
