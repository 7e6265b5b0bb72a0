//! Audience shares in parts per million. Specs speak percentages with up to four decimal
//! places (resolution 0.0001 % = 1 ppm); everything inside works on exact integers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parts per million in one whole audience.
pub const PPM_PER_WHOLE: u32 = 1_000_000;

/// A share of the audience, 0 ..= 1 000 000 ppm. Serialised as a percentage number
/// (`12.5` means 125 000 ppm), so the wire speaks the same unit as the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Share(u32);

impl Share {
    /// Nobody.
    pub const NONE: Share = Share(0);
    /// Everybody.
    pub const ALL: Share = Share(PPM_PER_WHOLE);

    /// The share of `ppm` parts per million, clamped to one whole.
    pub const fn from_ppm(ppm: u32) -> Share {
        if ppm > PPM_PER_WHOLE {
            Share(PPM_PER_WHOLE)
        } else {
            Share(ppm)
        }
    }

    /// Parts per million.
    pub const fn ppm(self) -> u32 {
        self.0
    }

    /// The share as a percentage (`125_000` ppm → `12.5`).
    pub fn percentage(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Converts a percentage in [0, 100] with at most four decimal places. Anything else
    /// (NaN, out of range, a fifth decimal) is refused with a message saying why.
    pub fn from_percentage(percentage: f64) -> Result<Share, String> {
        if !percentage.is_finite() {
            return Err("percentage must be a finite number".to_owned());
        }
        if !(0.0..=100.0).contains(&percentage) {
            return Err(format!("percentage {percentage} is outside 0..=100"));
        }
        let scaled = percentage * 10_000.0;
        let rounded = scaled.round();
        if (scaled - rounded).abs() > 1e-6 {
            return Err(format!(
                "percentage {percentage} has more than 4 decimal places (resolution is 0.0001 %)"
            ));
        }
        // in range: 0 ..= 1_000_000 fits u32 exactly
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ppm = rounded as u32;
        Ok(Share(ppm))
    }

    /// Whether a bucket (0 ..< 1 000 000) falls inside this share.
    pub const fn contains(self, bucket: u32) -> bool {
        bucket < self.0
    }
}

impl fmt::Display for Share {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}%", self.percentage())
    }
}

impl Serialize for Share {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(10_000) {
            serializer.serialize_u32(self.0 / 10_000)
        } else {
            serializer.serialize_f64(self.percentage())
        }
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Share, D::Error> {
        let percentage = f64::deserialize(deserializer)?;
        Share::from_percentage(percentage).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_convert_exactly_to_ppm() {
        assert_eq!(Share::from_percentage(5.0), Ok(Share::from_ppm(50_000)));
        assert_eq!(Share::from_percentage(100.0), Ok(Share::ALL));
        assert_eq!(Share::from_percentage(0.0001), Ok(Share::from_ppm(1)));
        assert_eq!(
            Share::from_percentage(33.3333),
            Ok(Share::from_ppm(333_333))
        );
        assert_eq!(Share::from_percentage(0.01), Ok(Share::from_ppm(100)));
    }

    #[test]
    fn refuses_a_fifth_decimal_and_out_of_range() {
        assert!(Share::from_percentage(0.00001).is_err());
        assert!(Share::from_percentage(12.34567).is_err());
        assert!(Share::from_percentage(100.0001).is_err());
        assert!(Share::from_percentage(-1.0).is_err());
        assert!(Share::from_percentage(f64::NAN).is_err());
    }

    #[test]
    fn serialises_as_percentage() {
        let json = serde_json::to_string(&Share::from_ppm(125_000)).expect("serialises");
        assert_eq!(json, "12.5");
        assert_eq!(
            serde_json::to_string(&Share::ALL).expect("serialises"),
            "100"
        );
        let parsed: Share = serde_json::from_str("12.5").expect("parses");
        assert_eq!(parsed, Share::from_ppm(125_000));
    }
}
