//! A private `redis-server` on a free loopback port, with its data dir,
//! config and log in a temporary directory, optional AOF persistence and
//! password / ACL user, and the fault controls tests need: kill, stop,
//! restart on the same port and dir, pause and resume.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::binary::cached_binary;
use crate::error::{Result, TestkitError};
use crate::process::{launch_on_free_port, LaunchFailure, Probe, Supervisor, STOP_GRACE};
use crate::resp::{RedisReply, RespConn};

/// Name used in messages and for the binary lookup.
const SERVER: &str = "redis-server";

/// Default deadline for the server to answer after a (re)start.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for [`RedisServer::start_with`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `appendonly yes` + `appendfsync everysec`, as the shipped
    /// `deploy/redis` config: Redis `write()`s the AOF before it replies, so
    /// a SIGKILL and restart keeps every acknowledged write (only a crash of
    /// the machine could lose the last second). Default `false` (nothing on disk:
    /// a restart comes back empty).
    pub appendonly: bool,
    /// With `user` unset: `requirepass`. With `user` set: that user's
    /// password.
    pub password: Option<String>,
    /// An ACL user granted everything (`on >password ~* &* +@all`); the
    /// `default` user is then disabled. Needs `password`.
    pub user: Option<String>,
    /// Extra `redis.conf` lines appended to the generated config.
    pub extra_config: Option<String>,
    /// How long a (re)start may take before it is reported as failed.
    pub startup_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            appendonly: false,
            password: None,
            user: None,
            extra_config: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl RedisOptions {
    /// Turns AOF persistence on or off.
    pub fn appendonly(mut self, on: bool) -> Self {
        self.appendonly = on;
        self
    }

    /// Sets the password (`requirepass`, or the ACL user's password).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets an ACL user (also call [`password`](Self::password)).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Appends raw `redis.conf` text.
    pub fn extra_config(mut self, text: impl Into<String>) -> Self {
        self.extra_config = Some(text.into());
        self
    }

    /// Sets the readiness deadline.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
}

/// A `redis-server` process owned by the test. Dropping it kills the
/// process (resuming it first if paused) and removes its temp dir.
///
/// All methods take `&self`, so a server can be shared between threads.
#[derive(Debug)]
pub struct RedisServer {
    // Declared first so the process dies before the temp dir is removed.
    supervisor: Supervisor,
    options: RedisOptions,
    binary: PathBuf,
    port: u16,
    config_path: PathBuf,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with the default options (no persistence, no
    /// password) and waits until it is ready.
    pub fn start() -> Result<RedisServer> {
        RedisServer::start_with(RedisOptions::default())
    }

    /// Starts a replica of `master` (default options otherwise) and waits until it is in
    /// sync, for at most 20 s ([`RedisServer::wait_replicating`]).
    pub fn start_replica_of(master: &RedisServer) -> Result<RedisServer> {
        let replica = RedisServer::start_with(
            RedisOptions::default()
                .extra_config(format!("replicaof 127.0.0.1 {}\n", master.port())),
        )?;
        replica.wait_replicating(std::time::Duration::from_secs(20))?;
        Ok(replica)
    }

    /// Waits until this server is a replica whose link to its master is up
    /// (`role:slave`, `master_link_status:up`), for at most `timeout`.
    pub fn wait_replicating(&self, timeout: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let info = self
                .command(&["INFO", "replication"])
                .ok()
                .and_then(|reply| reply.as_text())
                .unwrap_or_default();
            if info.contains("role:slave") && info.contains("master_link_status:up") {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(TestkitError::Protocol(format!(
                    "127.0.0.1:{} never replicated its master: {info}",
                    self.port
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Starts a server with `options` on a free port and waits until it
    /// answers `PING` (after `AUTH` when a password is set) and reports
    /// `loading:0`.
    pub fn start_with(options: RedisOptions) -> Result<RedisServer> {
        let config = config_text(&options)?;
        let binary = cached_binary(SERVER)?;
        let dir = tempfile::Builder::new()
            .prefix("rollout-redis-")
            .tempdir()
            .map_err(TestkitError::io("creating a temp dir for redis-server"))?;
        let config_path = dir.path().join("redis.conf");
        let config = format!("dir {}\n{config}", quote(&dir.path().to_string_lossy()));
        std::fs::write(&config_path, config).map_err(TestkitError::io(format!(
            "writing {}",
            config_path.display()
        )))?;
        let supervisor = Supervisor::new(SERVER, dir.path().join("redis-server.log"));
        let mut server = RedisServer {
            supervisor,
            options,
            binary,
            port: 0,
            config_path,
            dir,
        };
        server.port = launch_on_free_port(SERVER, |port| server.launch(port))?;
        Ok(server)
    }

    /// Spawns the server on `port` and waits until it is ready.
    fn launch(&self, port: u16) -> std::result::Result<(), LaunchFailure> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(&self.config_path)
            .arg("--port")
            .arg(port.to_string());
        self.supervisor.spawn(cmd)?;
        self.supervisor
            .wait_until_ready(port, self.options.startup_timeout, |pid| {
                match self.probe(port, pid) {
                    Ok(probe) => probe,
                    Err(e) => Probe::NotYet(e.to_string()),
                }
            })
    }

    /// One readiness check: AUTH, PING, then INFO must show our own pid
    /// (not another test's server that took the port) and `loading:0`.
    fn probe(&self, port: u16, pid: u32) -> Result<Probe> {
        let mut conn = self.connect_to(port, Duration::from_secs(2))?;
        match conn.command(&["PING"])? {
            RedisReply::Simple(pong) if pong == "PONG" => {}
            other => return Ok(Probe::NotYet(format!("PING answered {other:?}"))),
        }
        let info = conn
            .command(&["INFO", "server"])?
            .as_text()
            .unwrap_or_default();
        if info_field(&info, "process_id") != Some(pid.to_string().as_str()) {
            return Ok(Probe::NotYet(format!(
                "port answered by another redis (process_id {:?})",
                info_field(&info, "process_id")
            )));
        }
        let info = conn
            .command(&["INFO", "persistence"])?
            .as_text()
            .unwrap_or_default();
        if info_field(&info, "loading") != Some("0") {
            return Ok(Probe::NotYet("still loading its data".into()));
        }
        Ok(Probe::Ready)
    }

    /// Connects and authenticates with the configured credentials.
    fn connect_to(&self, port: u16, timeout: Duration) -> Result<RespConn> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(TestkitError::io(format!("connecting to {addr}")))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(TestkitError::io("setting socket timeouts"))?;
        let mut conn = RespConn::new(stream);
        if let Some(password) = &self.options.password {
            let reply = match &self.options.user {
                Some(user) => conn.command(&["AUTH", user, password])?,
                None => conn.command(&["AUTH", password])?,
            };
            if reply != RedisReply::Simple("OK".into()) {
                return Err(TestkitError::Protocol(format!("AUTH answered {reply:?}")));
            }
        }
        Ok(conn)
    }

    /// Runs one command on a fresh, authenticated connection (5 s
    /// timeouts) and returns the reply, e.g. `command(&["GET", "k"])`.
    pub fn command(&self, args: &[&str]) -> Result<RedisReply> {
        self.connect_to(self.port, Duration::from_secs(5))?
            .command(args)
    }

    /// `redis://127.0.0.1:PORT`, `redis://:PASS@127.0.0.1:PORT` with only
    /// a password, `redis://USER:PASS@127.0.0.1:PORT` with an ACL user
    /// (user and password percent-encoded).
    pub fn url(&self) -> String {
        let auth = match (&self.options.user, &self.options.password) {
            (Some(user), Some(pass)) => format!("{}:{}@", encode(user), encode(pass)),
            (None, Some(pass)) => format!(":{}@", encode(pass)),
            _ => String::new(),
        };
        format!("redis://{auth}127.0.0.1:{}", self.port)
    }

    /// The port (the same across restarts).
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

    /// The temporary directory: `--dir` (AOF lives in `appendonlydir/`),
    /// config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated `redis.conf`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file receiving the server's stdout and stderr (appended to
    /// across restarts).
    pub fn log_path(&self) -> &Path {
        self.supervisor.log_path()
    }

    /// The options the server was started with.
    pub fn options(&self) -> &RedisOptions {
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

    /// Starts the server again on the same port and dir (the AOF, if on,
    /// is reloaded; readiness waits for `loading:0`). A server that is
    /// still running is stopped (SIGTERM) first.
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
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The temp dir is removed after this, once the process is gone.
        self.supervisor.kill_quietly();
    }
}

/// The `redis.conf` text for `options` (without `dir`, added by the
/// caller, and without the port, passed on the command line).
fn config_text(options: &RedisOptions) -> Result<String> {
    for (what, value) in [("user", &options.user), ("password", &options.password)] {
        if let Some(v) = value {
            if v.is_empty() || v.chars().any(|c| c.is_control()) {
                return Err(TestkitError::InvalidOptions(format!(
                    "redis {what} must be non-empty and free of control characters"
                )));
            }
        }
    }
    if let Some(user) = &options.user {
        if user.chars().any(char::is_whitespace) {
            return Err(TestkitError::InvalidOptions(
                "redis ACL user names cannot contain whitespace".into(),
            ));
        }
    }
    let mut text =
        String::from("bind 127.0.0.1\nprotected-mode yes\ndaemonize no\nlogfile \"\"\nsave \"\"\n");
    if options.appendonly {
        text.push_str("appendonly yes\nappendfsync everysec\n");
    } else {
        text.push_str("appendonly no\n");
    }
    match (&options.user, &options.password) {
        (Some(user), Some(pass)) => {
            // the default user is off (no client becomes it) but may run everything:
            // Redis 7.0 replays the AOF as the default user, and a default user without
            // commands has every replayed transaction refused (the data is lost on restart).
            // An `extra_config` that declares the default user itself (a shipped ACL file
            // under test) decides instead: Redis refuses a user declared twice.
            let extra_declares_default = options.extra_config.as_deref().is_some_and(|extra| {
                extra
                    .lines()
                    .any(|line| line.trim_start().starts_with("user default "))
            });
            if user != "default" && !extra_declares_default {
                text.push_str("user default off ~* &* +@all\n");
            }
            let _ = writeln!(
                text,
                "user {} on {} ~* &* +@all",
                quote(user),
                quote(&format!(">{pass}"))
            );
        }
        (None, Some(pass)) => {
            let _ = writeln!(text, "requirepass {}", quote(pass));
        }
        (Some(_), None) => {
            return Err(TestkitError::InvalidOptions(
                "a redis ACL user needs a password".into(),
            ))
        }
        (None, None) => {}
    }
    if let Some(extra) = &options.extra_config {
        text.push_str(extra);
        text.push('\n');
    }
    Ok(text)
}

/// Double-quotes a `redis.conf` argument (backslash-escaping `\` and `"`).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The value of `name:value` in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encodes_credentials() {
        assert_eq!(encode("a b@c:d/é"), "a%20b%40c%3Ad%2F%C3%A9");
        assert_eq!(encode("plain-_.~9"), "plain-_.~9");
    }

    #[test]
    fn quotes_config_values() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn acl_config() {
        let text =
            config_text(&RedisOptions::default().user("app").password("s3 cret")).expect("config");
        assert!(text.contains("user default off ~* &* +@all\n"));
        assert!(text.contains("user \"app\" on \">s3 cret\" ~* &* +@all\n"));
        assert!(config_text(&RedisOptions::default().user("app")).is_err());
    }

    #[test]
    fn appendonly_config() {
        let text = config_text(&RedisOptions::default().appendonly(true)).expect("config");
        assert!(text.contains("appendonly yes\nappendfsync everysec\n"));
        assert!(text.contains("save \"\"\n"));
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Server\r\nprocess_id:42\r\nloading:0\r\n";
        assert_eq!(info_field(info, "process_id"), Some("42"));
        assert_eq!(info_field(info, "loading"), Some("0"));
        assert_eq!(info_field(info, "missing"), None);
    }
}
