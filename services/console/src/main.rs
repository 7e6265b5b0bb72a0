//! `console`: the operator web console over the public NATS subjects.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rollout_runtime::service::service_main(
        "console",
        "rollout console: the operator web console (rollouts, flags, actions, live updates)",
        rollout_console::run,
    )
    .await
}
