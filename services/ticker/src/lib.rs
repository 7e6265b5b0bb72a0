//! The ticker service (SPEC §3–§6, §9, §14): any number of replicas sharing the shards the
//! namespaces hash to, one leader per shard at a time, which advance rollouts when their gates open — start times, phase timers, template and manual
//! execute-at times, bake times, stage gates after a duration or on completion counts —
//! checks guards at every tick and kill switches every `health_check_interval`, catches up
//! after downtime in one transition, and emits a `rollout.transition` span per transition.
//!
//! Code map:
//! - [`config`]: [`TickerConfig`] and [`TickerSettings`] (`ROLLOUT_TICKER__*`).
//! - The shard leases (one balancing script: heartbeat, renew, give back above the fair
//!   share, take free shards at a rising epoch), the per-namespace fences and the due
//!   index are the store's ([`rollout_store::lease`], [`rollout_store::due`]): every Redis
//!   command lives there.
//! - [`leadership`]: [`Leadership`], the shards a replica leads and their fenced
//!   namespaces.
//! - [`ticker`]: [`Ticker`], the balancer and worker loops, and their hand-driven steps.
//! - [`fire`]: one due rollout: health, step function, fenced commit, publish, span.
//! - [`kill_switch`]: the kill switch index and its checks.
//! - [`stats`]: [`TickerStats`], counters and the firing-lag histogram.
//! - [`probe`]: `/healthz`, `/readyz` and `/metrics` on `http.listen`.
//!
//! **Architecture Invariant:** a shard lease only saves work; correctness comes from the
//! fence. Every write the ticker makes carries its shard's epoch and is refused by the
//! namespace's fence once a newer holder of the shard raised it, and every transition is
//! one compare-and-set script over the revisions it read, with Redis `TIME` as the clock.
//! A paused or partitioned old holder can waste work, never double-advance or skip a step.

pub mod config;
pub mod error;
pub mod fire;
pub mod kill_switch;
pub mod leadership;
pub mod probe;
pub mod stats;
pub mod ticker;

use std::sync::Arc;
use std::time::Duration;

use rollout_runtime::connect::{connect_nats, connect_redis};
use rollout_runtime::probes::{serve_probes, Dependency};
use rollout_runtime::shutdown::{Shutdown, Tasks};
use rollout_wire::subjects::Subjects;

pub use config::{TickerConfig, TickerSettings};
pub use error::TickerError;
pub use kill_switch::KillSwitchReport;
pub use leadership::{Leadership, LedNamespace};
pub use probe::TickerProbe;
pub use stats::{StatsSnapshot, TickerStats};
pub use ticker::{Round, Ticker};

/// Connects to NATS and Redis and runs a ticker replica until `shutdown`; it gives its
/// shards back on the way out.
pub async fn run(config: TickerConfig, shutdown: Shutdown) -> Result<(), TickerError> {
    let subjects = Subjects::new(config.nats.subject_prefix.as_str())?;
    let nats = connect_nats(&config.nats, "ticker").await?;
    let redis = connect_redis(&config.redis).await?;
    let ping_subjects = subjects.clone();
    let ticker = Ticker::new(redis.clone(), nats.clone(), subjects, config.ticker);
    let replica = ticker.replica_id().to_owned();
    let probes = Tasks::new();
    let redis_up = Dependency::watch(
        "redis",
        Duration::from_secs(2),
        rollout_store::answers(redis),
        shutdown.clone(),
        &probes,
    );
    let probe = Arc::new(TickerProbe {
        replica,
        nats: nats.clone(),
        redis: redis_up,
        stats: ticker.stats(),
        shard_count: ticker.leases().shards(),
    });
    let described = Arc::clone(&probe);
    rollout_runtime::cluster::answer_pings(
        nats.clone(),
        &ping_subjects,
        Arc::new(move || described.describe()),
        shutdown.clone(),
        &probes,
    )
    .await
    .map_err(|error| TickerError::Subscribe {
        subject: "cluster pings".to_owned(),
        message: error.to_string(),
    })?;
    if let Some(listen) = config.http.listen {
        serve_probes(listen, probe, shutdown.clone(), &probes)
            .await
            .map_err(|error| TickerError::Bind {
                addr: listen,
                message: error.to_string(),
            })?;
    }
    let result = ticker.run(shutdown).await;
    probes.close_and_wait(Duration::from_secs(2)).await;
    if let Err(error) = nats.drain().await {
        tracing::warn!(%error, "nats drain failed");
    }
    result
}
