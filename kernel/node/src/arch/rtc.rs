//! The CMOS real-time clock, read once at boot so that journals carry wall-clock times
//! (docs/IO.md). Only the kernel sees it: tasks have no clock.

use x86_64::instructions::port::Port;

fn read(register: u8) -> u8 {
    // SAFETY: the CMOS index (0x70) and data (0x71) ports belong to the RTC; selecting a
    // register and reading it has no other effect. Bit 7 of the index stays clear, so NMIs
    // stay enabled.
    unsafe {
        Port::<u8>::new(0x70).write(register & 0x7f);
        Port::<u8>::new(0x71).read()
    }
}

fn update_in_progress() -> bool {
    read(0x0a) & 0x80 != 0
}

/// Seconds, minutes, hours, day, month, year, century, as the chip holds them; None if the
/// chip stays mid-update (an update takes under 2 ms on real hardware).
fn snapshot() -> Option<[u8; 7]> {
    let mut spins = 0u32;
    while update_in_progress() {
        spins += 1;
        if spins > 1_000_000 {
            return None;
        }
        core::hint::spin_loop();
    }
    Some([read(0x00), read(0x02), read(0x04), read(0x07), read(0x08), read(0x09), read(0x32)])
}

/// The time now, in seconds since the Unix epoch (the RTC holds UTC under QEMU's default
/// `-rtc base=utc`); None if the chip's values make no sense.
pub fn unix_seconds() -> Option<u64> {
    // Two equal readings in a row: no update happened in between.
    let mut raw = snapshot()?;
    for _ in 0..10 {
        let again = snapshot()?;
        if again == raw {
            break;
        }
        raw = again;
    }
    let status_b = read(0x0b);
    let binary = status_b & 0x04 != 0;
    let hours_24 = status_b & 0x02 != 0;
    let value = |v: u8| if binary { Some(v as u32) } else { cairn_io::time::from_bcd(v) };
    let [second, minute, hour_raw, day, month, year, century] = raw;
    let pm = !hours_24 && hour_raw & 0x80 != 0;
    let mut hour = value(hour_raw & 0x7f)?;
    if !hours_24 {
        hour %= 12;
        if pm {
            hour += 12;
        }
    }
    let century = value(century).filter(|c| (19..=99).contains(c)).unwrap_or(20);
    cairn_io::time::unix_seconds(
        century * 100 + value(year)?,
        value(month)?,
        value(day)?,
        hour,
        value(minute)?,
        value(second)?,
    )
}
