//! `console`: the operator web console over the public NATS subjects.

/// mimalloc: the services allocate many short-lived buffers per request and per
/// transition (records, events, script arguments), where it costs far less than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rollout_runtime::service::service_main(
        "console",
        "rollout console: the operator web console (rollouts, flags, actions, live updates)",
        rollout_console::run,
    )
    .await
}
