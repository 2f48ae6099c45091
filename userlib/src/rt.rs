//! The task runtime: entry, syscalls, the heap allocator and the panic handler. Built only for
//! the bare-metal target, where tasks run.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};

use cairn_abi::{SYS_CREATE, SYS_EXIT, SYS_FAIL, SYS_OOM, SYS_OPEN, layout};
use cairn_object::{Handle, Kind, Limits, Thunk, Tree};

use crate::TaskResult;

/// Called by `task!`: sets up the heap, checks the arguments, runs the task, reports the result.
///
/// # Safety
/// `args` must point at `count` 40-byte handles that stay mapped and unchanged for the task's
/// life, as the kernel lays them out at entry.
pub unsafe fn start(
    args: *const u8,
    count: usize,
    _heap_bytes: usize,
    run: fn(&[Handle]) -> TaskResult,
) -> ! {
    // Nothing is written at start: a task that does not allocate leaves its data pages clean,
    // which makes the next run of the same procedure cheaper to set up.
    // SAFETY: the caller's contract: `count` 40-byte handles at `args`, read-only, for the task's
    // life.
    let raw = unsafe { core::slice::from_raw_parts(args, count * Handle::LEN) };
    for chunk in raw.as_chunks::<{ Handle::LEN }>().0 {
        if let Err(e) = Handle::from_bytes(chunk) {
            fail(&alloc::format!("argument is not a handle: {e}"));
        }
    }
    // SAFETY: Handle is a transparent wrapper of [u8; 40], and every chunk was just checked to
    // be a canonical handle; read in place, no heap needed.
    let handles = unsafe { core::slice::from_raw_parts(args as *const Handle, count) };
    match run(handles) {
        Ok(result) => exit(&result),
        Err(e) => fail(&e.0),
    }
}

fn exit(result: &Handle) -> ! {
    // SAFETY: SYS_EXIT reads 40 bytes at rdi and never returns.
    unsafe {
        core::arch::asm!("syscall", in("rax") SYS_EXIT, in("rdi") result.as_bytes().as_ptr(), options(noreturn));
    }
}

/// Ends the task with an error message.
pub fn fail(message: &str) -> ! {
    // SAFETY: SYS_FAIL reads `len` bytes at rdi and never returns.
    unsafe {
        core::arch::asm!("syscall", in("rax") SYS_FAIL, in("rdi") message.as_ptr(), in("rsi") message.len(),
            options(noreturn));
    }
}

fn out_of_memory() -> ! {
    // SAFETY: SYS_OOM takes no arguments and never returns.
    unsafe { core::arch::asm!("syscall", in("rax") SYS_OOM, options(noreturn)) }
}

/// The bytes of an object the task may name: a blob's content, or a tree's or thunk's encoding.
/// Mapped read-only by the kernel, not copied.
pub fn open(handle: &Handle) -> &'static [u8] {
    let (addr, len): (usize, usize);
    // SAFETY: SYS_OPEN reads 40 bytes at rdi and returns a read-only mapping that stays valid
    // for the rest of the task; the kernel ends the task instead of returning on any error.
    unsafe {
        core::arch::asm!("syscall", inout("rax") SYS_OPEN => addr, in("rdi") handle.as_bytes().as_ptr(),
            lateout("rdx") len, lateout("rcx") _, lateout("r11") _, options(nostack));
        core::slice::from_raw_parts(addr as *const u8, len)
    }
}

pub fn open_tree(handle: &Handle) -> Tree<'static> {
    if handle.kind() != Kind::Tree {
        fail(&alloc::format!("{handle} is not a tree"));
    }
    Tree::decode(open(handle)).unwrap_or_else(|e| fail(&alloc::format!("{e}")))
}

pub fn open_thunk(handle: &Handle) -> Thunk<'static> {
    Thunk::decode(open(handle)).unwrap_or_else(|e| fail(&alloc::format!("{e}")))
}

fn create(kind: Kind, bytes: &[u8]) -> Handle {
    let mut out = [0u8; Handle::LEN];
    // SAFETY: SYS_CREATE reads `len` bytes at rsi and writes 40 bytes at r10, both ours.
    unsafe {
        core::arch::asm!("syscall", inout("rax") SYS_CREATE => _, in("rdi") kind as u64, in("rsi") bytes.as_ptr(),
            in("rdx") bytes.len(), in("r10") out.as_mut_ptr(), lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    Handle::from_bytes(&out).unwrap_or_else(|e| fail(&alloc::format!("kernel returned a bad handle: {e}")))
}

pub fn create_blob(bytes: &[u8]) -> Handle {
    create(Kind::Blob, bytes)
}

pub fn create_tree(entries: &[Handle]) -> Handle {
    create(Kind::Tree, &cairn_object::tree::encode(entries))
}

pub fn create_thunk(limits: Limits, procedure: Handle, args: &[Handle]) -> Handle {
    match cairn_object::thunk::encode(limits, procedure, args) {
        Ok(encoding) => create(Kind::Thunk, &encoding),
        Err(p) => fail(&alloc::format!("{p}")),
    }
}

/// An IO request (docs/IO.md) for the task to return: the kernel performs it only if the job's
/// manifest grants it, and the task never sees more than the response it becomes.
pub fn io_request(effect: cairn_object::io::Effect, args: &[Handle]) -> Handle {
    create_thunk(cairn_object::io::limits(), effect.procedure(), args)
}

/// A bump allocator over the heap region: deterministic, and it never returns memory, which
/// suits short-lived tasks. Exhausting it ends the task with `out of memory`.
struct Bump;

static HEAP_NEXT: AtomicUsize = AtomicUsize::new(layout::HEAP_BASE as usize);

/// End of the heap, from the header of the arguments page.
fn heap_end() -> usize {
    // SAFETY: the kernel maps the arguments page, header first, for the task's whole life.
    let heap_bytes = unsafe { (layout::ARGS_BASE as *const u64).read() };
    layout::HEAP_BASE as usize + heap_bytes as usize
}

// SAFETY: hands out disjoint, suitably aligned ranges of the heap region (tasks are
// single-threaded; the atomics only avoid `static mut`).
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let start = HEAP_NEXT.load(Ordering::Relaxed).next_multiple_of(layout.align());
        match start.checked_add(layout.size()) {
            Some(end) if end <= heap_end() => {
                HEAP_NEXT.store(end, Ordering::Relaxed);
                start as *mut u8
            }
            _ => out_of_memory(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The most recent allocation can be given back; that makes Vec growth cheap.
        if ptr as usize + layout.size() == HEAP_NEXT.load(Ordering::Relaxed) {
            HEAP_NEXT.store(ptr as usize, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let next = HEAP_NEXT.load(Ordering::Relaxed);
        if ptr as usize + layout.size() == next {
            // Grow or shrink the last allocation in place.
            match (ptr as usize).checked_add(new_size) {
                Some(end) if end <= heap_end() => {
                    HEAP_NEXT.store(end, Ordering::Relaxed);
                    return ptr;
                }
                _ => out_of_memory(),
            }
        }
        // SAFETY: as GlobalAlloc::realloc's default: new block, copy, free the old one.
        unsafe {
            let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
            new
        }
    }
}

#[global_allocator]
static ALLOCATOR: Bump = Bump;

/// A panic ends the task with its message, formatted without allocating.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    struct Buf {
        bytes: [u8; 512],
        len: usize,
    }
    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.bytes.len() - self.len);
            self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
    let mut buf = Buf { bytes: [0; 512], len: 0 };
    let _ = write!(buf, "panic: {}", info.message());
    if let Some(location) = info.location() {
        let _ = write!(buf, " at {}:{}", location.file(), location.line());
    }
    // Cut at a character boundary.
    let mut end = buf.len;
    while core::str::from_utf8(&buf.bytes[..end]).is_err() {
        end -= 1;
    }
    fail(core::str::from_utf8(&buf.bytes[..end]).unwrap_or("panic"))
}
