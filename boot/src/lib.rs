//! Turns the kernel ELF into bootable disk images.
//!
//! An image holds the bootloader, the kernel and the node configuration (as the bootloader's
//! ramdisk, see `cairn-bootcfg`). Images are cheap to make (milliseconds), so the host tools make
//! a fresh one for every boot with the configuration that boot needs.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use bootloader::{BootConfig, DiskImageBuilder};
use cairn_bootcfg::NodeConfig;

/// The kernel ELF built for `x86_64-unknown-none` in the same profile as this crate.
pub fn kernel_elf() -> &'static Path {
    Path::new(env!("CAIRN_KERNEL_ELF"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bios" => Ok(Firmware::Bios),
            "uefi" => Ok(Firmware::Uefi),
            _ => Err(format!("unknown firmware `{s}` (expected bios or uefi)")),
        }
    }
}

/// Writes a raw disk image for `firmware` that boots the kernel with `config`.
pub fn write_raw_image(firmware: Firmware, config: &NodeConfig, out: &Path) -> anyhow::Result<()> {
    write_raw_image_with_config_text(firmware, config.render().as_bytes(), out)
}

/// Like [`write_raw_image`], with the configuration as raw bytes, valid or not: for testing how
/// the kernel handles hand-edited configurations.
pub fn write_raw_image_with_config_text(firmware: Firmware, config: &[u8], out: &Path) -> anyhow::Result<()> {
    let mut ramdisk = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
    ramdisk
        .write_all(config)
        .and_then(|()| ramdisk.flush())
        .context("cannot write the node configuration")?;

    let mut boot_config = BootConfig::default();
    // The node's console is for the node: the bootloader only speaks up when something is wrong.
    boot_config.log_level = bootloader_boot_config::LevelFilter::Warn;
    boot_config.frame_buffer_logging = false;

    let mut builder = DiskImageBuilder::new(kernel_elf().to_path_buf());
    builder.set_ramdisk(ramdisk.path().to_path_buf()).set_boot_config(&boot_config);
    let result = match firmware {
        Firmware::Bios => builder.create_bios_image(out),
        Firmware::Uefi => builder.create_uefi_image(out),
    };
    result.with_context(|| format!("cannot write the {firmware} image to {}", out.display()))
}
