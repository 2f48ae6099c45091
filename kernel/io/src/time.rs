//! Wall-clock time for journals: the node reads its real-time clock once at boot, as a civil
//! date and time (UTC), and counts from there. Kept here because it is pure arithmetic.

/// Seconds since 1970-01-01T00:00:00Z of a civil UTC date and time, or None if it is not a
/// valid one (the RTC said something impossible) or is before 1970.
pub fn unix_seconds(year: u32, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Option<u64> {
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59
    {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day == 0 || day > days_in_month[month as usize - 1] {
        return None;
    }
    // Days from the civil date (Howard Hinnant's days_from_civil), shifted so March is month 0.
    let (y, m) =
        if month <= 2 { (year as i64 - 1, month as i64 + 9) } else { (year as i64, month as i64 - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as u64 * 86_400 + hour as u64 * 3600 + minute as u64 * 60 + second as u64)
}

/// A value from the RTC in binary-coded decimal, as a number; None if it is not BCD.
pub fn from_bcd(value: u8) -> Option<u32> {
    let (high, low) = (value >> 4, value & 0x0f);
    (high < 10 && low < 10).then_some(high as u32 * 10 + low as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(unix_seconds(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(unix_seconds(2000, 3, 1, 0, 0, 0), Some(951_868_800));
        assert_eq!(unix_seconds(2026, 11, 26, 16, 0, 0), Some(1_795_708_800));
        assert_eq!(unix_seconds(2024, 2, 29, 23, 59, 59), Some(1_709_251_199));
        assert_eq!(unix_seconds(2023, 2, 29, 0, 0, 0), None);
        assert_eq!(unix_seconds(1969, 12, 31, 0, 0, 0), None);
        assert_eq!(unix_seconds(2026, 13, 1, 0, 0, 0), None);
        assert_eq!(unix_seconds(2026, 1, 1, 24, 0, 0), None);
    }

    #[test]
    fn bcd() {
        assert_eq!(from_bcd(0x59), Some(59));
        assert_eq!(from_bcd(0x5a), None);
        assert_eq!(from_bcd(0x00), Some(0));
    }

    #[test]
    fn consecutive_days_are_86400_seconds_apart() {
        let mut last = unix_seconds(1999, 12, 31, 0, 0, 0).unwrap();
        for (y, m, d) in [(2000, 1, 1), (2000, 1, 2), (2000, 2, 1)] {
            let now = unix_seconds(y, m, d, 0, 0, 0).unwrap();
            assert_eq!((now - last) % 86_400, 0);
            last = now;
        }
    }
}
