//! Directories as trees (docs/OBJECTS.md, "Directories"), so that a directory has the same name
//! on every machine and after any copy.
//!
//! A directory is a tree of entries sorted by name (bytewise). Each entry is a tree of three:
//! `[name blob, mode blob, object]`, where mode is one byte: 0 file, 1 executable file,
//! 2 directory, 3 symbolic link (the object is a blob of the link's target). Nothing else about
//! a file (times, owner, other permission bits) is part of its name.

use alloc::vec::Vec;
use core::fmt;

use crate::handle::Handle;
use crate::tree::{self, Tree};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    File = 0,
    Executable = 1,
    Directory = 2,
    Symlink = 3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirError {
    /// Names must be non-empty, without `/` or NUL, and not `.` or `..`.
    BadName(Vec<u8>),
    DuplicateName(Vec<u8>),
}

impl fmt::Display for DirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirError::BadName(n) => {
                write!(f, "`{}` cannot be a directory entry name", alloc::string::String::from_utf8_lossy(n))
            }
            DirError::DuplicateName(n) => {
                write!(f, "two entries are named `{}`", alloc::string::String::from_utf8_lossy(n))
            }
        }
    }
}

/// A directory's tree and the entry trees it refers to, all to be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirObjects {
    pub root: Handle,
    /// `(handle, encoding)` of every tree made: the entries, then the directory itself.
    pub trees: Vec<(Handle, Vec<u8>)>,
}

#[derive(Default)]
pub struct DirBuilder {
    entries: Vec<(Vec<u8>, Mode, Handle)>,
}

impl DirBuilder {
    pub fn new() -> DirBuilder {
        DirBuilder::default()
    }

    pub fn add(&mut self, name: &[u8], mode: Mode, object: Handle) -> Result<(), DirError> {
        let bad =
            name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0);
        if bad {
            return Err(DirError::BadName(name.to_vec()));
        }
        self.entries.push((name.to_vec(), mode, object));
        Ok(())
    }

    pub fn finish(mut self) -> Result<DirObjects, DirError> {
        self.entries.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = self.entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(DirError::DuplicateName(w[0].0.clone()));
        }
        let mut trees = Vec::with_capacity(self.entries.len() + 1);
        let mut entry_handles = Vec::with_capacity(self.entries.len());
        for (name, mode, object) in &self.entries {
            let encoding = tree::encode(&[Handle::blob(name), Handle::blob(&[*mode as u8]), *object]);
            let handle = Tree::decode(&encoding).expect("made of valid handles").handle();
            entry_handles.push(handle);
            trees.push((handle, encoding));
        }
        let encoding = tree::encode(&entry_handles);
        let root = Tree::decode(&encoding).expect("made of valid handles").handle();
        trees.push((root, encoding));
        Ok(DirObjects { root, trees })
    }
}

impl core::error::Error for DirError {}
