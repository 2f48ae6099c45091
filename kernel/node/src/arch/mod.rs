//! x86_64 specifics: CPU setup, descriptor tables, traps, interrupt controller and clocks.

pub mod acpi;
pub mod clock;
pub mod cpu;
pub mod entropy;
pub mod gdt;
pub mod percpu;
pub mod pic;
pub mod probe;
pub mod rtc;
pub mod smp;
pub mod trap;
pub mod user;
