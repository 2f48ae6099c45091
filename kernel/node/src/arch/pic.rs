//! The legacy 8259 interrupt controllers, remapped to vectors 32..48, with only the lines the
//! kernel handles unmasked. A unikernel on one CPU needs nothing more elaborate yet.

use core::sync::atomic::{AtomicU16, Ordering};

use x86_64::instructions::port::Port;

const PIC1_CMD: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_CMD: u16 = 0xa0;
const PIC2_DATA: u16 = 0xa1;
const EOI: u8 = 0x20;
pub const TIMER_IRQ: u8 = 0;

pub fn init() {
    // SAFETY: the standard ICW1-ICW4 initialisation sequence of the two PICs, done once at boot
    // with interrupts off. Afterwards every line but the timer is masked.
    unsafe {
        let mut cmd1 = Port::<u8>::new(PIC1_CMD);
        let mut data1 = Port::<u8>::new(PIC1_DATA);
        let mut cmd2 = Port::<u8>::new(PIC2_CMD);
        let mut data2 = Port::<u8>::new(PIC2_DATA);
        cmd1.write(0x11);
        cmd2.write(0x11);
        data1.write(32); // vector offset of IRQ 0-7
        data2.write(40); // vector offset of IRQ 8-15
        data1.write(4); // slave on IRQ 2
        data2.write(2);
        data1.write(0x01); // 8086 mode
        data2.write(0x01);
        data1.write(!(1 << TIMER_IRQ) & !(1 << 2));
        data2.write(0xff);
    }
}

/// The network card's interrupt line, once it has one (0xff: none).
/// Lines of devices whose interrupts only wake the node: masked when they fire, unmasked by
/// the driver once it has looked (bit per IRQ).
static DEVICE_IRQS: AtomicU16 = AtomicU16::new(0);

/// Routes a device's level-triggered line: on each interrupt the line is masked (the device
/// keeps it asserted until its driver acknowledges it), and the main loop, woken from `hlt`,
/// acknowledges the device and calls [`unmask`].
pub fn route_device(irq: u8) {
    DEVICE_IRQS.fetch_or(1 << irq, Ordering::Relaxed);
    unmask(irq);
}

pub fn unmask(irq: u8) {
    set_mask(irq, false);
}

fn set_mask(irq: u8, masked: bool) {
    let (port, bit) = if irq < 8 { (PIC1_DATA, irq) } else { (PIC2_DATA, irq - 8) };
    // SAFETY: read-modify-write of the PIC's interrupt mask register (OCW1); only this kernel
    // changes it, with interrupts off or from the interrupt handler itself.
    x86_64::instructions::interrupts::without_interrupts(|| unsafe {
        let mut data = Port::<u8>::new(port);
        let mask = data.read();
        data.write(if masked { mask | (1 << bit) } else { mask & !(1 << bit) });
    });
}

pub fn handle_irq(irq: u8) {
    // Spurious interrupts (IRQ 7 / 15 without the in-service bit) must not be acknowledged.
    if (irq == 7 || irq == 15) && !in_service(irq) {
        if irq == 15 {
            eoi(2);
        }
        return;
    }
    if irq == TIMER_IRQ {
        super::clock::on_tick();
    } else if DEVICE_IRQS.load(Ordering::Relaxed) & (1 << irq) != 0 {
        set_mask(irq, true);
    }
    eoi(irq);
}

fn in_service(irq: u8) -> bool {
    let (cmd, bit) = if irq < 8 { (PIC1_CMD, irq) } else { (PIC2_CMD, irq - 8) };
    // SAFETY: OCW3 "read ISR" followed by a read of the same command port has no side effects.
    unsafe {
        let mut port = Port::<u8>::new(cmd);
        port.write(0x0b);
        port.read() & (1 << bit) != 0
    }
}

fn eoi(irq: u8) {
    // SAFETY: writing EOI to the PIC(s) that raised `irq` is what the protocol requires.
    unsafe {
        if irq >= 8 {
            Port::<u8>::new(PIC2_CMD).write(EOI);
        }
        Port::<u8>::new(PIC1_CMD).write(EOI);
    }
}
