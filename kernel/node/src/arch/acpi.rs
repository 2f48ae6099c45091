//! Finds the machine's CPUs in the ACPI tables the firmware left in memory (parsing is in
//! `cairn-acpi`; this only reads the bytes).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use bootloader_api::BootInfo;
use cairn_acpi::{Cpu, HEADER_LEN, RSDP_LEN};

use crate::memory::read_physical;

fn read(phys: u64, len: usize, what: &str) -> Result<&'static [u8], String> {
    read_physical(phys, len).ok_or_else(|| format!("{what} at {phys:#x} is outside physical memory"))
}

/// A whole table: its header first, for the length.
fn read_table(phys: u64) -> Result<&'static [u8], String> {
    let (_, len) = cairn_acpi::header(read(phys, HEADER_LEN, "table header")?).map_err(|e| format!("{e}"))?;
    if len > 1 << 20 {
        return Err(format!("table at {phys:#x} claims {len} bytes"));
    }
    read(phys, len.max(HEADER_LEN), "table")
}

/// The processors the MADT lists, in its order.
pub fn cpus(boot_info: &BootInfo) -> Result<Vec<Cpu>, String> {
    let rsdp = boot_info.rsdp_addr.into_option().ok_or("the bootloader found no RSDP")?;
    let root = cairn_acpi::parse_rsdp(read(rsdp, RSDP_LEN, "RSDP")?).map_err(|e| format!("{e}"))?;
    let entries =
        cairn_acpi::root_entries(read_table(root.address)?, root.extended).map_err(|e| format!("{e}"))?;
    for phys in entries {
        let table = read_table(phys)?;
        if table.starts_with(b"APIC") {
            return cairn_acpi::madt_cpus(table).map_err(|e| format!("{e}"));
        }
    }
    Err("no MADT among the ACPI tables".into())
}
