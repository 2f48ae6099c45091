//! GDT and TSS: kernel and user segments, and separate (IST) stacks for the exceptions that
//! can strike when the current stack is unusable.

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slots (1-based in the IDT, 0-based here).
pub const DOUBLE_FAULT_IST: u16 = 0;
pub const NMI_IST: u16 = 1;
pub const MACHINE_CHECK_IST: u16 = 2;
/// #DB and #BP too: a task can make #DB strike at the first instruction of the syscall entry,
/// before the kernel has switched stacks (`mov ss` then `syscall` with TF set), where it must
/// not run on the task's stack.
pub const DEBUG_IST: u16 = 3;
pub const BREAKPOINT_IST: u16 = 4;
const IST_COUNT: usize = 5;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(align(16))]
#[allow(dead_code, reason = "only the CPU uses the bytes, through the TSS")]
struct Stack([u8; IST_STACK_SIZE]);

static mut IST_STACKS: [Stack; IST_COUNT] = [const { Stack([0; IST_STACK_SIZE]) }; IST_COUNT];

pub struct Selectors {
    pub kernel_code: SegmentSelector,
    pub kernel_data: SegmentSelector,
    pub user_data: SegmentSelector,
    pub user_code: SegmentSelector,
    pub tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        for (slot, ist) in IST_SLOTS.into_iter().enumerate() {
            // SAFETY: each IST stack is handed out exactly once, here, and is only ever used by
            // the CPU as an interrupt stack.
            let stack = unsafe { &raw const IST_STACKS[slot] };
            let top = VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64;
            tss.interrupt_stack_table[ist as usize] = top;
        }
        tss
    });
    let (gdt, selectors) = GDT.call_once(|| build(tss));
    load_kernel_segments(gdt, selectors);
    // SAFETY: the selector names the TSS descriptor of the GDT just loaded, and the TSS lives
    // in a static.
    unsafe { load_tss(selectors.tss) };
}

const IST_SLOTS: [u16; IST_COUNT] = [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST, DEBUG_IST, BREAKPOINT_IST];

/// The order kernel code, kernel data, user data, user code is what SYSCALL/SYSRET expect;
/// every CPU's GDT has this layout, so the selectors are the same on all.
fn build(tss: &'static TaskStateSegment) -> (GlobalDescriptorTable, Selectors) {
    let mut gdt = GlobalDescriptorTable::new();
    let kernel_code = gdt.append(Descriptor::kernel_code_segment());
    let kernel_data = gdt.append(Descriptor::kernel_data_segment());
    let user_data = gdt.append(Descriptor::user_data_segment());
    let user_code = gdt.append(Descriptor::user_code_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    (gdt, Selectors { kernel_code, kernel_data, user_data, user_code, tss })
}

/// A GDT and TSS of its own for a CPU other than the boot CPU (a TSS descriptor is marked busy
/// once loaded, and each CPU needs its own RSP0 and IST stacks), with `rsp0` as the stack it
/// switches to when a task on it is interrupted. Runs on that CPU. None if the heap is out of
/// memory for the stacks.
pub fn init_other_cpu(rsp0: VirtAddr) -> Option<()> {
    let mut tss = TaskStateSegment::new();
    tss.privilege_stack_table[0] = rsp0;
    for ist in IST_SLOTS {
        let mut stack = alloc::vec::Vec::new();
        stack.try_reserve_exact(IST_STACK_SIZE).ok()?;
        stack.resize(IST_STACK_SIZE, 0u8);
        let stack = stack.leak();
        // 16-byte aligned top, inside the stack.
        let top = (stack.as_ptr() as u64 + IST_STACK_SIZE as u64) & !15;
        tss.interrupt_stack_table[ist as usize] = VirtAddr::new(top);
    }
    let tss: &'static TaskStateSegment = alloc::boxed::Box::leak(alloc::boxed::Box::new(tss));
    let (gdt, selectors) = build(tss);
    let (gdt, selectors): &'static (GlobalDescriptorTable, Selectors) =
        alloc::boxed::Box::leak(alloc::boxed::Box::new((gdt, selectors)));
    load_kernel_segments(gdt, selectors);
    // SAFETY: the selector names the TSS descriptor of the GDT just loaded on this CPU; both are
    // leaked, so they live as long as the CPU uses them.
    unsafe { load_tss(selectors.tss) };
    Some(())
}

/// Loads `gdt` and the kernel's code and data segments from it.
fn load_kernel_segments(gdt: &'static GlobalDescriptorTable, selectors: &Selectors) {
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, with the right privilege levels.
    unsafe {
        CS::set_reg(selectors.kernel_code);
        SS::set_reg(selectors.kernel_data);
        DS::set_reg(selectors.kernel_data);
        ES::set_reg(selectors.kernel_data);
    }
}

/// The stack the boot CPU switches to on an interrupt from ring 3 (TSS.RSP0).
pub fn set_kernel_stack(top: VirtAddr) {
    let tss = TSS.get().expect("gdt::init runs first");
    // SAFETY: RSP0 is read by the CPU only on a privilege change, which cannot happen while this
    // runs at boot (no task exists yet); the TSS lives in a static.
    unsafe {
        let rsp0 = &raw const tss.privilege_stack_table[0] as *mut VirtAddr;
        // The TSS is packed: the field is not 8-byte aligned.
        rsp0.write_unaligned(top);
    }
}

pub fn selectors() -> &'static Selectors {
    &GDT.get().expect("gdt::init runs first").1
}
