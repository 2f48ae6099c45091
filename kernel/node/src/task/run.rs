//! One running application: its address space, registers and charges, the loop that runs it,
//! and what its faults mean.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use bytes::Bytes;
use cairn_abi::ARGS_HEADER;
use cairn_abi::layout::{ARGS_BASE, OBJECTS_BASE, STACK_TOP};
use cairn_eval::{Application, Failure};
use cairn_object::{Handle, HandleSet};
use cairn_uspace::{Budget, FaultAccess, FaultVerdict, OBJECTS_END, Region};

use super::image::{Image, ZeroFill};
use super::simd::Simd;
use super::{TaskCeilings, TaskStats, cpuid, syscall};
use crate::arch::clock;
use crate::arch::user::{self, Exit, UserContext};
use crate::memory::FRAME_SIZE;
use crate::memory::aspace::{AddressSpace, Perm};
use crate::memory::objects::NodeStore;

/// While a task keeps the kernel busy (syscalls, page-ins), the node still answers others
/// (`net::busy`) at least this often, as it does at every timer tick that preempts a task.
const SERVE_EVERY_US: u64 = 10_000;

/// Up to this many arguments are checked by a linear search, without allocating.
const GIVEN_INLINE: usize = 8;

pub(super) struct Task {
    pub space: AddressSpace,
    pub context: UserContext,
    pub limit_bytes: u64,
    pub heap_bytes: u64,
    /// Bytes charged to the memory limit: the image, arguments, heap and stack pages touched,
    /// copies of opened objects, and the bytes of every object created.
    charged_bytes: u64,
    pub ceilings: TaskCeilings,
    /// Objects and bytes created so far, against the node's ceilings.
    pub created_objects: u64,
    pub created_bytes: u64,
    pub budget: Budget,
    /// This CPU's store-lock waits (`PerCpu::store_wait_us`) already taken off the budget.
    waits_seen: u64,
    last_served: u64,
    /// Handles the task may name (EVAL-3): its arguments (`given`; a few are searched in place,
    /// more go into `known` too), what it created, and the entries of what it opened.
    pub given: smallvec::SmallVec<[Handle; GIVEN_INLINE]>,
    pub known: HandleSet,
    /// How many of `known` are arguments (which do not count against `task_handles`).
    args_known: usize,
    /// Objects mapped with SYS_OPEN: handle → (address, length), and the bytes kept alive
    /// while their pages are lent to the task.
    opened: BTreeMap<Handle, (u64, u64)>,
    pub lent: Vec<Bytes>,
    next_object: u64,
    pub args_pages: u64,
    /// Pages added while running (heap, stack, zero pages, objects): a reset unmaps them.
    pub added: Vec<u64>,
    /// Objects the task created, pinned in the store until it ends: a CREATE that makes room
    /// must never evict what the task made a moment ago (and may return, or put in a tree).
    pub created: Vec<Handle>,
}

pub(super) fn oom(limit: u64) -> Failure {
    Failure::OutOfMemory { limit }
}

impl Task {
    /// Sets up a task in `space`, which maps the image's file pages and the stack page, and
    /// `mapped_args` argument pages from an earlier task, whose first `used_args` bytes it
    /// filled. The caller checked that the image, arguments and stack page fit the limit.
    #[allow(clippy::too_many_arguments, reason = "one call site, each argument distinct")]
    pub fn new(
        mut space: AddressSpace,
        mapped_args: u64,
        used_args: u64,
        image: &Image,
        app: &Application<'_>,
        ceilings: TaskCeilings,
        budget_us: u64,
        now: u64,
    ) -> Result<Task, Failure> {
        let limit_bytes = app.limits.memory_bytes();
        let args_bytes = (ARGS_HEADER + app.args.len() * Handle::LEN) as u64;
        let args_pages = args_bytes.div_ceil(FRAME_SIZE);
        let fixed_pages = image.pages + args_pages + 1;
        let limit_pages = limit_bytes / FRAME_SIZE;
        if fixed_pages > limit_pages {
            return Err(oom(limit_bytes));
        }
        for page in args_pages..mapped_args {
            space.unmap(ARGS_BASE + page * FRAME_SIZE).map_err(|_| Failure::NodeOutOfMemory)?;
        }
        let heap_bytes = cairn_uspace::heap_bytes((limit_pages - fixed_pages) * FRAME_SIZE);
        // The page as one byte string: header, then the handles.
        let mut bytes: smallvec::SmallVec<[u8; 512]> = smallvec::SmallVec::new();
        bytes.try_reserve_exact(args_bytes as usize).map_err(|_| Failure::NodeOutOfMemory)?;
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
        let (mut given, mut known) = (smallvec::SmallVec::new(), HandleSet::new());
        let mut args_known = 0;
        if app.args.len() <= GIVEN_INLINE {
            given.extend(app.args.iter().copied());
        } else {
            known.try_extend(app.args.iter().copied()).map_err(|_| Failure::NodeOutOfMemory)?;
            args_known = known.len();
        }
        Ok(Task {
            space,
            context,
            limit_bytes,
            heap_bytes,
            charged_bytes: fixed_pages * FRAME_SIZE,
            ceilings,
            created_objects: 0,
            created_bytes: 0,
            budget: Budget::start(budget_us, now),
            waits_seen: crate::arch::percpu::current()
                .store_wait_us
                .load(core::sync::atomic::Ordering::Relaxed),
            last_served: now,
            given,
            known,
            args_known,
            opened: BTreeMap::new(),
            lent: Vec::new(),
            next_object: OBJECTS_BASE,
            args_pages,
            added: Vec::new(),
            created: Vec::new(),
        })
    }

    /// EVAL-3: only handles the task was given, created, or found in what it opened. A literal
    /// blob carries its content in the handle, so naming one reveals nothing: always allowed.
    pub fn check_known(&self, handle: &Handle) -> Result<(), Failure> {
        if handle.is_literal() || self.given.contains(handle) || self.known.contains(handle) {
            Ok(())
        } else {
            Err(Failure::ForgedHandle(*handle))
        }
    }

    /// Adds handles the task may name from now on, within the node's ceiling on how many one
    /// task may hold.
    pub fn learn(&mut self, handles: impl ExactSizeIterator<Item = Handle>) -> Result<(), Failure> {
        let held = self.known.len() - self.args_known + self.opened.len();
        let total = held.saturating_add(handles.len()) as u64;
        if total > self.ceilings.handles {
            return Err(Failure::NodeLimit(format!(
                "the task would name more than the {} handles this node allows one task",
                self.ceilings.handles
            )));
        }
        self.known.try_extend(handles).map_err(|_| Failure::NodeOutOfMemory)
    }

    /// Charges `bytes` to the task's memory limit: `out of memory` (deterministic: the same
    /// task asks for the same bytes at the same point every time) if they do not fit.
    pub fn charge(&mut self, bytes: u64) -> Result<(), Failure> {
        match self.charged_bytes.checked_add(bytes) {
            Some(total) if total <= self.limit_bytes => {
                self.charged_bytes = total;
                Ok(())
            }
            _ => Err(oom(self.limit_bytes)),
        }
    }

    pub fn run(
        &mut self,
        store: &mut NodeStore,
        image: &Image,
        stats: &mut TaskStats,
        simd: &mut Simd,
    ) -> Result<Handle, Failure> {
        simd.start();
        let outcome = self.run_loop(store, image, stats, simd);
        simd.finish();
        outcome
    }

    fn run_loop(
        &mut self,
        store: &mut NodeStore,
        image: &Image,
        stats: &mut TaskStats,
        simd: &mut Simd,
    ) -> Result<Handle, Failure> {
        loop {
            simd.resume();
            match user::run(&mut self.context) {
                Exit::Syscall => {
                    stats.syscalls += 1;
                    if let Some(done) = syscall::handle(self, store, image, simd)? {
                        return Ok(done);
                    }
                }
                Exit::Exception { vector: 14, error_code, cr2 } => {
                    self.page_fault(image, cr2, error_code)?;
                    stats.page_ins += 1;
                }
                // Hardware events that struck while the task ran are the node's, not the task's.
                Exit::Exception { vector: vector @ (2 | 18), .. } => {
                    return Err(Failure::NodeFault(format!(
                        "{} while the task ran",
                        cairn_uspace::exception_name(vector)
                    )));
                }
                Exit::Exception { vector, error_code, .. } => self.exception(vector, error_code)?,
                Exit::Interrupt => {
                    stats.preemptions += 1;
                    self.serve_others(store);
                }
            }
            // Ticks that land while the kernel works for the task count too: the budget is
            // checked after every return to the kernel, not only at preemptions.
            self.check_budget(store)?;
        }
    }

    /// Lets the node answer others (`net::busy`), without counting the time against the task.
    pub fn serve_others(&mut self, store: &NodeStore) {
        let now = clock::micros_since_boot();
        self.settle_waits();
        self.budget.pause(now);
        crate::net::busy::serve(store);
        let after = clock::micros_since_boot();
        self.budget.resume(after);
        // Waits while serving were not counted, so there is nothing to take off for them.
        self.waits_seen =
            crate::arch::percpu::current().store_wait_us.load(core::sync::atomic::Ordering::Relaxed);
        self.last_served = after;
    }

    /// Takes off the budget the time this CPU has waited for the store's lock since the last
    /// look: another CPU's work, not this task's (docs/ARCHITECTURE.md, "CPUs").
    pub fn settle_waits(&mut self) {
        let waited = crate::arch::percpu::current().store_wait_us.load(core::sync::atomic::Ordering::Relaxed);
        self.budget.forgive(waited.saturating_sub(self.waits_seen));
        self.waits_seen = waited;
    }

    /// `timeout` once the task has spent its budget; serves others if it is time to.
    pub fn check_budget(&mut self, store: &NodeStore) -> Result<(), Failure> {
        let now = clock::micros_since_boot();
        if now.saturating_sub(self.last_served) >= SERVE_EVERY_US {
            self.serve_others(store);
        }
        self.settle_waits();
        if self.budget.exceeded(clock::micros_since_boot()) {
            return Err(Failure::Timeout);
        }
        Ok(())
    }

    /// Maps the zero page at `addr` if the task may touch it there (heap, stack, or a zero page
    /// of the image), charging heap and stack pages to the limit. `Ok(false)` if `addr` is not
    /// such a page.
    fn page_in(&mut self, image: &Image, addr: u64, access: FaultAccess) -> Result<bool, Failure> {
        let page = addr & !(FRAME_SIZE - 1);
        if cairn_uspace::classify(addr, self.heap_bytes) == Region::Image {
            // Image pages were charged with the image.
            return match image.zero_fill(addr, access.write, access.execute) {
                ZeroFill::Page(perm) if !access.present => {
                    Image::map_zero(&mut self.space, page, perm)?;
                    self.added.push(page);
                    Ok(true)
                }
                _ => Ok(false),
            };
        }
        match cairn_uspace::page_fault_verdict(addr, access, self.heap_bytes) {
            FaultVerdict::PageIn => {
                self.added.try_reserve(1).map_err(|_| Failure::NodeOutOfMemory)?;
                self.charge(FRAME_SIZE)?;
                self.space.map_new(page, Perm::READ_WRITE).map_err(|_| Failure::NodeOutOfMemory)?;
                self.added.push(page);
                Ok(true)
            }
            FaultVerdict::OutOfMemory => Err(oom(self.limit_bytes)),
            FaultVerdict::StackOverflow => Err(Failure::Trap(format!(
                "stack overflow (the stack is at most {} KiB)",
                cairn_abi::layout::STACK_MAX / 1024
            ))),
            FaultVerdict::Violation => Ok(false),
        }
    }

    fn page_fault(&mut self, image: &Image, addr: u64, error_code: u64) -> Result<(), Failure> {
        let access = FaultAccess::from_error_code(error_code);
        if self.page_in(image, addr, access)? {
            return Ok(());
        }
        let what = if access.execute {
            "execute"
        } else if access.write {
            "write"
        } else {
            "read"
        };
        let why = if access.present { "not permitted" } else { "not mapped" };
        Err(Failure::Trap(format!("page fault: {what} of {addr:#x} ({why}) at rip={:#x}", self.context.rip)))
    }

    /// Makes `[ptr, ptr + len)` readable (or writable) by the kernel on the task's behalf as it
    /// would be by the task: heap, stack and zero pages it has not touched yet are paged in,
    /// as its own access would have. `false` if some of it is not the task's memory.
    pub fn touch(&mut self, image: &Image, ptr: u64, len: u64, write: bool) -> Result<bool, Failure> {
        if len == 0 {
            return Ok(true);
        }
        let Some(end) = ptr.checked_add(len).filter(|end| *end <= cairn_uspace::USER_END) else {
            return Ok(false);
        };
        let access = FaultAccess { present: false, write, execute: false };
        for page in ((ptr & !(FRAME_SIZE - 1))..end).step_by(FRAME_SIZE as usize) {
            if !self.space.is_mapped(page) && !self.page_in(image, page, access)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn exception(&mut self, vector: u64, error_code: u64) -> Result<(), Failure> {
        let rip = self.context.rip;
        // Up to 15 bytes (the longest instruction), as many as are mapped.
        let mut code = [0u8; 15];
        let readable = (FRAME_SIZE - rip % FRAME_SIZE).min(15) as usize;
        let have = if self.space.read(rip, &mut code) {
            15
        } else if self.space.read(rip, &mut code[..readable]) {
            readable
        } else {
            0
        };
        if vector == 13 && code[..have].starts_with(&[0x0f, 0xa2]) && user::cpuid_faulting() {
            cpuid::answer(&mut self.context);
            self.context.rip += 2;
            return Ok(());
        }
        let trap = cairn_uspace::name_trap(vector, error_code, &code[..have]);
        Err(Failure::Trap(format!("{trap} at rip={rip:#x}")))
    }

    /// SYS_OPEN's mapping: the object's pages lent read-only when it has pages of its own,
    /// otherwise a copy, charged to the task's limit. Opening the same object twice returns the
    /// same mapping.
    /// Returns `(address, length, first time)`.
    pub fn map_object(&mut self, store: &NodeStore, handle: &Handle) -> Result<(u64, u64, bool), Failure> {
        use cairn_object::store::Store;
        if let Some(&(addr, len)) = self.opened.get(handle) {
            return Ok((addr, len, false));
        }
        if (self.known.len() - self.args_known + self.opened.len()) as u64 >= self.ceilings.handles {
            return Err(Failure::NodeLimit(format!(
                "the task would name more than the {} handles this node allows one task",
                self.ceilings.handles
            )));
        }
        let base = self.next_object;
        let bytes = store.get(handle).ok_or(Failure::MissingObject(*handle))?;
        let len = bytes.len() as u64;
        let pages = len.div_ceil(FRAME_SIZE);
        // A guard page after each object; the window never runs into the stack.
        let next = base.saturating_add((pages + 1) * FRAME_SIZE);
        if next > OBJECTS_END {
            return Err(Failure::BadSyscall("the task opened more than its objects window holds".into()));
        }
        self.added.try_reserve(pages as usize).map_err(|_| Failure::NodeOutOfMemory)?;
        match store.frames_of(handle) {
            Some((phys, bytes)) => {
                self.lent.try_reserve(1).map_err(|_| Failure::NodeOutOfMemory)?;
                for i in 0..pages {
                    self.space
                        .map_borrowed(base + i * FRAME_SIZE, phys + i * FRAME_SIZE, Perm::READ)
                        .map_err(|_| Failure::NodeOutOfMemory)?;
                    self.added.push(base + i * FRAME_SIZE);
                }
                self.lent.push(bytes);
            }
            None => {
                // Small objects are always copied, and the copy is the task's. A large one is
                // copied only when it came from the disk and memory had no room for it: what
                // the task is charged must not depend on what the cache held.
                if len < crate::memory::objects::PAGE_ALIGNED_MIN as u64 {
                    self.charge(pages * FRAME_SIZE)?;
                }
                for (i, chunk) in bytes.chunks(FRAME_SIZE as usize).enumerate() {
                    let virt = base + i as u64 * FRAME_SIZE;
                    self.space
                        .map_new_filled(virt, Perm::READ, |f| f[..chunk.len()].copy_from_slice(chunk))
                        .map_err(|_| Failure::NodeOutOfMemory)?;
                    self.added.push(virt);
                }
            }
        }
        self.next_object = next;
        self.opened.insert(*handle, (base, len));
        Ok((base, len, true))
    }
}
