//! The sandbox with planners running in process, and a JSON client for their subjects (the
//! planner's tests speak the wire as any client does, envelopes and all).
#![allow(dead_code)]

use std::time::Duration;

use rollout_sandbox::Sandbox;
use serde_json::{json, Value};

/// A sandbox (private servers, planners in process) in namespace `test`, with a JSON
/// client for the planner's subjects.
pub struct Cluster {
    pub sandbox: Sandbox,
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
    /// `planners` planner replicas; manual schedule steps at least 5 minutes apart.
    pub async fn start(planners: usize) -> Cluster {
        let sandbox = Sandbox::builder()
            .namespace("test")
            .planners(planners)
            .planner_config(|config| {
                config.planner.min_phase_interval = Duration::from_secs(300);
            })
            .start()
            .await;
        Cluster { sandbox }
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
