//! `trace-sink`: receives the services' spans over OTLP/HTTP and shows them, in memory
//! only. See the library's documentation for what it is and is not.
//!
//! ```text
//! trace-sink --otlp-listen 0.0.0.0:4318 --http-listen 0.0.0.0:16686 --keep 20000
//! ```
//!
//! Logs go to stdout, filtered by `RUST_LOG` (default `info`). SIGTERM or SIGINT stops it
//! gracefully.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use trace_sink::{Settings, TraceSink};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match run(&settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: &Settings) -> anyhow::Result<()> {
    // installed before binding, so a stop signal arriving during start-up is not lost
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let sink = TraceSink::bind(settings).await?;
    let received = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = received, "shutdown requested");
    sink.shutdown().await;
    Ok(())
}
