//! The syscall fuzzer's generator: programs from a seed, deterministically.
//!
//! Most ops are shaped like the calls a task makes (CREATE of a blob it filled, a tree or thunk
//! it composed from handles it holds, OPEN of a handle it holds), a quarter of them with one
//! argument wrong or at an edge, so that programs get deep into the kernel's state before one
//! call ends them; the rest are arbitrary. Every region, length class and kind is reachable, so
//! that the kernel's checks meet every combination over a long run.

use alloc::vec::Vec;

use crate::Rng;
use crate::program::{self, DATA_LEN, Forge, HANDLE_LEN, LenClass, MAX_ENTRIES, Op, Region, SLOTS, Value};

/// The arguments the kernel and `cairn fuzz --node` give the fuzz task, by slot: the program,
/// the fuzz procedure itself (for thunks that run more programs), a tree, and a blob large
/// enough to be lent to the task rather than copied.
pub mod args {
    pub const PROGRAM: u8 = 0;
    pub const PROCEDURE: u8 = 1;
    pub const TREE: u8 = 2;
    pub const BLOB: u8 = 3;
    pub const COUNT: u8 = 4;
}

/// Program `index` of the run seeded with `seed`.
pub fn program(seed: u64, index: u64) -> Vec<u8> {
    program::encode(&ops(&mut Rng::for_case(seed, index)))
}

/// A program whose result is known: it fills `len` bytes of the pattern `seed`, creates a blob
/// of them and ends, so the task returns that blob. Checks that the fuzz task itself works.
/// Returns the program and the blob's bytes.
pub fn check_program(seed: u32, len: u16) -> (Vec<u8>, Vec<u8>) {
    let len = len.min(DATA_LEN as u16);
    let ops = [
        Op::Fill { at: 0, len, seed },
        Op::Syscall {
            number: Value::Small(cairn_abi::SYS_CREATE as u8),
            args: [
                Value::Small(1),
                Value::Ptr { region: Region::Data, offset: 0 },
                Value::Raw(u64::from(len)),
                Value::Slot(SLOTS as u8 - 1),
            ],
        },
    ];
    let bytes = (0..usize::from(len)).map(|i| crate::pattern_byte(seed, i)).collect();
    (program::encode(&ops), bytes)
}

/// The ops of one program.
pub fn ops(rng: &mut Rng) -> Vec<Op> {
    let target = match rng.below(10) {
        0 => rng.range(0, 2),
        1..=6 => rng.range(3, 12),
        _ => rng.range(13, 40),
    } as usize;
    let mut g = Gen { rng, filled: (0..args::COUNT).collect(), ops: Vec::new() };
    while g.ops.len() < target {
        if g.step() {
            break;
        }
    }
    g.ops
}

struct Gen<'r> {
    rng: &'r mut Rng,
    /// Slots that hold a handle, as far as the generator knows.
    filled: Vec<u8>,
    ops: Vec<Op>,
}

fn syscall(number: u64, args: [Value; 4]) -> Op {
    Op::Syscall { number: Value::Small(number as u8), args }
}

impl Gen<'_> {
    /// Adds one step (a few ops); true if it ends the program.
    fn step(&mut self) -> bool {
        use cairn_abi::{SYS_EXIT, SYS_FAIL, SYS_OOM, SYS_OPEN};
        match self.rng.weighted(&[24, 11, 9, 16, 8, 5, 3, 2, 2, 1, 3, 4, 3]) {
            0 => self.create_blob(),
            1 => self.create_tree(),
            2 => return self.create_thunk(),
            3 => {
                let args = [self.handle_ref(), self.any(), self.any(), self.any()];
                let args = self.flawed(args, 1);
                self.ops.push(syscall(SYS_OPEN, args));
            }
            4 => {
                // Half of them where the task may touch (paging in), half anywhere.
                let addr = if self.rng.chance(50) {
                    let region = self.rng.pick(&[
                        Region::Data,
                        Region::HeapUntouched,
                        Region::HeapEnd,
                        Region::StackDeep,
                        Region::Opened,
                    ]);
                    Value::Ptr { region, offset: self.rng.range(0, 1 << 20) as i32 - 4096 }
                } else {
                    self.ptr()
                };
                self.ops.push(Op::Touch { addr, write: self.rng.chance(50) });
            }
            5 => {
                let slot = self.any_slot();
                let how = self.forge();
                // Literals and copies are handles a task may name; flips and noise are not.
                if matches!(how, Forge::Literal { .. } | Forge::Copy { .. }) {
                    self.filled.push(slot);
                }
                self.ops.push(Op::Forge { slot, how });
            }
            6 => {
                let rounds = self.rng.below(2000) as u16;
                self.ops.push(Op::Spin { rounds });
            }
            7 => {
                let args = [self.handle_ref(), self.any(), self.any(), self.any()];
                let args = self.flawed(args, 1);
                self.ops.push(syscall(SYS_EXIT, args));
                return true;
            }
            8 => {
                let op = syscall(SYS_FAIL, [self.ptr(), self.len(), self.any(), self.any()]);
                self.ops.push(op);
                return true;
            }
            9 => {
                let op = syscall(SYS_OOM, [self.any(), self.any(), self.any(), self.any()]);
                self.ops.push(op);
                return true;
            }
            10 => {
                let number = match self.rng.below(3) {
                    0 => Value::Small(self.rng.pick(&[5, 6, 7, 64, 255])),
                    1 => Value::Raw(self.rng.pick(&[1 << 32, u64::MAX, 1 << 63 | 3, 0x1_0000_0002])),
                    _ => Value::Raw(self.rng.next_u64()),
                };
                let args = [self.any(), self.any(), self.any(), self.any()];
                self.ops.push(Op::Syscall { number, args });
            }
            11 => {
                let number = Value::Small(self.rng.below(5) as u8);
                let args = [self.any(), self.any(), self.any(), self.any()];
                self.ops.push(Op::Syscall { number, args });
            }
            _ => self.arbitrary(),
        }
        false
    }

    /// With a chance of one in four, one of the first `relevant` arguments replaced by
    /// anything at all.
    fn flawed(&mut self, mut args: [Value; 4], relevant: u64) -> [Value; 4] {
        if self.rng.chance(25) {
            let i = self.rng.below(relevant) as usize;
            args[i] = self.any();
        }
        args
    }

    fn create_blob(&mut self) {
        let (ptr, len) = if self.rng.chance(75) {
            let at = self.data_at();
            let len = self.rng.pick(&[0, 1, 31, 32, 33, 40, 100, 2047, 2048, 4095, 4096, 4097, 9000]);
            let len = (len + self.rng.below(3)).min(DATA_LEN as u64) as u16;
            let seed = self.rng.next_u64() as u32;
            self.ops.push(Op::Fill { at, len, seed });
            (Value::Ptr { region: Region::Data, offset: i32::from(at) }, Value::Raw(u64::from(len)))
        } else {
            (self.ptr(), self.len())
        };
        let args = [self.kind(1), ptr, len, self.out()];
        let args = self.flawed(args, 4);
        self.ops.push(syscall(cairn_abi::SYS_CREATE, args));
    }

    /// Composes `entries` (slots) at a place in the data and CREATEs a `kind` of them.
    fn create_from(&mut self, kind: u64, entries: &[u8]) {
        let at = self.data_at();
        let mut slots = [0u8; MAX_ENTRIES];
        slots[..entries.len()].copy_from_slice(entries);
        self.ops.push(Op::Compose { at, count: entries.len() as u8, slots });
        let ptr = Value::Ptr { region: Region::Data, offset: i32::from(at) };
        let len = if self.rng.chance(90) {
            Value::Raw((entries.len() * HANDLE_LEN) as u64)
        } else {
            Value::Raw((entries.len() * HANDLE_LEN) as u64 + self.rng.range(1, 39))
        };
        let args = [self.kind(kind), ptr, len, self.out()];
        let args = self.flawed(args, 4);
        self.ops.push(syscall(cairn_abi::SYS_CREATE, args));
    }

    fn create_tree(&mut self) {
        let count = self.rng.range(0, MAX_ENTRIES as u64) as usize;
        let entries: Vec<u8> = (0..count).map(|_| self.held_slot()).collect();
        self.create_from(2, &entries);
    }

    /// A thunk of a procedure the task holds (usually itself); sometimes returned at once, a
    /// tail call that runs it.
    fn create_thunk(&mut self) -> bool {
        let limits_slot = self.any_slot();
        let bytes = match self.rng.below(10) {
            0 => 0,
            1 => self.rng.pick(&[4095, 4097, 1 << 40, u64::MAX]),
            2 => self.rng.next_u64(),
            _ => self.rng.pick(&[1, 16, 256, 1024, 4096, 65536]) << 12,
        };
        self.ops.push(Op::Forge { slot: limits_slot, how: Forge::Limits { bytes } });
        let procedure = if self.rng.chance(70) { crate::generate::args::PROCEDURE } else { self.held_slot() };
        let nargs = self.rng.range(0, MAX_ENTRIES as u64 - 2) as usize;
        let mut entries = alloc::vec![limits_slot, procedure];
        entries.extend((0..nargs).map(|_| self.held_slot()));
        self.create_from(3, &entries);
        if self.rng.chance(40)
            && let Some(Op::Syscall { args: [_, _, _, out], .. }) = self.ops.last()
        {
            let out = *out;
            let op = syscall(cairn_abi::SYS_EXIT, [out, self.any(), self.any(), self.any()]);
            self.ops.push(op);
            return true;
        }
        false
    }

    fn arbitrary(&mut self) {
        let op = match self.rng.below(5) {
            0 => Op::Fill {
                at: self.rng.next_u64() as u16,
                len: self.rng.next_u64() as u16,
                seed: self.rng.next_u64() as u32,
            },
            1 => {
                let count = self.rng.range(0, MAX_ENTRIES as u64) as u8;
                let slots =
                    core::array::from_fn(|i| if i < usize::from(count) { self.any_slot() } else { 0 });
                Op::Compose { at: self.rng.next_u64() as u16, count, slots }
            }
            2 => Op::Touch { addr: self.any(), write: self.rng.chance(50) },
            3 => Op::Forge { slot: self.any_slot(), how: Forge::Random { seed: self.rng.next_u64() as u32 } },
            _ => Op::Syscall { number: self.any(), args: [self.any(), self.any(), self.any(), self.any()] },
        };
        self.ops.push(op);
    }

    fn forge(&mut self) -> Forge {
        match self.rng.below(5) {
            0 => Forge::Literal { len: self.rng.below(33) as u8, seed: self.rng.next_u64() as u32 },
            1 => Forge::Limits { bytes: self.rng.pick(&[0, 4096, 4 << 20, 1 << 40]) },
            2 => Forge::Copy { from: self.held_slot() },
            3 => Forge::Flip {
                from: self.held_slot(),
                at: self.rng.below(HANDLE_LEN as u64) as u8,
                xor: self.rng.range(1, 255) as u8,
            },
            _ => Forge::Random { seed: self.rng.next_u64() as u32 },
        }
    }

    fn any_slot(&mut self) -> u8 {
        self.rng.below(SLOTS as u64) as u8
    }

    /// A slot that holds a handle, mostly.
    fn held_slot(&mut self) -> u8 {
        if self.rng.chance(90) { self.rng.pick(&self.filled) } else { self.any_slot() }
    }

    /// Where a handle is read from: mostly a slot; else an entry of the last opened object, or
    /// anywhere.
    fn handle_ref(&mut self) -> Value {
        match self.rng.below(20) {
            0..=16 => Value::Slot(self.held_slot()),
            17 => Value::Slot(self.any_slot()),
            18 => {
                Value::Ptr { region: Region::Opened, offset: (HANDLE_LEN as u64 * self.rng.below(5)) as i32 }
            }
            _ => self.ptr(),
        }
    }

    /// Where CREATE writes its handle: mostly a slot past the arguments, which then holds one.
    fn out(&mut self) -> Value {
        if self.rng.chance(90) {
            let slot = self.rng.range(u64::from(args::COUNT), SLOTS as u64 - 1) as u8;
            self.filled.push(slot);
            Value::Slot(slot)
        } else {
            self.ptr()
        }
    }

    fn kind(&mut self, usual: u64) -> Value {
        match self.rng.below(40) {
            0 => Value::Small(self.rng.pick(&[0, 1, 2, 3, 4])),
            1 => {
                let random = self.rng.next_u64();
                Value::Raw(self.rng.pick(&[1 << 32 | 1, u64::MAX, random]))
            }
            _ => Value::Small(usual as u8),
        }
    }

    fn data_at(&mut self) -> u16 {
        match self.rng.below(4) {
            0 => 0,
            1 => (DATA_LEN - self.rng.range(1, 600) as usize) as u16,
            _ => self.rng.below(DATA_LEN as u64 / 2) as u16,
        }
    }

    fn ptr(&mut self) -> Value {
        let region = match self.rng.below(10) {
            0..=2 => Region::Data,
            3 => Region::Slots,
            _ => self.rng.pick(&Region::ALL),
        };
        let offset = match self.rng.below(20) {
            0..=5 => 0,
            6..=8 => self.rng.below(64) as i32,
            9 | 10 => -(self.rng.range(1, 64) as i32),
            11..=15 => {
                let pages = self.rng.range(0, 16) as i32 - 4;
                pages * 4096 + self.rng.pick(&[-40, -1, 0, 1, 4095])
            }
            _ => self.rng.next_u64() as i32,
        };
        Value::Ptr { region, offset }
    }

    fn len(&mut self) -> Value {
        match self.rng.below(10) {
            0..=6 => Value::Len { class: self.rng.pick(&LenClass::ALL), extra: self.rng.next_u64() as u16 },
            7 | 8 => Value::Raw(self.rng.below(5000)),
            _ => Value::Raw(self.rng.next_u64()),
        }
    }

    /// Any operand at all.
    fn any(&mut self) -> Value {
        match self.rng.below(5) {
            0 => self.ptr(),
            1 => self.len(),
            2 => Value::Slot(self.any_slot()),
            3 => Value::Small(self.rng.next_u64() as u8),
            _ => Value::Raw(self.rng.next_u64()),
        }
    }
}
