//! The whole system in process on test-kit servers — the sandbox [`Cluster`] (a planner,
//! two evaluators) and three tickers — driven only through the SDK and the NATS subjects,
//! as users drive it. After every state change a test makes, the served-content oracle
//! asserts that every replica (OFREP and NATS) and fleet `desired` serve what the state
//! committed in Redis gives (SPEC §11.1, `support::oracle`). The tests:
//!
//! - a phased rollout (10 % for 1 s, 50 % for 1 s, 100 %) reaches every evaluator step by
//!   step, in order, each serving the step's share, never an older version after a newer;
//! - a label-stage rollout with simulated fleet agents: registration by labels, desired
//!   variations per released stage, applied/failed reports in the stage counts, `continue`
//!   releasing the next stage, an agent joining mid-rollout;
//! - guards judge their own rollout: a re-run after a guard rollback is not judged by the
//!   first rollout's outcomes, and a rollout resumed after a guard pause is judged only on
//!   outcomes since the resume;
//! - malformed and out-of-range input on every subject (commands, the durable stream,
//!   queries, evaluation, fleet, outcomes) gets an error reply where a reply is possible
//!   and leaves Redis exactly as it was;
//! - every flag edit allowed while a rollout runs (description, a value, a non-target rule,
//!   the kill switch) keeps the rollout served, and a freshly started evaluator agrees;
//! - a flag edit whose event is too large for NATS's `max_payload` goes out without its
//!   snapshot, and every replica still serves the edit (read from Redis);
//! - a new evaluator agrees with running ones after several transitions (steps, pause,
//!   resume, stop leaving a split, a second rollout continuing it);
//! - an approval gate holds its step's share until two distinct actors approved it (a stale
//!   approval, a repeated one and `continue` are refused), then its timer runs from the
//!   approval; the audit names the approvers;
//! - a reschedule replaces the steps after the current one: stale, backwards and
//!   unanchored edits are refused and change nothing; an accepted one moves nobody at the
//!   edit, its steps then run, and the audit keeps the old and new steps;
//! - a timer that runs out while the rollout's time windows are closed waits for the next
//!   opening (status, ETA and the ticker's due index say when); bad windows are refused;
//! - a gradual rollback walks every replica down its shares, each set of adopters a subset
//!   of the one before, until everyone is back on the baseline; walks that do not go down
//!   to 0 are refused;
//! - a namespace freeze holds every timer (commands still act), status says why, and its
//!   end moves the rollout on one step at a time; freezes are audited in the namespace's log;
//! - an alert pauses every active rollout its selector matches (by flag labels), once per
//!   alert id, audited with its reason; an empty selector is refused; a rollback alert by
//!   rollout id rolls it back;
//! - the oracle itself reports a served answer that differs from the committed state
//!   (its positive control).

mod support;

use std::sync::Arc;

use chrono::Datelike;
use std::time::Duration;

use evaluator::EvaluatorHandle;
use futures_util::StreamExt;
use rollout_core::{
    AttributeValue, Entity, Flag, Lifecycle, RolloutView, Share, StageCounts, Target, Timestamp,
    ViewAudience, WaitingFor,
};
use rollout_runtime::shutdown::Shutdown;
use rollout_sdk::{EvalClient, Namespace, RescheduleStepSpec};
use rollout_wire::codec::{self, Encoding};
use rollout_wire::envelope::decode_reply;
use rollout_wire::{AuditQuery, ErrorCode, EventKind, RolloutResult, RolloutStatus};
use serde_json::{json, Value};
use support::cluster::{boolean_flag, report_candidate, Cluster, ClusterOptions};
use support::oracle::{
    assert_served_matches_committed, sample_entities, Committed, CommittedFlag, Expected, Judge,
    Observation, Path, Served, GRACE,
};
use support::{eventually, NS, PATIENCE};
use ticker::{TickerConfig, TickerSettings};

/// The sandbox cluster (servers, a planner, two evaluators, all in process) with tickers
/// in process too.
struct System {
    cluster: Cluster,
    shutdown: Shutdown,
    tickers: Vec<tokio::task::JoinHandle<Result<(), ticker::TickerError>>>,
}

impl System {
    async fn start(tickers: usize) -> System {
        System::start_with(tickers, ClusterOptions::default()).await
    }

    async fn start_with(tickers: usize, options: ClusterOptions) -> System {
        let cluster = Cluster::start(options).await;
        let shutdown = Shutdown::new();
        let tickers = (0..tickers)
            .map(|index| {
                let config = TickerConfig {
                    nats: cluster.nats_settings(),
                    redis: cluster.redis_settings(),
                    ticker: TickerSettings {
                        lease_ttl: Duration::from_secs(1),
                        replica_id: Some(format!("ticker-{index}")),
                        ..TickerSettings::default()
                    },
                    ..TickerConfig::default()
                };
                tokio::spawn(ticker::run(config, shutdown.clone()))
            })
            .collect();
        System {
            cluster,
            shutdown,
            tickers,
        }
    }

    async fn stop(mut self) {
        self.shutdown.trigger();
        self.cluster.shutdown().await;
        for ticker in self.tickers.drain(..) {
            ticker
                .await
                .expect("ticker task")
                .expect("ticker stops cleanly");
        }
    }

    /// Asserts every evaluator serves what the committed state of the namespace gives.
    async fn assert_served_matches_committed(&self) {
        assert_served_matches_committed(&self.cluster).await;
    }

    /// Waits until the status of rollout `id` shows it has `reached` what `what` names;
    /// returns that status.
    async fn rollout_reaches(
        &self,
        id: &str,
        what: &str,
        reached: impl Fn(&RolloutStatus) -> bool,
    ) -> RolloutStatus {
        eventually(&format!("rollout {id} to {what}"), PATIENCE, || async {
            let status = self.cluster.commands.rollout_status(id).await.ok()?;
            reached(&status).then_some(status)
        })
        .await
    }

    /// A JSON request on `subject`; the reply envelope.
    async fn request(&self, subject: &str, payload: Vec<u8>, json: bool) -> Value {
        let mut headers = async_nats::HeaderMap::new();
        if json {
            headers.insert("Content-Type", "application/json");
        }
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            self.cluster
                .client
                .request_with_headers(subject.to_owned(), headers, payload.into()),
        )
        .await
        .unwrap_or_else(|_| panic!("a reply on {subject}"))
        .unwrap_or_else(|error| panic!("request on {subject}: {error}"));
        let encoding = if json {
            Encoding::Json
        } else {
            Encoding::MessagePack
        };
        codec::decode_with::<Value>(&reply.payload, encoding, codec::Limits::SERVICE_OUTPUT)
            .expect("a reply envelope")
    }

    /// Every key with its DUMP, sorted.
    async fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let client = redis::Client::open(self.cluster.redis.url()).expect("url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connects");
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

/// The audit `query` selects, newest first (its first page).
async fn audit_of(
    commands: &rollout_sdk::CommandClient,
    query: AuditQuery,
) -> rollout_wire::AuditPage {
    commands.audit(query).await.expect("audit")
}

/// The entities whose answers measure a served share.
fn population() -> Vec<Entity> {
    (0..2_000)
        .map(|index| Entity::with_id(format!("user-{index}")))
        .collect()
}

/// How many of `population` evaluator `handle` serves `on` for `flag`, and the version.
fn served(handle: &EvaluatorHandle, flag: &str, population: &[Entity]) -> Option<(u64, usize)> {
    handle.snapshot().namespace(NS)?.with_flag(flag, |live| {
        let compiled = live.compiled();
        let on = population
            .iter()
            .filter(|entity| compiled.evaluate(entity).variation == "on")
            .count();
        (compiled.version(), on)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phased_rollout_reaches_every_evaluator_step_by_step() {
    let system = System::start(3).await;
    system
        .cluster
        .commands
        .create_flag(boolean_flag("new-checkout"))
        .await
        .expect("flag created");
    system.assert_served_matches_committed().await;
    let population = population();
    // every evaluator's (version, served share) as it changes
    let watchers: Vec<_> = system
        .cluster
        .evaluators()
        .iter()
        .map(|handle| {
            let handle = Arc::clone(handle);
            let population = population.clone();
            tokio::spawn(async move {
                let mut seen: Vec<(u64, usize)> = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while tokio::time::Instant::now() < deadline {
                    if let Some(now) = served(&handle, "new-checkout", &population) {
                        if seen.last() != Some(&now) {
                            seen.push(now);
                        }
                        if now.1 == population.len() {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            })
        })
        .collect();
    let spec = serde_json::from_value(json!({
        "flag": "new-checkout", "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 10, "duration": "1s"}, {"percentage": 50, "duration": "1s"}, {"percentage": 100}],
    }))
    .expect("spec");
    let created = system
        .cluster
        .commands
        .create_rollout(spec)
        .await
        .expect("rollout created");
    assert_eq!(created.state, Lifecycle::Running);
    // the ticker moves it on meanwhile: each round reads what is committed by then
    system.assert_served_matches_committed().await;
    let status = system
        .rollout_reaches(&created.rollout_id, "complete", |status| {
            status.state == Lifecycle::Completed
        })
        .await;
    system.assert_served_matches_committed().await;
    let version = system
        .cluster
        .commands
        .get_flag("new-checkout")
        .await
        .expect("flag")
        .version;
    let total = population.len();
    for (index, watcher) in watchers.into_iter().enumerate() {
        let seen = watcher.await.expect("watcher");
        println!("evaluator {index} served (version, on of {total}): {seen:?}");
        for pair in seen.windows(2) {
            assert!(
                pair[1].0 > pair[0].0,
                "evaluator {index}: version went back: {seen:?}"
            );
            assert!(
                pair[1].1 >= pair[0].1,
                "evaluator {index}: share went back: {seen:?}"
            );
        }
        // each step's share, in order: ~10 %, ~50 %, 100 %
        let shares: Vec<usize> = seen.iter().map(|(_, on)| *on).collect();
        let near = |on: usize, percent: usize| on.abs_diff(total * percent / 100) <= total / 20;
        let tenth = shares.iter().position(|on| near(*on, 10));
        let half = shares.iter().position(|on| near(*on, 50));
        let all = shares.iter().position(|on| *on == total);
        assert!(
            matches!((tenth, half, all), (Some(a), Some(b), Some(c)) if a < b && b < c),
            "evaluator {index} served the steps out of order or missed one: {seen:?}"
        );
        assert_eq!(
            system.cluster.evaluators()[index].served_version(NS, "new-checkout"),
            Some(version),
            "evaluator {index} converged on the completed state"
        );
    }
    for step in &status.steps {
        assert!(step.started_at.is_some() && !step.skipped, "{step:?}");
    }
    // the SDK sees everyone on the candidate
    let eval = EvalClient::connect(
        system.cluster.client.clone(),
        Namespace::new(NS).expect("ns"),
    )
    .await
    .expect("eval client");
    let answer = eval
        .evaluate("new-checkout", &Entity::with_id("user-7"))
        .await
        .expect("evaluates");
    assert_eq!((answer.variation.as_str(), answer.version), ("on", version));
    system.stop().await;
}

/// A fleet call on `rollout.fleet.prod.<verb>` (MessagePack); the result or the error.
async fn fleet(system: &System, verb: &str, body: Value) -> Result<Value, String> {
    let reply = system
        .request(
            &format!("rollout.fleet.{NS}.{verb}"),
            codec::encode(&body, Encoding::MessagePack).expect("encodes"),
            false,
        )
        .await;
    if reply["ok"] == json!(true) {
        Ok(reply["result"].clone())
    } else {
        Err(reply["error"]["code"].as_str().unwrap_or("?").to_owned())
    }
}

async fn desired(system: &System, agent: &str) -> String {
    fleet(
        system,
        "desired",
        json!({"agent_id": agent, "flag": "agent-version"}),
    )
    .await
    .unwrap_or_else(|code| panic!("desired for {agent}: {code}"))["variation"]
        .as_str()
        .expect("variation")
        .to_owned()
}

async fn stage_counts(system: &System, rollout_id: &str) -> Vec<StageCounts> {
    let status = system
        .cluster
        .commands
        .rollout_status(rollout_id)
        .await
        .expect("status");
    status
        .steps
        .iter()
        .map(|step| step.counts.expect("label stages have counts"))
        .collect()
}

fn counts(members: u64, completed: u64, errors: u64, pending: u64, waiting: u64) -> StageCounts {
    StageCounts {
        members,
        completed,
        errors,
        pending,
        waiting,
        stale: 0,
    }
}

/// Creates flag `key` of agent versions `v1` (`1.0.0`, served) and `v2` (`2.0.0`).
async fn create_version_flag(system: &System, key: &str) {
    let flag = serde_json::from_value(json!({
        "key": key,
        "variations": [{"id": "v1", "value": "1.0.0"}, {"id": "v2", "value": "2.0.0"}],
        "off_variation": "v1", "enabled": true, "default": {"variation": "v1"},
    }))
    .expect("flag");
    system
        .cluster
        .commands
        .create_flag(flag)
        .await
        .expect("flag created");
    system.assert_served_matches_committed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_label_stage_rollout_releases_stages_to_registered_agents() {
    let system = System::start(3).await;
    create_version_flag(&system, "agent-version").await;
    let agents = [
        ("stage-1", json!({"env": "staging"})),
        ("stage-2", json!({"env": "staging", "region": "eu"})),
        ("stage-3", json!({"env": "staging"})),
        ("eu-1", json!({"env": "prod", "region": "eu"})),
        ("eu-2", json!({"env": "prod", "region": "eu"})),
        ("eu-3", json!({"env": "prod", "region": "eu"})),
        ("us-1", json!({"env": "prod", "region": "us"})),
        ("lab-1", json!({})),
    ];
    for (agent, labels) in &agents {
        let ack = fleet(
            &system,
            "register",
            json!({"agent_id": agent, "labels": labels}),
        )
        .await
        .expect("registered");
        assert_eq!(ack["agent_id"], json!(agent));
    }
    system.assert_served_matches_committed().await;
    let spec = serde_json::from_value(json!({
        "flag": "agent-version", "baseline": "v1", "candidate": "v2",
        "stages": [{"name": "canary", "labels": {"env": "staging"}},
                   {"name": "prod-eu", "labels": {"env": "prod", "region": "eu"}}],
    }))
    .expect("spec");
    let rollout = system
        .cluster
        .commands
        .create_rollout(spec)
        .await
        .expect("rollout created");
    let id = rollout.rollout_id.clone();
    assert_eq!(
        rollout.current_step,
        Some(0),
        "starting releases the first stage"
    );
    system.assert_served_matches_committed().await;

    // stage 1 only: the canaries move, nobody else
    for (agent, _) in &agents {
        let expected = if agent.starts_with("stage-") {
            "v2"
        } else {
            "v1"
        };
        let got = eventually(
            &format!("{agent}'s desired variation"),
            PATIENCE,
            || async {
                let got = desired(&system, agent).await;
                (got == expected).then_some(got)
            },
        )
        .await;
        assert_eq!(got, expected, "{agent}");
    }
    for (agent, status) in [
        ("stage-1", "applied"),
        ("stage-2", "applied"),
        ("stage-3", "failed"),
    ] {
        fleet(
            &system,
            "report",
            json!({"agent_id": agent, "flag": "agent-version", "rollout_id": id,
                   "variation": "v2", "status": status}),
        )
        .await
        .expect("report accepted");
    }
    // stages: canary (3 staging agents), prod-eu (3), unassigned (us-1, lab-1)
    let seen = eventually("the reports in the stage counts", PATIENCE, || async {
        let seen = stage_counts(&system, &id).await;
        (seen[0].completed == 2 && seen[0].errors == 1).then_some(seen)
    })
    .await;
    assert_eq!(
        seen,
        vec![
            counts(3, 2, 1, 0, 0),
            counts(3, 0, 0, 0, 3),
            counts(2, 0, 0, 0, 2)
        ]
    );

    // continue releases prod-eu
    let continued = system
        .cluster
        .commands
        .continue_rollout(&id)
        .await
        .expect("continue");
    assert_eq!(continued.current_step, Some(1));
    system.assert_served_matches_committed().await;
    for agent in ["eu-1", "eu-2", "eu-3"] {
        eventually(&format!("{agent} to get v2"), PATIENCE, || async {
            (desired(&system, agent).await == "v2").then_some(())
        })
        .await;
    }
    assert_eq!(
        desired(&system, "us-1").await,
        "v1",
        "unassigned is not released yet"
    );
    // an agent registering mid-rollout joins its stage at once
    fleet(
        &system,
        "register",
        json!({"agent_id": "eu-4", "labels": {"env": "prod", "region": "eu"}}),
    )
    .await
    .expect("registered");
    assert_eq!(desired(&system, "eu-4").await, "v2");
    system.assert_served_matches_committed().await;
    fleet(
        &system,
        "report",
        json!({"agent_id": "eu-1", "flag": "agent-version", "rollout_id": id,
               "variation": "v2", "status": "applied"}),
    )
    .await
    .expect("report");
    let seen = eventually("prod-eu's counts", PATIENCE, || async {
        let seen = stage_counts(&system, &id).await;
        (seen[1].members == 4 && seen[1].completed == 1).then_some(seen)
    })
    .await;
    assert_eq!(seen[1], counts(4, 1, 0, 3, 0));
    assert_eq!(seen[2], counts(2, 0, 0, 0, 2));

    // the last continue releases everyone and completes the rollout
    system
        .cluster
        .commands
        .continue_rollout(&id)
        .await
        .expect("continue");
    system
        .rollout_reaches(&id, "complete", |status| {
            status.state == Lifecycle::Completed
        })
        .await;
    assert_eq!(desired(&system, "lab-1").await, "v2");
    system.assert_served_matches_committed().await;
    system.stop().await;
}

/// Waits until every evaluator serves `flag` at its current version (so outcome reports
/// are attributed to the rollout just committed).
async fn until_served_everywhere(system: &System, flag: &str) {
    let version = system
        .cluster
        .commands
        .get_flag(flag)
        .await
        .expect("flag")
        .version;
    eventually(
        &format!("{flag} v{version} everywhere"),
        PATIENCE,
        || async {
            system
                .cluster
                .evaluators()
                .iter()
                .all(|handle| {
                    handle
                        .served_version(NS, flag)
                        .is_some_and(|v| v >= version)
                })
                .then_some(())
        },
    )
    .await;
}

/// Waits until rollout `rollout_id` has finished, or stopped moving in `state`.
async fn until_settled(system: &System, rollout_id: &str, what: &str) -> RolloutStatus {
    eventually(what, PATIENCE, || async {
        let status = system
            .cluster
            .commands
            .rollout_status(rollout_id)
            .await
            .ok()?;
        (status.state.is_finished() || status.state == Lifecycle::Paused).then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guard_judges_only_its_own_rollout_since_its_last_resume() {
    let system = System::start(1).await;
    let eval = EvalClient::connect(
        system.cluster.client.clone(),
        Namespace::new(NS).expect("ns"),
    )
    .await
    .expect("eval client");
    let guard = |action: &str| json!({"max_error_rate": 5, "min_samples": 20, "window": "1m", "action": action});

    // a candidate that fails: its guard rolls it back
    system
        .cluster
        .commands
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag created");
    let phased = |first_phase: &str| {
        serde_json::from_value(
            json!({"flag": "checkout", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 10, "duration": first_phase}, {"percentage": 100}],
            "guard": guard("rollback")}),
        )
        .expect("spec")
    };
    let first = system
        .cluster
        .commands
        .create_rollout(phased("1h"))
        .await
        .expect("first rollout");
    until_served_everywhere(&system, "checkout").await;
    report_candidate(&eval, ("checkout", "on"), 30, true).await;
    let rolled_back = until_settled(&system, &first.rollout_id, "the first rollout's guard").await;
    assert_eq!(rolled_back.state, Lifecycle::RolledBack);

    // fixed and run again within the guard's window: judged on its own outcomes only
    let second = system
        .cluster
        .commands
        .create_rollout(phased("2s"))
        .await
        .expect("second rollout");
    let settled = until_settled(&system, &second.rollout_id, "the second rollout to end").await;
    assert_eq!(
        settled.state,
        Lifecycle::Completed,
        "the re-run was judged by the first rollout's outcomes"
    );

    // paused by its guard on a stage, then resumed: healthy outcomes since the resume open
    // the stage's completion gate, the ones it was paused for never count again
    create_version_flag(&system, "firmware").await;
    fleet(
        &system,
        "register",
        json!({"agent_id": "edge-1", "labels": {"ring": "canary"}}),
    )
    .await
    .expect("registered");
    let staged = serde_json::from_value(
        json!({"flag": "firmware", "baseline": "v1", "candidate": "v2",
        "stages": [{"name": "canary", "labels": {"ring": "canary"},
                    "gate": {"min_completed_percentage": 50}}],
        "guard": guard("pause")}),
    )
    .expect("spec");
    let third = system
        .cluster
        .commands
        .create_rollout(staged)
        .await
        .expect("staged rollout");
    until_served_everywhere(&system, "firmware").await;
    fleet(
        &system,
        "report",
        json!({"agent_id": "edge-1", "flag": "firmware", "rollout_id": third.rollout_id,
               "variation": "v2", "status": "applied"}),
    )
    .await
    .expect("applied");
    // so many that no number of later successes within the window could outweigh them
    report_candidate(&eval, ("firmware", "v2"), 2_000, true).await;
    let paused = until_settled(&system, &third.rollout_id, "the guard to pause it").await;
    assert_eq!(paused.state, Lifecycle::Paused);
    let first_pause = paused.paused_at;
    system
        .cluster
        .commands
        .resume_rollout(&third.rollout_id)
        .await
        .expect("resumed");
    let completed = eventually(
        "the stage gate to open on fresh outcomes",
        PATIENCE,
        || async {
            // outcomes count in whole 10 s buckets begun after the resume: keep reporting
            report_candidate(&eval, ("firmware", "v2"), 20, false).await;
            let status = system
                .cluster
                .commands
                .rollout_status(&third.rollout_id)
                .await
                .ok()?;
            assert!(
                !(status.state == Lifecycle::Paused && status.paused_at != first_pause),
                "paused again on the outcomes it was paused for: {status:?}"
            );
            (status.state == Lifecycle::Completed).then_some(status)
        },
    )
    .await;
    assert_eq!(completed.current_step, Some(1));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_on_every_subject_gets_an_error_and_changes_nothing() {
    // no tickers: the lease and fence would change Redis on their own
    let system = System::start(0).await;
    system
        .cluster
        .commands
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag");
    system.assert_served_matches_committed().await;
    let spec = serde_json::from_value(json!({
        "flag": "checkout", "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 5, "duration": "1h"}, {"percentage": 100}],
    }))
    .expect("spec");
    let rollout_id = system
        .cluster
        .commands
        .create_rollout(spec)
        .await
        .expect("rollout")
        .rollout_id;
    system.assert_served_matches_committed().await;
    fleet(
        &system,
        "register",
        json!({"agent_id": "edge-1", "labels": {"env": "prod"}}),
    )
    .await
    .expect("registered");
    system.assert_served_matches_committed().await;
    eventually("the outbox to drain", PATIENCE, || async {
        (system.cluster.outbox_len().await == 0).then_some(())
    })
    .await;
    let before = system.dump().await;

    let deep_json = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes();
    let deep_msgpack = {
        let mut bytes = vec![0x91_u8; 10_000];
        bytes.push(0x01);
        bytes
    };
    // NATS itself refuses payloads above its max_payload (1 MiB, the decoders' cap too):
    // this one travels and is refused by the decoder
    let huge = vec![b' '; 1_000_000];
    let truncated = codec::encode(&json!({"flag": boolean_flag("x")}), Encoding::MessagePack)
        .expect("encodes")[..20]
        .to_vec();
    let bomb = vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0x01];
    let garbage: Vec<(&str, Vec<u8>, bool)> = vec![
        ("not json", b"{\"flag\": ".to_vec(), true),
        ("deep json", deep_json.clone(), true),
        ("deep msgpack", deep_msgpack.clone(), false),
        ("near the size cap", huge.clone(), true),
        ("truncated msgpack", truncated.clone(), false),
        ("allocation bomb", bomb.clone(), false),
        ("not an object", b"[1, 2, 3]".to_vec(), true),
    ];
    let json_of = |value: Value| serde_json::to_vec(&value).expect("json");
    // (subject, payload, json?, why) — each must be refused with an error reply
    let mut cases: Vec<(String, Vec<u8>, bool, String)> = Vec::new();
    for (subject, verbs) in [
        (
            "cmd",
            vec![
                "flag.create",
                "flag.update",
                "rollout.create",
                "rollout.stop",
                "rollout.pause",
            ],
        ),
        ("query", vec!["rollout.status", "flag.get", "rollout.audit"]),
        ("fleet", vec!["register", "report", "desired", "heartbeat"]),
    ] {
        for verb in verbs {
            for (why, payload, json) in &garbage {
                cases.push((
                    format!("rollout.{subject}.{NS}.{verb}"),
                    payload.clone(),
                    *json,
                    why.to_string(),
                ));
            }
        }
    }
    for (why, payload, json) in &garbage {
        cases.push((
            format!("rollout.eval.{NS}"),
            payload.clone(),
            *json,
            why.to_string(),
        ));
    }
    // well-formed but wrong: types, unknown fields, out-of-range values, unknown targets
    let out_of_range: Vec<(&str, Value)> = vec![
        (
            "rollout.cmd.prod.rollout.stop",
            json!({"command_id": "bad-1", "rollout_id": rollout_id, "percentage": 250}),
        ),
        (
            "rollout.cmd.prod.rollout.stop",
            json!({"command_id": "bad-2", "rollout_id": rollout_id, "percentage": -1}),
        ),
        (
            "rollout.cmd.prod.rollout.stop",
            json!({"rollout_id": rollout_id, "percentage": "half"}),
        ),
        (
            "rollout.cmd.prod.rollout.pause",
            json!({"command_id": "bad-3", "rollout_id": "r-does-not-exist"}),
        ),
        (
            "rollout.cmd.prod.rollout.pause",
            json!({"command_id": "bad id with spaces", "rollout_id": rollout_id}),
        ),
        (
            "rollout.cmd.prod.flag.create",
            json!({"command_id": "bad-4", "flag": {"key": "x", "variations": [], "off_variation": "off", "default": {"variation": "off"}}}),
        ),
        (
            "rollout.cmd.prod.flag.create",
            json!({"command_id": "bad-5", "flag": boolean_flag("checkout")}),
        ),
        (
            "rollout.cmd.prod.flag.create",
            json!({"flag": boolean_flag("y"), "surprise": true}),
        ),
        (
            "rollout.cmd.prod.rollout.create",
            json!({"command_id": "bad-6", "rollout": {"flag": "checkout", "baseline": "off", "candidate": "on", "phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 10}]}}),
        ),
        (
            "rollout.cmd.prod.rollout.create",
            json!({"command_id": "bad-7", "rollout": {"flag": "checkout", "baseline": "off", "candidate": "on", "phases": [{"percentage": 100.00001}]}}),
        ),
        ("rollout.cmd.prod.flag.explode", json!({})),
        (
            "rollout.cmd.te$t.flag.create",
            json!({"flag": boolean_flag("z")}),
        ),
        (
            "rollout.query.prod.rollout.audit",
            json!({"rollout_id": rollout_id, "page": {"size": 100000}}),
        ),
        (
            "rollout.query.prod.rollout.status",
            json!({"rollout_id": 7}),
        ),
        (
            "rollout.eval.prod",
            json!({"flag": "checkout", "flags": ["checkout"], "entity": {"id": "u"}}),
        ),
        (
            "rollout.eval.prod",
            json!({"flag": "checkout", "entity": {"id": "x".repeat(300)}}),
        ),
        (
            "rollout.eval.prod",
            json!({"flag": "checkout", "entity": {"id": "u", "attributes": {"a": {"nested": 1}}}}),
        ),
        (
            "rollout.eval.prod",
            json!({"flag": "no-such-flag", "entity": {"id": "u"}}),
        ),
        (
            "rollout.fleet.prod.register",
            json!({"agent_id": "", "labels": {}}),
        ),
        (
            "rollout.fleet.prod.register",
            json!({"agent_id": "edge-2", "labels": {"env": 5}}),
        ),
        (
            "rollout.fleet.prod.report",
            json!({"agent_id": "edge-1", "flag": "checkout", "variation": "on", "status": "exploded"}),
        ),
        ("rollout.fleet.prod.heartbeat", json!({"agent_id": "ghost"})),
        (
            "rollout.fleet.prod.desired",
            json!({"agent_id": "edge-1", "flag": "no-such-flag"}),
        ),
        ("rollout.fleet.prod.teleport", json!({"agent_id": "edge-1"})),
    ];
    for (subject, body) in out_of_range {
        for json in [true, false] {
            let payload = if json {
                json_of(body.clone())
            } else {
                codec::encode(&body, Encoding::MessagePack).expect("encodes")
            };
            cases.push((subject.to_owned(), payload, json, format!("{body}")));
        }
    }
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for (subject, payload, json, why) in &cases {
        let reply = system.request(subject, payload.clone(), *json).await;
        assert_eq!(
            reply["ok"],
            json!(false),
            "{subject} ({why:.80}) was accepted: {reply}"
        );
        let code = reply["error"]["code"]
            .as_str()
            .expect("an error code")
            .to_owned();
        assert!(
            [
                "invalid_argument",
                "not_found",
                "conflict",
                "failed_precondition"
            ]
            .contains(&code.as_str()),
            "{subject} ({why:.80}): {reply}"
        );
        *codes.entry(code).or_default() += 1;
    }
    println!("{} bad requests refused: {codes:?}", cases.len());

    // outcome reports get no reply: bad ones are counted and dropped
    let outcome_messages = garbage.len() + 3;
    for (_, payload, json) in &garbage {
        let mut headers = async_nats::HeaderMap::new();
        if *json {
            headers.insert("Content-Type", "application/json");
        }
        system
            .cluster
            .client
            .publish_with_headers(
                format!("rollout.metrics.{NS}"),
                headers,
                payload.clone().into(),
            )
            .await
            .expect("publish");
    }
    for body in [
        json!({"flag": "checkout", "entity": {"id": "u"}, "variation": "on", "outcome": "meh"}),
        json!({"outcomes": [{"flag": "no-such-flag", "entity": {"id": "u"}, "variation": "on", "outcome": "error"}]}),
        json!({"flag": "checkout", "entity": {"id": "u"}, "variation": "on", "outcome": "error", "value": "NaN"}),
    ] {
        system
            .cluster
            .client
            .publish(
                format!("rollout.metrics.{NS}"),
                codec::encode(&body, Encoding::MessagePack)
                    .expect("encodes")
                    .into(),
            )
            .await
            .expect("publish");
    }

    // the durable stream: every bad command is consumed (acknowledged, not redelivered
    // forever); those that name a command id get an error outcome
    let mut outcomes = system
        .cluster
        .client
        .subscribe("rollout.outcome.>")
        .await
        .expect("subscribe");
    system.cluster.client.flush().await.expect("flush");
    let jetstream = async_nats::jetstream::new(system.cluster.client.clone());
    let mut queued = 0;
    for (_, payload, json) in &garbage {
        let mut headers = async_nats::HeaderMap::new();
        if *json {
            headers.insert("Content-Type", "application/json");
        }
        jetstream
            .publish_with_headers(
                format!("rollout.cmdq.{NS}.rollout.stop"),
                headers,
                payload.clone().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        queued += 1;
    }
    let with_ids = [
        json!({"command_id": "q-bad-1", "rollout_id": rollout_id, "percentage": 250}),
        json!({"command_id": "q-bad-2", "rollout_id": "r-nope"}),
    ];
    for body in &with_ids {
        jetstream
            .publish(
                format!("rollout.cmdq.{NS}.rollout.stop"),
                codec::encode(body, Encoding::MessagePack)
                    .expect("encodes")
                    .into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        queued += 1;
    }
    let mut refused_outcomes = 0;
    while refused_outcomes < with_ids.len() {
        let message = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("an outcome for each bad queued command with an id")
            .expect("open");
        let outcome: Result<Value, _> = decode_reply(&message.payload, Encoding::MessagePack);
        assert!(outcome.is_err(), "{}: {outcome:?}", message.subject);
        refused_outcomes += 1;
    }
    eventually("the stream to be consumed", PATIENCE, || async {
        let mut stream = jetstream.get_stream("ROLLOUT_CMDS").await.ok()?;
        (stream.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
    println!("{queued} bad queued commands consumed, {refused_outcomes} error outcomes");

    // every replica still serves, outcomes were flushed (nothing valid came), and Redis
    // holds exactly what it held before
    // (each outcome message is counted once it is handled, whatever it comes to)
    eventually("every outcome report to be handled", PATIENCE, || async {
        let handled = outcomes_counted(&system, "");
        (handled >= outcome_messages as f64).then_some(())
    })
    .await;
    let after = system.dump().await;
    let changed: Vec<&String> = after
        .iter()
        .filter(|row| !before.contains(row))
        .map(|(key, _)| key)
        .chain(
            before
                .iter()
                .filter(|row| !after.contains(row))
                .map(|(key, _)| key),
        )
        .collect();
    // Two kinds of write are not state changes and are allowed, reported:
    // - `cmd:<id>`: the planner keeps the first outcome of a command that carried an id
    //   and was refused after a lookup (not_found, conflict, a spec that does not compile),
    //   so a retry with that id gets the same refusal;
    // - `agent:<id>` / `agents`: a well-formed fleet call from a registered agent refreshes
    //   its liveness even when the call is refused (`desired` of an unknown flag).
    let (allowed, state): (Vec<&String>, Vec<&String>) = changed.into_iter().partition(|key| {
        key.starts_with(&format!("ro:{{{NS}}}:cmd:bad-"))
            || key.starts_with(&format!("ro:{{{NS}}}:cmd:q-bad-"))
            || *key == &format!("ro:{{{NS}}}:agent:edge-1")
            || *key == &format!("ro:{{{NS}}}:agents")
    });
    println!("idempotency records and liveness written by refused calls: {allowed:?}");
    assert!(state.is_empty(), "bad input changed redis state: {state:?}");
    let invalid_outcomes = outcomes_counted(&system, "invalid");
    assert!(invalid_outcomes >= 1.0, "bad outcome reports are counted");
    let eval = EvalClient::connect(
        system.cluster.client.clone(),
        Namespace::new(NS).expect("ns"),
    )
    .await
    .expect("eval client");
    eval.evaluate("checkout", &Entity::with_id("u-1"))
        .await
        .expect("the evaluators still serve");
    system.assert_served_matches_committed().await;
    system.stop().await;
}

/// A flag with string variations, a targeting rule (`staff`) and a kill switch that never
/// trips (nobody reports outcomes).
fn checkout_flag() -> Flag {
    serde_json::from_value(json!({
        "key": "checkout",
        "description": "the new checkout page",
        "variations": [{"id": "classic", "value": "blue"}, {"id": "new", "value": "green"}],
        "off_variation": "classic", "enabled": true, "default": {"variation": "classic"},
        "rules": [{"id": "staff", "conditions": [{"attribute": "team", "op": "in", "values": ["staff"]}],
                   "serve": {"variation": "new"}}],
        "kill_switch": {"max_error_rate": 50, "min_samples": 1000000, "window": "5m"},
    }))
    .expect("flag")
}

/// An edit of a flag, and what it changes.
type FlagEdit = (&'static str, fn(&mut Flag));

/// Creates a rollout of `checkout` from `spec` (JSON) and returns it.
async fn create_checkout_rollout(system: &System, spec: Value) -> RolloutResult {
    let spec = serde_json::from_value(spec).expect("spec");
    system
        .cluster
        .commands
        .create_rollout(spec)
        .await
        .expect("rollout created")
}

/// Creates `flag` (the `checkout` flag) and a rollout of it serving the candidate to 50 %
/// for an hour, then 100 %; returns the rollout.
async fn start_half_checkout_rollout(system: &System, flag: &Flag) -> RolloutResult {
    system
        .cluster
        .commands
        .create_flag(flag.clone())
        .await
        .expect("flag created");
    create_checkout_rollout(
        system,
        json!({"flag": "checkout", "baseline": "classic", "candidate": "new",
               "phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 100}]}),
    )
    .await
}

/// Starts one more evaluator, asserts that every replica — the fresh one among them —
/// serves what is committed, and stops it again.
async fn assert_a_fresh_evaluator_agrees(system: &mut System) {
    system.cluster.add_evaluator().await;
    system.assert_served_matches_committed().await;
    system.cluster.stop_newest_evaluator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_gate_holds_its_share_until_two_people_approved_it() {
    let system = System::start(1).await;
    system
        .cluster
        .commands
        .create_flag(checkout_flag())
        .await
        .expect("flag created");
    let rollout = create_checkout_rollout(
        &system,
        json!({"flag": "checkout", "baseline": "classic", "candidate": "new",
               "phases": [{"percentage": 10, "duration": "1s"},
                          {"percentage": 50, "duration": "1s",
                           "gate": {"approval": {"approvers": 2}}},
                          {"percentage": 100}]}),
    )
    .await;
    let id = rollout.rollout_id.clone();
    // the ticker carries it into the approval step, where no clock moves it
    let waiting = system
        .rollout_reaches(&id, "wait for approval at 50 %", |status| {
            status.current_step == Some(1)
        })
        .await;
    assert_eq!(waiting.waiting_for, Some(WaitingFor::Approval));
    assert_eq!(waiting.due_at, None);
    assert_eq!(waiting.share, Some(Share::from_ppm(500_000)));
    assert_eq!(waiting.steps[1].gate.approvers, Some(2));
    let eta = waiting.eta.expect("eta");
    assert_eq!(
        (eta.blocked_at_step, eta.blocked_by),
        (Some(1), Some(WaitingFor::Approval))
    );
    system.assert_served_matches_committed().await;

    let as_actor = |actor: &str| system.cluster.commands.clone().with_actor(actor);
    // an approval of a step the rollout has left is refused and counts for nothing
    let stale = as_actor("ana")
        .approve_rollout(&id, Some(0))
        .await
        .expect_err("stale step");
    assert_eq!(stale.code(), ErrorCode::Conflict);
    let first = as_actor("ana")
        .approve_rollout(&id, Some(1))
        .await
        .expect("ana approves");
    assert_eq!(first.waiting_for, Some(WaitingFor::Approval));
    assert_eq!(first.approvals.len(), 1);
    let twice = as_actor("ana")
        .approve_rollout(&id, Some(1))
        .await
        .expect_err("ana twice");
    assert_eq!(
        (twice.code(), twice.field()),
        (ErrorCode::FailedPrecondition, Some("actor"))
    );
    let continued = system
        .cluster
        .commands
        .continue_rollout(&id)
        .await
        .expect_err("continue does not bypass the approval");
    assert_eq!(continued.code(), ErrorCode::FailedPrecondition);
    let held = system
        .cluster
        .commands
        .rollout_status(&id)
        .await
        .expect("status");
    assert_eq!(
        (held.current_step, held.share),
        (Some(1), Some(Share::from_ppm(500_000)))
    );
    system.assert_served_matches_committed().await;

    let second = as_actor("bo")
        .approve_rollout(&id, Some(1))
        .await
        .expect("bo approves");
    assert_eq!(second.waiting_for, Some(WaitingFor::Timer));
    let approved = system
        .cluster
        .commands
        .rollout_status(&id)
        .await
        .expect("status");
    let approved_at = approved.approvals[1].at;
    assert_eq!(
        approved.due_at,
        Some(approved_at.plus(rollout_core::DurationMs::from_millis(1_000))),
        "the step's timer runs from the approval"
    );
    let done = system
        .rollout_reaches(&id, "complete", |status| {
            status.state == Lifecycle::Completed
        })
        .await;
    assert_eq!(done.share, Some(Share::ALL));
    system.assert_served_matches_committed().await;

    let audit = audit_of(
        &system.cluster.commands,
        AuditQuery {
            rollout_id: Some(id.clone()),
            ..AuditQuery::default()
        },
    )
    .await;
    let approvers: Vec<&str> = audit
        .entries
        .iter()
        .rev()
        .filter(|entry| entry.kind == EventKind::RolloutApproved)
        .map(|entry| entry.actor.as_str())
        .collect();
    assert_eq!(approvers, ["ana", "bo"]);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reschedule_replaces_the_later_steps_without_moving_anyone_at_the_edit() {
    let system = System::start(1).await;
    system
        .cluster
        .commands
        .create_flag(checkout_flag())
        .await
        .expect("flag created");
    let rollout = create_checkout_rollout(
        &system,
        json!({"flag": "checkout", "baseline": "classic", "candidate": "new",
               "phases": [{"percentage": 10, "duration": "1h"},
                          {"percentage": 50, "duration": "1h"},
                          {"percentage": 100}]}),
    )
    .await;
    let id = rollout.rollout_id.clone();
    system.assert_served_matches_committed().await;
    let commands = &system.cluster.commands;
    let steps =
        |value: Value| -> Vec<RescheduleStepSpec> { serde_json::from_value(value).expect("steps") };
    // refused edits change nothing: one made at a step the rollout has left, one that
    // would move the share backwards, one without the step it was made at
    let stale = commands
        .reschedule_rollout(&id, 1, steps(json!([{"percentage": 100}])))
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), ErrorCode::Conflict);
    let backwards = commands
        .reschedule_rollout(
            &id,
            0,
            steps(json!([{"percentage": 5, "duration": "1s"}, {"percentage": 100}])),
        )
        .await
        .expect_err("backwards");
    assert_eq!(
        (backwards.code(), backwards.field()),
        (ErrorCode::InvalidArgument, Some("steps[0].percentage"))
    );
    let unanchored = commands
        .send(rollout_wire::Command::RolloutReschedule(
            rollout_wire::RolloutReschedule {
                command_id: None,
                actor: None,
                rollout_id: id.clone(),
                expected_step: None,
                steps: steps(json!([{"percentage": 100}])),
            },
        ))
        .await
        .expect_err("no expected step");
    assert_eq!(unanchored.field(), Some("expected_step"));
    let unchanged = commands.rollout_status(&id).await.expect("status");
    assert_eq!(unchanged.steps.len(), 3);

    let edited = commands
        .reschedule_rollout(
            &id,
            0,
            steps(json!([{"percentage": 30, "duration": "1s"}, {"percentage": 100}])),
        )
        .await
        .expect("rescheduled");
    assert_eq!(
        (edited.current_step, edited.share, edited.steps.len()),
        (Some(0), Some(Share::from_ppm(100_000)), 3)
    );
    assert_eq!(edited.steps[1].percentage, Some(Share::from_ppm(300_000)));
    system.assert_served_matches_committed().await;
    // the new steps run: continue enters 30 %, whose one-second timer completes it
    let continued = commands.continue_rollout(&id).await.expect("continue");
    assert_eq!(continued.share, Some(Share::from_ppm(300_000)));
    system.assert_served_matches_committed().await;
    let done = system
        .rollout_reaches(&id, "complete", |status| {
            status.state == Lifecycle::Completed
        })
        .await;
    assert_eq!(done.share, Some(Share::ALL));
    system.assert_served_matches_committed().await;

    let audit = audit_of(
        commands,
        AuditQuery {
            rollout_id: Some(id.clone()),
            ..AuditQuery::default()
        },
    )
    .await;
    let edits: Vec<_> = audit
        .entries
        .iter()
        .filter(|entry| entry.kind == EventKind::RolloutRescheduled)
        .collect();
    assert_eq!(edits.len(), 1, "refused edits leave no audit entry");
    let details = &edits[0].details;
    assert_eq!(details["old_steps"].as_array().map(Vec::len), Some(2));
    assert_eq!(details["new_steps"].as_array().map(Vec::len), Some(2));
    assert_eq!(details["old_steps"][0]["audience"]["share"], json!(50));
    assert_eq!(details["new_steps"][0]["audience"]["share"], json!(30));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timer_that_runs_out_outside_the_windows_waits_for_the_next_opening() {
    let system = System::start(1).await;
    system
        .cluster
        .commands
        .create_flag(checkout_flag())
        .await
        .expect("flag created");
    // open every day but today and tomorrow (UTC), all day: closed for at least a day
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let today = chrono::Utc::now().weekday().num_days_from_monday() as usize;
    let open_days: Vec<&str> = (0..7)
        .filter(|day| *day != today && *day != (today + 1) % 7)
        .map(|day| days[day])
        .collect();
    let rollout = create_checkout_rollout(
        &system,
        json!({"flag": "checkout", "baseline": "classic", "candidate": "new",
               "phases": [{"percentage": 10, "duration": "1s"}, {"percentage": 100}],
               "windows": [{"days": open_days, "start": "00:00", "end": "24:00",
                            "timezone": "UTC"}]}),
    )
    .await;
    let id = rollout.rollout_id.clone();
    let waiting = system
        .rollout_reaches(&id, "wait for its window", |status| {
            status.waiting_for == Some(WaitingFor::Window)
        })
        .await;
    assert_eq!(
        (waiting.current_step, waiting.share),
        (Some(0), Some(Share::from_ppm(100_000))),
        "the timer ran out but nothing moved"
    );
    let opening = waiting.due_at.expect("the next opening");
    let now = waiting.at.expect("status time");
    assert!(
        opening.millis_since(now) > 20 * 3_600_000,
        "the window opens after tomorrow: {opening}"
    );
    assert_eq!(opening.as_millis() % 86_400_000, 0, "at midnight UTC");
    assert_eq!(waiting.windows.len(), 1);
    assert_eq!(
        waiting.eta.and_then(|eta| eta.completes_at),
        Some(opening),
        "it completes when the window opens"
    );
    system.assert_served_matches_committed().await;
    // the ticker keeps its look at the opening, not at the timer's end
    let mut connection: rollout_store::Connection = redis::Client::open(system.cluster.redis.url())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("redis")
        .into();
    let keys = rollout_store::Keys::new(&Namespace::new(NS).expect("namespace"));
    let scheduled = rollout_store::due::scheduled(&mut connection, &keys, &id)
        .await
        .expect("due index");
    assert_eq!(scheduled, Some(opening));
    // a window with an unknown zone or ending before it starts changes nothing
    let refused = system
        .cluster
        .commands
        .plan(
            serde_json::from_value(json!({"flag": "checkout", "baseline": "classic",
                "candidate": "new", "phases": [{"percentage": 100}],
                "windows": [{"days": ["mon"], "start": "10:00", "end": "09:00",
                             "timezone": "Europe/Atlantis"}]}))
            .expect("spec"),
        )
        .await
        .expect_err("bad windows");
    assert_eq!(refused.code(), ErrorCode::InvalidArgument);
    let fields: Vec<&str> = refused
        .wire()
        .details
        .iter()
        .map(|detail| detail.field.as_str())
        .collect();
    assert!(
        fields.contains(&"rollout.windows[0].end")
            && fields.contains(&"rollout.windows[0].timezone"),
        "{fields:?}"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gradual_rollback_walks_every_replica_down_last_adopters_first() {
    let system = System::start(1).await;
    let flag = checkout_flag();
    let rollout = start_half_checkout_rollout(&system, &flag).await;
    let id = rollout.rollout_id.clone();
    system.assert_served_matches_committed().await;
    let commands = &system.cluster.commands;
    // a walk that does not end on the baseline, or starts above the share served, is
    // refused naming the step and changes nothing
    let refused = commands
        .rollback_gradually(&id, vec![60.0, 0.0], "1s")
        .await
        .expect_err("above the share served");
    assert_eq!(
        (refused.code(), refused.field()),
        (ErrorCode::InvalidArgument, Some("steps[0]"))
    );
    let refused = commands
        .rollback_gradually(&id, vec![20.0, 5.0], "1s")
        .await
        .expect_err("not ending at 0");
    assert_eq!(refused.field(), Some("steps[1]"));
    let unchanged = commands.rollout_status(&id).await.expect("status");
    assert_eq!(unchanged.state, Lifecycle::Running);

    let population = population();
    // who evaluator 0 serves the candidate (after the oracle found every replica agreeing
    // with the committed state)
    let adopters = |system: &System| -> std::collections::BTreeSet<usize> {
        let handle = Arc::clone(&system.cluster.evaluators()[0]);
        handle
            .snapshot()
            .namespace(NS)
            .and_then(|namespace| {
                namespace.with_flag("checkout", |live| {
                    let compiled = live.compiled();
                    population
                        .iter()
                        .enumerate()
                        .filter(|(_, entity)| compiled.evaluate(entity).variation == "new")
                        .map(|(index, _)| index)
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    let at_half = adopters(&system);
    let walking = commands
        .rollback_gradually(&id, vec![20.0, 5.0, 0.0], "1s")
        .await
        .expect("rolling back");
    assert_eq!(walking.state, Lifecycle::RollingBack);
    assert_eq!(walking.share, Some(Share::from_ppm(200_000)));
    system.assert_served_matches_committed().await;
    let at_twenty = adopters(&system);
    assert!(at_twenty.is_subset(&at_half), "20 % is a subset of 50 %");
    assert!(at_twenty.len() < at_half.len());
    let status = commands.rollout_status(&id).await.expect("status");
    let walk = status.rollback.expect("the walk in the status");
    assert_eq!((walk.index, walk.shares.len()), (0, 3));

    let at_five_status = system
        .rollout_reaches(&id, "5 %", |status| {
            status.share == Some(Share::from_ppm(50_000)) || status.state == Lifecycle::RolledBack
        })
        .await;
    if at_five_status.state == Lifecycle::RollingBack {
        system.assert_served_matches_committed().await;
        let at_five = adopters(&system);
        assert!(at_five.is_subset(&at_twenty), "5 % is a subset of 20 %");
    }
    let done = system
        .rollout_reaches(&id, "roll back", |status| {
            status.state == Lifecycle::RolledBack
        })
        .await;
    assert_eq!(done.share, Some(Share::NONE));
    system.assert_served_matches_committed().await;
    assert!(adopters(&system).is_empty());
    let audit = audit_of(
        commands,
        AuditQuery {
            rollout_id: Some(id.clone()),
            ..AuditQuery::default()
        },
    )
    .await;
    let kinds: Vec<EventKind> = audit.entries.iter().rev().map(|entry| entry.kind).collect();
    let walked: Vec<EventKind> = kinds
        .into_iter()
        .filter(|kind| {
            matches!(
                kind,
                EventKind::RolloutRollingBack
                    | EventKind::RolloutShareLowered
                    | EventKind::RolloutRolledBack
            )
        })
        .collect();
    assert_eq!(walked.first(), Some(&EventKind::RolloutRollingBack));
    assert_eq!(walked.last(), Some(&EventKind::RolloutRolledBack));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespace_freeze_holds_timers_and_its_end_moves_one_step_at_a_time() {
    let system = System::start(1).await;
    let commands = &system.cluster.commands;
    commands
        .create_flag(checkout_flag())
        .await
        .expect("flag created");
    let frozen = commands
        .freeze_namespace("payments incident INC-4711", None)
        .await
        .expect("frozen");
    let freeze = frozen.frozen.expect("the freeze in force");
    assert_eq!(freeze.reason, "payments incident INC-4711");
    let again = commands.unfreeze_namespace().await.expect("unfrozen");
    assert!(again.frozen.is_none());
    let not_frozen = commands
        .unfreeze_namespace()
        .await
        .expect_err("nothing to lift");
    assert_eq!(not_frozen.code(), ErrorCode::FailedPrecondition);
    let bad = commands
        .freeze_namespace(" ", Some("yesterday"))
        .await
        .expect_err("bad freeze");
    let fields: Vec<&str> = bad
        .wire()
        .details
        .iter()
        .map(|d| d.field.as_str())
        .collect();
    assert_eq!(fields, ["reason", "until"]);

    commands
        .freeze_namespace("release freeze", None)
        .await
        .expect("frozen again");
    let rollout = create_checkout_rollout(
        &system,
        json!({"flag": "checkout", "baseline": "classic", "candidate": "new",
               "phases": [{"percentage": 10, "duration": "1s"}, {"percentage": 30, "duration": "1s"},
                          {"percentage": 60, "duration": "1s"}, {"percentage": 100}]}),
    )
    .await;
    let id = rollout.rollout_id.clone();
    let status = commands.rollout_status(&id).await.expect("status");
    assert_eq!(status.waiting_for, Some(WaitingFor::Freeze));
    assert_eq!(
        status.frozen.as_ref().map(|freeze| freeze.reason.as_str()),
        Some("release freeze")
    );
    assert_eq!(
        status.due_at, None,
        "nothing moves it while the freeze lasts"
    );
    // every timer of the plan has run out: still at 10 %, served as committed
    let created_at = status.at.expect("status time");
    let held = system
        .rollout_reaches(&id, "its timers to run out while frozen", |status| {
            status
                .at
                .is_some_and(|at| at.millis_since(created_at) > 3_500)
        })
        .await;
    assert_eq!(
        (held.state, held.current_step),
        (Lifecycle::Running, Some(0))
    );
    system.assert_served_matches_committed().await;
    // commands still act
    let continued = commands.continue_rollout(&id).await.expect("continue");
    assert_eq!(continued.current_step, Some(1));
    system.assert_served_matches_committed().await;
    // step 1's second runs out while still frozen: held there too
    let continued_at = continued.steps[1].started_at.expect("entered");
    let still = system
        .rollout_reaches(&id, "step 1's timer to run out while frozen", |status| {
            status
                .at
                .is_some_and(|at| at.millis_since(continued_at) > 1_500)
        })
        .await;
    assert_eq!(still.current_step, Some(1));

    let lifted = commands.unfreeze_namespace().await.expect("unfrozen");
    assert_eq!(lifted.past[0].reason, "release freeze");
    let done = system
        .rollout_reaches(&id, "complete after the thaw", |status| {
            status.state == Lifecycle::Completed
        })
        .await;
    system.assert_served_matches_committed().await;
    // one step at a time from the thaw: none skipped, a second apart
    assert!(
        done.steps.iter().all(|step| !step.skipped),
        "{:?}",
        done.steps
    );
    let planned: Vec<Timestamp> = done
        .steps
        .iter()
        .filter_map(|step| step.planned_at)
        .collect();
    assert_eq!(planned.len(), 4);
    let thaw = lifted.past[0].until.expect("the lift's time");
    // step 1's timer ran out while frozen: step 2 begins at the thaw, step 3 a second later
    assert_eq!(planned[2], thaw, "{planned:?}");
    assert_eq!(planned[3].millis_since(planned[2]), 1_000, "{planned:?}");
    let audit = audit_of(
        &system.cluster.commands,
        AuditQuery {
            namespace: true,
            ..AuditQuery::default()
        },
    )
    .await;
    let kinds: Vec<EventKind> = audit.entries.iter().map(|entry| entry.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::NamespaceUnfrozen,
            EventKind::NamespaceFrozen,
            EventKind::NamespaceUnfrozen,
            EventKind::NamespaceFrozen
        ]
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_pauses_every_matching_rollout_once_per_alert_id() {
    use rollout_wire::alerts::{Alert, AlertAction, AlertSelector};
    let system = System::start(1).await;
    let commands = &system.cluster.commands;
    let mut payments = checkout_flag();
    payments.labels.insert("team".into(), "payments".into());
    commands.create_flag(payments).await.expect("flag");
    commands
        .create_flag(boolean_flag("search"))
        .await
        .expect("flag");
    let checkout = create_checkout_rollout(
        &system,
        json!({"flag": "checkout", "baseline": "classic", "candidate": "new",
               "phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 100}]}),
    )
    .await;
    let search = commands
        .create_rollout(
            serde_json::from_value(
                json!({"flag": "search", "baseline": "off", "candidate": "on",
                "phases": [{"percentage": 20, "duration": "1h"}, {"percentage": 100}]}),
            )
            .expect("spec"),
        )
        .await
        .expect("rollout");
    let alert = |id: &str, selector: AlertSelector, action: AlertAction| Alert {
        alert_id: id.to_owned(),
        selector,
        action,
        reason: "HighCheckoutErrorRate firing".to_owned(),
    };
    let by_team = AlertSelector {
        labels: Some(
            [("team".to_owned(), "payments".to_owned())]
                .into_iter()
                .collect(),
        ),
        ..AlertSelector::default()
    };
    let everything = commands
        .alert(&alert("am-0", AlertSelector::default(), AlertAction::Pause))
        .await
        .expect_err("an empty selector");
    assert_eq!(
        (everything.code(), everything.field()),
        (ErrorCode::InvalidArgument, Some("selector"))
    );

    let first = commands
        .alert(&alert("am-1", by_team.clone(), AlertAction::Pause))
        .await
        .expect("alert");
    assert!(!first.repeated);
    let acted: Vec<(&str, Option<Lifecycle>)> = first
        .rollouts
        .iter()
        .map(|rollout| (rollout.rollout_id.as_str(), rollout.state))
        .collect();
    assert_eq!(
        acted,
        [(checkout.rollout_id.as_str(), Some(Lifecycle::Paused))]
    );
    let untouched = commands
        .rollout_status(&search.rollout_id)
        .await
        .expect("status");
    assert_eq!(untouched.state, Lifecycle::Running);
    system.assert_served_matches_committed().await;

    // an operator resumes it; the same alert delivered again acts on nothing
    commands
        .resume_rollout(&checkout.rollout_id)
        .await
        .expect("resume");
    let again = commands
        .alert(&alert("am-1", by_team, AlertAction::Pause))
        .await
        .expect("repeat");
    assert!(again.repeated);
    assert_eq!(again.rollouts, first.rollouts);
    let resumed = commands
        .rollout_status(&checkout.rollout_id)
        .await
        .expect("status");
    assert_eq!(resumed.state, Lifecycle::Running, "a repeat acts once");

    let audit = audit_of(
        commands,
        AuditQuery {
            rollout_id: Some(checkout.rollout_id.clone()),
            ..AuditQuery::default()
        },
    )
    .await;
    let paused = audit
        .entries
        .iter()
        .find(|entry| entry.kind == EventKind::RolloutPaused)
        .expect("the alert's pause is audited");
    assert_eq!(paused.actor, "alert:am-1");
    assert_eq!(paused.details["reason"], "HighCheckoutErrorRate firing");

    // a rollback alert by rollout id
    let rolled = commands
        .alert(&alert(
            "am-2",
            AlertSelector {
                rollout_id: Some(search.rollout_id.clone()),
                ..AlertSelector::default()
            },
            AlertAction::Rollback,
        ))
        .await
        .expect("alert");
    assert_eq!(rolled.rollouts.len(), 1);
    assert_eq!(rolled.rollouts[0].state, Some(Lifecycle::RolledBack));
    system.assert_served_matches_committed().await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flag_edit_during_a_rollout_keeps_serving_the_rollout() {
    let mut system = System::start(1).await;
    let mut flag = checkout_flag();
    let rollout = start_half_checkout_rollout(&system, &flag).await;
    assert_eq!(
        (rollout.state, rollout.current_step),
        (Lifecycle::Running, Some(0))
    );
    system.assert_served_matches_committed().await;
    // every edit SPEC §5 allows while a rollout runs
    let edits: [FlagEdit; 5] = [
        ("its description", |flag| {
            flag.description = Some("the checkout page, edited".to_owned());
        }),
        ("the candidate's value", |flag| {
            flag.variations[1].value = json!("teal");
        }),
        ("a rule that is not the rollout's target", |flag| {
            flag.rules[0].conditions[0]
                .values
                .push(AttributeValue::String("contractor".to_owned()));
        }),
        ("its kill switch, removed", |flag| flag.kill_switch = None),
        ("its kill switch, back", |flag| {
            flag.kill_switch = checkout_flag().kill_switch;
        }),
    ];
    for (what, edit) in edits {
        edit(&mut flag);
        let updated = system
            .cluster
            .commands
            .update_flag(flag.clone(), None)
            .await
            .unwrap_or_else(|error| panic!("editing {what}: {error}"));
        println!("edited {what}: version {}", updated.version);
        let status = system
            .cluster
            .commands
            .rollout_status(&rollout.rollout_id)
            .await
            .expect("status");
        assert_eq!(
            status.state,
            Lifecycle::Running,
            "editing {what} leaves the rollout running"
        );
        system.assert_served_matches_committed().await;
        assert_a_fresh_evaluator_agrees(&mut system).await;
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_too_large_for_nats_goes_out_without_its_snapshot_and_is_still_served() {
    const MAX_PAYLOAD: usize = 32 * 1024;
    let system = System::start_with(
        0,
        ClusterOptions {
            nats_max_payload: Some(MAX_PAYLOAD),
            ..ClusterOptions::default()
        },
    )
    .await;
    let mut flag = checkout_flag();
    let rollout = start_half_checkout_rollout(&system, &flag).await;
    system.assert_served_matches_committed().await;

    // a description that makes the edit fit under max_payload and its event (the flag, its
    // rollout and the event's fields) not fit under max_payload less the relay's headroom
    let base = codec::encode(&flag, Encoding::MessagePack)
        .expect("flag encodes")
        .len();
    flag.description = Some("d".repeat(MAX_PAYLOAD - 768 - base));
    let big = system
        .cluster
        .commands
        .update_flag(flag.clone(), None)
        .await
        .expect("a flag edit under max_payload is accepted");
    let event_of = |version: u64| {
        let events = &system.cluster.events;
        async move {
            eventually(
                &format!("the event of checkout version {version}"),
                PATIENCE,
                || async move {
                    events
                        .events()
                        .into_iter()
                        .find(|event| event.flag == "checkout" && event.version == version)
                },
            )
            .await
        }
    };
    let bare = event_of(big.version).await;
    assert!(
        bare.snapshot.is_none(),
        "an event above max_payload goes out without its snapshot"
    );
    // every replica serves the big edit all the same (the bare event makes it read Redis)
    system.assert_served_matches_committed().await;
    for evaluator in &system.cluster.evaluators() {
        let described = evaluator.snapshot().namespace(NS).and_then(|namespace| {
            namespace.with_flag("checkout", |live| live.compiled().version())
        });
        assert_eq!(described, Some(big.version), "every replica holds the edit");
    }
    let status = system
        .cluster
        .commands
        .rollout_status(&rollout.rollout_id)
        .await
        .expect("status");
    assert_eq!(status.state, Lifecycle::Running, "the rollout runs on");

    // control: a small edit's event carries its snapshot
    flag.description = Some("short again".to_owned());
    let small = system
        .cluster
        .commands
        .update_flag(flag, None)
        .await
        .expect("small edit");
    assert!(
        event_of(small.version).await.snapshot.is_some(),
        "an event under max_payload carries its snapshot"
    );
    system.assert_served_matches_committed().await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_evaluator_agrees_with_running_ones() {
    let mut system = System::start(1).await;
    system
        .cluster
        .commands
        .create_flag(checkout_flag())
        .await
        .expect("flag created");
    system.assert_served_matches_committed().await;
    // started, one timed step, paused, resumed, stopped at 30 % (a split stays behind),
    // then a second rollout continuing that split
    let first = create_checkout_rollout(
        &system,
        json!({"flag": "checkout", "baseline": "classic", "candidate": "new",
               "phases": [{"percentage": 10, "duration": "500ms"}, {"percentage": 30, "duration": "1h"},
                          {"percentage": 100}]}),
    )
    .await;
    system.assert_served_matches_committed().await;
    system
        .rollout_reaches(&first.rollout_id, "reach 30 %", |status| {
            status.current_step == Some(1)
        })
        .await;
    system.assert_served_matches_committed().await;
    let commands = &system.cluster.commands;
    commands
        .pause_rollout(&first.rollout_id)
        .await
        .expect("paused");
    system.assert_served_matches_committed().await;
    commands
        .resume_rollout(&first.rollout_id)
        .await
        .expect("resumed");
    system.assert_served_matches_committed().await;
    let stopped = commands
        .stop_rollout(&first.rollout_id, None)
        .await
        .expect("stopped");
    assert_eq!(stopped.state, Lifecycle::Stopped);
    system.assert_served_matches_committed().await;
    let second = create_checkout_rollout(
        &system,
        json!({"flag": "checkout", "baseline": "classic", "candidate": "new",
               "phases": [{"percentage": 50, "duration": "1h"}, {"percentage": 100}]}),
    )
    .await;
    assert_eq!(second.state, Lifecycle::Running);
    system.assert_served_matches_committed().await;
    assert_a_fresh_evaluator_agrees(&mut system).await;
    system.stop().await;
}

/// The positive control: the oracle's judge, fed a served answer that differs from what
/// the committed state gives, reports it once it outlives the grace — and the sample
/// really straddles the rollout's share.
#[test]
fn the_oracle_reports_a_served_answer_that_differs_from_the_committed_state() {
    let half = RolloutView {
        rollout_id: "r-control".to_owned(),
        target: Target::Default,
        baseline: "classic".to_owned(),
        candidate: "new".to_owned(),
        salt: "control".to_owned(),
        stickiness: None,
        step: 0,
        audience: ViewAudience::Share(Share::from_ppm(500_000)),
    };
    let committed_flag = CommittedFlag::compile(checkout_flag(), 7, Some(half)).expect("compiles");
    let probes = sample_entities(&committed_flag, &[]);
    assert!(probes.len() >= 200, "{} entities sampled", probes.len());
    let variations_of = |side: &str| -> Vec<String> {
        probes
            .iter()
            .filter(|probe| probe.why.contains(side))
            .map(|probe| Expected::of(&committed_flag.compiled, &probe.entity).variation)
            .collect()
    };
    assert_eq!(variations_of("just below"), vec!["new".to_owned(); 100]);
    assert_eq!(variations_of("just above"), vec!["classic".to_owned(); 100]);

    let candidate = probes
        .iter()
        .find(|probe| probe.why.contains("just below"))
        .expect("an entity just below the share");
    let answer = |replica: &str, variation: &str, value: &str| Observation {
        path: Path::Ofrep(replica.to_owned()),
        flag: "checkout".to_owned(),
        probe: Arc::clone(candidate),
        served: Served::Answer {
            variation: variation.to_owned(),
            value: json!(value),
            version: Some(7),
        },
    };
    let wrong = answer("evaluator-0", "classic", "blue");
    let right = answer("evaluator-1", "new", "green");
    let mut judge = Judge::new(GRACE);
    let start = tokio::time::Instant::now();
    let committed = Committed {
        flags: [("checkout".to_owned(), committed_flag.clone())].into(),
        agents: Vec::new(),
    };
    judge.note_committed(&committed, start);
    let first_seen = judge.judge(&[wrong.clone(), right], start);
    assert_eq!(
        (
            first_seen.checked,
            first_seen.mismatches,
            first_seen.violations.len()
        ),
        (2, 1, 0),
        "a fresh mismatch is no violation yet"
    );
    let within = judge.judge(
        std::slice::from_ref(&wrong),
        start + Duration::from_millis(1_900),
    );
    assert!(within.violations.is_empty(), "still within the grace");
    let past = judge.judge(
        std::slice::from_ref(&wrong),
        start + Duration::from_millis(2_100),
    );
    assert_eq!(past.violations.len(), 1, "a mismatch outliving the grace");
    let report = past.violations[0].to_string();
    for needed in [
        "flag `checkout`",
        candidate.entity.id.as_str(),
        "`new` = \"green\" at version 7",
        "evaluator-0 over OFREP served `classic` = \"blue\"",
    ] {
        assert!(report.contains(needed), "{needed:?} missing from: {report}");
    }
    let later = judge.judge(&[wrong], start + Duration::from_secs(3));
    assert!(
        later.violations.is_empty() && later.mismatches == 1,
        "one lasting mismatch is one violation"
    );
}

/// The sum of a Prometheus counter's samples whose labels mention `label_value`.
/// Outcome reports every in-process evaluator counted with `result` in their labels (`""`:
/// all of them).
fn outcomes_counted(system: &System, result: &str) -> f64 {
    system
        .cluster
        .evaluators()
        .iter()
        .map(|handle| {
            metric_sum(
                &handle.metrics_text(),
                "rollout_evaluator_outcomes_total",
                result,
            )
        })
        .sum()
}

fn metric_sum(text: &str, name: &str, label_value: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(label_value))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The notifications a receiver acknowledged, decoded, each checked: its signature verifies
/// under `secret` (computed here with the `hmac` crate, not the product's helper) and not
/// under another key, its idempotency key is its id, its event header is its kind.
fn acknowledged(
    receiver: &support::receiver::Receiver,
    secret: &str,
) -> Vec<rollout_wire::webhooks::Notification> {
    use hmac::{Hmac, Mac};
    let sign = |key: &[u8], timestamp: &str, body: &[u8]| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("sha256={hex}")
    };
    receiver
        .received()
        .into_iter()
        .filter(|request| request.status.is_success())
        .map(|request| {
            let timestamp = request.header("X-Rollout-Timestamp");
            assert!(timestamp.parse::<i64>().is_ok(), "a signing time");
            let signature = request.header("X-Rollout-Signature");
            assert_eq!(signature, sign(secret.as_bytes(), timestamp, &request.body));
            assert_ne!(
                signature,
                sign(b"another-secret-entirely", timestamp, &request.body)
            );
            assert_eq!(request.header("Content-Type"), "application/json");
            let notification: rollout_wire::webhooks::Notification =
                serde_json::from_slice(&request.body).expect("a notification");
            assert_eq!(request.header("Idempotency-Key"), notification.id);
            assert_eq!(
                request.header("X-Rollout-Event"),
                serde_json::to_value(notification.kind).expect("kind")
            );
            notification
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_hears_every_transition_and_gate_hold_signed_and_retried_through_failures() {
    const SECRET: &str = "whsec-test-0123456789abcdef";
    let system = System::start(1).await;
    let commands = &system.cluster.commands;
    let receiver = support::receiver::Receiver::start().await;
    commands
        .create_flag(checkout_flag())
        .await
        .expect("flag created");

    // bad input is refused field by field and changes nothing
    let bad = commands
        .put_webhook("ops hooks", "ftp://hooks.example.com", "short", Vec::new())
        .await
        .expect_err("a bad webhook");
    let fields: Vec<&str> = bad
        .wire()
        .details
        .iter()
        .map(|detail| detail.field.as_str())
        .collect();
    assert_eq!(fields, ["id", "url", "secret"]);
    let unknown = commands
        .delete_webhook("nobody")
        .await
        .expect_err("no such webhook");
    assert_eq!(unknown.code(), ErrorCode::NotFound);
    assert!(commands.webhooks().await.expect("list").webhooks.is_empty());

    // a webhook whose receiver fails at first
    receiver.fail(true);
    let list = commands
        .put_webhook("ops", &receiver.url(), SECRET, Vec::new())
        .await
        .expect("webhook saved");
    assert_eq!(list.webhooks.len(), 1);
    assert_eq!(list.webhooks[0].url, receiver.url());
    assert!(
        !serde_json::to_string(&list).expect("json").contains(SECRET),
        "the secret is never shown"
    );
    let rollout = create_checkout_rollout(
        &system,
        json!({"flag": "checkout", "baseline": "classic", "candidate": "new",
               "phases": [{"percentage": 10, "duration": "1s"},
                          {"percentage": 50, "duration": "1s",
                           "gate": {"approval": {"approvers": 1}}},
                          {"percentage": 100}]}),
    )
    .await;
    let id = rollout.rollout_id.clone();
    // the failure shows in the rollout's status while it lasts
    let failing = system
        .rollout_reaches(&id, "show its webhook failing", |status| {
            status
                .failing_webhooks
                .first()
                .is_some_and(|webhook| webhook.delivery.attempts >= 2)
        })
        .await;
    let delivery = &failing.failing_webhooks[0].delivery;
    assert_eq!(failing.failing_webhooks[0].id, "ops");
    assert!(
        delivery
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("503")),
        "{delivery:?}"
    );
    assert!(delivery.failing_since.is_some() && delivery.next_attempt_at.is_some());
    // every failed attempt so far was the same notification, under the same key
    let attempts = receiver.received();
    let first_key = attempts[0].header("Idempotency-Key").to_owned();
    assert!(first_key.starts_with("prod:"), "{first_key}");
    for (number, attempt) in attempts.iter().enumerate().take(2) {
        assert_eq!(attempt.header("Idempotency-Key"), first_key);
        assert_eq!(
            attempt.header("X-Rollout-Attempt"),
            (number + 1).to_string()
        );
    }

    // the receiver recovers: the notice that failed comes again under its key, then the rest
    receiver.fail(false);
    let waiting = system
        .rollout_reaches(&id, "wait for approval at 50 %", |status| {
            status.current_step == Some(1)
        })
        .await;
    assert_eq!(waiting.waiting_for, Some(WaitingFor::Approval));
    let held = eventually("the approval hold to be notified", PATIENCE, || async {
        let notifications = acknowledged(&receiver, SECRET);
        notifications
            .iter()
            .any(|notification| notification.hold.is_some())
            .then_some(notifications)
    })
    .await;
    assert_eq!(
        held[0].id, first_key,
        "the failed notice is delivered first"
    );
    let hold = held
        .iter()
        .find_map(|notification| notification.hold)
        .expect("a hold");
    assert_eq!(
        (hold.step, hold.waiting_for),
        (1, WaitingFor::Approval),
        "the hold names the step and what opens it"
    );
    system.assert_served_matches_committed().await;
    let recovered = commands.rollout_status(&id).await.expect("status");
    assert!(
        recovered.failing_webhooks.is_empty(),
        "a success clears the failure"
    );

    commands
        .clone()
        .with_actor("ana")
        .approve_rollout(&id, Some(1))
        .await
        .expect("approved");
    system
        .rollout_reaches(&id, "complete", |status| {
            status.state == Lifecycle::Completed
        })
        .await;
    commands
        .freeze_namespace("webhook drill", None)
        .await
        .expect("frozen");
    let notifications = eventually("the freeze to be notified", PATIENCE, || async {
        let notifications = acknowledged(&receiver, SECRET);
        notifications
            .iter()
            .any(|notification| notification.kind == EventKind::NamespaceFrozen)
            .then_some(notifications)
    })
    .await;
    let freeze = notifications
        .iter()
        .find(|notification| notification.kind == EventKind::NamespaceFrozen)
        .and_then(|notification| notification.freeze.as_ref())
        .expect("the freeze");
    assert_eq!(freeze.reason, "webhook drill");

    // delivered once each (nothing crashed), and exactly what the audit recorded, in order
    let mut keys: Vec<&str> = notifications.iter().map(|n| n.id.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), notifications.len(), "one delivery per notice");
    let heard: Vec<EventKind> = notifications
        .iter()
        .filter(|notification| notification.rollout_id.as_deref() == Some(id.as_str()))
        .map(|notification| notification.kind)
        .collect();
    let mut audited: Vec<EventKind> = audit_of(
        commands,
        AuditQuery {
            rollout_id: Some(id.clone()),
            ..AuditQuery::default()
        },
    )
    .await
    .entries
    .iter()
    .map(|entry| entry.kind)
    .collect();
    audited.reverse();
    assert_eq!(heard, audited);
    assert!(
        heard.contains(&EventKind::RolloutApproved) && heard.contains(&EventKind::RolloutCompleted)
    );
    system.assert_served_matches_committed().await;

    // a deleted webhook hears nothing more; a new one hears only what happens after it
    assert!(commands
        .delete_webhook("ops")
        .await
        .expect("deleted")
        .webhooks
        .is_empty());
    commands.unfreeze_namespace().await.expect("unfrozen");
    let before = receiver.received().len();
    commands
        .put_webhook(
            "ops-2",
            &receiver.url(),
            SECRET,
            vec![EventKind::FlagDisabled],
        )
        .await
        .expect("second webhook");
    commands
        .freeze_namespace("filtered out", None)
        .await
        .expect("frozen again");
    commands.disable_flag("checkout").await.expect("disabled");
    let later = eventually("the second webhook's notice", PATIENCE, || async {
        let received = receiver.received();
        (received.len() > before).then_some(received)
    })
    .await;
    let next: rollout_wire::webhooks::Notification =
        serde_json::from_slice(&later[before].body).expect("a notification");
    assert_eq!(
        next.kind,
        EventKind::FlagDisabled,
        "not the unfreeze before it, nor the freeze its filter leaves out"
    );
    let audit = audit_of(
        commands,
        AuditQuery {
            namespace: true,
            ..AuditQuery::default()
        },
    )
    .await;
    let kinds: Vec<EventKind> = audit.entries.iter().map(|entry| entry.kind).collect();
    assert!(kinds.contains(&EventKind::WebhookSaved) && kinds.contains(&EventKind::WebhookDeleted));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stage_released_in_waves_moves_a_growing_share_of_its_agents_and_a_stop_keeps_it() {
    let system = System::start(1).await;
    create_version_flag(&system, "agent-version").await;
    let eu: Vec<String> = (0..40).map(|index| format!("eu-{index:02}")).collect();
    for agent in &eu {
        fleet(
            &system,
            "register",
            json!({"agent_id": agent, "labels": {"region": "eu"}}),
        )
        .await
        .expect("registered");
    }
    fleet(
        &system,
        "register",
        json!({"agent_id": "canary-1", "labels": {"ring": "canary"}}),
    )
    .await
    .expect("registered");
    let spec = serde_json::from_value(json!({
        "flag": "agent-version", "baseline": "v1", "candidate": "v2",
        "stages": [{"name": "canary", "labels": {"ring": "canary"}},
                   {"name": "eu", "labels": {"region": "eu"}, "percentages": [25, 100]}],
    }))
    .expect("spec");
    let rollout = system
        .cluster
        .commands
        .create_rollout(spec)
        .await
        .expect("rollout created");
    let id = rollout.rollout_id.clone();
    let waves: Vec<Option<Share>> = rollout.steps.iter().map(|step| step.wave).collect();
    assert_eq!(
        waves,
        [None, Some(Share::from_ppm(250_000)), None, None],
        "canary, eu's first wave, eu whole, unassigned"
    );
    let on_v2 = |desired: &[(String, String)]| -> Vec<String> {
        desired
            .iter()
            .filter(|(_, variation)| variation == "v2")
            .map(|(agent, _)| agent.clone())
            .collect()
    };
    let read_all = || async {
        let mut all = Vec::new();
        for agent in &eu {
            all.push((agent.clone(), desired(&system, agent).await));
        }
        all
    };
    assert!(
        on_v2(&read_all().await).is_empty(),
        "eu waits for its waves"
    );

    // the first wave: about a quarter of eu, as the committed state says
    let continued = system
        .cluster
        .commands
        .continue_rollout(&id)
        .await
        .expect("continue");
    assert_eq!(continued.current_step, Some(1));
    system.assert_served_matches_committed().await;
    let first = eventually("eu's first wave to be served", PATIENCE, || async {
        let wave = on_v2(&read_all().await);
        (!wave.is_empty()).then_some(wave)
    })
    .await;
    assert!(
        (2..=20).contains(&first.len()),
        "a quarter of 40, bucketed: {}",
        first.len()
    );
    let seen = stage_counts(&system, &id).await;
    assert_eq!(
        (seen[1].members, seen[2].members),
        (first.len() as u64, 40 - first.len() as u64),
        "each wave counts the members it releases: {seen:?}"
    );
    assert_eq!(seen[1].pending, first.len() as u64);
    assert_eq!(seen[2].waiting, 40 - first.len() as u64);

    // stopped mid-wave: the flag keeps serving exactly those agents
    let before_stop = read_all().await;
    system
        .cluster
        .commands
        .stop_rollout(&id, None)
        .await
        .expect("stopped");
    system.assert_served_matches_committed().await;
    let after_stop = eventually("the stop to reach the evaluators", PATIENCE, || async {
        let status = system.cluster.commands.rollout_status(&id).await.ok()?;
        (status.state == Lifecycle::Stopped).then_some(())?;
        Some(read_all().await)
    })
    .await;
    assert_eq!(after_stop, before_stop);
    assert_eq!(desired(&system, "canary-1").await, "v2");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_guards_judge_their_own_limits_a_warning_only_tells_and_a_pause_acts() {
    let system = System::start(1).await;
    let eval = EvalClient::connect(
        system.cluster.client.clone(),
        Namespace::new(NS).expect("ns"),
    )
    .await
    .expect("eval client");
    system
        .cluster
        .commands
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag created");
    let spec = serde_json::from_value(json!({
    "flag": "checkout", "baseline": "off", "candidate": "on",
    "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}],
    "guards": [
        {"max_error_rate": 5, "min_samples": 20, "window": "1m", "action": "warn"},
        {"max_error_rate": 50, "min_samples": 20, "window": "2m", "action": "pause"},
    ]}))
    .expect("spec");
    let rollout = system
        .cluster
        .commands
        .create_rollout(spec)
        .await
        .expect("rollout created");
    let id = rollout.rollout_id.clone();
    until_served_everywhere(&system, "checkout").await;
    let breaches = || async {
        audit_of(
            &system.cluster.commands,
            AuditQuery {
                rollout_id: Some(id.clone()),
                ..AuditQuery::default()
            },
        )
        .await
        .entries
        .iter()
        .filter(|entry| entry.kind == EventKind::GuardBreached)
        .map(|entry| entry.details["action"].as_str().unwrap_or("?").to_owned())
        .collect::<Vec<String>>()
    };

    // 20 % errors: the warning guard tells, the pausing one (50 %) lets it run
    report_candidate(&eval, ("checkout", "on"), 40, false).await;
    report_candidate(&eval, ("checkout", "on"), 10, true).await;
    let told = eventually("the warning", PATIENCE, || async {
        let told = breaches().await;
        (!told.is_empty()).then_some(told)
    })
    .await;
    assert_eq!(told, ["warn"]);
    let counts = system
        .cluster
        .commands
        .rollout_counts(&id)
        .await
        .expect("counts");
    let verdicts: Vec<bool> = counts
        .guards
        .iter()
        .map(|guard| matches!(guard.verdict, rollout_core::GuardVerdict::Breached(_)))
        .collect();
    assert_eq!(
        verdicts,
        [true, false],
        "each guard judged on its own limit"
    );
    assert_eq!(counts.guards[1].window_ms, 120_000);
    let status = system
        .cluster
        .commands
        .rollout_status(&id)
        .await
        .expect("status");
    assert_eq!(status.state, Lifecycle::Running);
    system.assert_served_matches_committed().await;

    // most reports now fail: the pausing guard acts
    report_candidate(&eval, ("checkout", "on"), 100, true).await;
    let paused = until_settled(&system, &id, "the second guard to pause it").await;
    assert_eq!(paused.state, Lifecycle::Paused);
    assert_eq!(paused.share, Some(Share::from_ppm(100_000)));
    let told = breaches().await;
    assert_eq!(told.first().map(String::as_str), Some("pause"), "{told:?}");
    system.assert_served_matches_committed().await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planner_dying_between_a_delivery_and_its_record_delivers_that_notice_again_under_its_key(
) {
    const SECRET: &str = "whsec-crash-0123456789";
    let mut system = System::start(1).await;
    let receiver = support::receiver::Receiver::start().await;
    let commands = system.cluster.commands.clone();
    commands
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag created");
    commands
        .put_webhook(
            "ops",
            &receiver.url(),
            SECRET,
            vec![EventKind::FlagDisabled],
        )
        .await
        .expect("webhook saved");
    // from here on the only planner is a process that dies right after a webhook answered
    // its first notice, before the delivery is recorded
    system.cluster.shutdown_planners().await;
    let env = std::collections::HashMap::from([
        ("ROLLOUT_NATS__URL".to_owned(), system.cluster.nats.url()),
        ("ROLLOUT_REDIS__URL".to_owned(), system.cluster.redis.url()),
        (
            "ROLLOUT_PLANNER__NOTIFY_INTERVAL".to_owned(),
            "50ms".to_owned(),
        ),
        (
            "ROLLOUT_PLANNER__WEBHOOK_TIMEOUT".to_owned(),
            "1s".to_owned(),
        ),
        (
            "ROLLOUT_FAILPOINTS".to_owned(),
            "webhook.before_save".to_owned(),
        ),
        ("ROLLOUT_LOG__FORMAT".to_owned(), "json".to_owned()),
    ]);
    let mut doomed =
        support::procs::Service::Planner.spawn("doomed", system.cluster.dir.path(), &env);
    eventually("the doomed planner to answer", PATIENCE, || async {
        commands.disable_flag("checkout").await.ok()
    })
    .await;
    let status = tokio::task::block_in_place(|| doomed.wait_exit(PATIENCE))
        .expect("the failpoint aborts the planner after the webhook answered");
    assert!(!status.success());
    let first = receiver.received();
    assert_eq!(first.len(), 1, "delivered once before the crash");
    assert!(first[0].status.is_success());

    // the next planner takes the namespace's delivery lease once it lapses and sends the
    // unrecorded notice again: same key, same body
    system.cluster.add_planner().await;
    let again = eventually("the notice to be delivered again", PATIENCE, || async {
        let received = receiver.received();
        (received.len() >= 2).then_some(received)
    })
    .await;
    assert_eq!(
        again[1].header("Idempotency-Key"),
        first[0].header("Idempotency-Key")
    );
    assert_eq!(again[1].body, first[0].body);
    let notification: rollout_wire::webhooks::Notification =
        serde_json::from_slice(&again[1].body).expect("a notification");
    assert_eq!(notification.kind, EventKind::FlagDisabled);
    // recorded now: the next change is the next notice, told once
    commands.enable_flag("checkout").await.expect("enabled");
    commands.disable_flag("checkout").await.expect("disabled");
    let later = eventually("the next notice", PATIENCE, || async {
        let received = receiver.received();
        (received.len() >= 3).then_some(received)
    })
    .await;
    assert_ne!(
        later[2].header("Idempotency-Key"),
        first[0].header("Idempotency-Key")
    );
    // the planner records a delivery after the receiver answered it: the count catches up
    eventually("the deliveries to be recorded", PATIENCE, || async {
        let list = commands.webhooks().await.expect("list");
        let delivery = &list.webhooks[0].delivery;
        ((delivery.delivered, delivery.pending) == (2, 0)).then_some(())
    })
    .await;
    assert_eq!(receiver.received().len(), 3, "each notice told once");
    system.stop().await;
}
