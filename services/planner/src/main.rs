//! `planner`: validates and commits commands, answers queries, relays the outbox.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rollout_runtime::service::service_main(
        "planner",
        "rollout planner: commands, queries and the outbox relay",
        planner::run,
    )
    .await
}
