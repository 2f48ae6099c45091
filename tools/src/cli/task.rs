//! `cairn new task NAME` writes a task crate of one's own, outside this workspace;
//! `cairn build [DIR]` builds it into the ELF a node runs (docs/TASKS.md).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use cairn_object::Handle;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum NewCommand {
    /// Write a task crate: its logic (tested on the host), the task around it, the build
    /// settings, and an example job.
    Task(NewTaskArgs),
}

#[derive(Args)]
pub struct NewTaskArgs {
    /// The crate's name (and its directory's): lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// Where to write it (its directory goes inside).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The Cairn checkout whose `userlib` the task links against (default: the one this
    /// `cairn` was built from).
    #[arg(long)]
    pub cairn: Option<PathBuf>,
}

#[derive(Args)]
pub struct BuildArgs {
    /// The task crate's directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// The checkout this `cairn` was built from.
fn own_checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// Why a well-formed name still makes a crate that cannot build, if it does: the crate's
/// library is named after it (`-` as `_`), and `src/main.rs` calls it by that name.
fn unbuildable(name: &str) -> Option<&'static str> {
    const KEYWORDS: &[&str] = &[
        "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do",
        "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let",
        "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return", "self",
        "static", "struct", "super", "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use",
        "virtual", "where", "while", "yield",
    ];
    let lib = name.replace('-', "_");
    if KEYWORDS.contains(&lib.as_str()) {
        Some("it is a Rust keyword")
    } else if lib == "core" {
        // (`src/main.rs` would call `core::describe`, and the prelude's `core` is gone.)
        Some("it is the name of Rust's core library")
    } else if lib == "cairn_userlib" {
        Some("the task links against a crate of that name")
    } else if ["build", "deps", "examples", "incremental"].contains(&name) {
        Some("cargo keeps that name for its own directories")
    } else {
        None
    }
}

pub fn new(command: &NewCommand) -> anyhow::Result<ExitCode> {
    let NewCommand::Task(args) = command;
    if !valid_name(&args.name) {
        bail!(
            "`{}` is not a task name: start with a lowercase letter, then lowercase letters, digits, `-` or `_` (at most 64)",
            cairn_tools::untrusted::escape(&args.name)
        );
    }
    if let Some(why) = unbuildable(&args.name) {
        bail!("`{}` cannot name a task crate: {why}", args.name);
    }
    let cairn = args.cairn.clone().unwrap_or_else(own_checkout);
    let userlib = cairn.join("userlib");
    if !userlib.join("Cargo.toml").is_file() {
        bail!("no Cairn userlib at {} (give the Cairn checkout with --cairn DIR)", userlib.display());
    }
    let userlib = userlib.canonicalize().with_context(|| format!("cannot resolve {}", userlib.display()))?;
    let toolchain = std::fs::read_to_string(cairn.join("rust-toolchain.toml"))
        .with_context(|| format!("cannot read {}", cairn.join("rust-toolchain.toml").display()))?;
    let root = args.dir.join(&args.name);
    if root.exists() {
        bail!("{} exists already: choose another name or --dir", root.display());
    }
    let lib_name = args.name.replace('-', "_");
    let files = template(&args.name, &lib_name, &userlib, &toolchain);
    for (path, text) in &files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("files are inside the crate"))
            .with_context(|| format!("cannot create {}", root.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{} (task crate; cairn-userlib from {})", root.display(), userlib.display());
    println!("next: cairn build {}", root.display());
    println!("then: cairn eval --boot --job {}", root.join("example.toml").display());
    Ok(ExitCode::SUCCESS)
}

/// The crate's files: path inside it, text.
fn template(name: &str, lib: &str, userlib: &Path, toolchain: &str) -> Vec<(&'static str, String)> {
    let userlib = userlib.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    vec![
        (
            "Cargo.toml",
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# The task's logic: plain Rust, tested on the host with `cargo test`.
[lib]
path = "src/lib.rs"

# The task itself: `cairn build` makes it a static ELF for x86_64-unknown-none.
[[bin]]
name = "{name}"
path = "src/main.rs"
test = false
bench = false

[dependencies]
cairn-userlib = {{ path = "{userlib}" }}

# A workspace of its own, wherever it is written (inside another one, such as a Cairn
# checkout, cargo would otherwise refuse to build it).
[workspace]
"#
            ),
        ),
        (
            "rust-toolchain.toml",
            format!("# Cairn's own toolchain (the task links against its userlib).\n{toolchain}"),
        ),
        (
            ".cargo/config.toml",
            String::from(
                r#"# A task is a static (non-PIE) executable at the image base of the task ABI
# (docs/TASKS.md): the node's loader maps it where it was linked.
[target.x86_64-unknown-none]
rustflags = [
    "-C", "relocation-model=static",
    "-C", "link-arg=--image-base=0x400000",
    "-C", "link-arg=-znoexecstack",
    "-C", "force-frame-pointers=yes",
]
"#,
            ),
        ),
        (
            "src/lib.rs",
            String::from(
                r#"//! What the task computes, as plain Rust over bytes: no Cairn in here, so `cargo test` runs
//! it on the host.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::String;

/// How many words and bytes `text` has, as one line.
pub fn describe(text: &[u8]) -> String {
    let words = text.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).count();
    format!("{words} words, {} bytes", text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_and_bytes() {
        assert_eq!(describe(b"a cairn marks  the path\n"), "5 words, 24 bytes");
        assert_eq!(describe(b""), "0 words, 0 bytes");
    }
}
"#,
            ),
        ),
        (
            "src/main.rs",
            format!(
                r#"//! The task: a node runs it in ring 3 with its arguments as handles, and it returns the
//! handle of what it made (docs/TASKS.md). Built only for the node (`cairn build`).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod task {{
    use cairn_userlib::{{Handle, TaskResult, create_blob, open}};

    fn run(args: &[Handle]) -> TaskResult {{
        let [text] = args else {{ return Err("{name} takes one argument: a text".into()) }};
        Ok(create_blob({lib}::describe(open(text)).as_bytes()))
    }}

    cairn_userlib::task!(run);
}}

#[cfg(not(target_os = "none"))]
fn main() {{
    eprintln!("{name} is a Cairn task: build it with `cairn build`, run it with `cairn eval`");
    std::process::exit(2);
}}
"#
            ),
        ),
        (
            "example.toml",
            format!(
                r#"# A job: the task applied to one text (docs/IO.md, job files). Paths are relative to this file.
[root]
task = "target/x86_64-unknown-none/release/{name}"
args = [{{ text = "a cairn marks the path" }}]
"#
            ),
        ),
        (".gitignore", String::from("/target\n")),
    ]
}

pub fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let manifest = args.dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("no Cargo.toml in {} (make a task crate with `cairn new task NAME`)", args.dir.display());
    }
    // Rustup's `cargo`, not the one that built this tool: it reads the crate's toolchain file
    // and has every compiler it runs use that toolchain too.
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(&args.dir)
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-none",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The task crate's own toolchain file chooses the compiler, not whatever ran this: for
    // cargo, and for every compiler cargo runs, wherever it runs it.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(var);
    }
    if let Some(channel) = toolchain_of(&args.dir)? {
        cargo.env("RUSTUP_TOOLCHAIN", channel);
    }
    let out = cargo.output().context("cannot run cargo")?;
    if !out.status.success() {
        bail!("cargo build failed in {} (its errors are above)", args.dir.display());
    }
    // Cargo names each binary it made; those are the tasks.
    let mut elves = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_bin = message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
        if message["reason"] == "compiler-artifact"
            && is_bin
            && let Some(path) = message["executable"].as_str()
        {
            elves.push(PathBuf::from(path));
        }
    }
    if elves.is_empty() {
        bail!("cargo built no binary in {}: a task crate has a [[bin]]", args.dir.display());
    }
    for elf in elves {
        let bytes = std::fs::read(&elf).with_context(|| format!("cannot read {}", elf.display()))?;
        println!("{} {}", Handle::blob(&bytes), elf.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The channel the crate's `rust-toolchain.toml` names, if it has one.
fn toolchain_of(dir: &Path) -> anyhow::Result<Option<String>> {
    let path = dir.join("rust-toolchain.toml");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let toml: toml::Value =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    Ok(toml.get("toolchain").and_then(|t| t.get("channel")).and_then(|c| c.as_str()).map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_names_and_nothing_else() {
        for good in ["hello", "my-task", "t2_x"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Hello", "2task", "-x", "a/b", "a b", "../x", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn names_that_make_a_crate_that_cannot_build_are_refused() {
        // Each of these made a crate `cairn build` could not build.
        for bad in ["fn", "self", "gen", "core", "cairn-userlib", "cairn_userlib", "deps", "build"] {
            assert!(valid_name(bad) && unbuildable(bad).is_some(), "{bad}");
        }
        for good in ["hello", "word-stats", "task", "run", "test", "std", "alloc", "fnord", "my-core"] {
            assert_eq!(unbuildable(good), None, "{good}");
        }
    }

    #[test]
    fn the_crate_is_a_workspace_of_its_own() {
        // Written inside another workspace (a Cairn checkout, where `cargo run -- new task`
        // writes it), cargo refused to build it: "believes it's in a workspace when it's not".
        let files = template("hello", "hello", Path::new("/src/userlib"), "[toolchain]\n");
        let cargo = &files.iter().find(|(p, _)| *p == "Cargo.toml").unwrap().1;
        let toml: toml::Value = toml::from_str(cargo).unwrap();
        assert!(toml.get("workspace").is_some_and(toml::Value::is_table), "{cargo}");
    }

    #[test]
    fn the_template_quotes_the_userlib_path() {
        let files = template("hello", "hello", Path::new("/src/we\"ird"), "[toolchain]\n");
        let cargo = &files.iter().find(|(p, _)| *p == "Cargo.toml").unwrap().1;
        assert!(cargo.contains(r#"path = "/src/we\"ird""#), "{cargo}");
        let toml: toml::Value = toml::from_str(cargo).unwrap();
        assert_eq!(toml["package"]["name"].as_str(), Some("hello"));
    }
}
