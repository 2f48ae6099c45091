//! The few ACPI tables the kernel reads to find its CPUs: the RSDP, the RSDT or XSDT, and the
//! MADT. Only parsing lives here; the kernel reads the bytes from physical memory. Every length
//! and checksum is checked, so a damaged table is an error, never a panic or a wild read.

#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// Bytes of the header every system description table starts with.
pub const HEADER_LEN: usize = 36;
/// Bytes of an ACPI 2.0 RSDP (an ACPI 1.0 one is the first 20).
pub const RSDP_LEN: usize = 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The bytes are shorter than the structure says it is.
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    BadSignature {
        what: &'static str,
    },
    BadChecksum {
        what: &'static str,
    },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::Truncated { what, need, have } => write!(f, "{what}: {have} bytes, needs {need}"),
            AcpiError::BadSignature { what } => write!(f, "{what}: wrong signature"),
            AcpiError::BadChecksum { what } => write!(f, "{what}: checksum does not add up"),
        }
    }
}

/// Where the root table is: its physical address, and whether it is an XSDT (64-bit entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    pub address: u64,
    pub extended: bool,
}

fn need(what: &'static str, bytes: &[u8], len: usize) -> Result<(), AcpiError> {
    if bytes.len() < len { Err(AcpiError::Truncated { what, need: len, have: bytes.len() }) } else { Ok(()) }
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The root table named by an RSDP: the XSDT when the RSDP is ACPI 2.0 or later and gives one.
pub fn parse_rsdp(rsdp: &[u8]) -> Result<Root, AcpiError> {
    need("RSDP", rsdp, 20)?;
    if &rsdp[..8] != b"RSD PTR " {
        return Err(AcpiError::BadSignature { what: "RSDP" });
    }
    if !sums_to_zero(&rsdp[..20]) {
        return Err(AcpiError::BadChecksum { what: "RSDP" });
    }
    let revision = rsdp[15];
    if revision >= 2 {
        need("RSDP", rsdp, RSDP_LEN)?;
        let len = (u32_at(rsdp, 20) as usize).clamp(RSDP_LEN, rsdp.len());
        if !sums_to_zero(&rsdp[..len]) {
            return Err(AcpiError::BadChecksum { what: "RSDP (extended)" });
        }
        let xsdt = u64_at(rsdp, 24);
        if xsdt != 0 {
            return Ok(Root { address: xsdt, extended: true });
        }
    }
    Ok(Root { address: u64::from(u32_at(rsdp, 16)), extended: false })
}

/// The signature and total length a table's header claims.
pub fn header(bytes: &[u8]) -> Result<([u8; 4], usize), AcpiError> {
    need("table header", bytes, HEADER_LEN)?;
    let signature = bytes[..4].try_into().expect("4 bytes");
    Ok((signature, u32_at(bytes, 4) as usize))
}

/// Checks a whole table (its header's length, signature and checksum) and returns its body.
fn table<'a>(bytes: &'a [u8], signature: &[u8; 4], what: &'static str) -> Result<&'a [u8], AcpiError> {
    let (found, len) = header(bytes)?;
    if &found != signature {
        return Err(AcpiError::BadSignature { what });
    }
    need(what, bytes, len.max(HEADER_LEN))?;
    let bytes = &bytes[..len.max(HEADER_LEN)];
    if !sums_to_zero(bytes) {
        return Err(AcpiError::BadChecksum { what });
    }
    Ok(&bytes[HEADER_LEN..])
}

/// The physical addresses of the tables a root table (RSDT or XSDT) lists.
pub fn root_entries(bytes: &[u8], extended: bool) -> Result<Vec<u64>, AcpiError> {
    Ok(if extended {
        table(bytes, b"XSDT", "XSDT")?.as_chunks::<8>().0.iter().map(|e| u64_at(e, 0)).collect()
    } else {
        table(bytes, b"RSDT", "RSDT")?.as_chunks::<4>().0.iter().map(|e| u64::from(u32_at(e, 0))).collect()
    })
}

/// One processor the MADT lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub apic_id: u32,
    /// Enabled now, or online-capable (firmware may list hot-pluggable slots as neither).
    pub usable: bool,
}

/// The processors in a MADT ("APIC" table), from its local APIC and local x2APIC entries.
pub fn madt_cpus(bytes: &[u8]) -> Result<Vec<Cpu>, AcpiError> {
    let body = table(bytes, b"APIC", "MADT")?;
    need("MADT", body, 8)?;
    let mut cpus = Vec::new();
    let mut entries = &body[8..];
    while entries.len() >= 2 {
        let (kind, len) = (entries[0], entries[1] as usize);
        if len < 2 || len > entries.len() {
            return Err(AcpiError::Truncated { what: "MADT entry", need: len.max(2), have: entries.len() });
        }
        let entry = &entries[..len];
        let usable = |flags: u32| flags & 0b11 != 0;
        match kind {
            0 if len >= 8 => {
                cpus.push(Cpu { apic_id: u32::from(entry[3]), usable: usable(u32_at(entry, 4)) })
            }
            9 if len >= 16 => cpus.push(Cpu { apic_id: u32_at(entry, 4), usable: usable(u32_at(entry, 8)) }),
            _ => {}
        }
        entries = &entries[len..];
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let sum = bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        bytes[at] = 0u8.wrapping_sub(sum);
    }

    fn sdt(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER_LEN];
        t[..4].copy_from_slice(signature);
        t[4..8].copy_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    fn rsdp(revision: u8, rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = vec![0u8; RSDP_LEN];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[15] = revision;
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        r[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
        r[24..32].copy_from_slice(&xsdt.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        fix_checksum(&mut r, 32);
        r
    }

    /// A MADT like QEMU's for two CPUs, with an I/O APIC entry between them.
    fn madt() -> Vec<u8> {
        let mut body = vec![0, 0, 0xe0, 0xfe, 1, 0, 0, 0];
        body.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
        body.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        body.extend_from_slice(&[0, 8, 1, 1, 1, 0, 0, 0]);
        body.extend_from_slice(&[0, 8, 2, 7, 0, 0, 0, 0]);
        body.extend_from_slice(&[9, 16, 0, 0, 0x10, 1, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0]);
        sdt(b"APIC", &body)
    }

    #[test]
    fn rsdp_prefers_the_xsdt() {
        assert_eq!(parse_rsdp(&rsdp(2, 0x1000, 0x2000)), Ok(Root { address: 0x2000, extended: true }));
        assert_eq!(parse_rsdp(&rsdp(0, 0x1000, 0)[..20]), Ok(Root { address: 0x1000, extended: false }));
        assert_eq!(parse_rsdp(&rsdp(2, 0x1000, 0)), Ok(Root { address: 0x1000, extended: false }));
    }

    #[test]
    fn damaged_rsdp_is_refused() {
        let mut r = rsdp(2, 0x1000, 0x2000);
        r[17] ^= 1;
        assert_eq!(parse_rsdp(&r), Err(AcpiError::BadChecksum { what: "RSDP" }));
        r[0] = b'X';
        assert_eq!(parse_rsdp(&r), Err(AcpiError::BadSignature { what: "RSDP" }));
        assert!(matches!(parse_rsdp(&r[..10]), Err(AcpiError::Truncated { .. })));
    }

    #[test]
    fn root_tables_list_their_entries() {
        let xsdt = sdt(b"XSDT", &[0x10, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(root_entries(&xsdt, true), Ok(vec![0x10, 0x1_0000_0020]));
        let rsdt = sdt(b"RSDT", &[0x10, 0, 0, 0, 0x20, 0, 0, 0]);
        assert_eq!(root_entries(&rsdt, false), Ok(vec![0x10, 0x20]));
        assert_eq!(root_entries(&rsdt, true), Err(AcpiError::BadSignature { what: "XSDT" }));
    }

    #[test]
    fn madt_lists_usable_and_unusable_cpus() {
        let cpus = madt_cpus(&madt()).unwrap();
        assert_eq!(
            cpus,
            vec![
                Cpu { apic_id: 0, usable: true },
                Cpu { apic_id: 1, usable: true },
                Cpu { apic_id: 7, usable: false },
                Cpu { apic_id: 0x110, usable: true }
            ]
        );
    }

    #[test]
    fn madt_with_a_bad_entry_length_is_an_error() {
        let mut t = madt();
        t[HEADER_LEN + 8 + 1] = 200;
        fix_checksum(&mut t, 9);
        assert!(matches!(madt_cpus(&t), Err(AcpiError::Truncated { what: "MADT entry", .. })));
        let mut t = madt();
        t[HEADER_LEN + 8 + 1] = 0;
        fix_checksum(&mut t, 9);
        assert!(madt_cpus(&t).is_err());
    }

    #[test]
    fn table_longer_than_its_bytes_is_truncated() {
        let t = madt();
        assert!(matches!(madt_cpus(&t[..t.len() - 1]), Err(AcpiError::Truncated { what: "MADT", .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_rsdp(&bytes);
            let _ = header(&bytes);
            let _ = root_entries(&bytes, true);
            let _ = root_entries(&bytes, false);
            let _ = madt_cpus(&bytes);
        }

        #[test]
        fn damaged_madt_never_panics(flip in 0usize..80, value in any::<u8>(), fix in any::<bool>()) {
            let mut t = madt();
            let at = flip % t.len();
            t[at] = value;
            if fix && at != 9 {
                fix_checksum(&mut t, 9);
            }
            let _ = madt_cpus(&t);
        }
    }
}
