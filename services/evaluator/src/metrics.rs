//! The evaluator's metrics, kept in atomics and rendered in the Prometheus text format
//! (version 0.0.4) on `GET /metrics`: evaluations by namespace, transport and result, an
//! evaluation latency histogram, snapshot size and version per namespace, resyncs,
//! applied events, fleet calls and outcome flushes.
//!
//! Recording is a relaxed atomic add; nothing on the evaluation path locks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rollout_wire::envelope::ErrorCode;
use rollout_wire::subjects::FleetVerb;

use crate::snapshot::{ResyncReason, Snapshot};

/// Where an evaluation request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `rollout.eval.<ns>` request-reply.
    Nats,
    /// OFREP over HTTP.
    Http,
}

impl Transport {
    const ALL: [Transport; 2] = [Transport::Nats, Transport::Http];

    fn index(self) -> usize {
        match self {
            Transport::Nats => 0,
            Transport::Http => 1,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Transport::Nats => "nats",
            Transport::Http => "http",
        }
    }
}

/// How many result labels there are: `ok` plus every error code.
const RESULTS: usize = 1 + ErrorCode::ALL.len();

fn result_index(result: Option<ErrorCode>) -> usize {
    match result {
        None => 0,
        Some(code) => {
            1 + ErrorCode::ALL
                .iter()
                .position(|known| *known == code)
                .unwrap_or(ErrorCode::ALL.len() - 1)
        }
    }
}

fn result_label(index: usize) -> &'static str {
    match index.checked_sub(1) {
        None => "ok",
        Some(code) => ErrorCode::ALL
            .get(code)
            .map_or("internal", |code| code.as_str()),
    }
}

/// Evaluation counts of one namespace, by transport and result.
#[derive(Debug, Default)]
pub struct EvalCounters {
    counts: [[AtomicU64; RESULTS]; 2],
}

impl EvalCounters {
    /// Counts one evaluation request; `result` is `None` on success.
    pub fn record(&self, transport: Transport, result: Option<ErrorCode>) {
        self.counts[transport.index()][result_index(result)].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, transport: Transport, result: usize) -> u64 {
        self.counts[transport.index()][result].load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
    0.002_5, 0.005, 0.01, 0.025, 0.1,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|upper| seconds <= *upper) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, output: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0_u64;
        for (upper, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                output,
                "{name}_bucket{{{labels},le=\"{upper}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(output, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(output, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(output, "{name}_count{{{labels}}} {count}");
    }
}

/// What became of a received change event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventResult {
    /// Installed.
    Applied,
    /// At or below the version held.
    Ignored,
    /// Handed to the resync worker.
    Resync,
    /// Undecodable.
    Invalid,
}

impl EventResult {
    const ALL: [EventResult; 4] = [
        EventResult::Applied,
        EventResult::Ignored,
        EventResult::Resync,
        EventResult::Invalid,
    ];

    fn index(self) -> usize {
        match self {
            EventResult::Applied => 0,
            EventResult::Ignored => 1,
            EventResult::Resync => 2,
            EventResult::Invalid => 3,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            EventResult::Applied => "applied",
            EventResult::Ignored => "ignored",
            EventResult::Resync => "resync",
            EventResult::Invalid => "invalid",
        }
    }
}

/// What became of a reported outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeResult {
    /// Counted.
    Accepted,
    /// Malformed or over a cap.
    Invalid,
    /// Names a flag this namespace does not have: dropped.
    UnknownFlag,
    /// Names a variation its flag does not have: dropped.
    UnknownVariation,
    /// Names a rollout other than the flag's active one: counted for the flag's kill
    /// switch only, never for the active rollout's guard.
    OtherRollout,
}

impl OutcomeResult {
    const ALL: [OutcomeResult; 5] = [
        OutcomeResult::Accepted,
        OutcomeResult::Invalid,
        OutcomeResult::UnknownFlag,
        OutcomeResult::UnknownVariation,
        OutcomeResult::OtherRollout,
    ];

    fn index(self) -> usize {
        match self {
            OutcomeResult::Accepted => 0,
            OutcomeResult::Invalid => 1,
            OutcomeResult::UnknownFlag => 2,
            OutcomeResult::UnknownVariation => 3,
            OutcomeResult::OtherRollout => 4,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            OutcomeResult::Accepted => "accepted",
            OutcomeResult::Invalid => "invalid",
            OutcomeResult::UnknownFlag => "unknown_flag",
            OutcomeResult::UnknownVariation => "unknown_variation",
            OutcomeResult::OtherRollout => "other_rollout",
        }
    }
}

/// Every metric of one evaluator. Shared by reference; all fields are atomics.
#[derive(Debug, Default)]
pub struct Metrics {
    ready: AtomicBool,
    unknown_namespace: EvalCounters,
    latency: [LatencyHistogram; 2],
    resyncs: [AtomicU64; ResyncReason::ALL.len()],
    full_syncs: AtomicU64,
    full_sync_failures: AtomicU64,
    events: [AtomicU64; 4],
    fleet: [[AtomicU64; RESULTS]; 4],
    outcomes: [AtomicU64; OutcomeResult::ALL.len()],
    outcome_flushes: AtomicU64,
    outcome_flush_failures: AtomicU64,
}

fn fleet_index(verb: FleetVerb) -> usize {
    FleetVerb::ALL
        .iter()
        .position(|known| *known == verb)
        .unwrap_or(0)
}

impl Metrics {
    /// Marks the first full load done.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the first full load is done.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Counters for requests naming a namespace the snapshot does not know.
    pub fn unknown_namespace(&self) -> &EvalCounters {
        &self.unknown_namespace
    }

    /// Records how long one evaluation request took, from receipt to reply.
    pub fn record_latency(&self, transport: Transport, elapsed: Duration) {
        self.latency[transport.index()].record(elapsed);
    }

    /// Counts `flags` flag resyncs for `reason`.
    pub fn add_resyncs(&self, reason: ResyncReason, flags: u64) {
        self.resyncs[reason.index()].fetch_add(flags, Ordering::Relaxed);
    }

    /// Flag resyncs so far, all reasons together.
    pub fn resyncs_total(&self) -> u64 {
        self.resyncs
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// Counts one full comparison with Redis (startup, periodic, reconnect).
    pub fn add_full_sync(&self, succeeded: bool) {
        if succeeded {
            self.full_syncs.fetch_add(1, Ordering::Relaxed);
        } else {
            self.full_sync_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Full comparisons with Redis completed so far.
    pub fn full_syncs(&self) -> u64 {
        self.full_syncs.load(Ordering::Relaxed)
    }

    /// Counts one received change event.
    pub fn add_event(&self, result: EventResult) {
        self.events[result.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one fleet call.
    pub fn add_fleet(&self, verb: FleetVerb, result: Option<ErrorCode>) {
        self.fleet[fleet_index(verb)][result_index(result)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `reports` reported outcomes.
    pub fn add_outcomes(&self, result: OutcomeResult, reports: u64) {
        self.outcomes[result.index()].fetch_add(reports, Ordering::Relaxed);
    }

    /// Counts one flush of outcome tallies to Redis.
    pub fn add_outcome_flush(&self, succeeded: bool) {
        if succeeded {
            self.outcome_flushes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.outcome_flush_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of every metric, with `snapshot`'s per-namespace
    /// flag counts and versions.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut output = String::with_capacity(8 * 1024);
        let namespaces = snapshot.namespaces();

        header(
            &mut output,
            "rollout_evaluator_ready",
            "gauge",
            "1 once the first full load from redis is done",
        );
        let _ = writeln!(
            output,
            "rollout_evaluator_ready {}",
            u8::from(self.is_ready())
        );

        header(
            &mut output,
            "rollout_evaluations_total",
            "counter",
            "evaluation requests by namespace, transport and result",
        );
        let mut counters: Vec<(&str, &EvalCounters)> = namespaces
            .iter()
            .map(|namespace| (namespace.name(), namespace.counters()))
            .collect();
        counters.push(("_unknown", &self.unknown_namespace));
        for (name, counts) in counters {
            for transport in Transport::ALL {
                for result in 0..RESULTS {
                    let value = counts.get(transport, result);
                    if value == 0 && result != 0 {
                        continue;
                    }
                    let _ = writeln!(
                        output,
                        "rollout_evaluations_total{{namespace=\"{name}\",transport=\"{}\",result=\"{}\"}} {value}",
                        transport.as_str(),
                        result_label(result)
                    );
                }
            }
        }

        header(
            &mut output,
            "rollout_evaluation_duration_seconds",
            "histogram",
            "time from receiving an evaluation request to its reply being encoded (handed to NATS or HTTP next)",
        );
        for transport in Transport::ALL {
            self.latency[transport.index()].render(
                &mut output,
                "rollout_evaluation_duration_seconds",
                &format!("transport=\"{}\"", transport.as_str()),
            );
        }

        header(
            &mut output,
            "rollout_evaluator_flags",
            "gauge",
            "flags served, by namespace",
        );
        let totals: Vec<(&str, (u64, u64))> = namespaces
            .iter()
            .map(|namespace| (namespace.name(), namespace.totals()))
            .collect();
        for (name, (live, _)) in &totals {
            let _ = writeln!(
                output,
                "rollout_evaluator_flags{{namespace=\"{name}\"}} {live}"
            );
        }
        header(
            &mut output,
            "rollout_evaluator_snapshot_version",
            "gauge",
            "sum of the per-flag versions held (deletions included), by namespace; only rises, equal on replicas holding the same state",
        );
        for (name, (_, version_sum)) in &totals {
            let _ = writeln!(
                output,
                "rollout_evaluator_snapshot_version{{namespace=\"{name}\"}} {version_sum}"
            );
        }

        header(
            &mut output,
            "rollout_evaluator_resyncs_total",
            "counter",
            "flags read again from redis, by reason",
        );
        for reason in ResyncReason::ALL {
            let _ = writeln!(
                output,
                "rollout_evaluator_resyncs_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.resyncs[reason.index()].load(Ordering::Relaxed)
            );
        }
        header(
            &mut output,
            "rollout_evaluator_full_syncs_total",
            "counter",
            "full comparisons of the snapshot with redis, by result",
        );
        let _ = writeln!(
            output,
            "rollout_evaluator_full_syncs_total{{result=\"ok\"}} {}",
            self.full_syncs.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            output,
            "rollout_evaluator_full_syncs_total{{result=\"failed\"}} {}",
            self.full_sync_failures.load(Ordering::Relaxed)
        );

        header(
            &mut output,
            "rollout_evaluator_events_total",
            "counter",
            "change events received, by what became of them",
        );
        for result in EventResult::ALL {
            let _ = writeln!(
                output,
                "rollout_evaluator_events_total{{result=\"{}\"}} {}",
                result.as_str(),
                self.events[result.index()].load(Ordering::Relaxed)
            );
        }

        header(
            &mut output,
            "rollout_evaluator_fleet_requests_total",
            "counter",
            "fleet calls by verb and result",
        );
        for verb in FleetVerb::ALL {
            for result in 0..RESULTS {
                let value = self.fleet[fleet_index(*verb)][result].load(Ordering::Relaxed);
                if value == 0 && result != 0 {
                    continue;
                }
                let _ = writeln!(
                    output,
                    "rollout_evaluator_fleet_requests_total{{verb=\"{verb}\",result=\"{}\"}} {value}",
                    result_label(result)
                );
            }
        }

        header(
            &mut output,
            "rollout_evaluator_outcomes_total",
            "counter",
            "reported outcomes, by what became of them",
        );
        for result in OutcomeResult::ALL {
            let _ = writeln!(
                output,
                "rollout_evaluator_outcomes_total{{result=\"{}\"}} {}",
                result.as_str(),
                self.outcomes[result.index()].load(Ordering::Relaxed)
            );
        }
        header(
            &mut output,
            "rollout_evaluator_outcome_flushes_total",
            "counter",
            "pipelined writes of outcome tallies to redis, by result",
        );
        let _ = writeln!(
            output,
            "rollout_evaluator_outcome_flushes_total{{result=\"ok\"}} {}",
            self.outcome_flushes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            output,
            "rollout_evaluator_outcome_flushes_total{{result=\"failed\"}} {}",
            self.outcome_flush_failures.load(Ordering::Relaxed)
        );
        output
    }
}

fn header(output: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(output, "# HELP {name} {help}");
    let _ = writeln!(output, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_snapshot_totals() {
        let metrics = Metrics::default();
        let snapshot = Snapshot::new();
        snapshot.writer().ensure_namespace("prod");
        let prod = snapshot.namespace("prod").expect("prod");
        prod.counters().record(Transport::Nats, None);
        prod.counters().record(Transport::Nats, None);
        prod.counters()
            .record(Transport::Http, Some(ErrorCode::NotFound));
        metrics.record_latency(Transport::Nats, Duration::from_micros(7));
        metrics.record_latency(Transport::Nats, Duration::from_secs(1));
        metrics.add_resyncs(ResyncReason::Gap, 2);
        metrics.set_ready();
        let text = metrics.render(&snapshot);
        for expected in [
            "rollout_evaluator_ready 1",
            "rollout_evaluations_total{namespace=\"prod\",transport=\"nats\",result=\"ok\"} 2",
            "rollout_evaluations_total{namespace=\"prod\",transport=\"http\",result=\"not_found\"} 1",
            "rollout_evaluation_duration_seconds_bucket{transport=\"nats\",le=\"0.00001\"} 1",
            "rollout_evaluation_duration_seconds_bucket{transport=\"nats\",le=\"+Inf\"} 2",
            "rollout_evaluation_duration_seconds_count{transport=\"nats\"} 2",
            "rollout_evaluator_flags{namespace=\"prod\"} 0",
            "rollout_evaluator_resyncs_total{reason=\"gap\"} 2",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(metrics.resyncs_total(), 2);
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
