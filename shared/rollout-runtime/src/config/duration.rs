//! Durations in configuration, written the way people write them: `500ms`,
//! `5s`, `2m`, `6h`, `1h 30m`.
//!
//! Use on a `std::time::Duration` field with
//! `#[serde(with = "rollout_runtime::config::duration")]`:
//!
//! ```
//! use std::time::Duration;
//! use rollout_runtime::config::{load_config, MapEnv};
//!
//! #[derive(Debug, Default, serde::Deserialize)]
//! #[serde(default)]
//! struct Config {
//!     planner: Planner,
//! }
//!
//! #[derive(Debug, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct Planner {
//!     /// shortest phase a rollout may have
//!     #[serde(with = "rollout_runtime::config::duration")]
//!     min_phase_interval: Duration,
//! }
//!
//! impl Default for Planner {
//!     fn default() -> Self {
//!         Planner { min_phase_interval: Duration::from_secs(60) }
//!     }
//! }
//!
//! let env = MapEnv::new().with("ROLLOUT_PLANNER__MIN_PHASE_INTERVAL", "5m");
//! let config: Config = load_config(None, &env).unwrap();
//! assert_eq!(config.planner.min_phase_interval, Duration::from_secs(300));
//! ```

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Writes a duration as text, such as `1m 30s`.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

/// Reads a duration from text such as `500ms`, `5s` or `1h 30m`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

/// Parses a duration the way [`deserialize`] does, with the same error
/// message.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        format!(
            "invalid duration {text:?}: expected a number and a unit, such as 500ms, 5s, 2m or 6h"
        )
    })
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a duration such as 500ms, 5s, 2m or 6h")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }

    // a bare number is refused rather than guessed at: is `5` seconds or
    // milliseconds?
    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "invalid duration {number}: a duration needs a unit, such as {number}s or {number}ms"
        )))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "invalid duration {number}: a duration needs a unit, such as {number}s or {number}ms"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse(" 1h 30m "), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn refuses_words_and_bare_numbers() {
        let error = parse("banana").expect_err("not a duration");
        assert!(error.contains("banana"), "{error}");
        assert!(parse("5").is_err());
    }
}
