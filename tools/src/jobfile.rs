//! Job files (docs/IO.md): a small TOML format naming a job's root expression and the IO it may
//! perform. Reading one yields the job's objects, ready to upload, and its handle.
//!
//! ```toml
//! [capabilities]
//! http_get = ["10.0.2.2:8080"]
//! tcp_send = ["10.0.2.2:9000"]
//!
//! [root]
//! tcp_send = "10.0.2.2:9000"
//! data = { task = "wordcount.elf", args = [{ text = "map" }, { http_get = "http://10.0.2.2:8080/a.txt" }] }
//! ```
//!
//! An expression is a string (a file, relative to the job file, or a handle like `blob:…`), or
//! a table with one of: `text`, `u32s` (little-endian), `file`, `handle`, `task` (+ `args`,
//! `memory_mib`), `http_get`,
//! `tcp_request` (+ `data`), `tcp_send` (+ `data`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use cairn_io::{Job, Manifest};
use cairn_object::io::{Effect, Endpoint};
use cairn_object::{Handle, Kind, Limits};

const DEFAULT_TASK_MIB: u64 = 16;

/// A job read from a file: its handle, and every object it needs (job tree, manifest, the
/// root and everything below it that is not a literal).
pub struct JobFile {
    pub job: Handle,
    pub root: Handle,
    pub manifest: Manifest,
    pub objects: Vec<(Handle, Vec<u8>)>,
}

struct Builder {
    dir: PathBuf,
    objects: BTreeMap<Handle, Vec<u8>>,
}

fn effect_key(effect: Effect) -> String {
    effect.name().replace('.', "_")
}

impl Builder {
    fn add(&mut self, kind: Kind, bytes: Vec<u8>) -> anyhow::Result<Handle> {
        let handle = cairn_object::store::name(kind, &bytes)?;
        if !handle.is_literal() {
            self.objects.insert(handle, bytes);
        }
        Ok(handle)
    }

    fn file(&mut self, path: &str) -> anyhow::Result<Handle> {
        let full = self.dir.join(path);
        let bytes = std::fs::read(&full).with_context(|| format!("cannot read {}", full.display()))?;
        self.add(Kind::Blob, bytes)
    }

    fn endpoint_blob(&mut self, text: &str, at: &str) -> anyhow::Result<Handle> {
        Endpoint::parse(text)
            .ok_or_else(|| anyhow!("{at}: `{text}` is not an endpoint like 10.0.2.2:8080"))?;
        self.add(Kind::Blob, text.as_bytes().to_vec())
    }

    fn io(&mut self, effect: Effect, args: &[Handle]) -> anyhow::Result<Handle> {
        let bytes = cairn_object::thunk::encode(cairn_object::io::limits(), effect.procedure(), args)
            .map_err(|p| anyhow!("{p}"))?;
        self.add(Kind::Thunk, bytes)
    }

    fn expr(&mut self, value: &toml::Value, at: &str) -> anyhow::Result<Handle> {
        let table = match value {
            toml::Value::String(s) => {
                return match s.parse::<Handle>() {
                    Ok(handle) => Ok(handle),
                    Err(_) => self.file(s),
                };
            }
            toml::Value::Table(t) => t,
            other => bail!("{at}: expected a file name or a table, found a {}", other.type_str()),
        };
        let string = |key: &str| -> anyhow::Result<&str> {
            table.get(key).and_then(|v| v.as_str()).ok_or_else(|| anyhow!("{at}: `{key}` must be a string"))
        };
        let allow = |keys: &[&str]| -> anyhow::Result<()> {
            match table.keys().find(|k| !keys.contains(&k.as_str())) {
                Some(extra) => {
                    bail!("{at}: unexpected key `{extra}` (this expression takes {})", keys.join(", "))
                }
                None => Ok(()),
            }
        };
        let kinds = ["text", "u32s", "file", "handle", "task", "http_get", "tcp_request", "tcp_send"];
        let kind = match table.keys().filter(|k| kinds.contains(&k.as_str())).collect::<Vec<_>>()[..] {
            [one] => one.as_str(),
            _ => bail!("{at}: an expression is a table with exactly one of {}", kinds.join(", ")),
        };
        match kind {
            "text" => {
                allow(&["text"])?;
                self.add(Kind::Blob, string("text")?.as_bytes().to_vec())
            }
            "u32s" => {
                allow(&["u32s"])?;
                let items = table["u32s"]
                    .as_array()
                    .ok_or_else(|| anyhow!("{at}: `u32s` must be an array of integers"))?;
                let mut bytes = Vec::new();
                for item in items {
                    let n = item
                        .as_integer()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| anyhow!("{at}: `u32s` holds integers from 0 to 4294967295"))?;
                    bytes.extend_from_slice(&n.to_le_bytes());
                }
                self.add(Kind::Blob, bytes)
            }
            "file" => {
                allow(&["file"])?;
                self.file(string("file")?)
            }
            "handle" => {
                allow(&["handle"])?;
                string("handle")?.parse().map_err(|e| anyhow!("{at}: {e}"))
            }
            "task" => {
                allow(&["task", "args", "memory_mib"])?;
                let procedure = self.file(string("task")?)?;
                let args = match table.get("args") {
                    None => Vec::new(),
                    Some(toml::Value::Array(items)) => {
                        let mut args = Vec::new();
                        for (i, item) in items.iter().enumerate() {
                            args.push(self.expr(item, &format!("{at}.args[{i}]"))?);
                        }
                        args
                    }
                    Some(_) => bail!("{at}: `args` must be an array"),
                };
                let mib = match table.get("memory_mib") {
                    None => DEFAULT_TASK_MIB,
                    Some(v) => v
                        .as_integer()
                        .filter(|m| (1..=4096).contains(m))
                        .ok_or_else(|| anyhow!("{at}: `memory_mib` must be 1 to 4096"))?
                        as u64,
                };
                let limits = Limits::new(mib << 20).map_err(|p| anyhow!("{p}"))?;
                let bytes = cairn_object::thunk::encode(limits, procedure, &args)
                    .map_err(|p| anyhow!("{at}: {p}"))?;
                self.add(Kind::Thunk, bytes)
            }
            "http_get" => {
                allow(&["http_get"])?;
                let url = string("http_get")?;
                cairn_object::io::parse_url(url)
                    .ok_or_else(|| anyhow!("{at}: `{url}` is not a URL like http://10.0.2.2:8080/path"))?;
                let url = self.add(Kind::Blob, url.as_bytes().to_vec())?;
                self.io(Effect::HttpGet, &[url])
            }
            effect @ ("tcp_request" | "tcp_send") => {
                allow(&[effect, "data"])?;
                let to = self.endpoint_blob(string(effect)?, at)?;
                let data = self.expr(
                    table.get("data").ok_or_else(|| anyhow!("{at}: `{effect}` needs `data`"))?,
                    &format!("{at}.data"),
                )?;
                self.io(if effect == "tcp_send" { Effect::TcpSend } else { Effect::TcpRequest }, &[to, data])
            }
            _ => unreachable!("kinds are listed above"),
        }
    }
}

impl JobFile {
    pub fn read(path: &Path) -> anyhow::Result<JobFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let doc: toml::Table =
            text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        JobFile::from_table(&doc, &dir).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_table(doc: &toml::Table, dir: &Path) -> anyhow::Result<JobFile> {
        if let Some(extra) = doc.keys().find(|k| !["root", "capabilities"].contains(&k.as_str())) {
            bail!("unexpected top-level key `{extra}` (a job file has `root` and `capabilities`)");
        }
        let mut grants = Vec::new();
        if let Some(caps) = doc.get("capabilities") {
            let caps = caps.as_table().ok_or_else(|| anyhow!("`capabilities` must be a table"))?;
            for (key, endpoints) in caps {
                let effect = Effect::ALL.into_iter().find(|e| effect_key(*e) == *key).ok_or_else(|| {
                    anyhow!("capabilities: unknown effect `{key}` (known: tcp_request, http_get, tcp_send)")
                })?;
                let endpoints = endpoints
                    .as_array()
                    .ok_or_else(|| anyhow!("capabilities.{key} must be an array of endpoints"))?;
                for endpoint in endpoints {
                    let text = endpoint.as_str().unwrap_or_default();
                    let endpoint = Endpoint::parse(text).ok_or_else(|| {
                        anyhow!("capabilities.{key}: `{text}` is not an endpoint like 10.0.2.2:8080")
                    })?;
                    grants.push((effect, endpoint));
                }
            }
        }
        let manifest = Manifest::new(grants);
        let mut builder = Builder { dir: dir.to_path_buf(), objects: BTreeMap::new() };
        let root =
            builder.expr(doc.get("root").ok_or_else(|| anyhow!("a job file needs a `root`"))?, "root")?;
        let (tree, manifest_bytes) = Job::encode(root, &manifest);
        builder.add(Kind::Blob, manifest_bytes)?;
        let job = builder.add(Kind::Tree, tree)?;
        Ok(JobFile { job, root, manifest, objects: builder.objects.into_iter().collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> anyhow::Result<JobFile> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("page.txt"), "some words, some more words").unwrap();
        std::fs::write(dir.path().join("task.elf"), "pretend this is an ELF, long enough").unwrap();
        JobFile::from_table(&text.parse().unwrap(), dir.path())
    }

    #[test]
    fn a_job_file_names_its_objects_and_manifest() {
        let job = read(
            r#"
            [capabilities]
            http_get = ["10.0.2.2:8080"]
            tcp_send = ["10.0.2.2:9000"]
            [root]
            tcp_send = "10.0.2.2:9000"
            data = { task = "task.elf", memory_mib = 4, args = [{ text = "map" }, "page.txt", { http_get = "http://10.0.2.2:8080/a" }] }
            "#,
        )
        .unwrap();
        assert_eq!(job.manifest.render(), "http.get 10.0.2.2:8080\ntcp.send 10.0.2.2:9000\n");
        assert_eq!(job.root.kind(), Kind::Thunk);
        let loaded =
            Job::load(&job.job, |h| job.objects.iter().find(|(o, _)| o == h).map(|(_, b)| b.clone()))
                .unwrap();
        assert_eq!((loaded.root, loaded.manifest), (job.root, job.manifest.clone()));
        // Every non-literal object is there, each under its own name.
        for (handle, bytes) in &job.objects {
            assert_eq!(cairn_object::store::name(handle.kind(), bytes).unwrap(), *handle);
        }
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            ("[root]\nwhat = 1", "exactly one of"),
            ("root = 3", "expected a file name or a table"),
            ("root = \"missing.txt\"", "cannot read"),
            ("[root]\ntask = \"task.elf\"\nargs = 1", "`args` must be an array"),
            ("[root]\ntext = \"x\"\nextra = 1", "unexpected key `extra`"),
            ("[root]\nhttp_get = \"https://x/\"", "not a URL"),
            ("[root]\ntcp_send = \"10.0.2.2\"\ndata = { text = \"x\" }", "not an endpoint"),
            ("[root]\ntcp_send = \"10.0.2.2:1\"", "needs `data`"),
            ("[capabilities]\nftp = [\"1.2.3.4:21\"]\n[root]\ntext = \"x\"", "unknown effect `ftp`"),
            ("[capabilities]\nhttp_get = [\"nowhere\"]\n[root]\ntext = \"x\"", "not an endpoint"),
            ("[root]\ntext = \"x\"\n[other]\n", "unexpected top-level key"),
            ("[capabilities]\n", "needs a `root`"),
            ("[root]\ntask = \"task.elf\"\nmemory_mib = 0", "memory_mib"),
        ] {
            let err = format!("{:#}", read(text).err().unwrap_or_else(|| panic!("{text} was accepted")));
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
