//! A private NATS + Redis pair (the test kit) with a planner and, when asked, an evaluator
//! running in process, and SDK clients pointed at them (rolloutctl's tests use it too).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use evaluator::{Evaluator, EvaluatorConfig, EvaluatorHandle};
use planner::{Planner, PlannerConfig};
use rollout_runtime::config::{NatsSettings, RedisSettings};
use rollout_runtime::shutdown::Shutdown;
use rollout_sdk::{CommandClient, EvalClient, Namespace};
use rollout_testkit::{NatsServer, RedisServer};

/// The namespace the tests work in.
pub const NS: &str = "test";
/// Bound on waiting for what should take milliseconds; only failures reach it.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn namespace() -> Namespace {
    Namespace::new(NS).expect("valid namespace")
}

pub struct Cluster {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub client: async_nats::Client,
    shutdown: Shutdown,
    planner: Option<Planner>,
    evaluator: Option<EvaluatorHandle>,
}

pub fn planner_config(nats: &NatsServer, redis: &RedisServer) -> PlannerConfig {
    let mut config = PlannerConfig::default();
    config.nats.url = nats.url();
    config.redis.url = redis.url();
    config.planner.relay_interval = Duration::from_millis(100);
    config.planner.relay_grace = Duration::from_millis(500);
    config.planner.stream_ack_wait = Duration::from_secs(2);
    config.planner.drain_grace = Duration::from_secs(2);
    config
}

fn evaluator_config(nats: &NatsServer, redis: &RedisServer) -> EvaluatorConfig {
    let mut config = EvaluatorConfig {
        nats: NatsSettings {
            url: nats.url(),
            connect_timeout: Duration::from_secs(5),
            ..NatsSettings::default()
        },
        redis: RedisSettings {
            url: redis.url(),
            connect_timeout: Duration::from_secs(5),
            ..RedisSettings::default()
        },
        ..EvaluatorConfig::default()
    };
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.namespace = NS.to_owned();
    config.evaluator.shutdown_grace = Duration::from_secs(2);
    config.evaluator.reconnect_check_interval = Duration::from_millis(100);
    config
}

impl Cluster {
    /// Servers and a planner.
    pub async fn start() -> Cluster {
        Cluster::start_with(true, false).await
    }

    /// Servers, a planner and an evaluator that is ready.
    pub async fn with_evaluator() -> Cluster {
        Cluster::start_with(true, true).await
    }

    /// Servers only: nothing answers commands or evaluations.
    pub async fn servers_only() -> Cluster {
        Cluster::start_with(false, false).await
    }

    async fn start_with(planner: bool, evaluator: bool) -> Cluster {
        rollout_runtime::telemetry::init_for_tests();
        let nats = NatsServer::start().expect("nats starts");
        let redis = RedisServer::start().expect("redis starts");
        let client = async_nats::connect(nats.url())
            .await
            .expect("client connects");
        let shutdown = Shutdown::new();
        let planner = if planner {
            Some(
                Planner::start(planner_config(&nats, &redis), shutdown.clone())
                    .await
                    .expect("planner starts"),
            )
        } else {
            None
        };
        let evaluator = if evaluator {
            let handle = Evaluator::start(evaluator_config(&nats, &redis), shutdown.clone())
                .await
                .expect("evaluator starts");
            tokio::time::timeout(PATIENCE, handle.ready())
                .await
                .expect("evaluator becomes ready");
            Some(handle)
        } else {
            None
        };
        Cluster {
            nats,
            redis,
            client,
            shutdown,
            planner,
            evaluator,
        }
    }

    pub fn commands(&self) -> CommandClient {
        CommandClient::new(self.client.clone(), namespace()).with_actor("sdk-test")
    }

    pub async fn eval_client(&self) -> EvalClient {
        EvalClient::connect(self.client.clone(), namespace())
            .await
            .expect("eval client connects")
    }

    /// The evaluator's served version of `flag`.
    pub fn served_version(&self, flag: &str) -> Option<u64> {
        self.evaluator
            .as_ref()
            .and_then(|handle| handle.served_version(NS, flag))
    }

    /// Waits until the evaluator serves `flag` at `version` or later.
    pub async fn until_served(&self, flag: &str, version: u64) {
        eventually(
            &format!("the evaluator serves {flag} v{version}"),
            move || async move {
                self.served_version(flag)
                    .is_some_and(|served| served >= version)
            },
        )
        .await;
    }

    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(evaluator) = self.evaluator.take() {
            evaluator.wait().await;
        }
        if let Some(planner) = self.planner.take() {
            planner.wait().await;
        }
    }
}

/// `deploy/examples/<name>` in the workspace.
pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/examples")
        .join(name)
}

/// Polls `check` every 20 ms until it holds, or panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
