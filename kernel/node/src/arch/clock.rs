//! Time for the kernel's own use (never for tasks): a periodic PIT tick, and a monotonic clock
//! read from the TSC, calibrated against the PIT at boot.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;
pub const TICK_HZ: u64 = 100;
const CALIBRATION_MS: u64 = 10;

static TICKS: AtomicU64 = AtomicU64::new(0);
static TSC_AT_ENTRY: AtomicU64 = AtomicU64::new(0);
/// TSC cycles per microsecond, times 1024 (fixed point); 0 until calibrated.
static TSC_PER_US_X1024: AtomicU64 = AtomicU64::new(0);

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; the kernel runs with CR4.TSD clear for
    // itself.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Called first thing at kernel entry: the origin of `boot_ms`.
pub fn mark_entry() {
    TSC_AT_ENTRY.store(rdtsc(), Ordering::Relaxed);
}

/// Measures the TSC rate over a fixed PIT channel 2 count, then starts the periodic tick on
/// channel 0. Runs with interrupts off.
pub fn init() {
    // SAFETY: PIT channel 2 gated through port 0x61 (speaker off) is the classic one-shot
    // calibration source; channel 0 then gets a rate generator. These ports belong to the PIT
    // only.
    unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let mut command = Port::<u8>::new(0x43);
        let mut channel2 = Port::<u8>::new(0x42);
        let count = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
        let g = gate.read();
        gate.write((g & !0x02) | 0x01); // gate on, speaker off
        command.write(0b1011_0000); // channel 2, lo/hi, mode 0 (one-shot)
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8);
        // Reloading the gate starts the count.
        let g = gate.read();
        gate.write(g & !0x01);
        gate.write(g | 0x01);
        let start = rdtsc();
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        let cycles = rdtsc() - start;
        TSC_PER_US_X1024.store(((cycles * 1024) / (CALIBRATION_MS * 1000)).max(1), Ordering::Relaxed);

        let divisor = (PIT_HZ / TICK_HZ) as u16;
        command.write(0b0011_0100); // channel 0, lo/hi, mode 2 (rate generator)
        let mut channel0 = Port::<u8>::new(0x40);
        channel0.write(divisor as u8);
        channel0.write((divisor >> 8) as u8);
    }
}

pub fn on_tick() {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// TSC cycles per millisecond, for the boot log.
pub fn tsc_khz() -> u64 {
    TSC_PER_US_X1024.load(Ordering::Relaxed) * 1000 / 1024
}

/// Microseconds since kernel entry; 0 before calibration.
pub fn micros_since_boot() -> u64 {
    let rate = TSC_PER_US_X1024.load(Ordering::Relaxed);
    if rate == 0 {
        return 0;
    }
    let cycles = rdtsc().saturating_sub(TSC_AT_ENTRY.load(Ordering::Relaxed));
    ((cycles as u128 * 1024) / rate as u128) as u64
}

/// Sleeps at least `ms` milliseconds, halting between timer ticks.
pub fn sleep_ms(ms: u64) {
    let until = micros_since_boot() + ms * 1000;
    while micros_since_boot() < until {
        x86_64::instructions::interrupts::enable_and_hlt();
    }
}

/// Unix time in ms when the node booted (0 until `read_wall_clock`); from the RTC.
static BOOT_UNIX_MS: AtomicU64 = AtomicU64::new(0);

/// Reads the real-time clock once; returns the wall-clock time now in ms, if the RTC gave one.
pub fn read_wall_clock() -> Option<u64> {
    let now_ms = super::rtc::unix_seconds()? * 1000;
    BOOT_UNIX_MS.store(now_ms.saturating_sub(micros_since_boot() / 1000), Ordering::Relaxed);
    Some(now_ms)
}

/// Milliseconds since the Unix epoch, for journals; None if the RTC could not be read.
pub fn wall_ms() -> Option<u64> {
    let boot = BOOT_UNIX_MS.load(Ordering::Relaxed);
    (boot != 0).then(|| boot + micros_since_boot() / 1000)
}
