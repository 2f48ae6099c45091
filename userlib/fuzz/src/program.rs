//! The syscall fuzzer's program format: what the `fuzz` task executes.
//!
//! A program is a sequence of operations, each an opcode byte and its operands. Decoding never
//! fails: an opcode or a choice is taken modulo the number of choices, and bytes past the end
//! read as zero, so every byte string is a program (the task runs whatever it is given) and
//! `decode(encode(ops)) == ops` for ops whose fields are in range.
//!
//! Operands are resolved when the op runs, against the task's [`Env`]: an address is a region
//! of the task's layout (cairn_abi::layout) plus an offset, a length is a class (zero,
//! page-crossing, near 2^64, ...) plus a detail, a handle is one of the task's slots. The task
//! keeps [`SLOTS`] handle slots, then [`DATA_LEN`] bytes of data, at the start of its heap (the
//! scratch area): its arguments are copied into the first slots, CREATE writes new handles
//! into them, and `Fill` and `Compose` write the bytes CREATE reads.

use alloc::vec::Vec;

use cairn_abi::layout;

pub const HANDLE_LEN: usize = 40;
/// Handle slots at the start of the scratch area.
pub const SLOTS: usize = 16;
/// Bytes of data after the slots.
pub const DATA_LEN: usize = 12 * 1024;
/// The scratch area: slots, then data. The task allocates it first, so it starts at the heap.
pub const SCRATCH_LEN: usize = SLOTS * HANDLE_LEN + DATA_LEN;
/// Most entries a `Compose` writes (a tree, or a thunk's limits, procedure and arguments).
pub const MAX_ENTRIES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `syscall` with `rax` = number and `rdi`, `rsi`, `rdx`, `r10` = args.
    Syscall { number: Value, args: [Value; 4] },
    /// Reads (or writes) one byte at an address.
    Touch { addr: Value, write: bool },
    /// A busy loop of `rounds` * 4 iterations.
    Spin { rounds: u16 },
    /// Writes a made-up handle into a slot.
    Forge { slot: u8, how: Forge },
    /// Writes the slots' handles back to back into the data at `at`: a tree's encoding, or a
    /// thunk's if the first is a limits literal and the second a procedure.
    Compose { at: u16, count: u8, slots: [u8; MAX_ENTRIES] },
    /// Writes `len` bytes of the pattern `seed` ([`crate::pattern_byte`]) into the data at `at`.
    Fill { at: u16, len: u16, seed: u32 },
}

/// How `Forge` makes a handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    /// A literal blob of `len` (at most 32) pattern bytes: valid, and nameable by anyone.
    Literal {
        len: u8,
        seed: u32,
    },
    /// A thunk's limits: a literal blob holding `bytes` as a little-endian u64.
    Limits {
        bytes: u64,
    },
    Copy {
        from: u8,
    },
    /// Another slot's handle with one byte changed.
    Flip {
        from: u8,
        at: u8,
        xor: u8,
    },
    /// 40 pattern bytes.
    Random {
        seed: u32,
    },
}

/// An operand, resolved at run time by [`Env::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    Ptr {
        region: Region,
        offset: i32,
    },
    Len {
        class: LenClass,
        extra: u16,
    },
    /// The address of a handle slot.
    Slot(u8),
    Small(u8),
    Raw(u64),
}

/// Where an address points: every region of the task's layout, its edges and what lies
/// between them (unmapped user space, the kernel half, non-canonical addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Image,
    ImageEnd,
    Args,
    /// The scratch data (heap the task touched).
    Data,
    Slots,
    /// Heap the task has not touched.
    HeapUntouched,
    /// The end of the heap: guard pages follow.
    HeapEnd,
    /// The stack pointer when the program started; frames of the task's callers lie above.
    Stack,
    /// 64 KiB below it: stack pages not touched yet.
    StackDeep,
    /// The lowest stack address; the guard page lies just below.
    StackLimit,
    StackTop,
    Objects,
    /// The last object SYS_OPEN mapped, and its end.
    Opened,
    OpenedEnd,
    Null,
    /// Unmapped user space between the arguments and the heap.
    UserHole,
    /// The end of the lower half: below it unmapped, above it non-canonical.
    UserTop,
    Kernel,
    /// The last page of the address space: lengths from here wrap past 2^64.
    KernelTop,
    NonCanonical,
}

impl Region {
    pub const ALL: [Region; 20] = [
        Region::Image,
        Region::ImageEnd,
        Region::Args,
        Region::Data,
        Region::Slots,
        Region::HeapUntouched,
        Region::HeapEnd,
        Region::Stack,
        Region::StackDeep,
        Region::StackLimit,
        Region::StackTop,
        Region::Objects,
        Region::Opened,
        Region::OpenedEnd,
        Region::Null,
        Region::UserHole,
        Region::UserTop,
        Region::Kernel,
        Region::KernelTop,
        Region::NonCanonical,
    ];
}

/// Classes of lengths, each with its edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LenClass {
    Zero,
    /// 1 to 64 bytes.
    Small,
    /// 0 to 8 handles' worth.
    Handles,
    /// About a page: 4032 to 4159.
    PageCross,
    /// 1 to 512 whole pages.
    Pages,
    /// The heap's size, give or take.
    Heap,
    /// The last opened object's length, give or take a byte.
    Opened,
    /// 2^32 to 2^62.
    Huge,
    /// Within 64 Ki of 2^64.
    NearMax,
    /// 2^63 and a little.
    HighBit,
}

impl LenClass {
    pub const ALL: [LenClass; 10] = [
        LenClass::Zero,
        LenClass::Small,
        LenClass::Handles,
        LenClass::PageCross,
        LenClass::Pages,
        LenClass::Heap,
        LenClass::Opened,
        LenClass::Huge,
        LenClass::NearMax,
        LenClass::HighBit,
    ];
}

/// What operands resolve against: the task's state when the op runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Env {
    /// From the arguments page's header.
    pub heap_bytes: u64,
    /// The stack pointer when the program started.
    pub stack: u64,
    /// The scratch area (slot 0).
    pub scratch: u64,
    /// Address and length of the last object SYS_OPEN mapped (0, 0 before any).
    pub opened: (u64, u64),
}

impl Env {
    pub fn slot(&self, i: u8) -> u64 {
        self.scratch + (usize::from(i) % SLOTS * HANDLE_LEN) as u64
    }

    pub fn data(&self) -> u64 {
        self.scratch + (SLOTS * HANDLE_LEN) as u64
    }

    pub fn base(&self, region: Region) -> u64 {
        let page = 4096;
        match region {
            Region::Image => layout::IMAGE_BASE,
            Region::ImageEnd => layout::IMAGE_END,
            Region::Args => layout::ARGS_BASE,
            Region::Data => self.data(),
            Region::Slots => self.scratch,
            Region::HeapUntouched => layout::HEAP_BASE + (SCRATCH_LEN as u64).next_multiple_of(page) + page,
            Region::HeapEnd => layout::HEAP_BASE.wrapping_add(self.heap_bytes),
            Region::Stack => self.stack,
            Region::StackDeep => self.stack.wrapping_sub(64 << 10),
            Region::StackLimit => layout::STACK_TOP - layout::STACK_MAX,
            Region::StackTop => layout::STACK_TOP,
            Region::Objects => layout::OBJECTS_BASE,
            Region::Opened => self.opened.0,
            Region::OpenedEnd => self.opened.0.wrapping_add(self.opened.1),
            Region::Null => 0,
            Region::UserHole => 0x1_0000_0000,
            Region::UserTop => 0x0000_8000_0000_0000,
            Region::Kernel => 0xffff_8000_0000_0000,
            Region::KernelTop => 0xffff_ffff_ffff_f000,
            Region::NonCanonical => 0x8000_0000_0000_0000,
        }
    }

    pub fn length(&self, class: LenClass, extra: u16) -> u64 {
        let extra = u64::from(extra);
        match class {
            LenClass::Zero => 0,
            LenClass::Small => 1 + extra % 64,
            LenClass::Handles => HANDLE_LEN as u64 * (extra % 9),
            LenClass::PageCross => 4032 + extra % 128,
            LenClass::Pages => (1 + extra % 512) * 4096,
            LenClass::Heap => self.heap_bytes.wrapping_add(extra as i16 as i64 as u64),
            LenClass::Opened => (self.opened.1 + extra % 3).wrapping_sub(1),
            LenClass::Huge => 1 << (32 + extra % 31),
            LenClass::NearMax => u64::MAX - extra,
            LenClass::HighBit => (1 << 63) + extra,
        }
    }

    pub fn resolve(&self, value: Value) -> u64 {
        match value {
            Value::Ptr { region, offset } => self.base(region).wrapping_add(i64::from(offset) as u64),
            Value::Len { class, extra } => self.length(class, extra),
            Value::Slot(i) => self.slot(i),
            Value::Small(n) => u64::from(n),
            Value::Raw(n) => n,
        }
    }
}

/// The bytes of a forged handle; `slot` reads another slot's current bytes.
pub fn forge(how: Forge, slot: impl Fn(u8) -> [u8; HANDLE_LEN]) -> [u8; HANDLE_LEN] {
    // A literal blob: kind 1, form 1, the length as a u48, the bytes, zeros.
    let literal = |bytes: &[u8]| {
        let mut h = [0u8; HANDLE_LEN];
        h[0] = 1;
        h[1] = 1;
        h[2..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes()[..6]);
        h[8..8 + bytes.len()].copy_from_slice(bytes);
        h
    };
    match how {
        Forge::Literal { len, seed } => {
            let mut bytes = [0u8; 32];
            let len = usize::from(len) % 33;
            for (i, b) in bytes[..len].iter_mut().enumerate() {
                *b = crate::pattern_byte(seed, i);
            }
            literal(&bytes[..len])
        }
        Forge::Limits { bytes } => literal(&bytes.to_le_bytes()),
        Forge::Copy { from } => slot(from),
        Forge::Flip { from, at, xor } => {
            let mut h = slot(from);
            h[usize::from(at) % HANDLE_LEN] ^= xor;
            h
        }
        Forge::Random { seed } => core::array::from_fn(|i| crate::pattern_byte(seed, i)),
    }
}

/// Reads ops from a program's bytes, lazily and without allocating (the task runs it so).
#[derive(Clone, Debug)]
pub struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes, at: 0 }
    }

    /// The next byte; zero past the end.
    fn u8(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at = self.at.saturating_add(1);
        b
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        core::array::from_fn(|_| self.u8())
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }

    fn slot(&mut self) -> u8 {
        self.u8() % SLOTS as u8
    }

    fn value(&mut self) -> Value {
        match self.u8() % 5 {
            0 => {
                let region = Region::ALL[usize::from(self.u8()) % Region::ALL.len()];
                Value::Ptr { region, offset: i32::from_le_bytes(self.le()) }
            }
            1 => {
                let class = LenClass::ALL[usize::from(self.u8()) % LenClass::ALL.len()];
                Value::Len { class, extra: self.u16() }
            }
            2 => Value::Slot(self.slot()),
            3 => Value::Small(self.u8()),
            _ => Value::Raw(self.u64()),
        }
    }

    fn forge(&mut self) -> Forge {
        match self.u8() % 5 {
            0 => Forge::Literal { len: self.u8() % 33, seed: self.u32() },
            1 => Forge::Limits { bytes: self.u64() },
            2 => Forge::Copy { from: self.slot() },
            3 => Forge::Flip { from: self.slot(), at: self.u8() % HANDLE_LEN as u8, xor: self.u8() },
            _ => Forge::Random { seed: self.u32() },
        }
    }
}

impl Iterator for Decoder<'_> {
    type Item = Op;

    fn next(&mut self) -> Option<Op> {
        if self.at >= self.bytes.len() {
            return None;
        }
        Some(match self.u8() % 6 {
            0 => {
                let number = self.value();
                Op::Syscall { number, args: core::array::from_fn(|_| self.value()) }
            }
            1 => Op::Touch { addr: self.value(), write: self.u8() & 1 == 1 },
            2 => Op::Spin { rounds: self.u16() },
            3 => Op::Forge { slot: self.slot(), how: self.forge() },
            4 => {
                let at = self.u16();
                let count = self.u8() % (MAX_ENTRIES as u8 + 1);
                let mut slots = [0u8; MAX_ENTRIES];
                for s in &mut slots[..usize::from(count)] {
                    *s = self.slot();
                }
                Op::Compose { at, count, slots }
            }
            _ => Op::Fill { at: self.u16(), len: self.u16(), seed: self.u32() },
        })
    }
}

/// The canonical bytes of a program.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        encode_op(op, &mut out);
    }
    out
}

fn encode_value(v: &Value, out: &mut Vec<u8>) {
    let index_of = |all: &[Region], r: Region| all.iter().position(|x| *x == r).unwrap_or(0) as u8;
    match *v {
        Value::Ptr { region, offset } => {
            out.extend_from_slice(&[0, index_of(&Region::ALL, region)]);
            out.extend_from_slice(&offset.to_le_bytes());
        }
        Value::Len { class, extra } => {
            let class = LenClass::ALL.iter().position(|c| *c == class).unwrap_or(0) as u8;
            out.extend_from_slice(&[1, class]);
            out.extend_from_slice(&extra.to_le_bytes());
        }
        Value::Slot(i) => out.extend_from_slice(&[2, i]),
        Value::Small(n) => out.extend_from_slice(&[3, n]),
        Value::Raw(n) => {
            out.push(4);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

fn encode_op(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::Syscall { number, args } => {
            out.push(0);
            encode_value(number, out);
            args.iter().for_each(|a| encode_value(a, out));
        }
        Op::Touch { addr, write } => {
            out.push(1);
            encode_value(addr, out);
            out.push(u8::from(*write));
        }
        Op::Spin { rounds } => {
            out.push(2);
            out.extend_from_slice(&rounds.to_le_bytes());
        }
        Op::Forge { slot, how } => {
            out.extend_from_slice(&[3, *slot]);
            match *how {
                Forge::Literal { len, seed } => {
                    out.extend_from_slice(&[0, len]);
                    out.extend_from_slice(&seed.to_le_bytes());
                }
                Forge::Limits { bytes } => {
                    out.push(1);
                    out.extend_from_slice(&bytes.to_le_bytes());
                }
                Forge::Copy { from } => out.extend_from_slice(&[2, from]),
                Forge::Flip { from, at, xor } => out.extend_from_slice(&[3, from, at, xor]),
                Forge::Random { seed } => {
                    out.push(4);
                    out.extend_from_slice(&seed.to_le_bytes());
                }
            }
        }
        Op::Compose { at, count, slots } => {
            out.push(4);
            out.extend_from_slice(&at.to_le_bytes());
            out.push(*count);
            out.extend_from_slice(&slots[..usize::from(*count).min(MAX_ENTRIES)]);
        }
        Op::Fill { at, len, seed } => {
            out.push(5);
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&seed.to_le_bytes());
        }
    }
}

/// Where `Fill` and `Compose` write in the data area: `at` wrapped into it, `len` cut to fit.
pub fn data_span(at: u16, len: usize) -> (usize, usize) {
    let at = usize::from(at) % DATA_LEN;
    (at, len.min(DATA_LEN - at))
}
