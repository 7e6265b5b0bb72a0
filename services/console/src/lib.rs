//! The operator console (SPEC §13): a web page, served by its own process, that lists
//! rollouts and flags, shows a rollout's steps, stages, guard figures and audit, explains
//! what an entity is served, and steers rollouts — all as the signed-in operator, through
//! the same public NATS subjects `rolloutctl` uses. It holds no state of its own: every
//! page reads the planner, and [`live`] tells open pages when to read again.
//!
//! - [`config`]: `http.listen` and the `console` section (namespaces, accounts, tokens,
//!   sessions, trace links).
//! - [`auth`]: argon2id passwords, bearer tokens, signed session cookies, CSRF tokens and
//!   the read-only `viewer` role.
//! - [`api`]: the routes — the page, the JSON API over the planner and evaluators, the
//!   live stream, health, readiness and metrics.
//! - [`live`]: `rollout.events.>` and fleet reports turned into page updates.
//! - [`metrics`]: the Prometheus counters.
//!
//! The page itself (`src/assets/`) is plain HTML, CSS and JavaScript embedded in the
//! binary: nothing to build, nothing fetched from elsewhere.

#![forbid(unsafe_code)]

pub mod alertmanager;
pub mod api;
pub mod auth;
pub mod config;
pub mod live;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rollout_runtime::connect::{connect_nats, ConnectError};
use rollout_runtime::service::{ExitStatus, EX_SOFTWARE, EX_UNAVAILABLE};
use rollout_runtime::shutdown::{Shutdown, Tasks};
use rollout_wire::subjects::Subjects;

use crate::auth::Authority;
use crate::config::{ConsoleConfig, ConsoleSettings};
use crate::live::Feed;
use crate::metrics::Metrics;

/// Why the console stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// NATS could not be reached at start-up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The subject prefix is not valid.
    #[error("nats.subject_prefix: {0}")]
    Subjects(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The live subscriptions could not be made.
    #[error("cannot subscribe to the live subjects: {0}")]
    Subscribe(String),
}

impl ExitStatus for ConsoleError {
    fn exit_code(&self) -> u8 {
        match self {
            ConsoleError::Connect(_) => EX_UNAVAILABLE,
            _ => EX_SOFTWARE,
        }
    }
}

/// What every request handler shares.
pub(crate) struct Console {
    pub(crate) nats: async_nats::Client,
    pub(crate) subjects: Subjects,
    pub(crate) settings: ConsoleSettings,
    pub(crate) authority: Authority,
    pub(crate) feed: Feed,
    pub(crate) metrics: Arc<Metrics>,
    /// Ends the live streams at shutdown, so the server's graceful stop does not wait on them.
    pub(crate) shutdown: Shutdown,
}

/// A running console.
#[derive(Debug)]
pub struct ConsoleHandle {
    addr: SocketAddr,
    tasks: Tasks,
}

impl ConsoleHandle {
    /// The address it listens on (the real port when `http.listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until its tasks have ended (after the shutdown it was started with).
    pub async fn stopped(self) {
        let unfinished = self.tasks.close_and_wait(Duration::from_secs(5)).await;
        if !unfinished.is_empty() {
            tracing::warn!(?unfinished, "tasks still running at shutdown");
        }
    }
}

/// Connects to NATS, binds the listener and starts serving until `shutdown`.
pub async fn start(
    config: ConsoleConfig,
    shutdown: Shutdown,
) -> Result<ConsoleHandle, ConsoleError> {
    let subjects = Subjects::new(config.nats.subject_prefix.as_str())
        .map_err(|error| ConsoleError::Subjects(error.message().to_owned()))?;
    let nats = connect_nats(&config.nats, "console").await?;
    if config.console.session_key.is_none() {
        tracing::warn!("console.session_key is not set: a random key signs sessions, so a restart signs everyone out");
    }
    let metrics = Arc::new(Metrics::default());
    let feed = Feed::new();
    let (nats_for_pings, subjects_for_pings) = (nats.clone(), subjects.clone());
    let console = Arc::new(Console {
        nats: nats.clone(),
        subjects: subjects.clone(),
        authority: Authority::new(&config.console),
        settings: config.console,
        feed: feed.clone(),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| ConsoleError::Bind {
            addr: config.http.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ConsoleError::Bind {
        addr: config.http.listen,
        source,
    })?;
    let tasks = Tasks::new();
    // subscribe before serving, so a page that loads sees every later change
    let live = {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let shutdown = shutdown.clone();
        tasks.spawn("console-live", async move {
            if let Err(error) = live::run(nats, subjects, feed, metrics, shutdown, ready_tx).await {
                tracing::error!(%error, "live updates stopped");
            }
        });
        ready_rx
    };
    live.await
        .map_err(|_| ConsoleError::Subscribe("the live task ended before subscribing".to_owned()))?
        .map_err(|error| ConsoleError::Subscribe(error.to_string()))?;
    let pinged = nats_for_pings.clone();
    let replica = rollout_wire::cluster::process_replica();
    rollout_runtime::cluster::answer_pings(
        nats_for_pings,
        &subjects_for_pings,
        Arc::new(move || {
            let readiness = rollout_runtime::probes::nats_readiness(&pinged);
            rollout_wire::MemberInfo::new("console", &replica, readiness)
        }),
        shutdown.clone(),
        &tasks,
    )
    .await
    .map_err(|error| ConsoleError::Subscribe(error.to_string()))?;
    let router = api::router(console);
    let http_shutdown = shutdown.clone();
    tasks.spawn("console-http", async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "http server failed");
        }
    });
    tracing::info!(%addr, "console listening");
    Ok(ConsoleHandle { addr, tasks })
}

/// The service's entry point: serves until `shutdown`.
pub async fn run(config: ConsoleConfig, shutdown: Shutdown) -> Result<(), ConsoleError> {
    let handle = start(config, shutdown.clone()).await?;
    shutdown.cancelled().await;
    handle.stopped().await;
    Ok(())
}
