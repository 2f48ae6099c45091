extern crate std;

use super::*;
use alloc::string::ToString;
use alloc::vec;
use proptest::prelude::*;

/// A minimal ELF: header, program headers, then each segment's bytes at its offset.
pub fn build(entry: u64, e_type: u16, phdrs: &[(u32, u32, u64, u64, u64, u64)]) -> Vec<u8> {
    let mut elf = vec![0u8; 0x3000];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[6] = 1;
    elf[16..18].copy_from_slice(&e_type.to_le_bytes());
    elf[18..20].copy_from_slice(&0x3eu16.to_le_bytes());
    elf[24..32].copy_from_slice(&entry.to_le_bytes());
    elf[32..40].copy_from_slice(&64u64.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    for (i, &(p_type, flags, offset, vaddr, filesz, memsz)) in phdrs.iter().enumerate() {
        let ph = &mut elf[64 + i * 56..][..56];
        ph[0..4].copy_from_slice(&p_type.to_le_bytes());
        ph[4..8].copy_from_slice(&flags.to_le_bytes());
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
    }
    elf
}

const RX: u32 = PF_R | PF_X;
const RW: u32 = PF_R | PF_W;

fn good() -> Vec<u8> {
    build(
        0x401010,
        2,
        &[(PT_LOAD, RX, 0x1000, 0x401000, 0x100, 0x100), (PT_LOAD, RW, 0x2000, 0x402000, 0x10, 0x5000)],
    )
}

#[test]
fn a_good_static_executable_is_planned() {
    let plan = plan(&good()).unwrap();
    assert_eq!(plan.entry, 0x401010);
    assert_eq!(plan.segments.len(), 2);
    assert_eq!(plan.segments[1].mem_size, 0x5000);
    assert_eq!(plan.pages(), 1 + 5);
}

#[test]
fn each_rule_is_enforced_with_its_own_error() {
    let seg = |problem| Err(ElfError::Segment { index: 0, problem });
    let one = |flags, offset, vaddr, filesz, memsz| {
        plan(&build(0x401000, 2, &[(PT_LOAD, flags, offset, vaddr, filesz, memsz)]))
    };
    assert_eq!(
        one(PF_R | PF_W | PF_X, 0x1000, 0x401000, 0x10, 0x10),
        seg(SegmentProblem::WritableAndExecutable)
    );
    assert_eq!(one(PF_W, 0x1000, 0x401000, 0x10, 0x10), seg(SegmentProblem::NoPermissions));
    assert_eq!(one(RX, 0x1000, 0x401000, 0x20, 0x10), seg(SegmentProblem::FileSizeExceedsMemorySize));
    assert_eq!(one(RX, 0x2f00, 0x401f00, 0x200, 0x200), seg(SegmentProblem::OutsideFile));
    assert_eq!(one(RX, u64::MAX - 4, 0x401000, 0x10, 0x10), seg(SegmentProblem::OutsideFile));
    assert_eq!(one(RX, 0x1000, 0x1000, 0x10, 0x10), seg(SegmentProblem::OutsideImageWindow));
    assert_eq!(one(RX, 0x1000, 0xffff_8000_0000_0000, 0x10, 0x10), seg(SegmentProblem::OutsideImageWindow));
    assert_eq!(one(RX, 0x1000, u64::MAX - 0x10, 0x10, 0x100), seg(SegmentProblem::OutsideImageWindow));
    assert_eq!(one(RX, 0x1000, 0x401008, 0x10, 0x10), seg(SegmentProblem::Misaligned));
    assert_eq!(
        plan(&build(
            0x401000,
            2,
            &[(PT_LOAD, RX, 0x1000, 0x401000, 0x10, 0x10), (PT_LOAD, RW, 0x1800, 0x401800, 0x10, 0x10)]
        )),
        Err(ElfError::Segment { index: 1, problem: SegmentProblem::Overlaps })
    );
    assert_eq!(
        plan(&build(0x402000, 2, &[(PT_LOAD, RX, 0x1000, 0x401000, 0x10, 0x10)])),
        Err(ElfError::EntryNotExecutable { entry: 0x402000 })
    );
    assert_eq!(plan(&build(0x401000, 3, &[])), Err(ElfError::NotStaticExecutable { e_type: 3 }));
    assert_eq!(plan(&build(0x401000, 2, &[])), Err(ElfError::NoLoadableSegment));
    assert_eq!(plan(&build(0x401000, 2, &[(PT_INTERP, PF_R, 0, 0, 0, 0)])), Err(ElfError::DynamicLinking));
    assert_eq!(plan(&build(0x401000, 2, &[(PT_TLS, PF_R, 0, 0, 0, 0)])), Err(ElfError::ThreadLocalStorage));
    assert_eq!(
        plan(&build(0x401000, 2, &[(PT_GNU_STACK, RW | PF_X, 0, 0, 0, 0)])),
        Err(ElfError::ExecutableStack)
    );
    let mut too_many = good();
    too_many[56..58].copy_from_slice(&500u16.to_le_bytes());
    assert_eq!(plan(&too_many), Err(ElfError::BadProgramHeaders));
    assert_eq!(plan(b"\x7fELF"), Err(ElfError::TooShort));
    assert_eq!(plan(&[0u8; 64]), Err(ElfError::NotElf));
    assert_eq!(
        ElfError::Segment { index: 2, problem: SegmentProblem::WritableAndExecutable }.to_string(),
        "segment 2: writable and executable"
    );
}

proptest! {
    /// Any mutation of a good ELF either is rejected or yields a plan that keeps every rule.
    #[test]
    fn mutated_elves_never_panic_and_plans_keep_the_rules(
        edits in proptest::collection::vec((0usize..0x200, any::<u8>()), 1..12)
    ) {
        let mut elf = good();
        for (at, value) in edits {
            elf[at] = value;
        }
        if let Ok(plan) = plan(&elf) {
            let mut last_end = 0;
            for s in &plan.segments {
                prop_assert!(!(s.perms.write && s.perms.execute));
                prop_assert!(s.vaddr >= IMAGE_BASE && s.vaddr + s.mem_size <= IMAGE_END);
                prop_assert!(s.file_offset + s.file_size <= elf.len() as u64);
                prop_assert!(s.pages().0 >= last_end);
                last_end = s.pages().1;
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = plan(&bytes);
    }
}
