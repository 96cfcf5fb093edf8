//! Text the built-ins print: JSON strings, RFC 3339 times and UTC calendar dates (tether has no
//! time zone data and no JSON or date library; these few lines are all it needs).

use std::fmt::Write;

/// Appends `s` as a JSON string, quotes included.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A moment in UTC, broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub min: u32,
    pub sec: u32,
}

impl Utc {
    pub fn from_unix(secs: i64) -> Self {
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        // rem is in 0..86_400, so these fit.
        let rem = rem as u32;
        Self {
            year,
            month,
            day,
            hour: rem / 3600,
            min: rem / 60 % 60,
            sec: rem % 60,
        }
    }

    pub fn month_abbrev(&self) -> &'static str {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        MONTHS
            .get(self.month.wrapping_sub(1) as usize)
            .copied()
            .unwrap_or("???")
    }
}

/// Year, month (1..=12) and day (1..=31) of a day count since 1970-01-01 (H. Hinnant's
/// algorithm, proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Go's `time.RFC3339Nano` in UTC, as encoding/json writes a `time.Time`: the fraction has no
/// trailing zeros, and none at all for a whole second.
pub fn rfc3339_nano(secs: i64, nanos: u32) -> String {
    let t = Utc::from_unix(secs);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.min, t.sec
    );
    if nanos > 0 && nanos < 1_000_000_000 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn dates_are_utc_and_gregorian() {
        assert_eq!(
            Utc::from_unix(0),
            Utc {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                min: 0,
                sec: 0
            }
        );
        // 2024-02-29T23:59:59Z, a leap day.
        let t = Utc::from_unix(1_709_251_199);
        assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
        assert_eq!((t.hour, t.min, t.sec), (23, 59, 59));
        assert_eq!(t.month_abbrev(), "Feb");
        // Before the epoch.
        let t = Utc::from_unix(-1);
        assert_eq!((t.year, t.month, t.day, t.hour), (1969, 12, 31, 23));
    }

    #[test]
    fn rfc3339_trims_the_fraction_as_go_does() {
        assert_eq!(rfc3339_nano(1_700_000_000, 0), "2023-11-14T22:13:20Z");
        assert_eq!(
            rfc3339_nano(1_700_000_000, 120_000_000),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(rfc3339_nano(0, 1), "1970-01-01T00:00:00.000000001Z");
    }
}
