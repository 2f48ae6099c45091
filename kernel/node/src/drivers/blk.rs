//! virtio-blk, for the node's store (docs/STORE.md): the first virtio block device, as a
//! `cairn_store::Device`. Requests are synchronous (the driver waits for each); writes and reads
//! go in pieces of at most [`PIECE`] bytes.

use alloc::format;
use alloc::string::String;

use cairn_store::{Device, DeviceError, SECTOR};
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::Transport;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::Command;

use super::virtio::KernelHal;

/// The VIRTIO_BLK_F_FLUSH feature bit.
const FEATURE_FLUSH: u64 = 1 << 9;
/// The VIRTIO_BLK_F_RO feature bit.
const FEATURE_READ_ONLY: u64 = 1 << 5;
/// The most one request moves.
const PIECE: usize = 1 << 20;

pub struct Disk {
    device: VirtIOBlk<KernelHal, PciTransport>,
    len: u64,
    /// One sector in the heap (the linear map: the device reads into it without a bounce).
    sector: alloc::boxed::Box<[u8; SECTOR as usize]>,
    /// Whether the device offers FLUSH. One that does not is used only if the node's
    /// configuration says so, and then a flush does nothing: its data is not durable.
    pub flushes: bool,
}

/// What was found on the PCI bus.
pub enum Found {
    Usable(alloc::boxed::Box<Disk>),
    /// A disk that cannot be used, and why.
    Unusable(String),
}

/// virtio-blk's PCI device ids (legacy and modern).
const BLK_IDS: [u16; 2] = [0x1001, 0x1042];
/// The most block devices looked at for a configuration.
const MAX_DISKS: usize = 8;
/// Which block device holds the outside configuration (usize::MAX: none): never the store's.
static CONFIG_DISK: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(usize::MAX);

/// The text of the first block device that carries an outside configuration (docs/CLOUD.md),
/// if one does; it is then never taken for the store's disk.
pub fn config_disk() -> Result<Option<alloc::vec::Vec<u8>>, String> {
    for nth in 0..MAX_DISKS {
        let Some((mut root, df)) = super::pci::find_virtio(&BLK_IDS, nth) else { break };
        root.set_command(df, Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER);
        let transport = PciTransport::new::<KernelHal, _>(&mut root, df)
            .map_err(|e| format!("block device {nth}: its PCI transport: {e:?}"))?;
        let mut device = VirtIOBlk::<KernelHal, _>::new(transport)
            .map_err(|e| format!("block device {nth}: the driver could not start it: {e:?}"))?;
        let sectors = (cairn_bootcfg::external::MAX_LEN as u64 / SECTOR).min(device.capacity()) as usize;
        if sectors == 0 {
            // An empty device (a file of no bytes) holds no configuration, and the driver
            // panics on a read of nothing.
            continue;
        }
        let mut start = alloc::vec![0u8; sectors * SECTOR as usize];
        device.read_blocks(0, &mut start).map_err(|e| format!("block device {nth}: a read failed: {e:?}"))?;
        if let Some(text) = cairn_bootcfg::external::on_disk(&start) {
            CONFIG_DISK.store(nth, core::sync::atomic::Ordering::Relaxed);
            return Ok(Some(text.to_vec()));
        }
    }
    Ok(None)
}

/// The first virtio block device that is not the configuration's; None without one. A device
/// that cannot flush is usable only `without_flush` (the configuration's explicit
/// `disk_without_flush = yes`).
pub fn find(without_flush: bool) -> Option<Found> {
    let config = CONFIG_DISK.load(core::sync::atomic::Ordering::Relaxed);
    let nth = if config == 0 { 1 } else { 0 };
    let (mut root, df) = super::pci::find_virtio(&BLK_IDS, nth)?;
    root.set_command(df, Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER);
    let mut transport = match PciTransport::new::<KernelHal, _>(&mut root, df) {
        Ok(t) => t,
        Err(e) => return Some(Found::Unusable(format!("its PCI transport: {e:?}"))),
    };
    let features = transport.read_device_features();
    let flushes = features & FEATURE_FLUSH != 0;
    if !flushes && !without_flush {
        // Its writes could be lost after the node says they are durable.
        return Some(Found::Unusable(
            "the device cannot flush its writes, so nothing written to it would be durable".into(),
        ));
    }
    if features & FEATURE_READ_ONLY != 0 {
        return Some(Found::Unusable("the device is read-only".into()));
    }
    match VirtIOBlk::<KernelHal, _>::new(transport) {
        Ok(device) => {
            let len = device.capacity().saturating_mul(SECTOR);
            let sector = alloc::boxed::Box::new([0u8; SECTOR as usize]);
            Some(Found::Usable(alloc::boxed::Box::new(Disk { device, len, sector, flushes })))
        }
        Err(e) => Some(Found::Unusable(format!("the driver could not start it: {e:?}"))),
    }
}

fn failed(what: &'static str) -> impl Fn(virtio_drivers::Error) -> DeviceError {
    move |_| DeviceError(what)
}

impl Device for Disk {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.len)
            .ok_or(DeviceError("read past the end"))?;
        // A partial first and last sector through a buffer of one sector; whole sectors in
        // between straight into `buf` (no allocation sized by the read).
        let mut at = offset;
        let mut filled = 0;
        while at < end {
            let sector = at / SECTOR;
            let within = (at % SECTOR) as usize;
            if within == 0 && end - at >= SECTOR {
                let whole = (((end - at) / SECTOR) * SECTOR).min(PIECE as u64) as usize;
                self.device
                    .read_blocks(sector as usize, &mut buf[filled..filled + whole])
                    .map_err(failed("a read failed"))?;
                at += whole as u64;
                filled += whole;
                continue;
            }
            self.device
                .read_blocks(sector as usize, &mut self.sector[..])
                .map_err(failed("a read failed"))?;
            let n = (SECTOR as usize - within).min((end - at) as usize);
            buf[filled..filled + n].copy_from_slice(&self.sector[within..within + n]);
            at += n as u64;
            filled += n;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), DeviceError> {
        if !offset.is_multiple_of(SECTOR) || !(bytes.len() as u64).is_multiple_of(SECTOR) {
            return Err(DeviceError("a write not of whole sectors"));
        }
        if offset.checked_add(bytes.len() as u64).is_none_or(|e| e > self.len) {
            return Err(DeviceError("write past the end"));
        }
        for (i, piece) in bytes.chunks(PIECE).enumerate() {
            let sector = (offset / SECTOR) as usize + i * PIECE / SECTOR as usize;
            self.device.write_blocks(sector, piece).map_err(failed("a write failed"))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        if !self.flushes {
            return Ok(());
        }
        self.device.flush().map_err(failed("a flush failed"))
    }
}
