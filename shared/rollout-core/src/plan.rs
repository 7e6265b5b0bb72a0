//! Plan compilation: every rollout kind (phases, presets, manual schedules, templates, label
//! stages) becomes one normalised [`Plan`] — ordered steps, each with an audience and the
//! gate that must open before the next step begins.
//!
//! How each kind maps:
//! - phases / presets: one share step per phase; a step's gate is a timer of its duration.
//!   The final phase's duration, if any, is a bake time; without one the rollout completes
//!   on entering it (gate `immediate`).
//! - manual: the rollout starts at the first `execute_at`; step i's timer is the gap to
//!   step i+1's `execute_at`; the last step completes on entry (it may be below 100 %).
//! - template: phase k at `start_at + k × frequency` with weight `min((k+1) × increment, 100)`.
//! - stages: one stage step per named stage plus the implicit final `unassigned` stage; a
//!   stage's gate (default `continue`) releases the next stage. Releasing `unassigned`
//!   completes the rollout.
//!
//! A phase or a stage may also wait for an approval ([`ApprovalGate`], SPEC §12): `N`
//! distinct actors approve the step while it is current; only then does its gate run, a
//! timer counting from the approval. A stage gated by an approval alone opens at approval.

use serde::{Deserialize, Serialize};

use crate::entity::Labels;
use crate::error::{names, ValidationErrors};
use crate::flag::Flag;
use crate::guard::Guard;
use crate::share::Share;
use crate::spec::{RolloutSpec, StageGateSpec, StageSpec};
use crate::time::{DurationMs, Timestamp};
use crate::window::{self, compile_windows, Window};

/// Name of the implicit last stage holding everyone no other stage matched.
pub const UNASSIGNED_STAGE: &str = "unassigned";
/// Most steps a plan may have.
pub const MAX_STEPS: usize = 1000;
/// Most labels one stage may require.
pub const MAX_STAGE_LABELS: usize = 32;
/// Most distinct approvers one approval gate may ask for.
pub const MAX_APPROVERS: u32 = 16;
/// Default minimum gap between manual schedule steps (SPEC §3.2).
pub const DEFAULT_MIN_PHASE_INTERVAL: DurationMs = DurationMs::from_minutes(5);

/// The four presets, exactly as SPEC §3.1 lists them: (name, [(percentage, duration)]).
pub const PRESETS: [(&str, &[(u32, i64)]); 4] = [
    ("1hr", &[(10, 15), (50, 15), (100, 30)]),
    ("12hr", &[(5, 180), (25, 180), (50, 180), (100, 180)]),
    ("24hr", &[(5, 360), (25, 360), (50, 360), (100, 360)]),
    ("48hr", &[(5, 720), (10, 720), (25, 720), (100, 720)]),
];

/// Which kind of spec a plan came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    /// Explicit percentage phases.
    Phases,
    /// A named preset.
    Preset(String),
    /// Weights at absolute times.
    Manual,
    /// Increment at a frequency.
    Template,
    /// Label stages.
    Stages,
}

/// What the rollout moves: the flag's default serve or one rule's serve.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The default serve.
    Default,
    /// The rule with this id.
    Rule(String),
}

/// When the rollout leaves `queued`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// At creation.
    Now,
    /// At this time.
    At(Timestamp),
    /// On the `start` command.
    OnCommand,
}

/// Who a step serves the candidate to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// A cumulative share of all entities.
    Share(Share),
    /// The members of a label stage (plus, cumulatively, all earlier stages).
    Stage {
        /// Stage name.
        name: String,
        /// Labels a member has; empty for `unassigned`.
        labels: Labels,
        /// A wave before the stage's last (SPEC §12): only the members whose bucket is
        /// below this share; the whole stage when absent (a stage's last wave, or a stage
        /// without waves).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wave: Option<Share>,
    },
}

/// What must happen before the step after this one begins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Time spent in this step (measured from its planned start; pauses extend it).
    Timer(DurationMs),
    /// An operator's `continue`.
    Continue,
    /// Enough of the stage's members applied the candidate, with few enough errors.
    Completion {
        /// Completed members over members, at least this share.
        min_completed: Share,
        /// At most this many error reports.
        max_errors: u64,
    },
    /// Opens at once: only on a final step, which then completes on entry.
    Immediate,
}

/// Approvals a step waits for before its gate runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalGate {
    /// How many distinct actors must approve the step while it is current.
    pub approvers: u32,
}

/// One normalised step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Who gets the candidate while this step is current.
    pub audience: Audience,
    /// What ends the step (on the final step: what completes the rollout); with an
    /// approval, it runs only once the step is approved (a timer from the approval).
    pub gate: Gate,
    /// Approvals the step waits for first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalGate>,
}

/// A compiled rollout: everything the ticker, planner and evaluators need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The spec kind it came from.
    pub kind: PlanKind,
    /// Flag key.
    pub flag: String,
    /// Default serve or rule.
    pub target: Target,
    /// Variation the audience starts on.
    pub baseline: String,
    /// Variation the audience moves to.
    pub candidate: String,
    /// Bucketing salt.
    pub salt: String,
    /// Bucketing attribute; the entity id when absent.
    pub stickiness: Option<String>,
    /// When the rollout starts.
    pub start: StartMode,
    /// Ordered steps; never empty.
    pub steps: Vec<Step>,
    /// Health guard (the spec's `guard`).
    pub guard: Option<Guard>,
    /// Health guards (the spec's `guards`); see [`Plan::guards`] for all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<Guard>,
    /// Time windows its timer gates open in; always open when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
}

/// What compilation needs from its surroundings.
#[derive(Clone, Copy, Debug)]
pub struct CompileContext<'a> {
    /// The one clock's current time (Redis `TIME` at the planner).
    pub now: Timestamp,
    /// Minimum gap between manual steps.
    pub min_phase_interval: DurationMs,
    /// A fresh random salt, used when the spec gives none.
    pub fresh_salt: &'a str,
}

impl Plan {
    /// Every guard, in order: the spec's `guard`, or its `guards`. Health outcome counts
    /// and warnings are kept per guard in this order.
    pub fn guards(&self) -> impl Iterator<Item = &Guard> {
        self.guard.iter().chain(&self.guards)
    }

    /// True for label-stage plans.
    pub fn is_staged(&self) -> bool {
        self.kind == PlanKind::Stages
    }

    /// Index of the final step.
    pub fn last_step(&self) -> usize {
        self.steps.len().saturating_sub(1)
    }

    /// The share step `index` serves (for staged plans: zero; use stage membership).
    pub fn share_at(&self, index: usize) -> Share {
        match self.steps.get(index).map(|step| &step.audience) {
            Some(Audience::Share(share)) => *share,
            _ => Share::NONE,
        }
    }

    /// When a timer that runs out at `end` opens its gate: `end` itself inside a window (or
    /// without windows), else the next opening.
    pub fn timer_opens_at(&self, end: Timestamp) -> Timestamp {
        window::open_at(&self.windows, end)
    }

    /// The approval step `index` waits for, if any.
    pub fn approval_at(&self, index: usize) -> Option<ApprovalGate> {
        self.steps.get(index).and_then(|step| step.approval)
    }

    /// Whether any step waits for an approval.
    pub fn has_approvals(&self) -> bool {
        self.steps.iter().any(|step| step.approval.is_some())
    }

    /// The label sets of a staged plan's named stages, in order (without `unassigned`);
    /// a stage with waves counts once (its last wave's step).
    pub fn stage_labels(&self) -> Vec<Labels> {
        self.steps
            .iter()
            .filter_map(|step| match &step.audience {
                Audience::Stage {
                    name,
                    labels,
                    wave: None,
                } if name != UNASSIGNED_STAGE => Some(labels.clone()),
                _ => None,
            })
            .collect()
    }

    /// The names of a staged plan's stages in order, `unassigned` last; a stage with waves
    /// counts once. Index `i` names [`stage_of`]'s stage `i`.
    pub fn stage_names(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|step| match &step.audience {
                Audience::Stage {
                    name, wave: None, ..
                } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// What a staged plan serves the candidate to once steps `0..=step` are released:
    /// every member of the first `full` stages, and of the next stage those whose bucket
    /// is below `wave`.
    pub fn stage_release(&self, step: usize) -> StageRelease {
        let released = &self.steps[..(step + 1).min(self.steps.len())];
        let full = released
            .iter()
            .filter(|step| matches!(step.audience, Audience::Stage { wave: None, .. }))
            .count();
        let wave = match released.last().map(|step| &step.audience) {
            Some(Audience::Stage { wave, .. }) => *wave,
            _ => None,
        };
        StageRelease { full, wave }
    }

    /// The step that releases a member of stage `stage` (as [`stage_of`] numbers them)
    /// whose bucket is `bucket`: the first of the stage's waves that contains it, else the
    /// stage's last step. `None` for a staged plan without such a stage.
    pub fn releasing_step(&self, stage: usize, bucket: u32) -> Option<usize> {
        let mut current = 0;
        for (index, step) in self.steps.iter().enumerate() {
            let Audience::Stage { wave, .. } = &step.audience else {
                return None;
            };
            if current == stage {
                match wave {
                    Some(share) if !share.contains(bucket) => {}
                    _ => return Some(index),
                }
            }
            if wave.is_none() {
                current += 1;
            }
        }
        None
    }
}

/// How far a staged rollout's release reaches (see [`Plan::stage_release`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageRelease {
    /// Stages released whole, in order (`unassigned` counts last).
    pub full: usize,
    /// The share of the next stage released so far by its waves.
    pub wave: Option<Share>,
}

/// The stage an entity with `labels` belongs to: the first whose labels it all has with
/// equal values; one already matched by an earlier stage is not counted again, and one
/// matching none belongs to the final `unassigned` stage (index `stages.len()`).
pub fn stage_of(stages: &[Labels], labels: &Labels) -> usize {
    stages
        .iter()
        .position(|required| {
            required
                .iter()
                .all(|(name, value)| labels.get(name).is_some_and(|have| have == value))
        })
        .unwrap_or(stages.len())
}

/// Validates `spec` against `flag` and compiles it. Every problem is reported, each with
/// its path under `rollout.`.
pub fn compile(
    spec: &RolloutSpec,
    flag: &Flag,
    context: &CompileContext<'_>,
) -> Result<Plan, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if spec.flag != flag.key {
        errors.push(
            "rollout.flag",
            format!("spec names flag {:?}, not {:?}", spec.flag, flag.key),
        );
    }
    let target = match &spec.rule {
        None => Target::Default,
        Some(rule_id) => {
            if flag.rule(rule_id).is_none() {
                errors.push(
                    "rollout.rule",
                    format!("flag {} has no rule {rule_id:?}", flag.key),
                );
            }
            Target::Rule(rule_id.clone())
        }
    };
    for (field, variation) in [
        ("rollout.baseline", &spec.baseline),
        ("rollout.candidate", &spec.candidate),
    ] {
        if flag.variation_index(variation).is_none() {
            errors.push(
                field,
                format!("flag {} has no variation {variation:?}", flag.key),
            );
        }
    }
    if spec.baseline == spec.candidate {
        errors.push("rollout.candidate", "candidate must differ from baseline");
    }
    // the off variation is what a disabled flag serves; a rollout may not move anyone to it
    // (Bucketeer's rule). Ramping off gradually moves towards another variation of the same
    // value instead.
    if spec.candidate == flag.off_variation {
        errors.push(
            "rollout.candidate",
            format!(
                "candidate must not be the flag's off variation {:?} (what the flag serves while disabled); to ramp a feature off gradually, add a variation with the same value (e.g. {{id: \"{}-ramp\", value: <its value>}}) and roll out to that",
                flag.off_variation, flag.off_variation
            ),
        );
    }
    if let Some(salt) = &spec.salt {
        if salt.is_empty() || salt.len() > names::MAX_NAME_LEN {
            errors.push("rollout.salt", "must be 1..=128 characters");
        }
    }
    if let Some(stickiness) = &spec.stickiness {
        if stickiness.is_empty() || stickiness.len() > names::MAX_NAME_LEN {
            errors.push(
                "rollout.stickiness",
                "must be an attribute name of 1..=128 characters",
            );
        }
    }
    let guard =
        spec.guard
            .as_ref()
            .and_then(|guard_spec| match guard_spec.compile("rollout.guard") {
                Ok(guard) => Some(guard),
                Err(guard_errors) => {
                    errors.errors.extend(guard_errors.errors);
                    None
                }
            });
    if spec.guard.is_some() && !spec.guards.is_empty() {
        errors.push(
            "rollout.guards",
            "give guard (one) or guards (several), not both",
        );
    }
    if spec.guards.len() > MAX_GUARDS {
        errors.push("rollout.guards", format!("at most {MAX_GUARDS} guards"));
    }
    let guards: Vec<Guard> = spec
        .guards
        .iter()
        .enumerate()
        .filter_map(|(index, guard_spec)| {
            match guard_spec.compile(&format!("rollout.guards[{index}]")) {
                Ok(guard) => Some(guard),
                Err(guard_errors) => {
                    errors.errors.extend(guard_errors.errors);
                    None
                }
            }
        })
        .collect();
    let windows = compile_windows(&spec.windows, &mut errors);
    let start_at = spec
        .start_at
        .as_deref()
        .and_then(|text| parse_future_time(text, "rollout.start_at", context.now, &mut errors));
    if spec.wait_for_start && spec.start_at.is_some() {
        errors.push(
            "rollout.wait_for_start",
            "give start_at or wait_for_start, not both",
        );
    }
    let rollout_start = match (start_at, spec.wait_for_start) {
        (_, true) => StartMode::OnCommand,
        (Some(time), false) => StartMode::At(time),
        (None, false) => StartMode::Now,
    };

    let kinds_given = [
        spec.phases.is_some(),
        spec.preset.is_some(),
        spec.manual.is_some(),
        spec.template.is_some(),
        spec.stages.is_some(),
    ]
    .into_iter()
    .filter(|given| *given)
    .count();
    let compiled = if kinds_given != 1 {
        errors.push(
            "rollout",
            "give exactly one of phases, preset, manual, template or stages",
        );
        None
    } else if let Some(phases) = &spec.phases {
        let steps = compile_phases(phases, "rollout.phases", None, &mut errors);
        Some((PlanKind::Phases, rollout_start, steps))
    } else if let Some(preset) = &spec.preset {
        compile_preset(preset, &mut errors)
            .map(|steps| (PlanKind::Preset(preset.clone()), rollout_start, steps))
    } else if let Some(manual) = &spec.manual {
        if spec.start_at.is_some() || spec.wait_for_start {
            errors.push(
                "rollout.start_at",
                "a manual schedule starts at its first execute_at",
            );
        }
        compile_manual(manual, context, &mut errors)
            .map(|(start, steps)| (PlanKind::Manual, start, steps))
    } else if let Some(template) = &spec.template {
        let template_start = template.start_at.as_deref().and_then(|text| {
            parse_future_time(text, "rollout.template.start_at", context.now, &mut errors)
        });
        if template_start.is_some() && spec.start_at.is_some() {
            errors.push(
                "rollout.template.start_at",
                "give start_at once, in the template or the rollout",
            );
        }
        let start = template_start.map_or(rollout_start, StartMode::At);
        compile_template(template.increment, &template.frequency, &mut errors)
            .map(|steps| (PlanKind::Template, start, steps))
    } else if let Some(stages) = &spec.stages {
        if spec.salt.is_some() || spec.stickiness.is_some() {
            errors.push(
                "rollout.stages",
                "label stages do not bucket: salt and stickiness do not apply",
            );
        }
        compile_stages(stages, "rollout.stages", &[], &mut errors)
            .map(|steps| (PlanKind::Stages, rollout_start, steps))
    } else {
        None
    };

    let Some((kind, start, steps)) = compiled else {
        return Err(errors);
    };
    if steps.len() > MAX_STEPS {
        errors.push(
            "rollout",
            format!(
                "a plan may have at most {MAX_STEPS} steps, this one has {}",
                steps.len()
            ),
        );
    }
    if steps.is_empty() && errors.is_empty() {
        errors.push("rollout", "a plan needs at least one step");
    }
    errors.into_result(Plan {
        kind,
        flag: spec.flag.clone(),
        target,
        baseline: spec.baseline.clone(),
        candidate: spec.candidate.clone(),
        salt: spec
            .salt
            .clone()
            .unwrap_or_else(|| context.fresh_salt.to_owned()),
        stickiness: spec.stickiness.clone(),
        start,
        steps,
        guard,
        guards,
        windows,
    })
}

fn parse_future_time(
    text: &str,
    field: &str,
    now: Timestamp,
    errors: &mut ValidationErrors,
) -> Option<Timestamp> {
    match Timestamp::parse_rfc3339(text) {
        Ok(time) if time < now => {
            errors.push(field, format!("{text} is in the past (now is {now})"));
            None
        }
        Ok(time) => Some(time),
        Err(message) => {
            errors.push(field, message);
            None
        }
    }
}

/// Checks a positive percentage and that it rises above `previous`.
fn rising_share(
    percentage: f64,
    previous: Option<Share>,
    field: &str,
    errors: &mut ValidationErrors,
) -> Option<Share> {
    match Share::from_percentage(percentage) {
        Ok(share) if share == Share::NONE => {
            errors.push(field, "must be greater than 0");
            None
        }
        Ok(share) => {
            if let Some(previous_share) = previous {
                if share <= previous_share {
                    errors.push(
                        field,
                        format!("must be greater than the previous step's {previous_share}"),
                    );
                }
            }
            Some(share)
        }
        Err(message) => {
            errors.push(field, message);
            None
        }
    }
}

fn positive_duration(text: &str, field: &str, errors: &mut ValidationErrors) -> Option<DurationMs> {
    match DurationMs::parse(text) {
        Ok(duration) if duration.as_millis() > 0 => Some(duration),
        Ok(_) => {
            errors.push(field, "must be greater than zero");
            None
        }
        Err(message) => {
            errors.push(field, message);
            None
        }
    }
}

/// Compiles phases given at `field` (`rollout.phases`, or a reschedule's `steps`), each
/// rising above the one before and the first above `previous`.
pub(crate) fn compile_phases(
    phases: &[crate::spec::PhaseSpec],
    field: &str,
    mut previous: Option<Share>,
    errors: &mut ValidationErrors,
) -> Vec<Step> {
    if phases.is_empty() {
        errors.push(field, "give at least one phase");
    }
    let mut steps = Vec::with_capacity(phases.len());
    for (index, phase) in phases.iter().enumerate() {
        let path = format!("{field}[{index}]");
        let is_last = index + 1 == phases.len();
        let share = rising_share(
            phase.percentage,
            previous,
            &format!("{path}.percentage"),
            errors,
        );
        let gate = match (&phase.duration, is_last) {
            (Some(text), _) => {
                positive_duration(text, &format!("{path}.duration"), errors).map(Gate::Timer)
            }
            (None, true) => Some(Gate::Immediate),
            (None, false) => {
                errors.push(
                    format!("{path}.duration"),
                    "every phase but the last needs a duration",
                );
                None
            }
        };
        let approval = phase.gate.as_ref().and_then(|gate| {
            approval_gate(
                &gate.approval,
                &format!("{path}.gate.approval.approvers"),
                errors,
            )
        });
        if let (Some(share), Some(gate)) = (share, gate) {
            steps.push(Step {
                audience: Audience::Share(share),
                gate,
                approval,
            });
        }
        previous = share.or(previous);
    }
    steps
}

fn compile_preset(name: &str, errors: &mut ValidationErrors) -> Option<Vec<Step>> {
    let Some((_, phases)) = PRESETS.iter().find(|(preset_name, _)| *preset_name == name) else {
        errors.push(
            "rollout.preset",
            format!("unknown preset {name:?}; use 1hr, 12hr, 24hr or 48hr"),
        );
        return None;
    };
    Some(
        phases
            .iter()
            .map(|(percentage, minutes)| Step {
                audience: Audience::Share(Share::from_ppm(percentage * 10_000)),
                gate: Gate::Timer(DurationMs::from_minutes(*minutes)),
                approval: None,
            })
            .collect(),
    )
}

fn compile_manual(
    manual: &[crate::spec::ManualStepSpec],
    context: &CompileContext<'_>,
    errors: &mut ValidationErrors,
) -> Option<(StartMode, Vec<Step>)> {
    if manual.is_empty() {
        errors.push("rollout.manual", "give at least one step");
        return None;
    }
    let mut shares = Vec::with_capacity(manual.len());
    let mut times = Vec::with_capacity(manual.len());
    let mut previous_share: Option<Share> = None;
    let mut previous_time: Option<Timestamp> = None;
    for (index, step) in manual.iter().enumerate() {
        let path = format!("rollout.manual[{index}]");
        let share = rising_share(
            step.weight,
            previous_share,
            &format!("{path}.weight"),
            errors,
        );
        let time = parse_future_time(
            &step.execute_at,
            &format!("{path}.execute_at"),
            context.now,
            errors,
        );
        if let (Some(earlier), Some(later)) = (previous_time, time) {
            if later.millis_since(earlier) < context.min_phase_interval.as_millis() {
                errors.push(
                    format!("{path}.execute_at"),
                    format!(
                        "must be at least {} after the previous step's {earlier}",
                        context.min_phase_interval
                    ),
                );
            }
        }
        shares.push(share);
        times.push(time);
        previous_share = share.or(previous_share);
        previous_time = time.or(previous_time);
    }
    let shares: Option<Vec<Share>> = shares.into_iter().collect();
    let times: Option<Vec<Timestamp>> = times.into_iter().collect();
    let (shares, times) = (shares?, times?);
    let steps = shares
        .iter()
        .enumerate()
        .map(|(index, share)| Step {
            audience: Audience::Share(*share),
            gate: match times.get(index + 1) {
                Some(next) => Gate::Timer(DurationMs::from_millis(next.millis_since(times[index]))),
                None => Gate::Immediate,
            },
            approval: None,
        })
        .collect();
    Some((StartMode::At(times[0]), steps))
}

fn compile_template(
    increment: f64,
    frequency: &str,
    errors: &mut ValidationErrors,
) -> Option<Vec<Step>> {
    let period = match frequency {
        "hourly" => Some(DurationMs::from_hours(1)),
        "daily" => Some(DurationMs::from_hours(24)),
        "weekly" => Some(DurationMs::from_hours(24 * 7)),
        other => {
            errors.push(
                "rollout.template.frequency",
                format!("unknown frequency {other:?}; use hourly, daily or weekly"),
            );
            None
        }
    };
    let increment_share = rising_share(increment, None, "rollout.template.increment", errors)?;
    let period = period?;
    let phase_count = Share::ALL.ppm().div_ceil(increment_share.ppm()) as usize;
    if phase_count > MAX_STEPS {
        errors.push(
            "rollout.template.increment",
            format!("an increment of {increment_share} gives {phase_count} phases, more than {MAX_STEPS}"),
        );
        return None;
    }
    Some(
        (0..phase_count)
            .map(|phase| {
                let weight_ppm = (phase as u64 + 1) * u64::from(increment_share.ppm());
                let share = Share::from_ppm(u32::try_from(weight_ppm).unwrap_or(u32::MAX));
                Step {
                    audience: Audience::Share(share),
                    gate: if phase + 1 == phase_count {
                        Gate::Immediate
                    } else {
                        Gate::Timer(period)
                    },
                    approval: None,
                }
            })
            .collect(),
    )
}

/// Compiles stages given at `field` (`rollout.stages`, or a reschedule's `steps`) after the
/// stages named `kept` (already released, kept by a reschedule), plus the final
/// `unassigned` stage.
pub(crate) fn compile_stages(
    stages: &[StageSpec],
    field: &str,
    kept: &[&str],
    errors: &mut ValidationErrors,
) -> Option<Vec<Step>> {
    if stages.is_empty() {
        errors.push(field, "give at least one stage");
        return None;
    }
    let mut steps = Vec::with_capacity(stages.len() + 1);
    for (index, stage) in stages.iter().enumerate() {
        let path = format!("{field}[{index}]");
        if kept.contains(&stage.name.as_str()) {
            errors.push(
                format!("{path}.name"),
                format!("stage {:?} is already released", stage.name),
            );
        }
        if stage.name.is_empty() || stage.name.len() > names::MAX_NAME_LEN {
            errors.push(format!("{path}.name"), "must be 1..=128 characters");
        }
        if stage.name == UNASSIGNED_STAGE {
            errors.push(
                format!("{path}.name"),
                "unassigned is the implicit final stage; choose another name",
            );
        }
        if stages[..index]
            .iter()
            .any(|earlier| earlier.name == stage.name)
        {
            errors.push(
                format!("{path}.name"),
                format!("duplicate stage name {:?}", stage.name),
            );
        }
        if stage.labels.is_empty() {
            errors.push(format!("{path}.labels"), "a stage needs at least one label");
        }
        if stage.labels.len() > MAX_STAGE_LABELS {
            errors.push(
                format!("{path}.labels"),
                format!("at most {MAX_STAGE_LABELS} labels"),
            );
        }
        let waves = compile_waves(stage, &path, errors);
        for (wave, gate_spec, gate_path) in waves {
            let gate = match gate_spec {
                None => Some((Gate::Continue, None)),
                Some(gate_spec) => compile_stage_gate(gate_spec, &gate_path, errors),
            };
            if let Some((gate, approval)) = gate {
                steps.push(Step {
                    audience: Audience::Stage {
                        name: stage.name.clone(),
                        labels: stage.labels.clone(),
                        wave,
                    },
                    gate,
                    approval,
                });
            }
        }
    }
    steps.push(Step {
        audience: Audience::Stage {
            name: UNASSIGNED_STAGE.to_owned(),
            labels: Labels::new(),
            wave: None,
        },
        gate: Gate::Immediate,
        approval: None,
    });
    Some(steps)
}

/// Most guards one rollout may have.
pub const MAX_GUARDS: usize = 8;

/// Most waves one stage may have.
pub const MAX_WAVES: usize = 10;

/// A stage's waves: each wave's share (`None`: the whole stage, the last wave), its gate
/// spec and that gate's path. A stage without `percentages` is one wave.
fn compile_waves<'a>(
    stage: &'a StageSpec,
    path: &str,
    errors: &mut ValidationErrors,
) -> Vec<(Option<Share>, Option<&'a StageGateSpec>, String)> {
    let whole = || vec![(None, stage.gate.as_ref(), format!("{path}.gate"))];
    if stage.gate.is_some() && stage.gates.is_some() {
        errors.push(
            format!("{path}.gates"),
            "give gate (every wave) or gates (one per wave), not both",
        );
    }
    let Some(percentages) = &stage.percentages else {
        if stage.gates.is_some() {
            errors.push(format!("{path}.gates"), "gates go with percentages");
        }
        return whole();
    };
    let before = errors.errors.len();
    if percentages.is_empty() || percentages.len() > MAX_WAVES {
        errors.push(
            format!("{path}.percentages"),
            format!("give 1..={MAX_WAVES} waves"),
        );
    }
    let mut shares = Vec::with_capacity(percentages.len());
    for (index, percentage) in percentages.iter().enumerate() {
        let field = format!("{path}.percentages[{index}]");
        match Share::from_percentage(*percentage) {
            Ok(share) if share == Share::NONE => errors.push(field, "must be greater than 0"),
            Ok(share) if shares.last().is_some_and(|previous| share <= *previous) => {
                errors.push(field, "waves must rise strictly")
            }
            Ok(share) => shares.push(share),
            Err(message) => errors.push(field, message),
        }
    }
    if shares.last().is_some_and(|last| *last != Share::ALL) {
        errors.push(
            format!("{path}.percentages[{}]", percentages.len() - 1),
            "the last wave is 100: every member of the stage",
        );
    }
    if let Some(gates) = &stage.gates {
        if gates.len() != percentages.len() {
            errors.push(
                format!("{path}.gates"),
                format!(
                    "give one gate per wave: {} waves, {} gates",
                    percentages.len(),
                    gates.len()
                ),
            );
        }
    }
    if errors.errors.len() > before {
        return whole();
    }
    shares
        .iter()
        .enumerate()
        .map(|(index, share)| {
            let wave = (*share != Share::ALL).then_some(*share);
            match &stage.gates {
                Some(gates) => (wave, gates.get(index), format!("{path}.gates[{index}]")),
                None => (wave, stage.gate.as_ref(), format!("{path}.gate")),
            }
        })
        .collect()
}

/// Checks an approval gate's number of approvers.
fn approval_gate(
    spec: &crate::spec::ApprovalSpec,
    field: &str,
    errors: &mut ValidationErrors,
) -> Option<ApprovalGate> {
    if spec.approvers == 0 || spec.approvers > MAX_APPROVERS {
        errors.push(
            field,
            format!("must be 1..={MAX_APPROVERS}, not {}", spec.approvers),
        );
        return None;
    }
    Some(ApprovalGate {
        approvers: spec.approvers,
    })
}

fn compile_stage_gate(
    gate: &StageGateSpec,
    path: &str,
    errors: &mut ValidationErrors,
) -> Option<(Gate, Option<ApprovalGate>)> {
    let approval = match &gate.approval {
        Some(spec) => Some(approval_gate(
            spec,
            &format!("{path}.approval.approvers"),
            errors,
        )?),
        None => None,
    };
    // a timer or an approval alone: error counts belong to a completion gate
    let without_completion =
        gate.min_completed_percentage.is_none() && (gate.after.is_some() || approval.is_some());
    if without_completion && gate.max_errors.is_some() {
        errors.push(
            format!("{path}.max_errors"),
            "max_errors goes with min_completed_percentage",
        );
    }
    let rest = match (&gate.after, gate.min_completed_percentage) {
        // an approval alone: the next stage is released when the stage is approved
        (None, None) if approval.is_some() => Some(Gate::Immediate),
        (Some(after), None) => {
            positive_duration(after, &format!("{path}.after"), errors).map(Gate::Timer)
        }
        (None, Some(percentage)) => match Share::from_percentage(percentage) {
            Ok(min_completed) if min_completed > Share::NONE => Some(Gate::Completion {
                min_completed,
                max_errors: gate.max_errors.unwrap_or(0),
            }),
            Ok(_) => {
                errors.push(
                    format!("{path}.min_completed_percentage"),
                    "must be greater than 0",
                );
                None
            }
            Err(message) => {
                errors.push(format!("{path}.min_completed_percentage"), message);
                None
            }
        },
        _ => {
            errors.push(
                path,
                "give exactly one of after or min_completed_percentage, or an approval",
            );
            None
        }
    };
    rest.map(|gate| (gate, approval))
}
