//! The schedule of a simulation run: every operation the run will perform, with its time and
//! every random parameter, drawn up front from one seed. Pure: no IO, no clock. Each lane
//! (operator commands, fleet agents, outcome reports, faults) draws from its own RNG stream
//! seeded from the run's seed, so a change of one lane's weights leaves the others as they
//! were, and nothing the servers do at run time can change what is generated.
//!
//! What an operation refers to by position — "the latest rollout of flag slot 2", "the
//! ticker leading now", "the step the rollout shows now" — is resolved when it runs; that
//! resolution (and so what the system answers) depends on timing, the schedule does not.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rollout_core::Labels;
use rollout_wire::CommandVerb;

/// Flag slots the operator works on: flags `sim-0` … `sim-3`.
pub const FLAG_SLOTS: usize = 4;
/// Fleet agents `agent-0` … `agent-7`.
pub const AGENTS: usize = 8;
/// The variations of every simulated flag.
pub const VARIATIONS: [&str; 3] = ["off", "on", "alt"];
/// The label stages a staged rollout picks from, in this order.
pub const STAGES: [(&str, &[(&str, &str)]); 3] = [
    ("canary", &[("env", "staging")]),
    ("eu", &[("env", "prod"), ("region", "eu")]),
    ("us", &[("env", "prod"), ("region", "us")]),
];

/// The key of flag slot `slot`.
pub fn flag_key(slot: usize) -> String {
    format!("sim-{slot}")
}

/// How a command travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// `rollout.cmd.<ns>.<verb>`, request-reply.
    RequestReply,
    /// The durable stream, `rollout.cmdq.<ns>.<verb>`; answered on `rollout.outcome.<ns>.<id>`.
    Stream,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::RequestReply => "request-reply",
            Transport::Stream => "stream",
        }
    }
}

/// Which step a rollout command names in `expected_step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedStep {
    Omitted,
    /// The step the rollout's status shows just before the command is sent.
    Current,
    /// A step the rollout is not in (one below the current, or one above step 0).
    Stale,
}

/// An edit of a flag's definition. Those marked "allowed during a rollout" must keep the
/// rollout served (SPEC §5); the others are refused while one is active.
#[derive(Clone, Debug, PartialEq, Hash)]
pub enum FlagEdit {
    /// Allowed during a rollout.
    Description(u32),
    /// Allowed during a rollout: the value of the variation at this index.
    VariationValue { variation: usize, value: i64 },
    /// Allowed during a rollout: the name of the variation at this index.
    VariationName { variation: usize, name: u32 },
    /// Allowed during a rollout: the values of rule `beta`, which no rollout targets.
    NonTargetRule { plans: Vec<&'static str> },
    /// Allowed during a rollout: a kill switch on or off.
    KillSwitch(bool),
    /// Refused during a default-serve rollout: serve one variation, or a split of `off`
    /// and `on` with `on` at this percentage.
    DefaultServe {
        variation: &'static str,
        split_percentage: Option<u32>,
    },
    /// Refused during a rollout: add the variation `extra`, or remove it if present.
    ToggleExtraVariation,
}

/// What a label stage's gate waits for.
#[derive(Clone, Debug, PartialEq, Hash)]
pub enum StageGatePlan {
    Continue,
    AfterMs(u64),
    Completion { percentage: u32, max_errors: u64 },
}

/// One label stage of a staged rollout.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct StagePlan {
    /// Index into [`STAGES`].
    pub stage: usize,
    pub gate: StageGatePlan,
}

/// The steps of a rollout spec.
#[derive(Clone, Debug, PartialEq)]
pub enum AudiencePlan {
    /// Percentage phases with durations in ms; the final one may have a bake time.
    Phases(Vec<(f64, Option<u64>)>),
    /// Weights with their execution time, in ms after the command is sent.
    Manual(Vec<(f64, u64)>),
    Stages(Vec<StagePlan>),
}

/// When a rollout starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StartPlan {
    Now,
    /// At this many ms after the command is sent.
    InMs(u64),
    /// On the `start` command.
    OnCommand,
}

/// A health guard on a rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardPlan {
    pub max_error_rate: f64,
    pub min_samples: u64,
    pub action: &'static str,
}

/// A rollout spec, before its times are made absolute.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecPlan {
    /// Targets rule `staff` instead of the default serve.
    pub rule_target: bool,
    pub baseline: &'static str,
    pub candidate: &'static str,
    /// Takes the variation the default serve names now as the baseline (and `on`, or `alt`
    /// after `on`, as the candidate), as an operator who looked first would; the fixed pair
    /// when the flag cannot be read or serves a split.
    pub baseline_from_current: bool,
    pub audience: AudiencePlan,
    pub start: StartPlan,
    pub guard: Option<GuardPlan>,
    pub replace_current_serve: bool,
    /// Buckets on the `account` attribute instead of the entity id.
    pub sticky_account: bool,
}

/// What an operator command does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    FlagCreate {
        slot: usize,
        kill_switch: bool,
    },
    FlagUpdate {
        slot: usize,
        edit: FlagEdit,
        /// Sends the version just read as `expected_version`.
        expect_version: bool,
    },
    FlagEnable {
        slot: usize,
    },
    FlagDisable {
        slot: usize,
    },
    FlagDelete {
        slot: usize,
    },
    RolloutCreate {
        slot: usize,
        spec: SpecPlan,
    },
    /// `start`, `pause`, `resume`, `continue`, `promote`, `rollback` or `delete` of the latest
    /// rollout of the slot's flag.
    RolloutVerb {
        slot: usize,
        verb: CommandVerb,
        expected: ExpectedStep,
    },
    RolloutStop {
        slot: usize,
        percentage: Option<f64>,
        expected: ExpectedStep,
    },
}

impl Action {
    pub fn verb(&self) -> CommandVerb {
        match self {
            Action::FlagCreate { .. } => CommandVerb::FlagCreate,
            Action::FlagUpdate { .. } => CommandVerb::FlagUpdate,
            Action::FlagEnable { .. } => CommandVerb::FlagEnable,
            Action::FlagDisable { .. } => CommandVerb::FlagDisable,
            Action::FlagDelete { .. } => CommandVerb::FlagDelete,
            Action::RolloutCreate { .. } => CommandVerb::RolloutCreate,
            Action::RolloutVerb { verb, .. } => *verb,
            Action::RolloutStop { .. } => CommandVerb::RolloutStop,
        }
    }

    pub fn slot(&self) -> usize {
        match self {
            Action::FlagCreate { slot, .. }
            | Action::FlagUpdate { slot, .. }
            | Action::FlagEnable { slot }
            | Action::FlagDisable { slot }
            | Action::FlagDelete { slot }
            | Action::RolloutCreate { slot, .. }
            | Action::RolloutVerb { slot, .. }
            | Action::RolloutStop { slot, .. } => *slot,
        }
    }
}

/// One operator command with its id.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandOp {
    pub id: String,
    pub transport: Transport,
    pub action: Action,
}

/// What a fleet agent does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FleetOp {
    Register {
        agent: usize,
    },
    /// Every agent that is not silent heartbeats.
    HeartbeatRound,
    /// Asks `desired` for every flag slot and reports what it got applied (or, where
    /// `applied[slot]` is false, failed) for each flag with an active rollout.
    Report {
        agent: usize,
        applied: Vec<bool>,
    },
    /// Stops heartbeating, asking and reporting, as a dead machine.
    GoSilent {
        agent: usize,
    },
    /// Heartbeats again (registering again if the evaluators forgot it).
    Revive {
        agent: usize,
    },
}

/// Outcome reports on `rollout.metrics.<ns>`: per variation, successes and errors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OutcomeBurst {
    pub slot: usize,
    pub counts: Vec<(&'static str, u32, u32)>,
}

/// A fault: which process or link, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// kill -9 of a ticker (the leader, or a follower picked by `pick`), restarted after
    /// `down_ms`.
    TickerKill {
        leader: bool,
        pick: usize,
        down_ms: u64,
    },
    /// SIGSTOP of a ticker for `hold_ms`, then SIGCONT.
    TickerFreeze {
        leader: bool,
        pick: usize,
        hold_ms: u64,
    },
    /// A ticker's link to Redis or NATS blackholed or severed for `hold_ms`.
    LinkCut {
        leader: bool,
        pick: usize,
        redis: bool,
        blackhole: bool,
        hold_ms: u64,
    },
    /// Redis kill -9 and restart after `down_ms`, from its AOF or with its data gone.
    RedisRestart {
        keep_data: bool,
        down_ms: u64,
    },
    /// Redis's AOF copied now, then after `age_ms` Redis killed and restarted from that
    /// older copy.
    RedisRestoreOlder {
        age_ms: u64,
        down_ms: u64,
    },
    NatsRestart,
    /// An evaluator process (`which`) killed -9 and a fresh one started after `down_ms`.
    EvaluatorReplace {
        which: usize,
        down_ms: u64,
    },
    /// A plain subscriber on `>` (or `_INBOX.>`) that never reads, for `hold_ms`.
    RogueSubscriber {
        inbox_only: bool,
        hold_ms: u64,
    },
}

impl Fault {
    /// About how long the fault lasts, to space faults apart.
    pub fn span_ms(&self) -> u64 {
        match self {
            Fault::TickerKill { down_ms, .. } => down_ms + 300,
            Fault::TickerFreeze { hold_ms, .. }
            | Fault::LinkCut { hold_ms, .. }
            | Fault::RogueSubscriber { hold_ms, .. } => *hold_ms,
            Fault::RedisRestart { down_ms, .. } => down_ms + 1_000,
            Fault::RedisRestoreOlder { age_ms, down_ms } => age_ms + down_ms + 1_000,
            Fault::NatsRestart => 1_500,
            Fault::EvaluatorReplace { down_ms, .. } => down_ms + 1_500,
        }
    }
}

/// Anything the run does.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Command(CommandOp),
    /// The same command id sent again, as a client that lost the reply does.
    Retry {
        of: String,
        transport: Transport,
    },
    /// Several `flag.update`s of one flag queued on the stream back to back.
    StreamBurst {
        slot: usize,
        ids: Vec<String>,
    },
    Fleet(FleetOp),
    Outcomes(OutcomeBurst),
    Fault(Fault),
}

/// The generators, each of which can be switched off (see `OPEN_DEFECTS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Generator {
    Commands,
    /// Health guards in rollout specs (a spec keeps everything else when they are off).
    RolloutGuards,
    Retries,
    /// Retries of a command id whose first outcome was `invalid_argument` (a part of
    /// [`Generator::Retries`], decided when the retry runs).
    RetriesOfInvalidInput,
    StreamBursts,
    FleetAgents,
    SilentAgents,
    OutcomeReports,
    TickerKill,
    TickerFreeze,
    LinkCut,
    RedisRestartKeepingData,
    RedisRestartLosingData,
    RedisRestoreOlder,
    NatsRestart,
    EvaluatorReplace,
    RogueSubscriber,
}

impl Generator {
    pub const ALL: [Generator; 17] = [
        Generator::Commands,
        Generator::RolloutGuards,
        Generator::Retries,
        Generator::RetriesOfInvalidInput,
        Generator::StreamBursts,
        Generator::FleetAgents,
        Generator::SilentAgents,
        Generator::OutcomeReports,
        Generator::TickerKill,
        Generator::TickerFreeze,
        Generator::LinkCut,
        Generator::RedisRestartKeepingData,
        Generator::RedisRestartLosingData,
        Generator::RedisRestoreOlder,
        Generator::NatsRestart,
        Generator::EvaluatorReplace,
        Generator::RogueSubscriber,
    ];

    /// The name `ROLLOUT_SIM_ENABLE` takes.
    pub fn name(self) -> &'static str {
        match self {
            Generator::Commands => "commands",
            Generator::RolloutGuards => "rollout_guards",
            Generator::Retries => "retries",
            Generator::RetriesOfInvalidInput => "retries_of_invalid_input",
            Generator::StreamBursts => "stream_bursts",
            Generator::FleetAgents => "fleet_agents",
            Generator::SilentAgents => "silent_agents",
            Generator::OutcomeReports => "outcome_reports",
            Generator::TickerKill => "ticker_kill",
            Generator::TickerFreeze => "ticker_freeze",
            Generator::LinkCut => "link_cut",
            Generator::RedisRestartKeepingData => "redis_restart_keeping_data",
            Generator::RedisRestartLosingData => "redis_restart_losing_data",
            Generator::RedisRestoreOlder => "redis_restore_older",
            Generator::NatsRestart => "nats_restart",
            Generator::EvaluatorReplace => "evaluator_replace",
            Generator::RogueSubscriber => "rogue_subscriber",
        }
    }
}

impl Op {
    /// The generator that made it.
    pub fn generator(&self) -> Generator {
        match self {
            Op::Command(_) => Generator::Commands,
            Op::Retry { .. } => Generator::Retries,
            Op::StreamBurst { .. } => Generator::StreamBursts,
            Op::Fleet(FleetOp::GoSilent { .. } | FleetOp::Revive { .. }) => Generator::SilentAgents,
            Op::Fleet(_) => Generator::FleetAgents,
            Op::Outcomes(_) => Generator::OutcomeReports,
            Op::Fault(fault) => match fault {
                Fault::TickerKill { .. } => Generator::TickerKill,
                Fault::TickerFreeze { .. } => Generator::TickerFreeze,
                Fault::LinkCut { .. } => Generator::LinkCut,
                Fault::RedisRestart {
                    keep_data: true, ..
                } => Generator::RedisRestartKeepingData,
                Fault::RedisRestart {
                    keep_data: false, ..
                } => Generator::RedisRestartLosingData,
                Fault::RedisRestoreOlder { .. } => Generator::RedisRestoreOlder,
                Fault::NatsRestart => Generator::NatsRestart,
                Fault::EvaluatorReplace { .. } => Generator::EvaluatorReplace,
                Fault::RogueSubscriber { .. } => Generator::RogueSubscriber,
            },
        }
    }

    /// A short name of what it does, for the report.
    pub fn kind(&self) -> String {
        match self {
            Op::Command(command) => {
                format!("{} ({})", command.action.verb(), command.transport.as_str())
            }
            Op::Retry { transport, .. } => {
                format!("retry of a command id ({})", transport.as_str())
            }
            Op::StreamBurst { .. } => "flag.update burst (stream)".to_owned(),
            Op::Fleet(fleet) => match fleet {
                FleetOp::Register { .. } => "fleet register".to_owned(),
                FleetOp::HeartbeatRound => "fleet heartbeat round".to_owned(),
                FleetOp::Report { .. } => "fleet desired and report, every flag".to_owned(),
                FleetOp::GoSilent { .. } => "fleet agent goes silent".to_owned(),
                FleetOp::Revive { .. } => "fleet agent comes back".to_owned(),
            },
            Op::Outcomes(_) => "outcome burst on rollout.metrics".to_owned(),
            Op::Fault(_) => format!("fault: {}", self.generator().name()),
        }
    }

    pub fn is_fault(&self) -> bool {
        matches!(self, Op::Fault(_))
    }
}

/// An operation at its time, counted from the start of the chaos phase.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub at: Duration,
    pub op: Op,
}

/// A fleet agent: its id and labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentSpec {
    pub id: String,
    pub labels: Labels,
}

/// Everything a run will do.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub chaos: Duration,
    pub agents: Vec<AgentSpec>,
    /// Sorted by time.
    pub ops: Vec<Planned>,
}

impl Schedule {
    /// Draws the whole schedule of a chaos phase lasting `chaos` from `seed`.
    pub fn generate(seed: u64, chaos: Duration) -> Schedule {
        let mut root = StdRng::seed_from_u64(seed);
        let mut lane = || StdRng::seed_from_u64(root.random());
        let (mut agent_rng, mut operator_rng, mut fleet_rng, mut outcome_rng, mut fault_rng) =
            (lane(), lane(), lane(), lane(), lane());
        let chaos_ms = u64::try_from(chaos.as_millis()).unwrap_or(u64::MAX);
        let agents = agent_specs(&mut agent_rng);
        let mut ops = Vec::new();
        operator_lane(&mut operator_rng, chaos_ms, &mut ops);
        fleet_lane(&mut fleet_rng, chaos_ms, &mut ops);
        outcome_lane(&mut outcome_rng, chaos_ms, &mut ops);
        fault_lane(&mut fault_rng, chaos_ms, &mut ops);
        // stable: operations at the same time keep their lane order
        ops.sort_by_key(|planned| planned.at);
        Schedule {
            seed,
            chaos,
            agents,
            ops,
        }
    }

    /// A fingerprint of the whole schedule: equal for equal seeds and durations.
    pub fn digest(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        format!("{:?}", self.agents).hash(&mut hasher);
        format!("{:?}", self.ops).hash(&mut hasher);
        hasher.finish()
    }

    /// Operations by kind.
    pub fn census(&self) -> BTreeMap<String, u64> {
        let mut census = BTreeMap::new();
        for planned in &self.ops {
            *census.entry(planned.op.kind()).or_default() += 1;
        }
        census
    }

    /// The operations of the client lane (commands, fleet, outcomes) and of the fault lane.
    pub fn lanes(&self) -> (Vec<Planned>, Vec<Planned>) {
        self.ops
            .iter()
            .cloned()
            .partition(|planned| !planned.op.is_fault())
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Picks by weight.
fn weighted<T: Copy>(rng: &mut StdRng, choices: &[(u32, T)]) -> T {
    let total: u32 = choices.iter().map(|(weight, _)| weight).sum();
    let mut ticket = rng.random_range(0..total);
    for (weight, choice) in choices {
        if ticket < *weight {
            return *choice;
        }
        ticket -= weight;
    }
    choices[choices.len() - 1].1
}

fn agent_specs(rng: &mut StdRng) -> Vec<AgentSpec> {
    (0..AGENTS)
        .map(|index| {
            let env = if index < 2 { "staging" } else { "prod" };
            let region = if rng.random_bool(0.5) { "eu" } else { "us" };
            AgentSpec {
                id: format!("agent-{index}"),
                labels: Labels::from([
                    ("env".to_owned(), env.to_owned()),
                    ("region".to_owned(), region.to_owned()),
                ]),
            }
        })
        .collect()
}

#[derive(Clone, Copy)]
enum OperatorChoice {
    Edit,
    CreateRollout,
    Verb(CommandVerb),
    Stop,
    Enable,
    Disable,
    DeleteFlag,
    CreateFlag,
    Burst,
}

const OPERATOR_WEIGHTS: [(u32, OperatorChoice); 15] = [
    (18, OperatorChoice::Edit),
    (16, OperatorChoice::CreateRollout),
    (3, OperatorChoice::Verb(CommandVerb::RolloutStart)),
    (5, OperatorChoice::Verb(CommandVerb::RolloutPause)),
    (5, OperatorChoice::Verb(CommandVerb::RolloutResume)),
    (9, OperatorChoice::Verb(CommandVerb::RolloutContinue)),
    (3, OperatorChoice::Verb(CommandVerb::RolloutPromote)),
    (3, OperatorChoice::Verb(CommandVerb::RolloutRollback)),
    (2, OperatorChoice::Verb(CommandVerb::RolloutDelete)),
    (4, OperatorChoice::Stop),
    (3, OperatorChoice::Enable),
    (3, OperatorChoice::Disable),
    (1, OperatorChoice::DeleteFlag),
    (5, OperatorChoice::CreateFlag),
    (2, OperatorChoice::Burst),
];

fn operator_lane(rng: &mut StdRng, chaos_ms: u64, ops: &mut Vec<Planned>) {
    let mut issued = 0_u64;
    let mut next_id = move || {
        issued += 1;
        format!("c-{issued}")
    };
    // every flag slot exists from the start
    for slot in 0..FLAG_SLOTS {
        ops.push(Planned {
            at: ms(slot as u64 * 50),
            op: Op::Command(CommandOp {
                id: next_id(),
                transport: Transport::RequestReply,
                action: Action::FlagCreate {
                    slot,
                    kill_switch: rng.random_bool(0.3),
                },
            }),
        });
    }
    // the operator re-creates its flags now and then (refused while they exist), so a flag
    // lost with Redis's data comes back
    for slot in 0..FLAG_SLOTS {
        let mut at = rng.random_range(5_000..=10_000);
        while at < chaos_ms {
            ops.push(Planned {
                at: ms(at),
                op: Op::Command(CommandOp {
                    id: format!("c-recreate-{slot}-{at}"),
                    transport: Transport::RequestReply,
                    action: Action::FlagCreate {
                        slot,
                        kill_switch: rng.random_bool(0.3),
                    },
                }),
            });
            at += rng.random_range(6_000..=12_000);
        }
    }
    let mut at = 500;
    loop {
        at += rng.random_range(120..=480);
        if at >= chaos_ms {
            return;
        }
        let slot = rng.random_range(0..FLAG_SLOTS);
        let action = match weighted(rng, &OPERATOR_WEIGHTS) {
            OperatorChoice::Burst => {
                let ids = (0..rng.random_range(3..=5)).map(|_| next_id()).collect();
                ops.push(Planned {
                    at: ms(at),
                    op: Op::StreamBurst { slot, ids },
                });
                continue;
            }
            OperatorChoice::Edit => Action::FlagUpdate {
                slot,
                edit: flag_edit(rng),
                expect_version: rng.random_bool(0.3),
            },
            OperatorChoice::CreateRollout => Action::RolloutCreate {
                slot,
                spec: spec_plan(rng),
            },
            OperatorChoice::Verb(verb) => Action::RolloutVerb {
                slot,
                verb,
                expected: expected_step(rng),
            },
            OperatorChoice::Stop => Action::RolloutStop {
                slot,
                percentage: rng
                    .random_bool(0.5)
                    .then(|| f64::from(rng.random_range(1..=100_u32))),
                expected: expected_step(rng),
            },
            OperatorChoice::Enable => Action::FlagEnable { slot },
            OperatorChoice::Disable => Action::FlagDisable { slot },
            OperatorChoice::DeleteFlag => Action::FlagDelete { slot },
            OperatorChoice::CreateFlag => Action::FlagCreate {
                slot,
                kill_switch: rng.random_bool(0.3),
            },
        };
        let id = next_id();
        let transport = if rng.random_bool(0.25) {
            Transport::Stream
        } else {
            Transport::RequestReply
        };
        if rng.random_bool(0.2) {
            let retry_at = at + rng.random_range(200..=3_000);
            let retry_transport = if rng.random_bool(0.5) {
                Transport::Stream
            } else {
                Transport::RequestReply
            };
            if retry_at < chaos_ms {
                ops.push(Planned {
                    at: ms(retry_at),
                    op: Op::Retry {
                        of: id.clone(),
                        transport: retry_transport,
                    },
                });
            }
        }
        ops.push(Planned {
            at: ms(at),
            op: Op::Command(CommandOp {
                id,
                transport,
                action,
            }),
        });
    }
}

fn expected_step(rng: &mut StdRng) -> ExpectedStep {
    weighted(
        rng,
        &[
            (50, ExpectedStep::Omitted),
            (35, ExpectedStep::Current),
            (15, ExpectedStep::Stale),
        ],
    )
}

#[derive(Clone, Copy)]
enum EditChoice {
    Description,
    Value,
    Name,
    Rule,
    KillSwitch,
    Default,
    Extra,
}

fn flag_edit(rng: &mut StdRng) -> FlagEdit {
    let choice = weighted(
        rng,
        &[
            (4, EditChoice::Description),
            (3, EditChoice::Value),
            (2, EditChoice::Name),
            (3, EditChoice::Rule),
            (2, EditChoice::KillSwitch),
            (3, EditChoice::Default),
            (1, EditChoice::Extra),
        ],
    );
    match choice {
        EditChoice::Description => FlagEdit::Description(rng.random_range(0..1_000)),
        EditChoice::Value => FlagEdit::VariationValue {
            variation: rng.random_range(0..VARIATIONS.len()),
            value: rng.random_range(0..100),
        },
        EditChoice::Name => FlagEdit::VariationName {
            variation: rng.random_range(0..VARIATIONS.len()),
            name: rng.random_range(0..1_000),
        },
        EditChoice::Rule => {
            let all = ["beta", "gamma", "delta", "pilot"];
            let plans = all
                .iter()
                .copied()
                .filter(|_| rng.random_bool(0.5))
                .collect::<Vec<_>>();
            FlagEdit::NonTargetRule {
                plans: if plans.is_empty() {
                    vec!["beta"]
                } else {
                    plans
                },
            }
        }
        EditChoice::KillSwitch => FlagEdit::KillSwitch(rng.random_bool(0.5)),
        EditChoice::Default => FlagEdit::DefaultServe {
            variation: VARIATIONS[rng.random_range(0..VARIATIONS.len())],
            split_percentage: rng.random_bool(0.4).then(|| rng.random_range(5..=95)),
        },
        EditChoice::Extra => FlagEdit::ToggleExtraVariation,
    }
}

fn spec_plan(rng: &mut StdRng) -> SpecPlan {
    let rule_target = rng.random_bool(0.15);
    let (baseline, candidate) = if rule_target {
        ("off", "on")
    } else {
        weighted(
            rng,
            &[
                (70, ("off", "on")),
                (15, ("on", "alt")),
                (15, ("off", "alt")),
            ],
        )
    };
    let audience = match rng.random_range(0..20) {
        0..=10 => phases(rng),
        11..=13 => manual(rng),
        _ => stages(rng),
    };
    let start_delay = rng.random_range(300..=2_000);
    let start = weighted(
        rng,
        &[
            (70, StartPlan::Now),
            (15, StartPlan::InMs(start_delay)),
            (15, StartPlan::OnCommand),
        ],
    );
    let guard = rng.random_bool(0.3).then(|| GuardPlan {
        max_error_rate: 25.0,
        min_samples: rng.random_range(10..=30),
        action: ["pause", "stop", "rollback"][rng.random_range(0..3)],
    });
    SpecPlan {
        rule_target,
        baseline,
        candidate,
        baseline_from_current: !rule_target && rng.random_bool(0.6),
        audience,
        start,
        guard,
        replace_current_serve: rng.random_bool(0.15),
        sticky_account: rng.random_bool(0.1),
    }
}

fn phases(rng: &mut StdRng) -> AudiencePlan {
    const SHARES: [f64; 7] = [1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0];
    let count = rng.random_range(2..=4);
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    while chosen.len() < count {
        chosen.insert(rng.random_range(0..SHARES.len()));
    }
    let last = chosen.len() - 1;
    AudiencePlan::Phases(
        chosen
            .into_iter()
            .enumerate()
            .map(|(position, share)| {
                let duration = if position < last || rng.random_bool(0.5) {
                    Some(rng.random_range(300..=3_000))
                } else {
                    None
                };
                (SHARES[share], duration)
            })
            .collect(),
    )
}

fn manual(rng: &mut StdRng) -> AudiencePlan {
    const WEIGHTS: [f64; 5] = [10.0, 20.0, 40.0, 60.0, 100.0];
    let count = rng.random_range(2..=3);
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    while chosen.len() < count {
        chosen.insert(rng.random_range(0..WEIGHTS.len()));
    }
    // the planner's `min_phase_interval` is 1 s in these tests
    let mut offset = rng.random_range(200..=1_500);
    AudiencePlan::Manual(
        chosen
            .into_iter()
            .map(|weight| {
                let step = (WEIGHTS[weight], offset);
                offset += rng.random_range(1_100..=2_500);
                step
            })
            .collect(),
    )
}

fn stages(rng: &mut StdRng) -> AudiencePlan {
    let count = rng.random_range(1..=2);
    let first = rng.random_range(0..=STAGES.len() - count);
    AudiencePlan::Stages(
        (first..first + count)
            .map(|stage| StagePlan {
                stage,
                gate: match rng.random_range(0..10) {
                    0..=3 => StageGatePlan::Continue,
                    4..=5 => StageGatePlan::AfterMs(rng.random_range(500..=2_000)),
                    _ => StageGatePlan::Completion {
                        percentage: if rng.random_bool(0.5) { 50 } else { 100 },
                        max_errors: rng.random_range(0..=1),
                    },
                },
            })
            .collect(),
    )
}

fn fleet_lane(rng: &mut StdRng, chaos_ms: u64, ops: &mut Vec<Planned>) {
    for agent in 0..AGENTS {
        ops.push(Planned {
            at: ms(100 + agent as u64 * 30),
            op: Op::Fleet(FleetOp::Register { agent }),
        });
    }
    let mut beat = 1_000;
    while beat < chaos_ms {
        ops.push(Planned {
            at: ms(beat),
            op: Op::Fleet(FleetOp::HeartbeatRound),
        });
        beat += 1_000;
    }
    let mut at = 600;
    loop {
        at += rng.random_range(150..=600);
        if at >= chaos_ms {
            break;
        }
        let agent = rng.random_range(0..AGENTS);
        let op = if rng.random_bool(0.03) {
            FleetOp::Register { agent }
        } else {
            FleetOp::Report {
                agent,
                applied: (0..FLAG_SLOTS).map(|_| rng.random_bool(0.85)).collect(),
            }
        };
        ops.push(Planned {
            at: ms(at),
            op: Op::Fleet(op),
        });
    }
    // agents fall silent and come back; at most half of them at once
    let mut silent_until = [0_u64; AGENTS];
    let mut at = 4_000;
    loop {
        at += rng.random_range(5_000..=12_000);
        if at >= chaos_ms {
            break;
        }
        let agent = rng.random_range(0..AGENTS);
        let silent_now = silent_until.iter().filter(|until| **until > at).count();
        if silent_until[agent] > at || silent_now >= AGENTS / 2 {
            continue;
        }
        let back = at + rng.random_range(3_000..=10_000);
        silent_until[agent] = back;
        ops.push(Planned {
            at: ms(at),
            op: Op::Fleet(FleetOp::GoSilent { agent }),
        });
        if back < chaos_ms {
            ops.push(Planned {
                at: ms(back),
                op: Op::Fleet(FleetOp::Revive { agent }),
            });
        }
    }
}

fn outcome_lane(rng: &mut StdRng, chaos_ms: u64, ops: &mut Vec<Planned>) {
    let mut at = 800;
    loop {
        at += rng.random_range(300..=1_200);
        if at >= chaos_ms {
            return;
        }
        let slot = rng.random_range(0..FLAG_SLOTS);
        let first = rng.random_range(0..VARIATIONS.len());
        let variations = if rng.random_bool(0.5) {
            vec![first]
        } else {
            vec![first, (first + 1) % VARIATIONS.len()]
        };
        let counts = variations
            .into_iter()
            .map(|variation| {
                let failing = rng.random_bool(0.4);
                let successes = rng.random_range(5..=30);
                let errors = if failing {
                    rng.random_range(5..=30)
                } else {
                    rng.random_range(0..=3)
                };
                (VARIATIONS[variation], successes, errors)
            })
            .collect();
        ops.push(Planned {
            at: ms(at),
            op: Op::Outcomes(OutcomeBurst { slot, counts }),
        });
    }
}

#[derive(Clone, Copy)]
enum FaultChoice {
    TickerKill,
    TickerFreeze,
    LinkCut,
    RedisKeep,
    RedisLose,
    RedisOlder,
    Nats,
    Evaluator,
    Rogue,
}

fn fault_lane(rng: &mut StdRng, chaos_ms: u64, ops: &mut Vec<Planned>) {
    let mut at = 2_500;
    loop {
        let leader = rng.random_bool(0.7);
        let pick = rng.random_range(0..8);
        let fault = match weighted(
            rng,
            &[
                (14, FaultChoice::TickerKill),
                (12, FaultChoice::TickerFreeze),
                (12, FaultChoice::LinkCut),
                (6, FaultChoice::RedisKeep),
                (3, FaultChoice::RedisLose),
                (2, FaultChoice::RedisOlder),
                (5, FaultChoice::Nats),
                (8, FaultChoice::Evaluator),
                (5, FaultChoice::Rogue),
            ],
        ) {
            FaultChoice::TickerKill => Fault::TickerKill {
                leader,
                pick,
                down_ms: rng.random_range(100..=1_500),
            },
            FaultChoice::TickerFreeze => Fault::TickerFreeze {
                leader,
                pick,
                hold_ms: rng.random_range(300..=2_500),
            },
            FaultChoice::LinkCut => Fault::LinkCut {
                leader,
                pick,
                redis: rng.random_bool(0.5),
                blackhole: rng.random_bool(0.5),
                hold_ms: rng.random_range(500..=3_000),
            },
            FaultChoice::RedisKeep => Fault::RedisRestart {
                keep_data: true,
                down_ms: rng.random_range(100..=1_500),
            },
            FaultChoice::RedisLose => Fault::RedisRestart {
                keep_data: false,
                down_ms: rng.random_range(100..=1_500),
            },
            FaultChoice::RedisOlder => Fault::RedisRestoreOlder {
                age_ms: rng.random_range(2_000..=8_000),
                down_ms: rng.random_range(100..=800),
            },
            FaultChoice::Nats => Fault::NatsRestart,
            FaultChoice::Evaluator => Fault::EvaluatorReplace {
                which: pick,
                down_ms: rng.random_range(100..=2_000),
            },
            FaultChoice::Rogue => Fault::RogueSubscriber {
                inbox_only: rng.random_bool(0.5),
                hold_ms: rng.random_range(3_000..=6_000),
            },
        };
        if at + fault.span_ms() + 1_000 > chaos_ms {
            return;
        }
        // Redis losing data erases the audit the checks read: leave the last 20 s to faults
        // that keep it, so the commands of the end are checked
        let loses_data = matches!(
            fault,
            Fault::RedisRestart {
                keep_data: false,
                ..
            } | Fault::RedisRestoreOlder { .. }
        );
        if loses_data && at + fault.span_ms() + 20_000 > chaos_ms {
            at += 500;
            continue;
        }
        let span = fault.span_ms();
        ops.push(Planned {
            at: ms(at),
            op: Op::Fault(fault),
        });
        at += span + rng.random_range(1_500..=5_000);
    }
}
