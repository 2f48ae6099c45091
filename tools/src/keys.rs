//! The host's keys (docs/SECURITY.md, "Keys and roles"): this user's client key, created on
//! first use, and the public keys of the nodes it talks to, by address. Both live in the
//! config directory (`$CAIRN_CONFIG_DIR`, else `~/.config/cairn`): `client.key` (mode 0600) and
//! `nodes/ADDRESS` (a node's public key, as `cairn node` and `cairn cluster up` record it).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cairn_bootcfg::NodeKeys;
use cairn_channel::{KEY_LEN, PublicKey, SecretKey};

pub const CONFIG_ENV: &str = "CAIRN_CONFIG_DIR";

pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CONFIG_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let base = dirs::config_dir()
        .context("no config directory for cairn's keys (set HOME, XDG_CONFIG_HOME or CAIRN_CONFIG_DIR)")?;
    Ok(base.join("cairn"))
}

fn client_key_path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("client.key"))
}

/// 32 bytes from the operating system's random source.
pub fn random_bytes() -> anyhow::Result<[u8; KEY_LEN]> {
    let mut bytes = [0u8; KEY_LEN];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the system's random source failed: {e}"))?;
    Ok(bytes)
}

pub fn fresh_secret() -> anyhow::Result<SecretKey> {
    Ok(SecretKey::from_bytes(random_bytes()?))
}

/// This user's client key: read from the config directory, or made there on first use.
pub fn client_key() -> anyhow::Result<SecretKey> {
    client_key_at(&client_key_path()?)
}

/// The key at `path`, made there if there is none. Several cairn processes starting at once
/// (tests, a cluster) all end up with the one key that got there first, never a file half
/// written: a key is written whole elsewhere and linked into place.
fn client_key_at(path: &Path) -> anyhow::Result<SecretKey> {
    if path.exists() {
        return read_secret(path);
    }
    match write_secret(path, &fresh_secret()?, false) {
        Ok(key) => Ok(key),
        // Another cairn made it meanwhile: use theirs.
        Err(_) if path.exists() => read_secret(path),
        Err(e) => Err(e),
    }
}

/// Makes a new client key (`cairn keygen`); an existing one is replaced only with `force`.
pub fn keygen(force: bool) -> anyhow::Result<(PathBuf, PublicKey)> {
    let path = client_key_path()?;
    if path.exists() && !force {
        bail!(
            "{} exists; `cairn keygen --force` replaces it (nodes that know the old key will refuse the new one)",
            path.display()
        );
    }
    let key = write_secret(&path, &fresh_secret()?, force)?;
    Ok((path, key.public()))
}

fn read_secret(path: &Path) -> anyhow::Result<SecretKey> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read the key {}", path.display()))?;
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} can be read by others (mode {:o}); run: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    SecretKey::parse(&text).with_context(|| format!("{} does not hold a key (64 hex digits)", path.display()))
}

/// Writes a private key readable only by its owner: a fresh file, or (with `replace`) a new one
/// renamed over the old.
fn write_secret(path: &Path, key: &SecretKey, replace: bool) -> anyhow::Result<SecretKey> {
    let dir = path.parent().expect("a key file is in a directory");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Written whole under a name of this process's own, then put in place at once: renamed over
    // the old key (replace), or linked (which fails if another process's key got there first).
    let target = dir.join(format!(
        ".client.key.{}.{:x}",
        std::process::id(),
        u64::from_le_bytes(random_bytes()?[..8].try_into()?)
    ));
    let written = (|| -> anyhow::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        writeln!(file, "{}", key.to_hex())?;
        file.sync_all()?;
        if replace {
            fs::rename(&target, path)?;
        } else {
            fs::hard_link(&target, path).with_context(|| format!("cannot create {}", path.display()))?;
        }
        Ok(())
    })();
    let _ = fs::remove_file(&target);
    written?;
    Ok(key.clone())
}

fn node_key_path(address: &str) -> anyhow::Result<PathBuf> {
    if address.contains('/') || address.starts_with('.') || address.is_empty() {
        bail!("`{address}` is not a node address (HOST:PORT)");
    }
    Ok(config_dir()?.join("nodes").join(address))
}

/// Records `key` as the node at `address` (a node this user booted, or one whose key they were
/// given): clients then expect exactly that key there.
pub fn remember_node(address: &str, key: &PublicKey) -> anyhow::Result<()> {
    let path = node_key_path(address)?;
    let dir = path.parent().expect("in nodes/");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Written aside and renamed: concurrent readers see the old key or the new, never half.
    let temp = tempfile::NamedTempFile::new_in(dir)?;
    fs::write(temp.path(), format!("{key}\n"))?;
    temp.persist(&path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The key the node at `address` must hold.
pub fn node_key(address: &str) -> anyhow::Result<PublicKey> {
    let path = node_key_path(address)?;
    let text = fs::read_to_string(&path).map_err(|_| {
        anyhow::anyhow!(
            "no key known for the node at {address}: `cairn node` and `cairn cluster up` record their nodes' keys in {}; for a node started otherwise, run `cairn key trust {address} NODE_PUBLIC_KEY`",
            path.parent().map(|p| p.display().to_string()).unwrap_or_default()
        )
    })?;
    PublicKey::parse(&text)
        .with_context(|| format!("{} does not hold a public key (64 hex digits)", path.display()))
}

/// Keys for a node this user boots: a fresh node key, this user's client key authorized, and
/// the given peers.
pub fn keys_for_node(peers: Vec<([u8; 4], PublicKey)>) -> anyhow::Result<NodeKeys> {
    Ok(NodeKeys { secret: fresh_secret()?, clients: vec![client_key()?.public()], peers })
}

/// Writes a node's keys file (it holds the node's private key: mode 0600).
pub fn write_node_keys(path: &Path, keys: &NodeKeys) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(keys.to_text().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many processes (here threads) asking for the key at once on a fresh machine all get the
    /// same one, and none reads a file half written.
    #[test]
    fn a_key_made_by_many_at_once_is_one_key_whole() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("client.key");
            let keys: Vec<PublicKey> = std::thread::scope(|s| {
                let handles: Vec<_> =
                    (0..8).map(|_| s.spawn(|| client_key_at(&path).map(|k| k.public()))).collect();
                handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
            });
            assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
            let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, ["client.key"], "no temporary file left behind");
        }
    }
}
