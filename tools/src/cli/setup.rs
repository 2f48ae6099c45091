//! `cairn setup`: QEMU, qemu-img and OVMF installed and checked (cairn-hostsetup).

use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct SetupArgs {
    /// Say what would be installed, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn setup(args: &SetupArgs) -> anyhow::Result<ExitCode> {
    cairn_hostsetup::setup(args.dry_run, &mut |line| eprintln!("cairn: {line}"))?;
    Ok(ExitCode::SUCCESS)
}
