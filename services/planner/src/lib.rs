//! The planner service (SPEC §5–§9): takes commands over NATS (request-reply and the
//! durable `ROLLOUT_CMDS` stream), validates and compiles them with the pure core, commits
//! each change with the store's one compare-and-set script (state, audit and outbox
//! together), answers queries, and relays the outbox to `rollout.events.<ns>.<flag>`.
//!
//! - [`config`]: [`PlannerConfig`] (`--config FILE`, `ROLLOUT_*`); [`error`]: [`PlannerError`]
//!   and its exit codes; the binary is `rollout_runtime::service::service_main` over [`run`].
//! - [`decide`]: what a command does, without IO.
//! - [`executor`]: load → decide → commit, retried on revision conflicts, idempotent by id.
//! - [`queries`]: read-only answers.
//! - [`server`]: the NATS subscriptions and the command stream consumer.
//!
//! Any number of replicas may run: they share nothing but Redis and NATS queue groups, and
//! the commit script's revision checks serialise their changes.

pub mod config;
pub mod decide;
pub mod error;
pub mod executor;
pub mod metrics;
pub mod notifier;
pub mod queries;
pub mod server;
pub mod webhook_http;

use std::sync::Arc;
use std::time::Duration;

use rollout_core::DurationMs;
use rollout_runtime::config::{ConfigError, Validate};
use rollout_runtime::connect::{connect_nats, connect_redis};
use rollout_runtime::probes::{nats_readiness, serve_probes, Dependency};
use rollout_runtime::serve::serve;
use rollout_runtime::shutdown::{Shutdown, Tasks};
use rollout_store::{Relay, Writer};
use rollout_wire::subjects::{Subjects, PLANNER_QUEUE};

pub use crate::config::{PlannerConfig, PlannerSettings};
pub use crate::error::PlannerError;
use crate::executor::Executor;
use crate::metrics::{PlannerMetrics, PlannerProbe};
use crate::queries::Reader;
use crate::server::Handler;

fn millis(duration: Duration) -> DurationMs {
    DurationMs::from_millis(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// A started planner: subscriptions are live when [`Planner::start`] returns.
#[derive(Debug)]
pub struct Planner {
    tasks: Tasks,
    nats: async_nats::Client,
    drain_grace: Duration,
    probe_addr: Option<std::net::SocketAddr>,
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
        let metrics = Arc::new(PlannerMetrics::default());
        let tasks = Tasks::new();
        let redis_up = Dependency::watch(
            "redis",
            Duration::from_secs(2),
            rollout_store::answers(redis.clone()),
            shutdown.clone(),
            &tasks,
        );
        let notifier = crate::notifier::Notifier::new(
            redis.clone(),
            settings.delivery_policy(),
            settings.notify_interval,
            Arc::clone(&metrics),
        );
        let handler = Handler {
            nats: nats.clone(),
            subjects: subjects.clone(),
            executor: Executor::new(
                redis.clone(),
                Writer::publishing(redis.clone(), relay.clone()),
                millis(settings.min_phase_interval),
            ),
            reader: Reader::new(
                redis,
                millis(settings.min_phase_interval),
                millis(settings.stale_agent_after),
            ),
            metrics: Arc::clone(&metrics),
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
        let alerts = nats
            .queue_subscribe(subjects.alert_all(), PLANNER_QUEUE.to_owned())
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
        let pinged_redis = redis_up.clone();
        let pinged_nats = nats.clone();
        let replica = rollout_wire::cluster::process_replica();
        rollout_runtime::cluster::answer_pings(
            nats.clone(),
            &subjects,
            Arc::new(move || {
                let readiness =
                    nats_readiness(&pinged_nats).and_then(|()| pinged_redis.readiness());
                rollout_wire::MemberInfo::new("planner", &replica, readiness)
            }),
            shutdown.clone(),
            &tasks,
        )
        .await
        .map_err(|error| nats_error(error.into()))?;
        let probe_addr = match config.http.listen {
            Some(listen) => {
                let probe = PlannerProbe {
                    nats: nats.clone(),
                    redis: redis_up,
                    metrics: Arc::clone(&metrics),
                };
                Some(
                    serve_probes(listen, Arc::new(probe), shutdown.clone(), &tasks)
                        .await
                        .map_err(|error| PlannerError::Bind {
                            addr: listen,
                            message: error.to_string(),
                        })?,
                )
            }
            None => None,
        };
        for (name, subscriber) in [
            ("commands", commands),
            ("queries", queries),
            ("alerts", alerts),
        ] {
            let handler = handler.clone();
            tasks.spawn(
                name,
                serve(
                    subscriber,
                    settings.concurrency,
                    shutdown.clone(),
                    settings.drain_grace,
                    move |message| {
                        let handler = handler.clone();
                        async move { handler.handle_request(message).await }
                    },
                ),
            );
        }
        if let Some(consumer) = stream {
            tasks.spawn(
                "command-stream-lag",
                watch_stream_lag(consumer.clone(), Arc::clone(&metrics), shutdown.clone()),
            );
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
            "webhooks",
            notifier.run(settings.notify_interval, shutdown.clone()),
        );
        tasks.spawn(
            "outbox-sweep",
            sweep_outbox(
                relay,
                settings.relay_interval,
                settings.relay_grace,
                Arc::clone(&metrics),
                shutdown,
            ),
        );
        tracing::info!(prefix = %config.nats.subject_prefix, jetstream = settings.jetstream, "planner serving");
        Ok(Planner {
            tasks,
            nats,
            drain_grace: settings.drain_grace,
            probe_addr,
        })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` answer, when `http.listen` is set.
    pub fn probe_addr(&self) -> Option<std::net::SocketAddr> {
        self.probe_addr
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

/// Reads how far the command stream's consumer is behind, every few seconds.
async fn watch_stream_lag(
    mut consumer: async_nats::jetstream::consumer::PullConsumer,
    metrics: Arc<PlannerMetrics>,
    shutdown: Shutdown,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match consumer.info().await {
            Ok(info) => metrics.stream_pending(info.num_pending + info.num_ack_pending as u64),
            Err(error) => tracing::debug!(%error, "command stream consumer info unavailable"),
        }
    }
}

async fn sweep_outbox(
    relay: Relay,
    interval: Duration,
    grace: Duration,
    metrics: Arc<PlannerMetrics>,
    shutdown: Shutdown,
) {
    shutdown
        .every(interval, || async {
            match relay.sweep_all(grace).await {
                Ok(0) => {}
                Ok(relayed) => {
                    metrics.relayed(relayed as u64);
                    tracing::info!(relayed, "outbox sweep published events a committer had not")
                }
                Err(error) => tracing::warn!(%error, "outbox sweep failed"),
            }
            match relay.depth_all().await {
                Ok(depth) => metrics.outbox_depth(depth),
                Err(error) => tracing::debug!(%error, "outbox depth unavailable"),
            }
        })
        .await;
}

/// Runs the planner until `shutdown` triggers.
pub async fn run(config: PlannerConfig, shutdown: Shutdown) -> Result<(), PlannerError> {
    let planner = Planner::start(config, shutdown.clone()).await?;
    shutdown.cancelled().await;
    planner.wait().await;
    Ok(())
}
