//! Supervision of one server child process, shared by the NATS and Redis
//! wrappers: spawning with stdout/stderr sent to a log file, signals
//! (SIGKILL, SIGTERM, SIGSTOP, SIGCONT through `nix`), reaping, readiness
//! polling and the retry-on-port-conflict loop.
//!
//! The child is never reaped behind our back, so its pid cannot be reused
//! while we may still signal it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Result, TestkitError};
use crate::port::{free_port, PORT_ATTEMPTS};

/// How long `stop()` waits after SIGTERM before falling back to SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// How many bytes of the log a readiness error shows.
const LOG_TAIL_BYTES: u64 = 4096;

/// One supervised server process (or none, while killed/stopped).
#[derive(Debug)]
pub(crate) struct Supervisor {
    /// `nats-server` or `redis-server`, for messages.
    server: &'static str,
    /// Where the child's stdout and stderr go.
    log_path: PathBuf,
    /// The live child, if any.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The current child; `None` once it was reaped.
    child: Option<Child>,
    /// Whether the child was sent SIGSTOP and not yet SIGCONT.
    paused: bool,
    /// Log length when the current child was spawned, so error tails and
    /// port-conflict detection only look at this run's output.
    log_start: u64,
}

/// Result of one readiness probe.
#[derive(Debug)]
pub(crate) enum Probe {
    /// The server answered as expected.
    Ready,
    /// Not ready yet; the text says why (shown if the deadline passes).
    NotYet(String),
}

/// Why a launch attempt failed.
#[derive(Debug)]
pub(crate) struct LaunchFailure {
    /// The error to report.
    pub(crate) error: Box<TestkitError>,
    /// The server exited complaining that its port was taken.
    pub(crate) port_in_use: bool,
}

impl From<TestkitError> for LaunchFailure {
    fn from(error: TestkitError) -> Self {
        LaunchFailure {
            error: Box::new(error),
            port_in_use: false,
        }
    }
}

impl Supervisor {
    /// A supervisor with no child yet.
    pub(crate) fn new(server: &'static str, log_path: PathBuf) -> Self {
        Supervisor {
            server,
            log_path,
            state: Mutex::new(State::default()),
        }
    }

    /// The log file of the child's stdout/stderr.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `cmd` with stdin closed and stdout/stderr appended to the
    /// log. Fails if a child is still alive.
    pub(crate) fn spawn(&self, mut cmd: Command) -> Result<u32> {
        let mut state = self.state();
        if let Some(pid) = live_pid(&mut state) {
            return Err(TestkitError::AlreadyRunning {
                server: self.server,
                pid,
            });
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(TestkitError::io(format!(
                "opening log {}",
                self.log_path.display()
            )))?;
        let log_start = log
            .seek(SeekFrom::End(0))
            .map_err(TestkitError::io("seeking to the end of the log"))?;
        writeln!(log, "=== rollout-testkit: starting {cmd:?} ===")
            .map_err(TestkitError::io("writing the log header"))?;
        let log_err = log
            .try_clone()
            .map_err(TestkitError::io("duplicating the log file handle"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = cmd
            .spawn()
            .map_err(TestkitError::io(format!("spawning {cmd:?}")))?;
        let pid = child.id();
        state.child = Some(child);
        state.paused = false;
        state.log_start = log_start;
        Ok(pid)
    }

    /// The pid of the live child, if there is one (a paused child counts
    /// as live).
    pub(crate) fn pid(&self) -> Option<u32> {
        live_pid(&mut self.state())
    }

    /// Whether a child is alive (possibly paused).
    pub(crate) fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Whether the child is paused (SIGSTOP sent, no SIGCONT yet).
    pub(crate) fn is_paused(&self) -> bool {
        let mut state = self.state();
        live_pid(&mut state).is_some() && state.paused
    }

    /// If the child has exited, reaps it and returns its status.
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        let mut state = self.state();
        let status = state.child.as_mut()?.try_wait().ok()??;
        state.child = None;
        state.paused = false;
        Some(status)
    }

    /// SIGKILL (after SIGCONT if paused) and reap. A no-op when nothing
    /// runs.
    pub(crate) fn kill(&self) -> Result<()> {
        let mut state = self.state();
        let Some(child) = state.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        // SIGKILL works on a stopped process too; SIGCONT first anyway so no
        // stopped zombie lingers in odd kernels' accounting.
        if state.paused {
            send(pid, Signal::SIGCONT)?;
        }
        send(pid, Signal::SIGKILL)?;
        wait_child(state.child.as_mut(), pid)?;
        state.child = None;
        state.paused = false;
        Ok(())
    }

    /// SIGTERM (plus SIGCONT if paused, so the signal is delivered) and
    /// wait up to `grace`; SIGKILL if it is still alive then.
    pub(crate) fn stop(&self, grace: Duration) -> Result<()> {
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(child) = state.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        send(pid, Signal::SIGTERM)?;
        if state.paused {
            send(pid, Signal::SIGCONT)?;
        }
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    send(pid, Signal::SIGKILL)?;
                    wait_child(Some(child), pid)?;
                    break;
                }
                Err(source) => {
                    return Err(TestkitError::Io {
                        context: format!("waiting for pid {pid}"),
                        source,
                    })
                }
            }
        }
        state.child = None;
        state.paused = false;
        Ok(())
    }

    /// SIGSTOP: the process freezes but keeps its sockets (connections
    /// still complete at the TCP level, nothing answers).
    pub(crate) fn pause(&self) -> Result<()> {
        let mut state = self.state();
        let pid = live_pid(&mut state).ok_or(TestkitError::NotRunning {
            server: self.server,
        })?;
        send(pid, Signal::SIGSTOP)?;
        state.paused = true;
        // kill(2) returns before the kernel has stopped every thread; a
        // server thread already running can still answer for a moment.
        // Callers expect a frozen server when `pause` returns.
        wait_until_stopped(pid)
    }

    /// SIGCONT. A no-op when not paused.
    pub(crate) fn resume(&self) -> Result<()> {
        let mut state = self.state();
        let pid = live_pid(&mut state).ok_or(TestkitError::NotRunning {
            server: self.server,
        })?;
        if state.paused {
            send(pid, Signal::SIGCONT)?;
            state.paused = false;
        }
        Ok(())
    }

    /// Kills without reporting errors (for `Drop`).
    pub(crate) fn kill_quietly(&self) {
        let _ = self.kill();
    }

    /// The last few KiB the current (or last) child wrote to its log.
    pub(crate) fn log_tail(&self) -> String {
        let start = self.state().log_start;
        read_tail(&self.log_path, start).unwrap_or_else(|e| format!("(log unreadable: {e})"))
    }

    /// Polls `probe` until it reports ready, the child exits, or `timeout`
    /// passes. On failure the child is killed and the error carries the
    /// log tail.
    pub(crate) fn wait_until_ready(
        &self,
        port: u16,
        timeout: Duration,
        mut probe: impl FnMut(u32) -> Probe,
    ) -> std::result::Result<(), LaunchFailure> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            if let Some(status) = self.exited() {
                return Err(self.exit_failure(port, format!("process exited ({status})")));
            }
            let Some(pid) = self.pid() else {
                return Err(self.exit_failure(port, "process exited".into()));
            };
            let last = match probe(pid) {
                Probe::Ready => return Ok(()),
                Probe::NotYet(why) => why,
            };
            if Instant::now() >= deadline {
                let log_tail = self.log_tail();
                let _ = self.kill();
                return Err(self
                    .not_ready(
                        port,
                        format!("not ready after {timeout:?}; last probe: {last}"),
                        log_tail,
                    )
                    .into());
            }
            thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// The failure for a child that exited while starting; a log saying
    /// "address already in use" marks it as a port conflict.
    fn exit_failure(&self, port: u16, reason: String) -> LaunchFailure {
        let log_tail = self.log_tail();
        let port_in_use = log_tail
            .to_ascii_lowercase()
            .contains("address already in use");
        LaunchFailure {
            error: Box::new(self.not_ready(port, reason, log_tail)),
            port_in_use,
        }
    }

    fn not_ready(&self, port: u16, reason: String, log_tail: String) -> TestkitError {
        TestkitError::NotReady {
            server: self.server,
            port,
            reason,
            log: self.log_path.clone(),
            log_tail,
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill_quietly();
    }
}

/// Runs `launch(port)` on fresh free ports until it succeeds, retrying (at
/// most [`PORT_ATTEMPTS`] times) only when the server reported that its
/// port was taken. Returns the port the server runs on.
pub(crate) fn launch_on_free_port(
    server: &'static str,
    mut launch: impl FnMut(u16) -> std::result::Result<(), LaunchFailure>,
) -> Result<u16> {
    let mut last = None;
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
        match launch(port) {
            Ok(()) => return Ok(port),
            Err(LaunchFailure {
                error,
                port_in_use: true,
            }) => last = Some(*error),
            Err(LaunchFailure { error, .. }) => return Err(*error),
        }
    }
    Err(TestkitError::PortsExhausted {
        server,
        attempts: PORT_ATTEMPTS,
        last: Box::new(last.unwrap_or(TestkitError::NotRunning { server })),
    })
}

/// The pid of the child if it is still alive; reaps it if it exited.
fn live_pid(state: &mut State) -> Option<u32> {
    let child = state.child.as_mut()?;
    match child.try_wait() {
        Ok(None) => Some(child.id()),
        Ok(Some(_)) | Err(_) => {
            state.child = None;
            state.paused = false;
            None
        }
    }
}

/// How long `pause` waits for every thread to reach the stopped state.
const STOP_SETTLE: Duration = Duration::from_secs(5);

/// Polls `/proc/<pid>/task/*/stat` until every thread of `pid` is in state
/// `T` (stopped by a signal).
fn wait_until_stopped(pid: u32) -> Result<()> {
    let deadline = Instant::now() + STOP_SETTLE;
    loop {
        match all_threads_stopped(pid) {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
            Ok(false) => {
                return Err(TestkitError::Io {
                    context: format!("waiting for pid {pid} to stop after SIGSTOP"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("not every thread stopped within {STOP_SETTLE:?}"),
                    ),
                })
            }
            Err(source) => {
                return Err(TestkitError::Io {
                    context: format!("reading the thread states of pid {pid}"),
                    source,
                })
            }
        }
    }
}

/// Whether every thread listed under `/proc/<pid>/task` is stopped. A
/// thread that vanished while being read does not count against it.
fn all_threads_stopped(pid: u32) -> std::io::Result<bool> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = match std::fs::read_to_string(task?.path().join("stat")) {
            Ok(stat) => stat,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // `pid (comm) S ...`: the state follows the last `)`, since the
        // command name may itself contain parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Blocks until the child is reaped.
fn wait_child(child: Option<&mut Child>, pid: u32) -> Result<()> {
    if let Some(child) = child {
        child
            .wait()
            .map_err(TestkitError::io(format!("reaping pid {pid}")))?;
    }
    Ok(())
}

/// Sends `signal` to `pid`; a process that is already gone (ESRCH) is not
/// an error.
fn send(pid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pid).map_err(|_| TestkitError::Signal {
        pid,
        signal: signal.as_str().to_owned(),
        source: Errno::EINVAL,
    })?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(TestkitError::Signal {
            pid,
            signal: signal.as_str().to_owned(),
            source,
        }),
    }
}

/// Whether a process with this pid exists (a zombie counts). Useful to
/// check that a dropped server really went away.
pub fn pid_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 only checks existence and permission.
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// Reads the log from `start` on, at most the last [`LOG_TAIL_BYTES`].
fn read_tail(path: &Path, start: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let from = start.max(len.saturating_sub(LOG_TAIL_BYTES));
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(if text.trim().is_empty() {
        "(log is empty)".to_owned()
    } else {
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict() -> LaunchFailure {
        LaunchFailure {
            error: Box::new(TestkitError::Protocol("address already in use".into())),
            port_in_use: true,
        }
    }

    #[test]
    fn retries_on_port_conflicts_with_new_ports() {
        let mut tried = Vec::new();
        let port = launch_on_free_port("test-server", |port| {
            tried.push(port);
            if tried.len() < 3 {
                Err(conflict())
            } else {
                Ok(())
            }
        })
        .expect("third attempt succeeds");
        assert_eq!(tried.len(), 3);
        assert_eq!(tried.last(), Some(&port));
    }

    #[test]
    fn gives_up_after_the_attempt_limit() {
        let mut attempts = 0;
        let err = launch_on_free_port("test-server", |_| {
            attempts += 1;
            Err(conflict())
        })
        .expect_err("never succeeds");
        assert_eq!(attempts, PORT_ATTEMPTS);
        assert!(matches!(err, TestkitError::PortsExhausted { .. }), "{err}");
    }

    #[test]
    fn other_failures_are_not_retried() {
        let mut attempts = 0;
        let err = launch_on_free_port("test-server", |_| {
            attempts += 1;
            Err(TestkitError::Protocol("bad config".into()).into())
        })
        .expect_err("fails");
        assert_eq!(attempts, 1);
        assert!(matches!(err, TestkitError::Protocol(_)), "{err}");
    }
}
