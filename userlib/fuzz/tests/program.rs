//! The syscall fuzzer's format and generator on the host: any bytes decode, the canonical form
//! round-trips, seeds are deterministic, and the generator reaches every region, length class,
//! syscall, kind and handle source.

use std::collections::BTreeSet;

use cairn_abi::layout;
use cairn_fuzz::generate::{self, args};
use cairn_fuzz::program::{self, DATA_LEN, Decoder, Env, Forge, LenClass, Op, Region, SLOTS, Value};
use proptest::prelude::*;

fn decode(bytes: &[u8]) -> Vec<Op> {
    Decoder::new(bytes).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any byte string is a program, of at most one op per byte, whose canonical bytes decode
    /// to the same ops.
    #[test]
    fn any_bytes_decode_to_a_program(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let ops = decode(&bytes);
        prop_assert!(ops.len() <= bytes.len());
        prop_assert_eq!(ops.is_empty(), bytes.is_empty());
        prop_assert_eq!(decode(&program::encode(&ops)), ops);
    }

    /// Generated programs are canonical: their bytes decode to the ops they were made from.
    #[test]
    fn generated_programs_round_trip(seed: u64, index: u64) {
        let ops = generate::ops(&mut cairn_fuzz::Rng::for_case(seed, index));
        let bytes = program::encode(&ops);
        prop_assert_eq!(decode(&bytes), ops);
        prop_assert_eq!(generate::program(seed, index), bytes);
    }

    /// Resolving never panics, whatever the operand and the task's state.
    #[test]
    fn every_operand_resolves(bytes in proptest::collection::vec(any::<u8>(), 0..200), heap: u64, stack: u64, opened: (u64, u64)) {
        let env = Env { heap_bytes: heap, stack, scratch: layout::HEAP_BASE, opened };
        for op in decode(&bytes) {
            if let Op::Syscall { number, args } = op {
                env.resolve(number);
                args.iter().for_each(|a| { env.resolve(*a); });
            }
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_programs() {
    let a: Vec<Vec<u8>> = (0..200).map(|i| generate::program(42, i)).collect();
    let b: Vec<Vec<u8>> = (0..200).map(|i| generate::program(42, i)).collect();
    assert_eq!(a, b);
    let other: Vec<Vec<u8>> = (0..200).map(|i| generate::program(43, i)).collect();
    assert_ne!(a, other);
    let distinct: BTreeSet<&Vec<u8>> = a.iter().collect();
    assert!(distinct.len() > 180, "programs of one seed differ: {} distinct", distinct.len());
}

/// What the generator reached over many programs.
#[derive(Default)]
struct Seen {
    ops: BTreeSet<&'static str>,
    regions: BTreeSet<String>,
    lengths: BTreeSet<String>,
    numbers: BTreeSet<u64>,
    kinds: BTreeSet<u64>,
    handle_sources: BTreeSet<&'static str>,
    forges: BTreeSet<&'static str>,
}

impl Seen {
    fn value(&mut self, v: Value) {
        match v {
            Value::Ptr { region, .. } => self.regions.insert(format!("{region:?}")),
            Value::Len { class, .. } => self.lengths.insert(format!("{class:?}")),
            _ => false,
        };
    }
}

#[test]
fn the_generator_reaches_every_region_length_syscall_kind_and_handle_source() {
    let mut seen = Seen::default();
    for index in 0..20_000 {
        for op in decode(&generate::program(7, index)) {
            match op {
                Op::Syscall { number, args } => {
                    seen.ops.insert("syscall");
                    let n = match number {
                        Value::Small(n) => u64::from(n),
                        Value::Raw(n) => n,
                        _ => u64::MAX - 1,
                    };
                    seen.numbers.insert(n.min(5));
                    args.iter().for_each(|a| seen.value(*a));
                    match (n, args[0]) {
                        (3, Value::Small(k)) => {
                            seen.kinds.insert(u64::from(k).min(5));
                        }
                        (0 | 2, Value::Slot(s)) if s < args::COUNT => {
                            seen.handle_sources.insert("argument");
                        }
                        (0 | 2, Value::Slot(_)) => {
                            seen.handle_sources.insert("created or forged");
                        }
                        (0 | 2, Value::Ptr { region: Region::Opened, .. }) => {
                            seen.handle_sources.insert("opened tree");
                        }
                        _ => {}
                    }
                }
                Op::Touch { addr, write } => {
                    seen.ops.insert(if write { "write" } else { "read" });
                    seen.value(addr);
                }
                Op::Spin { .. } => {
                    seen.ops.insert("spin");
                }
                Op::Forge { how, .. } => {
                    seen.ops.insert("forge");
                    seen.forges.insert(match how {
                        Forge::Literal { .. } => "literal",
                        Forge::Limits { .. } => "limits",
                        Forge::Copy { .. } => "copy",
                        Forge::Flip { .. } => "flip",
                        Forge::Random { .. } => "random",
                    });
                }
                Op::Compose { .. } => {
                    seen.ops.insert("compose");
                }
                Op::Fill { .. } => {
                    seen.ops.insert("fill");
                }
            }
        }
    }
    let all = |names: Vec<String>| names.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(seen.regions, all(Region::ALL.iter().map(|r| format!("{r:?}")).collect()));
    assert_eq!(seen.lengths, all(LenClass::ALL.iter().map(|c| format!("{c:?}")).collect()));
    assert_eq!(seen.numbers, (0..=5).collect(), "syscalls 0..=4 and unknown ones");
    assert_eq!(seen.kinds, (0..=5).collect(), "kinds 0..=4 and others");
    assert_eq!(seen.ops.len(), 7, "{:?}", seen.ops);
    assert_eq!(seen.forges.len(), 5, "{:?}", seen.forges);
    assert_eq!(seen.handle_sources.len(), 3, "{:?}", seen.handle_sources);
}

#[test]
fn operands_resolve_into_the_layout_and_past_its_edges() {
    let env = Env {
        heap_bytes: 3 << 20,
        stack: layout::STACK_TOP - 512,
        scratch: layout::HEAP_BASE,
        opened: (layout::OBJECTS_BASE + 8192, 100),
    };
    let ptr = |region, offset| env.resolve(Value::Ptr { region, offset });
    assert_eq!(ptr(Region::Image, 0), layout::IMAGE_BASE);
    assert_eq!(ptr(Region::Args, 64), layout::ARGS_BASE + 64);
    assert_eq!(ptr(Region::Slots, 0), env.slot(0));
    assert_eq!(env.slot(SLOTS as u8 - 1) + 40, ptr(Region::Data, 0));
    assert_eq!(ptr(Region::HeapEnd, -1), layout::HEAP_BASE + (3 << 20) - 1);
    assert!(ptr(Region::HeapUntouched, 0) >= layout::HEAP_BASE + program::SCRATCH_LEN as u64);
    assert_eq!(ptr(Region::StackLimit, -1), layout::STACK_TOP - layout::STACK_MAX - 1);
    assert_eq!(ptr(Region::OpenedEnd, 0), layout::OBJECTS_BASE + 8192 + 100);
    assert_eq!(ptr(Region::UserTop, -1), 0x7fff_ffff_ffff, "the last user address");
    assert_eq!(ptr(Region::UserTop, 0), 0x8000_0000_0000, "the first non-canonical one");
    assert_eq!(ptr(Region::Kernel, 0), 0xffff_8000_0000_0000);
    // From the last page, a length near 2^64 wraps.
    let end = ptr(Region::KernelTop, 0).wrapping_add(env.length(LenClass::NearMax, 0));
    assert!(end < ptr(Region::KernelTop, 0));
    assert_eq!(env.length(LenClass::PageCross, 64), 4096);
    assert_eq!(env.length(LenClass::Opened, 0), 99);
    assert_eq!(env.length(LenClass::Heap, u16::MAX), (3 << 20) - 1);
    assert_eq!(env.length(LenClass::HighBit, 0), 1 << 63);
}

#[test]
fn forged_handles_are_literals_copies_or_noise() {
    let slot = |i: u8| [i; 40];
    let literal = program::forge(Forge::Literal { len: 5, seed: 9 }, slot);
    assert_eq!(&literal[..8], &[1, 1, 5, 0, 0, 0, 0, 0]);
    assert!(literal[13..].iter().all(|b| *b == 0));
    let limits = program::forge(Forge::Limits { bytes: 4 << 20 }, slot);
    assert_eq!(&limits[8..16], &(4u64 << 20).to_le_bytes());
    assert_eq!(program::forge(Forge::Copy { from: 3 }, slot), [3; 40]);
    let flipped = program::forge(Forge::Flip { from: 2, at: 41, xor: 0xff }, slot);
    assert_eq!((flipped[1], flipped[0]), (0xfd, 2), "the byte at 41 % 40");
}

#[test]
fn the_check_program_fills_creates_and_ends() {
    let (bytes, content) = generate::check_program(5, 300);
    let ops = decode(&bytes);
    assert_eq!(ops.len(), 2);
    assert!(matches!(ops[0], Op::Fill { at: 0, len: 300, seed: 5 }));
    assert!(matches!(ops[1], Op::Syscall { number: Value::Small(3), .. }));
    assert_eq!(content.len(), 300);
    assert_eq!(content[7], cairn_fuzz::pattern_byte(5, 7));
    assert_eq!(program::data_span(DATA_LEN as u16 - 10, 300), (DATA_LEN - 10, 10));
}
