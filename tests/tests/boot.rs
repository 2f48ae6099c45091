//! Booting nodes from both firmware paths, the in-kernel self tests, and fault reporting.

use cairn_boot::Firmware;
use cairn_bootcfg::Mode;
use cairn_tests::{BOOT_TIMEOUT, Node, READY_LINE};
use cairn_tools::qemu::{NodeExit, NodeOptions};

fn boots_to_ready_and_shuts_down(firmware: Firmware) {
    let mut node = Node::boot(firmware, Mode::Job);
    let ready = node.expect(READY_LINE, BOOT_TIMEOUT);
    let boot_ms: u64 = ready[1].parse().unwrap();
    let mem_mib: u64 = ready[2].parse().unwrap();
    // The guest has 512 MiB; firmware and the bootloader keep some of it.
    assert!((400..=512).contains(&mem_mib), "mem_mib={mem_mib} for a 512 MiB guest");
    assert!(boot_ms < 30_000, "boot_ms={boot_ms}");
    let exit = node.finish(BOOT_TIMEOUT);
    if exit != NodeExit::Success {
        node.fail(&format!("expected a clean shutdown, got: {exit}"));
    }
}

#[test]
fn bios_boot_reaches_ready_and_shuts_down_cleanly() {
    boots_to_ready_and_shuts_down(Firmware::Bios);
}

#[test]
fn uefi_boot_reaches_ready_and_shuts_down_cleanly() {
    boots_to_ready_and_shuts_down(Firmware::Uefi);
}

fn selftests_pass(firmware: Firmware) {
    let mut node = Node::boot(firmware, Mode::Selftest);
    let summary = node.expect(r"^selftest: (\d+) passed, (\d+) failed$", BOOT_TIMEOUT);
    let (passed, failed): (usize, usize) = (summary[1].parse().unwrap(), summary[2].parse().unwrap());
    let ok_lines = node.transcript().iter().filter(|l| l.ends_with(" ... ok")).count();
    let failed_lines: Vec<_> = node.transcript().iter().filter(|l| l.contains("... FAILED")).collect();
    if failed != 0 || !failed_lines.is_empty() {
        node.fail(&format!("self tests failed: {failed_lines:?}"));
    }
    assert_eq!(passed, ok_lines, "summary disagrees with the per-case lines");
    // Frames, heap, paging, MMIO, SIMD, timer and three exceptions at the least.
    assert!(passed >= 10, "only {passed} self tests ran");
    let exit = node.finish(BOOT_TIMEOUT);
    assert_eq!(exit, NodeExit::Success, "self tests passed but the node did not exit with success");
}

#[test]
fn bios_selftests_pass() {
    selftests_pass(Firmware::Bios);
}

#[test]
fn uefi_selftests_pass() {
    selftests_pass(Firmware::Uefi);
}

#[test]
fn unmapped_read_is_reported_with_cr2_and_fails_the_node() {
    let mut node = Node::boot(Firmware::Bios, Mode::FaultTest);
    node.expect(READY_LINE, BOOT_TIMEOUT);
    let report = node.expect(
        r"^cairn: fatal exception: page fault \(vector 14\) rip=(0x[0-9a-f]+) error_code=(0x[0-9a-f]+) cr2=(0x[0-9a-f]+)$",
        BOOT_TIMEOUT,
    );
    assert_eq!(&report[3], "0xdeadbeef000", "CR2 must be the address that was read");
    let rip = report[1].to_string();
    node.expect(r"^cairn: backtrace \(kernel image at 0x[0-9a-f]+\):$", BOOT_TIMEOUT);
    let frame0 = node.expect(r"^cairn:   #0  (0x[0-9a-f]+)$", BOOT_TIMEOUT);
    assert_eq!(
        u64::from_str_radix(&frame0[1][2..], 16).unwrap(),
        u64::from_str_radix(&rip[2..], 16).unwrap()
    );
    // The faulting read is called from the kernel's mode dispatch: there must be callers.
    node.expect(r"^cairn:   #1  0x[0-9a-f]+$", BOOT_TIMEOUT);
    let exit = node.finish(BOOT_TIMEOUT);
    assert_eq!(exit, NodeExit::Failure, "a fatal fault must stop the node with a failure status");
}

#[test]
fn bad_node_config_is_reported_and_fails_the_node() {
    let mut node = Node::boot_with(NodeOptions {
        raw_config: Some(b"mode = job\nspeed = fast\n".to_vec()),
        ..NodeOptions::default()
    });
    node.expect(r"^cairn: bad node configuration: node config line 2: unknown key `speed`", BOOT_TIMEOUT);
    assert_eq!(node.finish(BOOT_TIMEOUT), NodeExit::Failure);
}
