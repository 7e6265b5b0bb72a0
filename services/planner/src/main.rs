//! `planner`: validates and commits commands, answers queries, relays the outbox.

use clap::Parser;
use rollout_runtime::config::ServiceArgs;

/// Command line of the planner.
#[derive(Debug, Parser)]
#[command(
    name = "planner",
    about = "rollout planner: commands, queries and the outbox relay"
)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config: planner::PlannerConfig = Cli::parse().service.load_or_exit();
    planner::main_with(config).await
}
