//! The whole system on private servers: a NATS server (JetStream) and a Redis server from
//! the test kit, planners and evaluators in process (`Planner::start`, `Evaluator::start`),
//! tickers as child processes (so they can be killed and frozen), each optionally behind
//! its own [`Proxy`] to Redis and to NATS. Plus an operator's clients, a change-event log,
//! and a phased workload whose steps all fall due at the same instants.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evaluator::{EvaluatorConfig, EvaluatorHandle};
use futures_util::StreamExt;
use rollout_core::{RolloutSpec, Timestamp};
use rollout_runtime::config::{NatsSettings, RedisSettings, Secret};
use rollout_runtime::shutdown::Shutdown;
use rollout_sandbox::Sandbox;
use rollout_sdk::{CommandClient, EvalClient, Namespace, Outcome, OutcomeReport, RequestOptions};
use rollout_store::Connection;
use rollout_store::Keys;
use rollout_store::{redis_time, RolloutRecord};
use rollout_testkit::NatsOptions;
use rollout_wire::codec::{Encoding, CONTENT_TYPE_HEADER};
use rollout_wire::events::ChangeEvent;
use rollout_wire::queries::AuditEntry;
use serde_json::json;
use tempfile::TempDir;

use super::checks::Replica;
use super::committed::CommittedReader;
use super::http;
use super::procs::{Service, ServiceProcess};
use super::proxy::Proxy;
use super::{eventually, NS, PATIENCE};

/// Credentials a service or client logs in with.
#[derive(Clone, Debug, Default)]
pub struct Login {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Login {
    pub fn new(user: &str, password: &str) -> Login {
        Login {
            user: Some(user.to_owned()),
            password: Some(password.to_owned()),
        }
    }
}

/// NATS settings for `url` logged in as `login`.
pub fn nats_settings(url: &str, login: &Login) -> NatsSettings {
    NatsSettings {
        url: url.to_owned(),
        user: login.user.clone(),
        password: login.password.clone().map(Secret::new),
        connect_timeout: Duration::from_secs(10),
        ..NatsSettings::default()
    }
}

/// Redis settings for `url` logged in as `login`.
pub fn redis_settings(url: &str, login: &Login) -> RedisSettings {
    RedisSettings {
        url: url.to_owned(),
        user: login.user.clone(),
        password: login.password.clone().map(Secret::new),
        connect_timeout: Duration::from_secs(10),
        ..RedisSettings::default()
    }
}

/// An evaluator configuration for tests (the sandbox's), serving OFREP for [`NS`].
pub fn evaluator_config(nats: NatsSettings, redis: RedisSettings) -> EvaluatorConfig {
    rollout_sandbox::evaluator_config(nats, redis, NS)
}

/// Starts an evaluator in process and waits until it serves.
pub async fn start_evaluator(config: EvaluatorConfig) -> Arc<EvaluatorHandle> {
    Arc::new(rollout_sandbox::start_evaluator(config, Shutdown::new()).await)
}

/// How the cluster is set up.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Redis with AOF (`appendfsync everysec`, as shipped).
    pub appendonly: bool,
    /// The NATS server's `max_payload`, if not its default (1 MiB).
    pub nats_max_payload: Option<usize>,
    /// Planners in process.
    pub planners: usize,
    /// Evaluators in process.
    pub evaluators: usize,
    /// The tickers' lease.
    pub lease: Duration,
    /// When a fleet agent that stopped heartbeating counts as stale, for every service.
    pub stale_agent_after: Duration,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            appendonly: false,
            nats_max_payload: None,
            planners: 1,
            evaluators: 2,
            lease: Duration::from_millis(500),
            stale_agent_after: Duration::from_secs(60),
        }
    }
}

/// A ticker child process and the proxies in front of its servers, if any.
#[derive(Debug)]
pub struct TickerReplica {
    pub replica: String,
    pub process: ServiceProcess,
    pub redis_proxy: Option<Proxy>,
    pub nats_proxy: Option<Proxy>,
}

/// An evaluator child process serving OFREP at a fixed address: killed with -9 and started
/// afresh at the same address, it is the same replica to the monitors.
#[derive(Debug)]
pub struct EvaluatorProcess {
    pub process: ServiceProcess,
    pub addr: SocketAddr,
}

impl EvaluatorProcess {
    /// Waits until it answers `/readyz` with 200.
    pub async fn wait_ready(&self) {
        let addr = self.addr;
        eventually(
            &format!("evaluator {} to be ready", self.process.name),
            PATIENCE,
            || async move { http::ready(addr).await.then_some(()) },
        )
        .await;
    }

    /// kill -9 (a frozen process too).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts a fresh process with the same settings and address, and waits until it is
    /// ready.
    pub async fn restart(&mut self) {
        self.process.respawn();
        self.wait_ready().await;
    }

    /// The replica as the monitors watch it: over its OFREP address.
    pub fn watched(&self) -> Replica {
        Replica::Http(self.process.name.clone(), self.addr)
    }
}

/// The system under test: the sandbox (servers, planners and evaluators in process, the
/// operator's connection as `client`) plus ticker processes, proxies and an event log.
pub struct Cluster {
    pub sandbox: Sandbox,
    pub options: ClusterOptions,
    pub dir: TempDir,
    pub redis_conn: Connection,
    pub commands: CommandClient,
    pub tickers: Vec<TickerReplica>,
    pub events: EventLog,
    next_ticker: usize,
    /// Take-overs of the test namespace's shard seen by [`Cluster::wait_for_leader`].
    takeovers: std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for Cluster {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Sandbox {
        &mut self.sandbox
    }
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> Cluster {
        let nats_options = match options.nats_max_payload {
            Some(bytes) => NatsOptions::default().config(format!("max_payload: {bytes}\n")),
            None => NatsOptions::default(),
        };
        let stale = options.stale_agent_after;
        let mut builder = Sandbox::builder()
            .namespace(NS)
            .planners(options.planners)
            .evaluators(options.evaluators)
            .nats(nats_options)
            .planner_config(move |config| config.planner.stale_agent_after = stale)
            .evaluator_config(move |config| config.evaluator.stale_agent_after = stale);
        if options.appendonly {
            builder = builder.appendonly();
        }
        let sandbox = builder.start().await;
        let redis_conn = sandbox.store().await;
        let commands = operator_commands(sandbox.client.clone());
        let events = EventLog::start(&sandbox.client, "rollout.events.>").await;
        Cluster {
            sandbox,
            options,
            dir: log_dir("rollout-system-"),
            redis_conn,
            commands,
            tickers: Vec::new(),
            events,
            next_ticker: 0,
            takeovers: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Starts an evaluator as a child process named `name`, serving OFREP on a free
    /// loopback port (kept across [`EvaluatorProcess::restart`]); does not wait for it.
    pub fn spawn_evaluator_process(&self, name: &str) -> EvaluatorProcess {
        let port = rollout_testkit::free_port().expect("free port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let env = HashMap::from([
            ("ROLLOUT_NATS__URL".to_owned(), self.nats.url()),
            ("ROLLOUT_REDIS__URL".to_owned(), self.redis.url()),
            ("ROLLOUT_HTTP__LISTEN".to_owned(), addr.to_string()),
            ("ROLLOUT_HTTP__NAMESPACE".to_owned(), NS.to_owned()),
            (
                "ROLLOUT_EVALUATOR__RESYNC_INTERVAL".to_owned(),
                "2s".to_owned(),
            ),
            (
                "ROLLOUT_EVALUATOR__STALE_AGENT_AFTER".to_owned(),
                format!("{}ms", self.options.stale_agent_after.as_millis()),
            ),
            ("ROLLOUT_LOG__FORMAT".to_owned(), "json".to_owned()),
        ]);
        EvaluatorProcess {
            process: Service::Evaluator.spawn(name, self.dir.path(), &env),
            addr,
        }
    }

    /// Settings every ticker process gets: a short lease, few rollouts in flight (so a
    /// burst of due rollouts lasts long enough to be interrupted), a long Redis reply
    /// timeout (a frozen or partitioned leader must still see what its stale writes come
    /// to when it thaws), and a shutdown grace longer than any fault.
    pub fn ticker_env(
        &self,
        replica: &str,
        redis_url: &str,
        nats_url: &str,
    ) -> HashMap<String, String> {
        let lease_ms = self.options.lease.as_millis();
        let renew_ms = (lease_ms * 3 / 10).max(50);
        HashMap::from([
            ("ROLLOUT_NATS__URL".to_owned(), nats_url.to_owned()),
            ("ROLLOUT_REDIS__URL".to_owned(), redis_url.to_owned()),
            (
                "ROLLOUT_REDIS__RESPONSE_TIMEOUT".to_owned(),
                "30s".to_owned(),
            ),
            ("ROLLOUT_TICKER__REPLICA_ID".to_owned(), replica.to_owned()),
            (
                "ROLLOUT_TICKER__LEASE_TTL".to_owned(),
                format!("{lease_ms}ms"),
            ),
            (
                "ROLLOUT_TICKER__RENEW_INTERVAL".to_owned(),
                format!("{renew_ms}ms"),
            ),
            // small batches, two in flight: a burst takes long enough for a fault to
            // catch writes in flight, and batches still hold several rollouts each
            ("ROLLOUT_TICKER__MAX_IN_FLIGHT".to_owned(), "8".to_owned()),
            ("ROLLOUT_TICKER__COMMIT_BATCH".to_owned(), "4".to_owned()),
            (
                "ROLLOUT_TICKER__STALE_AGENT_AFTER".to_owned(),
                format!("{}ms", self.options.stale_agent_after.as_millis()),
            ),
            (
                "ROLLOUT_TICKER__SHUTDOWN_GRACE".to_owned(),
                "20s".to_owned(),
            ),
            ("ROLLOUT_LOG__FORMAT".to_owned(), "json".to_owned()),
            ("ROLLOUT_LOG__LEVEL".to_owned(), "info".to_owned()),
        ])
    }

    /// Starts another ticker process (`ticker-<n>`), behind its own proxies when asked.
    pub async fn add_ticker(&mut self, proxy_redis: bool, proxy_nats: bool) -> String {
        let replica = format!("ticker-{}", self.next_ticker);
        self.next_ticker += 1;
        let redis_proxy = if proxy_redis {
            Some(Proxy::start(self.redis.addr()).await)
        } else {
            None
        };
        let nats_proxy = if proxy_nats {
            Some(Proxy::start(self.nats.addr()).await)
        } else {
            None
        };
        let redis_url = match &redis_proxy {
            Some(proxy) => format!("redis://127.0.0.1:{}", proxy.port()),
            None => self.redis.url(),
        };
        let nats_url = match &nats_proxy {
            Some(proxy) => format!("nats://127.0.0.1:{}", proxy.port()),
            None => self.nats.url(),
        };
        let env = self.ticker_env(&replica, &redis_url, &nats_url);
        let process = Service::Ticker.spawn(&replica, self.dir.path(), &env);
        self.tickers.push(TickerReplica {
            replica: replica.clone(),
            process,
            redis_proxy,
            nats_proxy,
        });
        replica
    }

    /// Starts `count` tickers and waits until one of them leads.
    pub async fn add_tickers(&mut self, count: usize, proxy_redis: bool, proxy_nats: bool) {
        for _ in 0..count {
            self.add_ticker(proxy_redis, proxy_nats).await;
        }
        self.wait_for_leader(None).await;
    }

    pub fn ticker(&mut self, replica: &str) -> &mut TickerReplica {
        self.tickers
            .iter_mut()
            .find(|ticker| ticker.replica == replica)
            .unwrap_or_else(|| panic!("no ticker {replica}"))
    }

    /// The replica leading the test namespace's shard, and the epoch of its lease (the
    /// tickers share the shards; the others lead shards of their own).
    pub async fn leader(&self) -> Option<(String, u64)> {
        let mut connection = self.redis_conn.clone();
        rollout_store::lease::holder_of(&mut connection, NS)
            .await
            .ok()?
    }

    /// Waits until a replica other than `not` leads the test namespace's shard; returns it
    /// (and, with `not`, counts a take-over).
    pub async fn wait_for_leader(&self, not: Option<&str>) -> (String, u64) {
        let leader = eventually("a ticker to lead", PATIENCE, || async {
            self.leader()
                .await
                .filter(|(holder, _)| Some(holder.as_str()) != not)
        })
        .await;
        if not.is_some() {
            self.takeovers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        leader
    }

    /// Take-overs of the test namespace's shard seen so far.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shard leases won so far: the epoch counter (it only rises; rebalancing between
    /// replicas counts too).
    pub async fn epoch_counter(&self) -> u64 {
        let mut connection = self.redis_conn.clone();
        rollout_store::lease::epoch_counter(&mut connection)
            .await
            .unwrap_or(0)
    }

    /// Fence rejections every ticker process logged (stale transitions and due-index
    /// updates refused because a newer leader raised the namespace's fence).
    pub fn fence_rejections(&self) -> usize {
        self.tickers
            .iter()
            .map(|ticker| ticker.process.count("refused by the fence"))
            .sum()
    }

    /// Waits until the test's own Redis connection answers again (after a Redis restart its
    /// first command fails and makes it reconnect).
    pub async fn wait_redis(&self) {
        eventually("redis to answer the test again", PATIENCE, || async {
            let mut connection = self.redis_conn.clone();
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }

    pub async fn now(&self) -> Timestamp {
        let mut connection = self.redis_conn.clone();
        redis_time(&mut connection).await.expect("redis time")
    }

    pub fn keys(&self) -> Keys {
        Keys::new(&Namespace::new(NS).expect("namespace"))
    }

    /// Creates `count` flags `<prefix>-<i>` and a phased rollout on each: `phases - 1`
    /// steps of 1 % more each lasting `step`, then 100 %; all start at the same instant
    /// `start_in` from now, so every step boundary is a burst of `count` transitions.
    pub async fn phased_workload(
        &self,
        prefix: &str,
        count: usize,
        phases: usize,
        step: Duration,
        start_in: Duration,
    ) -> Workload {
        let now = self.now().await;
        let start = Timestamp::from_millis(now.as_millis() + millis(start_in));
        let (flags, rollouts) =
            create_phased(&self.commands, prefix, count, phases, step, start).await;
        let made = self.now().await;
        assert!(
            made < start,
            "creating the workload took longer than its start delay"
        );
        Workload {
            flags,
            rollouts,
            start,
            step,
            phases,
        }
    }

    /// Rollouts of `workload` whose due time is past `boundary`, i.e. that entered the
    /// step beginning at `boundary` (or later).
    pub async fn advanced_past(&self, boundary: Timestamp) -> usize {
        let mut connection = self.redis_conn.clone();
        let after = rollout_store::due::count_after(&mut connection, &self.keys(), boundary)
            .await
            .unwrap_or(0);
        usize::try_from(after).unwrap_or(usize::MAX)
    }

    /// Stops every rollout of `workload` that is still active (the faults are over; this
    /// fixes the state the checks read).
    pub async fn stop_all(&self, workload: &Workload) {
        self.stop_rollouts(&workload.rollouts).await;
    }

    /// Stops every rollout of `ids` that still exists and is active.
    pub async fn stop_rollouts(&self, ids: &[String]) {
        let results: Vec<()> = futures_util::stream::iter(ids.to_vec())
            .map(|id| async move {
                let Some(record) = self.find_rollout(&id).await else {
                    return;
                };
                if record.state.lifecycle.is_finished() {
                    return;
                }
                match self.commands.stop_rollout(&id, None).await {
                    Ok(_) => {}
                    // completed meanwhile
                    Err(error) if error.code() == rollout_sdk::ErrorCode::FailedPrecondition => {}
                    Err(error) => panic!("stop {id}: {error}"),
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        drop(results);
    }

    /// Reads the committed records of the namespace.
    pub fn committed(&self) -> CommittedReader {
        CommittedReader::new(self.redis_conn.clone(), NS)
    }

    /// The rollout's record, `None` once deleted (or lost with Redis's data).
    pub async fn find_rollout(&self, id: &str) -> Option<RolloutRecord> {
        self.committed().find_rollout(id).await
    }

    pub async fn rollout(&self, id: &str) -> RolloutRecord {
        self.committed().rollout(id).await
    }

    /// The flag's version in Redis.
    pub async fn flag_version(&self, key: &str) -> u64 {
        self.committed().flag_version(key).await
    }

    /// A rollout's audit, oldest first.
    pub async fn rollout_audit(&self, id: &str) -> Vec<AuditEntry> {
        self.committed().rollout_audit(id).await
    }

    /// A flag's audit, oldest first.
    pub async fn flag_audit(&self, key: &str) -> Vec<AuditEntry> {
        self.committed().flag_audit(key).await
    }

    /// Entries waiting in the namespace's outbox.
    pub async fn outbox_len(&self) -> u64 {
        let mut connection = self.redis_conn.clone();
        rollout_store::outbox::pending(&mut connection, &self.keys())
            .await
            .unwrap_or(0)
    }

    /// Waits until the outbox is empty and every in-process evaluator serves each of
    /// `flags` at its Redis version.
    pub async fn wait_converged(&self, flags: &[String]) {
        eventually("the outbox to drain", PATIENCE, || async {
            (self.outbox_len().await == 0).then_some(())
        })
        .await;
        for flag in flags {
            let version = self.flag_version(flag).await;
            for (index, evaluator) in self.evaluators().iter().enumerate() {
                eventually(
                    &format!("evaluator {index} to serve {flag} at version {version}"),
                    PATIENCE,
                    || async {
                        (evaluator.served_version(NS, flag) == Some(version)).then_some(())
                    },
                )
                .await;
            }
        }
    }

    /// Waits until the evaluator serving OFREP at `addr` serves each of `flags` at its Redis
    /// version.
    pub async fn wait_served_over_http(&self, addr: SocketAddr, flags: &[String]) {
        eventually(
            &format!("the evaluator at {addr} to serve what redis holds"),
            PATIENCE,
            || async move {
                let served = http::served_versions(addr, NS).await?;
                for flag in flags {
                    if served.get(flag).copied() != Some(self.flag_version(flag).await) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }

    /// Stops the in-process planners.
    pub async fn shutdown_planners(&mut self) {
        self.sandbox.stop_planners().await;
    }

    /// Stops the in-process planners and evaluators.
    pub async fn shutdown(&mut self) {
        self.sandbox.stop_services().await;
    }
}

/// Creates `count` flags `<prefix>-<i>` through `commands`, each with a phased rollout of
/// `phases - 1` steps of 1 % more each lasting `step`, then 100 %, all starting at `start`;
/// returns the flags and the rollout ids.
pub async fn create_phased(
    commands: &CommandClient,
    prefix: &str,
    count: usize,
    phases: usize,
    step: Duration,
    start: Timestamp,
) -> (Vec<String>, Vec<String>) {
    let step_text = format!("{}ms", step.as_millis());
    let mut phase_list: Vec<serde_json::Value> = (1..phases)
        .map(|percentage| json!({"percentage": percentage, "duration": step_text}))
        .collect();
    phase_list.push(json!({"percentage": 100}));
    let created: Vec<(String, String)> = futures_util::stream::iter(0..count)
        .map(|index| {
            let flag = format!("{prefix}-{index}");
            let spec = json!({
                "flag": flag, "baseline": "off", "candidate": "on",
                "phases": phase_list, "start_at": start.to_rfc3339(),
            });
            async move {
                commands
                    .create_flag(boolean_flag(&flag))
                    .await
                    .unwrap_or_else(|error| panic!("flag {flag}: {error}"));
                let spec: RolloutSpec = serde_json::from_value(spec).expect("spec");
                let rollout = commands
                    .create_rollout(spec)
                    .await
                    .unwrap_or_else(|error| panic!("rollout of {flag}: {error}"));
                (flag, rollout.rollout_id)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    created.into_iter().unzip()
}

/// The body of a `flag.update` command `id` of a command storm: flag `flag` as
/// [`boolean_flag`] makes it, described as storm command `index` (every update a new
/// version).
pub fn storm_update(flag: &str, id: &str, index: usize) -> Vec<u8> {
    let mut definition = boolean_flag(flag);
    definition.description = Some(format!("storm {index}"));
    serde_json::to_vec(&json!({"command_id": id, "flag": definition})).expect("json")
}

/// Publishes `body` (JSON) to the durable command stream subject `subject` until the stream
/// acknowledges it, counting each retry in `retries`. No `Nats-Msg-Id`: a retried publish
/// may store the command twice, and the planner must still apply it once.
pub async fn publish_until_acked(
    jetstream: &async_nats::jetstream::Context,
    subject: &str,
    body: &[u8],
    retries: &std::sync::atomic::AtomicU64,
) {
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        let acked = async {
            jetstream
                .publish_with_headers(subject.to_owned(), headers, body.to_vec().into())
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        match tokio::time::timeout(Duration::from_secs(3), acked).await {
            Ok(Ok(_)) => return,
            _ => {
                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The operator's command client: generous timeout and retries (commands carry ids, so a
/// retry is applied once).
pub fn operator_commands(client: async_nats::Client) -> CommandClient {
    CommandClient::new(client, Namespace::new(NS).expect("namespace"))
        .with_actor("operator")
        .with_options(RequestOptions {
            timeout: Duration::from_secs(3),
            retries: 5,
            ..RequestOptions::default()
        })
}

/// `count` outcomes of a (flag, candidate variation), reported the way an application does
/// (in batches).
pub async fn report_candidate(
    eval: &EvalClient,
    (flag, variation): (&str, &str),
    count: usize,
    failed: bool,
) {
    let outcome = if failed {
        Outcome::Error
    } else {
        Outcome::Success
    };
    let reports: Vec<OutcomeReport> = (0..count)
        .map(|index| OutcomeReport {
            flag: flag.to_owned(),
            entity: format!("user-{index}"),
            variation: variation.to_owned(),
            outcome,
            value: None,
            rollout_id: None,
        })
        .collect();
    for batch in reports.chunks(rollout_wire::outcomes::MAX_OUTCOME_BATCH) {
        eval.report_outcomes(batch.to_vec())
            .await
            .expect("outcomes reported");
    }
    eval.flush().await.expect("flush");
}

/// A flag `key` with variations `off`/`on`, serving `off`.
pub use rollout_sandbox::boolean_flag;

pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Phased rollouts whose steps all begin at the same instants.
#[derive(Clone, Debug)]
pub struct Workload {
    pub flags: Vec<String>,
    pub rollouts: Vec<String>,
    pub start: Timestamp,
    pub step: Duration,
    pub phases: usize,
}

impl Workload {
    /// When step `index` is planned to begin.
    pub fn boundary(&self, index: usize) -> Timestamp {
        Timestamp::from_millis(
            self.start.as_millis() + millis(self.step) * i64::try_from(index).unwrap_or(0),
        )
    }

    /// The first step boundary after `now` (`None` past the plan's end).
    pub fn next_boundary(&self, now: Timestamp) -> Option<(usize, Timestamp)> {
        (1..self.phases)
            .map(|index| (index, self.boundary(index)))
            .find(|(_, at)| *at > now)
    }

    /// When the last step begins.
    pub fn end(&self) -> Timestamp {
        self.boundary(self.phases - 1)
    }
}

/// Every change event received on a subject, decoded, with when it arrived.
pub struct EventLog {
    events: Arc<Mutex<Vec<(ChangeEvent, Timestamp)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventLog {
    pub async fn start(client: &async_nats::Client, subject: &str) -> EventLog {
        let mut subscriber = client
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe to events");
        client.flush().await.expect("flush");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let arrived = wall_clock_now();
                let encoding = Encoding::from_content_type(
                    message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get(CONTENT_TYPE_HEADER))
                        .map(|value| value.as_str()),
                );
                if let Ok(event) = ChangeEvent::decode(&message.payload, encoding) {
                    sink.lock().expect("event log").push((event, arrived));
                }
            }
        });
        EventLog { events, task }
    }

    pub fn events(&self) -> Vec<ChangeEvent> {
        self.arrivals()
            .into_iter()
            .map(|(event, _)| event)
            .collect()
    }

    /// Every event with the wall-clock time it arrived at (the test machine's clock, the
    /// one Redis `TIME` reads too).
    pub fn arrivals(&self) -> Vec<(ChangeEvent, Timestamp)> {
        self.events.lock().expect("event log").clone()
    }
}

/// The wall clock now, as the domain's instant (Redis `TIME` on this machine reads the same
/// clock).
pub fn wall_clock_now() -> Timestamp {
    Timestamp::local_now()
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `flag.update` commands on `flags` in turn through `commands` (request-reply, each
/// with its own id `<prefix>-<n>`) until `stop`, retrying a refused or unanswered command
/// with the same id until it is acknowledged (a refusal must be retryable or
/// `unavailable`); returns the acknowledged ids per flag and how many attempts were
/// refused.
pub fn flag_update_storm(
    commands: CommandClient,
    flags: Vec<String>,
    prefix: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(std::collections::BTreeMap<String, Vec<String>>, u64)> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut acknowledged: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        let mut refused = 0_u64;
        let mut index = 0_usize;
        while !stop.load(Ordering::Relaxed) {
            let flag = &flags[index % flags.len()];
            let id = format!("{prefix}-{index}");
            let mut definition = boolean_flag(flag);
            definition.description = Some(format!("update {index}"));
            let command = rollout_wire::Command::FlagUpdate(rollout_wire::FlagUpdate {
                command_id: Some(id.clone()),
                actor: None,
                flag: definition,
                expected_version: None,
            });
            loop {
                match commands.send(command.clone()).await {
                    Ok(_) => break,
                    Err(error) => {
                        assert!(
                            error.is_retryable()
                                || error.code() == rollout_sdk::ErrorCode::Unavailable,
                            "{id}: {error}"
                        );
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            acknowledged.entry(flag.clone()).or_default().push(id);
            index += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (acknowledged, refused)
    })
}

/// A directory (named `<prefix>…`) for a run's server and service logs: removed after the
/// run, unless `ROLLOUT_KEEP_LOGS` is set (then it outlives a failure too, and its path is
/// printed).
pub fn log_dir(prefix: &str) -> TempDir {
    let keep_logs = std::env::var_os("ROLLOUT_KEEP_LOGS").is_some();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep_logs)
        .tempdir()
        .expect("tempdir");
    if keep_logs {
        println!("logs kept in {}", dir.path().display());
    }
    dir
}
