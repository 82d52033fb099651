//! Timestamp parsing and formatting. Pure functions over epoch milliseconds;
//! no clock is ever read here.

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision,
/// e.g. `2024-01-01T00:00:00.000Z`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => format!("{ms}ms"),
    }
}

/// A duration in the largest whole unit: `1 hour`, `90 seconds`, `250 ms`.
pub fn format_duration_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1_000, "second"),
    ];
    for (unit, name) in UNITS {
        if ms != 0 && ms % unit == 0 {
            let n = ms / unit;
            return format!("{n} {name}{}", if n == 1 { "" } else { "s" });
        }
    }
    format!("{ms} ms")
}

/// Parses a timestamp string: RFC 3339 (`2024-01-01T00:00:00Z`, with offset or
/// fractional seconds), or the SQL form `2024-01-01 00:00:00[.fff]` taken as
/// UTC, or a plain date `2024-01-01`. Sub-millisecond digits are truncated.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(n.and_utc().timestamp_millis());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
    }
    None
}

/// Fields that `EXTRACT` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TimeField {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
    /// Day of week, Sunday = 0 (PostgreSQL `dow`).
    Dow,
    /// Day of year, 1-based.
    Doy,
    /// Seconds since the epoch as DOUBLE (fractional milliseconds kept).
    Epoch,
}

/// Extracts a calendar field from a timestamp (UTC). Returns `None` if the
/// timestamp is outside chrono's range.
pub fn extract(field: TimeField, ms: i64) -> Option<i64> {
    let dt = DateTime::<Utc>::from_timestamp_millis(ms)?;
    Some(match field {
        TimeField::Year => dt.year() as i64,
        TimeField::Month => dt.month() as i64,
        TimeField::Day => dt.day() as i64,
        TimeField::Hour => dt.hour() as i64,
        TimeField::Minute => dt.minute() as i64,
        TimeField::Second => dt.second() as i64,
        TimeField::Millisecond => (dt.second() * 1000 + dt.timestamp_subsec_millis()) as i64,
        TimeField::Dow => dt.weekday().num_days_from_sunday() as i64,
        TimeField::Doy => dt.ordinal() as i64,
        TimeField::Epoch => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        assert_eq!(format_duration_ms(3_600_000), "1 hour");
        assert_eq!(format_duration_ms(90_000), "90 seconds");
        assert_eq!(format_duration_ms(172_800_000), "2 days");
        assert_eq!(format_duration_ms(250), "250 ms");
        assert_eq!(format_duration_ms(0), "0 ms");
    }

    #[test]
    fn parses_and_formats_round_trip() {
        let ms = parse_timestamp("2024-01-01T00:00:01.250Z").unwrap();
        assert_eq!(ms, 1_704_067_201_250);
        assert_eq!(format_rfc3339_ms(ms), "2024-01-01T00:00:01.250Z");
        assert_eq!(parse_timestamp("2024-01-01 00:00:01.25"), Some(ms));
        assert_eq!(parse_timestamp("2024-01-01T02:00:01.250+02:00"), Some(ms));
        assert_eq!(parse_timestamp("2024-01-01"), Some(1_704_067_200_000));
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn extracts_fields() {
        let ms = parse_timestamp("2024-03-05T06:07:08.009Z").unwrap();
        assert_eq!(extract(TimeField::Year, ms), Some(2024));
        assert_eq!(extract(TimeField::Month, ms), Some(3));
        assert_eq!(extract(TimeField::Day, ms), Some(5));
        assert_eq!(extract(TimeField::Hour, ms), Some(6));
        assert_eq!(extract(TimeField::Minute, ms), Some(7));
        assert_eq!(extract(TimeField::Second, ms), Some(8));
        assert_eq!(extract(TimeField::Millisecond, ms), Some(8009));
        assert_eq!(extract(TimeField::Dow, ms), Some(2)); // a Tuesday
        assert_eq!(extract(TimeField::Doy, ms), Some(65));
    }
}
