//! PCI configuration space through the legacy I/O ports (0xcf8/0xcfc): `virtio-drivers` 0.13
//! has no port-I/O access of its own.

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use x86_64::instructions::port::Port;

pub struct PortCam;

impl PortCam {
    fn address(df: DeviceFunction, offset: u8) -> u32 {
        0x8000_0000
            | (df.bus as u32) << 16
            | (df.device as u32) << 11
            | (df.function as u32) << 8
            | (offset as u32 & 0xfc)
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        // SAFETY: the standard configuration mechanism #1: an address write to 0xcf8, then a
        // data read from 0xcfc; interrupts cannot interleave another access (single CPU,
        // no PCI access from interrupt handlers).
        unsafe {
            Port::<u32>::new(0xcf8).write(Self::address(df, offset));
            Port::<u32>::new(0xcfc).read()
        }
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        // SAFETY: as in read_word.
        unsafe {
            Port::<u32>::new(0xcf8).write(Self::address(df, offset));
            Port::<u32>::new(0xcfc).write(data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// The `nth` virtio network device on bus 0 (where QEMU puts its devices, in the order of its
/// command line).
pub fn find_virtio_net(nth: usize) -> Option<(PciRoot<PortCam>, DeviceFunction)> {
    find_virtio(&[0x1000, 0x1041], nth)
}

/// The `nth` virtio device on bus 0 with one of these PCI device ids (legacy and modern).
pub fn find_virtio(device_ids: &[u16], nth: usize) -> Option<(PciRoot<PortCam>, DeviceFunction)> {
    let root = PciRoot::new(PortCam);
    let found = root
        .enumerate_bus(0)
        .filter(|(_, info)| info.vendor_id == 0x1af4 && device_ids.contains(&info.device_id))
        .nth(nth)
        .map(|(df, _)| df)?;
    Some((root, found))
}

/// The legacy interrupt line the firmware assigned to a device (config offset 0x3c), if any.
pub fn interrupt_line(df: DeviceFunction) -> Option<u8> {
    let line = (PortCam.read_word(df, 0x3c) & 0xff) as u8;
    (line < 16 && line != 0).then_some(line)
}
