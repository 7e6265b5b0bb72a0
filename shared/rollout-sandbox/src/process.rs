//! Service binaries as child processes, for the tests that kill -9, freeze or restart
//! them: spawned with exactly the `ROLLOUT_*` settings a test gives (nothing leaks in from
//! the developer's shell) and their output appended to a log file, signalled (SIGKILL,
//! SIGSTOP, SIGCONT, SIGTERM), and read back (how often the log says something).
//!
//! A test names the binary: cargo builds a package's own binaries before its tests and
//! hands their paths over as `env!("CARGO_BIN_EXE_<name>")` — the ticker's tests run
//! `ticker`, the system tests their `sut-*` copies of every service.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// One running (or exited) service process. Dropping it kills it (after SIGCONT, so a
/// frozen one dies too).
#[derive(Debug)]
pub struct ServiceProcess {
    /// The binary it runs.
    pub binary: PathBuf,
    /// Its name in logs and reports.
    pub name: String,
    child: Child,
    log: PathBuf,
    env: HashMap<String, String>,
    stopped: bool,
}

impl ServiceProcess {
    /// Starts `binary` as `name` with exactly the `ROLLOUT_*` settings in `env`; its
    /// stdout and stderr go to `<dir>/<name>.log` (appended to, so a restart keeps the
    /// earlier lines).
    pub fn spawn(
        binary: impl Into<PathBuf>,
        name: &str,
        dir: &Path,
        env: &HashMap<String, String>,
    ) -> ServiceProcess {
        let binary = binary.into();
        let log = dir.join(format!("{name}.log"));
        let child = launch(&binary, &log, env);
        ServiceProcess {
            binary,
            name: name.to_owned(),
            child,
            log,
            env: env.clone(),
            stopped: false,
        }
    }

    /// Starts the same service again with the same settings and log (after a kill).
    pub fn respawn(&mut self) {
        self.reap();
        self.child = launch(&self.binary, &self.log, &self.env);
        self.stopped = false;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"))
    }

    /// Sends `signal` to the process if it is still ours to signal: once it has exited and
    /// been reaped its pid may belong to someone else, so nothing is sent.
    pub fn signal(&mut self, signal: Signal) {
        if !self.is_running() {
            return;
        }
        match nix::sys::signal::kill(self.nix_pid(), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => panic!("signal {signal} to {}: {error}", self.name),
        }
        match signal {
            Signal::SIGSTOP => self.stopped = true,
            Signal::SIGCONT => self.stopped = false,
            _ => {}
        }
    }

    /// kill -9 and reap.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.reap();
    }

    fn reap(&mut self) {
        let _ = self.child.wait();
        self.stopped = false;
    }

    /// Whether it still runs (a frozen process counts).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Waits up to `deadline` for the process to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        count_lines(&self.log, needle)
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.is_running() {
            // a frozen process dies of SIGKILL too; thaw it anyway so nothing lingers stopped
            let _ = nix::sys::signal::kill(self.nix_pid(), Signal::SIGCONT);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn launch(binary: &Path, log: &Path, env: &HashMap<String, String>) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err: File = out.try_clone().expect("log file");
    let mut command = Command::new(binary);
    // only the settings the test gives: nothing leaks in from the developer's shell
    for (name, _) in std::env::vars() {
        if name.starts_with("ROLLOUT_") && name.contains("__") || name == "ROLLOUT_FAILPOINTS" {
            command.env_remove(name);
        }
    }
    command
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|error| panic!("{} starts: {error}", binary.display()))
}

/// Lines of the file at `path` containing `needle` (0 if it cannot be read).
pub fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}
