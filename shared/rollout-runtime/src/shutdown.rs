//! The one shutdown path: a [`Shutdown`] signal every loop selects on, and
//! [`Tasks`], the only way services spawn, so that shutdown can wait for
//! every task and name the ones that overstay their grace period.
//!
//! A service's `run` looks like:
//!
//! ```
//! use std::time::Duration;
//! use rollout_runtime::shutdown::{Shutdown, Tasks};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let shutdown = Shutdown::new(); // `Shutdown::on_signals()?` in a binary
//! let tasks = Tasks::new();
//! let worker_shutdown = shutdown.clone();
//! tasks.spawn("worker", async move {
//!     loop {
//!         tokio::select! {
//!             () = worker_shutdown.cancelled() => break,
//!             () = tokio::time::sleep(Duration::from_millis(10)) => { /* one step of work */ }
//!         }
//!     }
//! });
//!
//! shutdown.trigger();
//! let unfinished = tasks.close_and_wait(Duration::from_secs(5)).await;
//! assert!(unfinished.is_empty());
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// A cheap-to-clone shutdown signal: once triggered, every clone sees it.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal nothing has triggered yet.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A signal triggered by the first SIGINT or SIGTERM the process gets.
    ///
    /// Must be called inside a tokio runtime. The signal handlers are
    /// installed before this returns, so a signal arriving right after is
    /// not lost.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals()?;
        Ok(shutdown)
    }

    /// Arranges for this signal to be triggered by the first SIGINT or
    /// SIGTERM the process gets.
    ///
    /// The watching task ends as soon as the signal is triggered, by a
    /// signal or otherwise, so it never outlives the shutdown it serves.
    pub fn trigger_on_signals(&self) -> std::io::Result<()> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let token = self.token.clone();
        tokio::spawn(async move {
            let received = tokio::select! {
                () = token.cancelled() => return,
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(signal = received, "shutdown requested");
            token.cancel();
        });
        Ok(())
    }

    /// Triggers the signal; later calls do nothing.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the signal has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the signal is triggered (at once if it already was).
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Runs `work` every `interval` (the first at once; a late round delays the next rather
    /// than bunching up) until the signal is triggered; a round in progress finishes first.
    pub async fn every<F, Fut>(&self, interval: Duration, mut work: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancelled() => return,
                _ = ticker.tick() => {}
            }
            work().await;
        }
    }

    /// Completes once the signal is triggered; owns its handle, so it can be
    /// moved into a task.
    pub async fn cancelled_owned(self) {
        self.token.cancelled_owned().await;
    }

    /// A signal triggered with this one, which can also be triggered on its
    /// own (to stop one component early) without triggering this one.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }

    /// The underlying token, for APIs that take a [`CancellationToken`].
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// Every task a service spawns, by name, so shutdown can wait for them all.
///
/// Cheap to clone; clones share the same set of tasks.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    next_id: Arc<AtomicU64>,
}

impl Tasks {
    /// An empty, open set of tasks.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawns `future` on the current runtime as a task called `name`.
    ///
    /// The task is counted until its future completes or is dropped
    /// (aborted); the name shows up in the shutdown log if it is still
    /// running when the grace period ends.
    pub fn spawn<F>(&self, name: impl Into<String>, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.running).insert(id, name.into());
        let registration = Registration {
            running: Arc::clone(&self.running),
            id,
        };
        self.tracker.spawn(async move {
            let _registration = registration;
            future.await
        })
    }

    /// Names of the tasks still running, in spawn order.
    pub fn running(&self) -> Vec<String> {
        lock(&self.running).values().cloned().collect()
    }

    /// How many tasks are still running.
    pub fn len(&self) -> usize {
        lock(&self.running).len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the set closed: [`close_and_wait`] returns once it is closed and
    /// empty. Spawning after closing still works (and is still tracked).
    ///
    /// [`close_and_wait`]: Tasks::close_and_wait
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Closes the set and waits up to `grace` for every task to finish.
    ///
    /// Returns the names of the tasks still running after `grace` (empty when
    /// all finished), each also logged as a warning. They are not aborted:
    /// the caller decides, usually by returning from `main`.
    pub async fn close_and_wait(&self, grace: Duration) -> Vec<String> {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return Vec::new();
        }
        let unfinished = self.running();
        for name in &unfinished {
            tracing::warn!(
                task = %name,
                grace_ms = grace.as_millis() as u64,
                "task did not finish within the shutdown grace period"
            );
        }
        unfinished
    }
}

/// Removes a task's name from the running set when its future is dropped,
/// whether it completed, panicked or was aborted.
struct Registration {
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.id);
    }
}

// a panic while holding this lock cannot leave the map half-updated (each
// operation is a single insert, remove or read), so a poisoned lock is safe
fn lock(
    running: &Mutex<BTreeMap<u64, String>>,
) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
    running.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_reaches_every_clone() {
        let shutdown = Shutdown::new();
        let clone = shutdown.clone();
        assert!(!clone.is_triggered());
        shutdown.trigger();
        assert!(clone.is_triggered());
        clone.cancelled().await;
        shutdown.trigger();
    }

    #[tokio::test]
    async fn a_child_stops_alone_or_with_its_parent() {
        let parent = Shutdown::new();
        let early = parent.child();
        early.trigger();
        assert!(!parent.is_triggered());
        let late = parent.child();
        parent.trigger();
        assert!(late.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn close_and_wait_names_overstaying_tasks() {
        let tasks = Tasks::new();
        let shutdown = Shutdown::new();
        let obedient = shutdown.clone();
        tasks.spawn("obedient", async move { obedient.cancelled().await });
        tasks.spawn("stubborn", std::future::pending::<()>());
        assert_eq!(tasks.running(), vec!["obedient", "stubborn"]);

        shutdown.trigger();
        let unfinished = tasks.close_and_wait(Duration::from_secs(1)).await;
        assert_eq!(unfinished, vec!["stubborn"]);
    }

    #[tokio::test]
    async fn aborted_tasks_leave_the_running_set() {
        let tasks = Tasks::new();
        let handle = tasks.spawn("doomed", std::future::pending::<()>());
        handle.abort();
        let unfinished = tasks.close_and_wait(Duration::from_secs(5)).await;
        assert!(unfinished.is_empty());
        assert!(tasks.is_empty());
    }
}
