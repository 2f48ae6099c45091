//! virtio-rng, where the machine has one: the host's entropy, mixed into the node's pool.

use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::Command;

use super::virtio::KernelHal;

/// Up to `out.len()` bytes from the first virtio-rng device; None without one.
pub fn read(out: &mut [u8]) -> Option<usize> {
    let (mut root, df) = super::pci::find_virtio(&[0x1005, 0x1044], 0)?;
    root.set_command(df, Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER);
    let transport = PciTransport::new::<KernelHal, _>(&mut root, df).ok()?;
    let mut device = VirtIORng::<KernelHal, _>::new(transport).ok()?;
    let mut filled = 0;
    // A device gives what it has per request; a few requests fill a seed.
    for _ in 0..8 {
        if filled == out.len() {
            break;
        }
        filled += device.request_entropy(&mut out[filled..]).ok()?;
    }
    Some(filled)
}
