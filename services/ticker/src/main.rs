//! `ticker`: fires due rollout transitions; one leader at a time among any number of
//! replicas.

/// mimalloc: the services allocate many short-lived buffers per request and per
/// transition (records, events, script arguments), where it costs far less than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rollout_runtime::service::service_main(
        "ticker",
        "rollout ticker: fires due rollout transitions, one leader at a time",
        ticker::run,
    )
    .await
}
