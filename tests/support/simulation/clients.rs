//! The client lane of a simulation run: operator commands (raw JSON over request-reply and
//! the durable stream, so every reply envelope can be compared byte for byte), retries of a
//! command id, stream bursts, fleet agents through the SDK's `FleetAgent`, and outcome
//! reports on `rollout.metrics.<ns>`. Each operation runs as its own task at its scheduled
//! time and records what it sent and got in the [`Ledger`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rollout_core::{DurationMs, Timestamp};
use rollout_sdk::{CommandClient, FleetAgent, Namespace, RequestOptions};
use rollout_wire::codec::{CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE};
use rollout_wire::{CommandVerb, Subjects};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ledger::{
    CommandRecord, DataEpoch, FleetEvidence, OutcomeRecord, ReplyRecord, SharedLedger,
};
use super::schedule::{
    flag_key, Action, AgentSpec, AudiencePlan, CommandOp, ExpectedStep, FlagEdit, FleetOp,
    Generator, Op, OutcomeBurst, Planned, SpecPlan, StageGatePlan, StartPlan, Transport, STAGES,
};
use super::{wait_for_turn, Enabled};
use crate::support::cluster::{operator_commands, wall_clock_now, Cluster};
use crate::support::oracle::SilentAgents;
use crate::support::NS;

/// How long one request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts of one request-reply sending (the same id each time) before it is left
/// unanswered.
const ATTEMPTS: usize = 3;
/// Pause between attempts.
const ATTEMPT_PAUSE: Duration = Duration::from_millis(300);
/// Operations in flight at once.
const IN_FLIGHT: usize = 16;
/// Who the simulated operator is, in the audit.
const ACTOR: &str = "sim-operator";

/// What the client lane's operations share: connections, the ledger, the agents.
#[derive(Clone)]
pub struct World {
    pub nats: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    /// For reads (`flag.get`, `rollout.status`) before a command.
    pub reads: CommandClient,
    pub ledger: SharedLedger,
    pub epoch: DataEpoch,
    pub agents: Arc<Vec<FleetAgent>>,
    pub silent: SilentAgents,
    pub enabled: Arc<Enabled>,
    namespace: Namespace,
    subjects: Subjects,
}

impl World {
    pub fn new(
        cluster: &Cluster,
        agents: &[AgentSpec],
        ledger: SharedLedger,
        epoch: DataEpoch,
        silent: SilentAgents,
        enabled: Arc<Enabled>,
    ) -> World {
        let namespace = Namespace::new(NS).expect("namespace");
        let options = RequestOptions {
            timeout: Duration::from_secs(2),
            retries: 1,
            ..RequestOptions::default()
        };
        let fleet = agents
            .iter()
            .map(|agent| {
                FleetAgent::new(
                    cluster.client.clone(),
                    namespace.clone(),
                    agent.id.clone(),
                    agent.labels.clone(),
                )
                .with_options(options.clone())
            })
            .collect();
        World {
            nats: cluster.client.clone(),
            jetstream: async_nats::jetstream::new(cluster.client.clone()),
            reads: operator_commands(cluster.client.clone()).with_options(options),
            ledger,
            epoch,
            agents: Arc::new(fleet),
            silent,
            enabled,
            namespace,
            subjects: Subjects::default(),
        }
    }

    /// Records every outcome published on `rollout.outcome.<ns>.<id>` as a stream reply of its
    /// command id, until the returned task is aborted.
    pub async fn listen_for_outcomes(&self) -> tokio::task::JoinHandle<()> {
        let mut outcomes = self
            .nats
            .subscribe(self.subjects.outcome_all())
            .await
            .expect("subscribe to outcomes");
        self.nats.flush().await.expect("flush");
        let world = self.clone();
        tokio::spawn(async move {
            while let Some(message) = outcomes.next().await {
                let Ok(rollout_wire::subjects::Route::Outcome { command_id, .. }) =
                    world.subjects.parse(message.subject.as_str())
                else {
                    continue;
                };
                let id = command_id.as_str();
                let envelope: Value = serde_json::from_slice(&message.payload)
                    .unwrap_or_else(|_| json!({"ok": false, "error": {"code": "undecodable"}}));
                let mut ledger = world.ledger.lock().expect("ledger");
                let sent_epoch = ledger
                    .commands
                    .get(id)
                    .map_or(world.epoch.now(), |command| command.stream_epoch);
                ledger.reply(
                    id,
                    ReplyRecord {
                        transport: Transport::Stream,
                        envelope,
                        sent_epoch,
                        reply_epoch: world.epoch.now(),
                    },
                );
            }
        })
    }

    /// Runs the client lane: each operation at its time after `start` (later when too many
    /// are in flight), skipping those of switched-off generators; returns once all are done.
    pub async fn run_lane(self, ops: Vec<Planned>, start: Instant) {
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let mut next_progress = Duration::from_secs(60);
        for planned in ops {
            let performed = wait_for_turn(&planned, start, &self.enabled, &self.ledger).await;
            if planned.at >= next_progress {
                self.print_progress(planned.at);
                next_progress += Duration::from_secs(60);
            }
            if !performed {
                continue;
            }
            let permit = Arc::clone(&in_flight)
                .acquire_owned()
                .await
                .expect("semaphore");
            let world = self.clone();
            tasks.spawn(async move {
                world.perform(&planned.op).await;
                drop(permit);
            });
            while let Some(done) = tasks.try_join_next() {
                done.expect("an operation task panicked");
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("an operation task panicked");
        }
    }

    fn print_progress(&self, at: Duration) {
        let ledger = self.ledger.lock().expect("ledger");
        println!(
            "[{:>5} s] {} command ids sent, {} rollouts created, {} fleet calls, {} outcome reports",
            at.as_secs(),
            ledger.commands.len(),
            ledger.rollouts.len(),
            ledger.fleet.len(),
            ledger.outcomes.iter().map(|sent| sent.reports).sum::<u64>()
        );
    }

    async fn perform(&self, op: &Op) {
        match op {
            Op::Command(command) => self.command(command).await,
            Op::Retry { of, transport } => self.retry(of, *transport).await,
            Op::StreamBurst { slot, ids } => self.stream_burst(*slot, ids).await,
            Op::Fleet(fleet) => self.fleet(fleet, &op.kind()).await,
            Op::Outcomes(burst) => self.outcomes(burst).await,
            Op::Fault(_) => unreachable!("faults run in the fault lane"),
        }
    }

    async fn command(&self, op: &CommandOp) {
        let verb = op.action.verb();
        let Some(prepared) = self.prepare(&op.id, &op.action).await else {
            self.ledger
                .lock()
                .expect("ledger")
                .skip(&format!("{verb}"), "no rollout of the flag to act on yet");
            return;
        };
        self.ledger.lock().expect("ledger").begin(
            &op.id,
            CommandRecord {
                verb,
                flag: prepared.flag,
                rollout_id: prepared.rollout_id,
                first_transport: op.transport,
                body: prepared.body.clone(),
                stream_sequences: Vec::new(),
                stream_epoch: 0,
                unanswered: 0,
                replies: Vec::new(),
            },
        );
        self.send(&op.id, verb, &prepared.body, op.transport).await;
    }

    /// The same id and body again (a client that lost the reply).
    async fn retry(&self, id: &str, transport: Transport) {
        let kind = format!("retry of a command id ({})", transport.as_str());
        let sent = self
            .ledger
            .lock()
            .expect("ledger")
            .commands
            .get(id)
            .map(|command| {
                let invalid = command
                    .first_outcome()
                    .is_some_and(|reply| reply.code() == "invalid_argument");
                (command.verb, command.body.clone(), invalid)
            });
        match sent {
            Some((_, _, true)) if !self.enabled.allows(Generator::RetriesOfInvalidInput) => {
                self.ledger.lock().expect("ledger").skip(
                    &kind,
                    "its first outcome was invalid_argument and generator retries_of_invalid_input is switched off",
                );
            }
            Some((verb, body, _)) => self.send(id, verb, &body, transport).await,
            None => self
                .ledger
                .lock()
                .expect("ledger")
                .skip(&kind, "the command was never sent"),
        }
    }

    async fn send(&self, id: &str, verb: CommandVerb, body: &Value, transport: Transport) {
        match transport {
            Transport::RequestReply => self.request(id, verb, body).await,
            Transport::Stream => self.enqueue(id, verb, body).await,
        }
    }

    /// Request-reply, retried with the same id while unanswered or `unavailable`.
    async fn request(&self, id: &str, verb: CommandVerb, body: &Value) {
        let subject = self.subjects.cmd(&self.namespace, verb);
        let payload = serde_json::to_vec(body).expect("json body");
        for _ in 0..ATTEMPTS {
            let sent_epoch = self.epoch.now();
            let reply = tokio::time::timeout(
                REPLY_TIMEOUT,
                self.nats.request_with_headers(
                    subject.clone(),
                    json_headers(),
                    payload.clone().into(),
                ),
            )
            .await;
            let answered = {
                let mut ledger = self.ledger.lock().expect("ledger");
                match reply {
                    Ok(Ok(message)) => {
                        let envelope: Value = serde_json::from_slice(&message.payload)
                            .unwrap_or_else(
                                |_| json!({"ok": false, "error": {"code": "undecodable"}}),
                            );
                        let record = ReplyRecord {
                            transport: Transport::RequestReply,
                            envelope,
                            sent_epoch,
                            reply_epoch: self.epoch.now(),
                        };
                        let outcome = record.is_outcome();
                        ledger.reply(id, record);
                        outcome
                    }
                    _ => {
                        if let Some(command) = ledger.commands.get_mut(id) {
                            command.unanswered += 1;
                        }
                        false
                    }
                }
            };
            if answered {
                return;
            }
            tokio::time::sleep(ATTEMPT_PAUSE).await;
        }
    }

    /// Publishes on the durable stream until the stream acknowledges it; the outcome
    /// arrives on `rollout.outcome.<ns>.<id>` (see [`World::listen_for_outcomes`]).
    async fn enqueue(&self, id: &str, verb: CommandVerb, body: &Value) {
        let subject = self.subjects.cmdq(&self.namespace, verb);
        let payload = serde_json::to_vec(body).expect("json body");
        for _ in 0..ATTEMPTS {
            let epoch = self.epoch.now();
            let stored = tokio::time::timeout(REPLY_TIMEOUT, async {
                self.jetstream
                    .publish_with_headers(subject.clone(), json_headers(), payload.clone().into())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            })
            .await;
            if let Ok(Ok(ack)) = stored {
                let mut ledger = self.ledger.lock().expect("ledger");
                if let Some(command) = ledger.commands.get_mut(id) {
                    command.stream_sequences.push(ack.sequence);
                    command.stream_epoch = epoch;
                }
                return;
            }
            tokio::time::sleep(ATTEMPT_PAUSE).await;
        }
        self.ledger
            .lock()
            .expect("ledger")
            .skip(&format!("{verb} (stream)"), "the stream never stored it");
    }

    /// Several description edits of one flag queued back to back.
    async fn stream_burst(&self, slot: usize, ids: &[String]) {
        let key = flag_key(slot);
        let current = match self.reads.get_flag(&key).await {
            Ok(found) => serde_json::to_value(&found.flag).expect("flag json"),
            Err(_) => fresh_flag(&key, false),
        };
        for (position, id) in ids.iter().enumerate() {
            let mut flag = current.clone();
            flag["description"] = json!(format!("burst {id}, {position} of {}", ids.len()));
            let body = json!({"command_id": id, "actor": ACTOR, "flag": flag});
            self.ledger.lock().expect("ledger").begin(
                id,
                CommandRecord {
                    verb: CommandVerb::FlagUpdate,
                    flag: Some(key.clone()),
                    rollout_id: None,
                    first_transport: Transport::Stream,
                    body: body.clone(),
                    stream_sequences: Vec::new(),
                    stream_epoch: 0,
                    unanswered: 0,
                    replies: Vec::new(),
                },
            );
            self.enqueue(id, CommandVerb::FlagUpdate, &body).await;
        }
    }

    /// Resolves an action against what exists now: the flag as stored, the latest rollout
    /// of the flag, the step its status shows; `None` when there is no rollout to act on.
    async fn prepare(&self, id: &str, action: &Action) -> Option<Prepared> {
        let key = flag_key(action.slot());
        let mut body = json!({"command_id": id, "actor": ACTOR});
        let mut rollout_id = None;
        match action {
            Action::FlagCreate { kill_switch, .. } => {
                body["flag"] = fresh_flag(&key, *kill_switch);
            }
            Action::FlagUpdate {
                edit,
                expect_version,
                ..
            } => {
                let (mut flag, version) = match self.reads.get_flag(&key).await {
                    Ok(found) => (
                        serde_json::to_value(&found.flag).expect("flag json"),
                        Some(found.version),
                    ),
                    Err(_) => (fresh_flag(&key, false), None),
                };
                apply_edit(&mut flag, edit);
                body["flag"] = flag;
                if let (true, Some(version)) = (*expect_version, version) {
                    body["expected_version"] = json!(version);
                }
            }
            Action::FlagEnable { .. } | Action::FlagDisable { .. } | Action::FlagDelete { .. } => {
                body["key"] = json!(key);
            }
            Action::RolloutCreate { spec, .. } => {
                let guards = self.enabled.allows(Generator::RolloutGuards);
                let mut rollout = rollout_spec(&key, spec, wall_clock_now(), guards);
                if spec.baseline_from_current {
                    if let Ok(found) = self.reads.get_flag(&key).await {
                        if let Some(serving) = found.flag.default.variation {
                            rollout["baseline"] = json!(serving);
                            rollout["candidate"] = json!(next_candidate(&serving));
                        }
                    }
                }
                body["rollout"] = rollout;
            }
            Action::RolloutVerb { expected, .. } | Action::RolloutStop { expected, .. } => {
                let id = self.ledger.lock().expect("ledger").latest_rollout(&key)?;
                body["rollout_id"] = json!(id);
                if let Some(step) = self.expected_step(&id, *expected).await {
                    body["expected_step"] = json!(step);
                }
                if let Action::RolloutStop {
                    percentage: Some(percentage),
                    ..
                } = action
                {
                    body["percentage"] = json!(percentage);
                }
                rollout_id = Some(id);
            }
        }
        Some(Prepared {
            body,
            flag: Some(key),
            rollout_id,
        })
    }

    async fn expected_step(&self, rollout_id: &str, expected: ExpectedStep) -> Option<usize> {
        if expected == ExpectedStep::Omitted {
            return None;
        }
        let current = self
            .reads
            .rollout_status(rollout_id)
            .await
            .ok()?
            .current_step?;
        Some(match expected {
            ExpectedStep::Stale if current > 0 => current - 1,
            ExpectedStep::Stale => current + 1,
            _ => current,
        })
    }

    async fn fleet(&self, op: &FleetOp, kind: &str) {
        let how: String = match op {
            FleetOp::Register { agent } => {
                let agent = &self.agents[*agent];
                if self.is_silent(agent.id()) {
                    "skipped: the agent is silent".to_owned()
                } else {
                    self.register(agent, false).await
                }
            }
            FleetOp::HeartbeatRound => {
                let silent = self.silent.lock().expect("silent agents").clone();
                let beats = self
                    .agents
                    .iter()
                    .filter(|agent| !silent.contains(agent.id()))
                    .map(|agent| self.register(agent, true));
                let answers: Vec<String> = futures_util::future::join_all(beats).await;
                if answers.iter().all(|answer| answer == "ok") {
                    "ok".to_owned()
                } else {
                    "some refused or unanswered".to_owned()
                }
            }
            FleetOp::Report { agent, applied } => {
                let agent = &self.agents[*agent];
                if self.is_silent(agent.id()) {
                    "skipped: the agent is silent".to_owned()
                } else {
                    let reports = applied
                        .iter()
                        .enumerate()
                        .map(|(slot, applied)| self.report(agent, flag_key(slot), *applied));
                    let answers: Vec<String> = futures_util::future::join_all(reports).await;
                    let mut ledger = self.ledger.lock().expect("ledger");
                    for answer in answers {
                        ledger.operation("fleet report (one flag)", &answer);
                    }
                    "ok".to_owned()
                }
            }
            FleetOp::GoSilent { agent } => {
                let id = self.agents[*agent].id().to_owned();
                self.silent.lock().expect("silent agents").insert(id);
                "ok".to_owned()
            }
            FleetOp::Revive { agent } => {
                let agent = &self.agents[*agent];
                self.silent
                    .lock()
                    .expect("silent agents")
                    .remove(agent.id());
                self.register(agent, true).await
            }
        };
        self.ledger.lock().expect("ledger").operation(kind, &how);
    }

    fn is_silent(&self, agent: &str) -> bool {
        self.silent.lock().expect("silent agents").contains(agent)
    }

    /// A register (or heartbeat, which registers again when the agent is unknown).
    async fn register(&self, agent: &FleetAgent, heartbeat: bool) -> String {
        let sent_at = wall_clock_now();
        let answered = if heartbeat {
            agent.heartbeat().await
        } else {
            agent.register().await
        };
        self.ledger.lock().expect("ledger").fleet(
            agent.id(),
            FleetEvidence::Registered,
            sent_at,
            answered.is_ok(),
        );
        how_it_went(&answered)
    }

    /// Asks what to run of `flag` and reports it applied (or failed).
    async fn report(&self, agent: &FleetAgent, flag: String, applied: bool) -> String {
        let desired = match agent.desired(&flag).await {
            Ok(desired) => desired,
            Err(error) => return format!("desired: {}", error.code()),
        };
        let Some(rollout_id) = desired.rollout_id.clone() else {
            return "no active rollout".to_owned();
        };
        let evidence = if applied {
            FleetEvidence::Applied {
                rollout_id,
                variation: desired.variation.clone(),
            }
        } else {
            FleetEvidence::Failed {
                rollout_id,
                variation: desired.variation.clone(),
            }
        };
        let sent_at = wall_clock_now();
        let answered = if applied {
            agent.report_applied(&desired).await
        } else {
            agent.report_failed(&desired, "simulated failure").await
        };
        self.ledger
            .lock()
            .expect("ledger")
            .fleet(agent.id(), evidence, sent_at, answered.is_ok());
        how_it_went(&answered)
    }

    /// One batch of outcome reports.
    async fn outcomes(&self, burst: &OutcomeBurst) {
        let flag = flag_key(burst.slot);
        let mut reports = Vec::new();
        for (variation, successes, errors) in &burst.counts {
            for index in 0..successes + errors {
                let outcome = if index < *successes {
                    "success"
                } else {
                    "error"
                };
                reports.push(json!({
                    "flag": flag, "entity": format!("user-{index}"),
                    "variation": variation, "outcome": outcome,
                }));
            }
        }
        let sent_at = wall_clock_now();
        let payload = serde_json::to_vec(&json!({"outcomes": reports})).expect("json");
        let published = self
            .nats
            .publish_with_headers(
                self.subjects.metrics(&self.namespace),
                json_headers(),
                payload.into(),
            )
            .await;
        let mut ledger = self.ledger.lock().expect("ledger");
        for (variation, successes, errors) in &burst.counts {
            ledger.outcomes.push(OutcomeRecord {
                flag: flag.clone(),
                variation: (*variation).to_owned(),
                reports: u64::from(successes + errors),
                sent_at,
            });
        }
        ledger.operation(
            "outcome burst on rollout.metrics",
            if published.is_ok() {
                "ok"
            } else {
                "publish failed"
            },
        );
    }
}

/// A command resolved against what exists now.
struct Prepared {
    body: Value,
    flag: Option<String>,
    rollout_id: Option<String>,
}

/// The variation an operator moves to from `serving`: `off` → `on` → `alt` → `on` (never
/// the flag's off variation, which no rollout may have as its candidate).
fn next_candidate(serving: &str) -> &'static str {
    if serving == "on" {
        "alt"
    } else {
        "on"
    }
}

/// `ok`, or the error code of a refusal (`unavailable` when unanswered).
fn how_it_went<T>(answered: &rollout_sdk::Result<T>) -> String {
    match answered {
        Ok(_) => "ok".to_owned(),
        Err(error) => error.code().to_string(),
    }
}

fn json_headers() -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE);
    headers
}

/// A simulated flag: variations `off`/`on`/`alt`, serving `off`, with rules `beta` (never a
/// rollout's target) and `staff` (the target of rule-level rollouts), and maybe a kill
/// switch.
pub fn fresh_flag(key: &str, kill_switch: bool) -> Value {
    let mut flag = json!({
        "key": key,
        "description": "simulated",
        "variations": [
            {"id": "off", "value": 0, "name": "off"},
            {"id": "on", "value": 1, "name": "on"},
            {"id": "alt", "value": 2, "name": "alt"},
        ],
        "off_variation": "off", "enabled": true, "default": {"variation": "off"},
        "rules": [
            {"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
             "serve": {"variation": "on"}},
            {"id": "staff", "conditions": [{"attribute": "team", "op": "in", "values": ["staff"]}],
             "serve": {"variation": "off"}},
        ],
    });
    if kill_switch {
        flag["kill_switch"] = kill_switch_spec();
    }
    flag
}

fn kill_switch_spec() -> Value {
    json!({"max_error_rate": 60, "min_samples": 40, "window": "10s"})
}

fn apply_edit(flag: &mut Value, edit: &FlagEdit) {
    match edit {
        FlagEdit::Description(number) => flag["description"] = json!(format!("edit {number}")),
        FlagEdit::VariationValue { variation, value } => {
            if let Some(variations) = flag["variations"].as_array_mut() {
                let count = variations.len();
                variations[variation % count]["value"] = json!(value);
            }
        }
        FlagEdit::VariationName { variation, name } => {
            if let Some(variations) = flag["variations"].as_array_mut() {
                let count = variations.len();
                variations[variation % count]["name"] = json!(format!("name {name}"));
            }
        }
        FlagEdit::NonTargetRule { plans } => {
            if let Some(rules) = flag["rules"].as_array_mut() {
                for rule in rules.iter_mut().filter(|rule| rule["id"] == "beta") {
                    rule["conditions"][0]["values"] = json!(plans);
                }
            }
        }
        FlagEdit::KillSwitch(on) => {
            if let Some(object) = flag.as_object_mut() {
                if *on {
                    object.insert("kill_switch".to_owned(), kill_switch_spec());
                } else {
                    object.remove("kill_switch");
                }
            }
        }
        FlagEdit::DefaultServe {
            variation,
            split_percentage,
        } => {
            flag["default"] = match split_percentage {
                Some(percentage) => json!({
                    "split": [{"variation": "off", "weight": 100 - percentage},
                              {"variation": "on", "weight": percentage}],
                    "salt": "sim-split",
                }),
                None => json!({"variation": variation}),
            };
        }
        FlagEdit::ToggleExtraVariation => {
            if let Some(variations) = flag["variations"].as_array_mut() {
                let before = variations.len();
                variations.retain(|variation| variation["id"] != "extra");
                if variations.len() == before {
                    variations.push(json!({"id": "extra", "value": 9}));
                }
            }
        }
    }
}

/// The spec of `plan` on flag `key`, its times made absolute from `now`; without its guard
/// unless `guards`.
pub fn rollout_spec(key: &str, plan: &SpecPlan, now: Timestamp, guards: bool) -> Value {
    let at = |offset_ms: u64| {
        now.plus(DurationMs::from_millis(
            i64::try_from(offset_ms).unwrap_or(0),
        ))
        .to_rfc3339()
    };
    let mut spec = json!({"flag": key, "baseline": plan.baseline, "candidate": plan.candidate});
    if plan.rule_target {
        spec["rule"] = json!("staff");
    }
    match &plan.audience {
        AudiencePlan::Phases(phases) => {
            spec["phases"] = phases
                .iter()
                .map(|(percentage, duration)| match duration {
                    Some(ms) => json!({"percentage": percentage, "duration": format!("{ms}ms")}),
                    None => json!({"percentage": percentage}),
                })
                .collect();
        }
        AudiencePlan::Manual(steps) => {
            spec["manual"] = steps
                .iter()
                .map(|(weight, offset)| json!({"weight": weight, "execute_at": at(*offset)}))
                .collect();
        }
        AudiencePlan::Stages(stages) => {
            spec["stages"] = stages
                .iter()
                .map(|stage| {
                    let (name, labels) = STAGES[stage.stage];
                    let labels: serde_json::Map<String, Value> = labels
                        .iter()
                        .map(|(label, value)| ((*label).to_owned(), json!(value)))
                        .collect();
                    let mut written = json!({"name": name, "labels": labels});
                    match &stage.gate {
                        StageGatePlan::Continue => {}
                        StageGatePlan::AfterMs(ms) => {
                            written["gate"] = json!({"after": format!("{ms}ms")});
                        }
                        StageGatePlan::Completion {
                            percentage,
                            max_errors,
                        } => {
                            written["gate"] = json!({
                                "min_completed_percentage": percentage, "max_errors": max_errors,
                            });
                        }
                    }
                    written
                })
                .collect();
        }
    }
    match plan.start {
        StartPlan::Now => {}
        StartPlan::InMs(offset) => spec["start_at"] = json!(at(offset)),
        StartPlan::OnCommand => spec["wait_for_start"] = json!(true),
    }
    if let (Some(guard), true) = (&plan.guard, guards) {
        spec["guard"] = json!({
            "max_error_rate": guard.max_error_rate, "min_samples": guard.min_samples,
            "window": "10s", "action": guard.action,
        });
    }
    if plan.replace_current_serve {
        spec["replace_current_serve"] = json!(true);
    }
    if plan.sticky_account {
        spec["stickiness"] = json!("account");
    }
    spec
}
