//! What the store needs of a disk: reads anywhere, writes of whole sectors, and a flush that
//! makes every write before it durable.

use core::fmt;

/// The unit of a write, and of the device's atomicity: a sector is written whole or not at all.
pub const SECTOR: u64 = 512;

/// A device error, as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceError(pub &'static str);

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "disk: {}", self.0)
    }
}

pub trait Device {
    /// Bytes on the device (a multiple of [`SECTOR`]).
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `buf.len()` bytes at `offset`, anywhere on the device.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;

    /// Writes `bytes` at `offset`; both are whole sectors. Not durable until [`Device::flush`].
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), DeviceError>;

    /// Makes every write made before it durable.
    fn flush(&mut self) -> Result<(), DeviceError>;
}
