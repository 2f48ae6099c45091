//! A task of one's own (docs/TASKS.md): `cairn new task` writes a crate outside the workspace,
//! its host-side test passes, `cairn build` makes the ELF, and `cairn eval --boot` runs it on a
//! node booted for the purpose: three commands from nothing to a result.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn cairn(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_FILE_CAIRN_TOOLS_cairn"));
    cmd.current_dir(dir).stdin(Stdio::null());
    cmd
}

fn show(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_new_task_goes_from_cairn_new_to_a_result_in_three_commands() {
    let dir = tempfile::tempdir().unwrap();
    let new = cairn(dir.path()).args(["new", "task", "word-stats"]).output().unwrap();
    assert_eq!(new.status.code(), Some(0), "{}", show(&new));
    let crate_dir = dir.path().join("word-stats");
    assert!(
        String::from_utf8_lossy(&new.stdout).contains("next: cairn build ./word-stats"),
        "{}",
        show(&new)
    );

    let build = cairn(dir.path()).args(["build", "word-stats"]).output().unwrap();
    assert_eq!(build.status.code(), Some(0), "{}", show(&build));
    // `HANDLE PATH`: the ELF, named by its bytes.
    let stdout = String::from_utf8_lossy(&build.stdout);
    let (handle, elf) = stdout.trim().split_once(' ').unwrap_or_else(|| panic!("{}", show(&build)));
    let bytes = std::fs::read(elf).unwrap();
    assert_eq!(handle, cairn_object::Handle::blob(&bytes).to_string());
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 2, "a static executable (ET_EXEC)");

    let eval =
        cairn(dir.path()).args(["eval", "--boot", "--job", "word-stats/example.toml"]).output().unwrap();
    assert_eq!(eval.status.code(), Some(0), "{}", show(&eval));
    assert!(String::from_utf8_lossy(&eval.stdout).contains("5 words, 22 bytes"), "{}", show(&eval));

    // Its logic is tested on the host, with plain `cargo test` in the crate.
    let mut test = Command::new("cargo");
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        test.env_remove(var);
    }
    let test = test.current_dir(&crate_dir).args(["test", "--quiet"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(test.status.code(), Some(0), "{}", show(&test));
    assert!(String::from_utf8_lossy(&test.stdout).contains("1 passed"), "{}", show(&test));

    // What cannot be made is said plainly.
    let again = cairn(dir.path()).args(["new", "task", "word-stats"]).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"), "{}", show(&again));
    let bad = cairn(dir.path()).args(["new", "task", "Bad Name"]).output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a task name"), "{}", show(&bad));
    let nothing = cairn(dir.path()).args(["build", "."]).output().unwrap();
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("no Cargo.toml in ."), "{}", show(&nothing));
}
