//! The console in process beside a sandboxed system (planner, ticker, evaluator on private
//! NATS and Redis), with two accounts: `alice`, an operator, and `bob`, a viewer.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use rollout_console::auth::{hash_password, token_digest, Role};
use rollout_console::config::{
    Account, ConsoleConfig, ConsoleSettings, HttpSettings, Listed, TokenAccount,
};
use rollout_console::ConsoleHandle;
use rollout_runtime::config::Secret;
use rollout_runtime::shutdown::Shutdown;
use rollout_sandbox::Sandbox;

pub const ALICE_PASSWORD: &str = "alice-in-wonderland";
pub const BOB_PASSWORD: &str = "bob-the-viewer";
pub const SCRIPT_TOKEN: &str = "a-long-random-token-for-scripts";
pub const SESSION_KEY: &str = "0123456789abcdef0123456789abcdef-test-key";

/// The console's configuration for `sandbox`, listening on `listen`.
pub fn console_config(sandbox: &Sandbox, listen: SocketAddr) -> ConsoleConfig {
    ConsoleConfig {
        nats: sandbox.nats_settings(),
        http: HttpSettings { listen },
        console: ConsoleSettings {
            namespaces: Listed(vec![sandbox.namespace().to_string()]),
            users: Listed(vec![
                Account {
                    name: "alice".to_owned(),
                    role: Role::Operator,
                    password_hash: Secret::new(hash_password(ALICE_PASSWORD).expect("hash")),
                },
                Account {
                    name: "bob".to_owned(),
                    role: Role::Viewer,
                    password_hash: Secret::new(hash_password(BOB_PASSWORD).expect("hash")),
                },
            ]),
            tokens: Listed(vec![TokenAccount {
                name: "deploy-bot".to_owned(),
                role: Role::Operator,
                sha256: Secret::new(token_digest(SCRIPT_TOKEN)),
            }]),
            session_key: Some(Secret::new(SESSION_KEY)),
            trace_url: Some("http://jaeger.example/trace/{trace_id}".to_owned()),
            request_timeout: Duration::from_secs(5),
            ..ConsoleSettings::default()
        },
        ..ConsoleConfig::default()
    }
}

/// A console serving `sandbox`.
pub struct RunningConsole {
    pub handle: Option<ConsoleHandle>,
    pub shutdown: Shutdown,
    pub addr: SocketAddr,
    config: ConsoleConfig,
}

impl RunningConsole {
    /// Starts a console on a free port.
    pub async fn start(sandbox: &Sandbox) -> RunningConsole {
        let config = console_config(sandbox, SocketAddr::from(([127, 0, 0, 1], 0)));
        let shutdown = Shutdown::new();
        let handle = rollout_console::start(config.clone(), shutdown.clone())
            .await
            .expect("console starts");
        let addr = handle.addr();
        RunningConsole {
            handle: Some(handle),
            shutdown,
            addr,
            config: ConsoleConfig {
                http: HttpSettings { listen: addr },
                ..config
            },
        }
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops it.
    pub async fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(handle) = self.handle.take() {
            handle.stopped().await;
        }
    }

    /// Starts it again on the same port, with the same key (sign-ins survive).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.shutdown = Shutdown::new();
        let handle = rollout_sandbox::wait_until("the console's port to be free again", || async {
            rollout_console::start(self.config.clone(), self.shutdown.clone())
                .await
                .ok()
        })
        .await;
        self.handle = Some(handle);
    }
}

/// `flag` with variations `v1` and `v2`, serving `v1`: what label stages move.
pub fn versioned_flag(key: &str) -> rollout_sdk::Flag {
    serde_json::from_value(serde_json::json!({
        "key": key,
        "variations": [{"id": "v1", "value": "1.0"}, {"id": "v2", "value": "2.0"}],
        "off_variation": "v1", "enabled": true, "default": {"variation": "v1"}, "rules": [],
    }))
    .expect("flag")
}

pub fn spec(value: serde_json::Value) -> rollout_sdk::RolloutSpec {
    serde_json::from_value(value).expect("spec")
}

/// Flag `checkout` (off/on) and one rollout of it with `plan` (`phases`, `preset`, …
/// merged into the spec), as an operator creates them over NATS.
pub async fn checkout_rollout(
    sandbox: &Sandbox,
    plan: serde_json::Value,
) -> rollout_wire::RolloutResult {
    let operator = sandbox.operator();
    operator
        .create_flag(rollout_sandbox::boolean_flag("checkout"))
        .await
        .expect("flag");
    let mut rollout = serde_json::json!({"flag": "checkout", "baseline": "off", "candidate": "on"});
    for (key, value) in plan.as_object().expect("an object").clone() {
        rollout[key] = value;
    }
    operator
        .create_rollout(spec(rollout))
        .await
        .expect("rollout")
}
