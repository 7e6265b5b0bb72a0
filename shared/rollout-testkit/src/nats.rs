//! A private `nats-server` (JetStream on by default) on a free loopback
//! port, with its store and log in a temporary directory, and the fault
//! controls tests need: kill, stop, restart on the same port and store,
//! pause and resume.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::binary::cached_binary;
use crate::error::{Result, TestkitError};
use crate::process::{launch_on_free_port, LaunchFailure, Probe, Supervisor, STOP_GRACE};

/// Name used in messages and for the binary lookup.
const SERVER: &str = "nats-server";

/// Default deadline for the server to answer after a (re)start.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for [`NatsServer::start_with`].
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Enable JetStream (`-js -sd <tempdir>/store`). Default `true`.
    pub jetstream: bool,
    /// Extra configuration file text (users, permissions, accounts, TLS,
    /// ...). Written to `<tempdir>/nats.conf` and passed as `-c`; the
    /// address, port, server name and store dir are still set on the
    /// command line and override what the file says.
    pub config: Option<String>,
    /// Further command-line arguments appended last (e.g. `-DV`).
    pub extra_args: Vec<String>,
    /// How long a (re)start may take before it is reported as failed.
    pub startup_timeout: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            jetstream: true,
            config: None,
            extra_args: Vec::new(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl NatsOptions {
    /// Turns JetStream on or off.
    pub fn jetstream(mut self, on: bool) -> Self {
        self.jetstream = on;
        self
    }

    /// Sets the extra configuration file text.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Appends a command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Sets the readiness deadline.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
}

/// A `nats-server` process owned by the test. Dropping it kills the
/// process (resuming it first if paused) and removes its temp dir.
///
/// All methods take `&self`, so a server can be shared between threads
/// (e.g. one thread pauses it while another talks to it).
#[derive(Debug)]
pub struct NatsServer {
    // Declared first so the process dies before the temp dir is removed.
    supervisor: Supervisor,
    options: NatsOptions,
    binary: PathBuf,
    name: String,
    port: u16,
    store_dir: PathBuf,
    config_path: Option<PathBuf>,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server with the default options (JetStream on) and waits
    /// until it is ready.
    pub fn start() -> Result<NatsServer> {
        NatsServer::start_with(NatsOptions::default())
    }

    /// Starts a server with `options` on a free port and waits until it
    /// answers with an `INFO` line (reporting `"jetstream":true` when
    /// JetStream was asked for).
    pub fn start_with(options: NatsOptions) -> Result<NatsServer> {
        let binary = cached_binary(SERVER)?;
        let dir = tempfile::Builder::new()
            .prefix("rollout-nats-")
            .tempdir()
            .map_err(TestkitError::io("creating a temp dir for nats-server"))?;
        let store_dir = dir.path().join("store");
        std::fs::create_dir_all(&store_dir).map_err(TestkitError::io(format!(
            "creating {}",
            store_dir.display()
        )))?;
        let config_path = match &options.config {
            Some(text) => {
                let path = dir.path().join("nats.conf");
                std::fs::write(&path, text)
                    .map_err(TestkitError::io(format!("writing {}", path.display())))?;
                Some(path)
            }
            None => None,
        };
        let supervisor = Supervisor::new(SERVER, dir.path().join("nats-server.log"));
        let mut server = NatsServer {
            supervisor,
            options,
            binary,
            name: unique_name(),
            port: 0,
            store_dir,
            config_path,
            dir,
        };
        server.port = launch_on_free_port(SERVER, |port| server.launch(port))?;
        Ok(server)
    }

    /// Spawns the server on `port` and waits until it is ready.
    fn launch(&self, port: u16) -> std::result::Result<(), LaunchFailure> {
        let mut cmd = Command::new(&self.binary);
        if let Some(config) = &self.config_path {
            cmd.arg("-c").arg(config);
        }
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("--server_name")
            .arg(&self.name);
        if self.options.jetstream {
            cmd.arg("-js").arg("-sd").arg(&self.store_dir);
        }
        cmd.args(&self.options.extra_args);
        self.supervisor.spawn(cmd)?;
        let jetstream = self.options.jetstream;
        self.supervisor.wait_until_ready(
            port,
            self.options.startup_timeout,
            |_pid| match read_info(port, Duration::from_secs(2)) {
                Err(e) => Probe::NotYet(e),
                Ok(info) => {
                    let name = info.get("server_name").and_then(|v| v.as_str());
                    if name != Some(self.name.as_str()) {
                        Probe::NotYet(format!(
                            "port answered by another server (server_name {name:?})"
                        ))
                    } else if jetstream
                        && info.get("jetstream").and_then(|v| v.as_bool()) != Some(true)
                    {
                        Probe::NotYet("INFO does not report \"jetstream\":true".into())
                    } else {
                        Probe::Ready
                    }
                }
            },
        )
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The pid of the running process; `None` after `kill`/`stop`.
    pub fn pid(&self) -> Option<u32> {
        self.supervisor.pid()
    }

    /// The unique `server_name` the server was started with.
    pub fn server_name(&self) -> &str {
        &self.name
    }

    /// The JetStream store dir (`-sd`); it survives restarts. Exists even
    /// when JetStream is off, but then stays empty.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The temporary directory holding the store, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file receiving the server's stdout and stderr (appended to
    /// across restarts).
    pub fn log_path(&self) -> &Path {
        self.supervisor.log_path()
    }

    /// The config file written from [`NatsOptions::config`], if any.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The options the server was started with.
    pub fn options(&self) -> &NatsOptions {
        &self.options
    }

    /// SIGKILL and reap, like a crash. No-op if not running.
    pub fn kill(&self) -> Result<()> {
        self.supervisor.kill()
    }

    /// SIGTERM and wait for a clean exit (SIGKILL after 10 s). No-op if
    /// not running.
    pub fn stop(&self) -> Result<()> {
        self.supervisor.stop(STOP_GRACE)
    }

    /// Starts the server again on the same port with the same store dir
    /// (JetStream data survives) and waits until it is ready. A server
    /// that is still running is stopped (SIGTERM) first.
    pub fn restart(&self) -> Result<()> {
        self.supervisor.stop(STOP_GRACE)?;
        self.launch(self.port).map_err(|failure| *failure.error)
    }

    /// SIGSTOP: the process freezes; TCP connects still complete but
    /// nothing is answered until [`resume`](Self::resume).
    pub fn pause(&self) -> Result<()> {
        self.supervisor.pause()
    }

    /// SIGCONT after [`pause`](Self::pause). No-op if not paused.
    pub fn resume(&self) -> Result<()> {
        self.supervisor.resume()
    }

    /// Whether the process is alive (a paused one counts).
    pub fn is_running(&self) -> bool {
        self.supervisor.is_running()
    }

    /// Whether the process is paused.
    pub fn is_paused(&self) -> bool {
        self.supervisor.is_paused()
    }

    /// Connects and returns the server's `INFO` JSON.
    pub fn info(&self) -> Result<serde_json::Value> {
        read_info(self.port, Duration::from_secs(5)).map_err(TestkitError::Protocol)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // The temp dir is removed after this, once the process is gone.
        self.supervisor.kill_quietly();
    }
}

/// A `server_name` unique across test processes and servers.
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "testkit-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects to 127.0.0.1:`port` and parses the `INFO {json}` greeting.
fn read_info(port: u16, timeout: Duration) -> std::result::Result<serde_json::Value, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream.take(1 << 20))
        .read_line(&mut line)
        .map_err(|e| format!("reading INFO from {addr}: {e}"))?;
    let json = line
        .trim_end()
        .strip_prefix("INFO ")
        .ok_or_else(|| format!("expected an INFO line from {addr}, got {line:?}"))?;
    serde_json::from_str(json).map_err(|e| format!("bad INFO JSON from {addr}: {e}"))
}
