//! `planner`: validates and commits commands, answers queries, relays the outbox.

/// mimalloc: the services allocate many short-lived buffers per request and per
/// transition (records, events, script arguments), where it costs far less than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rollout_runtime::service::service_main(
        "planner",
        "rollout planner: commands, queries and the outbox relay",
        planner::run,
    )
    .await
}
