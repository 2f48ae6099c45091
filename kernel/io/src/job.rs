//! A job: a root thunk and the manifest of IO it may perform, as one object (a tree of the two),
//! so that a job is named by its handle like everything else.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use cairn_object::tree::{self, Tree};
use cairn_object::{Handle, Kind};

use crate::manifest::{Manifest, ManifestError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub root: Handle,
    pub manifest: Manifest,
    /// The manifest's blob, as stored.
    pub manifest_blob: Handle,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobError {
    NotATree(Handle),
    Missing(Handle),
    Shape(String),
    Manifest(ManifestError),
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::NotATree(h) => write!(f, "{h} is not a job: a job is a tree [root, manifest]"),
            JobError::Missing(h) => write!(f, "{h} is not on this node"),
            JobError::Shape(why) => write!(f, "not a job: {why}"),
            JobError::Manifest(e) => write!(f, "{e}"),
        }
    }
}

impl Job {
    /// The tree encoding of a job, and the manifest's bytes (both must be stored).
    pub fn encode(root: Handle, manifest: &Manifest) -> (Vec<u8>, Vec<u8>) {
        let manifest_bytes = manifest.render().into_bytes();
        (tree::encode(&[root, Handle::blob(&manifest_bytes)]), manifest_bytes)
    }

    /// Reads the job `handle` names, with `open` reading objects from the store.
    pub fn load<B: AsRef<[u8]>>(
        handle: &Handle,
        open: impl Fn(&Handle) -> Option<B>,
    ) -> Result<Job, JobError> {
        if handle.kind() != Kind::Tree {
            return Err(JobError::NotATree(*handle));
        }
        let bytes = open(handle).ok_or(JobError::Missing(*handle))?;
        let tree = Tree::decode(bytes.as_ref()).map_err(|e| JobError::Shape(alloc::format!("{e}")))?;
        let (Some(root), Some(manifest_blob), 2) = (tree.get(0), tree.get(1), tree.len()) else {
            return Err(JobError::Shape(alloc::format!(
                "the tree has {} entries, not 2 (root, manifest)",
                tree.len()
            )));
        };
        if manifest_blob.kind() != Kind::Blob {
            return Err(JobError::Shape("the manifest must be a blob".into()));
        }
        let manifest_bytes = open(&manifest_blob).ok_or(JobError::Missing(manifest_blob))?;
        let manifest = Manifest::parse(manifest_bytes.as_ref()).map_err(JobError::Manifest)?;
        Ok(Job { root, manifest, manifest_blob })
    }
}
