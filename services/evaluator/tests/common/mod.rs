//! Test fixtures: private NATS and Redis servers, evaluator replicas started in process,
//! state committed the way the planner commits it (the core's transitions committed by the
//! store's `Writer`, events published by the `Relay` when the test says so), and small NATS
//! and HTTP clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use evaluator::{EvaluatorConfig, EvaluatorHandle};
use redis::aio::ConnectionManager;
use rollout_core::machine::Event;
use rollout_core::plan::DEFAULT_MIN_PHASE_INTERVAL;
use rollout_core::transition::{self, NewRollout};
use rollout_core::{compile, CompileContext, Flag, RolloutSpec, Timestamp};
use rollout_runtime::config::{NatsSettings, RedisSettings};
use rollout_runtime::shutdown::Shutdown;
use rollout_store::Connection;
use rollout_store::Keys;
use rollout_store::{
    load_flag, load_rollout, redis_time, Actor, Change, Conditions, FlagRecord, Happened, Relay,
    RolloutRecord, Writer, Written,
};
use rollout_testkit::{NatsServer, RedisServer};
use rollout_wire::codec::{self, Encoding, CONTENT_TYPE_HEADER};
use rollout_wire::envelope::{decode_reply, WireError};
use rollout_wire::events::{ChangeEvent, EventKind};
use rollout_wire::subjects::{Namespace, Subjects};

/// Generous bound on waiting for something that should happen within milliseconds; only
/// failures ever take it.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The namespace most tests use.
pub const NS: &str = "prod";

pub fn namespace(name: &str) -> Namespace {
    Namespace::new(name).expect("valid namespace")
}

/// A configuration for a replica on `nats_url` and `redis_url`, HTTP on a free port.
pub fn config(nats_url: &str, redis_url: &str) -> EvaluatorConfig {
    let mut config = EvaluatorConfig {
        nats: NatsSettings {
            url: nats_url.to_owned(),
            connect_timeout: Duration::from_secs(5),
            ..NatsSettings::default()
        },
        redis: RedisSettings {
            url: redis_url.to_owned(),
            connect_timeout: Duration::from_secs(5),
            ..RedisSettings::default()
        },
        ..EvaluatorConfig::default()
    };
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.namespace = NS.to_owned();
    config.evaluator.shutdown_grace = Duration::from_secs(5);
    config.evaluator.reconnect_check_interval = Duration::from_millis(100);
    config
}

/// Starts a replica and waits until it serves.
pub async fn start(config: EvaluatorConfig) -> EvaluatorHandle {
    rollout_runtime::telemetry::init_for_tests();
    rollout_sandbox::start_evaluator(config, Shutdown::new()).await
}

/// Polls `check` until it holds, or panics after the sandbox's patience.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    rollout_sandbox::wait_until(what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}

/// What one commit wrote.
#[derive(Debug)]
pub struct Committed {
    pub events: Vec<ChangeEvent>,
    pub outbox_ids: Vec<String>,
    pub version: u64,
}

/// Writes state like the planner: one store `Change` per command, events by the relay.
#[derive(Clone)]
pub struct Store {
    pub redis: Connection,
    pub nats: async_nats::Client,
    relays: Vec<Relay>,
}

impl Store {
    /// A store on `redis` publishing events to every NATS server in `nats_urls`.
    pub async fn connect(redis_url: &str, nats_urls: &[String]) -> Store {
        let client = redis::Client::open(redis_url).expect("redis url");
        let redis: Connection = ConnectionManager::new(client)
            .await
            .expect("redis connects")
            .into();
        let mut relays = Vec::new();
        let mut first = None;
        for url in nats_urls {
            let nats = async_nats::connect(url.as_str())
                .await
                .expect("nats connects");
            first.get_or_insert_with(|| nats.clone());
            relays.push(Relay::new(nats, redis.clone(), Subjects::default()));
        }
        Store {
            redis,
            nats: first.expect("at least one nats server"),
            relays,
        }
    }

    pub async fn now(&self) -> Timestamp {
        let mut connection = self.redis.clone();
        redis_time(&mut connection).await.expect("redis time")
    }

    async fn register_namespace(&self, name: &str) {
        let mut connection = self.redis.clone();
        rollout_store::namespaces::register(&mut connection, &namespace(name))
            .await
            .expect("sadd");
    }

    /// Commits `change` at `now`, leaving its events in the outbox.
    async fn commit(&self, name: &str, change: Change, now: Timestamp) -> Committed {
        let written = Writer::unpublished(self.redis.clone())
            .commit(
                &namespace(name),
                change,
                actor(),
                now,
                Conditions::default(),
            )
            .await
            .expect("commit runs");
        match written {
            Written::Committed {
                events,
                flag_version,
                outbox_ids,
                ..
            } => Committed {
                events,
                outbox_ids,
                version: flag_version,
            },
            other => panic!("commit refused: {other:?}"),
        }
    }

    /// Publishes what a commit appended (to every NATS server) and trims the outbox.
    pub async fn publish(&self, name: &str, committed: &Committed) {
        let keys = Keys::new(&namespace(name));
        for relay in &self.relays {
            relay
                .publish_committed(&keys, &committed.events, &committed.outbox_ids)
                .await;
        }
    }

    /// Publishes only the events of `committed` at these versions.
    pub async fn publish_only(&self, name: &str, committed: &Committed, versions: &[u64]) {
        let events: Vec<ChangeEvent> = committed
            .events
            .iter()
            .filter(|event| versions.contains(&event.version))
            .cloned()
            .collect();
        let keys = Keys::new(&namespace(name));
        for relay in &self.relays {
            relay
                .publish_committed(&keys, &events, &committed.outbox_ids)
                .await;
        }
    }

    /// Publishes a raw event to every NATS server, as a misbehaving publisher would.
    pub async fn publish_raw(&self, event: &ChangeEvent) {
        self.publish_raw_unflushed(event).await;
        self.flush().await;
    }

    /// Publishes a raw event without flushing (for bursts; see [`Store::flush`]).
    pub async fn publish_raw_unflushed(&self, event: &ChangeEvent) {
        let subject = Subjects::default()
            .events(&namespace(&event.namespace), &event.flag)
            .expect("subject");
        let payload = codec::encode(event, Encoding::MessagePack).expect("encodes");
        self.nats
            .publish(subject, payload.into())
            .await
            .expect("publish");
    }

    /// Flushes what was published.
    pub async fn flush(&self) {
        self.nats.flush().await.expect("flush");
    }

    /// Every key and its DUMP: what an RDB backup holds.
    pub async fn backup(&self) -> Vec<(String, Vec<u8>)> {
        let mut connection = self.redis.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut connection)
            .await
            .expect("keys");
        let mut dumped = Vec::with_capacity(keys.len());
        for key in keys {
            let bytes: Vec<u8> = redis::cmd("DUMP")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .expect("dump");
            dumped.push((key, bytes));
        }
        dumped
    }

    /// Replaces everything with `backup`, as restoring an older RDB file does.
    pub async fn restore(&self, backup: &[(String, Vec<u8>)]) {
        let mut connection = self.redis.clone();
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut connection)
            .await
            .expect("flushall");
        for (key, bytes) in backup {
            let _: () = redis::cmd("RESTORE")
                .arg(key)
                .arg(0)
                .arg(bytes.as_slice())
                .query_async(&mut connection)
                .await
                .expect("restore");
        }
    }

    pub async fn flag_record(&self, name: &str, key: &str) -> (u64, Option<FlagRecord>) {
        let keys = Keys::new(&namespace(name));
        let mut connection = self.redis.clone();
        let stored = load_flag(&mut connection, &keys, key)
            .await
            .expect("load flag");
        (stored.version, stored.record)
    }

    pub async fn rollout_record(&self, name: &str, rollout_id: &str) -> RolloutRecord {
        let keys = Keys::new(&namespace(name));
        let mut connection = self.redis.clone();
        load_rollout(&mut connection, &keys, rollout_id)
            .await
            .expect("load rollout")
            .expect("rollout exists")
    }

    /// `flag.create`, committed but not published.
    pub async fn commit_create_flag(&self, name: &str, flag: Flag) -> Committed {
        self.register_namespace(name).await;
        let now = self.now().await;
        let (version, existing) = self.flag_record(name, &flag.key).await;
        assert!(existing.is_none(), "flag {} exists", flag.key);
        let mut change = Change::of_flag(&flag.key, version);
        change.flag = Some(FlagRecord {
            flag,
            active_rollout: None,
            last_rollout: None,
            created_at: now,
            updated_at: now,
        });
        change.flag_created = true;
        change.happened = vec![Happened::event(EventKind::FlagCreated, None)];
        self.commit(name, change, now).await
    }

    /// `flag.create`, published.
    pub async fn create_flag(&self, name: &str, flag: Flag) -> u64 {
        let committed = self.commit_create_flag(name, flag).await;
        self.publish(name, &committed).await;
        committed.version
    }

    /// `flag.update` (replaces the definition), committed but not published.
    pub async fn commit_update_flag(&self, name: &str, flag: Flag) -> Committed {
        let now = self.now().await;
        let (version, existing) = self.flag_record(name, &flag.key).await;
        let existing = existing.expect("flag exists");
        let active = match &existing.active_rollout {
            Some(id) => Some(self.rollout_record(name, id).await),
            None => None,
        };
        let mut change = Change::of_flag(&flag.key, version);
        change.flag = Some(FlagRecord {
            flag,
            updated_at: now,
            ..existing
        });
        change.happened = vec![Happened::event(EventKind::FlagUpdated, None)];
        self.commit(name, change.keeping_active(active.as_ref()), now)
            .await
    }

    /// `flag.update`, published.
    pub async fn update_flag(&self, name: &str, flag: Flag) -> u64 {
        let committed = self.commit_update_flag(name, flag).await;
        self.publish(name, &committed).await;
        committed.version
    }

    /// `flag.delete`, committed but not published.
    pub async fn commit_delete_flag(&self, name: &str, key: &str) -> Committed {
        let now = self.now().await;
        let (version, _) = self.flag_record(name, key).await;
        let mut change = Change::of_flag(key, version);
        change.happened = vec![Happened::event(EventKind::FlagDeleted, None)];
        self.commit(name, change, now).await
    }

    /// `flag.delete`, published.
    pub async fn delete_flag(&self, name: &str, key: &str) -> u64 {
        let committed = self.commit_delete_flag(name, key).await;
        self.publish(name, &committed).await;
        committed.version
    }

    /// `rollout.create` as the planner decides it (compile, create, settle the flag),
    /// committed but not published. Returns the rollout id too.
    pub async fn commit_create_rollout(
        &self,
        name: &str,
        spec: RolloutSpec,
        salt: &str,
    ) -> (String, Committed) {
        let now = self.now().await;
        let (version, record) = self.flag_record(name, &spec.flag).await;
        let record = record.expect("flag exists");
        let context = CompileContext {
            now,
            min_phase_interval: DEFAULT_MIN_PHASE_INTERVAL,
            fresh_salt: salt,
        };
        let plan = compile(&spec, &record.flag, &context).expect("spec compiles");
        let rollout_id = format!("r-{salt}");
        let created = transition::create(
            &record,
            NewRollout {
                id: rollout_id.clone(),
                namespace: name.to_owned(),
                spec: spec.clone(),
                plan,
                created_by: None,
                traceparent: None,
            },
            now,
        );
        let change = Change::rollout_created(version, false, created);
        (rollout_id, self.commit(name, change, now).await)
    }

    /// `rollout.create`, published.
    pub async fn create_rollout(&self, name: &str, spec: RolloutSpec, salt: &str) -> String {
        let (rollout_id, committed) = self.commit_create_rollout(name, spec, salt).await;
        self.publish(name, &committed).await;
        rollout_id
    }

    /// A rollout command (`continue`, `pause`, ...) through the step function, committed
    /// but not published.
    pub async fn commit_rollout_event(
        &self,
        name: &str,
        rollout_id: &str,
        event: Event,
    ) -> Committed {
        let now = self.now().await;
        let rollout = self.rollout_record(name, rollout_id).await;
        let (version, record) = self.flag_record(name, &rollout.plan.flag).await;
        let record = record.expect("flag exists");
        let moved = transition::apply(&record, &rollout, &event, now).expect("event applies");
        let change = Change::rollout_moved(version, &rollout.state, moved);
        self.commit(name, change, now).await
    }

    /// A rollout command, published. Returns the flag's new version.
    pub async fn rollout_event(&self, name: &str, rollout_id: &str, event: Event) -> u64 {
        let committed = self.commit_rollout_event(name, rollout_id, event).await;
        self.publish(name, &committed).await;
        committed.version
    }
}

fn actor() -> Actor {
    Actor {
        name: "test".into(),
        command_id: None,
        trace_id: None,
        reason: None,
    }
}

/// A two-variation boolean flag with rule `beta` (`plan in [beta]` → on), default off.
pub fn checkout_flag(key: &str) -> Flag {
    serde_json::from_value(serde_json::json!({
        "key": key,
        "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
        "off_variation": "off",
        "default": {"variation": "off"},
        "rules": [{"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
                   "serve": {"variation": "on"}}],
    }))
    .expect("flag")
}

/// A phases rollout of `flag`'s default serve from off to on.
pub fn phases(flag: &str, percentages: &[f64]) -> RolloutSpec {
    let phases: Vec<serde_json::Value> = percentages
        .iter()
        .map(|percentage| serde_json::json!({"percentage": percentage, "duration": "1h"}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "flag": flag, "baseline": "off", "candidate": "on", "phases": phases,
    }))
    .expect("spec")
}

/// Sends `body` (given as JSON, sent in `encoding`) to `subject` and decodes the reply.
pub async fn request(
    client: &async_nats::Client,
    subject: String,
    body: &serde_json::Value,
    encoding: Encoding,
) -> Result<serde_json::Value, WireError> {
    let payload = codec::encode(body, encoding).expect("encodes");
    request_bytes(client, subject, payload, encoding).await
}

/// Sends raw bytes labelled with `encoding` and decodes the reply.
pub async fn request_bytes(
    client: &async_nats::Client,
    subject: String,
    payload: Vec<u8>,
    encoding: Encoding,
) -> Result<serde_json::Value, WireError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, encoding.content_type());
    let reply = tokio::time::timeout(
        PATIENCE,
        client.request_with_headers(subject, headers, payload.into()),
    )
    .await
    .expect("reply in time")
    .expect("request answered");
    decode_reply(&reply.payload, encoding)
}

/// Evaluates over `rollout.eval.<ns>`.
pub async fn eval(
    client: &async_nats::Client,
    name: &str,
    body: &serde_json::Value,
    encoding: Encoding,
) -> Result<serde_json::Value, WireError> {
    request(
        client,
        Subjects::default().eval(&namespace(name)),
        body,
        encoding,
    )
    .await
}

/// An HTTP response (the sandbox's client).
pub use rollout_sandbox::http::Response as HttpResponse;

/// One HTTP/1.1 request on its own connection; panics when the evaluator does not answer.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    rollout_sandbox::http::request(addr, method, path, headers, body, PATIENCE)
        .await
        .unwrap_or_else(|| panic!("{method} {path}: no answer from the evaluator at {addr}"))
}

/// The flag keys of an OFREP bulk response body, in order.
pub fn bulk_keys(body: &serde_json::Value) -> Vec<String> {
    body["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|flag| flag["key"].as_str().map(str::to_owned))
        .collect()
}

/// OFREP single evaluation of `key` for `context` on one replica.
pub async fn ofrep(
    addr: SocketAddr,
    name: &str,
    key: &str,
    context: serde_json::Value,
) -> HttpResponse {
    let body = serde_json::to_vec(&serde_json::json!({"context": context})).expect("json");
    http(
        addr,
        "POST",
        &format!("/ofrep/v1/evaluate/flags/{key}"),
        &[
            ("Content-Type", "application/json"),
            ("X-Rollout-Namespace", name),
        ],
        &body,
    )
    .await
}

/// Servers for one test.
pub struct Servers {
    pub nats: NatsServer,
    pub redis: RedisServer,
}

impl Servers {
    pub fn start() -> Servers {
        Servers {
            nats: NatsServer::start().expect("nats starts"),
            redis: RedisServer::start().expect("redis starts"),
        }
    }

    pub fn config(&self) -> EvaluatorConfig {
        config(&self.nats.url(), &self.redis.url())
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.redis.url(), &[self.nats.url()]).await
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.nats.url())
            .await
            .expect("nats connects")
    }
}
