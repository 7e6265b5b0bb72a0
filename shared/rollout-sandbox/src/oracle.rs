//! The served-content oracle (SPEC §11.1 "Served = committed"): within 2 s of any commit,
//! every evaluator replica — over OFREP HTTP and over NATS `rollout.eval.<ns>` — and fleet
//! `desired` answer, for every entity, exactly what `rollout-core` computes from the state
//! committed in Redis. Versions say which state a replica holds; this compares what it
//! *serves*, so a right version with the wrong content is caught too.
//!
//! How it judges, without any of the evaluator's code:
//!
//! 1. **The committed state** ([`Oracle::read_committed`]): every flag record of the
//!    namespace with its version and, for a flag with an active rollout, that rollout record,
//!    read as the evaluator's load path reads them (`rollout_store::load_flag`,
//!    `load_rollout`) and then the versions read again: a flag whose version moved meanwhile
//!    is read again, so each flag and its rollout are one committed state (every rollout
//!    change raises its flag's version). Each is compiled as an evaluator compiles it:
//!    `CompiledFlag::compile(&flag, version, view)` with the view
//!    `state.view(&rollout.id, &rollout.plan)` ([`CommittedFlag`]).
//! 2. **The entities** ([`sample_entities`], at least 200 a flag) straddle what matters:
//!    ids whose bucket lies just below and just above each share boundary (the active
//!    rollout's share, a stopped rollout's split, both with the plan's salt and stickiness),
//!    entities matching each targeting rule, entities without the rollout's stickiness
//!    attribute, random ones, and for flags whose answer depends on labels the registered
//!    fleet agents (id, labels and attributes, as the evaluator builds an agent's entity).
//! 3. **The served answers** ([`Oracle::ask`]): each replica over its own OFREP address — a
//!    request on `rollout.eval.<ns>` reaches one replica of the queue group, so it cannot
//!    cover each replica, and an in-process handle's snapshot is its state, not what it
//!    serves — then the NATS path and fleet `desired` through the queue group.
//! 4. **The timing rule** ([`Judge`], pure, time passed in): an answer that differs from
//!    the latest committed state opens a mismatch; it becomes a violation only when, more
//!    than 2 s after it was first seen, the answer still differs from every state committed
//!    in the last 2 s. Matching the latest state closes it. An unreachable replica is no
//!    served mismatch: it is counted apart, and forgets its open mismatches (a restarted
//!    replica starts afresh).
//!
//! Use [`assert_served_matches_committed`] after a test changes state, and
//! [`OracleMonitor`] in the background of a chaos run (it returns [`OracleFindings`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rollout_core::eval::parse_semver;
use rollout_core::{
    AttributeValue, Attributes, CompiledFlag, Entity, Flag, Operator, Reason, RolloutView, Rule,
    Share, Target, ViewAudience,
};
use rollout_sdk::Namespace;
use rollout_store::fleet::{load_agents, Agent};
use rollout_store::Keys;
use rollout_store::{load_flag, load_rollout};
use rollout_wire::codec::{self, Encoding};
use rollout_wire::envelope::{decode_reply, ErrorCode};
use rollout_wire::eval::{EvalMany, EvalRequest};
use rollout_wire::fleet::{Desired, DesiredQuery};
use rollout_wire::subjects::{FleetVerb, Subjects};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{http, Replica, Sandbox, PATIENCE};

/// How long a served answer may lag the commit that changed it (SPEC §11.1).
pub const GRACE: Duration = Duration::from_secs(2);

/// Entities whose bucket lies on each side of a share boundary.
const PER_SIDE_OF_BOUNDARY: usize = 100;
/// Ids bucketed to find those closest to a boundary: the nearest 100 of 5 000 lie within
/// about 2 % of it.
const BOUNDARY_CANDIDATES: usize = 5_000;
/// Entities matching each targeting rule.
const PER_RULE: usize = 10;
/// Entities without the rollout's stickiness attribute.
const WITHOUT_STICKINESS: usize = 10;
/// Random entities in every sample.
const RANDOM: usize = 40;
/// The least entities sampled for one flag.
const MIN_SAMPLE: usize = 200;
/// Served answers asked for at once.
const CONCURRENCY: usize = 16;
/// How long one answer may take before its replica counts as unreachable.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a flag is read again when its version keeps moving while it is read.
const READ_ATTEMPTS: usize = 8;
/// A monitor's pause between rounds.
const MONITOR_INTERVAL: Duration = Duration::from_millis(150);
/// Checks a monitor round takes from its rotation over every flag's sample.
const MONITOR_ROTATION: usize = 48;
/// Checks with an open mismatch a monitor round asks again, at most.
const MONITOR_REASKED: usize = 96;

/// Asserts that every replica of `sandbox`'s in-process evaluators (over OFREP), the NATS
/// path and fleet `desired` serve, for every sampled entity of every flag of its
/// namespace, what the committed state gives; a mismatch may last at most [`GRACE`].
/// Rounds of reading and asking repeat until one finds nothing to mismatch.
pub async fn assert_served_matches_committed(sandbox: &Sandbox) {
    Oracle::of_sandbox(sandbox)
        .await
        .assert_served_matches_committed()
        .await;
}

/// One flag as committed: its definition at a version, the view of its active rollout, and
/// `rollout-core`'s compilation of the two.
#[derive(Clone, Debug)]
pub struct CommittedFlag {
    pub flag: Flag,
    pub version: u64,
    pub rollout: Option<RolloutView>,
    pub compiled: Arc<CompiledFlag>,
}

impl CommittedFlag {
    pub fn compile(
        flag: Flag,
        version: u64,
        rollout: Option<RolloutView>,
    ) -> Result<CommittedFlag, String> {
        let compiled =
            CompiledFlag::compile(&flag, version, rollout.as_ref()).map_err(|errors| {
                format!(
                    "committed flag {} at version {version} does not compile: {errors}",
                    flag.key
                )
            })?;
        Ok(CommittedFlag {
            flag,
            version,
            rollout,
            compiled: Arc::new(compiled),
        })
    }

    /// Whether an entity's labels can change its answer (label stages, running or frozen):
    /// then fleet `desired` is asked for every registered agent.
    pub fn depends_on_labels(&self) -> bool {
        let staged_rollout = self
            .rollout
            .as_ref()
            .is_some_and(|view| matches!(view.audience, ViewAudience::Stages { .. }));
        staged_rollout
            || self.flag.default.stages.is_some()
            || self
                .flag
                .rules
                .iter()
                .any(|rule| rule.serve.stages.is_some())
    }
}

/// The committed state of (part of) a namespace.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    pub flags: BTreeMap<String, CommittedFlag>,
    pub agents: Vec<Agent>,
}

/// What `rollout-core` computes for one entity from one committed state.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    pub variation: String,
    pub value: Value,
    pub version: u64,
    pub reason: Reason,
    pub bucket: Option<u32>,
}

impl Expected {
    pub fn of(compiled: &CompiledFlag, entity: &Entity) -> Expected {
        let evaluation = compiled.evaluate(entity);
        Expected {
            variation: evaluation.variation.to_owned(),
            value: evaluation.value.clone(),
            version: compiled.version(),
            reason: evaluation.reason,
            bucket: evaluation.bucket,
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "`{}` = {} at version {} (reason {:?}",
            self.variation, self.value, self.version, self.reason
        )?;
        if let Some(bucket) = self.bucket {
            write!(formatter, ", bucket {bucket}")?;
        }
        write!(formatter, ")")
    }
}

/// What one path answered for one flag and entity.
#[derive(Clone, Debug, PartialEq)]
pub enum Served {
    Answer {
        variation: String,
        value: Value,
        version: Option<u64>,
    },
    /// A refusal (the flag unknown, the request refused), with what was said.
    Refused(String),
}

impl Served {
    pub fn agrees_with(&self, expected: &Expected) -> bool {
        match self {
            Served::Answer {
                variation, value, ..
            } => *variation == expected.variation && *value == expected.value,
            Served::Refused(_) => false,
        }
    }
}

impl fmt::Display for Served {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Served::Answer {
                variation,
                value,
                version,
            } => {
                write!(formatter, "`{variation}` = {value}")?;
                match version {
                    Some(version) => write!(formatter, " at version {version}"),
                    None => write!(formatter, " (no version given)"),
                }
            }
            Served::Refused(why) => write!(formatter, "a refusal: {why}"),
        }
    }
}

/// Where an answer came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    /// One replica's OFREP endpoint, by replica name.
    Ofrep(String),
    /// `rollout.eval.<ns>`, through the queue group.
    Nats,
    /// `rollout.fleet.<ns>.desired`, through the queue group.
    FleetDesired,
}

impl fmt::Display for Path {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Ofrep(replica) => write!(formatter, "{replica} over OFREP"),
            Path::Nats => write!(formatter, "NATS rollout.eval (queue group)"),
            Path::FleetDesired => write!(formatter, "fleet desired (queue group)"),
        }
    }
}

/// An entity to ask about, and why it was chosen.
#[derive(Clone, Debug)]
pub struct Probe {
    pub entity: Entity,
    pub why: String,
    /// A registered agent of a flag whose answer depends on labels: fleet `desired` is
    /// asked for it too.
    pub agent: bool,
}

/// One flag to ask about for one entity.
#[derive(Clone, Debug)]
pub struct Check {
    pub flag: String,
    pub probe: Arc<Probe>,
}

/// One served answer.
#[derive(Clone, Debug)]
pub struct Observation {
    pub path: Path,
    pub flag: String,
    pub probe: Arc<Probe>,
    pub served: Served,
}

/// A path that gave no answer (a replica down, restarting or not ready; NATS away).
#[derive(Clone, Debug)]
pub struct Unreachable {
    pub path: Path,
    pub flag: String,
    pub entity_id: String,
    pub why: String,
}

/// One path's answer to one check: `Err` when the path did not answer.
type PathAnswer = (Path, Check, Result<Served, String>);

/// What one round of asking got.
#[derive(Debug, Default)]
pub struct Asked {
    pub observations: Vec<Observation>,
    pub unreachable: Vec<Unreachable>,
}

/// An answer that disagreed with the committed state for more than [`GRACE`].
#[derive(Clone, Debug)]
pub struct Violation {
    pub observation: Observation,
    pub expected: Expected,
    pub disagreeing_for: Duration,
    /// When the disagreement had lasted [`Violation::disagreeing_for`] (this machine's
    /// clock, to set beside the services' logs and the events' times).
    pub noticed_at: rollout_core::Timestamp,
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let observation = &self.observation;
        write!(
            formatter,
            "flag `{}`, entity `{}` ({}): committed {}; {} served {}, disagreeing for {} ms by {}",
            observation.flag,
            observation.probe.entity.id,
            observation.probe.why,
            self.expected,
            observation.path,
            observation.served,
            self.disagreeing_for.as_millis(),
            self.noticed_at.to_rfc3339()
        )
    }
}

/// The judgement of one round of observations.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Observations of a flag with a known committed state.
    pub checked: usize,
    /// Of those, answers that differ from the latest committed state.
    pub mismatches: usize,
    /// Mismatches that outlived [`GRACE`] (each reported once).
    pub violations: Vec<Violation>,
    /// The first mismatch of the round, described (for a report).
    pub first_mismatch: Option<String>,
}

#[derive(Debug)]
struct KnownState {
    compiled: Arc<CompiledFlag>,
    /// When the oracle first read a newer state (`None`: the latest).
    superseded_at: Option<Instant>,
}

#[derive(Debug)]
struct OpenMismatch {
    first_seen: Instant,
    check: Check,
    reported: bool,
}

/// (path, flag, entity id).
type CheckKey = (Path, String, String);

/// The timing rule, without IO: remembers each flag's committed states of the last
/// [`GRACE`] and each (path, flag, entity) whose answer differs from the latest one.
#[derive(Debug)]
pub struct Judge {
    grace: Duration,
    states: HashMap<String, VecDeque<KnownState>>,
    open: HashMap<CheckKey, OpenMismatch>,
}

impl Judge {
    pub fn new(grace: Duration) -> Judge {
        Judge {
            grace,
            states: HashMap::new(),
            open: HashMap::new(),
        }
    }

    /// Records the committed state read at `now`: a flag at a new version supersedes its
    /// previous state now; states superseded longer than the grace ago are forgotten.
    pub fn note_committed(&mut self, committed: &Committed, now: Instant) {
        let grace = self.grace;
        for (key, flag) in &committed.flags {
            let states = self.states.entry(key.clone()).or_default();
            let is_new = states
                .back()
                .is_none_or(|latest| latest.compiled.version() != flag.version);
            if is_new {
                if let Some(latest) = states.back_mut() {
                    latest.superseded_at = Some(now);
                }
                states.push_back(KnownState {
                    compiled: Arc::clone(&flag.compiled),
                    superseded_at: None,
                });
            }
            states.retain(|state| {
                state
                    .superseded_at
                    .is_none_or(|at| now.duration_since(at) <= grace)
            });
        }
    }

    /// Judges the answers observed at `now` against the committed states noted so far.
    pub fn judge(&mut self, observations: &[Observation], now: Instant) -> Verdict {
        let mut verdict = Verdict::default();
        for observation in observations {
            let Some(states) = self.states.get(&observation.flag) else {
                continue;
            };
            let Some(latest) = states.back() else {
                continue;
            };
            verdict.checked += 1;
            let entity = &observation.probe.entity;
            let expected = Expected::of(&latest.compiled, entity);
            let key = (
                observation.path.clone(),
                observation.flag.clone(),
                entity.id.clone(),
            );
            if observation.served.agrees_with(&expected) {
                self.open.remove(&key);
                continue;
            }
            verdict.mismatches += 1;
            if verdict.first_mismatch.is_none() {
                verdict.first_mismatch = Some(format!(
                    "flag `{}`, entity `{}` ({}): committed {}; {} served {}",
                    observation.flag,
                    entity.id,
                    observation.probe.why,
                    expected,
                    observation.path,
                    observation.served
                ));
            }
            let open = self.open.entry(key).or_insert_with(|| OpenMismatch {
                first_seen: now,
                check: Check {
                    flag: observation.flag.clone(),
                    probe: Arc::clone(&observation.probe),
                },
                reported: false,
            });
            let disagreeing_for = now.duration_since(open.first_seen);
            if open.reported || disagreeing_for <= self.grace {
                continue;
            }
            let committed_lately = states.iter().any(|state| {
                state
                    .superseded_at
                    .is_some_and(|at| now.duration_since(at) <= self.grace)
                    && observation
                        .served
                        .agrees_with(&Expected::of(&state.compiled, entity))
            });
            if committed_lately {
                continue;
            }
            open.reported = true;
            verdict.violations.push(Violation {
                observation: observation.clone(),
                expected,
                disagreeing_for,
                noticed_at: rollout_core::Timestamp::local_now(),
            });
        }
        verdict
    }

    /// Forgets every open mismatch: what disagrees afterwards gets the grace from then.
    pub fn forget_all(&mut self) {
        self.open.clear();
    }

    /// Forgets the open mismatch of a check its path could not answer: a replica that went
    /// away starts afresh when it is back.
    pub fn forget(&mut self, unreachable: &Unreachable) {
        self.open.remove(&(
            unreachable.path.clone(),
            unreachable.flag.clone(),
            unreachable.entity_id.clone(),
        ));
    }

    /// Checks with an open mismatch, to ask again: those not yet reported first, at most
    /// `limit`, each (flag, entity) once.
    pub fn open_checks(&self, limit: usize) -> Vec<Check> {
        let mut open: Vec<&OpenMismatch> = self.open.values().collect();
        open.sort_by_key(|mismatch| (mismatch.reported, mismatch.first_seen));
        let mut seen = HashSet::new();
        open.into_iter()
            .filter(|mismatch| {
                seen.insert((
                    mismatch.check.flag.clone(),
                    mismatch.check.probe.entity.id.clone(),
                ))
            })
            .take(limit)
            .map(|mismatch| mismatch.check.clone())
            .collect()
    }
}

/// Agents a test keeps silent (see [`Oracle::with_silent_agents`]).
pub type SilentAgents = Arc<Mutex<BTreeSet<String>>>;

/// Where the oracle reads the committed state and asks what is served.
#[derive(Clone, Debug)]
pub struct Oracle {
    redis: rollout_store::Connection,
    nats: async_nats::Client,
    namespace: Namespace,
    replicas: Vec<Replica>,
    silent_agents: SilentAgents,
}

impl Oracle {
    pub fn new(
        redis: rollout_store::Connection,
        nats: async_nats::Client,
        namespace: &str,
        replicas: Vec<Replica>,
    ) -> Oracle {
        Oracle {
            redis,
            nats,
            namespace: Namespace::new(namespace).expect("namespace"),
            replicas,
            silent_agents: SilentAgents::default(),
        }
    }

    /// Leaves the agents in `silent` (as it is when asked) out of fleet `desired` checks: any
    /// fleet call proves an agent alive, so asking `desired` on behalf of an agent a test
    /// keeps silent would bring it back to life. They are still asked about over OFREP and
    /// NATS, with their labels.
    pub fn with_silent_agents(mut self, silent: SilentAgents) -> Oracle {
        self.silent_agents = silent;
        self
    }

    /// The oracle of `sandbox`'s Redis, NATS and in-process evaluators, in its namespace.
    pub async fn of_sandbox(sandbox: &Sandbox) -> Oracle {
        Oracle::new(
            sandbox.store().await,
            sandbox.client.clone(),
            sandbox.namespace().as_str(),
            sandbox.replicas(),
        )
    }

    fn keys(&self) -> Keys {
        Keys::new(&self.namespace)
    }

    /// Every flag key of the namespace, sorted.
    pub async fn flag_keys(&self) -> Result<Vec<String>, String> {
        let mut connection = self.redis.clone();
        let listed = rollout_store::reads::flag_keys(&mut connection, &self.keys())
            .await
            .map_err(|error| format!("reading the flag index: {error}"))?;
        Ok(listed
            .into_iter()
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect())
    }

    /// The committed state of the flags of the namespace (of `only` those, when given) and
    /// the registered agents: each flag read with its active rollout, then its version read
    /// again, until the two reads agree.
    pub async fn read_committed(
        &self,
        only: Option<&BTreeSet<String>>,
    ) -> Result<Committed, String> {
        let mut pending: Vec<String> = self
            .flag_keys()
            .await?
            .into_iter()
            .filter(|key| only.is_none_or(|wanted| wanted.contains(key)))
            .collect();
        let mut committed = Committed::default();
        for _ in 0..READ_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            // owned items: borrowing closures here make the monitor's task fail to be `Send`
            let read: Vec<Result<Option<CommittedFlag>, String>> =
                futures_util::stream::iter(pending.clone())
                    .map(|key| {
                        let oracle = self.clone();
                        async move { oracle.read_flag(&key).await }
                    })
                    .buffered(CONCURRENCY)
                    .collect()
                    .await;
            let versions_now = self.versions(&pending).await?;
            let mut moved = Vec::new();
            for ((key, flag), version_now) in pending.iter().zip(read).zip(versions_now) {
                match flag? {
                    Some(flag) if flag.version == version_now => {
                        committed.flags.insert(key.clone(), flag);
                    }
                    // deleted (a tombstone) after it was listed
                    None => {}
                    Some(_) => moved.push(key.clone()),
                }
            }
            pending = moved;
        }
        if !pending.is_empty() {
            return Err(format!("flags {pending:?} kept changing while being read"));
        }
        let mut connection = self.redis.clone();
        committed.agents = load_agents(&mut connection, &self.keys())
            .await
            .map_err(|error| format!("reading the agents: {error}"))?;
        Ok(committed)
    }

    /// One flag with the view of its active rollout; `None` for a tombstone.
    async fn read_flag(&self, key: &str) -> Result<Option<CommittedFlag>, String> {
        let keys = self.keys();
        let mut connection = self.redis.clone();
        let stored = load_flag(&mut connection, &keys, key)
            .await
            .map_err(|error| format!("reading flag {key}: {error}"))?;
        let Some(record) = stored.record else {
            return Ok(None);
        };
        let view = match &record.active_rollout {
            None => None,
            Some(rollout_id) => load_rollout(&mut connection, &keys, rollout_id)
                .await
                .map_err(|error| format!("reading rollout {rollout_id}: {error}"))?
                .and_then(|rollout| rollout.state.view(&rollout.id, &rollout.plan)),
        };
        CommittedFlag::compile(record.flag, stored.version, view).map(Some)
    }

    /// The versions of `flags`, in one pipeline.
    async fn versions(&self, flags: &[String]) -> Result<Vec<u64>, String> {
        let mut connection = self.redis.clone();
        rollout_store::reads::flag_versions(&mut connection, &self.keys(), flags)
            .await
            .map_err(|error| format!("reading flag versions: {error}"))
    }

    /// Asks every replica over OFREP, then NATS and (for agents) fleet `desired` through
    /// the queue group, about each check.
    pub async fn ask(&self, checks: &[Check]) -> Asked {
        // owned items: borrowing closures here make the monitor's task fail to be `Send`
        let ofrep_asks: Vec<(Path, Replica, Check)> = self
            .replicas
            .iter()
            .flat_map(|replica| {
                checks.iter().map(|check| {
                    (
                        Path::Ofrep(replica.name().to_owned()),
                        replica.clone(),
                        check.clone(),
                    )
                })
            })
            .collect();
        let ofrep_answers: Vec<PathAnswer> = futures_util::stream::iter(ofrep_asks)
            .map(|(path, replica, check)| {
                let namespace = self.namespace.clone();
                async move {
                    let served = ask_ofrep(&replica, namespace.as_str(), &check).await;
                    (path, check, served)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        // one NATS request per entity, for every flag it is checked for
        let mut by_entity: BTreeMap<String, Vec<Check>> = BTreeMap::new();
        for check in checks {
            let entity = serde_json::to_string(&check.probe.entity).expect("entity json");
            by_entity.entry(entity).or_default().push(check.clone());
        }
        let nats_answers: Vec<Vec<PathAnswer>> =
            futures_util::stream::iter(by_entity.into_values())
                .map(|entity_checks| {
                    let oracle = self.clone();
                    async move {
                        let answers = oracle.ask_nats(&entity_checks).await;
                        entity_checks
                            .into_iter()
                            .zip(answers)
                            .map(|(check, served)| (Path::Nats, check, served))
                            .collect()
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let silent = self.silent_agents.lock().expect("silent agents").clone();
        let agent_checks: Vec<Check> = checks
            .iter()
            .filter(|check| check.probe.agent && !silent.contains(&check.probe.entity.id))
            .cloned()
            .collect();
        let desired_answers: Vec<PathAnswer> = futures_util::stream::iter(agent_checks)
            .map(|check| {
                let oracle = self.clone();
                async move {
                    let served = oracle.ask_desired(&check).await;
                    (Path::FleetDesired, check, served)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut asked = Asked::default();
        for (path, check, served) in ofrep_answers
            .into_iter()
            .chain(nats_answers.into_iter().flatten())
            .chain(desired_answers)
        {
            match served {
                Ok(served) => asked.observations.push(Observation {
                    path,
                    flag: check.flag,
                    probe: check.probe,
                    served,
                }),
                Err(why) => asked.unreachable.push(Unreachable {
                    path,
                    entity_id: check.probe.entity.id.clone(),
                    flag: check.flag,
                    why,
                }),
            }
        }
        asked
    }

    /// One `rollout.eval` request for the flags of `checks` (all for one entity).
    async fn ask_nats(&self, checks: &[Check]) -> Vec<Result<Served, String>> {
        let request = EvalRequest {
            flag: None,
            flags: Some(checks.iter().map(|check| check.flag.clone()).collect()),
            entity: checks[0].probe.entity.clone(),
            explain: false,
        };
        let subject = Subjects::default().eval(&self.namespace);
        let many = match self.request::<_, EvalMany>(subject, &request).await {
            Ok(Ok(many)) => many,
            Ok(Err(refusal)) => {
                return checks
                    .iter()
                    .map(|_| Ok(Served::Refused(refusal.clone())))
                    .collect()
            }
            Err(why) => return checks.iter().map(|_| Err(why.clone())).collect(),
        };
        checks
            .iter()
            .map(|check| {
                let answer = many.results.iter().find(|result| result.flag == check.flag);
                Ok(match answer {
                    Some(result) => Served::Answer {
                        variation: result.variation.clone(),
                        value: result.value.clone(),
                        version: Some(result.version),
                    },
                    None if many.missing.contains(&check.flag) => {
                        Served::Refused("listed as missing".to_owned())
                    }
                    None => Served::Refused("left out of the reply".to_owned()),
                })
            })
            .collect()
    }

    /// One `rollout.fleet.<ns>.desired` request for the agent of `check`.
    async fn ask_desired(&self, check: &Check) -> Result<Served, String> {
        let query = DesiredQuery {
            agent_id: check.probe.entity.id.clone(),
            flag: check.flag.clone(),
        };
        let subject = Subjects::default().fleet(&self.namespace, FleetVerb::Desired);
        Ok(match self.request::<_, Desired>(subject, &query).await? {
            Ok(desired) => Served::Answer {
                variation: desired.variation,
                value: desired.value,
                version: Some(desired.version),
            },
            Err(refusal) => Served::Refused(refusal),
        })
    }

    /// A MessagePack request on `subject`: `Ok(Ok(reply))`, `Ok(Err(refusal))` for an error
    /// reply other than `unavailable`, `Err` when the path did not answer (no reply in
    /// time, no responders, `unavailable`).
    async fn request<T, R>(&self, subject: String, request: &T) -> Result<Result<R, String>, String>
    where
        T: serde::Serialize,
        R: serde::de::DeserializeOwned,
    {
        let payload = codec::encode(request, Encoding::MessagePack).expect("request encodes");
        let reply =
            tokio::time::timeout(ANSWER_TIMEOUT, self.nats.request(subject, payload.into()))
                .await
                .map_err(|_| "no reply within 2 s".to_owned())?
                .map_err(|error| format!("request failed: {error}"))?;
        match decode_reply::<R>(&reply.payload, Encoding::MessagePack) {
            Ok(answer) => Ok(Ok(answer)),
            Err(error) if error.code == ErrorCode::Unavailable => {
                Err(format!("unavailable: {}", error.message))
            }
            Err(error) => Ok(Err(format!("{:?}: {}", error.code, error.message))),
        }
    }

    /// Rounds of reading the committed state and asking about every flag's sample, until
    /// one round finds every answer agreeing with the latest committed state; panics with
    /// a report when an answer disagrees for more than [`GRACE`], or when no round agrees
    /// (or a path stays unreachable) within [`PATIENCE`].
    pub async fn assert_served_matches_committed(&self) {
        let started = Instant::now();
        let mut judge = Judge::new(GRACE);
        let mut samples = Samples::default();
        let mut rounds = 0_usize;
        loop {
            rounds += 1;
            let committed = match self.read_committed(None).await {
                Ok(committed) => committed,
                Err(error) => {
                    assert!(
                        started.elapsed() < PATIENCE,
                        "the oracle could not read the committed state of `{}`: {error}",
                        self.namespace
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            judge.note_committed(&committed, Instant::now());
            let checks = samples.checks(&committed);
            let asked = self.ask(&checks).await;
            let verdict = judge.judge(&asked.observations, Instant::now());
            if !verdict.violations.is_empty() {
                panic!(
                    "{}",
                    failure_report(self.namespace.as_str(), &verdict, &asked)
                );
            }
            // a flag that moved while the round asked (a ticker stepping rollouts every
            // second, a round of a thousand answers on a loaded machine) is judged against
            // the state committed after the round as well: every answer then agrees with a
            // state that was the committed one at some instant of the round
            let moved = if verdict.mismatches > 0 && asked.unreachable.is_empty() {
                match self.read_committed(None).await {
                    Ok(after) => explained_by(&asked.observations, &committed, &after),
                    Err(_) => None,
                }
            } else {
                Some(0)
            };
            if let (Some(moved), true) = (moved, asked.unreachable.is_empty()) {
                println!(
                    "served = committed in `{}`: {} answers for {} flags agree (round {rounds}, {} ms; {moved} at a state committed during the round)",
                    self.namespace,
                    verdict.checked,
                    committed.flags.len(),
                    started.elapsed().as_millis()
                );
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "served never matched committed in `{}` within {PATIENCE:?}: {} of {} answers differ (first: {}), {} unreachable (first: {:?})",
                self.namespace,
                verdict.mismatches,
                verdict.checked,
                verdict.first_mismatch.as_deref().unwrap_or("none"),
                asked.unreachable.len(),
                asked.unreachable.first()
            );
        }
    }
}

/// When every observation agrees with its flag's state in `before` or in `after` (two reads
/// of the committed state around one round of asking), how many agree only with `after`;
/// `None` when one agrees with neither.
fn explained_by(
    observations: &[Observation],
    before: &Committed,
    after: &Committed,
) -> Option<usize> {
    let agrees = |committed: &Committed, observation: &Observation| {
        committed.flags.get(&observation.flag).is_some_and(|flag| {
            observation
                .served
                .agrees_with(&Expected::of(&flag.compiled, &observation.probe.entity))
        })
    };
    let mut moved = 0;
    for observation in observations {
        if !before.flags.contains_key(&observation.flag) || agrees(before, observation) {
            continue;
        }
        if !agrees(after, observation) {
            return None;
        }
        moved += 1;
    }
    Some(moved)
}

/// The OFREP context of `entity`: `targetingKey`, `labels`, attributes.
fn ofrep_context(entity: &Entity) -> Value {
    let mut context = serde_json::Map::new();
    for (name, value) in &entity.attributes {
        context.insert(
            name.clone(),
            serde_json::to_value(value).expect("attribute json"),
        );
    }
    if !entity.labels.is_empty() {
        context.insert("labels".to_owned(), json!(entity.labels));
    }
    context.insert("targetingKey".to_owned(), json!(entity.id));
    Value::Object(context)
}

/// One OFREP single-flag evaluation; `Err` when the replica cannot be reached or is not
/// ready (503).
async fn ask_ofrep(replica: &Replica, namespace: &str, check: &Check) -> Result<Served, String> {
    let addr = replica.http_addr();
    let response = http::post_json_as(
        addr,
        replica.bearer_token(),
        &format!("/ofrep/v1/evaluate/flags/{}", check.flag),
        namespace,
        &json!({"context": ofrep_context(&check.probe.entity)}),
    )
    .await
    .ok_or_else(|| format!("{addr}: no answer"))?;
    let body = response.json();
    match response.status {
        200 => Ok(Served::Answer {
            variation: body["variant"]
                .as_str()
                .unwrap_or("<no variant>")
                .to_owned(),
            value: body["value"].clone(),
            version: body["metadata"]["version"].as_u64(),
        }),
        503 => Err(format!("{addr}: not ready (503)")),
        status => Ok(Served::Refused(format!("HTTP {status}: {body}"))),
    }
}

/// The report of a failed assertion: each (flag, entity) with a violation, what the
/// committed state gives, and what every path said about it in the last round.
fn failure_report(namespace: &str, verdict: &Verdict, asked: &Asked) -> String {
    let mut text = format!(
        "served ≠ committed in namespace `{namespace}`: {} answers disagreed with the committed state for more than {} s ({} of {} answers differ in the last round)\n",
        verdict.violations.len(),
        GRACE.as_secs(),
        verdict.mismatches,
        verdict.checked,
    );
    let mut shown: Vec<(&str, &str)> = Vec::new();
    for violation in &verdict.violations {
        let observation = &violation.observation;
        let pair = (
            observation.flag.as_str(),
            observation.probe.entity.id.as_str(),
        );
        if shown.contains(&pair) {
            continue;
        }
        if shown.len() == 5 {
            let _ = writeln!(text, "… and more");
            break;
        }
        shown.push(pair);
        let _ = writeln!(
            text,
            "- flag `{}`, entity {} ({}):\n    committed: {}",
            observation.flag,
            serde_json::to_string(&observation.probe.entity).expect("entity json"),
            observation.probe.why,
            violation.expected
        );
        for said in asked.observations.iter().filter(|said| {
            said.flag == observation.flag && said.probe.entity.id == observation.probe.entity.id
        }) {
            let verdict_word = if said.served.agrees_with(&violation.expected) {
                "agrees"
            } else {
                "DIFFERS"
            };
            let _ = writeln!(text, "    {}: {} — {verdict_word}", said.path, said.served);
        }
    }
    text
}

/// Each flag's sample, kept while the flag's version and the agents stay the same (so the
/// same entities are asked again and a lasting mismatch is seen lasting).
#[derive(Default)]
struct Samples {
    by_flag: HashMap<String, CachedSample>,
}

struct CachedSample {
    version: u64,
    agent_count: usize,
    probes: Arc<Vec<Arc<Probe>>>,
}

impl Samples {
    fn probes(&mut self, flag: &CommittedFlag, agents: &[Agent]) -> Arc<Vec<Arc<Probe>>> {
        if let Some(cached) = self.by_flag.get(&flag.flag.key) {
            if cached.version == flag.version && cached.agent_count == agents.len() {
                return Arc::clone(&cached.probes);
            }
        }
        let probes = Arc::new(sample_entities(flag, agents));
        self.by_flag.insert(
            flag.flag.key.clone(),
            CachedSample {
                version: flag.version,
                agent_count: agents.len(),
                probes: Arc::clone(&probes),
            },
        );
        probes
    }

    /// Every flag's whole sample.
    fn checks(&mut self, committed: &Committed) -> Vec<Check> {
        let mut checks = Vec::new();
        for (key, flag) in &committed.flags {
            for probe in self.probes(flag, &committed.agents).iter() {
                checks.push(Check {
                    flag: key.clone(),
                    probe: Arc::clone(probe),
                });
            }
        }
        checks
    }
}

/// A bucketing key and its bucket.
type BucketedKey = (u32, String);

/// A bucket boundary of a flag: where a share (of an active rollout, or of a split left
/// behind) ends.
struct Boundary {
    salt: String,
    stickiness: Option<String>,
    ppm: u32,
    target: Target,
    what: String,
}

fn boundaries(flag: &CommittedFlag) -> Vec<Boundary> {
    let mut found = Vec::new();
    if let Some(view) = &flag.rollout {
        if let ViewAudience::Share(share) = view.audience {
            found.push(Boundary {
                salt: view.salt.clone(),
                stickiness: view.stickiness.clone(),
                ppm: share.ppm(),
                target: view.target.clone(),
                what: format!(
                    "the {} % share of rollout {}",
                    share.percentage(),
                    view.rollout_id
                ),
            });
        }
    }
    let targets = std::iter::once((Target::Default, &flag.flag.default)).chain(
        flag.flag
            .rules
            .iter()
            .map(|rule| (Target::Rule(rule.id.clone()), &rule.serve)),
    );
    for (target, serve) in targets {
        let (Some(split), Some(salt)) = (&serve.split, &serve.salt) else {
            continue;
        };
        let mut upper = 0_u32;
        for entry in &split[..split.len().saturating_sub(1)] {
            upper += Share::from_percentage(entry.weight).map_or(0, Share::ppm);
            found.push(Boundary {
                salt: salt.clone(),
                stickiness: serve.stickiness.clone(),
                ppm: upper,
                target: target.clone(),
                what: format!(
                    "the end of `{}` in the split of {target:?}",
                    entry.variation
                ),
            });
        }
    }
    found
}

/// At least [`MIN_SAMPLE`] entities for `flag` (see the module docs), `agents` among them
/// when its answer depends on labels.
pub fn sample_entities(flag: &CommittedFlag, agents: &[Agent]) -> Vec<Arc<Probe>> {
    let mut probes = Vec::new();
    let mut add = |entity: Entity, why: String, agent: bool| {
        probes.push(Arc::new(Probe { entity, why, agent }));
    };
    for (number, boundary) in boundaries(flag).iter().enumerate() {
        let reaching = attributes_reaching(&flag.flag, &boundary.target).unwrap_or_default();
        let stickiness = boundary
            .stickiness
            .as_deref()
            .filter(|attribute| *attribute != "id");
        let (mut below, mut above): (Vec<BucketedKey>, Vec<BucketedKey>) = (0..BOUNDARY_CANDIDATES)
            .map(|index| {
                let key = format!("b{number}-{index}");
                (rollout_core::bucket(&boundary.salt, &key), key)
            })
            .partition(|(bucket, _)| *bucket < boundary.ppm);
        below.sort_unstable_by(|left, right| right.cmp(left));
        above.sort_unstable();
        let sides = [("below", below), ("above", above)];
        for (side, nearest) in sides {
            for (bucket, key) in nearest.into_iter().take(PER_SIDE_OF_BOUNDARY) {
                let mut entity = Entity {
                    id: key.clone(),
                    attributes: reaching.clone(),
                    ..Entity::default()
                };
                if let Some(attribute) = stickiness {
                    entity
                        .attributes
                        .insert(attribute.to_owned(), AttributeValue::String(key));
                }
                add(
                    entity,
                    format!("bucket {bucket}, just {side} {}", boundary.what),
                    false,
                );
            }
        }
        if let Some(attribute) = stickiness {
            for index in 0..WITHOUT_STICKINESS {
                let entity = Entity {
                    id: format!("b{number}-no-{attribute}-{index}"),
                    attributes: reaching.clone(),
                    ..Entity::default()
                };
                add(
                    entity,
                    format!(
                        "without the stickiness attribute `{attribute}` of {}",
                        boundary.what
                    ),
                    false,
                );
            }
        }
    }
    for rule in &flag.flag.rules {
        for variant in 0..PER_RULE {
            if let Some(attributes) = attributes_matching(rule, variant) {
                let entity = Entity {
                    id: format!("rule-{}-{variant}", rule.id),
                    attributes,
                    ..Entity::default()
                };
                add(entity, format!("matches rule `{}`", rule.id), false);
            }
        }
    }
    if flag.depends_on_labels() {
        for agent in agents {
            let entity = Entity {
                id: agent.id.clone(),
                attributes: agent.attributes.clone(),
                labels: agent.labels.clone(),
            };
            add(
                entity,
                format!("registered agent, labels {:?}", agent.labels),
                true,
            );
        }
    }
    let mut random = 0;
    while random < RANDOM || probes.len() < MIN_SAMPLE {
        let id = format!("random-{:016x}", rand::random::<u64>());
        probes.push(Arc::new(Probe {
            entity: Entity::with_id(id),
            why: "random".to_owned(),
            agent: false,
        }));
        random += 1;
    }
    probes
}

/// Attributes with which an entity reaches `target`: none for the default serve, those
/// matching the rule for a rule (`None` when they cannot be made).
fn attributes_reaching(flag: &Flag, target: &Target) -> Option<Attributes> {
    match target {
        Target::Default => Some(Attributes::new()),
        Target::Rule(rule_id) => attributes_matching(flag.rule(rule_id)?, 0),
    }
}

/// Attributes meeting every condition of `rule` (`variant` picks among a condition's
/// listed values); `None` when a condition cannot be met this simply.
fn attributes_matching(rule: &Rule, variant: usize) -> Option<Attributes> {
    let mut attributes = Attributes::new();
    for condition in &rule.conditions {
        let values = &condition.values;
        let listed = values.get(variant % values.len().max(1)).cloned();
        let text = values.first().and_then(AttributeValue::as_str);
        let number = match values.first() {
            Some(AttributeValue::Number(number)) => Some(*number),
            _ => None,
        };
        let semver = text.and_then(parse_semver);
        let value = match condition.op {
            Operator::Equals
            | Operator::In
            | Operator::Gte
            | Operator::Lte
            | Operator::SemverEq
            | Operator::SemverGte
            | Operator::SemverLte => listed?,
            Operator::NotEquals | Operator::NotIn => {
                AttributeValue::String("oracle-unlisted".to_owned())
            }
            Operator::StartsWith => AttributeValue::String(format!("{}-oracle", text?)),
            Operator::EndsWith => AttributeValue::String(format!("oracle-{}", text?)),
            Operator::Contains => AttributeValue::String(format!("oracle-{}-oracle", text?)),
            Operator::Gt => AttributeValue::Number(number? + 1.0),
            Operator::Lt => AttributeValue::Number(number? - 1.0),
            Operator::SemverGt => AttributeValue::String(format!("{}.0.0", semver?.major + 1)),
            Operator::SemverLt => {
                let version = semver?;
                if (version.major, version.minor, version.patch) == (0, 0, 0) {
                    return None;
                }
                AttributeValue::String("0.0.0".to_owned())
            }
            Operator::Present => AttributeValue::String("present".to_owned()),
            Operator::Absent => continue,
        };
        attributes.insert(condition.attribute.clone(), value);
    }
    Some(attributes)
}

/// What a monitor counted so far.
#[derive(Debug, Default)]
struct Tally {
    rounds: u64,
    samples: u64,
    violations: u64,
    skipped_rounds: u64,
    excused_rounds: u64,
    unreachable: BTreeMap<Path, u64>,
    examples: Vec<String>,
    /// Answers behind the latest committed state (allowed for [`GRACE`]), and the first
    /// few, with when they were seen: where a run lost time even when nothing was violated.
    lagging: u64,
    lagging_examples: Vec<String>,
}

/// Runs oracle rounds in the background of a fault run, every ~150 ms: each round reads
/// the committed state of the flags it checks, asks about the next [`MONITOR_ROTATION`]
/// checks of a rotation over every flag's sample plus those with an open mismatch, and
/// counts answers checked and violations (see [`Judge`]). A round is skipped while Redis
/// cannot be read; unreachable paths are counted apart.
#[derive(Debug)]
pub struct OracleMonitor {
    tally: Arc<Mutex<Tally>>,
    excused: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl OracleMonitor {
    pub fn start(oracle: Oracle) -> OracleMonitor {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let sink = Arc::clone(&tally);
        let excused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let excusing = Arc::clone(&excused);
        let task = tokio::spawn(async move {
            let mut judge = Judge::new(GRACE);
            let mut samples = Samples::default();
            let mut cursor = 0_usize;
            loop {
                tokio::time::sleep(MONITOR_INTERVAL).await;
                let round = monitor_round(&oracle, &mut judge, &mut samples, cursor).await;
                cursor += MONITOR_ROTATION;
                let mut tally = sink.lock().expect("oracle tally");
                tally.rounds += 1;
                if excusing.load(std::sync::atomic::Ordering::SeqCst) {
                    // a lag now is what the fault allows: judged afresh once it ends
                    judge.forget_all();
                    tally.excused_rounds += 1;
                    continue;
                }
                match round {
                    Err(_) => tally.skipped_rounds += 1,
                    Ok((verdict, unreachable)) => {
                        tally.samples += u64::try_from(verdict.checked).unwrap_or(u64::MAX);
                        tally.lagging += u64::try_from(verdict.mismatches).unwrap_or(u64::MAX);
                        if let Some(first) = &verdict.first_mismatch {
                            if tally.lagging_examples.len() < 3 {
                                let at = rollout_core::Timestamp::local_now();
                                tally.lagging_examples.push(format!("at {at}: {first}"));
                            }
                        }
                        for violation in &verdict.violations {
                            tally.violations += 1;
                            if tally.examples.len() < 5 {
                                tally.examples.push(violation.to_string());
                            }
                        }
                        for path in unreachable {
                            *tally.unreachable.entry(path).or_default() += 1;
                        }
                    }
                }
            }
        });
        OracleMonitor {
            tally,
            excused,
            task,
        }
    }

    /// From now until [`OracleMonitor::judge_again`], answers are asked but not judged:
    /// for a fault under which serving the committed state is not promised (writes that
    /// cannot be confirmed on a replica, whose events are held back until they are). Once
    /// judging resumes, a disagreement gets [`GRACE`] from then.
    pub fn excuse(&self) {
        self.excused
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends [`OracleMonitor::excuse`].
    pub fn judge_again(&self) {
        self.excused
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops the rounds; what they counted.
    pub fn finish(self) -> OracleFindings {
        self.task.abort();
        let tally = self.tally.lock().expect("oracle tally");
        let unreachable: Vec<String> = tally
            .unreachable
            .iter()
            .map(|(path, count)| format!("{path} x{count}"))
            .collect();
        let mut notes = vec![format!(
            "served = committed: {} rounds ({} skipped: redis unavailable; {} excused: during a fault that allows a lag); unanswered (not judged): {}",
            tally.rounds,
            tally.skipped_rounds,
            tally.excused_rounds,
            if unreachable.is_empty() {
                "none".to_owned()
            } else {
                unreachable.join(", ")
            }
        )];
        notes.extend(
            tally
                .examples
                .iter()
                .map(|example| format!("served ≠ committed: {example}")),
        );
        if tally.lagging > 0 {
            notes.push(format!(
                "answers behind the committed state (within the {} s grace): {}; the first: {}",
                GRACE.as_secs(),
                tally.lagging,
                tally.lagging_examples.join("; ")
            ));
        }
        OracleFindings {
            samples: tally.samples,
            violations: tally.violations,
            notes,
        }
    }
}

/// What an [`OracleMonitor`] counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OracleFindings {
    /// Served answers compared with the committed state.
    pub samples: u64,
    /// Served answers that disagreed with every state committed in the [`GRACE`] before,
    /// after disagreeing for longer than [`GRACE`].
    pub violations: u64,
    /// What a run report should say: rounds, unanswered paths, examples of violations.
    pub notes: Vec<String>,
}

/// One monitor round (see [`OracleMonitor`]); `Err` when the committed state could not be
/// read. Returns the verdict and the paths that did not answer.
async fn monitor_round(
    oracle: &Oracle,
    judge: &mut Judge,
    samples: &mut Samples,
    cursor: usize,
) -> Result<(Verdict, Vec<Path>), String> {
    let flag_keys = oracle.flag_keys().await?;
    if flag_keys.is_empty() {
        return Ok((Verdict::default(), Vec::new()));
    }
    let reasked = judge.open_checks(MONITOR_REASKED);
    let rotation: Vec<(&String, usize)> = (cursor..cursor + MONITOR_ROTATION)
        .map(|position| {
            (
                &flag_keys[position % flag_keys.len()],
                position / flag_keys.len(),
            )
        })
        .collect();
    let wanted: BTreeSet<String> = rotation
        .iter()
        .map(|(flag, _)| (*flag).clone())
        .chain(reasked.iter().map(|check| check.flag.clone()))
        .collect();
    let committed = oracle.read_committed(Some(&wanted)).await?;
    judge.note_committed(&committed, Instant::now());
    let mut checks: Vec<Check> = reasked
        .into_iter()
        .filter(|check| committed.flags.contains_key(&check.flag))
        .collect();
    let mut chosen: HashSet<(String, String)> = checks
        .iter()
        .map(|check| (check.flag.clone(), check.probe.entity.id.clone()))
        .collect();
    for (flag, turn) in rotation {
        let Some(committed_flag) = committed.flags.get(flag) else {
            continue;
        };
        let probes = samples.probes(committed_flag, &committed.agents);
        let probe = &probes[turn % probes.len()];
        if chosen.insert((flag.clone(), probe.entity.id.clone())) {
            checks.push(Check {
                flag: flag.clone(),
                probe: Arc::clone(probe),
            });
        }
    }
    let asked = oracle.ask(&checks).await;
    for unreachable in &asked.unreachable {
        judge.forget(unreachable);
    }
    let verdict = judge.judge(&asked.observations, Instant::now());
    let unreachable = asked
        .unreachable
        .into_iter()
        .map(|unreachable| unreachable.path)
        .collect();
    Ok((verdict, unreachable))
}
