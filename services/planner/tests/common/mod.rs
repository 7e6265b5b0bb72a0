//! A private NATS + Redis pair with planners running in process, and a JSON client.
#![allow(dead_code)]

use std::time::Duration;

use planner::{Planner, PlannerConfig};
use rollout_runtime::shutdown::Shutdown;
use rollout_testkit::{NatsServer, RedisServer};
use serde_json::{json, Value};

pub struct Cluster {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub client: async_nats::Client,
    pub planners: Vec<(Shutdown, Option<Planner>)>,
}

pub fn config(nats: &NatsServer, redis: &RedisServer) -> PlannerConfig {
    let mut config = PlannerConfig::default();
    config.nats.url = nats.url();
    config.redis.url = redis.url();
    config.planner.min_phase_interval = Duration::from_secs(300);
    config.planner.relay_interval = Duration::from_millis(100);
    config.planner.relay_grace = Duration::from_millis(500);
    config.planner.stream_ack_wait = Duration::from_secs(2);
    config
}

impl Cluster {
    pub async fn start(planners: usize) -> Cluster {
        rollout_runtime::telemetry::init_for_tests();
        let nats = NatsServer::start().expect("nats starts");
        let redis = RedisServer::start().expect("redis starts");
        let client = async_nats::connect(nats.url())
            .await
            .expect("client connects");
        let mut cluster = Cluster {
            nats,
            redis,
            client,
            planners: Vec::new(),
        };
        for _ in 0..planners {
            cluster.add_planner().await;
        }
        cluster
    }

    pub async fn add_planner(&mut self) {
        let shutdown = Shutdown::new();
        let planner = Planner::start(config(&self.nats, &self.redis), shutdown.clone())
            .await
            .expect("planner starts");
        self.planners.push((shutdown, Some(planner)));
    }

    pub async fn stop_planners(&mut self) {
        for (shutdown, planner) in &mut self.planners {
            shutdown.trigger();
            if let Some(planner) = planner.take() {
                planner.wait().await;
            }
        }
    }

    /// Sends a JSON request and returns the whole reply envelope.
    pub async fn request(&self, subject: &str, body: Value) -> Value {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        let payload = serde_json::to_vec(&body).expect("json");
        self.raw_request(subject, headers, payload).await
    }

    pub async fn raw_request(
        &self,
        subject: &str,
        headers: async_nats::HeaderMap,
        payload: Vec<u8>,
    ) -> Value {
        let json = headers
            .get("Content-Type")
            .is_some_and(|value| value.as_str() == "application/json");
        let reply = tokio::time::timeout(
            Duration::from_secs(20),
            self.client
                .request_with_headers(subject.to_owned(), headers, payload.into()),
        )
        .await
        .expect("reply within 20 s")
        .expect("request succeeds");
        if json {
            serde_json::from_slice(&reply.payload).expect("json reply")
        } else {
            rmp_serde::from_slice(&reply.payload).expect("msgpack reply")
        }
    }

    /// `rollout.cmd.<ns>.<verb>` with a JSON body; returns the envelope.
    pub async fn command(&self, verb: &str, body: Value) -> Value {
        self.request(&format!("rollout.cmd.test.{verb}"), body)
            .await
    }

    /// `rollout.query.<ns>.<what>`; returns the envelope.
    pub async fn query(&self, what: &str, body: Value) -> Value {
        self.request(&format!("rollout.query.test.{what}"), body)
            .await
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connects")
    }

    /// Every key with its type and DUMP, sorted: equal dumps mean an unchanged database.
    pub async fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut connection = self.redis().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut connection)
            .await
            .expect("keys");
        keys.sort();
        let mut rows = Vec::new();
        for key in keys {
            let dumped: Vec<u8> = redis::cmd("DUMP")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .expect("dump");
            rows.push((key, dumped));
        }
        rows
    }
}

/// The result of an `ok: true` envelope, or a panic naming the error.
pub fn ok(reply: &Value) -> &Value {
    assert_eq!(reply["ok"], json!(true), "expected ok, got {reply}");
    &reply["result"]
}

/// The error of an `ok: false` envelope: (code, field).
pub fn error(reply: &Value) -> (String, Option<String>) {
    assert_eq!(reply["ok"], json!(false), "expected an error, got {reply}");
    let error = &reply["error"];
    (
        error["code"].as_str().expect("code").to_owned(),
        error
            .get("field")
            .and_then(Value::as_str)
            .map(str::to_owned),
    )
}

pub fn flag_body(key: &str) -> Value {
    json!({"key": key, "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
           "off_variation": "off", "enabled": true, "default": {"variation": "off"},
           "rules": [{"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
                      "serve": {"variation": "on"}}]})
}

pub async fn create_flag(cluster: &Cluster, key: &str) {
    ok(&cluster
        .command("flag.create", json!({"flag": flag_body(key)}))
        .await);
}

/// Creates a running three-phase rollout (5 % for 1 h, 50 % for 1 h, 100 %) and returns its id.
pub async fn create_rollout(cluster: &Cluster, flag: &str) -> String {
    let reply = cluster
        .command("rollout.create", json!({"rollout": {"flag": flag, "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 5, "duration": "1h"}, {"percentage": 50, "duration": "1h"}, {"percentage": 100}]}}))
        .await;
    ok(&reply)["rollout_id"]
        .as_str()
        .expect("rollout id")
        .to_owned()
}

/// The kinds of the audit entries `query` (`{"rollout_id"|"flag", "page_size"}`) reads,
/// oldest first.
pub async fn audit_kinds_oldest_first(cluster: &Cluster, query: Value) -> Vec<String> {
    let audit = cluster.query("rollout.audit", query).await;
    ok(&audit)["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .rev()
        .map(|entry| entry["kind"].as_str().expect("kind").to_owned())
        .collect()
}
