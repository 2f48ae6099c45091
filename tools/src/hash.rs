//! `cairn hash`: names files as blobs and directories as trees (docs/OBJECTS.md, "Directories").

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use cairn_object::dir::{DirBuilder, Mode};
use cairn_object::{BlobNamer, Digest, Handle};

/// What `cairn hash` reports for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub handle: Handle,
    /// BLAKE3 of a file's bytes, as `b3sum` prints it; `None` for directories.
    pub blake3: Option<Digest>,
}

pub fn name_path(path: &Path) -> anyhow::Result<Named> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        Ok(Named { handle: name_dir(path)?, blake3: None })
    } else if meta.is_file() {
        let handle = name_file(path)?;
        Ok(Named { handle, blake3: Some(handle.digest()) })
    } else {
        bail!("cannot name {}: it is not a file or a directory", path.display())
    }
}

fn name_file(path: &Path) -> anyhow::Result<Handle> {
    let mut file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut namer = BlobNamer::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(namer.finish());
        }
        namer.update(&buf[..n]);
    }
}

fn name_dir(path: &Path) -> anyhow::Result<Handle> {
    let mut dir = DirBuilder::new();
    let entries = fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
        let child = entry.path();
        let meta =
            fs::symlink_metadata(&child).with_context(|| format!("cannot read {}", child.display()))?;
        let kind = meta.file_type();
        let (mode, handle) = if kind.is_symlink() {
            let target =
                fs::read_link(&child).with_context(|| format!("cannot read link {}", child.display()))?;
            (Mode::Symlink, Handle::blob(target.as_os_str().as_bytes()))
        } else if kind.is_dir() {
            (Mode::Directory, name_dir(&child)?)
        } else if kind.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            (if exec { Mode::Executable } else { Mode::File }, name_file(&child)?)
        } else {
            bail!("cannot name {}: not a file, directory or symbolic link", child.display());
        };
        dir.add(entry.file_name().as_bytes(), mode, handle)
            .with_context(|| format!("in {}", path.display()))?;
    }
    let objects = dir.finish().with_context(|| format!("in {}", path.display()))?;
    Ok(objects.root)
}

/// One output line: handle first, then (for a file) its BLAKE3 digest, then the path.
pub fn text_line(path: &Path, named: &Named) -> String {
    match named.blake3 {
        Some(d) => format!("{}  b3:{d}  {}", named.handle, path.display()),
        None => format!("{}  -  {}", named.handle, path.display()),
    }
}

pub fn json_line(path: &Path, named: &Named) -> String {
    let mut v = serde_json::json!({
        "path": path.to_string_lossy(),
        "handle": named.handle.to_string(),
        "kind": named.handle.kind().name(),
        "size": named.handle.size(),
    });
    if let Some(d) = named.blake3 {
        v["blake3"] = serde_json::Value::String(d.to_string());
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, bytes: &[u8], mode: u32) {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn sample(root: &Path) {
        fs::create_dir_all(root.join("sub")).unwrap();
        write(&root.join("hello"), b"hello", 0o644);
        write(&root.join("run.sh"), b"#!/bin/sh\necho the quick brown fox jumps\n", 0o755);
        write(&root.join("sub/big"), &vec![7u8; 100_000], 0o600);
        symlink("hello", root.join("link")).unwrap();
    }

    #[test]
    fn file_handles_match_blob_naming_and_b3sum() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let big = name_path(&dir.path().join("sub/big")).unwrap();
        assert_eq!(big.handle, Handle::blob(&vec![7u8; 100_000]));
        assert_eq!(big.blake3.unwrap().0, *blake3::hash(&vec![7u8; 100_000]).as_bytes());
        let hello = name_path(&dir.path().join("hello")).unwrap();
        assert_eq!(hello.handle.to_string(), "blob:=68656c6c6f");
        assert_eq!(
            hello.blake3.unwrap().to_string(),
            "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
    }

    #[test]
    fn directory_handle_ignores_times_and_location_but_not_names_modes_or_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        sample(a.path());
        sample(b.path());
        // Same content, other place, other times, other read/write bits: same name.
        fs::set_permissions(b.path().join("hello"), fs::Permissions::from_mode(0o600)).unwrap();
        let original = name_path(a.path()).unwrap().handle;
        assert_eq!(name_path(b.path()).unwrap().handle, original);
        assert_eq!(original.kind(), cairn_object::Kind::Tree);

        fs::set_permissions(b.path().join("hello"), fs::Permissions::from_mode(0o700)).unwrap();
        let exec_changed = name_path(b.path()).unwrap().handle;
        assert_ne!(exec_changed, original, "the executable bit is part of the name");
        fs::set_permissions(b.path().join("hello"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(b.path().join("sub/big"), b.path().join("sub/large")).unwrap();
        assert_ne!(name_path(b.path()).unwrap().handle, original, "names are part of the name");
        fs::rename(b.path().join("sub/large"), b.path().join("sub/big")).unwrap();
        write(&b.path().join("sub/big"), &vec![8u8; 100_000], 0o600);
        assert_ne!(name_path(b.path()).unwrap().handle, original, "content is part of the name");
    }

    #[test]
    fn output_lines() {
        let named = Named { handle: Handle::blob(b"hello"), blake3: Some(Handle::blob(b"hello").digest()) };
        assert_eq!(
            text_line(Path::new("x"), &named),
            "blob:=68656c6c6f  b3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f  x"
        );
        let v: serde_json::Value = serde_json::from_str(&json_line(Path::new("x"), &named)).unwrap();
        assert_eq!(v["handle"], "blob:=68656c6c6f");
        assert_eq!(v["kind"], "blob");
        assert_eq!(v["size"], 5);
    }

    #[test]
    fn missing_paths_and_devices_are_clear_errors() {
        let err = name_path(Path::new("/nonexistent/file")).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "cannot read /nonexistent/file: No such file or directory (os error 2)"
        );
        let err = name_path(Path::new("/dev/null")).unwrap_err();
        assert_eq!(format!("{err:#}"), "cannot name /dev/null: it is not a file or a directory");
    }
}
