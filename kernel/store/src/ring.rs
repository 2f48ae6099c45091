//! The log is a ring (docs/STORE.md, "The log is a ring"): records are named by their log
//! offset, which only grows; offset `v` lies at byte `LOG_START + (v - LOG_START) % lap` of the
//! disk, where a lap is the disk after the superblocks (a record may cross the end of a lap:
//! reads and writes are split there). The tail never runs more than a lap past the head, the
//! oldest record still needed, which compaction moves forward; appends other than compaction's
//! copies and checkpoints leave a reserve of the ring free, so that compaction has room to work.

use crate::superblock::{LOG_START, Superblock};
use crate::{Device, DeviceError, DiskStore, StoreError};

/// Bytes of the disk the log goes round.
pub(crate) fn lap(superblock: &Superblock) -> u64 {
    superblock.device_len - LOG_START
}

/// Where on the disk log offset `v` lies.
pub(crate) fn place(superblock: &Superblock, v: u64) -> u64 {
    LOG_START + (v - LOG_START) % lap(superblock)
}

/// Reads `buf.len()` bytes of the log from offset `v`, across the end of a lap if need be.
pub(crate) fn read_at<D: Device>(
    device: &mut D,
    superblock: &Superblock,
    v: u64,
    buf: &mut [u8],
) -> Result<(), DeviceError> {
    let (mut v, mut done) = (v, 0);
    while done < buf.len() {
        let at = place(superblock, v);
        let n = ((superblock.device_len - at) as usize).min(buf.len() - done);
        device.read(at, &mut buf[done..done + n])?;
        (v, done) = (v + n as u64, done + n);
    }
    Ok(())
}

/// Writes whole sectors of the log from offset `v`, across the end of a lap if need be.
pub(crate) fn write_at<D: Device>(
    device: &mut D,
    superblock: &Superblock,
    v: u64,
    bytes: &[u8],
) -> Result<(), DeviceError> {
    let (mut v, mut done) = (v, 0);
    while done < bytes.len() {
        let at = place(superblock, v);
        let n = ((superblock.device_len - at) as usize).min(bytes.len() - done);
        device.write(at, &bytes[done..done + n])?;
        (v, done) = (v + n as u64, done + n);
    }
    Ok(())
}

impl<D: Device> DiskStore<D> {
    pub(crate) fn log_len(&self) -> u64 {
        lap(&self.superblock)
    }

    pub(crate) fn read_at(&mut self, v: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        Ok(read_at(&mut self.device, &self.superblock, v, buf)?)
    }

    /// Bytes the log may still take: a lap past the durable head, less what it holds.
    pub(crate) fn free(&self) -> u64 {
        self.log_len().saturating_sub(self.tail - self.superblock.head)
    }

    /// What compaction and checkpoints may use beyond what other appends may: an eighth of the
    /// ring (twice the largest object record) and room for a checkpoint of the index as it is,
    /// so that compaction can always copy the record at the head and end with a checkpoint.
    pub(crate) fn reserve(&self) -> u64 {
        self.log_len() / 8 + self.checkpoint_len()
    }

    /// What a checkpoint of the index as it is takes, with the padding of its commit.
    pub(crate) fn checkpoint_len(&self) -> u64 {
        crate::record::record_len(self.index.encoded_len() as u64) + crate::SECTOR
    }

    /// What compaction needs to get going: the largest object record and a checkpoint.
    fn compaction_need(&self) -> u64 {
        self.log_len() / 16 + self.checkpoint_len() + 4 * crate::SECTOR
    }

    /// The largest object a record on this disk may hold: a sixteenth of the ring, less the
    /// record's header and handle.
    pub fn max_object(&self) -> u64 {
        (self.log_len() / 16).saturating_sub(crate::record::HEADER_LEN + 40 + crate::record::ALIGN)
    }

    /// Bytes an append may take now: compaction's copies and checkpoints everything; taking a
    /// note away (an unpin: on a disk full of pinned objects nothing else can ever free room)
    /// all but what compaction needs; anything else all but the reserve.
    pub(crate) fn room(&self, removing_a_note: bool) -> u64 {
        if self.use_reserve {
            self.free()
        } else if removing_a_note {
            self.free().saturating_sub(self.compaction_need())
        } else {
            self.free().saturating_sub(self.reserve())
        }
    }
}
