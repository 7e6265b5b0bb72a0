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
//!
//! A service's `main` reads roughly:
//!
//! ```no_run
//! use clap::Parser;
//! use rollout_runtime::config::{LogSettings, NatsSettings, OtlpSettings, ServiceArgs, Validate};
//! use rollout_runtime::config::ConfigError;
//!
//! #[derive(Debug, Default, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! struct PlannerConfig {
//!     nats: NatsSettings,
//!     log: LogSettings,
//!     otlp: OtlpSettings,
//! }
//!
//! impl Validate for PlannerConfig {
//!     fn validate(&self) -> Result<(), ConfigError> {
//!         self.nats.validate()?;
//!         self.log.validate()?;
//!         self.otlp.validate()
//!     }
//! }
//!
//! #[derive(Debug, Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     service: ServiceArgs,
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cli = Cli::parse();
//!     let config: PlannerConfig = cli.service.load_or_exit();
//!     let telemetry = rollout_runtime::telemetry::init_telemetry("planner", &config.log, &config.otlp)?;
//!     let shutdown = rollout_runtime::shutdown::Shutdown::on_signals()?;
//!     let nats = rollout_runtime::connect::connect_nats(&config.nats, "planner").await?;
//!     // planner::run(config, nats, shutdown).await?;
//!     # drop((nats, shutdown));
//!     telemetry.shutdown()?;
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod connect;
pub mod shutdown;
pub mod telemetry;
