//! The ticker's probe endpoints (`http.listen`): ready while NATS is connected and Redis
//! answers (a replica that cannot reach Redis can neither lead nor take over); metrics from
//! its [`TickerStats`] — which shards it leads and the highest epoch, transitions, skipped steps,
//! fence rejections, conflicts, early commits, errors, terms, kill-switch trips and the
//! firing lag (p50, p99, max).

use rollout_runtime::probes::{nats_readiness, Dependency, Probe, PromText};

use crate::stats::TickerStats;

/// What a ticker replica's probe endpoints answer.
#[derive(Debug)]
pub struct TickerProbe {
    /// Its replica id, as a label.
    pub replica: String,
    /// The ticker's NATS connection.
    pub nats: async_nats::Client,
    /// Whether Redis answers.
    pub redis: Dependency,
    /// Its counters.
    pub stats: TickerStats,
    /// How many shards there are in all.
    pub shard_count: u32,
}

impl TickerProbe {
    /// What this replica answers a cluster ping with.
    pub fn describe(&self) -> rollout_wire::MemberInfo {
        let stats = self.stats.snapshot();
        rollout_wire::MemberInfo {
            leader: Some(stats.leader),
            epoch: Some(stats.epoch),
            shards: stats.shards,
            shard_count: Some(self.shard_count),
            ..rollout_wire::MemberInfo::new("ticker", &self.replica, self.readiness())
        }
    }
}

impl Probe for TickerProbe {
    fn readiness(&self) -> Result<(), String> {
        nats_readiness(&self.nats)?;
        self.redis.readiness()
    }

    fn metrics(&self) -> String {
        let stats = self.stats.snapshot();
        let replica = [("replica", self.replica.as_str())];
        let mut text = PromText::new();
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            text.describe(name, kind, help)
                .sample(name, &replica, value);
        };
        one(
            "ticker_ready",
            "gauge",
            "1 when NATS is connected and Redis answers.",
            u64::from(self.readiness().is_ok()),
        );
        one(
            "ticker_leader",
            "gauge",
            "1 while this replica leads at least one shard.",
            u64::from(stats.leader),
        );
        one(
            "ticker_epoch",
            "gauge",
            "Highest epoch of a shard lease held.",
            stats.epoch,
        );
        one(
            "ticker_shards",
            "gauge",
            "Shards the namespaces hash to, in all.",
            u64::from(self.shard_count),
        );
        one(
            "ticker_shards_led",
            "gauge",
            "Shards this replica leads now.",
            stats.shards.len() as u64,
        );
        one(
            "ticker_terms_total",
            "counter",
            "Shard leases won.",
            stats.terms,
        );
        one(
            "ticker_transitions_total",
            "counter",
            "Rollout transitions committed.",
            stats.transitions,
        );
        one(
            "ticker_skipped_steps_total",
            "counter",
            "Steps passed over by catch-up.",
            stats.skipped_steps,
        );
        one(
            "ticker_fence_rejections_total",
            "counter",
            "Writes refused because a newer leader raised the fence.",
            stats.fenced,
        );
        one(
            "ticker_conflicts_total",
            "counter",
            "Commits refused because another writer changed the rollout first.",
            stats.conflicts,
        );
        one(
            "ticker_early_total",
            "counter",
            "Commits refused because Redis time was still before the due time.",
            stats.early,
        );
        one(
            "ticker_errors_total",
            "counter",
            "Rounds or rollouts that failed on an error (retried later).",
            stats.errors,
        );
        one(
            "ticker_kill_switch_trips_total",
            "counter",
            "Flags disabled by their kill switch.",
            stats.kill_switch_trips,
        );
        text.describe(
            "ticker_firing_lag_ms",
            "summary",
            "Commit time minus due time of transitions, in milliseconds.",
        );
        for (quantile, value) in [
            ("0.5", stats.lag_p50_ms),
            ("0.99", stats.lag_p99_ms),
            ("1", stats.lag_max_ms),
        ] {
            text.sample(
                "ticker_firing_lag_ms",
                &[("replica", self.replica.as_str()), ("quantile", quantile)],
                value,
            );
        }
        text.sample("ticker_firing_lag_ms_count", &replica, stats.lag_samples);
        text.describe(
            "ticker_shard_led",
            "gauge",
            "1 for each shard this replica leads now.",
        );
        for shard in stats.shards.keys() {
            let shard = shard.to_string();
            text.sample(
                "ticker_shard_led",
                &[
                    ("replica", self.replica.as_str()),
                    ("shard", shard.as_str()),
                ],
                1,
            );
        }
        text.finish()
    }
}
