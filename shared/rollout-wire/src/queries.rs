//! Reads on `rollout.query.<ns>.<what>` (SPEC §7, §8.6): flag get and list, rollout status
//! and list, the counters behind its health gates, the audit, and the plan dry run, with their replies and [`Query`], the closed
//! set a planner dispatches on. Lists are paged: pages count from 0 and a reply names the
//! `next_page` while more remain.

use rollout_core::freeze::Freeze;
use rollout_core::machine::GradualRollback;
use rollout_core::window::Window;
use rollout_core::{
    Approval, DurationMs, Eta, GateHold, GuardVerdict, Lifecycle, OutcomeCounts, Plan, RolloutSpec,
    RolloutState, Share, StageCounts, Timestamp, ValidationErrors, WaitingFor,
};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::codec::{self, CodecError, Encoding, Limits};
use crate::envelope::WireError;
use crate::events::EventKind;
use crate::subjects::QueryKind;
use crate::views::{target_rule, RolloutKind, StepStatus};

/// `rollout.query.<ns>.flag.get`. Reply: [`crate::FlagResult`].
#[doc = shape_doc!("flag_get_query")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagGetQuery {
    /// Flag key.
    pub key: String,
}

/// `rollout.query.<ns>.flag.list`: every flag of the namespace, by key. Reply: [`FlagList`].
#[doc = shape_doc!("flag_list_query")]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagListQuery {
    /// Page number, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// Entries per page (default 50, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
}

/// One flag in a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagSummary {
    /// Flag key.
    pub key: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether the flag serves its rules (else its off variation).
    pub enabled: bool,
    /// Per-flag state version.
    pub version: u64,
    /// Variation ids, in order.
    #[serde(default)]
    pub variations: Vec<String>,
    /// Id of the flag's active rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_rollout: Option<String>,
}

/// Reply to `flag.list`.
#[doc = shape_doc!("flag_list")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagList {
    /// The page's flags, by key.
    #[serde(default)]
    pub flags: Vec<FlagSummary>,
    /// The page to ask for next, while more remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<u32>,
}

/// `rollout.query.<ns>.rollout.status`. Reply: [`RolloutStatus`].
#[doc = shape_doc!("rollout_status_query")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStatusQuery {
    pub rollout_id: String,
}

/// Reply to `rollout.status`: the rollout, where it stands, and every step with its share
/// or stage, planned and actual times, gate and (for stages) counts.
#[doc = shape_doc!("rollout_status")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub rollout_id: String,
    /// Flag key.
    pub flag: String,
    /// Rule id of a rule-level rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Spec kind.
    pub kind: RolloutKind,
    /// Preset name, for presets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Variation the audience starts on.
    pub baseline: String,
    /// Variation the audience moves to.
    pub candidate: String,
    /// The bucketing salt of a percentage plan (given in the spec or drawn at random): a
    /// later rollout given the same salt and stickiness moves the same entities first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// The attribute a percentage plan buckets by; the entity id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<String>,
    /// Lifecycle state.
    pub state: Lifecycle,
    /// What a running or queued rollout waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitingFor>,
    /// Which health gate holds the rollout at its current step and why (with `waiting_for:
    /// guard`), judged on the figures the ticker reads now; absent when nothing holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<GateHold>,
    /// Current step; absent while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<usize>,
    /// Share served now, for percentage plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<Share>,
    /// When the clock alone next moves it (start time or end of the current timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
    /// How long `due_at` has passed at `at`, once it is more than [`OVERDUE_AFTER`] late:
    /// nothing has moved the rollout when the clock said to (is a ticker running?).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_ms: Option<u64>,
    /// When the current pause began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<Timestamp>,
    /// The namespace's freeze holding now: the rollout's timers and automatic gates wait
    /// for its end (`waiting_for: freeze`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<Freeze>,
    /// The walk down of a gradual rollback, while `rolling_back`: its shares, which one is
    /// served, the interval and the cause (`due_at` is the next lowering, `eta` the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<GradualRollback>,
    /// The time windows its timers open in (none: always open).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// Approvals of the current step so far (its gate's `approvers` says how many it needs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    /// While paused on a timer step: what is left of its timer, run once resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
    /// When it completes if it stays as it is, or the first wait no clock ends (queued and
    /// running rollouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<Eta>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The planner's time (Redis `TIME`) the status was read at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
    /// The namespace's webhooks whose deliveries currently fail (SPEC §12 "Notifications"):
    /// this rollout's notices may not be reaching them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_webhooks: Vec<crate::webhooks::WebhookView>,
    /// Every step.
    #[serde(default)]
    pub steps: Vec<StepStatus>,
}

impl RolloutStatus {
    /// The status of `state` at `now`; stage `counts` and the `hold` (both read from Redis)
    /// are left for the caller.
    pub fn new(
        rollout_id: &str,
        plan: &Plan,
        state: &RolloutState,
        created_at: Timestamp,
        now: Timestamp,
    ) -> RolloutStatus {
        RolloutStatus {
            rollout_id: rollout_id.to_owned(),
            flag: plan.flag.clone(),
            rule: target_rule(plan),
            kind: RolloutKind::of(&plan.kind),
            preset: RolloutKind::preset_name(&plan.kind),
            baseline: plan.baseline.clone(),
            candidate: plan.candidate.clone(),
            salt: (!plan.is_staged()).then(|| plan.salt.clone()),
            stickiness: plan.stickiness.clone(),
            state: state.lifecycle,
            waiting_for: state.waiting_for_at(plan, now),
            hold: None,
            current_step: state.step,
            share: (!plan.is_staged()).then(|| state.served_share(plan)),
            due_at: state.due_at(plan),
            overdue_ms: overdue(state.due_at(plan), now),
            paused_at: state.paused_at,
            approvals: state.approvals.clone(),
            windows: plan.windows.clone(),
            frozen: None,
            rollback: state.rollback.clone(),
            remaining_ms: state
                .remaining_when_paused(plan)
                .and_then(|left| u64::try_from(left).ok()),
            eta: state.eta(plan, now),
            created_at,
            finished_at: state.finished_at,
            at: Some(now),
            failing_webhooks: Vec::new(),
            steps: StepStatus::for_rollout(plan, state, now),
        }
    }
}

impl RolloutStatus {
    /// Shows `freeze`, holding at `now`, in this status: see [`frozen_wait`].
    pub fn frozen_by(&mut self, freeze: &Freeze, now: Timestamp) {
        self.frozen = Some(freeze.clone());
        (self.waiting_for, self.due_at, self.overdue_ms, self.eta) = frozen_wait(
            self.state,
            self.current_step,
            (self.waiting_for, self.due_at, self.overdue_ms, self.eta),
            freeze,
            now,
        );
    }
}

impl RolloutSummary {
    /// Shows `freeze`, holding at `now`, in this summary: see [`frozen_wait`].
    pub fn frozen_by(&mut self, freeze: &Freeze, now: Timestamp) {
        (self.waiting_for, self.due_at, self.overdue_ms, self.eta) = frozen_wait(
            self.state,
            self.current_step,
            (self.waiting_for, self.due_at, self.overdue_ms, self.eta),
            freeze,
            now,
        );
    }
}

/// What a freeze holding at `now` makes of a running or queued rollout that waits on a
/// clock or a health gate: it waits for the freeze, nothing moves it before the freeze's end
/// (nothing at all while it is open-ended), and no completion time can be promised. Other
/// waits (a command, an approval) and other states are left as they are.
#[allow(clippy::type_complexity)]
fn frozen_wait(
    state: Lifecycle,
    current_step: Option<usize>,
    wait: (
        Option<WaitingFor>,
        Option<Timestamp>,
        Option<u64>,
        Option<Eta>,
    ),
    freeze: &Freeze,
    now: Timestamp,
) -> (
    Option<WaitingFor>,
    Option<Timestamp>,
    Option<u64>,
    Option<Eta>,
) {
    let held = matches!(state, Lifecycle::Running | Lifecycle::Queued)
        && matches!(
            wait.0,
            Some(WaitingFor::Timer | WaitingFor::Window | WaitingFor::Guard)
        );
    if !held {
        return wait;
    }
    let due_at = freeze
        .until
        .map(|until| wait.1.map_or(until, |due| due.max(until)));
    let eta = Eta {
        completes_at: None,
        blocked_at_step: current_step,
        blocked_by: Some(WaitingFor::Freeze),
        blocked_from: Some(now),
    };
    (Some(WaitingFor::Freeze), due_at, None, Some(eta))
}

/// How late a due transition may be before statuses call it overdue: the ticker fires within
/// milliseconds, and takes over from a dead leader within its lease (5 s by default).
pub const OVERDUE_AFTER: DurationMs = DurationMs::from_millis(10_000);

/// How long `due_at` has passed at `now`, when by more than [`OVERDUE_AFTER`].
fn overdue(due_at: Option<Timestamp>, now: Timestamp) -> Option<u64> {
    let late = now.millis_since(due_at?);
    (late > OVERDUE_AFTER.as_millis())
        .then(|| u64::try_from(late).ok())
        .flatten()
}

/// Which rollouts a list shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListState {
    /// Queued, running or paused.
    #[default]
    Active,
    /// Completed, stopped or rolled back.
    Finished,
}

/// `rollout.query.<ns>.rollout.list`. Reply: [`RolloutList`].
#[doc = shape_doc!("rollout_list_query")]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutListQuery {
    /// Active (default) or finished rollouts.
    #[serde(default)]
    pub state: ListState,
    /// Only the rollouts in this lifecycle state, one of `state`'s (queued, running, paused
    /// and rolling_back are active; completed, stopped and rolled_back finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// Only the rollouts of this flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// Page number, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// Entries per page (default 50, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
}

/// One rollout in a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub rollout_id: String,
    /// Flag key.
    pub flag: String,
    /// Rule id of a rule-level rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Spec kind.
    pub kind: RolloutKind,
    /// Lifecycle state.
    pub state: Lifecycle,
    /// What a running or queued rollout waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitingFor>,
    /// Current step; absent while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<usize>,
    /// How many steps the plan has.
    pub step_count: usize,
    /// Share served now, for percentage plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<Share>,
    /// When the clock alone next moves it (its start time while queued, the end of the
    /// current timer while running); absent while it waits for anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<Timestamp>,
    /// How long `due_at` has passed, once more than [`OVERDUE_AFTER`] late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_ms: Option<u64>,
    /// When it completes if it stays as it is, or the first wait no clock ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<Eta>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

impl RolloutSummary {
    /// The summary of `state` at `now`.
    pub fn new(
        rollout_id: &str,
        plan: &Plan,
        state: &RolloutState,
        created_at: Timestamp,
        now: Timestamp,
    ) -> RolloutSummary {
        RolloutSummary {
            rollout_id: rollout_id.to_owned(),
            flag: plan.flag.clone(),
            rule: target_rule(plan),
            kind: RolloutKind::of(&plan.kind),
            state: state.lifecycle,
            waiting_for: state.waiting_for_at(plan, now),
            current_step: state.step,
            step_count: plan.steps.len(),
            share: (!plan.is_staged()).then(|| state.served_share(plan)),
            due_at: state.due_at(plan),
            overdue_ms: overdue(state.due_at(plan), now),
            eta: state.eta(plan, now),
            created_at,
            finished_at: state.finished_at,
        }
    }
}

/// Reply to `rollout.list`.
#[doc = shape_doc!("rollout_list")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutList {
    /// The page's rollouts, newest first.
    #[serde(default)]
    pub rollouts: Vec<RolloutSummary>,
    /// The page to ask for next, while more remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<u32>,
}

/// `rollout.query.<ns>.rollout.audit`: the audit of one rollout or one flag (exactly one of
/// `rollout_id` and `flag`), newest first. Reply: [`AuditPage`].
#[doc = shape_doc!("audit_query")]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// The rollout whose history to read (also after it was deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// The flag whose history to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// The namespace's own history (freezes) instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub namespace: bool,
    /// Page number, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// Entries per page (default 50, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
}

impl AuditQuery {
    /// Exactly one of `rollout_id` and `flag`, each a token; a valid page size.
    pub fn validate(&self) -> Result<(), WireError> {
        let mut errors = ValidationErrors::default();
        match (&self.rollout_id, &self.flag, self.namespace) {
            (Some(rollout_id), None, false) => checks::token(&mut errors, "rollout_id", rollout_id),
            (None, Some(flag), false) => checks::token(&mut errors, "flag", flag),
            (None, None, true) => {}
            _ => errors.push(
                "rollout_id",
                "give exactly one of rollout_id, flag or namespace: true",
            ),
        }
        checks::page_size(&mut errors, self.page_size);
        checks::finish(errors)
    }
}

/// One audit record: an accepted command or a transition (SPEC §7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (the one clock: Redis `TIME`).
    pub time: Timestamp,
    /// Who: the command's actor, or `ticker` for transitions the clock or a guard made.
    pub actor: String,
    /// What happened.
    pub kind: EventKind,
    pub namespace: String,
    /// Flag key.
    pub flag: String,
    /// Rollout id, for rollout entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// State or step before (`running`, `step 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// State or step after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Anything else worth keeping (guard figures, skipped steps, the command id), as an
    /// object.
    #[serde(default = "crate::events::empty_details")]
    pub details: serde_json::Value,
    /// OpenTelemetry trace id of the command or transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Reply to `rollout.audit`.
#[doc = shape_doc!("audit_page")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    /// The page's entries, newest first.
    #[serde(default)]
    pub entries: Vec<AuditEntry>,
    /// The page to ask for next, while more remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<u32>,
}

/// `rollout.query.<ns>.rollout.plan`: a dry run. The planner validates and compiles the spec
/// against the flag and projects its times from now, storing nothing, so an operator sees
/// the steps before `rollout.create`. Reply: [`PlanPreview`].
#[doc = shape_doc!("plan_query")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    /// The spec, as `rollout.create` would take it.
    pub rollout: RolloutSpec,
}

/// Reply to `rollout.plan`: the compiled plan with projected times.
#[doc = shape_doc!("plan_preview")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPreview {
    /// Flag key.
    pub flag: String,
    /// Rule id of a rule-level rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Spec kind.
    pub kind: RolloutKind,
    /// Preset name, for presets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Variation the audience starts on.
    pub baseline: String,
    /// Variation the audience moves to.
    pub candidate: String,
    /// Every step with its projected start.
    #[serde(default)]
    pub steps: Vec<StepStatus>,
}

impl PlanPreview {
    /// The preview of `plan` as if created at `now`.
    pub fn new(plan: &Plan, now: Timestamp) -> PlanPreview {
        PlanPreview {
            flag: plan.flag.clone(),
            rule: target_rule(plan),
            kind: RolloutKind::of(&plan.kind),
            preset: RolloutKind::preset_name(&plan.kind),
            baseline: plan.baseline.clone(),
            candidate: plan.candidate.clone(),
            steps: StepStatus::for_plan(plan, now),
        }
    }
}

/// How far back `rollout.counts` sums outcomes for a rollout without a guard.
pub const DEFAULT_COUNTS_WINDOW: DurationMs = DurationMs::from_minutes(5);

/// `rollout.query.<ns>.rollout.counts`: the counters behind a rollout's health gates — the
/// outcomes reported for this rollout's candidate and baseline over the guard's window (5
/// minutes without a guard; never before its last resume) with the guard's verdict on them
/// now, and for label stages each stage's fleet counts. Reply: [`RolloutCounts`].
#[doc = shape_doc!("rollout_counts_query")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutCountsQuery {
    pub rollout_id: String,
}

/// Reply to `rollout.counts`.
#[doc = shape_doc!("rollout_counts")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutCounts {
    pub rollout_id: String,
    /// Flag key.
    pub flag: String,
    /// Variation the audience starts on.
    pub baseline: String,
    /// Variation the audience moves to.
    pub candidate: String,
    /// Lifecycle state.
    pub state: Lifecycle,
    /// Redis time the counters were read at.
    pub at: Timestamp,
    /// How far back the outcomes reach, in milliseconds: the guard's window, else
    /// [`DEFAULT_COUNTS_WINDOW`].
    pub window_ms: u64,
    /// The earliest time counted: the window's start, or the rollout's last resume when
    /// that is later (outcomes are counted in whole 10 s buckets from there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_from: Option<Timestamp>,
    /// Outcomes reported for this rollout within the window, for each side.
    pub outcomes: OutcomeCounts,
    /// What the rollout's (first) guard says of these outcomes now; absent without a guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardVerdict>,
    /// Each guard of a rollout with several (`guards`), judged on its own window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<GuardCounts>,
    /// Fleet counts of each label stage, `unassigned` last; empty for percentage plans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<NamedStageCounts>,
}

/// One guard's window, outcomes and verdict, in a rollout with several guards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardCounts {
    /// What its breach does.
    pub action: rollout_core::GuardAction,
    /// Its window, in milliseconds.
    pub window_ms: u64,
    /// The earliest time counted.
    pub counted_from: Timestamp,
    /// Outcomes within its window, for each side.
    pub outcomes: OutcomeCounts,
    /// What it says of them now.
    pub verdict: GuardVerdict,
}

/// `rollout.query.<ns>.flag.counts`. Reply: [`FlagCounts`].
#[doc = shape_doc!("flag_counts_query")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagCountsQuery {
    /// Flag key.
    pub key: String,
}

/// Reply to `flag.counts`: the flag-level outcome counters a kill switch judges (SPEC §6),
/// whatever rollout produced them — with an active rollout its baseline against its
/// candidate, else the off variation against every other variation — and, when the flag has
/// a kill switch, its verdict now.
#[doc = shape_doc!("flag_counts")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagCounts {
    /// Flag key.
    pub flag: String,
    /// Whether the flag is enabled (a disabled flag's kill switch is not judged).
    pub enabled: bool,
    /// When the counts were read (Redis `TIME`).
    pub at: Timestamp,
    /// The window summed: the kill switch's, else 5 minutes.
    pub window_ms: u64,
    /// The active rollout whose sides are compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// The baseline side's variation.
    pub baseline: String,
    /// The candidate side's variations (summed together).
    pub candidates: Vec<String>,
    /// Successes and errors of each side over the window.
    pub outcomes: OutcomeCounts,
    /// The kill switch's verdict on them; absent without a kill switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_switch: Option<GuardVerdict>,
}

/// One label stage's fleet counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedStageCounts {
    /// Stage name.
    pub name: String,
    /// A wave before the stage's last: the share of the stage it releases (its counts are
    /// the members it releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<Share>,
    /// Its counts.
    pub counts: StageCounts,
}

/// Any query, as the planner dispatches it: the subject's kind picks the body type.
#[derive(Clone, Debug, PartialEq)]
pub enum Query {
    /// `flag.get`.
    FlagGet(FlagGetQuery),
    /// `flag.list`.
    FlagList(FlagListQuery),
    /// `rollout.status`.
    RolloutStatus(RolloutStatusQuery),
    /// `rollout.counts`.
    RolloutCounts(RolloutCountsQuery),
    /// `flag.counts`.
    FlagCounts(FlagCountsQuery),
    /// `rollout.list`.
    RolloutList(RolloutListQuery),
    /// `rollout.audit`.
    RolloutAudit(AuditQuery),
    /// `rollout.plan` (boxed: a spec is much larger than the other queries).
    RolloutPlan(Box<PlanQuery>),
    /// `namespace.webhooks`.
    NamespaceWebhooks(crate::webhooks::WebhooksQuery),
}

impl Query {
    /// Decodes the body of a query received on a subject with `kind`.
    pub fn decode(kind: QueryKind, bytes: &[u8], encoding: Encoding) -> Result<Query, CodecError> {
        let limits = Limits::REQUESTS;
        Ok(match kind {
            QueryKind::FlagGet => Query::FlagGet(codec::decode_with(bytes, encoding, limits)?),
            QueryKind::FlagList => Query::FlagList(codec::decode_with(bytes, encoding, limits)?),
            QueryKind::FlagCounts => {
                Query::FlagCounts(codec::decode_with(bytes, encoding, limits)?)
            }
            QueryKind::RolloutStatus => {
                Query::RolloutStatus(codec::decode_with(bytes, encoding, limits)?)
            }
            QueryKind::RolloutCounts => {
                Query::RolloutCounts(codec::decode_with(bytes, encoding, limits)?)
            }
            QueryKind::RolloutList => {
                Query::RolloutList(codec::decode_with(bytes, encoding, limits)?)
            }
            QueryKind::RolloutAudit => {
                Query::RolloutAudit(codec::decode_with(bytes, encoding, limits)?)
            }
            QueryKind::RolloutPlan => {
                Query::RolloutPlan(codec::decode_with(bytes, encoding, limits)?)
            }
            QueryKind::NamespaceWebhooks => {
                Query::NamespaceWebhooks(codec::decode_with(bytes, encoding, limits)?)
            }
        })
    }

    /// The kind, i.e. the subject this query travels on.
    pub fn kind(&self) -> QueryKind {
        match self {
            Query::FlagGet(_) => QueryKind::FlagGet,
            Query::FlagList(_) => QueryKind::FlagList,
            Query::FlagCounts(_) => QueryKind::FlagCounts,
            Query::RolloutStatus(_) => QueryKind::RolloutStatus,
            Query::RolloutCounts(_) => QueryKind::RolloutCounts,
            Query::RolloutList(_) => QueryKind::RolloutList,
            Query::RolloutAudit(_) => QueryKind::RolloutAudit,
            Query::RolloutPlan(_) => QueryKind::RolloutPlan,
            Query::NamespaceWebhooks(_) => QueryKind::NamespaceWebhooks,
        }
    }

    /// Checks keys and ids are tokens, page sizes are in range, and the audit names exactly
    /// one of rollout and flag. Every problem is reported.
    pub fn validate(&self) -> Result<(), WireError> {
        let mut errors = ValidationErrors::default();
        match self {
            Query::FlagGet(query) => checks::token(&mut errors, "key", &query.key),
            Query::FlagCounts(query) => checks::token(&mut errors, "key", &query.key),
            Query::FlagList(query) => checks::page_size(&mut errors, query.page_size),
            Query::RolloutStatus(query) => {
                checks::token(&mut errors, "rollout_id", &query.rollout_id)
            }
            Query::RolloutCounts(query) => {
                checks::token(&mut errors, "rollout_id", &query.rollout_id)
            }
            Query::RolloutList(query) => {
                if let Some(flag) = &query.flag {
                    checks::token(&mut errors, "flag", flag);
                }
                if let Some(lifecycle) = query.lifecycle {
                    let finished = query.state == ListState::Finished;
                    if lifecycle.is_finished() != finished {
                        errors.push(
                            "lifecycle",
                            format!(
                                "{} rollouts are {}: list them with state {}",
                                lifecycle.as_str(),
                                if finished { "active" } else { "finished" },
                                if finished { "active" } else { "finished" },
                            ),
                        );
                    }
                }
                checks::page_size(&mut errors, query.page_size);
            }
            Query::RolloutAudit(query) => return query.validate(),
            Query::RolloutPlan(query) => {
                checks::token(&mut errors, "rollout.flag", &query.rollout.flag)
            }
            Query::NamespaceWebhooks(_) => {}
        }
        checks::finish(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ErrorCode;

    #[test]
    fn audit_needs_exactly_one_subject() {
        let both = AuditQuery {
            rollout_id: Some("r-1".into()),
            flag: Some("f".into()),
            ..AuditQuery::default()
        };
        let error = both.validate().expect_err("both");
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(error.field.as_deref(), Some("rollout_id"));
        assert!(AuditQuery::default().validate().is_err());
        let flag_only = AuditQuery {
            flag: Some("new-checkout".into()),
            page: Some(2),
            ..AuditQuery::default()
        };
        assert_eq!(flag_only.validate(), Ok(()));
        let huge_page = AuditQuery {
            page_size: Some(10_000),
            ..flag_only
        };
        assert_eq!(
            huge_page
                .validate()
                .expect_err("page size")
                .field
                .as_deref(),
            Some("page_size")
        );
    }

    #[test]
    fn the_subject_kind_picks_the_body_type() {
        let query = Query::decode(
            QueryKind::RolloutList,
            br#"{"state": "finished"}"#,
            Encoding::Json,
        )
        .expect("decodes");
        assert_eq!(query.kind(), QueryKind::RolloutList);
        let Query::RolloutList(list) = query else {
            panic!("expected a rollout list query");
        };
        assert_eq!(list.state, ListState::Finished);
        let defaulted =
            Query::decode(QueryKind::RolloutList, b"{}", Encoding::Json).expect("decodes");
        assert_eq!(defaulted, Query::RolloutList(RolloutListQuery::default()));
        let error = Query::decode(
            QueryKind::RolloutList,
            br#"{"state": "paused"}"#,
            Encoding::Json,
        )
        .expect_err("bad state");
        assert_eq!(error.field(), Some("state"));
    }
}

/// A query's answer, typed until it is encoded: the JSON (or MessagePack) of the shape
/// inside, nothing around it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum QueryReply {
    /// `flag.get`.
    Flag(Box<crate::commands::FlagResult>),
    /// `flag.list`.
    Flags(FlagList),
    /// `rollout.status`.
    Status(Box<RolloutStatus>),
    /// `rollout.counts`.
    Counts(RolloutCounts),
    /// `flag.counts`.
    FlagCounts(FlagCounts),
    /// `rollout.list`.
    Rollouts(RolloutList),
    /// `rollout.audit`.
    Audit(AuditPage),
    /// `rollout.plan`.
    Plan(PlanPreview),
    /// `namespace.webhooks`.
    Webhooks(crate::webhooks::WebhookList),
}
