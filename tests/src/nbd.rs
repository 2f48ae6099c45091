//! A small NBD server for crash tests: QEMU's store drive can be an NBD export
//! ([`cairn_tools::qemu::StoreDisk::Nbd`]) whose writes the test can lose as a power cut would.
//!
//! The disk is a fixed-size durable image plus the writes received since the last flush, kept
//! in memory sector by sector (512 bytes). Reads see the latest data; a FLUSH (or a write with
//! FUA) makes what it covers durable before it is answered. [`NbdServer::cut`] is the power cut:
//! it stops serving (every connection dropped, the port closed) and keeps none, or a seeded
//! random choice, of the unflushed writes: for each sector written since the last flush, the
//! durable copy or any one of the versions written to it, which is what docs/STORE.md assumes a
//! disk may do (unflushed writes lost in any subset and order, a sector written whole or not).
//! The image it returns is what the next server serves to the next QEMU.
//!
//! The protocol (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>): the
//! fixed newstyle handshake with `NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_EXPORT_NAME`,
//! `NBD_OPT_LIST` and `NBD_OPT_ABORT` (other options, structured replies among them, are
//! refused as unsupported), then simple replies to READ, WRITE (with FUA), FLUSH and DISC.
//! One export, whatever name the client asks for.

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const SECTOR: u64 = 512;
/// The most one request reads or writes (advertised as the maximum block size).
pub const MAX_REQUEST: u32 = 32 << 20;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const CLIENT_FLAGS_KNOWN: u32 = 0b11;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_INVALID: u32 = (1 << 31) | 3;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1 << 0;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_FUA: u16 = 1 << 3;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_FLAG_FUA: u16 = 1 << 0;

const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// Option data longer than this closes the connection (names are short).
const MAX_OPTION: u32 = 64 << 10;

/// What a power cut keeps of the writes not yet flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// None of them.
    DropAll,
    /// For each sector written since the last flush, chosen from `seed`: half the time its
    /// durable copy, otherwise one of the versions written to it (any, not only the latest).
    KeepRandom { seed: u64 },
}

/// When a cut falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    /// At once.
    Now,
    /// When the next FLUSH arrives, before it is done: everything written since the last one
    /// (a whole commit of the store, say) is unflushed.
    BeforeFlush,
    /// Right after the next WRITE is taken, before it is answered.
    AfterWrite,
}

/// What a cut found and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Sectors written since the last flush.
    pub unflushed_sectors: u64,
    /// Those of them that took one of the written versions.
    pub kept_sectors: u64,
    /// A cut waiting for its moment ([`NbdServer::cut_at`]) that came too late: it was made at
    /// once instead.
    pub moment_missed: bool,
    /// What the server had served when it was cut.
    pub stats: NbdStats,
}

/// Requests served since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NbdStats {
    pub connections: u64,
    pub reads: u64,
    pub writes: u64,
    pub fua_writes: u64,
    pub flushes: u64,
}

/// The disk: the durable image and, per sector, the versions written since the last flush
/// (oldest first).
struct Disk {
    durable: Vec<u8>,
    pending: BTreeMap<u64, Vec<Box<[u8]>>>,
    /// Set by a cut: nothing more is read, written or answered.
    halted: bool,
    /// A cut waiting for its moment, and then what it did.
    armed: Option<(Moment, Cut)>,
    report: Option<CutReport>,
    stats: NbdStats,
}

impl Disk {
    fn len(&self) -> u64 {
        self.durable.len() as u64
    }

    fn sector(&self, sector: u64) -> &[u8] {
        match self.pending.get(&sector).and_then(|v| v.last()) {
            Some(latest) => latest,
            None => &self.durable[(sector * SECTOR) as usize..((sector + 1) * SECTOR) as usize],
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        buf.copy_from_slice(&self.durable[offset as usize..end as usize]);
        for (&sector, versions) in self.pending.range(offset / SECTOR..end.div_ceil(SECTOR)) {
            let latest = versions.last().expect("a pending sector has a version");
            let (start, stop) = ((sector * SECTOR).max(offset), ((sector + 1) * SECTOR).min(end));
            buf[(start - offset) as usize..(stop - offset) as usize].copy_from_slice(
                &latest[(start - sector * SECTOR) as usize..(stop - sector * SECTOR) as usize],
            );
        }
    }

    /// Records a write as a new version of every sector it touches (a partial sector is merged
    /// with the sector's latest data); with `fua`, those sectors become durable at once.
    fn write(&mut self, offset: u64, bytes: &[u8], fua: bool) {
        let end = offset + bytes.len() as u64;
        for sector in offset / SECTOR..end.div_ceil(SECTOR) {
            let base = sector * SECTOR;
            let mut data: Box<[u8]> = self.sector(sector).into();
            let (start, stop) = (base.max(offset), (base + SECTOR).min(end));
            data[(start - base) as usize..(stop - base) as usize]
                .copy_from_slice(&bytes[(start - offset) as usize..(stop - offset) as usize]);
            if fua {
                // Durable now; older unflushed versions can no longer come back over it.
                self.pending.remove(&sector);
                self.durable[base as usize..(base + SECTOR) as usize].copy_from_slice(&data);
            } else {
                self.pending.entry(sector).or_default().push(data);
            }
        }
    }

    fn flush(&mut self) {
        for (sector, versions) in std::mem::take(&mut self.pending) {
            let latest = versions.last().expect("a pending sector has a version");
            let at = (sector * SECTOR) as usize;
            self.durable[at..at + SECTOR as usize].copy_from_slice(latest);
        }
    }

    /// The cut: halts the disk and keeps of the unflushed writes what `how` says.
    fn cut(&mut self, how: Cut) -> CutReport {
        self.halted = true;
        self.armed = None;
        let pending = std::mem::take(&mut self.pending);
        let mut report =
            CutReport { unflushed_sectors: pending.len() as u64, stats: self.stats, ..CutReport::default() };
        if let Cut::KeepRandom { seed } = how {
            let mut rng = SplitMix::new(seed);
            for (sector, versions) in pending {
                if rng.next_u64() % 2 == 0 {
                    continue;
                }
                let chosen = &versions[(rng.next_u64() % versions.len() as u64) as usize];
                let at = (sector * SECTOR) as usize;
                self.durable[at..at + SECTOR as usize].copy_from_slice(chosen);
                report.kept_sectors += 1;
            }
        }
        self.report = Some(report);
        report
    }

    /// Makes the armed cut if `now` is its moment (the connection then ends).
    fn cut_if(&mut self, now: Moment) -> io::Result<()> {
        match self.armed {
            Some((moment, how)) if moment == now => {
                self.cut(how);
                Err(halted())
            }
            _ => Ok(()),
        }
    }
}

/// The fuzzers' seeded generator (`cairn_fuzz::Rng`, SplitMix64), with ranges: for cuts and for
/// the tests' choices.
#[derive(Clone, Debug)]
pub struct SplitMix(cairn_fuzz::Rng);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(cairn_fuzz::Rng::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `range` (start inclusive, end exclusive; not empty).
    pub fn below(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.0.below(range.end - range.start)
    }
}

struct Shared {
    disk: Mutex<Disk>,
    /// Signalled when an armed cut is made.
    cut_made: Condvar,
    stopping: AtomicBool,
    connections: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

impl Shared {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An NBD server on 127.0.0.1 serving one disk until it is cut or dropped.
pub struct NbdServer {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl NbdServer {
    /// A blank disk of `size` bytes (a multiple of 512).
    pub fn blank(size: u64) -> io::Result<NbdServer> {
        NbdServer::start(vec![0; size as usize])
    }

    /// Serves `image` (its length a multiple of 512) on a free port of 127.0.0.1.
    pub fn start(image: Vec<u8>) -> io::Result<NbdServer> {
        if image.is_empty() || !(image.len() as u64).is_multiple_of(SECTOR) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the image must be whole sectors"));
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            disk: Mutex::new(Disk {
                durable: image,
                pending: BTreeMap::new(),
                halted: false,
                armed: None,
                report: None,
                stats: NbdStats::default(),
            }),
            cut_made: Condvar::new(),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let Ok(handle) = stream.try_clone() else { continue };
                let serving = accepting.clone();
                let thread = thread::spawn(move || {
                    // A client that misbehaves or goes away just ends its connection. (The
                    // server holds a handle on the socket until it stops: close it here.)
                    let socket = stream.try_clone();
                    let _ = serve(stream, &serving);
                    if let Ok(socket) = socket {
                        let _ = socket.shutdown(Shutdown::Both);
                    }
                });
                let mut connections = accepting.connections.lock().unwrap_or_else(|e| e.into_inner());
                connections.retain(|(_, thread)| !thread.is_finished());
                connections.push((handle, thread));
            }
        });
        Ok(NbdServer { port, shared, accept: Some(accept) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn size(&self) -> u64 {
        self.shared.disk().len()
    }

    pub fn stats(&self) -> NbdStats {
        self.shared.disk().stats
    }

    /// The data a read would see now (tests).
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.shared.disk().read(offset, &mut buf);
        buf
    }

    /// The power cut: no request is served from this moment, the connections are dropped and
    /// the port closed, and the writes not yet flushed are lost but for what `how` keeps.
    /// Returns the durable image, for the next server, and what the cut did.
    pub fn cut(self, how: Cut) -> (Vec<u8>, CutReport) {
        self.cut_at(Moment::Now, how, Duration::ZERO)
    }

    /// The power cut at a `moment` of the traffic: the first one within `wait`, or else at
    /// once (the report says so).
    pub fn cut_at(mut self, moment: Moment, how: Cut, wait: Duration) -> (Vec<u8>, CutReport) {
        let report = {
            let mut disk = self.shared.disk();
            if moment != Moment::Now {
                disk.armed = Some((moment, how));
                let deadline = Instant::now() + wait;
                while disk.report.is_none() && Instant::now() < deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    disk = self.shared.cut_made.wait_timeout(disk, left).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
            match disk.report {
                Some(report) => report,
                None => CutReport { moment_missed: moment != Moment::Now, ..disk.cut(how) },
            }
        };
        self.stop();
        let image = std::mem::take(&mut self.shared.disk().durable);
        (image, report)
    }

    /// Stops serving: halts the disk, closes the port and every connection, and waits for
    /// their threads.
    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else { return };
        self.shared.disk().halted = true;
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees `stopping` and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = accept.join();
        let connections =
            std::mem::take(&mut *self.shared.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for (stream, _) in &connections {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for (_, thread) in connections {
            let _ = thread.join();
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn halted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the disk was cut")
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn option_reply(w: &mut impl Write, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    w.write_all(&REPLY_MAGIC.to_be_bytes())?;
    w.write_all(&option.to_be_bytes())?;
    w.write_all(&kind.to_be_bytes())?;
    w.write_all(&(data.len() as u32).to_be_bytes())?;
    w.write_all(data)?;
    w.flush()
}

const TRANSMISSION_FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;

/// One connection: the handshake, then requests until DISC, an error or the cut.
fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut r = BufReader::with_capacity(1 << 20, stream.try_clone()?);
    let mut w = BufWriter::with_capacity(1 << 20, stream);
    {
        let mut disk = shared.disk();
        if disk.halted {
            return Err(halted());
        }
        disk.stats.connections += 1;
    }
    if handshake(&mut r, &mut w, shared)? {
        transmission(&mut r, &mut w, shared)?;
    }
    Ok(())
}

/// The fixed newstyle handshake; true once the client has chosen the export.
fn handshake(r: &mut impl Read, w: &mut impl Write, shared: &Shared) -> io::Result<bool> {
    w.write_all(&NBDMAGIC.to_be_bytes())?;
    w.write_all(&IHAVEOPT.to_be_bytes())?;
    w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let client_flags = read_u32(r)?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 || client_flags & FLAG_FIXED_NEWSTYLE as u32 == 0 {
        return Err(protocol("client flags"));
    }
    let no_zeroes = client_flags & FLAG_NO_ZEROES as u32 != 0;
    let size = shared.disk().len();
    loop {
        if read_u64(r)? != IHAVEOPT {
            return Err(protocol("option magic"));
        }
        let option = read_u32(r)?;
        let len = read_u32(r)?;
        if len > MAX_OPTION {
            return Err(protocol("option too long"));
        }
        let mut data = vec![0; len as usize];
        r.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                w.write_all(&size.to_be_bytes())?;
                w.write_all(&TRANSMISSION_FLAGS.to_be_bytes())?;
                if !no_zeroes {
                    w.write_all(&[0; 124])?;
                }
                w.flush()?;
                return Ok(true);
            }
            OPT_ABORT => {
                option_reply(w, option, REP_ACK, &[])?;
                return Ok(false);
            }
            OPT_LIST if data.is_empty() => {
                // One export; its name is empty.
                option_reply(w, option, REP_SERVER, &0u32.to_be_bytes())?;
                option_reply(w, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some(requests) = info_requests(&data) else {
                    option_reply(w, option, REP_ERR_INVALID, &[])?;
                    continue;
                };
                let mut export = INFO_EXPORT.to_be_bytes().to_vec();
                export.extend_from_slice(&size.to_be_bytes());
                export.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                option_reply(w, option, REP_INFO, &export)?;
                if requests.contains(&INFO_BLOCK_SIZE) {
                    let mut sizes = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for n in [SECTOR as u32, 4096, MAX_REQUEST] {
                        sizes.extend_from_slice(&n.to_be_bytes());
                    }
                    option_reply(w, option, REP_INFO, &sizes)?;
                }
                option_reply(w, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(true);
                }
            }
            OPT_LIST => option_reply(w, option, REP_ERR_INVALID, &[])?,
            // Structured replies, meta contexts, TLS and the rest.
            _ => option_reply(w, option, REP_ERR_UNSUP, &[])?,
        }
    }
}

/// The information requests of an NBD_OPT_INFO or NBD_OPT_GO, if its data is well formed.
fn info_requests(data: &[u8]) -> Option<Vec<u16>> {
    let name_len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let rest = data.get(4usize.checked_add(name_len)?..)?;
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let list = rest.get(2..)?;
    if list.len() != count * 2 {
        return None;
    }
    Some(list.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
}

fn simple_reply(w: &mut impl Write, error: u32, cookie: u64, data: &[u8]) -> io::Result<()> {
    w.write_all(&SIMPLE_REPLY_MAGIC.to_be_bytes())?;
    w.write_all(&error.to_be_bytes())?;
    w.write_all(&cookie.to_be_bytes())?;
    w.write_all(data)?;
    w.flush()
}

/// Requests, answered in the order received; each write is applied before it is answered and
/// each flush done before it is answered.
fn transmission(r: &mut impl Read, w: &mut impl Write, shared: &Shared) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        if read_u32(r)? != REQUEST_MAGIC {
            return Err(protocol("request magic"));
        }
        let flags = read_u16(r)?;
        let command = read_u16(r)?;
        let cookie = read_u64(r)?;
        let offset = read_u64(r)?;
        let len = read_u32(r)?;
        let in_bounds = |size: u64| offset.checked_add(len as u64).is_some_and(|end| end <= size);
        match command {
            CMD_READ => {
                let mut disk = shared.disk();
                if disk.halted {
                    return Err(halted());
                }
                if len > MAX_REQUEST || !in_bounds(disk.len()) {
                    drop(disk);
                    simple_reply(w, EINVAL, cookie, &[])?;
                    continue;
                }
                buf.resize(len as usize, 0);
                disk.read(offset, &mut buf);
                disk.stats.reads += 1;
                drop(disk);
                simple_reply(w, 0, cookie, &buf)?;
            }
            CMD_WRITE => {
                if len > MAX_REQUEST {
                    // Its payload cannot be taken: the connection ends.
                    return Err(protocol("write too long"));
                }
                buf.resize(len as usize, 0);
                r.read_exact(&mut buf)?;
                let mut disk = shared.disk();
                if disk.halted {
                    return Err(halted());
                }
                if !in_bounds(disk.len()) {
                    drop(disk);
                    simple_reply(w, ENOSPC, cookie, &[])?;
                    continue;
                }
                let fua = flags & CMD_FLAG_FUA != 0;
                disk.write(offset, &buf, fua);
                disk.stats.writes += 1;
                disk.stats.fua_writes += fua as u64;
                if let Err(cut) = disk.cut_if(Moment::AfterWrite) {
                    shared.cut_made.notify_all();
                    return Err(cut);
                }
                drop(disk);
                simple_reply(w, 0, cookie, &[])?;
            }
            CMD_FLUSH => {
                let mut disk = shared.disk();
                if disk.halted {
                    return Err(halted());
                }
                if let Err(cut) = disk.cut_if(Moment::BeforeFlush) {
                    shared.cut_made.notify_all();
                    return Err(cut);
                }
                disk.flush();
                disk.stats.flushes += 1;
                drop(disk);
                simple_reply(w, 0, cookie, &[])?;
            }
            CMD_DISC => return Ok(()),
            // Not advertised (TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS...): no payload to skip.
            _ => simple_reply(w, EINVAL, cookie, &[])?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client speaking the protocol by hand.
    struct Fake {
        s: TcpStream,
        next: u64,
    }

    impl Fake {
        /// Connects and reads the greeting; `flags` are the client flags sent.
        fn connect(port: u16, flags: u32) -> Fake {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut fake = Fake { s, next: 1 };
            assert_eq!(read_u64(&mut fake.s).unwrap(), NBDMAGIC);
            assert_eq!(read_u64(&mut fake.s).unwrap(), IHAVEOPT);
            assert_eq!(read_u16(&mut fake.s).unwrap(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
            fake.s.write_all(&flags.to_be_bytes()).unwrap();
            fake
        }

        /// Connected, through NBD_OPT_GO asking for block sizes; returns the export's size.
        fn go(port: u16) -> (Fake, u64) {
            let mut fake = Fake::connect(port, 0b11);
            let mut data = 3u32.to_be_bytes().to_vec();
            data.extend_from_slice(b"any");
            data.extend_from_slice(&1u16.to_be_bytes());
            data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
            fake.option(OPT_GO, &data);
            let (kind, info) = fake.option_reply(OPT_GO);
            assert_eq!(kind, REP_INFO);
            assert_eq!(info[..2], INFO_EXPORT.to_be_bytes());
            let size = u64::from_be_bytes(info[2..10].try_into().unwrap());
            assert_eq!(u16::from_be_bytes(info[10..12].try_into().unwrap()), TRANSMISSION_FLAGS);
            let (kind, sizes) = fake.option_reply(OPT_GO);
            assert_eq!(kind, REP_INFO);
            assert_eq!(sizes.len(), 14);
            assert_eq!(u32::from_be_bytes(sizes[2..6].try_into().unwrap()), 512);
            assert_eq!(fake.option_reply(OPT_GO), (REP_ACK, vec![]));
            (fake, size)
        }

        fn option(&mut self, option: u32, data: &[u8]) {
            let mut b = IHAVEOPT.to_be_bytes().to_vec();
            b.extend_from_slice(&option.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            self.s.write_all(&b).unwrap();
        }

        fn option_reply(&mut self, option: u32) -> (u32, Vec<u8>) {
            assert_eq!(read_u64(&mut self.s).unwrap(), REPLY_MAGIC);
            assert_eq!(read_u32(&mut self.s).unwrap(), option);
            let kind = read_u32(&mut self.s).unwrap();
            let mut data = vec![0; read_u32(&mut self.s).unwrap() as usize];
            self.s.read_exact(&mut data).unwrap();
            (kind, data)
        }

        fn send(&mut self, flags: u16, command: u16, offset: u64, len: u32, payload: &[u8]) -> u64 {
            let cookie = self.next;
            self.next += 1;
            let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
            b.extend_from_slice(&flags.to_be_bytes());
            b.extend_from_slice(&command.to_be_bytes());
            b.extend_from_slice(&cookie.to_be_bytes());
            b.extend_from_slice(&offset.to_be_bytes());
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(payload);
            self.s.write_all(&b).unwrap();
            cookie
        }

        /// The error of the reply to `cookie`, and `len` bytes of data if there was none.
        fn reply(&mut self, cookie: u64, len: usize) -> io::Result<(u32, Vec<u8>)> {
            if read_u32(&mut self.s)? != SIMPLE_REPLY_MAGIC {
                return Err(protocol("reply magic"));
            }
            let error = read_u32(&mut self.s)?;
            assert_eq!(read_u64(&mut self.s)?, cookie);
            let mut data = vec![0; if error == 0 { len } else { 0 }];
            self.s.read_exact(&mut data)?;
            Ok((error, data))
        }

        fn write(&mut self, offset: u64, bytes: &[u8], flags: u16) -> u32 {
            let cookie = self.send(flags, CMD_WRITE, offset, bytes.len() as u32, bytes);
            self.reply(cookie, 0).unwrap().0
        }

        fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
            let cookie = self.send(0, CMD_READ, offset, len, &[]);
            let (error, data) = self.reply(cookie, len as usize).unwrap();
            assert_eq!(error, 0);
            data
        }

        fn flush(&mut self) {
            let cookie = self.send(0, CMD_FLUSH, 0, 0, &[]);
            assert_eq!(self.reply(cookie, 0).unwrap().0, 0);
        }
    }

    #[test]
    fn go_then_reads_see_writes_and_a_flush_makes_them_durable() {
        let server = NbdServer::blank(1 << 20).unwrap();
        let (mut c, size) = Fake::go(server.port());
        assert_eq!(size, 1 << 20);
        assert_eq!(c.read(0, 1024), vec![0; 1024]);
        assert_eq!(c.write(512, &[7; 1024], 0), 0);
        // Unaligned: merged into its sectors.
        assert_eq!(c.write(1000, &[9; 10], 0), 0);
        let mut expect = vec![0u8; 2048];
        expect[512..1536].fill(7);
        expect[1000..1010].fill(9);
        assert_eq!(c.read(0, 2048), expect);
        c.flush();
        assert_eq!(c.write(4096, &[1; 512], 0), 0);
        let stats = server.stats();
        assert_eq!((stats.connections, stats.writes, stats.flushes, stats.reads), (1, 3, 1, 2));
        let (image, report) = server.cut(Cut::DropAll);
        assert_eq!(
            report,
            CutReport { unflushed_sectors: 1, kept_sectors: 0, moment_missed: false, stats: report.stats }
        );
        assert_eq!(image[..2048], expect[..]);
        assert_eq!(image[4096..4608], [0; 512], "not flushed: lost");
    }

    #[test]
    fn a_cut_drops_the_connection_and_closes_the_port_and_the_next_server_serves_the_image() {
        let server = NbdServer::blank(64 << 10).unwrap();
        let port = server.port();
        let (mut c, _) = Fake::go(port);
        c.write(0, &[3; 512], 0);
        c.flush();
        c.write(512, &[4; 512], 0);
        let (image, _) = server.cut(Cut::DropAll);
        // The connection is gone: a request gets no answer.
        let answered = c.s.write_all(&[0; 28]).is_ok() && read_u32(&mut c.s).is_ok();
        assert!(!answered);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the port is closed");
        let next = NbdServer::start(image).unwrap();
        let (mut c, _) = Fake::go(next.port());
        assert_eq!(c.read(0, 1024), [[3; 512], [0; 512]].concat());
    }

    #[test]
    fn a_write_with_fua_is_durable_when_answered() {
        let server = NbdServer::blank(64 << 10).unwrap();
        let (mut c, _) = Fake::go(server.port());
        c.write(0, &[1; 512], 0);
        c.write(0, &[2; 1024], CMD_FLAG_FUA);
        c.write(1024, &[3; 512], 0);
        assert_eq!(server.stats().fua_writes, 1);
        for seed in 0..20 {
            let server = NbdServer::start(server.read(0, 64 << 10)).unwrap();
            let mut image = server.cut(Cut::KeepRandom { seed }).0;
            image.truncate(1024);
            assert_eq!(image, [2; 1024], "seed {seed}");
        }
        let (image, report) = server.cut(Cut::DropAll);
        assert_eq!(report.unflushed_sectors, 1);
        assert_eq!((image[..1024].to_vec(), image[1024..1536].to_vec()), (vec![2; 1024], vec![0; 512]));
    }

    /// Each sector written since the last flush comes back as its durable copy or as one of
    /// the versions written to it, never as anything else; over seeds, both happen.
    #[test]
    fn keep_random_keeps_for_each_sector_the_old_copy_or_one_version() {
        let mut kept_some = false;
        let mut dropped_some = false;
        let mut kept_an_older_version = false;
        for seed in 0..32 {
            let server = NbdServer::blank(64 << 10).unwrap();
            let (mut c, _) = Fake::go(server.port());
            c.write(0, &[0xaa; 8192], 0);
            c.flush();
            // Sectors 0..8 twice, 8..16 once, unflushed.
            c.write(0, &[1; 4096], 0);
            c.write(0, &[2; 8192], 0);
            let (image, report) = server.cut(Cut::KeepRandom { seed });
            assert_eq!(report.unflushed_sectors, 16);
            let mut kept = 0;
            for (i, sector) in image[..8192].chunks(512).enumerate() {
                let value = sector[0];
                assert!(sector.iter().all(|b| *b == value), "seed {seed}: sector {i} is whole");
                let allowed: &[u8] = if i < 8 { &[0xaa, 1, 2] } else { &[0xaa, 2] };
                assert!(allowed.contains(&value), "seed {seed}: sector {i} is {value:#x}");
                kept += (value != 0xaa) as u64;
                kept_an_older_version |= value == 1;
            }
            assert_eq!(kept, report.kept_sectors);
            kept_some |= kept > 0;
            dropped_some |= kept < 16;
            assert!(image[8192..].iter().all(|b| *b == 0));
        }
        assert!(kept_some && dropped_some && kept_an_older_version);
    }

    /// A cut armed for the next flush falls when the flush arrives, before it is done; one
    /// armed for the next write, after the write is taken and before it is answered.
    #[test]
    fn a_cut_can_wait_for_a_flush_or_a_write() {
        for moment in [Moment::BeforeFlush, Moment::AfterWrite] {
            let server = NbdServer::blank(64 << 10).unwrap();
            let (mut c, _) = Fake::go(server.port());
            c.write(0, &[1; 512], 0);
            c.flush();
            c.write(512, &[2; 512], 0);
            let client = thread::spawn(move || {
                thread::sleep(Duration::from_millis(100));
                // Not cut yet: served.
                assert_eq!(c.read(0, 1024), [[1; 512], [2; 512]].concat());
                let cookie = match moment {
                    Moment::BeforeFlush => c.send(0, CMD_FLUSH, 0, 0, &[]),
                    _ => c.send(0, CMD_WRITE, 1024, 512, &[3; 512]),
                };
                c.reply(cookie, 0).is_err()
            });
            let (image, report) = server.cut_at(moment, Cut::DropAll, Duration::from_secs(10));
            assert!(client.join().unwrap(), "{moment:?}: the request that met the cut is not answered");
            let unflushed = if moment == Moment::BeforeFlush { 1 } else { 2 };
            assert_eq!(
                report,
                CutReport {
                    unflushed_sectors: unflushed,
                    kept_sectors: 0,
                    moment_missed: false,
                    stats: report.stats
                }
            );
            assert_eq!(image[..1536], [[1; 512], [0; 512], [0; 512]].concat()[..], "{moment:?}");
        }
        // No traffic: the cut falls when the wait is over.
        let server = NbdServer::blank(64 << 10).unwrap();
        let started = Instant::now();
        let (_, report) = server.cut_at(Moment::BeforeFlush, Cut::DropAll, Duration::from_millis(200));
        assert!(report.moment_missed && started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn a_cut_is_reproducible_from_its_seed() {
        let cut = |seed| {
            let server = NbdServer::blank(1 << 20).unwrap();
            let (mut c, _) = Fake::go(server.port());
            for i in 0..64u64 {
                c.write(i * 4096, &[i as u8 + 1; 4096], 0);
            }
            server.cut(Cut::KeepRandom { seed })
        };
        assert_eq!(cut(5), cut(5));
        assert_ne!(cut(5).0, cut(6).0);
    }

    #[test]
    fn export_name_list_info_and_unsupported_options() {
        let server = NbdServer::blank(1 << 20).unwrap();
        // Old-style zeroes after the export name when NO_ZEROES is not asked for.
        let mut c = Fake::connect(server.port(), 0b01);
        c.option(8, &[]); // NBD_OPT_STRUCTURED_REPLY
        assert_eq!(c.option_reply(8).0, REP_ERR_UNSUP);
        c.option(OPT_LIST, &[]);
        assert_eq!(c.option_reply(OPT_LIST), (REP_SERVER, vec![0, 0, 0, 0]));
        assert_eq!(c.option_reply(OPT_LIST).0, REP_ACK);
        c.option(OPT_INFO, &[0, 0, 0, 9]);
        assert_eq!(c.option_reply(OPT_INFO).0, REP_ERR_INVALID);
        c.option(OPT_INFO, &[0, 0, 0, 0, 0, 0]);
        assert_eq!(c.option_reply(OPT_INFO).0, REP_INFO);
        assert_eq!(c.option_reply(OPT_INFO).0, REP_ACK, "no block sizes unless asked");
        c.option(OPT_EXPORT_NAME, b"");
        let mut answer = [0u8; 8 + 2 + 124];
        c.s.read_exact(&mut answer).unwrap();
        assert_eq!(u64::from_be_bytes(answer[..8].try_into().unwrap()), 1 << 20);
        assert_eq!(u16::from_be_bytes(answer[8..10].try_into().unwrap()), TRANSMISSION_FLAGS);
        assert!(answer[10..].iter().all(|b| *b == 0));
        c.write(0, b"hello", 0);
        assert_eq!(c.read(0, 5), b"hello");
        // Out of bounds: errors, and the connection goes on.
        let cookie = c.send(0, CMD_READ, (1 << 20) - 4, 8, &[]);
        assert_eq!(c.reply(cookie, 8).unwrap().0, EINVAL);
        assert_eq!(c.write((1 << 20) - 4, &[1; 8], 0), ENOSPC);
        let cookie = c.send(0, 4, 0, 512, &[]); // TRIM, not advertised
        assert_eq!(c.reply(cookie, 0).unwrap().0, EINVAL);
        c.send(0, CMD_DISC, 0, 0, &[]);
        let mut rest = Vec::new();
        assert_eq!(c.s.read_to_end(&mut rest).unwrap(), 0, "closed after DISC");
        // A client that is not fixed newstyle is refused.
        let mut c = Fake::connect(server.port(), 0);
        assert_eq!(c.s.read(&mut [0; 1]).unwrap_or(0), 0);
    }

    /// QEMU's own NBD client (qemu-io) against the server: writes, a flush, and a cut.
    #[test]
    fn qemu_io_writes_flushes_and_reads_through_the_server() {
        let qemu_img = cairn_tools::host::qemu_img().expect("qemu-img (and qemu-io beside it)");
        let qemu_io = qemu_img.with_file_name("qemu-io");
        assert!(qemu_io.exists(), "no {} (it comes with qemu-img)", qemu_io.display());
        let server = NbdServer::blank(4 << 20).unwrap();
        let url = format!("nbd://127.0.0.1:{}", server.port());
        let run = |commands: &[&str]| {
            let mut cmd = std::process::Command::new(&qemu_io);
            cmd.args(["-f", "raw"]);
            for c in commands {
                cmd.args(["-c", c]);
            }
            let out = cmd.arg(&url).output().unwrap();
            let text =
                String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && !text.contains("failed"), "{text}");
            text
        };
        run(&["write -P 0x5a 0 64k", "flush", "write -P 0x6b 64k 4k"]);
        // qemu-io flushes when it closes the image; the server saw both.
        let stats = server.stats();
        assert!(stats.flushes >= 1 && stats.writes >= 2, "{stats:?}");
        let text = run(&["read -P 0x5a 0 64k", "read -P 0x6b 64k 4k"]);
        assert!(!text.contains("Pattern verification failed"), "{text}");
        // Written, not flushed, cut: gone.
        let mut c = Fake::go(server.port()).0;
        c.write(1 << 20, &[1; 4096], 0);
        let (image, _) = server.cut(Cut::DropAll);
        assert!(image[..64 << 10].iter().all(|b| *b == 0x5a));
        assert!(image[1 << 20..(1 << 20) + 4096].iter().all(|b| *b == 0));
    }
}
