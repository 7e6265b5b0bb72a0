//! Latency recording: an HDR histogram in microseconds (1 µs to 10 min, 3 significant
//! digits) and the summary every scenario reports from it.

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded, in microseconds (10 minutes); longer ones are clamped.
const MAX_MICROS: u64 = 600_000_000;

/// Latencies in microseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
}

/// Percentiles of a [`Latency`], in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// An empty recorder.
    pub fn new() -> anyhow::Result<Latency> {
        Ok(Latency {
            histogram: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .context("building a latency histogram")?,
        })
    }

    /// Records one latency (at least 1 µs, at most 10 min).
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.record_micros(micros);
    }

    /// Records one latency in microseconds (clamped to 1 µs ..= 10 min).
    pub fn record_micros(&mut self, micros: u64) {
        // within the bounds a value is always recordable
        let _ = self.histogram.record(micros.clamp(1, MAX_MICROS));
    }

    /// Records one latency in milliseconds; negative values (a clock read before the
    /// event it times) count as 0.
    pub fn record_millis(&mut self, millis: i64) {
        let micros = u64::try_from(millis).unwrap_or(0).saturating_mul(1000);
        self.record_micros(micros);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // both have the same bounds, so adding cannot fail
        let _ = self.histogram.add(&other.histogram);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `quantile` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Percentiles and mean.
    pub fn summary(&self) -> LatencySummary {
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.histogram.len(),
            mean_ms: self.histogram.mean() / 1000.0,
            p50_ms: self.quantile_ms(0.5),
            p90_ms: self.quantile_ms(0.9),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: self.histogram.max() as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut latency = Latency::new().expect("histogram");
        for micros in 1..=1000 {
            latency.record_micros(micros);
        }
        latency.record_millis(-5);
        let summary = latency.summary();
        assert_eq!(summary.count, 1001);
        assert!((summary.p50_ms - 0.5).abs() < 0.01, "{summary:?}");
        assert!((summary.max_ms - 1.0).abs() < 0.01, "{summary:?}");
        let mut other = Latency::new().expect("histogram");
        other.record(Duration::from_millis(20));
        latency.merge(&other);
        assert_eq!(latency.count(), 1002);
        assert_eq!(Latency::new().expect("histogram").summary().count, 0);
    }
}
