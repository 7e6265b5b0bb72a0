//! `evaluator`: serves evaluations (NATS and OFREP), fleet agents and outcome reports from
//! an in-memory snapshot kept current from change events.

use std::process::ExitCode;

use clap::Parser;
use rollout_runtime::config::ServiceArgs;
use rollout_runtime::shutdown::Shutdown;
use rollout_runtime::telemetry::init_telemetry;

/// Command line of the evaluator.
#[derive(Debug, Parser)]
#[command(
    name = "evaluator",
    about = "rollout evaluator: evaluations over NATS and OFREP, fleet agents, outcome reports"
)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let config: evaluator::EvaluatorConfig = Cli::parse().service.load_or_exit();
    let telemetry = match init_telemetry("evaluator", &config.log, &config.otlp) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("evaluator: telemetry: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match Shutdown::on_signals() {
        Ok(shutdown) => evaluator::run(config, shutdown).await,
        Err(error) => {
            eprintln!("evaluator: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let _ = telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "evaluator failed");
            eprintln!("evaluator: {error}");
            ExitCode::FAILURE
        }
    }
}
