//! The ticker's configuration (SPEC §8.5): the shared `nats`, `redis`, `otlp` and `log`
//! sections plus `ticker` ([`TickerSettings`]), loaded from defaults, an optional
//! `--config` file and `ROLLOUT_<SECTION>__<KEY>` variables (`ROLLOUT_TICKER__LEASE_TTL=2s`).

use std::time::Duration;

use rollout_runtime::config::{
    ConfigError, LogSettings, NatsSettings, OtlpSettings, RedisSettings, Validate,
};
use rollout_runtime::service::ServiceConfig;
use serde::Deserialize;

/// Everything the ticker binary reads at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TickerConfig {
    /// How to reach NATS (events in and out).
    pub nats: NatsSettings,
    /// How to reach Redis (state, lease, fences).
    pub redis: RedisSettings,
    /// Where transition spans are exported.
    pub otlp: OtlpSettings,
    /// What is logged and how.
    pub log: LogSettings,
    /// The ticker's own settings.
    pub ticker: TickerSettings,
    /// `/healthz`, `/readyz` and `/metrics`, when `http.listen` is set.
    pub http: rollout_runtime::probes::ProbeSettings,
}

impl ServiceConfig for TickerConfig {
    fn log(&self) -> &LogSettings {
        &self.log
    }

    fn otlp(&self) -> &OtlpSettings {
        &self.otlp
    }

    fn probe_address(&self) -> Option<std::net::SocketAddr> {
        self.http.listen
    }
}

impl Validate for TickerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.redis.validate()?;
        self.otlp.validate()?;
        self.log.validate()?;
        self.ticker.validate()
    }
}

/// Section `ticker` (variables `ROLLOUT_TICKER__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TickerSettings {
    /// How long the leader's lease lasts without renewal, e.g. `2s`: a crashed leader is
    /// replaced this long after its last renewal at the latest
    #[serde(with = "rollout_runtime::config::duration")]
    pub lease_ttl: Duration,
    /// How often the leader renews its lease and followers try to take it; a third of
    /// `lease_ttl` when unset
    #[serde(default, with = "optional_duration")]
    pub renew_interval: Option<Duration>,
    /// This replica's name in the leases; `<hostname>-<pid>-<random>` when unset
    pub replica_id: Option<String>,
    /// How many shards the namespaces hash to (SPEC §14): each shard has its own lease,
    /// epoch and fence, and the replicas share them out. Every replica must use the same
    /// number (the first stores it; a replica configured otherwise is refused)
    pub shards: u32,
    /// Most due rollouts read from one namespace's due index per round
    pub batch_size: usize,
    /// Most rollouts worked on at once (in batches of `commit_batch`)
    pub max_in_flight: usize,
    /// Most due rollouts fired together: read in one pipelined round trip, their
    /// transitions committed in another (each its own fenced script), their events
    /// published with one delivery proof
    pub commit_batch: usize,
    /// How often kill switches are evaluated, e.g. `1s`
    #[serde(with = "rollout_runtime::config::duration")]
    pub health_check_interval: Duration,
    /// A fleet agent silent this long (no heartbeat, no report) no longer holds a stage
    /// completion gate shut, e.g. `60s`
    #[serde(with = "rollout_runtime::config::duration")]
    pub stale_agent_after: Duration,
    /// How long shutdown waits for transitions in flight before releasing the lease
    #[serde(with = "rollout_runtime::config::duration")]
    pub shutdown_grace: Duration,
}

impl TickerSettings {
    /// Default lease time to live: a leader killed with SIGKILL is replaced within it, so
    /// the next due transition fires within about 2 s (SPEC §10 wants ≤ 3 s).
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);
    /// Default shard count: enough to spread over a few dozen replicas.
    pub const DEFAULT_SHARDS: u32 = 64;
    /// Default batch size.
    pub const DEFAULT_BATCH_SIZE: usize = 2048;
    /// Default number of rollouts worked on at once.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
    /// Default number of rollouts fired together.
    pub const DEFAULT_COMMIT_BATCH: usize = 32;
    /// Default kill switch evaluation interval.
    pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
    /// Default staleness of fleet agents.
    pub const DEFAULT_STALE_AGENT_AFTER: Duration = Duration::from_secs(60);
    /// Default shutdown grace period.
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

    /// The renewal interval in force: the configured one, else a third of the lease.
    pub fn renew_every(&self) -> Duration {
        self.renew_interval.unwrap_or(self.lease_ttl / 3)
    }

    /// How many batches a round works on at once: enough of `commit_batch` rollouts to
    /// keep `max_in_flight` busy, at least one.
    pub fn batches_in_flight(&self) -> usize {
        self.max_in_flight.div_ceil(self.commit_batch.max(1)).max(1)
    }

    /// The replica id in force: the configured one, else `<hostname>-<pid>-<random>`.
    pub fn replica(&self) -> String {
        match &self.replica_id {
            Some(id) => id.clone(),
            None => default_replica_id(),
        }
    }
}

impl Default for TickerSettings {
    fn default() -> TickerSettings {
        TickerSettings {
            lease_ttl: TickerSettings::DEFAULT_LEASE_TTL,
            renew_interval: None,
            replica_id: None,
            shards: TickerSettings::DEFAULT_SHARDS,
            batch_size: TickerSettings::DEFAULT_BATCH_SIZE,
            max_in_flight: TickerSettings::DEFAULT_MAX_IN_FLIGHT,
            commit_batch: TickerSettings::DEFAULT_COMMIT_BATCH,
            health_check_interval: TickerSettings::DEFAULT_HEALTH_CHECK_INTERVAL,
            stale_agent_after: TickerSettings::DEFAULT_STALE_AGENT_AFTER,
            shutdown_grace: TickerSettings::DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl Validate for TickerSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "ticker.lease_ttl",
                "must be at least 100ms",
            ));
        }
        if let Some(renew) = self.renew_interval {
            if renew.is_zero() || renew >= self.lease_ttl {
                return Err(ConfigError::new(
                    "ticker.renew_interval",
                    "must be greater than zero and shorter than ticker.lease_ttl",
                ));
            }
        }
        if let Some(id) = &self.replica_id {
            if id.is_empty() || id.len() > 128 || id.contains(char::is_whitespace) {
                return Err(ConfigError::new(
                    "ticker.replica_id",
                    "must be 1..=128 characters without whitespace",
                ));
            }
        }
        if !(1..=rollout_store::lease::MAX_SHARDS).contains(&self.shards) {
            return Err(ConfigError::new(
                "ticker.shards",
                format!("must be between 1 and {}", rollout_store::lease::MAX_SHARDS),
            ));
        }
        if !(1..=100_000).contains(&self.batch_size) {
            return Err(ConfigError::new(
                "ticker.batch_size",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=4096).contains(&self.max_in_flight) {
            return Err(ConfigError::new(
                "ticker.max_in_flight",
                "must be between 1 and 4096",
            ));
        }
        if !(1..=4096).contains(&self.commit_batch) {
            return Err(ConfigError::new(
                "ticker.commit_batch",
                "must be between 1 and 4096",
            ));
        }
        if self.health_check_interval < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "ticker.health_check_interval",
                "must be at least 10ms",
            ));
        }
        if self.stale_agent_after.is_zero() {
            return Err(ConfigError::new(
                "ticker.stale_agent_after",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "ticker".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

/// `Option<Duration>` written like the runtime's durations (`500ms`, `2s`).
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| {
            rollout_runtime::config::duration::parse(&text).map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use rollout_runtime::config::{load_config, MapEnv};

    use super::*;

    #[test]
    fn defaults_are_valid_and_renewal_is_a_third_of_the_lease() {
        let config = TickerConfig::default();
        config.validate().expect("defaults are valid");
        assert_eq!(config.ticker.lease_ttl, Duration::from_secs(2));
        assert_eq!(config.ticker.renew_every(), Duration::from_secs(2) / 3);
        assert!(!config.ticker.replica().is_empty());
    }

    #[test]
    fn environment_variables_set_ticker_settings() {
        let env = MapEnv::new()
            .with("ROLLOUT_TICKER__LEASE_TTL", "5s")
            .with("ROLLOUT_TICKER__RENEW_INTERVAL", "500ms")
            .with("ROLLOUT_TICKER__REPLICA_ID", "ticker-a")
            .with("ROLLOUT_TICKER__BATCH_SIZE", "64")
            .with("ROLLOUT_REDIS__URL", "redis://127.0.0.1:7000");
        let config: TickerConfig = load_config(None, &env).expect("loads");
        config.validate().expect("valid");
        assert_eq!(config.ticker.lease_ttl, Duration::from_secs(5));
        assert_eq!(config.ticker.renew_every(), Duration::from_millis(500));
        assert_eq!(config.ticker.replica(), "ticker-a");
        assert_eq!(config.ticker.batch_size, 64);
        assert_eq!(config.redis.url, "redis://127.0.0.1:7000");
    }

    #[test]
    fn bad_settings_are_named() {
        let env = MapEnv::new().with("ROLLOUT_TICKER__LEASE_TTL", "soon");
        let error = load_config::<TickerConfig>(None, &env).expect_err("not a duration");
        assert_eq!(error.setting(), "ticker.lease_ttl");

        let env = MapEnv::new().with("ROLLOUT_TICKER__LEAS_TTL", "2s");
        assert!(
            load_config::<TickerConfig>(None, &env).is_err(),
            "typo refused"
        );

        let env = MapEnv::new()
            .with("ROLLOUT_TICKER__LEASE_TTL", "1s")
            .with("ROLLOUT_TICKER__RENEW_INTERVAL", "2s");
        let config: TickerConfig = load_config(None, &env).expect("loads");
        let error = config
            .validate()
            .expect_err("renewal slower than the lease");
        assert_eq!(error.setting(), "ticker.renew_interval");

        let env = MapEnv::new().with("ROLLOUT_TICKER__BATCH_SIZE", "0");
        let config: TickerConfig = load_config(None, &env).expect("loads");
        assert_eq!(
            config.validate().expect_err("empty batches").setting(),
            "ticker.batch_size"
        );
    }
}
