//! Objects and counters on a running node: `put`, `get`, `stats`; and `hash`, which names files
//! the way a node would without asking one.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_object::Handle;
use cairn_tools::client::Client;
use cairn_tools::untrusted::{escape_bytes, escape_lines};
use clap::Args;

use super::NodeAddress;

#[derive(Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    pub handle: String,
    /// Write the object here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Args)]
pub struct PinArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    pub handle: String,
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    /// Forget only this many MiB (at least), the least recently used first; without it,
    /// everything nothing keeps.
    #[arg(long, value_name = "MIB")]
    pub mib: Option<u64>,
}

#[derive(Args)]
pub struct HashArgs {
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Files and directories to name.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn put(args: &PutArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&args.node.node)?;
    for path in &args.files {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let handle = Handle::blob(&bytes);
        if !client.missing(&[handle])?.is_empty() {
            let bar = progress(bytes.len() as u64);
            client.put(handle, &bytes, |sent| bar.set_position(sent))?;
            bar.finish_and_clear();
        }
        println!("{handle}  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn get(args: &GetArgs) -> anyhow::Result<ExitCode> {
    let handle: Handle = args.handle.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut client = Client::connect(&args.node.node)?;
    let bar = progress(handle.size());
    let bytes = client.get(handle, |got, _| bar.set_position(got))?;
    bar.finish_and_clear();
    match &args.output {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?
        }
        None if std::io::stdout().is_terminal() => {
            // The bytes are whatever a task made: shown on a terminal, not obeyed by it.
            let shown = for_terminal(&bytes);
            if shown.as_bytes() != bytes.as_slice() {
                eprintln!(
                    "cairn: control characters escaped for the terminal; -o FILE or a pipe gets the bytes"
                );
            }
            std::io::stdout().write_all(shown.as_bytes()).context("cannot write to standard output")?
        }
        None => std::io::stdout().write_all(&bytes).context("cannot write to standard output")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// An object's bytes for a terminal: its lines kept, everything else escaped.
fn for_terminal(bytes: &[u8]) -> String {
    bytes.split(|b| *b == b'\n').map(escape_bytes).collect::<Vec<_>>().join("\n")
}

pub fn stats(args: &NodeAddress) -> anyhow::Result<ExitCode> {
    let text = Client::connect(&args.node)?.stats()?;
    // Line by line, as the node sent it: tools read `key=value` lines from this.
    print!("{}", escape_lines(&text));
    Ok(ExitCode::SUCCESS)
}

pub fn scrub(args: &NodeAddress) -> anyhow::Result<ExitCode> {
    let report = Client::connect(&args.node)?.scrub()?;
    println!("checked {} objects ({} bytes)", report.checked, report.bytes);
    for handle in &report.damaged {
        println!("damaged {handle}");
    }
    if report.damaged_total > report.damaged.len() as u64 {
        println!("damaged ... and {} more", report.damaged_total - report.damaged.len() as u64);
    }
    if report.damaged_total > 0 {
        println!("restored {} of them (written again from memory, or fetched from a peer)", report.restored);
    }
    if report.unchecked > 0 {
        println!("unchecked {} objects (the node had no memory to read them)", report.unchecked);
    }
    if report.damaged_total > 0 {
        let lost = report.damaged_total.saturating_sub(report.restored);
        eprintln!(
            "cairn: {} damaged objects found; {lost} are no longer on the node: put them again",
            report.damaged_total
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pin(args: &PinArgs, pinned: bool) -> anyhow::Result<ExitCode> {
    let handle = super::parse_handle(&args.handle)?;
    Client::connect(&args.node.node)?.pin(handle, pinned)?;
    if pinned {
        println!("pinned {handle}");
    } else {
        println!("unpinned {handle} (the next `cairn gc` collects it if nothing else keeps it)");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn gc(args: &GcArgs) -> anyhow::Result<ExitCode> {
    let goal = match args.mib {
        Some(0) => {
            anyhow::bail!("--mib must be at least 1 (leave it out to collect everything nothing keeps)")
        }
        Some(mib) => mib.checked_mul(1 << 20).context("--mib is too large")?,
        None => 0,
    };
    let done = Client::connect(&args.node.node)?.gc(goal)?;
    println!("collected {} objects ({} bytes); {} objects kept", done.objects, done.bytes, done.kept);
    println!(
        "compacted: {} bytes of live objects copied, {} bytes of log given back; {} bytes free",
        done.copied_bytes, done.reclaimed, done.free
    );
    Ok(ExitCode::SUCCESS)
}

pub fn hash(args: &HashArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for path in &args.paths {
        match cairn_tools::hash::name_path(path) {
            Ok(named) if args.json => println!("{}", cairn_tools::hash::json_line(path, &named)),
            Ok(named) => println!("{}", cairn_tools::hash::text_line(path, &named)),
            Err(e) => {
                eprintln!("cairn: error: {}", escape_lines(&format!("{e:#}")));
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// A progress bar for transfers big enough to watch (indicatif; hidden when not a terminal).
fn progress(len: u64) -> indicatif::ProgressBar {
    if len < 4 << 20 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_shown_on_a_terminal_keep_their_lines_and_lose_their_controls() {
        assert_eq!(for_terminal(b"plain text\nline two\n"), "plain text\nline two\n");
        assert_eq!(for_terminal(b"\x1b]0;title\x07\r\n\xff"), "\\x1b]0;title\\x07\\r\n\\xff");
    }
}
