//! The evaluator's configuration: the shared `nats`, `redis`, `otlp` and `log` sections
//! plus `http` (OFREP and health endpoints) and `evaluator` (snapshot upkeep, outcome
//! batching, fleet liveness, concurrency), loaded by `rollout_runtime::config` from
//! defaults, an optional file and `ROLLOUT_<SECTION>__<KEY>` variables.

use std::net::SocketAddr;
use std::time::Duration;

use rollout_runtime::config::{
    ConfigError, LogSettings, NatsSettings, OtlpSettings, RedisSettings, Validate,
};
use rollout_wire::subjects::Namespace;
use serde::Deserialize;

/// The whole evaluator configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluatorConfig {
    /// How to reach NATS.
    pub nats: NatsSettings,
    /// How to reach Redis.
    pub redis: RedisSettings,
    /// Span export.
    pub otlp: OtlpSettings,
    /// Logging.
    pub log: LogSettings,
    /// The HTTP listener (OFREP, `/healthz`, `/readyz`, `/metrics`).
    pub http: HttpSettings,
    /// Snapshot upkeep, outcome batching, fleet and concurrency.
    pub evaluator: EvaluatorSettings,
}

impl Validate for EvaluatorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.redis.validate()?;
        self.otlp.validate()?;
        self.log.validate()?;
        self.http.validate()?;
        self.evaluator.validate()
    }
}

/// Section `http` (`ROLLOUT_HTTP__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on, e.g. `0.0.0.0:8080` (port 0 picks a free port)
    pub listen: SocketAddr,
    /// Namespace of OFREP requests without an `X-Rollout-Namespace` header
    pub namespace: String,
}

impl HttpSettings {
    /// Default listen address.
    pub const DEFAULT_LISTEN: &'static str = "0.0.0.0:8080";
    /// Default namespace of OFREP requests.
    pub const DEFAULT_NAMESPACE: &'static str = "default";
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            namespace: HttpSettings::DEFAULT_NAMESPACE.to_owned(),
        }
    }
}

impl Validate for HttpSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        Namespace::new(self.namespace.as_str())
            .map(|_| ())
            .map_err(|error| ConfigError::new("http.namespace", error.message()))
    }
}

/// Section `evaluator` (`ROLLOUT_EVALUATOR__*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluatorSettings {
    /// How often every held version is compared with Redis, to catch missed events
    #[serde(with = "rollout_runtime::config::duration")]
    pub resync_interval: Duration,
    /// How often the NATS connection is checked for a reconnection (which triggers a
    /// full comparison), Redis's generation id for a data loss (which triggers a rebuild),
    /// and failed resyncs are retried
    #[serde(with = "rollout_runtime::config::duration")]
    pub reconnect_check_interval: Duration,
    /// Longest time reported outcomes wait in memory before one pipelined write
    #[serde(with = "rollout_runtime::config::duration")]
    pub outcome_flush_interval: Duration,
    /// Reported outcomes that trigger a write before the interval ends
    pub outcome_batch_max: usize,
    /// An agent silent this long counts as stale in stage counts; fleet calls refresh
    /// liveness well within it
    #[serde(with = "rollout_runtime::config::duration")]
    pub stale_agent_after: Duration,
    /// An agent silent this long is forgotten (its record expires; it stops counting as a
    /// stage member), so machines that left do not grow Redis forever.
    #[serde(with = "rollout_runtime::config::duration")]
    pub agent_expire_after: Duration,
    /// How long an agent's labels read from Redis are reused for `desired` (0: always read)
    #[serde(with = "rollout_runtime::config::duration")]
    pub agent_cache_ttl: Duration,
    /// Subscriptions in queue group `evaluator` on `rollout.eval.*`, each handled by its
    /// own task (evaluation is pure CPU: about one per core)
    pub eval_workers: usize,
    /// Most fleet calls handled at once (they wait on Redis)
    pub concurrency: usize,
    /// How long shutdown waits for in-flight work and the last outcome flush
    #[serde(with = "rollout_runtime::config::duration")]
    pub shutdown_grace: Duration,
}

impl Default for EvaluatorSettings {
    fn default() -> EvaluatorSettings {
        EvaluatorSettings {
            resync_interval: Duration::from_secs(30),
            reconnect_check_interval: Duration::from_secs(1),
            outcome_flush_interval: Duration::from_millis(250),
            outcome_batch_max: 10_000,
            stale_agent_after: Duration::from_secs(60),
            agent_expire_after: Duration::from_secs(7 * 24 * 3600),
            agent_cache_ttl: Duration::from_secs(2),
            eval_workers: 2,
            concurrency: 64,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

fn positive(setting: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(setting, "must be greater than zero"));
    }
    Ok(())
}

fn in_range(setting: &str, value: usize, low: usize, high: usize) -> Result<(), ConfigError> {
    if value < low || value > high {
        return Err(ConfigError::new(
            setting,
            format!("must be between {low} and {high}, not {value}"),
        ));
    }
    Ok(())
}

impl Validate for EvaluatorSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("evaluator.resync_interval", self.resync_interval)?;
        positive(
            "evaluator.reconnect_check_interval",
            self.reconnect_check_interval,
        )?;
        positive(
            "evaluator.outcome_flush_interval",
            self.outcome_flush_interval,
        )?;
        in_range(
            "evaluator.outcome_batch_max",
            self.outcome_batch_max,
            1,
            10_000_000,
        )?;
        positive("evaluator.stale_agent_after", self.stale_agent_after)?;
        if self.agent_expire_after <= self.stale_agent_after {
            return Err(ConfigError::new(
                "evaluator.agent_expire_after",
                "must be longer than evaluator.stale_agent_after",
            ));
        }
        in_range("evaluator.eval_workers", self.eval_workers, 1, 256)?;
        in_range("evaluator.concurrency", self.concurrency, 1, 100_000)?;
        positive("evaluator.shutdown_grace", self.shutdown_grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_runtime::config::{load_config, MapEnv};

    #[test]
    fn defaults_validate_and_environment_overrides() {
        let config: EvaluatorConfig = load_config(None, &MapEnv::new()).expect("defaults");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.http.namespace, "default");
        assert_eq!(config.http.listen.port(), 8080);
        let env = MapEnv::new()
            .with("ROLLOUT_HTTP__LISTEN", "127.0.0.1:0")
            .with("ROLLOUT_HTTP__NAMESPACE", "prod")
            .with("ROLLOUT_EVALUATOR__RESYNC_INTERVAL", "5s")
            .with("ROLLOUT_EVALUATOR__OUTCOME_BATCH_MAX", "50");
        let config: EvaluatorConfig = load_config(None, &env).expect("loads");
        assert_eq!(config.http.listen.port(), 0);
        assert_eq!(config.http.namespace, "prod");
        assert_eq!(config.evaluator.resync_interval, Duration::from_secs(5));
        assert_eq!(config.evaluator.outcome_batch_max, 50);
    }

    #[test]
    fn bad_settings_are_named() {
        let env = MapEnv::new().with("ROLLOUT_HTTP__NAMESPACE", "not.valid");
        let config: EvaluatorConfig = load_config(None, &env).expect("loads");
        assert_eq!(
            config.validate().expect_err("invalid").setting(),
            "http.namespace"
        );
        let env = MapEnv::new().with("ROLLOUT_HTTP__LISTEN", "nowhere");
        let error = load_config::<EvaluatorConfig>(None, &env).expect_err("bad address");
        assert_eq!(error.setting(), "http.listen");
        let env = MapEnv::new().with("ROLLOUT_EVALUATOR__CONCURRENCY", "0");
        let config: EvaluatorConfig = load_config(None, &env).expect("loads");
        assert_eq!(
            config.validate().expect_err("zero").setting(),
            "evaluator.concurrency"
        );
        let env = MapEnv::new().with("ROLLOUT_EVALUATOR__UNKNOWN", "1");
        assert!(load_config::<EvaluatorConfig>(None, &env).is_err());
    }
}
