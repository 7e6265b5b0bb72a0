//! `ticker`: fires due rollout transitions; one leader at a time among any number of
//! replicas.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rollout_runtime::service::service_main(
        "ticker",
        "rollout ticker: fires due rollout transitions, one leader at a time",
        ticker::run,
    )
    .await
}
