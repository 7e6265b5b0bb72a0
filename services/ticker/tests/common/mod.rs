//! What the ticker's tests (and its benchmark) share: a private NATS + Redis pair, rollouts
//! written the way the planner writes them (the core's `transition::create` committed by
//! the store's `Writer`), readers for records,
//! audit and events, and ticker replicas in process or as child processes.

// each test binary uses a different part of this module
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use rollout_core::transition::{self, NewRollout};
use rollout_core::{compile, CompileContext, DurationMs, Flag, RolloutSpec, Timestamp};
use rollout_runtime::config::{NatsSettings, RedisSettings};
use rollout_runtime::shutdown::Shutdown;
use rollout_sandbox::process::ServiceProcess;
use rollout_store::reads::{audit_page, AuditLog};
use rollout_store::Connection;
use rollout_store::Keys;
use rollout_store::{
    load_flag, load_rollout, redis_time, Actor, Change, Conditions, FlagRecord, Happened, Relay,
    RolloutRecord, StoredFlag, Writer, Written,
};
use rollout_testkit::TestCluster;
use rollout_wire::codec::Encoding;
use rollout_wire::events::{ChangeEvent, EventKind};
use rollout_wire::queries::AuditEntry;
use rollout_wire::subjects::{Namespace, Subjects};
use ticker::{Ticker, TickerSettings};

/// The namespace most tests use.
pub const NS: &str = "prod";

/// A private NATS and Redis with clients on them.
pub struct Harness {
    pub cluster: TestCluster,
    pub redis: Connection,
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    /// Commits and publishes, as the planner does.
    pub writer: Writer,
}

impl Harness {
    pub async fn start() -> Harness {
        rollout_runtime::telemetry::init_for_tests();
        let cluster = tokio::task::spawn_blocking(TestCluster::start)
            .await
            .expect("start task")
            .expect("nats-server and redis-server start (run deploy/tools/install.sh)");
        let redis = connect_redis(&cluster.redis.url()).await;
        let nats = async_nats::connect(cluster.nats.url())
            .await
            .expect("nats connects");
        let subjects = Subjects::new("rollout").expect("prefix");
        let relay = Relay::new(nats.clone(), redis.clone(), subjects.clone());
        Harness {
            cluster,
            writer: Writer::publishing(redis.clone(), relay),
            redis,
            nats,
            subjects,
        }
    }

    pub fn keys(&self, namespace: &str) -> Keys {
        Keys::new(&Namespace::new(namespace).expect("namespace"))
    }

    /// Ticker settings for an in-process replica with a short lease.
    pub fn settings(&self, replica: &str) -> TickerSettings {
        TickerSettings {
            lease_ttl: Duration::from_secs(1),
            renew_interval: Some(Duration::from_millis(200)),
            replica_id: Some(replica.to_owned()),
            ..TickerSettings::default()
        }
    }

    /// An in-process replica with its own Redis and NATS connections.
    pub async fn ticker(&self, settings: TickerSettings) -> Ticker {
        let redis = connect_redis(&self.cluster.redis.url()).await;
        let nats = async_nats::connect(self.cluster.nats.url())
            .await
            .expect("nats connects");
        Ticker::new(redis, nats, self.subjects.clone(), settings)
    }

    pub async fn now(&self) -> Timestamp {
        let mut connection = self.redis.clone();
        redis_time(&mut connection).await.expect("redis time")
    }

    /// Registers `namespace` as the planner does.
    pub async fn register_namespace(&self, namespace: &str) {
        let mut connection = self.redis.clone();
        let namespace = Namespace::new(namespace).expect("namespace");
        rollout_store::namespaces::register(&mut connection, &namespace)
            .await
            .expect("sadd");
    }

    /// Creates flag `flag_key` (variations `off`/`on`, serving `off`) and, when `spec` is
    /// given, a rollout of it compiled at `now`, in one commit, as the planner does; the
    /// events are published. Returns the rollout.
    pub async fn create(
        &self,
        namespace: &str,
        flag_key: &str,
        spec: Option<serde_json::Value>,
        now: Timestamp,
        options: CreateOptions,
    ) -> Option<RolloutRecord> {
        let publish = options.publish;
        let (change, record) = self.prepare_create(namespace, flag_key, spec, now, options);
        self.register_namespace(namespace).await;
        let writer = if publish {
            self.writer.clone()
        } else {
            Writer::unpublished(self.redis.clone())
        };
        let outcome = commit_at(&writer, namespace, change, now)
            .await
            .expect("commit runs");
        assert!(
            matches!(outcome, Written::Committed { .. }),
            "creation not committed: {outcome:?}"
        );
        record
    }

    /// The change [`Harness::create`] commits, without committing it.
    pub fn prepare_create(
        &self,
        namespace: &str,
        flag_key: &str,
        spec: Option<serde_json::Value>,
        now: Timestamp,
        options: CreateOptions,
    ) -> (Change, Option<RolloutRecord>) {
        let mut flag_json = serde_json::json!({
            "key": flag_key,
            "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
            "off_variation": "off",
            "enabled": true,
            "default": {"variation": "off"},
        });
        if let Some(kill_switch) = options.kill_switch.clone() {
            flag_json["kill_switch"] = kill_switch;
        }
        let flag: Flag = serde_json::from_value(flag_json).expect("flag");
        let flag_record = FlagRecord {
            flag: flag.clone(),
            active_rollout: None,
            last_rollout: None,
            created_at: now,
            updated_at: now,
        };
        let mut rollout = None;
        let mut change = if let Some(spec_json) = spec {
            let mut spec_json = spec_json;
            spec_json["flag"] = serde_json::Value::String(flag_key.to_owned());
            spec_json
                .as_object_mut()
                .expect("spec object")
                .entry("baseline")
                .or_insert(serde_json::json!("off"));
            spec_json
                .as_object_mut()
                .expect("spec object")
                .entry("candidate")
                .or_insert(serde_json::json!("on"));
            let spec: RolloutSpec = serde_json::from_value(spec_json).expect("spec");
            let context = CompileContext {
                now,
                min_phase_interval: DurationMs::from_millis(500),
                fresh_salt: "test-salt",
            };
            let plan = compile(&spec, &flag, &context).expect("spec compiles");
            let id = format!("r-{flag_key}");
            let created = transition::create(
                &flag_record,
                NewRollout {
                    id: id.clone(),
                    namespace: namespace.to_owned(),
                    spec,
                    plan,
                    created_by: Some("test".to_owned()),
                    traceparent: options.traceparent.clone(),
                },
                now,
            );
            rollout = Some(created.rollout.clone());
            Change::rollout_created(0, true, created)
        } else {
            let mut change = Change::of_flag(flag_key, 0);
            change.flag = Some(flag_record);
            change.flag_created = true;
            change
        };
        change
            .happened
            .insert(0, Happened::event(EventKind::FlagCreated, None));
        (change, rollout)
    }

    /// When the due index says the ticker should next look at `rollout_id`.
    pub async fn due_at(&self, namespace: &str, rollout_id: &str) -> Option<Timestamp> {
        let mut connection = self.redis.clone();
        rollout_store::due::scheduled(&mut connection, &self.keys(namespace), rollout_id)
            .await
            .expect("zscore")
    }

    pub async fn rollout(&self, namespace: &str, rollout_id: &str) -> RolloutRecord {
        let mut connection = self.redis.clone();
        load_rollout(&mut connection, &self.keys(namespace), rollout_id)
            .await
            .expect("load")
            .expect("rollout exists")
    }

    pub async fn flag(&self, namespace: &str, flag_key: &str) -> StoredFlag {
        let mut connection = self.redis.clone();
        load_flag(&mut connection, &self.keys(namespace), flag_key)
            .await
            .expect("load flag")
    }

    /// A rollout's audit, oldest first.
    pub async fn audit(&self, namespace: &str, rollout_id: &str) -> Vec<AuditEntry> {
        self.audit_list(namespace, AuditLog::Rollout(rollout_id))
            .await
    }

    /// A flag's audit, oldest first.
    pub async fn flag_audit(&self, namespace: &str, flag_key: &str) -> Vec<AuditEntry> {
        self.audit_list(namespace, AuditLog::Flag(flag_key)).await
    }

    async fn audit_list(&self, namespace: &str, log: AuditLog<'_>) -> Vec<AuditEntry> {
        let mut connection = self.redis.clone();
        let (_, mut entries) = audit_page(&mut connection, &self.keys(namespace), log, 0, u32::MAX)
            .await
            .expect("the audit reads");
        entries.reverse();
        entries
    }

    /// The replica leading `namespace`'s shard and the epoch of its lease.
    pub async fn holder_of(&self, namespace: &str) -> Option<(String, u64)> {
        let mut connection = self.redis.clone();
        rollout_store::lease::holder_of(&mut connection, namespace)
            .await
            .expect("get lease")
    }

    /// Every held shard lease.
    pub async fn holders(&self) -> Vec<rollout_store::lease::ShardHolder> {
        let mut connection = self.redis.clone();
        rollout_store::lease::holders(&mut connection)
            .await
            .expect("get leases")
    }

    /// Collects every change event of `namespace` from now on.
    pub async fn collect_events(&self, namespace: &str) -> EventLog {
        let subscriber = self
            .nats
            .subscribe(format!("rollout.events.{namespace}.>"))
            .await
            .expect("subscribe");
        self.nats.flush().await.expect("flush");
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&events);
        let task = tokio::spawn(async move {
            let mut subscriber = subscriber;
            while let Some(message) = subscriber.next().await {
                let event = ChangeEvent::decode(&message.payload, Encoding::MessagePack)
                    .expect("event decodes");
                sink.lock().expect("lock").push(event);
            }
        });
        EventLog { events, task }
    }

    /// Environment for a `ticker` child process.
    pub fn child_env(&self, replica: &str) -> HashMap<String, String> {
        HashMap::from([
            ("ROLLOUT_NATS__URL".to_owned(), self.cluster.nats.url()),
            ("ROLLOUT_REDIS__URL".to_owned(), self.cluster.redis.url()),
            ("ROLLOUT_TICKER__REPLICA_ID".to_owned(), replica.to_owned()),
            ("ROLLOUT_LOG__FORMAT".to_owned(), "json".to_owned()),
            ("ROLLOUT_LOG__LEVEL".to_owned(), "info".to_owned()),
        ])
    }
}

#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub kill_switch: Option<serde_json::Value>,
    pub traceparent: Option<String>,
    /// Publish the creation events (as the planner does); off for bulk set-ups.
    pub publish: bool,
}

impl CreateOptions {
    pub fn published() -> CreateOptions {
        CreateOptions {
            publish: true,
            ..CreateOptions::default()
        }
    }
}

pub struct EventLog {
    events: std::sync::Arc<std::sync::Mutex<Vec<ChangeEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventLog {
    pub fn events(&self) -> Vec<ChangeEvent> {
        self.events.lock().expect("lock").clone()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn connect_redis(url: &str) -> Connection {
    let settings = RedisSettings {
        url: url.to_owned(),
        ..RedisSettings::default()
    };
    rollout_runtime::connect::connect_redis(&settings)
        .await
        .expect("redis connects")
}

pub fn nats_settings(url: &str) -> NatsSettings {
    NatsSettings {
        url: url.to_owned(),
        ..NatsSettings::default()
    }
}

/// Polls `check` until it returns `Some`, or panics after `deadline`.
pub use rollout_sandbox::wait_until_within as eventually;

/// A leader driven by hand: it holds the lease for one term and fires a round only when the
/// test says so, so a test can assert that a round which looked at a rollout left it alone
/// (instead of sleeping and hoping a loop ran).
pub struct HandDriven {
    pub ticker: Ticker,
    term: tokio::sync::Mutex<ticker::Leadership>,
}

impl HandDriven {
    /// Takes every shard (they must be free and no other replica running) and fences every
    /// namespace.
    pub async fn lead(ticker: Ticker) -> HandDriven {
        let term = ticker
            .campaign()
            .await
            .expect("campaign")
            .expect("the lease is free");
        HandDriven {
            ticker,
            term: tokio::sync::Mutex::new(term),
        }
    }

    /// One round at the current Redis time.
    pub async fn round(&self) -> ticker::Round {
        let mut term = self.term.lock().await;
        self.ticker.fire_due(&mut term).await.expect("round")
    }

    /// One round as if Redis time were `now` (a transition a timer caused is still refused
    /// before its due time by the commit script).
    pub async fn round_at(&self, now: Timestamp) -> ticker::Round {
        let mut term = self.term.lock().await;
        self.ticker.fire_round(&mut term, now).await.expect("round")
    }

    /// One round at the time `rollout_id` of `namespace` is next due (its next health or
    /// gate check), asserting the round looked at it.
    pub async fn round_when_due(
        &self,
        harness: &Harness,
        namespace: &str,
        rollout_id: &str,
    ) -> ticker::Round {
        let due = harness
            .due_at(namespace, rollout_id)
            .await
            .unwrap_or_else(|| panic!("{rollout_id} is due for a look"));
        let round = self.round_at(due).await;
        assert_eq!(round.looked_at, 1, "the round looked at {rollout_id}");
        round
    }

    /// Fires rounds until `check` returns `Some` (panicking after `deadline`), and returns it.
    pub async fn rounds_until<T, F, Fut>(&self, what: &str, deadline: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        eventually(what, deadline, || {
            let round = self.round();
            let checked = check();
            async move {
                round.await;
                checked.await
            }
        })
        .await
    }

    /// One kill switch check (with every change event heard so far).
    pub async fn check_kill_switches(&self) -> ticker::KillSwitchReport {
        let mut term = self.term.lock().await;
        self.ticker
            .check_kill_switches(&mut term)
            .await
            .expect("kill switch check")
    }

    /// Ends the term, releasing the lease.
    pub async fn resign(self) {
        self.ticker
            .resign(self.term.into_inner())
            .await
            .expect("resign");
    }
}

/// An in-process replica running on its own task until stopped or aborted.
pub struct Running {
    pub ticker: Ticker,
    pub shutdown: Shutdown,
    pub handle: tokio::task::JoinHandle<Result<(), ticker::TickerError>>,
}

impl Running {
    pub fn start(ticker: Ticker) -> Running {
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(ticker.clone().run(shutdown.clone()));
        Running {
            ticker,
            shutdown,
            handle,
        }
    }

    /// A clean stop: the leader releases its lease.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.handle.await.expect("ticker task").expect("ticker ran");
    }

    /// A crash: the task is dropped where it stands; the lease is not released.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// A `ticker` child process (the sandbox's [`ServiceProcess`]), SIGKILLed when dropped.
pub struct TickerProcess;

impl TickerProcess {
    /// Starts the built `ticker` with exactly the settings in `env`, named by its replica id.
    pub fn spawn(dir: &Path, env: &HashMap<String, String>) -> ServiceProcess {
        let replica = env
            .get("ROLLOUT_TICKER__REPLICA_ID")
            .cloned()
            .unwrap_or_else(|| "ticker".to_owned());
        ServiceProcess::spawn(env!("CARGO_BIN_EXE_ticker"), &replica, dir, env)
    }
}

/// Checks one rollout's history and audit: every step index appears exactly once and in
/// order (entered, or skipped by catch-up), each entered step has exactly one
/// `rollout_step` audit entry, each skipped one is listed by exactly one, and the rollout
/// started at most once. Returns the number of `rollout_step` entries.
pub fn assert_single_advances(record: &RolloutRecord, audit: &[AuditEntry]) -> usize {
    let indexes: Vec<usize> = record.state.history.iter().map(|step| step.index).collect();
    let expected: Vec<usize> = (0..indexes.len()).collect();
    assert_eq!(
        indexes, expected,
        "{}: history {:?}",
        record.id, record.state.history
    );
    let started = audit
        .iter()
        .filter(|entry| entry.kind == EventKind::RolloutStarted)
        .count();
    assert!(started <= 1, "{}: started {started} times", record.id);
    let steps: Vec<&AuditEntry> = audit
        .iter()
        .filter(|entry| entry.kind == EventKind::RolloutStep)
        .collect();
    let mut entered_by_audit: Vec<usize> = steps
        .iter()
        .map(|entry| entry.details["to"].as_u64().expect("to") as usize)
        .collect();
    let mut skipped_by_audit: Vec<usize> = steps
        .iter()
        .flat_map(|entry| {
            entry.details["skipped"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|value| value.as_u64().expect("index") as usize)
        })
        .collect();
    let entered: Vec<usize> = record
        .state
        .history
        .iter()
        .filter(|step| !step.skipped)
        .map(|step| step.index)
        .collect();
    let skipped: Vec<usize> = record
        .state
        .history
        .iter()
        .filter(|step| step.skipped)
        .map(|step| step.index)
        .collect();
    entered_by_audit.sort_unstable();
    skipped_by_audit.sort_unstable();
    assert_eq!(
        entered_by_audit, entered,
        "{}: entered steps vs audit",
        record.id
    );
    assert_eq!(
        skipped_by_audit, skipped,
        "{}: skipped steps vs audit",
        record.id
    );
    for step in &record.state.history {
        if let Some(entered_at) = step.entered_at {
            assert!(
                entered_at >= step.planned_at,
                "{}: step {} entered at {entered_at} before its planned {}",
                record.id,
                step.index,
                step.planned_at
            );
        }
    }
    steps.len()
}

/// `time` as RFC 3339.
pub fn rfc3339(time: Timestamp) -> String {
    time.to_rfc3339()
}

/// `time` plus `millis` (which may be negative).
pub fn after(time: Timestamp, millis: i64) -> Timestamp {
    Timestamp::from_millis(time.as_millis() + millis)
}

/// Commits `change` to `namespace` at `now` through `writer`, as the test actor.
pub async fn commit_at(
    writer: &Writer,
    namespace: &str,
    change: Change,
    now: Timestamp,
) -> Result<Written, rollout_store::StoreError> {
    let actor = Actor {
        name: "test".to_owned(),
        command_id: None,
        trace_id: None,
        reason: None,
    };
    let namespace = Namespace::new(namespace).expect("namespace");
    writer
        .commit(&namespace, change, actor, now, Conditions::default())
        .await
}
