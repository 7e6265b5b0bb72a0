//! The sandbox (`rollout-sandbox`) in namespace `test` with a planner and, when asked, an
//! evaluator, and SDK clients pointed at them (rolloutctl's tests use it too).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use planner::PlannerConfig;
use rollout_sandbox::Sandbox;
use rollout_sdk::{CommandClient, Namespace};
use rollout_testkit::{NatsServer, RedisServer};

/// The namespace the tests work in.
pub const NS: &str = "test";
/// Bound on waiting for what should take milliseconds; only failures reach it.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn namespace() -> Namespace {
    Namespace::new(NS).expect("valid namespace")
}

/// The sandbox in namespace [`NS`]: servers, a planner and, when asked, an evaluator.
pub struct Cluster {
    pub sandbox: Sandbox,
}

impl std::ops::Deref for Cluster {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

/// A planner's configuration for servers started by hand (a test that needs NATS users).
pub fn planner_config(nats: &NatsServer, redis: &RedisServer) -> PlannerConfig {
    rollout_sandbox::planner_config(
        rollout_sandbox::nats_settings(&nats.url()),
        rollout_sandbox::redis_settings(&redis.url()),
    )
}

impl Cluster {
    /// Servers and a planner.
    pub async fn start() -> Cluster {
        Cluster::start_with(1, 0).await
    }

    /// Servers, a planner and an evaluator that is ready.
    pub async fn with_evaluator() -> Cluster {
        Cluster::start_with(1, 1).await
    }

    /// Servers only: nothing answers commands or evaluations.
    pub async fn servers_only() -> Cluster {
        Cluster::start_with(0, 0).await
    }

    async fn start_with(planners: usize, evaluators: usize) -> Cluster {
        let sandbox = Sandbox::builder()
            .namespace(NS)
            .planners(planners)
            .evaluators(evaluators)
            .start()
            .await;
        Cluster { sandbox }
    }

    pub fn commands(&self) -> CommandClient {
        CommandClient::new(self.client.clone(), namespace()).with_actor("sdk-test")
    }

    /// The evaluator's served version of `flag`.
    pub fn served_version(&self, flag: &str) -> Option<u64> {
        self.evaluators()
            .first()
            .and_then(|handle| handle.served_version(NS, flag))
    }

    pub async fn stop(self) {
        self.sandbox.stop().await;
    }
}

/// `deploy/examples/<name>` in the workspace.
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/examples")
        .join(name)
}

/// Polls `check` until it holds, or panics after [`PATIENCE`].
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

/// The flag of `deploy/examples/flag.yaml` under another key, as JSON.
pub fn flag_json(key: &str) -> serde_json::Value {
    serde_json::json!({"key": key, "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
        "off_variation": "off", "enabled": true, "default": {"variation": "off"},
        "rules": [{"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
                   "serve": {"variation": "on"}}]})
}

pub fn flag(key: &str) -> rollout_sdk::Flag {
    serde_json::from_value(flag_json(key)).expect("flag")
}

pub fn spec(value: serde_json::Value) -> rollout_sdk::RolloutSpec {
    serde_json::from_value(value).expect("spec")
}
