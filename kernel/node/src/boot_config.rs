//! What the kernel asks of the bootloader, and the node configuration it hands over.

use alloc::format;
use alloc::string::String;
use bootloader_api::BootInfo;
use bootloader_api::config::{BootloaderConfig, Mapping};
use cairn_bootcfg::external::{self, Source};
use cairn_bootcfg::{ConfigError, NodeConfig, NodeKeys};

pub const BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    // Everything the bootloader places goes in the upper half, below the kernel-managed ranges
    // (memory::paging); the lower half stays free for task address spaces.
    config.mappings.dynamic_range_start = Some(0xffff_8000_0000_0000);
    config.mappings.dynamic_range_end = Some(0xffff_bfff_ffff_f000);
    config.kernel_stack_size = 256 * 1024;
    config
};

/// The node configuration travels as the bootloader's ramdisk (boot/ writes it); no ramdisk
/// means the defaults.
pub fn node_config(boot_info: &BootInfo) -> Result<NodeConfig, ConfigError> {
    match crate::memory::boot_ramdisk(boot_info) {
        None => Ok(NodeConfig::default()),
        Some(bytes) => NodeConfig::parse(bytes),
    }
}

/// The node's keys from an outside configuration, for `load_keys` (docs/CLOUD.md).
static OUTSIDE_KEYS: spin::Mutex<Option<(Source, NodeKeys)>> = spin::Mutex::new(None);

/// Keys an outside configuration gave, and where from (taken once).
pub fn outside_keys() -> Option<(Source, NodeKeys)> {
    OUTSIDE_KEYS.lock().take()
}

/// Keeps the keys an outside source gave for `load_keys`: from one source only.
fn keep_keys(source: Source, keys: NodeKeys) -> Result<(), String> {
    let mut outside = OUTSIDE_KEYS.lock();
    if let Some((first, _)) = outside.as_ref() {
        return Err(format!(
            "node keys come from both the {} and the {}: give them once",
            first.name(),
            source.name()
        ));
    }
    *outside = Some((source, keys));
    Ok(())
}

/// `config` with the text a metadata server gave over it, and its keys kept for `load_keys`.
/// What the node already put to use (its mode, log level, first card) the text may not change.
pub fn from_metadata(config: &NodeConfig, text: &[u8], source: Source) -> Result<NodeConfig, String> {
    let (next, keys) = external::apply_after_network(config, text).map_err(|e| format!("{e}"))?;
    if let Some(keys) = keys {
        keep_keys(source, keys)?;
    }
    Ok(next)
}

/// The image's configuration with the outside ones over it (docs/CLOUD.md): a config disk,
/// then QEMU's fw_cfg file `opt/cairn/config`. Returns the configuration and the sources it
/// came from; an error names the source and what is wrong with it (the node must not run half
/// configured).
pub fn with_outside(image: NodeConfig) -> Result<(NodeConfig, String), String> {
    let mut config = image;
    let mut sources = String::from("image");
    let disk =
        crate::drivers::blk::config_disk().map_err(|e| format!("{}: {e}", Source::ConfigDisk.name()))?;
    let fw_cfg = match crate::drivers::fw_cfg::file(external::FW_CFG_CONFIG) {
        Ok(bytes) => Some(bytes),
        Err(crate::drivers::fw_cfg::FwCfgError::NoDevice | crate::drivers::fw_cfg::FwCfgError::NoFile) => {
            None
        }
        Err(crate::drivers::fw_cfg::FwCfgError::TooLarge(size)) => {
            return Err(format!("{}: {size} bytes, more than a configuration holds", Source::FwCfg.name()));
        }
    };
    for (source, text) in [(Source::ConfigDisk, disk), (Source::FwCfg, fw_cfg)] {
        let Some(text) = text else { continue };
        let (next, keys) = external::apply(&config, &text).map_err(|e| format!("{}: {e}", source.name()))?;
        config = next;
        sources.push_str(" + ");
        sources.push_str(source.name());
        if let Some(keys) = keys {
            keep_keys(source, keys)?;
        }
    }
    Ok((config, sources))
}
