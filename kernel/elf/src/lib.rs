//! The task loader's checks. A task ELF is untrusted input: this crate turns its bytes into a
//! [`LoadPlan`] only if every segment lies inside the task image window, inside the file, on
//! its own pages, and is never both writable and executable. Nothing here touches memory; the
//! kernel maps what the plan says.

#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

use cairn_abi::layout::{IMAGE_BASE, IMAGE_END};

pub const PAGE: u64 = 4096;
const MAX_PHDRS: usize = 64;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_TLS: u32 = 7;
const PT_GNU_STACK: u32 = 0x6474_e551;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub mem_size: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub perms: Perms,
}

impl Segment {
    /// First and one-past-last page addresses the segment touches.
    pub fn pages(&self) -> (u64, u64) {
        (self.vaddr & !(PAGE - 1), (self.vaddr + self.mem_size).next_multiple_of(PAGE))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub entry: u64,
    /// Sorted by address; page ranges are disjoint.
    pub segments: Vec<Segment>,
}

impl LoadPlan {
    /// Pages the image occupies, for the memory limit.
    pub fn pages(&self) -> u64 {
        self.segments.iter().map(|s| (s.pages().1 - s.pages().0) / PAGE).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    NotElf,
    Not64BitLittleEndian,
    NotX86_64,
    NotStaticExecutable {
        e_type: u16,
    },
    BadProgramHeaders,
    DynamicLinking,
    ThreadLocalStorage,
    ExecutableStack,
    NoLoadableSegment,
    /// Segment `index` breaks a rule.
    Segment {
        index: usize,
        problem: SegmentProblem,
    },
    EntryNotExecutable {
        entry: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentProblem {
    WritableAndExecutable,
    NoPermissions,
    FileSizeExceedsMemorySize,
    OutsideFile,
    OutsideImageWindow,
    Misaligned,
    Overlaps,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::TooShort => write!(f, "too short to be an ELF file"),
            ElfError::NotElf => write!(f, "not an ELF file (bad magic)"),
            ElfError::Not64BitLittleEndian => write!(f, "not a 64-bit little-endian ELF"),
            ElfError::NotX86_64 => write!(f, "not an x86_64 ELF"),
            ElfError::NotStaticExecutable { e_type } => {
                write!(f, "ELF type {e_type} is not a static executable (ET_EXEC)")
            }
            ElfError::BadProgramHeaders => write!(f, "program headers are malformed or out of the file"),
            ElfError::DynamicLinking => write!(f, "dynamically linked ELF files cannot be tasks"),
            ElfError::ThreadLocalStorage => write!(f, "thread-local storage is not supported"),
            ElfError::ExecutableStack => write!(f, "the ELF asks for an executable stack"),
            ElfError::NoLoadableSegment => write!(f, "no loadable segment"),
            ElfError::Segment { index, problem } => write!(f, "segment {index}: {problem}"),
            ElfError::EntryNotExecutable { entry } => {
                write!(f, "entry point {entry:#x} is not in an executable segment")
            }
        }
    }
}

impl fmt::Display for SegmentProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SegmentProblem::WritableAndExecutable => "writable and executable",
            SegmentProblem::NoPermissions => "neither readable nor executable",
            SegmentProblem::FileSizeExceedsMemorySize => "file size exceeds memory size",
            SegmentProblem::OutsideFile => "file range lies outside the file",
            SegmentProblem::OutsideImageWindow => "lies outside the task image window",
            SegmentProblem::Misaligned => "file offset and address differ within a page",
            SegmentProblem::Overlaps => "shares a page with another segment",
        })
    }
}

impl core::error::Error for ElfError {}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks `elf` and says where each segment goes.
pub fn plan(elf: &[u8]) -> Result<LoadPlan, ElfError> {
    if elf.len() < 64 {
        return Err(ElfError::TooShort);
    }
    if elf[..4] != *b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if elf[4] != 2 || elf[5] != 1 || elf[6] != 1 {
        return Err(ElfError::Not64BitLittleEndian);
    }
    let e_type = u16_at(elf, 16);
    if u16_at(elf, 18) != 0x3e {
        return Err(ElfError::NotX86_64);
    }
    if e_type != 2 {
        return Err(ElfError::NotStaticExecutable { e_type });
    }
    let entry = u64_at(elf, 24);
    let phoff = u64_at(elf, 32);
    let phentsize = u16_at(elf, 54) as usize;
    let phnum = u16_at(elf, 56) as usize;
    let table_end = (phnum as u64).checked_mul(56).and_then(|n| n.checked_add(phoff));
    if phentsize != 56 || phnum > MAX_PHDRS || table_end.is_none_or(|end| end > elf.len() as u64) {
        return Err(ElfError::BadProgramHeaders);
    }

    let mut segments: Vec<(usize, Segment)> = Vec::new();
    for index in 0..phnum {
        let ph = &elf[phoff as usize + index * 56..][..56];
        let (p_type, p_flags) = (u32_at(ph, 0), u32_at(ph, 4));
        match p_type {
            PT_DYNAMIC | PT_INTERP => return Err(ElfError::DynamicLinking),
            PT_TLS => return Err(ElfError::ThreadLocalStorage),
            PT_GNU_STACK if p_flags & PF_X != 0 => return Err(ElfError::ExecutableStack),
            PT_LOAD => {}
            _ => continue,
        }
        let fail = |problem| Err(ElfError::Segment { index, problem });
        let seg = Segment {
            file_offset: u64_at(ph, 8),
            vaddr: u64_at(ph, 16),
            file_size: u64_at(ph, 32),
            mem_size: u64_at(ph, 40),
            perms: Perms {
                read: p_flags & PF_R != 0,
                write: p_flags & PF_W != 0,
                execute: p_flags & PF_X != 0,
            },
        };
        if seg.mem_size == 0 {
            continue;
        }
        if seg.perms.write && seg.perms.execute {
            return fail(SegmentProblem::WritableAndExecutable);
        }
        if !seg.perms.read && !seg.perms.execute {
            return fail(SegmentProblem::NoPermissions);
        }
        if seg.file_size > seg.mem_size {
            return fail(SegmentProblem::FileSizeExceedsMemorySize);
        }
        if seg.file_offset.checked_add(seg.file_size).is_none_or(|end| end > elf.len() as u64) {
            return fail(SegmentProblem::OutsideFile);
        }
        let end = seg.vaddr.checked_add(seg.mem_size);
        if seg.vaddr < IMAGE_BASE || end.is_none_or(|end| end > IMAGE_END) {
            return fail(SegmentProblem::OutsideImageWindow);
        }
        if seg.vaddr % PAGE != seg.file_offset % PAGE {
            return fail(SegmentProblem::Misaligned);
        }
        segments.push((index, seg));
    }
    if segments.is_empty() {
        return Err(ElfError::NoLoadableSegment);
    }
    segments.sort_by_key(|(_, s)| s.vaddr);
    for pair in segments.windows(2) {
        if pair[1].1.pages().0 < pair[0].1.pages().1 {
            return Err(ElfError::Segment { index: pair[1].0, problem: SegmentProblem::Overlaps });
        }
    }
    let segments: Vec<Segment> = segments.into_iter().map(|(_, s)| s).collect();
    if !segments.iter().any(|s| s.perms.execute && entry >= s.vaddr && entry < s.vaddr + s.mem_size) {
        return Err(ElfError::EntryNotExecutable { entry });
    }
    Ok(LoadPlan { entry, segments })
}

#[cfg(test)]
mod tests;
