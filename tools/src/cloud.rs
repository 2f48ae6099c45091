//! One image for many nodes (docs/CLOUD.md): each node's configuration on a small disk of its
//! own (the kernel reads any virtio block device whose first line is `# cairn config-2`), and
//! the image in the form GCE imports.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cairn_bootcfg::NodeKeys;
use cairn_bootcfg::external::{LABEL, MAX_LEN};
use cairn_channel::SecretKey;

/// A configuration disk's size: room for the text, a whole number of sectors.
pub const CONFIG_DISK_BYTES: u64 = 1 << 20;
/// GCE imports raw disks of a whole number of GiB.
const GCE_ROUND: u64 = 1 << 30;

/// One node of a cluster whose configuration disks were written together.
#[derive(Clone, Debug)]
pub struct PlannedNode {
    pub index: usize,
    pub cluster_ip: [u8; 4],
    pub secret: SecretKey,
    pub text: String,
}

/// The configurations of an `nodes`-node cluster on 10.1.0.0/24 (node i at 10.1.0.(i+1)):
/// each node's cluster address, its peers and their keys, a fresh node key, and `clients`
/// served. Serving mode; every other setting is the image's.
pub fn plan_cluster(nodes: usize, clients: &[cairn_channel::PublicKey]) -> anyhow::Result<Vec<PlannedNode>> {
    if !(1..=200).contains(&nodes) {
        bail!("a cluster of 1 to 200 nodes (on 10.1.0.0/24)");
    }
    let secrets = (0..nodes).map(|_| crate::keys::fresh_secret()).collect::<anyhow::Result<Vec<_>>>()?;
    let ip = |i: usize| [10, 1, 0, i as u8 + 1];
    let mut planned = Vec::new();
    for (index, secret) in secrets.iter().enumerate() {
        let others: Vec<usize> = (0..nodes).filter(|j| *j != index).collect();
        let dotted = |a: [u8; 4]| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]);
        let keys = NodeKeys {
            secret: secret.clone(),
            clients: clients.to_vec(),
            peers: others.iter().map(|j| (ip(*j), secrets[*j].public())).collect(),
        };
        let peers: Vec<String> = others.iter().map(|j| dotted(ip(*j))).collect();
        let mut text = format!("{LABEL}\nmode = serve\ncluster_ip = {}/24\n", dotted(ip(index)));
        if !peers.is_empty() {
            text.push_str(&format!("peers = {}\n", peers.join(" ")));
        }
        text.push_str("[keys]\n");
        text.push_str(&keys.to_text());
        planned.push(PlannedNode { index, cluster_ip: ip(index), secret: secret.clone(), text });
    }
    Ok(planned)
}

/// Writes a configuration disk (raw, [`CONFIG_DISK_BYTES`]) holding `text`, checked as the
/// kernel will read it. It holds the node's private key: mode 0600, and never over a file.
pub fn write_config_disk(path: &Path, text: &str) -> anyhow::Result<()> {
    if !text.starts_with(LABEL) {
        bail!("a configuration's first line is `{LABEL}`");
    }
    if text.len() >= MAX_LEN || text.contains('\0') {
        bail!("a configuration is text of less than {MAX_LEN} bytes");
    }
    // The kernel's own check: the node lines over the defaults, and the keys.
    cairn_bootcfg::external::apply(&cairn_bootcfg::NodeConfig::default(), text.as_bytes())
        .map_err(|e| anyhow::anyhow!("the configuration is not one a node takes: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // Not a disk cut short (holding a private key) where writing failed.
    let written = file.write_all(text.as_bytes()).and_then(|()| file.set_len(CONFIG_DISK_BYTES));
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Packs the raw UEFI image at `raw` as GCE imports it: `disk.raw`, padded to a whole GiB, in
/// a gzip-compressed tar (GNU format) at `out`.
pub fn gce_tarball(raw: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let image = std::fs::File::open(raw).with_context(|| format!("cannot read {}", raw.display()))?;
    let len = image.metadata()?.len();
    let padded = len.div_ceil(GCE_ROUND).max(1) * GCE_ROUND;
    let file = std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(padded);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    let data = image.take(len).chain(std::io::repeat(0).take(padded - len));
    tar.append_data(&mut header, "disk.raw", data)?;
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()?.flush()?;
    Ok(out.to_path_buf())
}

/// Writes `planned`'s disks as `dir/node-I.img`, all or none: if any is there already, or one
/// cannot be written, none is left (each holds a key of this cluster only).
pub fn write_config_disks(dir: &Path, planned: &[PlannedNode]) -> anyhow::Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = planned.iter().map(|n| dir.join(format!("node-{}.img", n.index))).collect();
    if let Some(there) = paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        bail!("{} is there already: no disk written (move the old ones away first)", there.display());
    }
    for (i, (path, node)) in paths.iter().zip(planned).enumerate() {
        if let Err(e) = write_config_disk(path, &node.text) {
            for written in &paths[..i] {
                let _ = std::fs::remove_file(written);
            }
            return Err(e);
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_cluster_gives_each_node_its_address_peers_and_keys() {
        let client = SecretKey::from_bytes([7; 32]).public();
        let planned = plan_cluster(3, &[client]).unwrap();
        for node in &planned {
            let (config, keys) =
                cairn_bootcfg::external::apply(&cairn_bootcfg::NodeConfig::default(), node.text.as_bytes())
                    .unwrap();
            assert_eq!(config.cluster_ip.unwrap().address, node.cluster_ip);
            assert_eq!(config.peers.len(), 2);
            assert!(!config.peers.contains(&node.cluster_ip));
            let keys = keys.unwrap();
            assert_eq!(keys.secret.public(), node.secret.public());
            assert_eq!(keys.clients, [client]);
            // Each peer's key is that peer's own.
            for (ip, key) in &keys.peers {
                let peer = planned.iter().find(|p| p.cluster_ip == *ip).unwrap();
                assert_eq!(*key, peer.secret.public());
            }
        }
        assert!(plan_cluster(0, &[client]).is_err());
    }

    #[test]
    fn a_config_disk_is_checked_written_private_and_never_over_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = &plan_cluster(2, &[]).unwrap()[0].text;
        let path = dir.path().join("node-0.img");
        write_config_disk(&path, text).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, CONFIG_DISK_BYTES);
        assert_eq!(cairn_bootcfg::external::on_disk(&bytes), Some(text.as_bytes()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_config_disk(&path, text).is_err(), "an existing file is left alone");
        let err =
            write_config_disk(&dir.path().join("x.img"), &format!("{LABEL}\ncolour = red\n")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn a_clusters_disks_are_written_all_or_none() {
        // One disk already there: none is written (a disk written before it would hold a key
        // of a cluster whose other disks never were, and stop the next try at itself).
        let dir = tempfile::tempdir().unwrap();
        let planned = plan_cluster(3, &[]).unwrap();
        std::fs::write(dir.path().join("node-1.img"), b"an earlier disk").unwrap();
        let err = write_config_disks(dir.path(), &planned).unwrap_err();
        assert!(err.to_string().contains("node-1.img"), "{err}");
        assert!(!dir.path().join("node-0.img").exists());
        assert_eq!(std::fs::read(dir.path().join("node-1.img")).unwrap(), b"an earlier disk");
        std::fs::remove_file(dir.path().join("node-1.img")).unwrap();
        let paths = write_config_disks(dir.path(), &planned).unwrap();
        assert_eq!(paths, (0..3).map(|i| dir.path().join(format!("node-{i}.img"))).collect::<Vec<_>>());
        for (path, node) in paths.iter().zip(&planned) {
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(cairn_bootcfg::external::on_disk(&bytes), Some(node.text.as_bytes()));
        }
    }

    #[test]
    fn a_gce_tarball_holds_disk_raw_padded_to_a_gib() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("uefi.img");
        std::fs::write(&raw, b"an image").unwrap();
        let out = gce_tarball(&raw, &dir.path().join("cairn.tar.gz")).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(out).unwrap()));
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("disk.raw"));
        assert_eq!(entry.header().size().unwrap(), 1 << 30);
        let mut start = [0u8; 16];
        entry.read_exact(&mut start).unwrap();
        assert_eq!(&start[..8], b"an image");
        assert!(entries.next().is_none());
    }
}
