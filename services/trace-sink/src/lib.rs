//! `trace-sink`: a minimal OpenTelemetry trace receiver for the compose cluster.
//!
//! The services export their spans over OTLP/HTTP with protobuf bodies
//! (`POST <endpoint>/v1/traces`, see `rollout_runtime::telemetry`), and the console links
//! each rollout step to `http://localhost:16686/trace/{trace_id}`. In the full cluster an
//! OpenTelemetry collector receives those spans and Jaeger shows them; on machines that
//! cannot pull container images (no registry), neither exists. `trace-sink` stands in for
//! both with one binary built from this workspace: it listens for OTLP on port 4318, and
//! serves the trace pages and a small JSON API on port 16686, so the same endpoints and the
//! same links work.
//!
//! It is **not** a Jaeger replacement: spans are kept in memory only, in a ring buffer
//! bounded by `--keep` (the oldest dropped first), with no persistence, no sampling, no
//! search beyond exact filters, and no OTLP/gRPC or OTLP/JSON. It exists so that a
//! developer (and the system tests) can see what was traced, not to store traces.
//!
//! - [`store`]: the bounded span store and the flattened [`StoredSpan`].
//! - [`otlp`]: the OTLP listener (`POST /v1/traces`).
//! - [`query`]: the query listener (JSON API, HTML pages, metrics).
//! - [`html`]: the pages, with every span field escaped.
//! - [`metrics`]: the Prometheus counters.
//!
//! Start it with [`TraceSink::bind`]; the binary adds the command line ([`Settings`]),
//! logging and the stop signals.

#![forbid(unsafe_code)]

pub mod html;
pub mod metrics;
pub mod otlp;
pub mod query;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::metrics::Metrics;
pub use crate::store::{SpanFilter, SpanStore, StoredSpan};

/// How long [`TraceSink::shutdown`] waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The command line: where to listen and how many spans to keep.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(
    name = "trace-sink",
    version,
    about = "A minimal OTLP/HTTP trace receiver with trace pages: in memory, bounded, no persistence"
)]
pub struct Settings {
    /// Where the services send spans (OTLP/HTTP protobuf, POST /v1/traces).
    #[arg(long, default_value = "0.0.0.0:4318")]
    pub otlp_listen: SocketAddr,
    /// Where the trace pages, the JSON API and /metrics are served.
    #[arg(long, default_value = "0.0.0.0:16686")]
    pub http_listen: SocketAddr,
    /// How many spans to keep in memory; the oldest are dropped first.
    #[arg(long, default_value_t = 20_000, value_parser = parse_keep)]
    pub keep: usize,
}

impl Settings {
    /// Both listeners on 127.0.0.1 with ports picked by the system, keeping `keep` spans:
    /// for tests.
    pub fn local(keep: usize) -> Settings {
        Settings {
            otlp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            keep,
        }
    }
}

fn parse_keep(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(keep) => Ok(keep),
        Err(error) => Err(error.to_string()),
    }
}

/// What both listeners share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: SpanStore,
    pub(crate) metrics: Metrics,
}

/// Why the sink could not start.
#[derive(Debug)]
pub struct BindError {
    /// Which listener: `otlp` or `http`.
    pub listener: &'static str,
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "cannot listen on {} ({} listener)",
            self.addr, self.listener
        )
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A running sink: both listeners bound and serving.
///
/// Dropping it leaves the servers running until the runtime ends; [`TraceSink::shutdown`]
/// stops them.
#[derive(Debug)]
pub struct TraceSink {
    otlp_addr: SocketAddr,
    http_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

impl TraceSink {
    /// Binds both listeners and starts serving on the current tokio runtime.
    pub async fn bind(settings: &Settings) -> Result<TraceSink, BindError> {
        let otlp_listener = listen("otlp", settings.otlp_listen).await?;
        let http_listener = listen("http", settings.http_listen).await?;
        let local_addr = |listener: &TcpListener, name, addr| {
            listener.local_addr().map_err(|source| BindError {
                listener: name,
                addr,
                source,
            })
        };
        let otlp_addr = local_addr(&otlp_listener, "otlp", settings.otlp_listen)?;
        let http_addr = local_addr(&http_listener, "http", settings.http_listen)?;
        let shared = Arc::new(Shared {
            store: SpanStore::new(settings.keep),
            metrics: Metrics::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let servers = vec![
            serve(
                "otlp",
                otlp_listener,
                otlp::router(Arc::clone(&shared)),
                stopped.clone(),
            ),
            serve(
                "http",
                http_listener,
                query::router(Arc::clone(&shared)),
                stopped,
            ),
        ];
        tracing::info!(otlp = %otlp_addr, http = %http_addr, keep = settings.keep, "trace-sink listening");
        Ok(TraceSink {
            otlp_addr,
            http_addr,
            shared,
            stop,
            servers,
        })
    }

    /// Where OTLP export requests are received (the real port when port 0 was asked for).
    pub fn otlp_addr(&self) -> SocketAddr {
        self.otlp_addr
    }

    /// Where the pages and the JSON API are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The spans kept so far.
    pub fn store(&self) -> &SpanStore {
        &self.shared.store
    }

    /// Stops accepting connections, lets open requests finish (for at most
    /// [`SHUTDOWN_GRACE`]) and waits for both servers to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for mut server in self.servers {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the grace period: closing them");
                server.abort();
            }
        }
        tracing::info!("trace-sink stopped");
    }
}

async fn listen(name: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        listener: name,
        addr,
        source,
    })
}

fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                // an error means the handle is gone: keep serving until the runtime ends
                if stopped.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
            .await;
        if let Err(error) = served {
            tracing::error!(listener = name, %error, "server failed");
        }
    })
}

/// `GET /healthz` on both listeners.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// A JSON response (fields in declaration order, not sorted).
pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let text = match serde_json::to_string(body) {
        Ok(text) => text,
        // only a map with non-string keys fails, and none is serialized here
        Err(error) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    };
    let mut response = (status, text).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A JSON error: `{"error": {"code", "message"}}`.
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_are_the_compose_ports() {
        let settings = Settings::try_parse_from(["trace-sink"]).expect("defaults");
        assert_eq!(settings.otlp_listen, SocketAddr::from(([0, 0, 0, 0], 4318)));
        assert_eq!(
            settings.http_listen,
            SocketAddr::from(([0, 0, 0, 0], 16686))
        );
        assert_eq!(settings.keep, 20_000);
    }

    #[test]
    fn keep_must_be_positive() {
        assert!(Settings::try_parse_from(["trace-sink", "--keep", "0"]).is_err());
        let settings =
            Settings::try_parse_from(["trace-sink", "--keep", "3", "--otlp-listen", "127.0.0.1:1"])
                .expect("valid");
        assert_eq!(settings.keep, 3);
        assert_eq!(settings.otlp_listen, SocketAddr::from(([127, 0, 0, 1], 1)));
    }
}
