//! In-kernel self tests: each case exercises one subsystem on the real (virtual) machine and
//! prints one line; the closing line is `N passed, M failed` and the node exits with success
//! only if M is 0.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use x86_64::structures::paging::PageTableFlags;

use crate::arch::{clock, probe, trap};
use crate::drivers::qemu_exit::Status;
use crate::memory::{self, OwnedFrame, heap, paging};
use crate::println;

type CaseResult = Result<(), String>;

type Case = (&'static str, fn() -> CaseResult);

const CASES: &[Case] = &[
    ("frames_alloc_free", frames_alloc_free),
    ("frames_contiguous", frames_contiguous),
    ("heap_alloc", heap_alloc),
    ("heap_small_classes", heap_small_classes),
    ("paging_map_unmap", paging_map_unmap),
    ("paging_mmio_hpet", paging_mmio_hpet),
    ("simd_enabled", simd_enabled),
    ("timer_ticks", timer_ticks),
    ("object_naming", object_naming),
    ("exception_breakpoint", exception_breakpoint),
    ("exception_invalid_opcode", exception_invalid_opcode),
    ("exception_page_fault", exception_page_fault),
];

fn check(ok: bool, what: impl FnOnce() -> String) -> CaseResult {
    if ok { Ok(()) } else { Err(what()) }
}

pub fn run_all() -> Status {
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in CASES {
        match case() {
            Ok(()) => {
                passed += 1;
                println!("selftest {name} ... ok");
            }
            Err(why) => {
                failed += 1;
                println!("selftest {name} ... FAILED: {why}");
            }
        }
    }
    println!("selftest: {passed} passed, {failed} failed");
    if failed == 0 { Status::Success } else { Status::Failure }
}

/// The fault-test mode: an unmapped read that nobody expects must be reported with its CR2 and
/// stop the node with a failure status.
pub fn deliberate_fault() -> Status {
    const UNMAPPED: u64 = 0x0000_0dea_dbee_f000;
    log::info!("fault-test: reading unmapped address {UNMAPPED:#x}");
    let value = probe::read_u64(UNMAPPED);
    println!("cairn: fault-test: read {value:#x} from an unmapped address without a fault");
    Status::Failure
}

fn frames_alloc_free() -> CaseResult {
    let before = memory::free_frame_count();
    let mut frame = OwnedFrame::alloc().ok_or("no free frame")?;
    check(frame.bytes().iter().all(|&b| b == 0), || "fresh frame is not zeroed".into())?;
    frame.bytes_mut()[..4].copy_from_slice(b"cain");
    check(frame.bytes()[..4] == *b"cain", || "frame does not keep what was written".into())?;
    check(memory::free_frame_count() == before - 1, || "free count did not drop by one".into())?;
    let phys = frame.phys();
    drop(frame);
    check(memory::free_frame_count() == before, || "free count not restored after free".into())?;
    check(memory::free_frames(phys, 1).is_err(), || format!("double free of {phys:#x} accepted"))
}

fn frames_contiguous() -> CaseResult {
    let phys = memory::alloc_contiguous(16, 0x10000).ok_or("no 16 contiguous frames")?;
    check(phys % 0x10000 == 0, || format!("{phys:#x} is not 64 KiB aligned"))?;
    memory::free_frames(phys, 16).map_err(|e| format!("{e}"))
}

fn heap_alloc() -> CaseResult {
    let (used_before, _) = heap::usage();
    let big: Vec<u64> = (0..(1u64 << 20)).collect(); // 8 MiB
    let boxed = Box::new([7u8; 4096]);
    check(big.iter().rev().take(3).eq([(1 << 20) - 1, (1 << 20) - 2, (1 << 20) - 3].iter()), || {
        "large vector lost its contents".into()
    })?;
    check(boxed.iter().all(|&b| b == 7), || "boxed array lost its contents".into())?;
    let (used_during, _) = heap::usage();
    check(used_during >= used_before + (8 << 20), || "heap usage did not grow".into())?;
    drop((big, boxed));
    let (used_after, _) = heap::usage();
    check(used_after == used_before, || format!("heap leaked {} bytes", used_after - used_before))
}

/// Small allocations come from size classes: a second round of the same allocations reuses
/// the blocks the first freed, taking no new slab from the general heap.
fn heap_small_classes() -> CaseResult {
    let round = || (0..50_000u32).map(|i| Box::new([i; 10])).collect::<Vec<_>>();
    drop(round());
    let slabs_before = heap::small_stats().slabs;
    let boxes = round();
    check(boxes.iter().enumerate().all(|(i, b)| b[9] == i as u32), || {
        "a small box lost its contents".into()
    })?;
    let slabs_after = heap::small_stats().slabs;
    drop(boxes);
    check(slabs_after == slabs_before, || {
        format!("{} new slabs for blocks freed before", slabs_after - slabs_before)
    })
}

fn paging_map_unmap() -> CaseResult {
    let virt = paging::SCRATCH_BASE;
    let mut frame = OwnedFrame::alloc().ok_or("no free frame")?;
    frame.bytes_mut()[8..16].copy_from_slice(&0x5ca1_ab1e_u64.to_le_bytes());
    let flags = PageTableFlags::PRESENT | PageTableFlags::NO_EXECUTE;
    paging::map_page(virt, frame.phys(), flags).map_err(|e| format!("map: {e}"))?;
    let translated = paging::translate(virt + 8);
    let read = probe::read_u64(virt + 8);
    let unmapped = paging::unmap_page(virt).map_err(|e| format!("unmap: {e}"))?;
    check(translated == Some(frame.phys() + 8), || format!("translate gave {translated:x?}"))?;
    check(read == 0x5ca1_ab1e, || format!("read {read:#x} through the new mapping"))?;
    check(unmapped == frame.phys(), || "unmap returned another frame".into())?;
    check(paging::translate(virt).is_none(), || "page still mapped after unmap".into())
}

/// Maps the HPET's registers (QEMU places it at 0xfed00000 on both machine types) through the
/// MMIO window and reads its capabilities register, once uncached and once through the linear map.
fn paging_mmio_hpet() -> CaseResult {
    const HPET_PHYS: u64 = 0xfed0_0000;
    let virt = paging::map_mmio(HPET_PHYS, 0x400).map_err(|e| format!("map_mmio: {e}"))?;
    check(virt >= paging::MMIO_BASE, || format!("MMIO mapped at {virt:#x}, outside the window"))?;
    let caps = probe::read_u64(virt);
    let linear = probe::read_u64(memory::phys_to_virt(HPET_PHYS) as u64);
    let period_fs = caps >> 32;
    check(caps == linear, || format!("capabilities {caps:#x} via MMIO, {linear:#x} via linear map"))?;
    // The HPET spec bounds the tick period to (0, 100 ns].
    check(period_fs > 0 && period_fs <= 100_000_000, || format!("HPET capabilities {caps:#x}"))
}

fn simd_enabled() -> CaseResult {
    let avx = crate::arch::cpu::enable_simd().avx;
    let sum = probe::simd_sum(avx);
    check(sum == 42, || format!("SIMD arithmetic gave {sum}"))
}

fn timer_ticks() -> CaseResult {
    let (ticks0, us0) = (clock::ticks(), clock::micros_since_boot());
    clock::sleep_ms(100);
    let (ticks1, us1) = (clock::ticks(), clock::micros_since_boot());
    let elapsed_ticks = ticks1 - ticks0;
    let elapsed_us = us1 - us0;
    // 100 ms is 10 ticks at 100 Hz; emulation can drop or bunch ticks, so allow slack.
    check(elapsed_us >= 100_000, || format!("sleep_ms(100) returned after {elapsed_us} us"))?;
    check((5..=40).contains(&elapsed_ticks), || {
        format!("{elapsed_ticks} timer ticks in {elapsed_us} us (expected about 10)")
    })
}

/// The object model runs in the kernel as on the host: a literal, and a large blob whose
/// BLAKE3 digest (computed by the host's `blake3` for the same bytes) must match, whichever SIMD
/// path the CPU offers.
fn object_naming() -> CaseResult {
    use cairn_object::Handle;
    let hello = Handle::blob(b"hello");
    check(format!("{hello}") == "blob:=68656c6c6f", || format!("hello named {hello}"))?;
    let fox = Handle::blob(b"The quick brown fox jumps over the lazy dog").digest();
    let want = "2f1514181aadccd913abd94cfa592701a5686ab23f8df1dff1b74710febc6d4a";
    check(format!("{fox}") == want, || format!("fox digest {fox}"))?;
    // 1 MiB of a byte pattern: long enough for blake3's multi-chunk SIMD paths.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = Handle::blob(&big).digest();
    let want = "74cb441fd087764ca9c3694da742ebe30cbeb3060a17009ca81825c7a8d10343";
    check(format!("{digest}") == want, || format!("1 MiB pattern digest {digest}"))
}

fn exception_breakpoint() -> CaseResult {
    let report = trap::catch_exception(3, 0, probe::breakpoint).ok_or("int3 was not caught")?;
    check(report.vector == 3, || format!("caught vector {}", report.vector))
}

fn exception_invalid_opcode() -> CaseResult {
    let report =
        trap::catch_exception(6, probe::UD2_LEN, probe::invalid_opcode).ok_or("ud2 was not caught")?;
    check(report.vector == 6, || format!("caught vector {}", report.vector))
}

fn exception_page_fault() -> CaseResult {
    const UNMAPPED: u64 = 0x0000_0bad_c0de_0000;
    let report = trap::catch_exception(14, probe::READ_LEN, || {
        probe::read_u64(UNMAPPED);
    })
    .ok_or("the unmapped read was not caught")?;
    check(report.cr2 == UNMAPPED, || format!("cr2={:#x}, expected {UNMAPPED:#x}", report.cr2))?;
    // Error code: not present (bit 0 clear), read (bit 1 clear), supervisor (bit 2 clear).
    check(report.error_code & 0b111 == 0, || format!("error code {:#x}", report.error_code))
}
