//! Jobs with IO (docs/IO.md): `submit` runs one, `replay` evaluates one again from its journal,
//! `journal export`/`import` move a journal and what its replay needs between nodes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_tools::bundle::Bundle;
use cairn_tools::client::Client;
use clap::{Args, Subcommand};

use super::{NodeAddress, parse_handle, print_value};

#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    /// The job file (docs/IO.md).
    pub job: PathBuf,
    /// Also save the journal with everything a replay needs (as `cairn journal export` does).
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
}

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub node: NodeAddress,
    /// A job's handle (its latest journal on the node is used) or a journal's handle.
    pub handle: String,
}

#[derive(Subcommand)]
pub enum JournalCommand {
    /// Save a journal, its job and every object a replay needs to FILE.
    Export {
        #[command(flatten)]
        node: NodeAddress,
        /// The journal's handle (printed by `cairn submit`).
        journal: String,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Load a saved journal onto a node, so that `cairn replay JOB` works there.
    Import {
        #[command(flatten)]
        node: NodeAddress,
        file: PathBuf,
    },
}

pub fn submit(args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let job = cairn_tools::jobfile::JobFile::read(&args.job)?;
    let mut client = Client::connect(&args.node.node)?;
    let uploaded = client.upload_missing(&job.objects)?;
    eprintln!(
        "cairn: job {} (uploaded {uploaded} of {} objects); capabilities: {}",
        job.job,
        job.objects.len(),
        if job.manifest.grants().is_empty() {
            "none".to_string()
        } else {
            job.manifest.render().trim_end().replace('\n', ", ")
        }
    );
    let outcome = client.submit(job.job)?;
    println!("job      {}", outcome.job);
    println!(
        "journal  {} (on the node at {}; save it with `cairn journal export {} -o FILE`)",
        outcome.journal, args.node.node, outcome.journal
    );
    if let Some(path) = &args.export {
        let bundle = Bundle::export(&mut client, outcome.journal)?;
        std::fs::write(path, bundle.encode()).with_context(|| format!("cannot write {}", path.display()))?;
        println!("exported {} ({} objects)", path.display(), bundle.objects.len());
    }
    match outcome.result {
        Ok(result) => {
            println!("result   {result}");
            print_value(&mut client, result)?;
            Ok(ExitCode::SUCCESS)
        }
        // The failure's Display escapes the task's words.
        Err(failed) => {
            eprintln!("cairn: the job failed: {failed}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let handle = parse_handle(&args.handle)?;
    let mut client = Client::connect(&args.node.node)?;
    let outcome = client.replay(handle)?;
    println!("job      {}", outcome.job);
    println!("journal  {}", outcome.journal);
    match outcome.result {
        Ok(result) => {
            println!("result   {result}");
            match outcome.recorded {
                Some(recorded) if recorded == result => {
                    println!("replay: identical");
                    Ok(ExitCode::SUCCESS)
                }
                Some(recorded) => {
                    println!("replay: DIFFERS: the journal recorded {recorded}");
                    Ok(ExitCode::FAILURE)
                }
                None => {
                    println!("replay: the journal recorded a failed job, and the replay succeeded");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Err(failed) => {
            eprintln!("cairn: the replay failed: {failed}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn journal(command: &JournalCommand) -> anyhow::Result<ExitCode> {
    match command {
        JournalCommand::Export { node, journal, output } => {
            let mut client = Client::connect(&node.node)?;
            let bundle = Bundle::export(&mut client, parse_handle(journal)?)?;
            std::fs::write(output, bundle.encode())
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!(
                "{} ({} objects, job {})",
                output.display(),
                bundle.objects.len(),
                bundle.journal()?.job
            );
        }
        JournalCommand::Import { node, file } => {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let bundle = Bundle::decode(&bytes)
                .with_context(|| format!("{} is not a usable bundle", file.display()))?;
            let job = bundle.journal()?.job;
            let mut client = Client::connect(&node.node)?;
            let objects: Vec<_> = bundle.objects.iter().map(|(h, b)| (*h, b.clone())).collect();
            let uploaded = client.upload_missing(&objects)?;
            client.adopt_journal(bundle.journal)?;
            println!(
                "imported journal {} of job {job} ({uploaded} of {} objects uploaded)",
                bundle.journal,
                objects.len()
            );
            println!("replay it with: cairn replay {job} --node {}", node.node);
        }
    }
    Ok(ExitCode::SUCCESS)
}
