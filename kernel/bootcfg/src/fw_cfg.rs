//! QEMU's fw_cfg file directory (QEMU's docs/specs/fw_cfg.rst): how the kernel finds a named
//! file that the host handed QEMU with `-fw_cfg name=...,file=...`. The kernel reads the bytes
//! through the device's ports; finding the file in them is this pure function.

/// The selector of the file directory.
pub const DIRECTORY: u16 = 0x0019;
/// Each directory entry: size (u32), selector (u16), reserved (u16), name (56 bytes, NUL-padded),
/// all big-endian.
pub const ENTRY_LEN: usize = 64;
/// The most entries the kernel reads; QEMU has a few dozen at most.
pub const MAX_ENTRIES: u32 = 256;

/// The selector and size of the file `name` in `entries` (the directory after its count).
pub fn find(entries: &[u8], name: &str) -> Option<(u16, u32)> {
    entries.as_chunks::<ENTRY_LEN>().0.iter().find_map(|entry| {
        let size = u32::from_be_bytes(entry[0..4].try_into().ok()?);
        let select = u16::from_be_bytes(entry[4..6].try_into().ok()?);
        let raw = &entry[8..];
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        (&raw[..end] == name.as_bytes()).then_some((select, size))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn entry(size: u32, select: u16, name: &str) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&size.to_be_bytes());
        e.extend_from_slice(&select.to_be_bytes());
        e.extend_from_slice(&[0, 0]);
        let mut n = [0u8; 56];
        n[..name.len()].copy_from_slice(name.as_bytes());
        e.extend_from_slice(&n);
        e
    }

    #[test]
    fn finds_a_file_by_its_whole_name() {
        let mut dir = entry(10, 0x20, "etc/boot-menu-wait");
        dir.extend(entry(99, 0x21, "opt/cairn/keys"));
        dir.extend(entry(5, 0x22, "opt/cairn/keys2"));
        assert_eq!(find(&dir, "opt/cairn/keys"), Some((0x21, 99)));
        assert_eq!(find(&dir, "opt/cairn/key"), None);
        assert_eq!(find(&dir[..100], "opt/cairn/keys"), None, "a truncated entry is not read");
        let full = entry(1, 0x23, &"x".repeat(56));
        assert_eq!(find(&full, &"x".repeat(56)), Some((0x23, 1)));
    }
}
