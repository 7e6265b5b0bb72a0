//! `evaluator`: serves evaluations (NATS and OFREP), fleet agents and outcome reports from
//! an in-memory snapshot kept current from change events.

/// mimalloc: the services allocate many short-lived buffers per request and per
/// transition (records, events, script arguments), where it costs far less than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rollout_runtime::service::service_main(
        "evaluator",
        "rollout evaluator: evaluations over NATS and OFREP, fleet agents, outcome reports",
        evaluator::run,
    )
    .await
}
