//! The node's network: PCI enumeration, the virtio card (its BARs above 4 GiB under OVMF),
//! smoltcp, and DHCP over QEMU's user networking. The same boots check that the other CPU
//! (arch/smp.rs) starts, and runs tasks, under both firmwares.

use cairn_boot::Firmware;
use cairn_bootcfg::Mode;
use cairn_tests::{BOOT_TIMEOUT, Node, READY_LINE};

fn gets_an_address_by_dhcp(firmware: Firmware) {
    let mut node = Node::boot(firmware, Mode::Serve);
    node.expect(r"smp: 2 CPUs online \(2 run tasks\)", BOOT_TIMEOUT);
    node.expect(READY_LINE, BOOT_TIMEOUT);
    let net = node.expect(r"^cairn: net ip=(\S+) gateway=(\S+) dhcp_ms=(\d+) api_port=7070$", BOOT_TIMEOUT);
    assert_eq!(&net[1], "10.0.2.15/24", "QEMU's user network hands out 10.0.2.15");
    assert_eq!(&net[2], "10.0.2.2");
}

#[test]
fn bios_node_gets_an_address_by_dhcp() {
    gets_an_address_by_dhcp(Firmware::Bios);
}

#[test]
fn uefi_node_gets_an_address_by_dhcp() {
    gets_an_address_by_dhcp(Firmware::Uefi);
}
