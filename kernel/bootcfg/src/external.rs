//! A node's configuration from outside its image (docs/CLOUD.md): a small raw disk, or QEMU's
//! fw_cfg file `opt/cairn/config`, holding the same text. Its first line is the label
//! [`LABEL`]; then the node's `key = value` lines, which replace the image's; then, after a
//! line `[keys]`, the node's keys (the format of `opt/cairn/keys`):
//!
//! ```text
//! # cairn config-2
//! mode = serve
//! cluster_ip = 10.1.0.2/24
//! peers = 10.1.0.1
//! [keys]
//! node_key = <64 hex digits>
//! client_keys = <64 hex digits>
//! peer_keys = 10.1.0.1=<64 hex digits>
//! ```
//!
//! The image's own configuration is only the default; secrets never come from it.

use alloc::vec::Vec;
use core::fmt;

use crate::{ConfigError, KeysError, NodeConfig, NodeKeys};

/// The first line of an outside configuration (after OpenStack's `config-2` drive label).
pub const LABEL: &str = "# cairn config-2";
/// The fw_cfg file an outside configuration travels in.
pub const FW_CFG_CONFIG: &str = "opt/cairn/config";
/// The most an outside configuration holds (read from a disk's start).
pub const MAX_LEN: usize = 64 * 1024;

/// GCE's metadata server, and the instance attribute that holds a node's configuration (the
/// text of a configuration disk).
pub const GCE_METADATA: [u8; 4] = [169, 254, 169, 254];
pub const GCE_PATH: &str = "/computeMetadata/v1/instance/attributes/cairn-config";

/// The HTTP request for a node's configuration from GCE's metadata server (which answers only
/// requests that carry `Metadata-Flavor: Google`).
pub fn gce_request() -> alloc::string::String {
    alloc::format!(
        "GET {GCE_PATH} HTTP/1.0\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    )
}

/// Where an outside configuration came from, for the boot log and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A virtio block device whose first bytes carry the label (the nth such device).
    ConfigDisk,
    /// QEMU's fw_cfg file [`FW_CFG_CONFIG`].
    FwCfg,
    /// GCE's metadata server, attribute `cairn-config` ([`gce_request`]).
    GceMetadata,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::ConfigDisk => "config disk",
            Source::FwCfg => "fw_cfg opt/cairn/config",
            Source::GceMetadata => "GCE metadata (169.254.169.254)",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExternalError {
    /// The text does not begin with the label.
    NoLabel,
    /// [`MAX_LEN`] bytes or more: a disk's text that fills all the kernel reads of it may go on
    /// past it, cut at any line (a peer, the keys).
    TooLong,
    Config(ConfigError),
    Keys(KeysError),
    /// A metadata server's text sets what the node put to use before it could ask.
    TooLate {
        key: &'static str,
    },
    /// A second `[keys]` line, or a section the format does not have.
    Section {
        line: usize,
    },
}

impl fmt::Display for ExternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExternalError::NoLabel => write!(f, "its first line is not `{LABEL}`"),
            ExternalError::TooLong => {
                // Not only a disk's: fw_cfg's and a metadata server's text is not cut at a NUL.
                write!(
                    f,
                    "it is {MAX_LEN} bytes or more (a configuration is shorter; a disk's may have been cut)"
                )
            }
            ExternalError::Config(e) => write!(f, "{e}"),
            ExternalError::Keys(e) => write!(f, "{e}"),
            ExternalError::TooLate { key } => write!(
                f,
                "it changes `{key}`, which the node put to use before its network was up (set it in the image or a config disk)"
            ),
            ExternalError::Section { line } => {
                write!(f, "line {line}: the only section is one `[keys]`, after the node's lines")
            }
        }
    }
}

/// Whether a disk's first bytes are an outside configuration: its text (up to the first NUL,
/// at most [`MAX_LEN`]) if so.
pub fn on_disk(start: &[u8]) -> Option<&[u8]> {
    let start = &start[..start.len().min(MAX_LEN)];
    let end = start.iter().position(|b| *b == 0).unwrap_or(start.len());
    let text = &start[..end];
    labelled(text).then_some(text)
}

/// A UTF-8 byte order mark, which some editors write first (Notepad, PowerShell): not text.
const BOM: &[u8] = b"\xef\xbb\xbf";

fn labelled(text: &[u8]) -> bool {
    // What editors add is no different label: a disk meant as the configuration and passed
    // over would leave the node running on the image's.
    let text = text.strip_prefix(BOM).unwrap_or(text);
    let first = text.split(|b| *b == b'\n').next().unwrap_or(&[]);
    first.trim_ascii_end() == LABEL.as_bytes()
}

/// `base` with an outside configuration's node lines over it, and its keys if it has them.
pub fn apply(base: &NodeConfig, text: &[u8]) -> Result<(NodeConfig, Option<NodeKeys>), ExternalError> {
    if !labelled(text) {
        return Err(ExternalError::NoLabel);
    }
    if text.len() >= MAX_LEN {
        return Err(ExternalError::TooLong);
    }
    // Each part is parsed in place (the other lines blanked), so errors name the line of the
    // whole text.
    let mut keys_at = None;
    let mut offset = 0;
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        // Comments as on any line: `# [keys]` is none, `[keys]  # mine` is one.
        let content = line.split(|b| *b == b'#').next().unwrap_or(&[]).trim_ascii();
        if content.starts_with(b"[") {
            if content != b"[keys]" || keys_at.is_some() {
                return Err(ExternalError::Section { line: index + 1 });
            }
            keys_at = Some((offset, offset + line.len()));
        }
        offset += line.len() + 1;
    }
    // The label's line is a comment; a BOM before it is not text (bytes still count from the
    // start).
    let skip = if text.starts_with(BOM) { BOM.len() } else { 0 };
    let node_part = &text[skip..keys_at.map_or(text.len(), |(start, _)| start)];
    let config = base.parse_over(node_part).map_err(|e| match e {
        ConfigError::NotUtf8 { byte } => ExternalError::Config(ConfigError::NotUtf8 { byte: byte + skip }),
        e => ExternalError::Config(e),
    })?;
    let keys = match keys_at {
        None => None,
        Some((_, end)) => {
            let mut blanked: Vec<u8> = text.iter().take(end).filter(|b| **b == b'\n').copied().collect();
            blanked.extend_from_slice(&text[end.min(text.len())..]);
            Some(NodeKeys::parse(&blanked).map_err(ExternalError::Keys)?)
        }
    };
    Ok((config, keys))
}

/// [`apply`] for a source asked once the node's network is up (a metadata server): by then the
/// node runs in its mode, logs at its level, has set which CPUs run tasks and configured its
/// first card, so a text that changes any of these is refused rather than half obeyed.
pub fn apply_after_network(
    base: &NodeConfig,
    text: &[u8],
) -> Result<(NodeConfig, Option<NodeKeys>), ExternalError> {
    let (config, keys) = apply(base, text)?;
    let address = |c: &NodeConfig| c.ip.map(|ip| (ip.address, ip.prefix));
    let gateway = |c: &NodeConfig| c.ip.and_then(|ip| ip.gateway);
    let late = [
        ("mode", config.mode != base.mode),
        ("log", config.log_level != base.log_level),
        ("boot_cpu_tasks", config.boot_cpu_tasks != base.boot_cpu_tasks),
        ("ip", address(&config) != address(base)),
        ("gateway", gateway(&config) != gateway(base)),
    ];
    match late.into_iter().find(|(_, changed)| *changed) {
        Some((key, _)) => Err(ExternalError::TooLate { key }),
        None => Ok((config, keys)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mode, StaticIp};
    use alloc::format;
    use alloc::string::ToString;

    const KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const PEER: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn node_lines_replace_the_images_and_keys_come_along() {
        let base =
            NodeConfig::parse(b"mode = serve\nip = 10.0.2.15/24\ngateway = 10.0.2.2\npeers = 10.1.0.9\n")
                .unwrap();
        let text = format!(
            "{LABEL}\ncluster_ip = 10.1.0.2/24\npeers = 10.1.0.1 10.1.0.3\n[keys]\nnode_key = {KEY}\nclient_keys = {PEER}\npeer_keys = 10.1.0.1={PEER}\n"
        );
        let (config, keys) = apply(&base, text.as_bytes()).unwrap();
        assert_eq!(config.mode, Mode::Serve, "kept from the image");
        assert_eq!(config.ip.unwrap().gateway, Some([10, 0, 2, 2]), "the address and gateway kept");
        assert_eq!(config.cluster_ip, Some(StaticIp { address: [10, 1, 0, 2], prefix: 24, gateway: None }));
        assert_eq!(config.peers, [[10, 1, 0, 1], [10, 1, 0, 3]], "the list replaced, not added to");
        let keys = keys.unwrap();
        assert_eq!(keys.peers.len(), 1);
        assert_eq!(keys.clients.len(), 1);
        // Without keys: none, and the node lines alone.
        let (config, keys) = apply(&base, format!("{LABEL}\nmode = job\n").as_bytes()).unwrap();
        assert!(keys.is_none());
        assert_eq!(config.mode, Mode::Job);
    }

    #[test]
    fn a_disk_is_a_configuration_only_with_the_label() {
        let mut sector = format!("{LABEL}\nmode = serve\n").into_bytes();
        sector.resize(512, 0);
        assert_eq!(on_disk(&sector), Some(format!("{LABEL}\nmode = serve\n").as_bytes()));
        assert_eq!(on_disk(&[0u8; 512]), None, "a blank disk");
        assert_eq!(on_disk(b"CAIRNSTORE..."), None, "a store");
        assert_eq!(on_disk(b"# cairn config-22\n"), None, "not quite the label");
        assert!(on_disk(format!("{LABEL}\r\nmode = serve\r\n").as_bytes()).is_some(), "CRLF lines");
    }

    #[test]
    fn errors_name_the_line_of_the_whole_text_and_never_a_secret() {
        let base = NodeConfig::default();
        let err = apply(&base, format!("{LABEL}\nmode = serve\ncolour = red\n").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 3") && err.to_string().contains("colour"), "{err}");
        let err = apply(
            &base,
            format!("{LABEL}\nmode = serve\n[keys]\nnode_key = {KEY}\nnode_key = {KEY}\n").as_bytes(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 5"), "{err}");
        assert!(!err.to_string().contains(KEY));
        let err = apply(&base, format!("{LABEL}\n[keys]\nnode_key = nothex\n").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 3") && !err.to_string().contains("nothex"), "{err}");
        assert_eq!(apply(&base, b"mode = serve\n").unwrap_err(), ExternalError::NoLabel);
        let err = apply(&base, format!("{LABEL}\n[net]\n").as_bytes()).unwrap_err();
        assert_eq!(err, ExternalError::Section { line: 2 });
        let err =
            apply(&base, format!("{LABEL}\n[keys]\nnode_key = {KEY}\n[keys]\n").as_bytes()).unwrap_err();
        assert_eq!(err, ExternalError::Section { line: 4 });
        let err = apply(&base, format!("{LABEL}\ngateway = 10.0.2.2\n").as_bytes()).unwrap_err();
        assert_eq!(err, ExternalError::Config(ConfigError::GatewayWithoutIp));
    }

    #[test]
    fn the_gce_request_asks_for_the_attribute_with_the_flavor_header() {
        let request = gce_request();
        assert!(request.starts_with("GET /computeMetadata/v1/instance/attributes/cairn-config HTTP/1.0\r\n"));
        assert!(request.contains("\r\nMetadata-Flavor: Google\r\n") && request.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_text_that_fills_what_the_kernel_reads_may_have_been_cut_and_is_refused() {
        // Lines that end exactly at MAX_LEN, then the keys: what the kernel reads of the disk
        // (MAX_LEN bytes, no NUL among them) ends at a line's end and parses without them.
        let mut text = format!("{LABEL}\nmode = serve\n");
        while text.len() < MAX_LEN {
            text.push_str(if MAX_LEN - text.len() >= 4 { "# x\n" } else { "#\n" });
        }
        assert_eq!(text.len(), MAX_LEN);
        text.push_str(&format!("[keys]\nnode_key = {KEY}\n"));
        let mut disk = text.into_bytes();
        disk.resize(1 << 20, 0);
        let read = on_disk(&disk[..MAX_LEN]).expect("labelled: never the store's disk");
        let err = apply(&NodeConfig::default(), read).unwrap_err();
        assert_eq!(err, ExternalError::TooLong);
        assert!(err.to_string().contains("65536"), "{err}");
        // One byte less, ended by a NUL, is whole.
        let mut text = format!("{LABEL}\nmode = job\n").into_bytes();
        text.resize(MAX_LEN - 1, b'\n');
        text.push(0);
        assert_eq!(apply(&NodeConfig::default(), on_disk(&text).unwrap()).unwrap().0.mode, Mode::Job);
    }

    #[test]
    fn a_metadata_server_may_not_change_what_the_node_used_before_asking_it() {
        // The node asks it only once serving, its log and CPUs set up and its first card up:
        // these settings would be ignored, the node running otherwise than its text says.
        let base = NodeConfig::parse(b"mode = serve\nmetadata = gce\n").unwrap();
        for (line, key) in [
            ("mode = job", "mode"),
            ("log = debug", "log"),
            ("boot_cpu_tasks = no", "boot_cpu_tasks"),
            ("ip = 10.0.2.15/24", "ip"),
        ] {
            let err = apply_after_network(&base, format!("{LABEL}\n{line}\n").as_bytes()).unwrap_err();
            assert_eq!(err, ExternalError::TooLate { key }, "{line}");
            assert!(err.to_string().contains(key), "{err}");
        }
        let fixed = NodeConfig::parse(b"mode = serve\nip = 10.0.2.15/24\nmetadata = gce\n").unwrap();
        let err = apply_after_network(&fixed, format!("{LABEL}\ngateway = 10.0.2.2\n").as_bytes());
        assert_eq!(err.unwrap_err(), ExternalError::TooLate { key: "gateway" });
        // The same values, and everything the node reads later, are taken.
        let text = format!(
            "{LABEL}\nmode = serve\nlog = info\ncluster_ip = 10.1.0.2/24\npeers = 10.1.0.1\napi_idle_s = 30\ndisk_without_flush = yes\n[keys]\nnode_key = {KEY}\n"
        );
        let (config, keys) = apply_after_network(&base, text.as_bytes()).unwrap();
        assert_eq!((config.api_idle_s, config.peers.len(), config.disk_without_flush), (30, 1, true));
        assert!(keys.is_some());
    }

    #[test]
    fn what_editors_add_to_the_label_and_the_keys_line_is_no_different_text() {
        // A byte order mark (Notepad, PowerShell) or a space after the label: a disk the user
        // meant as the configuration, which was passed over (the node ran on the image's).
        for text in [
            format!("\u{feff}{LABEL}\r\nmode = job\r\n[keys]\r\nnode_key = {KEY}\r\n"),
            format!("{LABEL} \t\nmode = job\n[keys]\nnode_key = {KEY}\n"),
        ] {
            let mut disk = text.clone().into_bytes();
            disk.resize(4096, 0);
            assert_eq!(on_disk(&disk), Some(text.as_bytes()), "{text:?}");
            let (config, keys) = apply(&NodeConfig::default(), text.as_bytes()).unwrap();
            assert_eq!(config.mode, Mode::Job);
            assert!(keys.is_some());
        }
        // Errors still name the byte of the whole text.
        let err = apply(&NodeConfig::default(), b"\xef\xbb\xbf# cairn config-2\nmode = \xff\n").unwrap_err();
        assert_eq!(err, ExternalError::Config(ConfigError::NotUtf8 { byte: 27 }));
        // A comment after `[keys]`, as after any line.
        let text = format!("{LABEL}\nmode = job\n[keys]  # this node's\nnode_key = {KEY}\n");
        assert!(apply(&NodeConfig::default(), text.as_bytes()).unwrap().1.is_some());
        let text = format!("{LABEL}\n# [keys]\nmode = job\n");
        assert!(apply(&NodeConfig::default(), text.as_bytes()).unwrap().1.is_none(), "a comment");
    }

    #[test]
    fn a_gateway_alone_joins_the_images_address() {
        let base = NodeConfig::parse(b"ip = 10.0.2.15/24\n").unwrap();
        let (config, _) = apply(&base, format!("{LABEL}\ngateway = 10.0.2.2\n").as_bytes()).unwrap();
        assert_eq!(config.ip.unwrap().gateway, Some([10, 0, 2, 2]));
        let (config, _) = apply(&config, format!("{LABEL}\nip = 10.0.3.15/24\n").as_bytes()).unwrap();
        assert_eq!(config.ip.unwrap().gateway, None, "a new address drops the old gateway");
    }
}
