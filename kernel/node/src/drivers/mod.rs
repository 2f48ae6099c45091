//! Device drivers. Each one owns its device's registers; the rest of the kernel sees safe APIs.

pub mod blk;
pub mod fw_cfg;
pub mod net;
pub mod pci;
pub mod qemu_exit;
pub mod rng;
pub mod serial;
pub mod virtio;
