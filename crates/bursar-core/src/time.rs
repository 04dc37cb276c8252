//! Server time as microseconds since the Unix epoch, rendered as RFC 3339 in
//! UTC. The core never reads a clock: callers pass a `Timestamp` in.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_unix_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub fn unix_micros(self) -> i64 {
        self.0
    }
}

/// Days since 1970-01-01 to a civil (year, month, day), after Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Timestamp {
    /// The 27 bytes of `YYYY-MM-DDTHH:MM:SS.ffffffZ`. Written digit by digit:
    /// every ledger entry renders several timestamps, so this is on the write
    /// path. Years outside 0..=9999 cannot be rendered in this form and are
    /// clamped (server clocks do not reach them).
    pub(crate) fn rfc3339_bytes(self) -> [u8; 27] {
        let seconds = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |start: usize, width: usize, mut value: i64| {
            for index in (start..start + width).rev() {
                out[index] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year.clamp(0, 9999));
        put(5, 2, i64::from(month));
        put(8, 2, i64::from(day));
        put(11, 2, second_of_day / 3600);
        put(14, 2, second_of_day / 60 % 60);
        put(17, 2, second_of_day % 60);
        put(20, 6, micros);
        out
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.rfc3339_bytes();
        f.write_str(std::str::from_utf8(&bytes).expect("ASCII digits and separators"))
    }
}

/// Days since 1970-01-01 of a civil date, after Howard Hinnant's
/// `days_from_civil`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads exactly the form `Display` writes: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let bytes = text.as_bytes();
    if bytes.len() != 27
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
        || bytes[19] != b'.'
        || bytes[26] != b'Z'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, micros) = (
        number(11..13)?,
        number(14..16)?,
        number(17..19)?,
        number(20..26)?,
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month as u32, day as u32);
    let timestamp =
        Timestamp(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000) + micros);
    // Reject dates like February 30th by rendering back.
    (timestamp.to_string() == text).then_some(timestamp)
}

/// Reads any RFC 3339 date-time (`2026-03-01T09:30:00+01:00`,
/// `2026-03-01t08:30:00.5z`, …) and converts it to UTC: what a client may
/// send as a point in time. `T` and `Z` may be lower case; the offset is `Z`
/// or `±HH:MM` (hours 00 to 23); a fraction of any length is kept to the
/// microsecond (further digits are dropped); a leap second (`:60`) counts
/// as the first instant of the next minute. `None` for anything else.
pub fn parse_rfc3339_any(text: &str) -> Option<Timestamp> {
    let bytes = text.as_bytes();
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        part.iter().try_fold(0i64, |value, byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + i64::from(byte - b'0'))
        })
    };
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // The fraction, if any: its first six digits are microseconds.
    let mut index = 19;
    let mut micros = 0;
    if bytes[index] == b'.' {
        index += 1;
        let start = index;
        while index < bytes.len() && bytes[index].is_ascii_digit() {
            if index - start < 6 {
                micros = micros * 10 + i64::from(bytes[index] - b'0');
            }
            index += 1;
        }
        if index == start {
            return None;
        }
        for _ in (index - start)..6 {
            micros *= 10;
        }
    }
    let offset_seconds = match &bytes[index..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (digits(index + 1..index + 3)?, digits(index + 4..index + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(Timestamp(seconds * 1_000_000 + micros))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.rfc3339_bytes();
        serializer.serialize_str(std::str::from_utf8(&bytes).expect("ASCII digits and separators"))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_rfc3339(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc3339_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000Z");
        // 2026-11-29T18:54:13.123456Z
        assert_eq!(
            Timestamp(1_795_978_453_123_456).to_string(),
            "2026-11-29T18:54:13.123456Z"
        );
        assert_eq!(
            Timestamp(951_782_400_000_000).to_string(),
            "2000-02-29T00:00:00.000000Z"
        );
        for micros in [
            0,
            1,
            951_782_400_000_000,
            1_795_978_453_123_456,
            4_102_444_799_999_999,
        ] {
            let stamp = Timestamp(micros);
            assert_eq!(parse_rfc3339(&stamp.to_string()), Some(stamp));
        }
        assert_eq!(parse_rfc3339("2026-02-30T00:00:00.000000Z"), None);
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), None);
    }

    #[test]
    fn any_rfc3339_time_is_read_in_utc() {
        let utc = |text: &str| parse_rfc3339_any(text).map(|stamp| stamp.to_string());
        for (text, expected) in [
            ("2026-03-01T09:30:00Z", "2026-03-01T09:30:00.000000Z"),
            ("2026-03-01T09:30:00+01:00", "2026-03-01T08:30:00.000000Z"),
            ("2026-03-01t00:30:00.5-02:30", "2026-03-01T03:00:00.500000Z"),
            ("2026-03-01T00:00:00+23:59", "2026-02-28T00:01:00.000000Z"),
            (
                "2024-02-29T23:59:59.1234567z",
                "2024-02-29T23:59:59.123456Z",
            ),
            ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00.000000Z"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
            ("2026-11-29T18:54:13.123456Z", "2026-11-29T18:54:13.123456Z"),
        ] {
            assert_eq!(utc(text).as_deref(), Some(expected), "{text}");
        }
        for bad in [
            "",
            "2026-03-01",
            "2026-03-01T09:30Z",
            "2026-03-01T09:30:00",
            "2026-03-01 09:30:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-03-01T24:00:00Z",
            "2026-03-01T09:30:00.Z",
            "2026-03-01T09:30:00+24:00",
            "2026-03-01T09:30:00+0100",
            "2026-03-01T09:30:00+01:00:00",
            "+2026-03-01T09:30:00Z",
            "2026-03-01T09:30:00ZZ",
            "２026-03-01T09:30:00Z",
        ] {
            assert_eq!(parse_rfc3339_any(bad), None, "{bad}");
        }
    }
}
