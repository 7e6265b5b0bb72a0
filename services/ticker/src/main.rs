//! The `ticker` binary: load the configuration (exit 64 on a bad setting), set up logs and
//! span export, run until SIGTERM or SIGINT, then flush the spans.

use anyhow::Context;
use clap::Parser;
use rollout_runtime::config::ServiceArgs;
use rollout_runtime::shutdown::Shutdown;
use rollout_runtime::telemetry::init_telemetry;
use ticker::TickerConfig;

/// Fires due rollout transitions; one leader at a time among any number of replicas.
#[derive(Debug, Parser)]
#[command(name = "ticker", version)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: TickerConfig = Cli::parse().service.load_or_exit();
    let telemetry = init_telemetry("ticker", &config.log, &config.otlp).context("telemetry")?;
    let shutdown = Shutdown::on_signals().context("signal handlers")?;
    let result = ticker::run(config, shutdown).await.context("ticker");
    // flushing the last spans blocks on the exporter's HTTP client
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .context("telemetry shutdown task")?
        .context("telemetry shutdown")?;
    result
}
