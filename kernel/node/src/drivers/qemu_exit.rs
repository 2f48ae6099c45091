//! Power off with a status the host can read.
//!
//! Under QEMU the `isa-debug-exit` device (port 0xf4) ends the VM with exit code
//! `(value << 1) | 1`: the kernel writes 0x10 for success (QEMU exits 33) and 0x11 for failure
//! (35). Without that device (a cloud VM) it falls back to QEMU's and Bochs' ACPI power-off
//! ports, and finally halts forever.

use x86_64::instructions::port::Port;

const DEBUG_EXIT_PORT: u16 = 0xf4;
pub const SUCCESS: u32 = 0x10;
pub const FAILURE: u32 = 0x11;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    Failure,
}

pub fn exit(status: Status) -> ! {
    let code = match status {
        Status::Success => SUCCESS,
        Status::Failure => FAILURE,
    };
    x86_64::instructions::interrupts::disable();
    // SAFETY: writes to the debug-exit port and the ACPI PM1a control ports only power the
    // machine off; if no device decodes them the writes are ignored and we fall through.
    unsafe {
        Port::<u32>::new(DEBUG_EXIT_PORT).write(code);
        Port::<u16>::new(0x604).write(0x2000); // QEMU q35/piix ACPI: S5
        Port::<u16>::new(0xb004).write(0x2000); // Bochs / old QEMU: S5
    }
    loop {
        x86_64::instructions::hlt();
    }
}
