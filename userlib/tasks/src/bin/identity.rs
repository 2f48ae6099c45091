//! Returns its first argument: the cheapest possible task (used by `cairn bench`).
#![no_std]
#![no_main]

use cairn_userlib::{Handle, TaskResult};

fn run(args: &[Handle]) -> TaskResult {
    args.first().copied().ok_or_else(|| "identity needs one argument".into())
}

cairn_userlib::task!(run);
