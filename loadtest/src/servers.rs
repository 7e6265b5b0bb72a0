//! Where a scenario's load goes: private `nats-server` / `redis-server` processes started
//! by `rollout-testkit` (the default), or a running cluster given by `--nats-url` /
//! `--redis-url`; and the services a private run starts in process (planner, evaluators,
//! ticker) with their one shutdown signal.
//!
//! **This machine or a private network only:** every URL must name a loopback address or
//! a host that resolves to private addresses only (10/8, 172.16/12, 192.168/16, fc00::/7:
//! the compose cluster's network, seen from its `loadtest` container). The load generator
//! must never be pointed at somebody else's servers.
//!
//! **Credentials** come from the environment as the services take theirs:
//! `ROLLOUT_NATS__USER`, `__PASSWORD`, `__INBOX_PREFIX` (and the other `ROLLOUT_NATS__*`),
//! `ROLLOUT_REDIS__USER`, `__PASSWORD`; the URLs always come from the command line.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};
use evaluator::{Evaluator, EvaluatorConfig, EvaluatorHandle};
use planner::{Planner, PlannerConfig};
use rollout_runtime::config::{load_config, NatsSettings, ProcessEnv, RedisSettings};
use rollout_runtime::shutdown::Shutdown;
use rollout_sdk::CommandClient;
use rollout_store::Connection;
use rollout_testkit::{NatsOptions, RedisOptions, TestCluster};
use rollout_wire::subjects::{Namespace, Subjects};
use serde::Deserialize;
use ticker::{Ticker, TickerSettings};

use crate::cli::Common;

/// The servers a scenario talks to.
#[derive(Debug)]
pub enum Servers {
    /// Started for this run; killed when dropped.
    Private(Box<TestCluster>),
    /// A running cluster.
    External {
        /// Its NATS.
        nats_url: String,
        /// Its Redis, when given.
        redis_url: Option<String>,
    },
}

impl Servers {
    /// The servers named by `common`, or fresh private ones.
    pub async fn from_common(common: &Common) -> anyhow::Result<Servers> {
        match (&common.nats_url, &common.redis_url) {
            (Some(nats_url), redis_url) => {
                ensure_local(nats_url)
                    .map_err(|error| crate::usage(format!("--nats-url: {error:#}")))?;
                if let Some(redis_url) = redis_url {
                    ensure_local(redis_url)
                        .map_err(|error| crate::usage(format!("--redis-url: {error:#}")))?;
                }
                Ok(Servers::External {
                    nats_url: nats_url.clone(),
                    redis_url: redis_url.clone(),
                })
            }
            (None, Some(_)) => Err(crate::usage("--redis-url needs --nats-url as well")),
            (None, None) => Servers::start_private().await,
        }
    }

    /// Starts a private NATS (JetStream on) and Redis.
    pub async fn start_private() -> anyhow::Result<Servers> {
        Servers::start_private_with(NatsOptions::default(), RedisOptions::default()).await
    }

    /// Starts a private NATS and Redis that the processes on `hosts` reach through their
    /// bridge ([`rollout_testkit::netns::Hosts::server_options`]).
    pub async fn start_private_for(
        hosts: &rollout_testkit::netns::Hosts,
    ) -> anyhow::Result<Servers> {
        let (nats, redis) = hosts.server_options();
        Servers::start_private_with(nats, redis).await
    }

    async fn start_private_with(nats: NatsOptions, redis: RedisOptions) -> anyhow::Result<Servers> {
        let cluster = tokio::task::spawn_blocking(move || TestCluster::start_with(nats, redis))
            .await
            .context("server start task")?
            .context("starting nats-server and redis-server (run deploy/tools/install.sh once)")?;
        Ok(Servers::Private(Box::new(cluster)))
    }

    /// The private servers' ports (NATS, Redis).
    pub fn private_ports(&self) -> Option<(u16, u16)> {
        match self {
            Servers::Private(cluster) => Some((cluster.nats.port(), cluster.redis.port())),
            Servers::External { .. } => None,
        }
    }

    /// Whether the servers were started for this run.
    pub fn is_private(&self) -> bool {
        matches!(self, Servers::Private(_))
    }

    /// `private` or `external`, for reports.
    pub fn mode(&self) -> &'static str {
        if self.is_private() {
            "private"
        } else {
            "external"
        }
    }

    /// The NATS URL.
    pub fn nats_url(&self) -> String {
        match self {
            Servers::Private(cluster) => cluster.nats.url(),
            Servers::External { nats_url, .. } => nats_url.clone(),
        }
    }

    /// The Redis URL, if known.
    pub fn redis_url(&self) -> Option<String> {
        match self {
            Servers::Private(cluster) => Some(cluster.redis.url()),
            Servers::External { redis_url, .. } => redis_url.clone(),
        }
    }

    /// The Redis URL, or an error saying what needs it.
    pub fn require_redis(&self, why: &str) -> anyhow::Result<String> {
        self.redis_url()
            .with_context(|| format!("{why} needs --redis-url with --nats-url"))
    }

    /// A NATS connection.
    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        connect_nats(&self.nats_url()).await
    }

    /// The planner's command client as the scenarios use it: actor `loadtest`, no retries
    /// (every failure counts), a 10 s timeout; on `nats`.
    pub fn commands(nats: &async_nats::Client, namespace: &Namespace) -> CommandClient {
        CommandClient::new(nats.clone(), namespace.clone())
            .with_actor("loadtest")
            .with_retries(0)
            .with_timeout(std::time::Duration::from_secs(10))
    }

    /// A Redis connection.
    pub async fn redis(&self, why: &str) -> anyhow::Result<Connection> {
        connect_redis(&self.require_redis(why)?).await
    }
}

/// A NATS connection to `url`, with the `ROLLOUT_NATS__*` credentials of the environment.
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    rollout_runtime::connect::connect_nats(&nats_settings(url)?, "loadtest")
        .await
        .with_context(|| format!("connecting to nats at {url}"))
}

/// A Redis connection to `url`, with the `ROLLOUT_REDIS__*` credentials of the environment.
pub async fn connect_redis(url: &str) -> anyhow::Result<Connection> {
    rollout_runtime::connect::connect_redis(&redis_settings(url)?)
        .await
        .with_context(|| {
            format!(
                "connecting to redis at {}",
                rollout_runtime::connect::redact_url(url)
            )
        })
}

/// The `ROLLOUT_NATS__*` and `ROLLOUT_REDIS__*` variables; other sections are not ours.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EnvSettings {
    nats: NatsSettings,
    redis: RedisSettings,
}

fn env_settings() -> anyhow::Result<EnvSettings> {
    load_config(None, &ProcessEnv).map_err(|error| {
        crate::usage(format!(
            "{} (a ROLLOUT_NATS__* or ROLLOUT_REDIS__* variable)",
            rollout_runtime::config::config_error_report(&error)
        ))
    })
}

fn nats_settings(url: &str) -> anyhow::Result<NatsSettings> {
    Ok(NatsSettings {
        url: url.to_owned(),
        ..env_settings()?.nats
    })
}

fn redis_settings(url: &str) -> anyhow::Result<RedisSettings> {
    Ok(RedisSettings {
        url: url.to_owned(),
        ..env_settings()?.redis
    })
}

/// Refuses a URL (or a comma-separated list of them) whose host is neither this machine nor
/// on a private network.
pub fn ensure_local(urls: &str) -> anyhow::Result<()> {
    for url in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        ensure_local_host(url_host(url))?;
    }
    Ok(())
}

/// The `host:port` of an evaluator's HTTP endpoint, on this machine or a private network.
pub fn local_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    let address = text
        .to_socket_addrs()
        .with_context(|| {
            format!("{text:?} is not an address such as 127.0.0.1:18081 or evaluator-1:8080")
        })?
        .next()
        .with_context(|| format!("{text:?} resolves to no address"))?;
    ensure_local_host(&address.ip().to_string())?;
    Ok(address)
}

/// The host part of `scheme://user:pass@host:port/path` (any part but the host optional).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(bracketed) = host_port.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    host_port.split(':').next().unwrap_or(host_port)
}

/// `host` is `localhost`, a loopback or private address, or a name that resolves to such
/// addresses only.
fn ensure_local_host(host: &str) -> anyhow::Result<()> {
    const REFUSED: &str = "loadtest only targets servers on this machine or a private network (loopback, 10/8, 172.16/12, 192.168/16, fc00::/7)";
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(());
    }
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(address) => vec![address],
        Err(_) => (host, 0)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host:?}"))?
            .map(|address| address.ip())
            .collect(),
    };
    if addresses.is_empty() {
        bail!("{host:?} resolves to no address");
    }
    if let Some(public) = addresses.iter().find(|address| !is_local(address)) {
        bail!("{host:?} ({public}) is not a local address: {REFUSED}");
    }
    Ok(())
}

fn is_local(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private())
                || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

/// Services started in process on private servers, stopped together.
#[derive(Debug)]
pub struct InProcess {
    shutdown: Shutdown,
    planner: Option<Planner>,
    evaluators: Vec<EvaluatorHandle>,
    tickers: Vec<tokio::task::JoinHandle<Result<(), ticker::TickerError>>>,
    nats_url: String,
    redis_url: String,
}

impl InProcess {
    /// Nothing started yet, on `servers`.
    pub fn new(servers: &Servers) -> anyhow::Result<InProcess> {
        Ok(InProcess {
            shutdown: Shutdown::new(),
            planner: None,
            evaluators: Vec::new(),
            tickers: Vec::new(),
            nats_url: servers.nats_url(),
            redis_url: servers.require_redis("the in-process services")?,
        })
    }

    /// Starts a planner.
    pub async fn start_planner(&mut self) -> anyhow::Result<()> {
        let config = PlannerConfig {
            nats: nats_settings(&self.nats_url)?,
            redis: redis_settings(&self.redis_url)?,
            ..PlannerConfig::default()
        };
        let started = Planner::start(config, self.shutdown.child())
            .await
            .context("starting the planner")?;
        self.planner = Some(started);
        Ok(())
    }

    /// Starts an evaluator with HTTP on a free loopback port, serving OFREP for
    /// `namespace` by default, and waits until it is ready.
    pub async fn start_evaluator(&mut self, namespace: &Namespace) -> anyhow::Result<SocketAddr> {
        let mut config = EvaluatorConfig {
            nats: nats_settings(&self.nats_url)?,
            redis: redis_settings(&self.redis_url)?,
            ..EvaluatorConfig::default()
        };
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.http.namespace = namespace.as_str().to_owned();
        let handle = Evaluator::start(config, self.shutdown.child())
            .await
            .context("starting an evaluator")?;
        tokio::time::timeout(std::time::Duration::from_secs(60), handle.ready())
            .await
            .context("the evaluator did not become ready within 60 s")?;
        let address = handle.http_addr();
        self.evaluators.push(handle);
        Ok(address)
    }

    /// Builds a ticker with its own connections (not running).
    pub async fn ticker(&self, settings: TickerSettings) -> anyhow::Result<Ticker> {
        let redis = connect_redis(&self.redis_url).await?;
        let nats = connect_nats(&self.nats_url).await?;
        Ok(Ticker::new(redis, nats, Subjects::default(), settings))
    }

    /// Runs `ticker` until [`InProcess::stop`].
    pub fn run_ticker(&mut self, ticker: Ticker) {
        let shutdown = self.shutdown.child();
        self.tickers.push(tokio::spawn(ticker.run(shutdown)));
    }

    /// Stops everything and waits for it.
    pub async fn stop(self) {
        self.shutdown.trigger();
        for ticker in self.tickers {
            match ticker.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "ticker stopped with an error"),
                Err(error) => tracing::warn!(%error, "ticker task failed"),
            }
        }
        for evaluator in self.evaluators {
            let unfinished = evaluator.wait().await;
            if !unfinished.is_empty() {
                tracing::warn!(?unfinished, "evaluator tasks outlived the grace period");
            }
        }
        if let Some(planner) = self.planner {
            planner.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_and_private_networks_pass() {
        for url in [
            "nats://127.0.0.1:4222",
            "redis://user:secret@localhost:6379/0",
            "nats://[::1]:4222",
            "127.0.0.2:1",
            "nats://127.0.0.1:4222,nats://localhost:4223",
            "nats://10.0.0.5:4222",
            "nats://172.20.0.3:4222",
            "redis://u:p@192.168.1.2:6379",
            "nats://[fd00::2]:4222",
        ] {
            assert!(ensure_local(url).is_ok(), "{url}");
        }
        for url in [
            "nats://8.8.8.8:4222",
            "redis://u:p@[2001:db8::1]:6379",
            "nats://127.0.0.1:4222,nats://1.1.1.1:4222",
            "nats://172.32.0.1:4222",
        ] {
            let refused = ensure_local(url).expect_err(url);
            assert!(
                refused.to_string().contains("not a local address"),
                "{url}: {refused}"
            );
        }
        assert!(ensure_local("nats://no-such-host.invalid:4222").is_err());
        assert!(local_addr("127.0.0.1:18081").is_ok());
        assert!(local_addr("localhost:18081").is_ok());
        assert!(local_addr("192.168.1.2:80").is_ok());
        assert!(local_addr("8.8.4.4:80").is_err());
        assert!(local_addr("no port").is_err());
    }
}
