//! What a rollout is at a point in time — [`RolloutState`] with its lifecycle, steps
//! entered, pauses and gate holds — and the vocabulary of the step function: the
//! [`Event`]s it takes, the [`Effect`]s it reports and the [`Rejection`]s it refuses with.
//! The state's own questions (its view for evaluation, its due time, which gate holds it)
//! are answered here; changing it is [`super::step`]'s.

use serde::{Deserialize, Serialize};

use crate::eval::{RolloutView, ViewAudience};
use crate::flag::{Serve, StagedServe, WeightedVariation};
use crate::freeze::Freezes;
use crate::guard::{GuardAction, GuardFigures, GuardVerdict, OutcomeCounts};
use crate::plan::{ApprovalGate, Gate, Plan, StageRelease, StartMode, Step};
use crate::share::Share;
use crate::time::{DurationMs, Timestamp};

use super::step::{advance_due, completion_hold, start};

/// Lifecycle states (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Created, waiting for its start time or the `start` command.
    Queued,
    /// Moving through its steps.
    Running,
    /// Frozen at the current step by an operator or a guard.
    Paused,
    /// Walking its share back down to the baseline, step by step (a gradual rollback).
    RollingBack,
    /// Reached the end of its plan.
    Completed,
    /// Ended early, keeping a share.
    Stopped,
    /// Ended early, everyone back on the baseline.
    RolledBack,
}

impl Lifecycle {
    /// Queued, running or paused: holds the flag's one active-rollout slot.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Lifecycle::Queued | Lifecycle::Running | Lifecycle::Paused | Lifecycle::RollingBack
        )
    }

    /// Completed, stopped or rolled back.
    pub fn is_finished(self) -> bool {
        !self.is_active()
    }

    /// The wire name (`rolled_back`).
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Queued => "queued",
            Lifecycle::Running => "running",
            Lifecycle::Paused => "paused",
            Lifecycle::RollingBack => "rolling_back",
            Lifecycle::Completed => "completed",
            Lifecycle::Stopped => "stopped",
            Lifecycle::RolledBack => "rolled_back",
        }
    }
}

/// What a held rollout waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitingFor {
    /// The `start` command (or the start time: see `due_at`).
    Start,
    /// A timer; see [`RolloutState::due_at`].
    Timer,
    /// An operator's `continue`.
    Continue,
    /// A health condition (a stage completion gate).
    Guard,
    /// Approvals of the current step (`rollout.approve`).
    Approval,
    /// The next opening of the rollout's time windows: its timer ran out while they are
    /// closed (`due_at` is the opening).
    Window,
    /// The end of its namespace's freeze.
    Freeze,
}

/// When a rollout would complete if it stays as it is — every timer runs as planned, nothing
/// is paused — or, when a step no clock can end stands in the way, which step, what it
/// waits for and when the timers bring the rollout there (SPEC §12 "Progress").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eta {
    /// When the rollout completes, if only timers stand in the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completes_at: Option<Timestamp>,
    /// The first step no clock can end (`None` with `blocked_by: start`: the start itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_at_step: Option<usize>,
    /// What that step waits for: `continue`, `guard` (a completion gate) or `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<WaitingFor>,
    /// When the rollout reaches that wait (now, when it already waits there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_from: Option<Timestamp>,
}

impl Eta {
    fn completes(at: Timestamp) -> Eta {
        Eta {
            completes_at: Some(at),
            blocked_at_step: None,
            blocked_by: None,
            blocked_from: None,
        }
    }

    fn blocked(step: Option<usize>, by: WaitingFor, from: Timestamp) -> Eta {
        Eta {
            completes_at: None,
            blocked_at_step: step,
            blocked_by: Some(by),
            blocked_from: Some(from),
        }
    }

    /// Walks the plan from entering step `from` at `at`: timers add up until the final
    /// step completes, or a step without a timer blocks the way.
    fn walk(plan: &Plan, from: usize, mut at: Timestamp) -> Eta {
        for index in from..=plan.last_step() {
            if plan.approval_at(index).is_some() {
                return Eta::blocked(Some(index), WaitingFor::Approval, at);
            }
            match plan.steps.get(index).map(|step| &step.gate) {
                Some(Gate::Timer(duration)) => at = plan.timer_opens_at(at.plus(*duration)),
                Some(Gate::Immediate) | None => {}
                Some(Gate::Continue) => return Eta::blocked(Some(index), WaitingFor::Continue, at),
                Some(Gate::Completion { .. }) => {
                    return Eta::blocked(Some(index), WaitingFor::Guard, at)
                }
            }
        }
        Eta::completes(at)
    }
}

/// What happened to one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step index.
    pub index: usize,
    /// When the plan said it would begin.
    pub planned_at: Timestamp,
    /// When it actually began (`None` for a step skipped by catch-up).
    pub entered_at: Option<Timestamp>,
    /// Passed over by catch-up.
    pub skipped: bool,
}

/// A gradual rollback under way (SPEC §12): the share walks down `shares`, one every
/// `every`, the first from `anchor`; the last is 0, where the rollout ends rolled back. The
/// entities that adopted last revert first, since a lower share is a subset of a higher one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradualRollback {
    /// The shares, strictly decreasing, ending at 0.
    pub shares: Vec<Share>,
    /// Which of them is served now.
    pub index: usize,
    /// Time between two shares.
    pub every: DurationMs,
    /// When the current share began (planned): the base of the next one's timer.
    pub anchor: Timestamp,
    /// Why it rolls back.
    pub cause: EndCause,
}

impl GradualRollback {
    /// The share served now.
    pub fn share(&self) -> Share {
        self.shares.get(self.index).copied().unwrap_or(Share::NONE)
    }

    /// When the next share begins.
    pub fn next_at(&self) -> Timestamp {
        self.anchor.plus(self.every)
    }

    /// When the share reaches 0.
    pub fn ends_at(&self) -> Timestamp {
        let left = self.shares.len().saturating_sub(self.index + 1);
        let left = i64::try_from(left).unwrap_or(i64::MAX);
        self.anchor.plus(DurationMs::from_millis(
            self.every.as_millis().saturating_mul(left),
        ))
    }
}

/// One actor's approval of the current step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved.
    pub actor: String,
    /// When.
    pub at: Timestamp,
}

/// The mutable part of a rollout. Stored beside its plan; `revision` rises with each change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
    /// Current step; `None` while queued.
    pub step: Option<usize>,
    /// Planned start of the current step: the base of its timer.
    pub step_anchor: Option<Timestamp>,
    /// Start time of a rollout queued for a time.
    pub queued_until: Option<Timestamp>,
    /// When the current pause began.
    pub paused_at: Option<Timestamp>,
    /// When the rollout last left a pause (resume, or promote while paused): its guard
    /// judges only outcomes from then on, see [`RolloutState::guard_window_start`]. Absent
    /// before the first resume (and in records written before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<Timestamp>,
    /// Share served after a stop (share plans only).
    pub stopped_share: Option<Share>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// When each `warn` guard (in [`Plan::guards`] order) last told of a breach; it tells
    /// again once its window passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards_warned_at: Vec<Option<Timestamp>>,
    /// The gradual rollback under way: present exactly while `rolling_back`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<GradualRollback>,
    /// Approvals of the current step, in order (emptied when another step is entered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    /// Every step entered or skipped, in order.
    pub history: Vec<StepRecord>,
    /// Count of accepted changes; scripts compare it before writing.
    pub revision: u64,
}

/// Per-stage fleet counts (SPEC §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StageCounts {
    /// Entities in the stage.
    pub members: u64,
    /// Applied the candidate.
    pub completed: u64,
    /// Reported failure.
    pub errors: u64,
    /// Released, not yet reported.
    pub pending: u64,
    /// Not yet released.
    pub waiting: u64,
    /// Members that stopped heartbeating and have not reported: shown apart from `pending`,
    /// and, like them, not completed (silence never opens a completion gate).
    #[serde(default)]
    pub stale: u64,
}

/// What the ticker knows about health at a tick.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Health {
    /// Outcome counters of each guard over its window, in [`Plan::guards`] order; empty
    /// when not known (a guard then judges nothing).
    #[serde(default)]
    pub outcomes: Vec<OutcomeCounts>,
    /// Counts of the current stage, for staged plans.
    pub current_stage: Option<StageCounts>,
    /// The namespace's freezes: timers and automatic gates hold while one does.
    #[serde(default)]
    pub freezes: Freezes,
}

/// Which condition holds a health gate shut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldBy {
    /// A stage completion gate: too few members applied the candidate, or too many failed.
    Completion,
    /// The rollout's guard: too few outcome samples on a side it compares to judge.
    Guard,
}

/// Why the current step's health gate is shut at a tick (SPEC §11.1: silence never opens
/// a gate; status says which gate holds and why).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateHold {
    /// The condition that is not met.
    pub held_by: HeldBy,
    /// What it lacks, in words: `1 of 10 members completed (10%), 50% needed; 2 pending, 7
    /// stale (no heartbeat, no report), 0 errors`.
    pub reason: String,
}

/// Why an ending happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// An operator's command.
    Command,
    /// The flag was disabled (command or kill switch).
    FlagDisabled,
    /// A guard breach.
    Guard,
}

/// What moved the rollout into a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryCause {
    /// The start time or the `start` command.
    Start,
    /// A timer ran out.
    Timer,
    /// A stage completion gate opened.
    Gate,
    /// An operator's `continue`.
    Continue,
    /// An operator's `promote`.
    Promote,
    /// The last approval a step waited for.
    Approval,
}

/// An input to the step function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The clock moved (the ticker), with what it knows of health.
    Tick(Health),
    /// Start a rollout waiting for the command (or early).
    Start,
    /// Freeze.
    Pause,
    /// Unfreeze.
    Resume,
    /// Open the current gate.
    Continue,
    /// One actor approves the current step.
    Approve {
        /// Who approves.
        actor: String,
    },
    /// Jump to the final step.
    Promote,
    /// End, keeping `percentage` (or the current share).
    Stop {
        /// Share to keep, in percent.
        percentage: Option<f64>,
    },
    /// End, everyone on baseline.
    Rollback,
    /// Walk the share down through `shares` (strictly decreasing, below the share served,
    /// ending at 0), one every `every`, then end rolled back.
    RollbackGradually {
        /// The shares.
        shares: Vec<Share>,
        /// Time between two.
        every: DurationMs,
    },
    /// The flag was disabled: stop at the current share.
    FlagDisabled,
}

/// Something that happened, for the event stream, the audit log and the services.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "effect")]
pub enum Effect {
    /// The rollout left `queued`; the flag must be enabled if it was disabled.
    Started {
        /// Planned start.
        planned_at: Timestamp,
    },
    /// The current step changed.
    StepEntered {
        /// Previous step.
        from: Option<usize>,
        /// New step.
        to: usize,
        /// Steps passed over by catch-up, in order.
        skipped: Vec<usize>,
        /// What caused it.
        cause: EntryCause,
        /// When the new step was due by the plan.
        planned_at: Timestamp,
        /// How late the transition is, in ms (0 for commands).
        lag_ms: i64,
    },
    /// Frozen.
    Paused {
        /// Time left on the current timer, when one runs.
        remaining_ms: Option<i64>,
    },
    /// Unfrozen; later times shift by the pause length.
    Resumed {
        /// Length of the pause.
        paused_ms: i64,
    },
    /// An actor approved the current step.
    Approved {
        /// The step.
        step: usize,
        /// Who.
        actor: String,
        /// Distinct approvals of the step so far.
        approvals: u32,
        /// Approvals it needs.
        required: u32,
    },
    /// The steps after the current one were replaced (`rollout.reschedule`).
    Rescheduled {
        /// The current step, kept with every step before it.
        at_step: usize,
        /// The steps replaced.
        old_steps: Vec<Step>,
        /// The steps in their place.
        new_steps: Vec<Step>,
    },
    /// A guard crossed its limit.
    GuardBreached {
        /// What the guard does.
        action: GuardAction,
        /// The numbers.
        figures: GuardFigures,
        /// Which guard, in [`Plan::guards`] order.
        #[serde(default)]
        guard: usize,
    },
    /// Reached the end of the plan.
    Completed,
    /// Ended early keeping a share.
    Stopped {
        /// Why.
        cause: EndCause,
    },
    /// A gradual rollback began: the share walks down `shares`, one every `every`.
    RollingBack {
        /// The shares, the first served from now.
        shares: Vec<Share>,
        /// Time between two.
        every: DurationMs,
        /// Why.
        cause: EndCause,
    },
    /// A gradual rollback lowered the share (the last adopters reverted first).
    ShareLowered {
        /// Share before.
        from: Share,
        /// Share after.
        to: Share,
        /// When the plan said it would happen.
        planned_at: Timestamp,
    },
    /// Ended early on the baseline.
    RolledBack {
        /// Why.
        cause: EndCause,
    },
}

/// A refused event: nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Rejection {
    /// Stable code.
    pub code: RejectionCode,
    /// What is wrong and what to do, lowercase.
    pub message: String,
    /// The field at fault, when one is.
    pub field: Option<String>,
}

/// Codes of refusals; they map one to one onto wire error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    /// The event does not apply in the current state.
    FailedPrecondition,
    /// An argument is out of range.
    InvalidArgument,
}

/// The new state and what happened. No effects means nothing changed (and `state` is the
/// input state, revision included).
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutcome {
    /// The state to persist.
    pub state: RolloutState,
    /// What happened, in order.
    pub effects: Vec<Effect>,
}

impl StepOutcome {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.effects.is_empty()
    }
}

impl RolloutState {
    /// The state of a just-created rollout: running at step 0 when it starts now, else
    /// queued. Returns the effects of starting, if it started.
    pub fn created(plan: &Plan, now: Timestamp) -> StepOutcome {
        let queued = RolloutState {
            lifecycle: Lifecycle::Queued,
            step: None,
            step_anchor: None,
            queued_until: match plan.start {
                StartMode::At(time) => Some(time),
                StartMode::Now | StartMode::OnCommand => None,
            },
            paused_at: None,
            resumed_at: None,
            stopped_share: None,
            finished_at: None,
            guards_warned_at: Vec::new(),
            rollback: None,
            approvals: Vec::new(),
            history: Vec::new(),
            revision: 1,
        };
        match plan.start {
            StartMode::Now => {
                let mut effects = Vec::new();
                let mut state = queued;
                start(&mut state, now, now, EntryCause::Start, &mut effects);
                advance_due(plan, &mut state, now, None, &mut effects);
                StepOutcome { state, effects }
            }
            StartMode::At(_) | StartMode::OnCommand => StepOutcome {
                state: queued,
                effects: Vec::new(),
            },
        }
    }

    /// The earliest time whose outcomes a guard with `window` judges at `now`: the start of
    /// the window, but never before the last resume, so a resumed rollout is not judged
    /// again on the outcomes it was paused for. (Outcomes are counted per rollout, so
    /// nothing from before the rollout began is ever in its counters.)
    pub fn guard_window_start(&self, window: DurationMs, now: Timestamp) -> Timestamp {
        let window_start = now.minus(window);
        self.resumed_at
            .map_or(window_start, |resumed_at| resumed_at.max(window_start))
    }

    /// When the ticker must next look at this rollout on account of time alone: the start
    /// time of a queued rollout or the end of the current step's timer. `None` when held
    /// for a command, a health gate, or finished.
    pub fn due_at(&self, plan: &Plan) -> Option<Timestamp> {
        match self.lifecycle {
            Lifecycle::Queued => self.queued_until,
            Lifecycle::Running if self.pending_approval(plan).is_some() => None,
            Lifecycle::Running => {
                let step = plan.steps.get(self.step?)?;
                match step.gate {
                    Gate::Timer(duration) => {
                        Some(plan.timer_opens_at(self.step_anchor?.plus(duration)))
                    }
                    Gate::Immediate => self.step_anchor,
                    Gate::Continue | Gate::Completion { .. } => None,
                }
            }
            Lifecycle::RollingBack => self.rollback.as_ref().map(GradualRollback::next_at),
            Lifecycle::Paused
            | Lifecycle::Completed
            | Lifecycle::Stopped
            | Lifecycle::RolledBack => None,
        }
    }

    /// When this rollout would complete as it stands ([`Eta`]); `None` while paused (a
    /// resume decides) and once finished.
    pub fn eta(&self, plan: &Plan, now: Timestamp) -> Option<Eta> {
        match self.lifecycle {
            Lifecycle::Queued => Some(match self.queued_until {
                // step 0 is entered at the start time and its timer runs from there
                Some(start) => Eta::walk(plan, 0, start),
                None => Eta::blocked(None, WaitingFor::Start, now),
            }),
            Lifecycle::Running if self.pending_approval(plan).is_some() => {
                Some(Eta::blocked(self.step, WaitingFor::Approval, now))
            }
            Lifecycle::Running => {
                let current = self.step?;
                match &plan.steps.get(current)?.gate {
                    Gate::Timer(duration) => Some(Eta::walk(
                        plan,
                        current + 1,
                        plan.timer_opens_at(self.step_anchor?.plus(*duration)),
                    )),
                    // the final step completes on entry; an earlier one (gated by an
                    // approval alone) opens at its approval
                    Gate::Immediate => Some(Eta::walk(plan, current + 1, self.step_anchor?)),
                    Gate::Continue => Some(Eta::blocked(Some(current), WaitingFor::Continue, now)),
                    Gate::Completion { .. } => {
                        Some(Eta::blocked(Some(current), WaitingFor::Guard, now))
                    }
                }
            }
            // when the share reaches 0
            Lifecycle::RollingBack => self
                .rollback
                .as_ref()
                .map(|rollback| Eta::completes(rollback.ends_at())),
            Lifecycle::Paused
            | Lifecycle::Completed
            | Lifecycle::Stopped
            | Lifecycle::RolledBack => None,
        }
    }

    /// What is left of the current step's timer while paused (the time it still runs once
    /// resumed); `None` unless paused on a timer step.
    pub fn remaining_when_paused(&self, plan: &Plan) -> Option<i64> {
        if self.lifecycle != Lifecycle::Paused || self.pending_approval(plan).is_some() {
            return None;
        }
        let step = plan.steps.get(self.step?)?;
        match step.gate {
            Gate::Timer(duration) => Some(
                self.step_anchor?
                    .plus(duration)
                    .millis_since(self.paused_at?)
                    .max(0),
            ),
            Gate::Immediate | Gate::Continue | Gate::Completion { .. } => None,
        }
    }

    /// What a running or queued rollout waits for.
    pub fn waiting_for(&self, plan: &Plan) -> Option<WaitingFor> {
        match self.lifecycle {
            Lifecycle::Queued => Some(if self.queued_until.is_some() {
                WaitingFor::Timer
            } else {
                WaitingFor::Start
            }),
            Lifecycle::Running if self.pending_approval(plan).is_some() => {
                Some(WaitingFor::Approval)
            }
            Lifecycle::Running => match plan.steps.get(self.step?)?.gate {
                Gate::Timer(_) | Gate::Immediate => Some(WaitingFor::Timer),
                Gate::Continue => Some(WaitingFor::Continue),
                Gate::Completion { .. } => Some(WaitingFor::Guard),
            },
            Lifecycle::RollingBack => Some(WaitingFor::Timer),
            _ => None,
        }
    }

    /// What a running or queued rollout waits for at `now`: [`Self::waiting_for`], except
    /// that a timer that ran out while the rollout's windows are closed waits for the
    /// window.
    pub fn waiting_for_at(&self, plan: &Plan, now: Timestamp) -> Option<WaitingFor> {
        let waiting = self.waiting_for(plan)?;
        if waiting != WaitingFor::Timer || self.lifecycle != Lifecycle::Running {
            return Some(waiting);
        }
        let Some(Gate::Timer(duration)) = plan.steps.get(self.step?).map(|step| &step.gate) else {
            return Some(waiting);
        };
        let ran_out = self.step_anchor?.plus(*duration);
        Some(if ran_out <= now && plan.timer_opens_at(ran_out) > now {
            WaitingFor::Window
        } else {
            WaitingFor::Timer
        })
    }

    /// The approval the current step still waits for: its gate when fewer distinct actors
    /// than it needs have approved (running or paused rollouts only).
    pub fn pending_approval(&self, plan: &Plan) -> Option<ApprovalGate> {
        if !matches!(self.lifecycle, Lifecycle::Running | Lifecycle::Paused) {
            return None;
        }
        plan.approval_at(self.step?)
            .filter(|gate| self.approvals.len() < gate.approvers as usize)
    }

    /// The share served right now (share plans; staged plans use [`Self::released_stages`]).
    pub fn served_share(&self, plan: &Plan) -> Share {
        match self.lifecycle {
            Lifecycle::Queued | Lifecycle::RolledBack => Share::NONE,
            Lifecycle::Stopped => self
                .stopped_share
                .unwrap_or_else(|| self.step.map_or(Share::NONE, |step| plan.share_at(step))),
            Lifecycle::Running | Lifecycle::Paused | Lifecycle::Completed => {
                self.step.map_or(Share::NONE, |step| plan.share_at(step))
            }
            Lifecycle::RollingBack => self
                .rollback
                .as_ref()
                .map_or(Share::NONE, GradualRollback::share),
        }
    }

    /// How many steps of a label-stage plan are released right now (a stage with waves
    /// has one step per wave; `unassigned` is the last step).
    pub fn released_stages(&self) -> usize {
        match self.lifecycle {
            Lifecycle::Queued | Lifecycle::RolledBack => 0,
            _ => self.step.map_or(0, |step| step + 1),
        }
    }

    /// Which members of a label-stage plan are served the candidate right now: whole
    /// stages and the share of the next one its waves released.
    pub fn stage_release(&self, plan: &Plan) -> StageRelease {
        match self.released_stages() {
            0 => StageRelease::default(),
            steps => plan.stage_release(steps - 1),
        }
    }

    /// What evaluators need while the rollout is running, paused or rolling back.
    pub fn view(&self, rollout_id: &str, plan: &Plan) -> Option<RolloutView> {
        if !matches!(
            self.lifecycle,
            Lifecycle::Running | Lifecycle::Paused | Lifecycle::RollingBack
        ) {
            return None;
        }
        Some(RolloutView {
            rollout_id: rollout_id.to_owned(),
            target: plan.target.clone(),
            baseline: plan.baseline.clone(),
            candidate: plan.candidate.clone(),
            salt: plan.salt.clone(),
            stickiness: plan.stickiness.clone(),
            step: self.step.unwrap_or(0),
            audience: self.audience(plan),
        })
    }

    fn audience(&self, plan: &Plan) -> ViewAudience {
        if plan.is_staged() {
            let release = self.stage_release(plan);
            ViewAudience::Stages {
                stages: plan.stage_labels(),
                released: release.full,
                wave: release.wave,
            }
        } else {
            ViewAudience::Share(self.served_share(plan))
        }
    }

    /// The serve that replaces the target once the rollout has ended, so the flag keeps
    /// serving exactly the same entities: the candidate at 100 %, the baseline at 0 %, else
    /// a split with the rollout's salt and stickiness (candidate first, so the same buckets
    /// keep it) or the frozen stages.
    pub fn final_serve(&self, plan: &Plan) -> Option<Serve> {
        if self.lifecycle.is_active() {
            return None;
        }
        if plan.is_staged() {
            let release = self.stage_release(plan);
            let stages = plan.stage_labels();
            return Some(if release.full == 0 && release.wave.is_none() {
                Serve::variation(plan.baseline.clone())
            } else if release.full > stages.len() {
                Serve::variation(plan.candidate.clone())
            } else {
                Serve {
                    stages: Some(StagedServe {
                        candidate: plan.candidate.clone(),
                        baseline: plan.baseline.clone(),
                        stages,
                        released: release.full,
                        wave: release.wave,
                        salt: release.wave.map(|_| plan.salt.clone()),
                    }),
                    ..Serve::default()
                }
            });
        }
        let share = self.served_share(plan);
        Some(if share == Share::NONE {
            Serve::variation(plan.baseline.clone())
        } else if share == Share::ALL {
            Serve::variation(plan.candidate.clone())
        } else {
            let rest = Share::from_ppm(Share::ALL.ppm() - share.ppm());
            Serve {
                split: Some(vec![
                    WeightedVariation {
                        variation: plan.candidate.clone(),
                        weight: share.percentage(),
                    },
                    WeightedVariation {
                        variation: plan.baseline.clone(),
                        weight: rest.percentage(),
                    },
                ]),
                salt: Some(plan.salt.clone()),
                stickiness: plan.stickiness.clone(),
                ..Serve::default()
            }
        })
    }

    /// Why the current step's health gate stays shut given `health`: `None` when it would
    /// open, and when the rollout is not running at a step whose gate waits on health. A
    /// health gate (a stage completion gate) opens only on positive evidence: enough of the
    /// stage's members completed and, for a guarded rollout, the guard found the outcomes
    /// healthy on every side it compares. The step function opens the gate exactly when
    /// this is `None`.
    pub fn gate_hold(&self, plan: &Plan, health: &Health) -> Option<GateHold> {
        if self.lifecycle != Lifecycle::Running || self.pending_approval(plan).is_some() {
            return None;
        }
        let Gate::Completion {
            min_completed,
            max_errors,
        } = plan.steps.get(self.step?)?.gate
        else {
            return None;
        };
        if let Some(reason) =
            completion_hold(health.current_stage.as_ref(), min_completed, max_errors)
        {
            return Some(GateHold {
                held_by: HeldBy::Completion,
                reason,
            });
        }
        let several = plan.guards().count() > 1;
        let reason = plan.guards().enumerate().find_map(|(index, guard)| {
            let name = if several {
                format!("guard {}", index + 1)
            } else {
                "the guard".to_owned()
            };
            match health.outcomes.get(index) {
                None => Some(format!("{name}'s outcome counts are not known yet")),
                Some(outcomes) => match guard.verdict(outcomes) {
                    GuardVerdict::Healthy => None,
                    GuardVerdict::InsufficientData => Some(format!(
                        "{name} cannot judge yet: {}",
                        guard
                            .missing_samples(outcomes)
                            .unwrap_or_else(|| "too few samples".to_owned())
                    )),
                    GuardVerdict::Breached(figures) => {
                        Some(format!("{name} is breached: {}", figures.limit))
                    }
                },
            }
        })?;
        Some(GateHold {
            held_by: HeldBy::Guard,
            reason,
        })
    }

    /// Planned start of every step as things stand at `now`: recorded for steps already
    /// reached, projected through timer gates for later ones, `None` beyond a gate that
    /// waits for a command or for health. A paused rollout is projected as if resumed now.
    pub fn projected_starts(&self, plan: &Plan, now: Timestamp) -> Vec<Option<Timestamp>> {
        let mut starts: Vec<Option<Timestamp>> = vec![None; plan.steps.len()];
        for record in &self.history {
            if let Some(slot) = starts.get_mut(record.index) {
                *slot = Some(record.planned_at);
            }
        }
        if self.lifecycle.is_finished() {
            return starts;
        }
        let (mut next_index, mut next_start) = match (self.lifecycle, self.step, self.step_anchor) {
            (Lifecycle::Queued, _, _) => match self.queued_until {
                Some(time) => (0, Some(time)),
                None => return starts,
            },
            (_, Some(step), Some(anchor)) => {
                let pause_shift = self
                    .paused_at
                    .map_or(0, |paused_at| now.millis_since(paused_at).max(0));
                let anchor = anchor.plus(DurationMs::from_millis(pause_shift));
                let end = match plan.steps[step].gate {
                    _ if self.pending_approval(plan).is_some() => None,
                    Gate::Timer(duration) => Some(plan.timer_opens_at(anchor.plus(duration))),
                    _ => None,
                };
                (step + 1, end)
            }
            _ => return starts,
        };
        while let (Some(start_time), true) = (next_start, next_index < plan.steps.len()) {
            starts[next_index] = Some(start_time);
            next_start = match plan.steps[next_index].gate {
                _ if plan.steps[next_index].approval.is_some() => None,
                Gate::Timer(duration) => Some(plan.timer_opens_at(start_time.plus(duration))),
                _ => None,
            };
            next_index += 1;
        }
        starts
    }
}
