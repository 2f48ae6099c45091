//! What the kernel asks of the bootloader, and the node configuration it hands over.

use bootloader_api::BootInfo;
use bootloader_api::config::{BootloaderConfig, Mapping};
use cairn_bootcfg::{ConfigError, NodeConfig};

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
