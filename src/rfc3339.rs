//! UTC timestamps as RFC 3339 text, both ways: Atlassian's quota headers and the fake's
//! answers (milliseconds), the access log (microseconds, as tracing's own log lines).
//!
//! Invariant: only UTC (`Z`) is read or written; a timestamp with another offset is not read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The calendar second of `secs` after the epoch, UTC: `YYYY-MM-DDTHH:MM:SS`, 19 bytes.
pub(crate) fn second(secs: u64) -> [u8; 19] {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for slot in text[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rest / 3600);
    put(14, 2, rest % 3600 / 60);
    put(17, 2, rest % 60);
    text
}

/// `at` with milliseconds (`2026-11-30T13:00:00.000Z`), as Atlassian writes times.
pub(crate) fn millis(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = second(since_epoch.as_secs());
    format!(
        "{}.{:03}Z",
        std::str::from_utf8(&second).expect("digits and separators"),
        since_epoch.subsec_millis()
    )
}

/// A UTC RFC 3339 timestamp (`2024-05-01T12:00:00Z`, `2024-05-01T12:00Z`, fractions allowed).
pub(crate) fn parse(value: &str) -> Option<SystemTime> {
    let datetime: toml::value::Datetime = value.parse().ok()?;
    let (date, time) = (datetime.date?, datetime.time?);
    if !matches!(datetime.offset, Some(toml::value::Offset::Z)) {
        return None;
    }
    // Howard Hinnant's days-from-civil.
    let (y, m, d) = (
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0));
    let secs = u64::try_from(secs).ok()?;
    Some(
        UNIX_EPOCH
            + Duration::from_secs(secs)
            + Duration::from_nanos(u64::from(time.nanosecond.unwrap_or(0))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_and_read() {
        let at = UNIX_EPOCH + Duration::from_millis(951_868_800_500);
        assert_eq!(millis(at), "2000-03-01T00:00:00.500Z");
        assert_eq!(parse(&millis(at)), Some(at));
        let epoch = parse("1970-01-02T00:00:01Z").unwrap();
        assert_eq!(epoch, UNIX_EPOCH + Duration::from_secs(86_401));
        let y2k = parse("2000-03-01T00:00:00.5Z").unwrap();
        assert_eq!(
            y2k.duration_since(UNIX_EPOCH).unwrap().as_millis(),
            951_868_800_500
        );
        assert!(parse("2000-03-01T00:00:00+02:00").is_none());
        assert_eq!(&second(1_796_083_199), b"2026-11-30T23:59:59");
        assert_eq!(&second(0), b"1970-01-01T00:00:00");
    }
}
