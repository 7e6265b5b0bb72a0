//! Runtime plumbing shared by the rollout services (planner, ticker,
//! evaluator): everything a service needs between `main` and its own logic.
//!
//! - [`config`]: one loader for every service, layering serde defaults, an
//!   optional `--config` file and `ROLLOUT_<SECTION>__<KEY>` environment
//!   variables, read through an injectable [`config::EnvSource`] so tests pass
//!   a map. A bad setting is a [`config::ConfigError`] naming it, and
//!   [`config::exit_on_config_error`] stops the process with exit code 64.
//! - [`telemetry`]: `tracing` logs (text or JSON), optional span export over
//!   OTLP HTTP/protobuf, and W3C trace context carried in NATS headers.
//! - [`shutdown`]: the one shutdown path — a cloneable [`shutdown::Shutdown`]
//!   signal triggered by SIGINT/SIGTERM, and [`shutdown::Tasks`] so no task is
//!   spawned untracked.
//! - [`connect`]: NATS and Redis connections with auth, TLS, retries until a
//!   deadline, and errors naming what could not be reached.
//! - [`cluster`]: answering `rollout.cluster.ping` with what the replica is and does.
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics` for services without an HTTP face
//!   of their own, dependency watching and the Prometheus text format.
//! - [`serve`]: the one NATS serving loop (bounded concurrency, drain on shutdown) and
//!   replies in the request's encoding.
//! - [`service`]: [`service::service_main`], the one `main` of every service binary
//!   (configuration, telemetry, signals, exit codes).
//!
//! A service's `main` is one call:
//!
//! ```no_run
//! use rollout_runtime::config::{ConfigError, LogSettings, NatsSettings, OtlpSettings, Validate};
//! use rollout_runtime::connect::ConnectError;
//! use rollout_runtime::service::{service_main, ServiceConfig};
//! use rollout_runtime::shutdown::Shutdown;
//!
//! #[derive(Debug, Default, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct DemoConfig {
//!     nats: NatsSettings,
//!     log: LogSettings,
//!     otlp: OtlpSettings,
//! }
//!
//! impl Validate for DemoConfig {
//!     fn validate(&self) -> Result<(), ConfigError> {
//!         self.nats.validate()?;
//!         self.log.validate()?;
//!         self.otlp.validate()
//!     }
//! }
//!
//! impl ServiceConfig for DemoConfig {
//!     fn log(&self) -> &LogSettings {
//!         &self.log
//!     }
//!     fn otlp(&self) -> &OtlpSettings {
//!         &self.otlp
//!     }
//!     // no HTTP port: `demo --ready-check` says so
//!     fn probe_address(&self) -> Option<std::net::SocketAddr> {
//!         None
//!     }
//! }
//!
//! /// The service library's entry point: runs until `shutdown`.
//! async fn run(config: DemoConfig, shutdown: Shutdown) -> Result<(), ConnectError> {
//!     let nats = rollout_runtime::connect::connect_nats(&config.nats, "demo").await?;
//!     shutdown.cancelled().await;
//!     drop(nats);
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     service_main("demo", "a demo service", run).await
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
pub mod config;
pub mod connect;
pub mod probes;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod telemetry;
