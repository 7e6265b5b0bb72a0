//! `evaluator`: serves evaluations (NATS and OFREP), fleet agents and outcome reports from
//! an in-memory snapshot kept current from change events.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rollout_runtime::service::service_main(
        "evaluator",
        "rollout evaluator: evaluations over NATS and OFREP, fleet agents, outcome reports",
        evaluator::run,
    )
    .await
}
