//! The system as users run it, on private servers, for the integration suites: a NATS
//! server (JetStream) and a Redis server from the test kit, then planners, tickers and
//! evaluators started through the same public start-up APIs their binaries use
//! (`Planner::start`, `ticker::run`, `Evaluator::start`), with settings tuned for tests
//! (fast outbox sweep, short leases, quick resynchronisation). State is seeded the way an
//! operator seeds it — commands to the real planner through [`Sandbox::operator`] — and
//! read back the way applications read it, through [`Sandbox::eval_client`].
//!
//! ```no_run
//! # async fn example() {
//! use rollout_sandbox::Sandbox;
//! let sandbox = Sandbox::builder().planners(1).tickers(1).evaluators(2).start().await;
//! let operator = sandbox.operator();
//! // operator.create_flag(…), then wait until every evaluator serves it:
//! sandbox.until_served("checkout", 1).await;
//! sandbox.stop().await;
//! # }
//! ```
//!
//! Waiting is [`wait_until`]: poll a check until it answers, panicking with what was awaited
//! after [`PATIENCE`]. Tests never sleep and then assert that nothing happened; where a
//! negative matters they drive the component by hand (the ticker's `HandDriven`).
//!
//! Outcomes are judged by the [`oracle`]: what every replica *serves* against what the
//! committed state in Redis gives (SPEC §11.1), through the same paths applications use
//! ([`http`] for OFREP, NATS for `rollout.eval` and fleet `desired`).

pub mod browser;
pub mod http;
pub mod oracle;
pub mod process;
pub mod schemathesis;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use evaluator::{Evaluator, EvaluatorConfig, EvaluatorHandle};
use planner::{Planner, PlannerConfig};
use rollout_runtime::config::{NatsSettings, RedisSettings};
use rollout_runtime::shutdown::Shutdown;
use rollout_sdk::{CommandClient, EvalClient, Namespace};
use rollout_testkit::{
    NatsOptions, NatsServer, RedisCluster, RedisClusterOptions, RedisOptions, RedisServer,
};
use ticker::{TickerConfig, TickerSettings};

/// Bound on waiting for something that should happen within a second or two; only a
/// failure ever takes it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The namespace a sandbox works in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "prod";

/// Polls `check` every 20 ms until it returns `Some`, or panics naming `what` after
/// [`PATIENCE`].
pub async fn wait_until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_within(what, PATIENCE, check).await
}

/// [`wait_until`] with another bound.
pub async fn wait_until_within<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "gave up after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Flag `key` with two boolean variations, `off` (its off variation and default serve)
/// and `on`, enabled: what most tests roll out.
pub fn boolean_flag(key: &str) -> rollout_sdk::Flag {
    serde_json::from_value(serde_json::json!({
        "key": key,
        "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
        "off_variation": "off", "enabled": true, "default": {"variation": "off"},
    }))
    .expect("a valid flag")
}

/// NATS settings for a server at `url`, patient enough for a busy test machine.
pub fn nats_settings(url: &str) -> NatsSettings {
    NatsSettings {
        url: url.to_owned(),
        connect_timeout: Duration::from_secs(10),
        ..NatsSettings::default()
    }
}

/// Redis settings for a server at `url`, patient enough for a busy test machine.
pub fn redis_settings(url: &str) -> RedisSettings {
    RedisSettings {
        url: url.to_owned(),
        connect_timeout: Duration::from_secs(10),
        ..RedisSettings::default()
    }
}

/// A planner configuration for tests: a fast outbox sweep and stream redelivery, a short
/// drain, a one-second minimum between manual schedule steps, quick webhook retries.
pub fn planner_config(nats: NatsSettings, redis: RedisSettings) -> PlannerConfig {
    let mut config = PlannerConfig {
        nats,
        redis,
        ..PlannerConfig::default()
    };
    config.planner.min_phase_interval = Duration::from_secs(1);
    config.planner.relay_interval = Duration::from_millis(100);
    config.planner.relay_grace = Duration::from_millis(500);
    config.planner.stream_ack_wait = Duration::from_secs(2);
    config.planner.drain_grace = Duration::from_secs(2);
    // webhooks: quick rounds, retries after 0.1, 0.2, 0.4, 0.8, 1 s; given up after 6 attempts
    config.planner.notify_interval = Duration::from_millis(50);
    config.planner.webhook_timeout = Duration::from_secs(2);
    config.planner.webhook_attempts = 6;
    config.planner.webhook_backoff = Duration::from_millis(100);
    config.planner.webhook_backoff_max = Duration::from_secs(1);
    config
}

/// An evaluator configuration for tests: HTTP on a free loopback port, OFREP for
/// `namespace`, quick resynchronisation after missed events and quick outcome flushes.
pub fn evaluator_config(
    nats: NatsSettings,
    redis: RedisSettings,
    namespace: &str,
) -> EvaluatorConfig {
    let mut config = EvaluatorConfig {
        nats,
        redis,
        ..EvaluatorConfig::default()
    };
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.namespace = namespace.to_owned();
    config.evaluator.resync_interval = Duration::from_secs(2);
    config.evaluator.reconnect_check_interval = Duration::from_millis(100);
    config.evaluator.outcome_flush_interval = Duration::from_millis(100);
    config.evaluator.shutdown_grace = Duration::from_secs(2);
    config
}

/// A ticker configuration for tests: a 500 ms lease renewed every 150 ms, so a lost
/// leader is replaced within a second.
pub fn ticker_config(nats: NatsSettings, redis: RedisSettings, replica: &str) -> TickerConfig {
    TickerConfig {
        nats,
        redis,
        ticker: TickerSettings {
            lease_ttl: Duration::from_millis(500),
            renew_interval: Some(Duration::from_millis(150)),
            replica_id: Some(replica.to_owned()),
            ..TickerSettings::default()
        },
        ..TickerConfig::default()
    }
}

/// Starts an evaluator in process and waits until it serves.
pub async fn start_evaluator(config: EvaluatorConfig, shutdown: Shutdown) -> EvaluatorHandle {
    let handle = Evaluator::start(config, shutdown)
        .await
        .expect("evaluator starts");
    tokio::time::timeout(PATIENCE, handle.ready())
        .await
        .expect("evaluator becomes ready");
    handle
}

/// An evaluator replica as the oracle and the monitors ask it.
#[derive(Clone, Debug)]
pub enum Replica {
    /// An evaluator in process: its snapshot can be read directly, and it serves OFREP.
    InProcess(String, Arc<EvaluatorHandle>),
    /// An evaluator process serving OFREP at this address. The same address across a
    /// restart is the same replica: a restarted evaluator must not serve anything older
    /// than its predecessor did.
    Http(String, SocketAddr),
    /// An evaluator elsewhere (a container of the compose cluster) whose OFREP needs
    /// `Authorization: Bearer <token>`, as the shipped configuration requires.
    Remote {
        /// Its name in reports.
        name: String,
        /// Where it serves OFREP.
        addr: SocketAddr,
        /// A token of the namespace asked about.
        token: String,
    },
}

impl Replica {
    /// Its name in reports.
    pub fn name(&self) -> &str {
        match self {
            Replica::InProcess(name, _) | Replica::Http(name, _) | Replica::Remote { name, .. } => {
                name
            }
        }
    }

    /// Where it serves OFREP.
    pub fn http_addr(&self) -> SocketAddr {
        match self {
            Replica::InProcess(_, handle) => handle.http_addr(),
            Replica::Http(_, addr) | Replica::Remote { addr, .. } => *addr,
        }
    }

    /// The bearer token its OFREP needs, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        match self {
            Replica::Remote { token, .. } => Some(token),
            Replica::InProcess(..) | Replica::Http(..) => None,
        }
    }
}

type Tweak<C> = Box<dyn Fn(&mut C) + Send + Sync>;

/// How a [`Sandbox`] is made; from [`Sandbox::builder`].
pub struct SandboxBuilder {
    planners: usize,
    tickers: usize,
    evaluators: usize,
    namespace: String,
    appendonly: bool,
    redis_cluster: Option<RedisClusterOptions>,
    nats: NatsOptions,
    planner: Option<Tweak<PlannerConfig>>,
    ticker: Option<Tweak<TickerConfig>>,
    evaluator: Option<Tweak<EvaluatorConfig>>,
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SandboxBuilder")
            .field("planners", &self.planners)
            .field("tickers", &self.tickers)
            .field("evaluators", &self.evaluators)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl SandboxBuilder {
    /// Planner replicas in process (default 1).
    pub fn planners(mut self, count: usize) -> SandboxBuilder {
        self.planners = count;
        self
    }

    /// Ticker replicas in process (default 0: nothing fires timers).
    pub fn tickers(mut self, count: usize) -> SandboxBuilder {
        self.tickers = count;
        self
    }

    /// Evaluator replicas in process (default 0), each ready before `start` returns.
    pub fn evaluators(mut self, count: usize) -> SandboxBuilder {
        self.evaluators = count;
        self
    }

    /// The namespace the operator and application clients work in.
    pub fn namespace(mut self, namespace: &str) -> SandboxBuilder {
        namespace.clone_into(&mut self.namespace);
        self
    }

    /// Redis with AOF (`appendfsync everysec`, as shipped).
    pub fn appendonly(mut self) -> SandboxBuilder {
        self.appendonly = true;
        self
    }

    /// Runs every service (and [`Sandbox::store`]) on a Redis Cluster started with
    /// `options` instead of the single server (which still starts, and holds nothing).
    pub fn redis_cluster(mut self, options: RedisClusterOptions) -> SandboxBuilder {
        self.redis_cluster = Some(options);
        self
    }

    /// NATS server options (e.g. a smaller `max_payload`).
    pub fn nats(mut self, options: NatsOptions) -> SandboxBuilder {
        self.nats = options;
        self
    }

    /// Changes every planner's configuration after the sandbox's defaults.
    pub fn planner_config(
        mut self,
        tweak: impl Fn(&mut PlannerConfig) + Send + Sync + 'static,
    ) -> SandboxBuilder {
        self.planner = Some(Box::new(tweak));
        self
    }

    /// Changes every ticker's configuration after the sandbox's defaults.
    pub fn ticker_config(
        mut self,
        tweak: impl Fn(&mut TickerConfig) + Send + Sync + 'static,
    ) -> SandboxBuilder {
        self.ticker = Some(Box::new(tweak));
        self
    }

    /// Changes every evaluator's configuration after the sandbox's defaults.
    pub fn evaluator_config(
        mut self,
        tweak: impl Fn(&mut EvaluatorConfig) + Send + Sync + 'static,
    ) -> SandboxBuilder {
        self.evaluator = Some(Box::new(tweak));
        self
    }

    /// Starts the servers, then the services.
    pub async fn start(self) -> Sandbox {
        rollout_runtime::telemetry::init_for_tests();
        let nats_options = self.nats.clone();
        let appendonly = self.appendonly;
        let cluster_options = self.redis_cluster.clone();
        let (nats, redis, redis_cluster) = tokio::task::spawn_blocking(move || {
            let nats = NatsServer::start_with(nats_options)
                .expect("nats-server starts (run deploy/tools/install.sh)");
            let redis = RedisServer::start_with(RedisOptions::default().appendonly(appendonly))
                .expect("redis-server starts (run deploy/tools/install.sh)");
            let redis_cluster = cluster_options.map(|options| {
                RedisCluster::start_with(options)
                    .expect("a redis cluster starts (run deploy/tools/install.sh)")
            });
            (nats, redis, redis_cluster)
        })
        .await
        .expect("server start task");
        let client = async_nats::connect(nats.url())
            .await
            .expect("the operator connects");
        let namespace = Namespace::new(self.namespace.as_str()).expect("a valid namespace");
        let (planners, tickers, evaluators) = (self.planners, self.tickers, self.evaluators);
        let mut sandbox = Sandbox {
            nats,
            redis,
            redis_cluster,
            client,
            namespace,
            builder: self,
            planners: Vec::new(),
            tickers: Vec::new(),
            evaluators: Vec::new(),
        };
        for _ in 0..planners {
            sandbox.add_planner().await;
        }
        for _ in 0..tickers {
            sandbox.add_ticker();
        }
        for _ in 0..evaluators {
            sandbox.add_evaluator().await;
        }
        sandbox
    }
}

/// A running ticker replica.
#[derive(Debug)]
struct TickerReplica {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), ticker::TickerError>>,
}

/// A whole system on private servers; see the crate docs.
pub struct Sandbox {
    /// The NATS server.
    pub nats: NatsServer,
    /// The Redis server (holding nothing when the sandbox runs on [`Sandbox::redis_cluster`]).
    pub redis: RedisServer,
    /// The Redis Cluster every service uses, when the builder asked for one.
    pub redis_cluster: Option<RedisCluster>,
    /// The operator's NATS connection.
    pub client: async_nats::Client,
    namespace: Namespace,
    builder: SandboxBuilder,
    planners: Vec<(Shutdown, Option<Planner>)>,
    tickers: Vec<TickerReplica>,
    evaluators: Vec<(Shutdown, Arc<EvaluatorHandle>)>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Sandbox")
            .field("nats", &self.nats.url())
            .field("redis", &self.redis.url())
            .field("planners", &self.planners.len())
            .field("tickers", &self.tickers.len())
            .field("evaluators", &self.evaluators.len())
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// One planner, nothing else, in namespace [`DEFAULT_NAMESPACE`]; see the builder.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder {
            planners: 1,
            tickers: 0,
            evaluators: 0,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            appendonly: false,
            redis_cluster: None,
            nats: NatsOptions::default(),
            planner: None,
            ticker: None,
            evaluator: None,
        }
    }

    /// The namespace the clients work in.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// NATS settings for the sandbox's server.
    pub fn nats_settings(&self) -> NatsSettings {
        nats_settings(&self.nats.url())
    }

    /// Redis settings for the sandbox's server, or its cluster (every node a seed; with
    /// replicas, every commit confirmed on one).
    pub fn redis_settings(&self) -> RedisSettings {
        match &self.redis_cluster {
            Some(cluster) => RedisSettings {
                cluster: true,
                wait_replicas: u32::from(cluster.options().replicas_per_master > 0),
                ..redis_settings(&cluster.urls().join(","))
            },
            None => redis_settings(&self.redis.url()),
        }
    }

    /// A planner's configuration as this sandbox starts them.
    pub fn planner_config(&self) -> PlannerConfig {
        let mut config = planner_config(self.nats_settings(), self.redis_settings());
        if let Some(tweak) = &self.builder.planner {
            tweak(&mut config);
        }
        config
    }

    /// An evaluator's configuration as this sandbox starts them.
    pub fn evaluator_config(&self) -> EvaluatorConfig {
        let mut config = evaluator_config(
            self.nats_settings(),
            self.redis_settings(),
            self.namespace.as_str(),
        );
        if let Some(tweak) = &self.builder.evaluator {
            tweak(&mut config);
        }
        config
    }

    /// Ticker replica `replica`'s configuration as this sandbox starts them.
    pub fn ticker_config(&self, replica: &str) -> TickerConfig {
        let mut config = ticker_config(self.nats_settings(), self.redis_settings(), replica);
        if let Some(tweak) = &self.builder.ticker {
            tweak(&mut config);
        }
        config
    }

    /// Starts one more planner replica.
    pub async fn add_planner(&mut self) {
        let shutdown = Shutdown::new();
        let planner = Planner::start(self.planner_config(), shutdown.clone())
            .await
            .expect("planner starts");
        self.planners.push((shutdown, Some(planner)));
    }

    /// Stops every planner (in-flight commands finish within the drain grace).
    pub async fn stop_planners(&mut self) {
        for (shutdown, planner) in &mut self.planners {
            shutdown.trigger();
            if let Some(planner) = planner.take() {
                planner.wait().await;
            }
        }
        self.planners.clear();
    }

    /// Starts one more ticker replica (`ticker-<n>`); it campaigns for the lease at once.
    pub fn add_ticker(&mut self) {
        let replica = format!("ticker-{}", self.tickers.len());
        let config = self.ticker_config(&replica);
        let shutdown = Shutdown::new();
        let task = tokio::spawn(ticker::run(config, shutdown.clone()));
        self.tickers.push(TickerReplica { shutdown, task });
    }

    /// Starts one more evaluator replica and waits until it serves.
    pub async fn add_evaluator(&mut self) {
        let shutdown = Shutdown::new();
        let handle = start_evaluator(self.evaluator_config(), shutdown.clone()).await;
        self.evaluators.push((shutdown, Arc::new(handle)));
    }

    /// Stops the newest evaluator replica and forgets it (the oracle no longer asks it).
    pub async fn stop_newest_evaluator(&mut self) {
        if let Some((shutdown, handle)) = self.evaluators.pop() {
            shutdown.trigger();
            if let Ok(handle) = Arc::try_unwrap(handle) {
                handle.wait().await;
            }
        }
    }

    /// The in-process evaluator replicas, in start order.
    pub fn evaluators(&self) -> Vec<Arc<EvaluatorHandle>> {
        self.evaluators
            .iter()
            .map(|(_, handle)| Arc::clone(handle))
            .collect()
    }

    /// The in-process evaluators as replicas to watch, named `evaluator-<n>`.
    pub fn replicas(&self) -> Vec<Replica> {
        self.evaluators
            .iter()
            .enumerate()
            .map(|(index, (_, handle))| {
                Replica::InProcess(format!("evaluator-{index}"), Arc::clone(handle))
            })
            .collect()
    }

    /// An operator's command client in the sandbox's namespace, acting as `operator`.
    pub fn operator(&self) -> CommandClient {
        CommandClient::new(self.client.clone(), self.namespace.clone()).with_actor("operator")
    }

    /// An application's evaluation client in the sandbox's namespace.
    pub async fn eval_client(&self) -> EvalClient {
        EvalClient::connect(self.client.clone(), self.namespace.clone())
            .await
            .expect("the evaluation client connects")
    }

    /// A store connection to the sandbox's Redis, for reading what was committed.
    pub async fn store(&self) -> rollout_store::Connection {
        rollout_runtime::connect::connect_redis(&self.redis_settings())
            .await
            .expect("redis connects")
    }

    /// Waits until every in-process evaluator serves `flag` of the sandbox's namespace at
    /// `version` or later.
    pub async fn until_served(&self, flag: &str, version: u64) {
        let namespace = self.namespace.as_str();
        wait_until(
            &format!("every evaluator to serve {flag} v{version}"),
            || async {
                self.evaluators
                    .iter()
                    .all(|(_, handle)| {
                        handle
                            .served_version(namespace, flag)
                            .is_some_and(|served| served >= version)
                    })
                    .then_some(())
            },
        )
        .await;
    }

    /// Stops every service, the servers staying up: evaluators (waited for unless a
    /// monitor still holds one), tickers (a leader releases its lease), planners.
    pub async fn stop_services(&mut self) {
        for (shutdown, handle) in self.evaluators.drain(..) {
            shutdown.trigger();
            if let Ok(handle) = Arc::try_unwrap(handle) {
                handle.wait().await;
            }
        }
        for replica in self.tickers.drain(..) {
            replica.shutdown.trigger();
            let _ = replica.task.await;
        }
        self.stop_planners().await;
    }

    /// Stops every service, then the servers.
    pub async fn stop(mut self) {
        self.stop_services().await;
    }
}
