//! Child processes: evaluators and bare echo responders (this binary re-executed in a
//! hidden role, so each has its own process, runtime and NATS connection, as in
//! production), ticker processes for the failover scenario (the built `ticker` binary),
//! their readiness and resident memory; and the hidden roles themselves.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use rollout_runtime::config::{ProcessEnv, ServiceArgs, Validate};
use rollout_runtime::shutdown::Shutdown;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a child may take to become ready.
const READY_PATIENCE: Duration = Duration::from_secs(120);

/// A running child; killed when dropped.
#[derive(Debug)]
pub struct Child {
    process: tokio::process::Child,
    http_port: Option<u16>,
}

impl Child {
    /// The process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.process.id().context("the child already exited")
    }

    /// Resident set size, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid()?)
    }

    /// An evaluator's HTTP port.
    pub fn http_port(&self) -> Option<u16> {
        self.http_port
    }

    fn http_base(&self) -> anyhow::Result<String> {
        let port = self.http_port.context("not an evaluator")?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// Waits until an evaluator's `/readyz` answers 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.http_base()?);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + READY_PATIENCE;
        loop {
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the evaluator did not become ready within {READY_PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Flags an evaluator serves, summed over namespaces from `/metrics`.
    pub async fn flags_served(&self) -> anyhow::Result<u64> {
        let url = format!("{}/metrics", self.http_base()?);
        let text = reqwest::get(&url)
            .await
            .context("reading /metrics")?
            .text()
            .await
            .context("reading /metrics")?;
        Ok(text
            .lines()
            .filter(|line| line.starts_with("rollout_evaluator_flags{"))
            .filter_map(|line| line.rsplit(' ').next())
            .filter_map(|value| value.parse::<u64>().ok())
            .sum())
    }
}

/// Resident set size of process `pid`, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")
}

/// CPU time (user + system) process `pid` has used so far, in seconds, from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // the fields after the command name, which is in parentheses and may hold spaces
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command name in /proc stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name
    let ticks = |index: usize| -> anyhow::Result<f64> {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .context("a malformed /proc stat line")
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Busy and total CPU time of the whole machine so far, in clock ticks, from `/proc/stat`.
pub fn machine_cpu_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("an empty /proc/stat")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    let total: u64 = values.iter().take(8).sum();
    Ok((total.saturating_sub(idle), total))
}

fn current_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the loadtest executable")
}

/// A command with no inherited `ROLLOUT_<SECTION>__<KEY>` settings: the child gets exactly
/// the ones given.
fn clean_command(program: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str() {
            if name.starts_with("ROLLOUT_") && name.contains("__") {
                command.env_remove(name);
            }
        }
    }
    command.kill_on_drop(true);
    command
}

/// Starts an evaluator process on `nats_url` and `redis_url`, HTTP on a free port.
pub async fn spawn_evaluator(nats_url: &str, redis_url: &str) -> anyhow::Result<Child> {
    let port = rollout_testkit::free_port().context("finding a free port")?;
    let process = clean_command(&current_exe()?)
        .arg("serve-evaluator")
        .env("ROLLOUT_NATS__URL", nats_url)
        .env("ROLLOUT_REDIS__URL", redis_url)
        .env("ROLLOUT_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("ROLLOUT_LOG__LEVEL", "error")
        .stdout(Stdio::null())
        .spawn()
        .context("starting an evaluator process")?;
    Ok(Child {
        process,
        http_port: Some(port),
    })
}

/// Starts an echo responder process on `subject` and waits until it has subscribed.
pub async fn spawn_echo(nats_url: &str, subject: &str) -> anyhow::Result<Child> {
    let mut command = clean_command(&current_exe()?);
    // it logs in to the same NATS as this process: the same user, password and inbox
    for (name, value) in std::env::vars() {
        if name.starts_with("ROLLOUT_NATS__") && name != "ROLLOUT_NATS__URL" {
            command.env(name, value);
        }
    }
    let mut process = command
        .args(["serve-echo", "--nats", nats_url, "--subject", subject])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting an echo responder process")?;
    let stdout = process.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(READY_PATIENCE, lines.next_line())
        .await
        .context("the echo responder did not start")??;
    if line.as_deref() != Some("ready") {
        bail!("the echo responder said {line:?}");
    }
    Ok(Child {
        process,
        http_port: None,
    })
}

/// Starts the ofrep scenario's bare responder process serving the answers in `bodies`
/// and waits until it listens.
pub async fn spawn_ofrep_bare(bodies: &Path) -> anyhow::Result<Child> {
    let mut process = clean_command(&current_exe()?)
        .arg("serve-ofrep-bare")
        .arg("--bodies")
        .arg(bodies)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the bare responder process")?;
    let stdout = process.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(READY_PATIENCE, lines.next_line())
        .await
        .context("the bare responder did not start")??;
    let port = line
        .as_deref()
        .and_then(|line| line.strip_prefix("ready "))
        .and_then(|port| port.parse::<u16>().ok())
        .with_context(|| format!("the bare responder said {line:?}"))?;
    Ok(Child {
        process,
        http_port: Some(port),
    })
}

/// How a ticker process is started.
#[derive(Clone, Debug)]
pub enum TickerProgram {
    /// The built `ticker` binary.
    Binary(PathBuf),
    /// This binary's hidden `serve-ticker` role (same library, when no binary is at hand).
    SelfServe(PathBuf),
}

impl TickerProgram {
    /// `explicit`, else `ticker` beside this executable (or one level up, for test
    /// binaries under `deps/`), else this binary's `serve-ticker` role.
    pub fn find(explicit: Option<&Path>) -> anyhow::Result<TickerProgram> {
        if let Some(path) = explicit {
            if !path.is_file() {
                bail!("--ticker-bin {} is not a file", path.display());
            }
            return Ok(TickerProgram::Binary(path.to_owned()));
        }
        let exe = current_exe()?;
        let beside = exe.parent().map(|dir| dir.join("ticker"));
        let above = exe
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("ticker"));
        for candidate in [beside, above].into_iter().flatten() {
            if candidate.is_file() {
                return Ok(TickerProgram::Binary(candidate));
            }
        }
        Ok(TickerProgram::SelfServe(exe))
    }

    /// For reports.
    pub fn describe(&self) -> String {
        match self {
            TickerProgram::Binary(path) => path.display().to_string(),
            TickerProgram::SelfServe(path) => format!("{} serve-ticker", path.display()),
        }
    }
}

/// Where ticker processes log: `dir` (created if needed), else a temporary directory
/// removed when the returned guard is dropped.
pub fn log_dir(dir: Option<&Path>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok((dir.to_owned(), None))
        }
        None => {
            let temporary = tempfile::tempdir().context("creating a log directory")?;
            Ok((temporary.path().to_path_buf(), Some(temporary)))
        }
    }
}

/// A ticker process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct TickerChild {
    /// Its replica id.
    pub replica: String,
    process: tokio::process::Child,
}

impl TickerChild {
    /// Starts a ticker as replica `replica` with `env` (`ROLLOUT_*` settings), logging to
    /// `<log_dir>/<replica>.log`; inside network namespace `netns` when given (`ip netns
    /// exec`, which execs the ticker: the child's pid is the ticker's).
    pub fn spawn(
        program: &TickerProgram,
        replica: &str,
        env: &[(String, String)],
        log_dir: &Path,
        netns: Option<&str>,
    ) -> anyhow::Result<TickerChild> {
        let log_path = log_dir.join(format!("{replica}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let errors = log.try_clone().context("duplicating the log file")?;
        let (TickerProgram::Binary(path) | TickerProgram::SelfServe(path)) = program;
        let mut command = match netns {
            Some(netns) => {
                let mut command = clean_command(Path::new("ip"));
                command.args(["netns", "exec", netns]).arg(path);
                command
            }
            None => clean_command(path),
        };
        if let TickerProgram::SelfServe(_) = program {
            command.arg("serve-ticker");
        }
        let process = command
            .envs(env.iter().map(|(name, value)| (name, value)))
            .env("ROLLOUT_TICKER__REPLICA_ID", replica)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(errors)
            .spawn()
            .with_context(|| format!("starting ticker {}", program.describe()))?;
        Ok(TickerChild {
            replica: replica.to_owned(),
            process,
        })
    }

    /// SIGKILL, then waits for the process to be gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.process
            .kill()
            .await
            .with_context(|| format!("killing ticker {}", self.replica))
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.id()
    }

    /// Whether it exited on its own.
    pub fn exited(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(Some(_)))
    }
}

/// The `serve-evaluator` role: an evaluator configured by `ROLLOUT_*` variables.
pub async fn serve_evaluator() -> anyhow::Result<()> {
    let config: evaluator::EvaluatorConfig = ServiceArgs::default()
        .load(&ProcessEnv)
        .context("evaluator configuration")?;
    config.validate().context("evaluator configuration")?;
    let telemetry =
        rollout_runtime::telemetry::init_telemetry("evaluator", &config.log, &config.otlp)?;
    let outcome = evaluator::run(config, Shutdown::on_signals()?).await;
    telemetry.shutdown()?;
    Ok(outcome?)
}

/// The `serve-ticker` role: a ticker configured by `ROLLOUT_*` variables.
pub async fn serve_ticker() -> anyhow::Result<()> {
    let config: ticker::TickerConfig = ServiceArgs::default()
        .load(&ProcessEnv)
        .context("ticker configuration")?;
    config.validate().context("ticker configuration")?;
    let telemetry =
        rollout_runtime::telemetry::init_telemetry("ticker", &config.log, &config.otlp)?;
    let outcome = ticker::run(config, Shutdown::on_signals()?).await;
    telemetry.shutdown()?;
    Ok(outcome?)
}

/// The `serve-echo` role: answers every request on `subject` (queue group `echo`) with its
/// own body — the least work a NATS responder can do. Prints `ready` once subscribed.
pub async fn serve_echo(nats_url: &str, subject: &str) -> anyhow::Result<()> {
    // the parent's URL list and ROLLOUT_NATS__* credentials, as every connection here
    let client = crate::servers::connect_nats(nats_url).await?;
    let responder = Echo::start(&client, subject).await?;
    println!("ready");
    let shutdown = Shutdown::on_signals()?;
    shutdown.cancelled().await;
    responder.stop().await;
    Ok(())
}

/// A bare echo responder in this process: one queue subscription answering every request
/// with its body.
#[derive(Debug)]
pub struct Echo {
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    /// Subscribes on `subject` and answers until stopped.
    pub async fn start(client: &async_nats::Client, subject: &str) -> anyhow::Result<Echo> {
        let mut requests = client
            .queue_subscribe(subject.to_owned(), "echo".to_owned())
            .await
            .context("subscribing the echo responder")?;
        client.flush().await.context("flushing the subscription")?;
        let replier = client.clone();
        let task = tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    if let Err(error) = replier.publish(reply, request.payload).await {
                        tracing::warn!(%error, "echo reply failed");
                    }
                }
            }
        });
        Ok(Echo { task })
    }

    /// Stops answering.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
