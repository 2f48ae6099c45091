//! Runs a thunk's procedure as a ring-3 task: the kernel side of docs/EVALUATION.md's executor.
//!
//! Each application gets a fresh address space with the ELF's segments, the argument handles,
//! and a heap and stack paged in on first touch against the thunk's memory limit. The task runs
//! until it exits, fails, faults, or exceeds the node's time budget; timer ticks preempt it so
//! that a looping task never holds the node.

pub mod builtin;
mod cpuid;
mod image;
mod syscall;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use bytes::Bytes;
use cairn_abi::ARGS_HEADER;
use cairn_abi::layout::{ARGS_BASE, STACK_TOP};
use cairn_eval::{Application, Executor, Failure};
use cairn_object::Handle;
use cairn_uspace::{FaultAccess, FaultVerdict};

use crate::arch::clock;
use crate::arch::user::{self, Exit, INITIAL_SIMD, SimdState, UserContext};
use crate::memory::FRAME_SIZE;
use crate::memory::aspace::{AddressSpace, Perm};
use crate::memory::objects::NodeStore;

/// Wall-clock budget of one application, in microseconds of the kernel's clock.
pub const DEFAULT_BUDGET_US: u64 = 2_000_000;

#[derive(Clone, Copy, Debug, Default)]
pub struct TaskStats {
    pub syscalls: u64,
    pub page_ins: u64,
    pub preemptions: u64,
}

pub struct TaskExecutor {
    pub budget_us: u64,
    pub stats: TaskStats,
    images: image::ImageCache,
    simd: Simd,
    /// The address space of the last task, kept to be reset and reused when the same procedure
    /// runs next: no page tables to build or free, no address-space switch.
    warm: Option<Warm>,
}

struct Warm {
    procedure: Handle,
    space: AddressSpace,
    args_pages: u64,
    /// Bytes of the argument pages the last task's arguments filled (the rest is zero).
    args_bytes: u64,
    /// Pages the last task added (heap, stack, opened objects), to unmap at reset.
    added: Vec<u64>,
    /// Objects whose pages the space still lends until reset.
    lent: Vec<Bytes>,
}

/// The running task's SIMD registers. The kernel touches SIMD registers only when it hashes
/// (creating objects), so they are saved only then, and restored before the task resumes.
pub struct Simd {
    state: alloc::boxed::Box<SimdState>,
    saved: bool,
}

impl Simd {
    fn start(&mut self) {
        INITIAL_SIMD.restore();
        self.saved = false;
    }

    /// Before kernel code that may use SIMD registers.
    pub fn save(&mut self) {
        if !self.saved {
            self.state.save();
            self.saved = true;
        }
    }

    fn resume(&mut self) {
        if self.saved {
            self.state.restore();
            self.saved = false;
        }
    }
}

impl TaskExecutor {
    pub fn new() -> TaskExecutor {
        TaskExecutor {
            budget_us: DEFAULT_BUDGET_US,
            stats: TaskStats::default(),
            images: image::ImageCache::default(),
            simd: Simd { state: alloc::boxed::Box::new(SimdState::new()), saved: false },
            warm: None,
        }
    }
}

impl Executor<NodeStore> for TaskExecutor {
    fn apply(&mut self, store: &mut NodeStore, app: &Application<'_>) -> Result<Handle, Failure> {
        let image = self.images.get(store, &app.procedure)?;
        let reused = match self.warm.take() {
            Some(warm) if warm.procedure == app.procedure => reset(warm, image),
            _ => None,
        };
        let fresh = reused.is_none();
        let (space, args_pages, args_bytes) = match reused {
            Some(reused) => reused,
            None => (fresh_space(image)?, 0, 0),
        };
        let mut task = Task::new(space, args_pages, args_bytes, image, app)?;
        if fresh {
            task.space.activate();
        }
        let outcome = task.run(store, &mut self.stats, &mut self.simd, self.budget_us);
        self.warm = Some(Warm {
            procedure: app.procedure,
            space: task.space,
            args_pages: task.args_pages,
            args_bytes: (ARGS_HEADER + app.args.len() * Handle::LEN) as u64,
            added: task.added,
            lent: task.lent,
        });
        outcome
    }
}

/// A new address space with the image and the top stack page mapped.
fn fresh_space(image: &image::Image) -> Result<AddressSpace, Failure> {
    let mut space = AddressSpace::new().map_err(|_| Failure::NodeOutOfMemory)?;
    image.map_into(&mut space)?;
    // Every task touches the top of its stack at once: map it now rather than fault.
    space.map_new(STACK_TOP - FRAME_SIZE, Perm::READ_WRITE).map_err(|_| Failure::NodeOutOfMemory)?;
    Ok(space)
}

/// Makes a used address space indistinguishable from a fresh one: pages the last task added
/// are gone, writable image pages and the stack page hold their initial contents. `None` (and
/// the space is dropped) if anything does not look as expected.
fn reset(mut warm: Warm, image: &image::Image) -> Option<(AddressSpace, u64, u64)> {
    for page in warm.added.drain(..) {
        warm.space.unmap(page).ok()?;
    }
    drop(warm.lent);
    if !image.reset(&mut warm.space) || !warm.space.refill_if_written(STACK_TOP - FRAME_SIZE, |f| f.fill(0)) {
        return None;
    }
    Some((warm.space, warm.args_pages, warm.args_bytes))
}

/// One running application.
struct Task {
    space: AddressSpace,
    context: UserContext,
    limit_bytes: u64,
    heap_bytes: u64,
    /// Pages charged to the memory limit: image, arguments, heap and stack.
    charged_pages: u64,
    /// Handles the task may name (EVAL-3): its arguments (`given`; a few are searched in place,
    /// more go into `known` too), what it created, and the entries of what it opened.
    given: smallvec::SmallVec<[Handle; GIVEN_INLINE]>,
    known: BTreeSet<Handle>,
    /// Objects mapped with SYS_OPEN: handle → (address, length), and the bytes kept alive
    /// while their pages are lent to the task.
    opened: BTreeMap<Handle, (u64, u64)>,
    lent: Vec<Bytes>,
    next_object: u64,
    args_pages: u64,
    /// Pages added while running (heap, stack, objects): a reset unmaps them.
    added: Vec<u64>,
}

/// Up to this many arguments are checked by a linear search, without allocating.
const GIVEN_INLINE: usize = 8;

fn oom(limit: u64) -> Failure {
    Failure::OutOfMemory { limit }
}

impl Task {
    /// Sets up a task in `space`, which maps the image and the stack page, and `mapped_args`
    /// argument pages from an earlier task, whose first `used_args` bytes it filled.
    fn new(
        mut space: AddressSpace,
        mapped_args: u64,
        used_args: u64,
        image: &image::Image,
        app: &Application<'_>,
    ) -> Result<Task, Failure> {
        let limit_bytes = app.limits.memory_bytes();
        let args_bytes = (ARGS_HEADER + app.args.len() * Handle::LEN) as u64;
        let args_pages = args_bytes.div_ceil(FRAME_SIZE);
        // Image, arguments and the top stack page.
        let fixed_pages = image.pages + args_pages + 1;
        let limit_pages = limit_bytes / FRAME_SIZE;
        if fixed_pages > limit_pages {
            return Err(oom(limit_bytes));
        }
        for page in args_pages..mapped_args {
            space.unmap(ARGS_BASE + page * FRAME_SIZE).map_err(|_| Failure::NodeOutOfMemory)?;
        }
        let heap_bytes = (limit_pages - fixed_pages) * FRAME_SIZE;
        // The page as one byte string: header, then the handles.
        let mut bytes: smallvec::SmallVec<[u8; 512]> = smallvec::SmallVec::with_capacity(args_bytes as usize);
        bytes.extend_from_slice(&heap_bytes.to_le_bytes());
        bytes.extend_from_slice(&(app.args.len() as u64).to_le_bytes());
        bytes.resize(ARGS_HEADER, 0);
        for h in app.args {
            bytes.extend_from_slice(h.as_bytes());
        }
        for page in 0..args_pages {
            let start = (page * FRAME_SIZE) as usize;
            let chunk = &bytes[start..bytes.len().min(start + FRAME_SIZE as usize)];
            // Only the part the earlier arguments used can be non-zero.
            let stale = used_args.saturating_sub(page * FRAME_SIZE).min(FRAME_SIZE) as usize;
            let fill = |frame: &mut [u8]| {
                frame[..stale].fill(0);
                frame[..chunk.len()].copy_from_slice(chunk);
            };
            let virt = ARGS_BASE + page * FRAME_SIZE;
            let ok = if page < mapped_args {
                space.refill(virt, fill)
            } else {
                space.map_new_filled(virt, Perm::READ, fill).is_ok()
            };
            if !ok {
                return Err(Failure::NodeOutOfMemory);
            }
        }

        let context = UserContext {
            rip: image.entry,
            // As if called: the entry function expects rsp ≡ 8 (mod 16).
            rsp: STACK_TOP - 8,
            rdi: ARGS_BASE + ARGS_HEADER as u64,
            rsi: app.args.len() as u64,
            rdx: heap_bytes,
            rflags: cairn_uspace::IF,
            ..UserContext::default()
        };
        Ok(Task {
            space,
            context,
            limit_bytes,
            heap_bytes,
            charged_pages: fixed_pages,
            given: if app.args.len() <= GIVEN_INLINE {
                app.args.iter().copied().collect()
            } else {
                Default::default()
            },
            known: if app.args.len() > GIVEN_INLINE {
                app.args.iter().copied().collect()
            } else {
                BTreeSet::new()
            },
            opened: BTreeMap::new(),
            lent: Vec::new(),
            next_object: cairn_abi::layout::OBJECTS_BASE,
            args_pages,
            added: Vec::new(),
        })
    }

    fn run(
        &mut self,
        store: &mut NodeStore,
        stats: &mut TaskStats,
        simd: &mut Simd,
        budget_us: u64,
    ) -> Result<Handle, Failure> {
        let started = clock::micros_since_boot();
        simd.start();
        loop {
            simd.resume();
            let exit = user::run(&mut self.context);
            match exit {
                Exit::Syscall => {
                    stats.syscalls += 1;
                    if let Some(done) = syscall::handle(self, store, simd)? {
                        return Ok(done);
                    }
                }
                Exit::Exception { vector: 14, error_code, cr2 } => {
                    self.page_fault(cr2, error_code)?;
                    stats.page_ins += 1;
                }
                Exit::Exception { vector, error_code, cr2 } => self.exception(vector, error_code, cr2)?,
                Exit::Interrupt => {
                    stats.preemptions += 1;
                    // The node keeps answering reads while it evaluates (net::busy).
                    crate::net::busy::serve(store);
                    if clock::micros_since_boot() - started > budget_us {
                        return Err(Failure::Timeout);
                    }
                }
            }
        }
    }

    fn page_fault(&mut self, addr: u64, error_code: u64) -> Result<(), Failure> {
        let access = FaultAccess::from_error_code(error_code);
        match cairn_uspace::page_fault_verdict(addr, access, self.heap_bytes) {
            FaultVerdict::PageIn => {
                if (self.charged_pages + 1) * FRAME_SIZE > self.limit_bytes {
                    return Err(oom(self.limit_bytes));
                }
                let page = addr & !(FRAME_SIZE - 1);
                self.space.map_new(page, Perm::READ_WRITE).map_err(|_| Failure::NodeOutOfMemory)?;
                self.added.push(page);
                self.charged_pages += 1;
                Ok(())
            }
            FaultVerdict::OutOfMemory => Err(oom(self.limit_bytes)),
            FaultVerdict::StackOverflow => Err(Failure::Trap(format!(
                "stack overflow (the stack is at most {} KiB)",
                cairn_abi::layout::STACK_MAX / 1024
            ))),
            FaultVerdict::Violation => {
                let what = if access.execute {
                    "execute"
                } else if access.write {
                    "write"
                } else {
                    "read"
                };
                let why = if access.present { "not permitted" } else { "not mapped" };
                Err(Failure::Trap(format!(
                    "page fault: {what} of {addr:#x} ({why}) at rip={:#x}",
                    self.context.rip
                )))
            }
        }
    }

    fn exception(&mut self, vector: u64, error_code: u64, _cr2: u64) -> Result<(), Failure> {
        let rip = self.context.rip;
        let mut code = [0u8; 2];
        let have_code = self.space.read(rip, &mut code);
        let what: String = match (vector, have_code.then_some(code)) {
            (13, Some([0x0f, 0xa2])) if user::cpuid_faulting() => {
                cpuid::answer(&mut self.context);
                self.context.rip += 2;
                return Ok(());
            }
            (13, Some([0x0f, 0x31])) | (13, Some([0x0f, 0x01])) => "RDTSC is not available to tasks".into(),
            (13, Some([0xf4, _])) => "privileged instruction (hlt)".into(),
            (13, Some([0xfa | 0xfb, _])) => "privileged instruction (cli/sti)".into(),
            (13, Some([0xe4..=0xe7 | 0xec..=0xef, _])) => "port I/O is not available to tasks".into(),
            (13, _) => format!("general protection fault (error code {error_code:#x})"),
            (6, _) => "invalid or unavailable instruction".into(),
            (1, _) => "debug trap (single-step)".into(),
            (v, _) => format!("{} (vector {v})", crate::arch::trap::exception_name(v)),
        };
        Err(Failure::Trap(format!("{what} at rip={rip:#x}")))
    }

    /// SYS_OPEN's mapping: the object's pages lent read-only when it has pages of its own,
    /// otherwise a copy. Opening the same object twice returns the same mapping.
    fn map_object(&mut self, store: &NodeStore, handle: &Handle) -> Result<(u64, u64), Failure> {
        use cairn_object::store::Store;
        if let Some(&mapped) = self.opened.get(handle) {
            return Ok(mapped);
        }
        let base = self.next_object;
        let len = match store.frames_of(handle) {
            Some((phys, bytes)) => {
                let len = bytes.len() as u64;
                for i in 0..len.div_ceil(FRAME_SIZE) {
                    self.space
                        .map_borrowed(base + i * FRAME_SIZE, phys + i * FRAME_SIZE, Perm::READ)
                        .map_err(|_| Failure::NodeOutOfMemory)?;
                    self.added.push(base + i * FRAME_SIZE);
                }
                self.lent.push(bytes);
                len
            }
            None => {
                let bytes = store.get(handle).ok_or(Failure::MissingObject(*handle))?;
                let len = bytes.len() as u64;
                for (i, chunk) in bytes.chunks(FRAME_SIZE as usize).enumerate() {
                    let virt = base + i as u64 * FRAME_SIZE;
                    self.space
                        .map_new_filled(virt, Perm::READ, |f| f[..chunk.len()].copy_from_slice(chunk))
                        .map_err(|_| Failure::NodeOutOfMemory)?;
                    self.added.push(virt);
                }
                len
            }
        };
        // A guard page between objects.
        self.next_object = base + (len.div_ceil(FRAME_SIZE) + 1) * FRAME_SIZE;
        self.opened.insert(*handle, (base, len));
        Ok((base, len))
    }
}
