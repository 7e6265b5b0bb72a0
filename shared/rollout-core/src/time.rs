//! Instants and durations of the domain: UTC milliseconds and the compact duration strings
//! (`30s`, `15m`, `8h`, `2d`, `1h30m`) that rollout specs use.

use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with millisecond resolution. On the wire it is an RFC 3339 string
/// (`2026-12-01T09:00:00Z`); inside the core it is plain arithmetic on milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: i64) -> Timestamp {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This machine's clock, to the millisecond (the Unix epoch if it reads earlier). The
    /// scheduler decides on Redis's clock; this one is for what a process only needs close:
    /// a spec's relative times, reports, replication deadlines, the offset to Redis's.
    pub fn local_now() -> Timestamp {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
            });
        Timestamp(millis)
    }

    /// The instant Redis `TIME` describes (seconds and microseconds).
    pub const fn from_redis_time(seconds: i64, micros: i64) -> Timestamp {
        Timestamp(seconds * 1000 + micros / 1000)
    }

    /// Parses an RFC 3339 time (`2026-12-01T09:00:00Z`, offsets allowed).
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
        DateTime::parse_from_rfc3339(text)
            .map(|time| Timestamp(time.with_timezone(&Utc).timestamp_millis()))
            .map_err(|error| format!("not an RFC 3339 time ({error}): {text:?}"))
    }

    /// This instant moved by `duration` (saturating).
    pub fn plus(self, duration: DurationMs) -> Timestamp {
        Timestamp(self.0.saturating_add(duration.as_millis()))
    }

    /// This instant moved back by `duration` (saturating).
    pub fn minus(self, duration: DurationMs) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration.as_millis()))
    }

    /// Milliseconds from `earlier` to `self` (negative when `earlier` is later).
    pub fn millis_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// RFC 3339 rendering with a `Z` suffix, milliseconds only when needed.
    pub fn to_rfc3339(self) -> String {
        match Utc.timestamp_millis_opt(self.0).single() {
            Some(time) => time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            None => format!("@{}ms", self.0),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// A non-negative length of time in milliseconds. On the wire it is the compact string form
/// (`1h30m`); [`DurationMs::parse`] is the only way in from text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationMs(i64);

/// Largest duration a spec may name: ten years, far beyond any sane rollout.
const MAX_DURATION_MS: i64 = 10 * 366 * 24 * 3_600_000;

impl DurationMs {
    /// The duration of `millis` milliseconds (negative values clamp to zero).
    pub const fn from_millis(millis: i64) -> DurationMs {
        if millis < 0 {
            DurationMs(0)
        } else {
            DurationMs(millis)
        }
    }

    /// The duration of `minutes` minutes.
    pub const fn from_minutes(minutes: i64) -> DurationMs {
        DurationMs::from_millis(minutes * 60_000)
    }

    /// The duration of `hours` hours.
    pub const fn from_hours(hours: i64) -> DurationMs {
        DurationMs::from_millis(hours * 3_600_000)
    }

    /// Length in milliseconds.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Parses `30s`, `15m`, `8h`, `2d`, `1h30m`, `500ms`: one or more `<digits><unit>` groups,
    /// units `d`, `h`, `m`, `s`, `ms`, each unit at most once and in that order. Zero is
    /// accepted here; callers that need a positive duration check it.
    pub fn parse(text: &str) -> Result<DurationMs, String> {
        const UNITS: [(&str, i64); 5] = [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("ms", 1),
            ("m", 60_000),
            ("s", 1_000),
        ];
        // rank gives the required order: d < h < m < s < ms
        fn rank(unit: &str) -> u8 {
            match unit {
                "d" => 0,
                "h" => 1,
                "m" => 2,
                "s" => 3,
                _ => 4,
            }
        }
        let invalid = || format!("not a duration like 30s, 15m, 8h, 2d or 1h30m: {text:?}");
        if text.is_empty() || text.len() > 32 {
            return Err(invalid());
        }
        let mut rest = text;
        let mut total: i64 = 0;
        let mut last_rank: Option<u8> = None;
        while !rest.is_empty() {
            let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits_len == 0 || digits_len > 12 {
                return Err(invalid());
            }
            let (digits, after_digits) = rest.split_at(digits_len);
            let amount: i64 = digits.parse().map_err(|_| invalid())?;
            let Some((unit, unit_millis)) = UNITS
                .iter()
                .find(|(unit, _)| after_digits.starts_with(unit))
            else {
                return Err(invalid());
            };
            let unit_rank = rank(unit);
            if last_rank.is_some_and(|previous| previous >= unit_rank) {
                return Err(invalid());
            }
            last_rank = Some(unit_rank);
            total = amount
                .checked_mul(*unit_millis)
                .and_then(|millis| total.checked_add(millis))
                .ok_or_else(invalid)?;
            rest = &after_digits[unit.len()..];
        }
        if total > MAX_DURATION_MS {
            return Err(format!("duration {text:?} is longer than ten years"));
        }
        Ok(DurationMs(total))
    }
}

impl fmt::Display for DurationMs {
    /// Renders in the same compact form [`DurationMs::parse`] reads (`1h30m`, `0s`).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut remaining = self.0;
        if remaining == 0 {
            return formatter.write_str("0s");
        }
        for (unit, unit_millis) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            let amount = remaining / unit_millis;
            if amount > 0 {
                write!(formatter, "{amount}{unit}")?;
                remaining -= amount * unit_millis;
            }
        }
        Ok(())
    }
}

impl Serialize for DurationMs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DurationMs, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        DurationMs::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_duration_form() {
        assert_eq!(
            DurationMs::parse("30s"),
            Ok(DurationMs::from_millis(30_000))
        );
        assert_eq!(DurationMs::parse("15m"), Ok(DurationMs::from_minutes(15)));
        assert_eq!(DurationMs::parse("8h"), Ok(DurationMs::from_hours(8)));
        assert_eq!(DurationMs::parse("2d"), Ok(DurationMs::from_hours(48)));
        assert_eq!(DurationMs::parse("1h30m"), Ok(DurationMs::from_minutes(90)));
        assert_eq!(
            DurationMs::parse("1m500ms"),
            Ok(DurationMs::from_millis(60_500))
        );
    }

    #[test]
    fn rejects_malformed_durations() {
        for text in [
            "",
            "h",
            "10",
            "1x",
            "-5m",
            "1.5h",
            "30m1h",
            "1h1h",
            " 1h",
            "1h ",
            "99999999999999d",
        ] {
            assert!(
                DurationMs::parse(text).is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["30s", "15m", "8h", "2d", "1h30m", "1d2h3m4s5ms", "0s"] {
            let parsed = DurationMs::parse(text).expect("valid");
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let time = Timestamp::parse_rfc3339("2026-12-01T09:00:00Z").expect("valid");
        assert_eq!(time.to_rfc3339(), "2026-12-01T09:00:00Z");
        let with_offset = Timestamp::parse_rfc3339("2026-12-01T10:00:00+01:00").expect("valid");
        assert_eq!(with_offset, time);
        assert!(Timestamp::parse_rfc3339("tomorrow").is_err());
    }
}
