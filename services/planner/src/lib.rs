//! The planner service (SPEC §5–§9): takes commands over NATS (request-reply and the
//! durable `ROLLOUT_CMDS` stream), validates and compiles them with the pure core, commits
//! each change with the store's one compare-and-set script (state, audit and outbox
//! together), answers queries, and relays the outbox to `rollout.events.<ns>.<flag>`.
//!
//! - [`decide`]: what a command does, without IO.
//! - [`executor`]: load → decide → commit, retried on revision conflicts, idempotent by id.
//! - [`queries`]: read-only answers.
//! - [`server`]: the NATS subscriptions and the command stream consumer.
//!
//! Any number of replicas may run: they share nothing but Redis and NATS queue groups, and
//! the commit script's revision checks serialise their changes.

pub mod decide;
pub mod executor;
pub mod failpoint;
pub mod queries;
pub mod server;

use std::time::Duration;

use rollout_core::DurationMs;
use rollout_runtime::config::{
    duration, ConfigError, LogSettings, NatsSettings, OtlpSettings, RedisSettings, Validate,
};
use rollout_runtime::connect::{connect_nats, connect_redis, ConnectError};
use rollout_runtime::shutdown::{Shutdown, Tasks};
use rollout_store::Relay;
use rollout_wire::subjects::{Subjects, PLANNER_QUEUE};
use serde::Deserialize;

use crate::executor::Executor;
use crate::queries::Reader;
use crate::server::Handler;

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
        if settings.relay_interval.is_zero() {
            return Err(ConfigError::new(
                "planner.relay_interval",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// Why the planner stopped.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    /// A connection could not be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A setting is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// NATS refused a subscription or the stream setup.
    #[error("nats: {0}")]
    Nats(String),
}

fn millis(duration: Duration) -> DurationMs {
    DurationMs::from_millis(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// A started planner: subscriptions are live when [`Planner::start`] returns.
#[derive(Debug)]
pub struct Planner {
    tasks: Tasks,
    nats: async_nats::Client,
    drain_grace: Duration,
}

impl Planner {
    /// Connects, creates the command stream and its consumer if missing, subscribes, and
    /// starts serving until `shutdown`.
    pub async fn start(config: PlannerConfig, shutdown: Shutdown) -> Result<Planner, PlannerError> {
        config.validate()?;
        let nats = connect_nats(&config.nats, "planner").await?;
        let redis = connect_redis(&config.redis).await?;
        let subjects = Subjects::new(config.nats.subject_prefix.as_str())
            .map_err(|error| ConfigError::new("nats.subject_prefix", error.to_string()))?;
        let settings = &config.planner;
        let relay = Relay::new(nats.clone(), redis.clone(), subjects.clone());
        let handler = Handler {
            nats: nats.clone(),
            subjects: subjects.clone(),
            executor: Executor::new(
                redis.clone(),
                relay.clone(),
                millis(settings.min_phase_interval),
            ),
            reader: Reader::new(
                redis,
                millis(settings.min_phase_interval),
                millis(settings.stale_agent_after),
            ),
        };
        let nats_error = |error: async_nats::Error| PlannerError::Nats(error.to_string());
        let commands = nats
            .queue_subscribe(subjects.cmd_all(), PLANNER_QUEUE.to_owned())
            .await
            .map_err(|error| nats_error(error.into()))?;
        let queries = nats
            .queue_subscribe(subjects.query_all(), PLANNER_QUEUE.to_owned())
            .await
            .map_err(|error| nats_error(error.into()))?;
        let stream = if settings.jetstream {
            Some(
                server::ensure_command_stream(
                    &nats,
                    &subjects,
                    settings.stream_ack_wait,
                    settings.stream_replicas,
                )
                .await
                .map_err(nats_error)?,
            )
        } else {
            None
        };
        nats.flush()
            .await
            .map_err(|error| nats_error(error.into()))?;
        let tasks = Tasks::new();
        tasks.spawn(
            "requests",
            server::serve_requests(
                handler.clone(),
                commands,
                queries,
                settings.concurrency,
                shutdown.clone(),
            ),
        );
        if let Some(consumer) = stream {
            tasks.spawn(
                "command-stream",
                server::serve_stream(
                    handler.clone(),
                    consumer,
                    settings.concurrency,
                    shutdown.clone(),
                ),
            );
        }
        tasks.spawn(
            "outbox-sweep",
            sweep_outbox(
                relay,
                settings.relay_interval,
                settings.relay_grace,
                shutdown,
            ),
        );
        tracing::info!(prefix = %config.nats.subject_prefix, jetstream = settings.jetstream, "planner serving");
        Ok(Planner {
            tasks,
            nats,
            drain_grace: settings.drain_grace,
        })
    }

    /// Waits for shutdown to finish: in-flight requests complete within the grace period,
    /// then the NATS connection drains.
    pub async fn wait(self) {
        let unfinished = self.tasks.close_and_wait(self.drain_grace).await;
        if !unfinished.is_empty() {
            tracing::warn!(?unfinished, "tasks still running after the drain grace");
        }
        if let Err(error) = self.nats.drain().await {
            tracing::warn!(%error, "nats drain failed");
        }
    }
}

async fn sweep_outbox(relay: Relay, interval: Duration, grace: Duration, shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match relay.sweep_all(grace).await {
            Ok(0) => {}
            Ok(relayed) => {
                tracing::info!(relayed, "outbox sweep published events a committer had not")
            }
            Err(error) => tracing::warn!(%error, "outbox sweep failed"),
        }
    }
}

/// Runs the planner until `shutdown` triggers.
pub async fn run(config: PlannerConfig, shutdown: Shutdown) -> Result<(), PlannerError> {
    let planner = Planner::start(config, shutdown.clone()).await?;
    shutdown.cancelled().await;
    planner.wait().await;
    Ok(())
}

/// The binary's body: telemetry, signals, run; maps failures to exit codes.
pub async fn main_with(config: PlannerConfig) -> std::process::ExitCode {
    let telemetry =
        match rollout_runtime::telemetry::init_telemetry("planner", &config.log, &config.otlp) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("planner: telemetry: {error}");
                return std::process::ExitCode::from(70);
            }
        };
    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("planner: signals: {error}");
            return std::process::ExitCode::from(70);
        }
    };
    let outcome = run(config, shutdown).await;
    drop(telemetry);
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(PlannerError::Config(error)) => {
            eprintln!("configuration error: {error}");
            std::process::ExitCode::from(64)
        }
        Err(error) => {
            eprintln!("planner: {error}");
            std::process::ExitCode::from(69)
        }
    }
}
