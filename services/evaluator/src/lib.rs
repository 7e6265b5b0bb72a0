//! The evaluator service (SPEC §1, §3.4, §4, §8): any number of replicas, each holding an
//! in-memory snapshot of every flag and active rollout, kept current from
//! `rollout.events.>`, and answering from it alone:
//!
//! - `rollout.eval.<ns>` request-reply in queue group `evaluator` ([`eval`]): one flag,
//!   several, or all, with `explain`;
//! - OFREP over HTTP, plus `/healthz`, `/readyz` and `/metrics` ([`http`], [`ofrep`]),
//!   with bearer tokens bound to one namespace each when required ([`auth`]), and its
//!   change push over Server-Sent Events ([`push`]);
//! - fleet agents on `rollout.fleet.<ns>.<verb>` ([`fleet`]): register, heartbeat,
//!   desired variation, applied/failed reports;
//! - outcome reports on `rollout.metrics.<ns>` ([`outcomes`]): checked against the
//!   snapshot (known flags and variations only), attributed to the flag's active rollout,
//!   batched into the windowed counters kill switches (per flag) and guards (per rollout)
//!   read.
//!
//! Code map: [`snapshot`] holds the state and the apply rule (no IO); [`sync`] loads it
//! from Redis (`sync::load`), applies events (`sync::apply`) and resynchronises;
//! [`metrics`] counts; [`config`] is the configuration; [`error`] says why it could not
//! start, with exit codes. [`Evaluator::start`] wires everything and returns a handle
//! (tests bind port 0 and read the address from it); [`run`] is what the binary runs,
//! through `rollout_runtime::service::service_main`.
//!
//! **Architecture Invariant:** evaluation reads only the snapshot — never Redis — and a
//! flag's served version never goes backwards (every install compares versions).
//!
//! **Architecture Invariant:** a replica takes evaluation, fleet and outcome messages only
//! after its first full load from Redis; until then `/readyz` answers 503 and the queue
//! group routes requests to the other replicas.

pub mod auth;
pub mod config;
pub mod error;
pub mod eval;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod ofrep;
pub mod outcomes;
pub mod push;
pub mod snapshot;
pub mod sync;

mod clock;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rollout_runtime::connect::{connect_nats_observed, connect_redis, NatsEvents};
use rollout_runtime::shutdown::{Shutdown, Tasks};
use rollout_wire::subjects::{Subjects, EVALUATOR_QUEUE};
use tokio::sync::{mpsc, watch};

pub use config::{EvaluatorConfig, EvaluatorSettings, HttpSettings};
pub use error::EvaluatorError;

use crate::auth::TokenTable;
use crate::clock::RedisClock;
use crate::fleet::{AgentCache, KnownRollouts};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// State shared by every task of one evaluator, grouped by concern: what is served and
/// what keeps it current ([`Served`]), the connections every concern talks through
/// ([`Io`]), HTTP access ([`Access`]), fleet agents ([`FleetState`]), counters and
/// settings.
pub struct Shared {
    served: Served,
    io: Io,
    access: Access,
    push: Arc<push::Push>,
    fleet: FleetState,
    metrics: Metrics,
    settings: EvaluatorSettings,
}

/// What a replica serves and what it needs to keep it current (the [`sync`] concern).
struct Served {
    snapshot: Snapshot,
    /// A resynchronisation was dropped because its queue was full: the next one loads all.
    resync_overflow: AtomicBool,
    /// Connection events of the NATS client: a slow-consumer drop may have lost change
    /// events.
    nats_events: Arc<NatsEvents>,
    /// Redis's generation id (`ro:generation`) when the snapshot was last checked against
    /// it; `None` before the first load.
    store_generation: std::sync::Mutex<Option<String>>,
}

/// The connections, subjects and clock every concern talks through.
struct Io {
    nats: async_nats::Client,
    redis: rollout_store::Connection,
    subjects: Subjects,
    clock: RedisClock,
}

/// Who may ask over HTTP, and for which namespace by default (the [`http`] and [`ofrep`]
/// concern).
struct Access {
    /// OFREP bearer tokens and whether they are required.
    tokens: TokenTable,
    default_namespace: String,
    /// Web origins allowed to call from a page (CORS).
    cors_origins: Vec<String>,
}

/// Fleet agents as last registered, and the rollouts their reports are counted against
/// (the [`fleet`] concern).
struct FleetState {
    agents: AgentCache,
    rollouts: KnownRollouts,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Shared")
            .field("subjects", &self.io.subjects)
            .field("settings", &self.settings)
            .field("default_namespace", &self.access.default_namespace)
            .field("tokens", &self.access.tokens)
            .finish_non_exhaustive()
    }
}

/// Starts evaluators.
#[derive(Debug)]
pub struct Evaluator;

impl Evaluator {
    /// Connects to NATS and Redis, binds the HTTP listener, subscribes to change events
    /// and starts loading the snapshot in the background; the evaluation, fleet and
    /// outcome subscriptions follow once it is loaded. Everything stops when `shutdown`
    /// (or [`EvaluatorHandle::shutdown`]) is triggered.
    pub async fn start(
        config: EvaluatorConfig,
        shutdown: Shutdown,
    ) -> Result<EvaluatorHandle, EvaluatorError> {
        let shutdown = shutdown.child();
        let subjects = Subjects::new(config.nats.subject_prefix.as_str())
            .map_err(|error| EvaluatorError::Subjects(error.message().to_owned()))?;
        let nats_events = Arc::new(NatsEvents::default());
        let nats =
            connect_nats_observed(&config.nats, "evaluator", Arc::clone(&nats_events)).await?;
        let redis = connect_redis(&config.redis).await?;
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| EvaluatorError::Bind {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener
            .local_addr()
            .map_err(|source| EvaluatorError::Bind {
                addr: config.http.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            served: Served {
                snapshot: Snapshot::new(),
                resync_overflow: AtomicBool::new(false),
                nats_events,
                store_generation: std::sync::Mutex::new(None),
            },
            io: Io {
                nats,
                redis,
                subjects,
                clock: RedisClock::default(),
            },
            access: Access {
                tokens: TokenTable::new(&config.http),
                default_namespace: config.http.namespace.clone(),
                cors_origins: config.http.cors_origins.clone(),
            },
            push: Arc::new(push::Push::new(&config.http, shutdown.clone())),
            fleet: FleetState {
                agents: AgentCache::default(),
                rollouts: KnownRollouts::default(),
            },
            metrics: Metrics::default(),
            settings: config.evaluator.clone(),
        });
        let tasks = Tasks::new();

        // events first: whatever is published while the snapshot loads waits in the
        // subscription and is applied after the load (older versions are then ignored)
        let events = subscribe(&shared, shared.io.subjects.events_all(), None).await?;

        tasks.spawn(
            "ofrep push",
            push::run_hub(
                Arc::clone(&shared.push),
                shared.served.snapshot.clone(),
                shutdown.clone(),
            ),
        );
        let router = http::router(Arc::clone(&shared));
        let http_shutdown = shutdown.clone();
        tasks.spawn("http", async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(http_shutdown.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "http server failed");
            }
        });

        let described = Arc::clone(&shared);
        let replica = rollout_wire::cluster::process_replica();
        rollout_runtime::cluster::answer_pings(
            shared.io.nats.clone(),
            &shared.io.subjects,
            Arc::new(move || describe(&described, &replica)),
            shutdown.clone(),
            &tasks,
        )
        .await
        .map_err(|error| EvaluatorError::Subscribe {
            subject: shared.io.subjects.cluster_ping(),
            message: error.to_string(),
        })?;
        let (ready_sender, ready) = watch::channel(false);
        tasks.spawn(
            "startup",
            start_serving(
                Arc::clone(&shared),
                events,
                tasks.clone(),
                shutdown.clone(),
                ready_sender,
            ),
        );
        if shared.access.tokens.required() {
            tracing::info!(
                tokens = shared.access.tokens.len(),
                "ofrep requires a bearer token bound to a namespace"
            );
        } else if !shared.access.tokens.is_empty() {
            tracing::warn!(
                tokens = shared.access.tokens.len(),
                "http.tokens are set but http.require_token is off: ofrep answers without a token"
            );
        }
        tracing::info!(http = %http_addr, "evaluator started; loading the snapshot");
        Ok(EvaluatorHandle {
            http_addr,
            shared,
            tasks,
            shutdown,
            ready,
        })
    }
}

/// What this evaluator answers a cluster ping with: ready once its snapshot is loaded, and
/// what it serves in each namespace.
fn describe(shared: &Shared, replica: &str) -> rollout_wire::MemberInfo {
    let readiness = if shared.metrics.is_ready() {
        Ok(())
    } else {
        Err("loading the snapshot".to_owned())
    };
    rollout_wire::MemberInfo {
        served: shared
            .served
            .snapshot
            .namespaces()
            .iter()
            .map(|namespace| {
                let (flags, versions) = namespace.totals();
                (
                    namespace.name().to_owned(),
                    rollout_wire::Served { flags, versions },
                )
            })
            .collect(),
        ..rollout_wire::MemberInfo::new("evaluator", replica, readiness)
    }
}

async fn subscribe(
    shared: &Shared,
    subject: String,
    queue: Option<&str>,
) -> Result<async_nats::Subscriber, EvaluatorError> {
    let subscribed = match queue {
        Some(queue) => {
            shared
                .io
                .nats
                .queue_subscribe(subject.clone(), queue.to_owned())
                .await
        }
        None => shared.io.nats.subscribe(subject.clone()).await,
    };
    subscribed.map_err(|error| EvaluatorError::Subscribe {
        subject,
        message: error.to_string(),
    })
}

/// Loads the snapshot, then starts applying events and serving requests.
async fn start_serving(
    shared: Arc<Shared>,
    events: async_nats::Subscriber,
    tasks: Tasks,
    shutdown: Shutdown,
    ready: watch::Sender<bool>,
) {
    if !sync::first_load(&shared, &shutdown).await {
        return;
    }
    let (resync_sender, resync_receiver) = mpsc::channel(sync::RESYNC_QUEUE);
    tasks.spawn(
        "events",
        sync::apply_events(Arc::clone(&shared), events, resync_sender, shutdown.clone()),
    );
    tasks.spawn(
        "resync",
        sync::resync_worker(Arc::clone(&shared), resync_receiver, shutdown.clone()),
    );
    let grace = shared.settings.shutdown_grace;
    for worker in 0..shared.settings.eval_workers {
        let subscriber = match subscribe(
            &shared,
            shared.io.subjects.eval_all(),
            Some(EVALUATOR_QUEUE),
        )
        .await
        {
            Ok(subscriber) => subscriber,
            Err(error) => {
                tracing::error!(%error, "cannot take evaluation requests");
                return;
            }
        };
        let handler_shared = Arc::clone(&shared);
        tasks.spawn(
            format!("eval-{worker}"),
            // an evaluation is answered from memory at once: in place, each worker one
            // request at a time
            rollout_runtime::serve::answer_in_place(
                subscriber,
                shared.io.nats.clone(),
                shutdown.clone(),
                grace,
                move |message| eval::answer_message(&handler_shared, message),
            ),
        );
    }
    // outcome reports are checked against the snapshot: taken only once it is loaded
    let outcome_reports = match subscribe(
        &shared,
        shared.io.subjects.metrics_all(),
        Some(EVALUATOR_QUEUE),
    )
    .await
    {
        Ok(subscriber) => subscriber,
        Err(error) => {
            tracing::error!(%error, "cannot take outcome reports");
            return;
        }
    };
    tasks.spawn(
        "outcomes",
        outcomes::run(Arc::clone(&shared), outcome_reports, shutdown.clone()),
    );
    let fleet_subscriber = match subscribe(
        &shared,
        shared.io.subjects.fleet_all(),
        Some(EVALUATOR_QUEUE),
    )
    .await
    {
        Ok(subscriber) => subscriber,
        Err(error) => {
            tracing::error!(%error, "cannot take fleet requests");
            return;
        }
    };
    let handler_shared = Arc::clone(&shared);
    tasks.spawn(
        "fleet",
        rollout_runtime::serve::serve(
            fleet_subscriber,
            shared.settings.concurrency,
            shutdown.clone(),
            grace,
            move |message| {
                let shared = Arc::clone(&handler_shared);
                async move { fleet::handle(&shared, message).await }
            },
        ),
    );
    // a round trip: the server has the subscriptions before readiness is announced
    if let Err(error) = shared.io.nats.flush().await {
        tracing::warn!(%error, "nats flush before readiness failed");
    }
    shared.metrics.set_ready();
    ready.send_replace(true);
    let flags: u64 = shared
        .served
        .snapshot
        .namespaces()
        .iter()
        .map(|namespace| namespace.totals().0)
        .sum();
    tracing::info!(
        flags,
        namespaces = shared.served.snapshot.namespaces().len(),
        "snapshot loaded; serving"
    );
}

/// A running evaluator.
#[derive(Debug)]
pub struct EvaluatorHandle {
    http_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Tasks,
    shutdown: Shutdown,
    ready: watch::Receiver<bool>,
}

impl EvaluatorHandle {
    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Whether the first full load is done and requests are being taken.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the evaluator is ready (returns at once if it is).
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        // an error means the sender is gone: startup ended (shutdown) without readiness
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> &Snapshot {
        &self.shared.served.snapshot
    }

    /// The version of flag `key` of `namespace` being served (`None`: not served).
    pub fn served_version(&self, namespace: &str, key: &str) -> Option<u64> {
        self.shared
            .served
            .snapshot
            .namespace(namespace)?
            .with_flag(key, snapshot::LiveFlag::version)
    }

    /// The version held for flag `key`, a deletion's included.
    pub fn held_version(&self, namespace: &str, key: &str) -> Option<u64> {
        self.shared.served.snapshot.held_version(namespace, key)
    }

    /// Flags read again from Redis so far (gaps, missing snapshots, periodic and
    /// reconnection comparisons), not counting the first load.
    pub fn resyncs(&self) -> u64 {
        self.shared.metrics.resyncs_total()
    }

    /// Full comparisons with Redis completed, the first load included.
    pub fn full_syncs(&self) -> u64 {
        self.shared.metrics.full_syncs()
    }

    /// The Prometheus text `/metrics` serves.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render(&self.shared.served.snapshot)
    }

    /// Stops taking work; [`EvaluatorHandle::wait`] then finishes.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Waits for the shutdown signal, then for every task (in-flight requests, the last
    /// outcome flush) up to the grace period; returns the tasks that overstayed it.
    pub async fn wait(self) -> Vec<String> {
        self.shutdown.cancelled().await;
        let grace = self.shared.settings.shutdown_grace;
        let unfinished = self.tasks.close_and_wait(grace).await;
        if let Err(error) = self.shared.io.nats.flush().await {
            tracing::debug!(%error, "final nats flush failed");
        }
        tracing::info!("evaluator stopped");
        unfinished
    }

    /// [`EvaluatorHandle::shutdown`] and [`EvaluatorHandle::wait`].
    pub async fn stop(self) -> Vec<String> {
        self.shutdown();
        self.wait().await
    }
}

/// Runs an evaluator until `shutdown` is triggered, then stops it gracefully.
pub async fn run(config: EvaluatorConfig, shutdown: Shutdown) -> Result<(), EvaluatorError> {
    let handle = Evaluator::start(config, shutdown).await?;
    let unfinished = handle.wait().await;
    if !unfinished.is_empty() {
        tracing::warn!(tasks = ?unfinished, "stopped with tasks still running");
    }
    Ok(())
}
