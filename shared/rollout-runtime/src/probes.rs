//! The probe endpoints of a service that has no HTTP face of its own (planner, ticker):
//! `GET /healthz` (the process answers), `GET /readyz` (200 when it can do its work now, 503
//! with the reason) and `GET /metrics` (Prometheus text), on the `http.listen` address when
//! one is configured. The evaluator and the console serve the same three paths on their own
//! listeners.
//!
//! A service describes itself with a [`Probe`]; [`Dependency`] keeps the answer to "is
//! Redis answering?" fresh in the background so `/readyz` never waits on it; [`PromText`]
//! writes the exposition format.

use std::fmt::Write;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::shutdown::{Shutdown, Tasks};

/// Asks the `/readyz` of a service listening on `listen` (an unspecified address such as
/// `0.0.0.0` is asked through loopback): `Ok` when it answers 200, else what it answered or
/// why it could not be asked. What `<service> --config FILE --ready-check` runs, so a
/// container health check needs no HTTP client in the image.
pub fn check_ready(listen: SocketAddr, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write as _};

    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .map_err(|error| format!("cannot connect to {address}: {error}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| format!("{address}: {error}"))?;
    stream
        .write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|error| format!("{address}: cannot send the request: {error}"))?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|error| format!("{address}: no answer: {error}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("/readyz answered {code}: {}", body.trim())),
        None => Err(format!("{address} answered no HTTP status: {status:?}")),
    }
}

/// Section `http` of the planner and the ticker (`ROLLOUT_HTTP__*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeSettings {
    /// Address of `/healthz`, `/readyz` and `/metrics`, e.g. `0.0.0.0:9091` (port 0 picks
    /// a free port); unset, the service opens no port
    pub listen: Option<SocketAddr>,
}

/// What a service's probe endpoints report.
pub trait Probe: Send + Sync + 'static {
    /// `Ok` when the service can do its work now, else why not.
    fn readiness(&self) -> Result<(), String>;
    /// Its metrics in the Prometheus text format.
    fn metrics(&self) -> String;
}

/// The readiness of a connected NATS client: the reason when it is not connected.
pub fn nats_readiness(nats: &async_nats::Client) -> Result<(), String> {
    match nats.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!("not connected to NATS ({other:?})")),
    }
}

/// Binds `listen` and serves the probe endpoints of `probe` until `shutdown`; the bound
/// address (the real port when `listen` asked for port 0).
pub async fn serve_probes(
    listen: SocketAddr,
    probe: Arc<dyn Probe>,
    shutdown: Shutdown,
    tasks: &Tasks,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let router = Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probe);
    tasks.spawn("probes", async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "probe listener failed");
        }
    });
    tracing::info!(%addr, "probe endpoints listening (/healthz, /readyz, /metrics)");
    Ok(addr)
}

async fn readyz(State(probe): State<Arc<dyn Probe>>) -> Response {
    match probe.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(probe): State<Arc<dyn Probe>>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        probe.metrics(),
    )
        .into_response()
}

/// Whether a dependency answered its last check, kept fresh by a background task.
#[derive(Clone, Debug)]
pub struct Dependency {
    name: &'static str,
    up: Arc<AtomicBool>,
}

impl Dependency {
    /// Checks `name` with `check` now and then every `interval` until `shutdown`.
    pub fn watch<F, Fut>(
        name: &'static str,
        interval: Duration,
        check: F,
        shutdown: Shutdown,
        tasks: &Tasks,
    ) -> Dependency
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let up = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&up);
        tasks.spawn(format!("watch-{name}"), async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {
                        let answered = tokio::time::timeout(interval, check()).await.unwrap_or(false);
                        if flag.swap(answered, Ordering::Relaxed) != answered {
                            if answered {
                                tracing::info!(dependency = name, "answering again");
                            } else {
                                tracing::warn!(dependency = name, "not answering");
                            }
                        }
                    }
                }
            }
        });
        Dependency { name, up }
    }

    /// `Ok` when it answered its last check.
    pub fn readiness(&self) -> Result<(), String> {
        if self.up.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(format!("{} does not answer", self.name))
        }
    }
}

/// Writes the Prometheus text exposition format.
#[derive(Debug, Default)]
pub struct PromText(String);

impl PromText {
    /// An empty exposition.
    pub fn new() -> PromText {
        PromText::default()
    }

    /// The `# HELP` and `# TYPE` lines of a metric.
    pub fn describe(&mut self, name: &str, kind: &str, help: &str) -> &mut PromText {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample; `labels` are `(name, value)` pairs.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) -> &mut PromText {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let labels: Vec<String> = labels
                .iter()
                .map(|(label, value)| {
                    format!(
                        "{label}=\"{}\"",
                        value.replace('\\', "\\\\").replace('"', "\\\"")
                    )
                })
                .collect();
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
        self
    }

    /// A metric with one sample and no labels.
    pub fn single(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        value: impl std::fmt::Display,
    ) -> &mut PromText {
        self.describe(name, kind, help).sample(name, &[], value)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_the_exposition_format() {
        let mut text = PromText::new();
        text.single("up", "gauge", "Whether it runs.", 1);
        text.describe("requests_total", "counter", "Requests.")
            .sample("requests_total", &[("verb", "pause"), ("code", "ok")], 3)
            .sample("requests_total", &[("verb", "a\"b")], 1);
        let text = text.finish();
        assert!(text.contains("# TYPE up gauge\nup 1\n"), "{text}");
        assert!(
            text.contains("requests_total{verb=\"pause\",code=\"ok\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("requests_total{verb=\"a\\\"b\"} 1\n"),
            "{text}"
        );
    }

    /// A probe whose readiness the test flips.
    struct Switch(AtomicBool);

    impl Probe for Switch {
        fn readiness(&self) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("redis is not answering".to_owned())
            }
        }

        fn metrics(&self) -> String {
            String::new()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ready_check_says_what_readyz_says_and_why() {
        let probe = Arc::new(Switch(AtomicBool::new(false)));
        let shutdown = Shutdown::new();
        let tasks = Tasks::new();
        let listen: SocketAddr = "0.0.0.0:0".parse().expect("address");
        let bound = serve_probes(listen, probe.clone(), shutdown.clone(), &tasks)
            .await
            .expect("probes listen");
        // asked the way a container health check asks: the configured 0.0.0.0 address
        let configured = SocketAddr::new(listen.ip(), bound.port());
        let check = move || {
            tokio::task::spawn_blocking(move || check_ready(configured, Duration::from_secs(3)))
        };

        let not_ready = check().await.expect("check ran").expect_err("not ready");
        assert!(not_ready.contains("503"), "{not_ready}");
        assert!(not_ready.contains("redis is not answering"), "{not_ready}");

        probe.0.store(true, Ordering::SeqCst);
        check().await.expect("check ran").expect("ready");

        shutdown.trigger();
        tasks.close_and_wait(Duration::from_secs(5)).await;
        let gone = check()
            .await
            .expect("check ran")
            .expect_err("nobody listens");
        assert!(gone.contains("cannot connect"), "{gone}");
    }
}
