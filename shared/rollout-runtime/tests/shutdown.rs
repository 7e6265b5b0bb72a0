//! The shutdown path end to end: a real SIGTERM triggers [`Shutdown`], and
//! [`Tasks`] waits for the loops that select on it.

use std::time::Duration;

use nix::sys::signal::{raise, Signal};
use rollout_runtime::shutdown::{Shutdown, Tasks};

#[tokio::test]
async fn sigterm_triggers_shutdown_and_tasks_drain() {
    let shutdown = Shutdown::on_signals().expect("install signal handlers");
    let tasks = Tasks::new();
    for index in 0..3 {
        let worker_shutdown = shutdown.clone();
        tasks.spawn(format!("worker-{index}"), async move {
            loop {
                tokio::select! {
                    () = worker_shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        });
    }
    assert_eq!(tasks.len(), 3);
    assert!(!shutdown.is_triggered());

    // the handler installed above replaces SIGTERM's default action, so
    // this reaches the Shutdown instead of ending the test process
    raise(Signal::SIGTERM).expect("raise SIGTERM");
    tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
        .await
        .expect("SIGTERM triggers the shutdown");

    let unfinished = tasks.close_and_wait(Duration::from_secs(5)).await;
    assert!(unfinished.is_empty(), "still running: {unfinished:?}");
    assert!(tasks.is_empty());
}
