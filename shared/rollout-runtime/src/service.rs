//! The one shape of a service binary: [`service_main`] parses the command line, loads and
//! validates the configuration (exit 64 naming the bad setting), starts telemetry, installs
//! the signal handlers, runs the service until SIGTERM or SIGINT, flushes the spans and
//! turns the outcome into the process's exit code. Every service's `main.rs` is a call to
//! it; everything testable lives in the service's library (`run(config, shutdown)`).
//!
//! Exit codes (BSD `sysexits.h`):
//!
//! | code | when |
//! |---|---|
//! | 0 | stopped by a signal, cleanly |
//! | 64 (`EX_USAGE`) | a bad command line or setting (`--help` and `--version` exit 0) |
//! | 69 (`EX_UNAVAILABLE`) | NATS or Redis could not be reached, or refused us, at start-up |
//! | 70 (`EX_SOFTWARE`) | anything else: telemetry, signals, a subscription or listener that failed |

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, FromArgMatches};
use serde::de::DeserializeOwned;

use crate::config::{config_error_report, LogSettings, OtlpSettings, ServiceArgs, Validate};
use crate::connect::ConnectError;
use crate::shutdown::Shutdown;
use crate::telemetry::init_telemetry;

/// Exit code for a bad command line or setting.
pub const EX_USAGE: u8 = 64;
/// Exit code for a server that could not be reached at start-up.
pub const EX_UNAVAILABLE: u8 = 69;
/// Exit code for any other failure.
pub const EX_SOFTWARE: u8 = 70;

/// What [`service_main`] needs of a service's configuration besides loading it.
pub trait ServiceConfig: DeserializeOwned + Validate {
    /// The log settings.
    fn log(&self) -> &LogSettings;
    /// The span export settings.
    fn otlp(&self) -> &OtlpSettings;
    /// Where its `/healthz`, `/readyz` and `/metrics` are served, if anywhere.
    fn probe_address(&self) -> Option<SocketAddr>;
}

/// A service failure's exit code.
pub trait ExitStatus: std::fmt::Display {
    /// The process exit code for this failure (see the module's table).
    fn exit_code(&self) -> u8;
}

impl ExitStatus for ConnectError {
    fn exit_code(&self) -> u8 {
        EX_UNAVAILABLE
    }
}

/// The command line of a service named `name`: `--config FILE`, `--help`, `--version`.
fn command_line(name: &'static str, about: &'static str) -> clap::Command {
    ServiceArgs::augment_args(
        clap::Command::new(name)
            .about(about)
            .version(env!("CARGO_PKG_VERSION")),
    )
}

/// The [`ServiceArgs`] in `argv` (program name first).
fn parse_args(
    name: &'static str,
    about: &'static str,
    argv: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<ServiceArgs, clap::Error> {
    let matches = command_line(name, about).try_get_matches_from(argv)?;
    ServiceArgs::from_arg_matches(&matches)
}

/// Runs service `name` (described by `about` in `--help`): see the module docs. `run` is
/// the service library's `run(config, shutdown)`.
pub async fn service_main<C, E, F, Fut>(name: &'static str, about: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    E: ExitStatus,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let args = match parse_args(name, about, std::env::args_os()) {
        Ok(args) => args,
        // `--help` and `--version` print to stdout and exit 0
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EX_USAGE);
        }
    };
    let config: C = match args
        .load::<C>(&crate::config::ProcessEnv)
        .and_then(|config| config.validate().map(|()| config))
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}", config_error_report(&error));
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.ready_check {
        return ready_check(name, config.probe_address());
    }
    let telemetry = match init_telemetry(name, config.log(), config.otlp()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("{name}: telemetry: {error}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let shutdown = match Shutdown::on_signals() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("{name}: cannot install signal handlers: {error}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let outcome = run(config, shutdown).await;
    if let Err(error) = &outcome {
        tracing::error!(%error, "{name} failed");
    }
    // flushing the last spans blocks on the exporter's HTTP client
    let flushed = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    if let Ok(Err(error)) = flushed {
        eprintln!("{name}: telemetry shutdown: {error}");
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// `--ready-check`: 0 when the running service's `/readyz` answers 200, 1 when it does not
/// (printing why), 64 when the configuration opens no HTTP port to ask.
fn ready_check(name: &str, address: Option<SocketAddr>) -> ExitCode {
    let Some(address) = address else {
        eprintln!("{name}: --ready-check needs http.listen in the configuration");
        return ExitCode::from(EX_USAGE);
    };
    match crate::probes::check_ready(address, std::time::Duration::from_secs(3)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("{name}: not ready: {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_takes_a_config_file_and_nothing_else() {
        let args = parse_args("demo", "a demo service", ["demo", "--config", "demo.toml"])
            .expect("--config is accepted");
        assert_eq!(
            args.config.as_deref(),
            Some(std::path::Path::new("demo.toml"))
        );
        let refused = parse_args("demo", "a demo service", ["demo", "--surprise"])
            .expect_err("unknown flags are refused");
        assert!(refused.use_stderr(), "an error, not help");
        let help = parse_args("demo", "a demo service", ["demo", "--help"])
            .expect_err("help is not a configuration");
        assert!(!help.use_stderr(), "help goes to stdout and exits 0");
    }
}
