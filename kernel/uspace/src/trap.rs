//! What a task's trap was, named from the vector, the error code and the bytes at its RIP, so a
//! task's failure says what it tried (`RDTSC is not available to tasks`) rather than only which
//! exception the CPU raised. Every trap gets its own name (docs/SECURITY.md).

use core::fmt;

/// A task's trap, for its failure message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// An instruction tasks may not execute, by what it is.
    Forbidden(&'static str),
    /// A privileged instruction, by mnemonic.
    Privileged(&'static str),
    /// `int N` (the IDT's gates are for the kernel only).
    SoftwareInterrupt(u8),
    /// A #GP that is none of the above.
    GeneralProtection { error_code: u64 },
    /// Any other exception, by name.
    Exception { vector: u64, name: &'static str },
}

impl fmt::Display for Trap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trap::Forbidden(what) => f.write_str(what),
            Trap::Privileged(mnemonic) => write!(f, "privileged instruction ({mnemonic})"),
            Trap::SoftwareInterrupt(n) => {
                write!(f, "software interrupt (int {n:#x}) is not available to tasks")
            }
            Trap::GeneralProtection { error_code } => {
                write!(f, "general protection fault (error code {error_code:#x})")
            }
            Trap::Exception { vector, name } => write!(f, "{name} (vector {vector})"),
        }
    }
}

/// The architectural name of an exception vector.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug trap (single-step)",
        2 => "non-maskable interrupt",
        3 => "breakpoint (int3)",
        4 => "overflow (into)",
        5 => "bound range exceeded",
        6 => "invalid or unavailable instruction",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating-point error",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point error",
        20 => "virtualization exception",
        21 => "control protection exception",
        28 => "hypervisor injection exception",
        29 => "VMM communication exception",
        30 => "security exception",
        _ => "reserved exception",
    }
}

/// Legacy prefixes and REX, which may precede the opcode.
fn is_prefix(byte: u8) -> bool {
    matches!(byte, 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f)
}

/// Whether a #GP's error code points at IDT entry `n` (set by `int n` to a kernel gate).
fn is_idt_error(error_code: u64, n: u8) -> bool {
    error_code == (u64::from(n) << 3) | 2 || error_code == (u64::from(n) << 4) | 2
}

/// Names a trap from its vector, error code and up to 15 bytes at the faulting RIP (fewer, or
/// none, if they could not be read).
pub fn name_trap(vector: u64, error_code: u64, code: &[u8]) -> Trap {
    let start = code.iter().position(|b| !is_prefix(*b)).unwrap_or(code.len());
    let op = &code[start..];
    let byte = |i: usize| op.get(i).copied();
    // The ModRM reg field and whether the operand is a register (mod = 3).
    let modrm = |i: usize| byte(i).map(|m| ((m >> 3) & 7, m >> 6 == 3));
    match vector {
        13 => match (byte(0), byte(1)) {
            (Some(0x0f), Some(0x31)) => Trap::Forbidden("RDTSC is not available to tasks"),
            (Some(0x0f), Some(0x01)) => match byte(2) {
                Some(0xf9) => Trap::Forbidden("RDTSCP is not available to tasks"),
                Some(0xd1) => Trap::Privileged("xsetbv"),
                Some(0xf8) => Trap::Privileged("swapgs"),
                _ => match modrm(2) {
                    Some((0 | 1 | 4, _)) => {
                        Trap::Forbidden("SGDT, SIDT and SMSW are not available to tasks (UMIP)")
                    }
                    Some((2 | 3 | 6, _)) => Trap::Privileged("lgdt/lidt/lmsw"),
                    Some((7, false)) => Trap::Privileged("invlpg"),
                    _ => Trap::GeneralProtection { error_code },
                },
            },
            (Some(0x0f), Some(0x00)) => match modrm(2) {
                Some((0 | 1, _)) => Trap::Forbidden("SLDT and STR are not available to tasks (UMIP)"),
                Some((2 | 3, _)) => Trap::Privileged("lldt/ltr"),
                _ => Trap::GeneralProtection { error_code },
            },
            (Some(0x0f), Some(0x30 | 0x32)) => Trap::Privileged("rdmsr/wrmsr"),
            (Some(0x0f), Some(0x33)) => Trap::Privileged("rdpmc"),
            (Some(0x0f), Some(0x06)) => Trap::Privileged("clts"),
            (Some(0x0f), Some(0x08 | 0x09)) => Trap::Privileged("invd/wbinvd"),
            (Some(0x0f), Some(0x20..=0x23)) => Trap::Privileged("mov to or from a control or debug register"),
            (Some(0xf4), _) => Trap::Privileged("hlt"),
            (Some(0xfa | 0xfb), _) => Trap::Privileged("cli/sti"),
            (Some(0xe4..=0xe7 | 0xec..=0xef | 0x6c..=0x6f), _) => {
                Trap::Forbidden("port I/O is not available to tasks")
            }
            // The error code names the IDT entry: n * 8 + 2 on hardware, n * 16 + 2 under QEMU's
            // TCG (it counts in 16-byte long-mode entries).
            (Some(0xcd), Some(n)) if is_idt_error(error_code, n) => Trap::SoftwareInterrupt(n),
            (Some(0xcc), _) if is_idt_error(error_code, 3) => {
                Trap::Exception { vector: 3, name: exception_name(3) }
            }
            (Some(0xf1), _) if is_idt_error(error_code, 1) => Trap::Privileged("int1"),
            _ => Trap::GeneralProtection { error_code },
        },
        6 => match (byte(0), byte(1)) {
            (Some(0x0f), Some(0x0b)) => Trap::Exception { vector, name: "invalid opcode (ud2)" },
            _ => Trap::Exception { vector, name: exception_name(vector) },
        },
        _ => Trap::Exception { vector, name: exception_name(vector) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(vector: u64, error_code: u64, code: &[u8]) -> &'static str {
        match name_trap(vector, error_code, code) {
            Trap::Forbidden(s) | Trap::Privileged(s) => s,
            Trap::Exception { name, .. } => name,
            Trap::SoftwareInterrupt(_) => "int",
            Trap::GeneralProtection { .. } => "gp",
        }
    }

    #[test]
    fn each_trap_under_its_own_name() {
        assert_eq!(named(13, 0, &[0x0f, 0x31]), "RDTSC is not available to tasks");
        assert_eq!(named(13, 0, &[0x0f, 0x01, 0xf9]), "RDTSCP is not available to tasks");
        // sgdt [rax], sidt [rax], smsw eax, with and without REX.W.
        assert!(named(13, 0, &[0x0f, 0x01, 0x00]).contains("UMIP"));
        assert!(named(13, 0, &[0x48, 0x0f, 0x01, 0x08]).contains("UMIP"));
        assert!(named(13, 0, &[0x0f, 0x01, 0xe0]).contains("UMIP"));
        assert!(named(13, 0, &[0x0f, 0x00, 0xc8]).contains("SLDT and STR"));
        assert_eq!(named(13, 0, &[0x0f, 0x01, 0xd1]), "xsetbv");
        assert_eq!(named(13, 0, &[0x0f, 0x30]), "rdmsr/wrmsr");
        assert_eq!(named(13, 0, &[0xf4]), "hlt");
        assert_eq!(named(13, 0, &[0xfa]), "cli/sti");
        assert_eq!(named(13, 0, &[0xe6, 0x80]), "port I/O is not available to tasks");
        assert_eq!(named(13, 0, &[0x66, 0xef]), "port I/O is not available to tasks");
        assert_eq!(name_trap(13, 0x80 << 3 | 2, &[0xcd, 0x80]), Trap::SoftwareInterrupt(0x80));
        assert_eq!(name_trap(13, 0x80 << 4 | 2, &[0xcd, 0x80]), Trap::SoftwareInterrupt(0x80), "as TCG says");
        assert_eq!(named(13, 0x1a, &[0xcc]), "breakpoint (int3)");
        assert_eq!(named(13, 0x32, &[0xcc]), "breakpoint (int3)");
        // The same bytes with another error code are not `int`: a plain #GP.
        assert_eq!(name_trap(13, 0x18, &[0xcd, 0x80]), Trap::GeneralProtection { error_code: 0x18 });
        assert_eq!(name_trap(13, 0, &[]), Trap::GeneralProtection { error_code: 0 });
        assert_eq!(named(6, 0, &[0x0f, 0x0b]), "invalid opcode (ud2)");
        assert_eq!(named(6, 0, &[0xc4, 0xe2]), "invalid or unavailable instruction");
        assert_eq!(named(3, 0, &[]), "breakpoint (int3)");
        assert_eq!(named(0, 0, &[0xf7, 0xf1]), "divide error");
        assert_eq!(named(17, 0, &[]), "alignment check");
        // XGETBV (0f 01 d0) does not fault in ring 3; if it ever did, it is not called RDTSC.
        assert_ne!(named(13, 0, &[0x0f, 0x01, 0xd0]), "RDTSC is not available to tasks");
    }

    #[test]
    fn messages_read_well() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(name_trap(13, 0, &[0xf4]).to_string(), "privileged instruction (hlt)");
        assert_eq!(name_trap(13, 0x2a, &[0x90]).to_string(), "general protection fault (error code 0x2a)");
        assert_eq!(name_trap(19, 0, &[]).to_string(), "SIMD floating-point error (vector 19)");
        assert_eq!(
            name_trap(13, 0x21 << 3 | 2, &[0xcd, 0x21]).to_string(),
            "software interrupt (int 0x21) is not available to tasks"
        );
    }
}
