//! The planner's configuration: `--config FILE` and `ROLLOUT_<SECTION>__<KEY>`.

use std::time::Duration;

use rollout_runtime::config::{
    duration, ConfigError, LogSettings, NatsSettings, OtlpSettings, RedisSettings, Validate,
};
use rollout_runtime::probes::ProbeSettings;
use rollout_runtime::service::ServiceConfig;
use serde::Deserialize;

/// The planner's configuration: `--config FILE` and `ROLLOUT_<SECTION>__<KEY>`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerConfig {
    /// NATS connection.
    pub nats: NatsSettings,
    /// Redis connection.
    pub redis: RedisSettings,
    /// Trace export.
    pub otlp: OtlpSettings,
    /// Logging.
    pub log: LogSettings,
    /// Planner behaviour.
    pub planner: PlannerSettings,
    /// `/healthz`, `/readyz` and `/metrics`, when `http.listen` is set.
    pub http: ProbeSettings,
}

/// Planner behaviour (`ROLLOUT_PLANNER__*`).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerSettings {
    /// Minimum gap between manual schedule steps (SPEC §3.2).
    #[serde(with = "duration")]
    pub min_phase_interval: Duration,
    /// Requests handled at once per subscription.
    pub concurrency: usize,
    /// Consume the durable command stream `ROLLOUT_CMDS`.
    pub jetstream: bool,
    /// How often the outbox is swept for events a crashed process did not publish.
    #[serde(with = "duration")]
    pub relay_interval: Duration,
    /// Outbox entries younger than this are left to the process that committed them.
    #[serde(with = "duration")]
    pub relay_grace: Duration,
    /// How long the command stream waits for an acknowledgement before redelivering.
    #[serde(with = "duration")]
    pub stream_ack_wait: Duration,
    /// Replicas of the command stream in a NATS cluster (1, 3 or 5; 3 in the deploy files).
    pub stream_replicas: usize,
    /// How long in-flight work may take to finish at shutdown.
    #[serde(with = "duration")]
    pub drain_grace: Duration,
    /// An agent silent this long is counted stale in stage counts.
    #[serde(with = "duration")]
    pub stale_agent_after: Duration,
    /// How often webhooks are sent the notices that wait for them.
    #[serde(with = "duration")]
    pub notify_interval: Duration,
    /// How long one webhook POST may take.
    #[serde(with = "duration")]
    pub webhook_timeout: Duration,
    /// Attempts of one notice before it is given up.
    pub webhook_attempts: u32,
    /// The wait after a webhook's first failed attempt; each further failure doubles it.
    #[serde(with = "duration")]
    pub webhook_backoff: Duration,
    /// The longest wait between attempts.
    #[serde(with = "duration")]
    pub webhook_backoff_max: Duration,
}

impl PlannerSettings {
    /// How webhook deliveries are attempted.
    pub fn delivery_policy(&self) -> crate::notifier::DeliveryPolicy {
        crate::notifier::DeliveryPolicy {
            timeout: self.webhook_timeout,
            attempts: self.webhook_attempts,
            backoff: self.webhook_backoff,
            backoff_max: self.webhook_backoff_max,
        }
    }
}

impl Default for PlannerSettings {
    fn default() -> PlannerSettings {
        PlannerSettings {
            min_phase_interval: Duration::from_secs(300),
            concurrency: 64,
            jetstream: true,
            relay_interval: Duration::from_millis(500),
            relay_grace: Duration::from_secs(2),
            stream_ack_wait: Duration::from_secs(30),
            stream_replicas: 1,
            drain_grace: Duration::from_secs(10),
            stale_agent_after: Duration::from_secs(60),
            notify_interval: Duration::from_millis(250),
            webhook_timeout: Duration::from_secs(5),
            webhook_attempts: 12,
            webhook_backoff: Duration::from_secs(1),
            webhook_backoff_max: Duration::from_secs(600),
        }
    }
}

impl Validate for PlannerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.redis.validate()?;
        self.otlp.validate()?;
        self.log.validate()?;
        let settings = &self.planner;
        if settings.concurrency == 0 || settings.concurrency > 10_000 {
            return Err(ConfigError::new(
                "planner.concurrency",
                "must be between 1 and 10000",
            ));
        }
        if settings.min_phase_interval > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::new(
                "planner.min_phase_interval",
                "must be at most 7d",
            ));
        }
        if ![1, 3, 5].contains(&settings.stream_replicas) {
            return Err(ConfigError::new(
                "planner.stream_replicas",
                "must be 1, 3 or 5",
            ));
        }
        for (field, value) in [
            ("planner.notify_interval", settings.notify_interval),
            ("planner.webhook_timeout", settings.webhook_timeout),
            ("planner.webhook_backoff", settings.webhook_backoff),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        if settings.webhook_attempts == 0 || settings.webhook_attempts > 100 {
            return Err(ConfigError::new(
                "planner.webhook_attempts",
                "must be between 1 and 100",
            ));
        }
        if settings.webhook_backoff_max < settings.webhook_backoff {
            return Err(ConfigError::new(
                "planner.webhook_backoff_max",
                "must be at least planner.webhook_backoff",
            ));
        }
        if settings.relay_interval.is_zero() {
            return Err(ConfigError::new(
                "planner.relay_interval",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

impl ServiceConfig for PlannerConfig {
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
