//! The step function itself: [`step`] and the rules of each event (ticks, starts, moves,
//! pauses, stops, completion and catch-up).

use crate::freeze::Freezes;
use crate::guard::{GuardAction, GuardVerdict};
use crate::plan::{Gate, Plan};
use crate::share::Share;
use crate::time::{DurationMs, Timestamp};

use super::state::*;

/// Applies `event` at `now` (the one clock: Redis `TIME`). Returns the next state and its
/// effects, or a [`Rejection`] that changes nothing.
pub fn step(
    plan: &Plan,
    state: &RolloutState,
    event: &Event,
    now: Timestamp,
) -> Result<StepOutcome, Rejection> {
    let mut next = state.clone();
    let mut effects = Vec::new();
    match event {
        Event::Tick(health) => tick(plan, &mut next, health, now, &mut effects),
        Event::Start => {
            if state.lifecycle != Lifecycle::Queued {
                return Err(precondition(format!(
                    "rollout is {}; only a queued rollout can be started",
                    state.lifecycle.as_str()
                )));
            }
            start(&mut next, now, now, EntryCause::Start, &mut effects);
            advance_due(plan, &mut next, now, None, &mut effects);
        }
        Event::Pause => {
            if state.lifecycle != Lifecycle::Running {
                return Err(precondition(format!(
                    "rollout is {}; only a running rollout can be paused",
                    state.lifecycle.as_str()
                )));
            }
            pause(plan, &mut next, now, &mut effects);
        }
        Event::Resume => {
            let Some(paused_at) = state
                .paused_at
                .filter(|_| state.lifecycle == Lifecycle::Paused)
            else {
                return Err(precondition(format!(
                    "rollout is {}; only a paused rollout can be resumed",
                    state.lifecycle.as_str()
                )));
            };
            let paused_ms = now.millis_since(paused_at).max(0);
            next.lifecycle = Lifecycle::Running;
            next.paused_at = None;
            next.resumed_at = Some(now);
            next.step_anchor = state
                .step_anchor
                .map(|anchor| anchor.plus(DurationMs::from_millis(paused_ms)));
            effects.push(Effect::Resumed { paused_ms });
            // a timer that had already run out before the pause opens now
            advance_due(plan, &mut next, now, None, &mut effects);
        }
        Event::Continue => {
            match state.lifecycle {
                Lifecycle::Running => {}
                Lifecycle::Queued => {
                    return Err(precondition("rollout has not started; use start"))
                }
                Lifecycle::Paused => {
                    return Err(precondition("rollout is paused; resume it first"))
                }
                finished => {
                    return Err(precondition(format!(
                        "rollout is {}; nothing to continue",
                        finished.as_str()
                    )));
                }
            }
            let current = state.step.unwrap_or(0);
            if let Some(gate) = state.pending_approval(plan) {
                return Err(precondition(format!(
                    "step {} waits for approvals ({}); approve it with rollout.approve",
                    current + 1,
                    approval_tally(state, gate)
                )));
            }
            if current >= plan.last_step() {
                complete(&mut next, now, &mut effects);
            } else {
                enter(
                    &mut next,
                    current + 1,
                    now,
                    now,
                    Vec::new(),
                    EntryCause::Continue,
                    &mut effects,
                );
                advance_due(plan, &mut next, now, None, &mut effects);
            }
        }
        Event::Approve { actor } => approve(plan, &mut next, actor, now, &mut effects)?,
        Event::Promote => {
            if state.lifecycle == Lifecycle::RollingBack {
                return Err(precondition(
                    "rollout is rolling back; roll back now, or stop it to keep its share",
                ));
            }
            if state.lifecycle.is_finished() {
                return Err(precondition(format!(
                    "rollout is {}; nothing to promote",
                    state.lifecycle.as_str()
                )));
            }
            if state.lifecycle == Lifecycle::Paused {
                next.resumed_at = Some(now);
            }
            if state.lifecycle == Lifecycle::Queued {
                effects.push(Effect::Started { planned_at: now });
            }
            next.lifecycle = Lifecycle::Running;
            next.paused_at = None;
            next.queued_until = None;
            let last = plan.last_step();
            if state.step != Some(last) {
                enter(
                    &mut next,
                    last,
                    now,
                    now,
                    Vec::new(),
                    EntryCause::Promote,
                    &mut effects,
                );
            } else if let Some(paused_at) = state
                .paused_at
                .filter(|_| state.lifecycle == Lifecycle::Paused)
            {
                // already at the final step: promote resumes it there, its timer anew
                next.step_anchor = Some(now);
                effects.push(Effect::Resumed {
                    paused_ms: now.millis_since(paused_at).max(0),
                });
            }
            advance_due(plan, &mut next, now, None, &mut effects);
        }
        Event::Stop { percentage } => {
            if state.lifecycle.is_finished() {
                return Err(precondition(format!(
                    "rollout is already {}",
                    state.lifecycle.as_str()
                )));
            }
            if let Some(percentage) = percentage {
                if plan.is_staged() {
                    return Err(Rejection {
                        code: RejectionCode::InvalidArgument,
                        message:
                            "a label-stage rollout stops at its released stages; omit percentage"
                                .into(),
                        field: Some("percentage".into()),
                    });
                }
                let share = Share::from_percentage(*percentage).map_err(|message| Rejection {
                    code: RejectionCode::InvalidArgument,
                    message,
                    field: Some("percentage".into()),
                })?;
                next.stopped_share = Some(share);
            } else {
                next.stopped_share = Some(state.served_share(plan));
            }
            end(&mut next, Lifecycle::Stopped, now);
            effects.push(Effect::Stopped {
                cause: EndCause::Command,
            });
        }
        Event::Rollback => {
            if state.lifecycle.is_finished() {
                return Err(precondition(format!(
                    "rollout is already {}",
                    state.lifecycle.as_str()
                )));
            }
            end(&mut next, Lifecycle::RolledBack, now);
            effects.push(Effect::RolledBack {
                cause: EndCause::Command,
            });
        }
        Event::RollbackGradually { shares, every } => {
            roll_back_gradually(
                plan,
                &mut next,
                shares,
                *every,
                EndCause::Command,
                now,
                &mut effects,
            )?;
        }
        Event::FlagDisabled => {
            if state.lifecycle.is_active() {
                next.stopped_share = Some(state.served_share(plan));
                end(&mut next, Lifecycle::Stopped, now);
                effects.push(Effect::Stopped {
                    cause: EndCause::FlagDisabled,
                });
            }
        }
    }
    if effects.is_empty() {
        return Ok(StepOutcome {
            state: state.clone(),
            effects,
        });
    }
    next.revision = state.revision + 1;
    Ok(StepOutcome {
        state: next,
        effects,
    })
}

/// Records `actor`'s approval of the current step; the last one the step needs starts its
/// gate: a timer runs from now, an approval-only gate opens at once.
fn approve(
    plan: &Plan,
    state: &mut RolloutState,
    actor: &str,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) -> Result<(), Rejection> {
    if actor.trim().is_empty() {
        return Err(Rejection {
            code: RejectionCode::InvalidArgument,
            message: "an approval names its actor".into(),
            field: Some("actor".into()),
        });
    }
    match state.lifecycle {
        Lifecycle::Running => {}
        Lifecycle::Queued => return Err(precondition("rollout has not started; use start")),
        Lifecycle::Paused => return Err(precondition("rollout is paused; resume it first")),
        finished => {
            return Err(precondition(format!(
                "rollout is {}; nothing to approve",
                finished.as_str()
            )))
        }
    }
    let current = state.step.unwrap_or(0);
    let Some(gate) = plan.approval_at(current) else {
        let waiting: Vec<String> = (0..plan.steps.len())
            .filter(|index| plan.approval_at(*index).is_some())
            .map(|index| (index + 1).to_string())
            .collect();
        let message = if waiting.is_empty() {
            "this rollout has no approval gates".to_owned()
        } else {
            format!(
                "step {} has no approval gate; step(s) {} have one",
                current + 1,
                waiting.join(", ")
            )
        };
        return Err(Rejection {
            field: Some("rollout_id".into()),
            ..precondition(message)
        });
    };
    if state.pending_approval(plan).is_none() {
        return Err(precondition(format!(
            "step {} is already approved ({})",
            current + 1,
            approval_tally(state, gate)
        )));
    }
    if state
        .approvals
        .iter()
        .any(|approval| approval.actor == actor)
    {
        return Err(Rejection {
            field: Some("actor".into()),
            ..precondition(format!(
                "{actor} already approved step {}; it needs {} distinct approvers ({})",
                current + 1,
                gate.approvers,
                approval_tally(state, gate)
            ))
        });
    }
    state.approvals.push(Approval {
        actor: actor.to_owned(),
        at: now,
    });
    effects.push(Effect::Approved {
        step: current,
        actor: actor.to_owned(),
        approvals: u32::try_from(state.approvals.len()).unwrap_or(u32::MAX),
        required: gate.approvers,
    });
    if state.pending_approval(plan).is_none() {
        // the step's gate runs from its approval
        state.step_anchor = Some(now);
        advance_due(plan, state, now, None, effects);
    }
    Ok(())
}

/// `1 of 2 approved: ana`.
pub(super) fn approval_tally(state: &RolloutState, gate: crate::plan::ApprovalGate) -> String {
    let actors: Vec<&str> = state
        .approvals
        .iter()
        .map(|approval| approval.actor.as_str())
        .collect();
    if actors.is_empty() {
        format!("0 of {} approved", gate.approvers)
    } else {
        format!(
            "{} of {} approved: {}",
            actors.len(),
            gate.approvers,
            actors.join(", ")
        )
    }
}

/// Starts a gradual rollback from the share served now: `shares` strictly decreasing, the
/// first below the share served, the last 0; the first is served from `now`.
fn roll_back_gradually(
    plan: &Plan,
    state: &mut RolloutState,
    shares: &[Share],
    every: DurationMs,
    cause: EndCause,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) -> Result<(), Rejection> {
    if !matches!(state.lifecycle, Lifecycle::Running | Lifecycle::Paused) {
        return Err(precondition(format!(
            "rollout is {}; only a running or paused rollout rolls back gradually",
            state.lifecycle.as_str()
        )));
    }
    let invalid = |field: &str, message: String| Rejection {
        code: RejectionCode::InvalidArgument,
        message,
        field: Some(field.to_owned()),
    };
    if plan.is_staged() {
        return Err(invalid(
            "mode",
            "a label-stage rollout rolls back all at once; use mode now".to_owned(),
        ));
    }
    if every.as_millis() <= 0 {
        return Err(invalid("every", "must be greater than zero".to_owned()));
    }
    let served = state.served_share(plan);
    let Some(last) = shares.last() else {
        return Err(invalid(
            "steps",
            "give the shares to walk down, ending at 0".to_owned(),
        ));
    };
    if *last != Share::NONE {
        return Err(invalid(
            &format!("steps[{}]", shares.len() - 1),
            format!("the last share is 0 (everyone back on the baseline), not {last}"),
        ));
    }
    let mut above = served;
    for (index, share) in shares.iter().enumerate() {
        if *share >= above {
            return Err(invalid(
                &format!("steps[{index}]"),
                if index == 0 {
                    format!("must be below the {served} served now")
                } else {
                    format!("must be below the previous step's {above}")
                },
            ));
        }
        above = *share;
    }
    effects.push(Effect::RollingBack {
        shares: shares.to_vec(),
        every,
        cause,
    });
    state.lifecycle = Lifecycle::RollingBack;
    state.paused_at = None;
    state.rollback = Some(GradualRollback {
        shares: shares.to_vec(),
        index: 0,
        every,
        anchor: now,
        cause,
    });
    if shares.len() == 1 {
        end(state, Lifecycle::RolledBack, now);
        effects.push(Effect::RolledBack { cause });
    }
    Ok(())
}

/// Lowers a rolling-back rollout's share to where the clock says, in one move; at 0 it
/// ends rolled back.
fn lower_share(state: &mut RolloutState, now: Timestamp, effects: &mut Vec<Effect>) {
    let Some(rollback) = state.rollback.as_mut() else {
        return;
    };
    let from = rollback.share();
    let mut planned_at = None;
    while rollback.index + 1 < rollback.shares.len() && rollback.next_at() <= now {
        rollback.anchor = rollback.next_at();
        rollback.index += 1;
        planned_at = Some(rollback.anchor);
    }
    let Some(planned_at) = planned_at else {
        return;
    };
    let to = rollback.share();
    let cause = rollback.cause;
    effects.push(Effect::ShareLowered {
        from,
        to,
        planned_at,
    });
    if to == Share::NONE {
        end(state, Lifecycle::RolledBack, now);
        effects.push(Effect::RolledBack { cause });
    }
}

fn tick(
    plan: &Plan,
    state: &mut RolloutState,
    health: &Health,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) {
    if state.lifecycle == Lifecycle::RollingBack {
        lower_share(state, now, effects);
        return;
    }
    if state.lifecycle == Lifecycle::Queued {
        // a start time that falls in a freeze starts the rollout when the freeze ends
        let start_time = state
            .queued_until
            .filter(|start_time| *start_time <= now)
            .and_then(|start_time| health.freezes.open_at(start_time))
            .filter(|opening| *opening <= now);
        match start_time {
            Some(start_time) => start(state, start_time, now, EntryCause::Start, effects),
            None => return,
        }
    }
    if state.lifecycle != Lifecycle::Running {
        return;
    }
    // every guard judges its own window; a `warn` guard tells (once per its window), and of
    // the guards that act the one that goes furthest acts
    let mut acting: Option<&crate::guard::Guard> = None;
    for (index, guard) in plan.guards().enumerate() {
        let Some(outcomes) = health.outcomes.get(index) else {
            continue;
        };
        let GuardVerdict::Breached(figures) = guard.verdict(outcomes) else {
            continue;
        };
        let breach = Effect::GuardBreached {
            action: guard.action,
            figures,
            guard: index,
        };
        if guard.action == GuardAction::Warn {
            if state.guards_warned_at.len() <= index {
                state.guards_warned_at.resize(index + 1, None);
            }
            let told_recently = state.guards_warned_at[index]
                .is_some_and(|warned| now.millis_since(warned) < guard.window.as_millis());
            if !told_recently {
                state.guards_warned_at[index] = Some(now);
                effects.push(breach);
            }
            continue;
        }
        effects.push(breach);
        if acting.is_none_or(|chosen| guard.action.severity() > chosen.action.severity()) {
            acting = Some(guard);
        }
    }
    if let Some(guard) = acting {
        match guard.action {
            GuardAction::Warn => {}
            GuardAction::RollbackGradual => {
                let served = state.served_share(plan);
                let walk = guard.gradual.as_ref().map(|(shares, every)| {
                    let below: Vec<Share> = shares
                        .iter()
                        .copied()
                        .filter(|share| *share < served)
                        .collect();
                    (below, *every)
                });
                let started = walk.is_some_and(|(shares, every)| {
                    roll_back_gradually(plan, state, &shares, every, EndCause::Guard, now, effects)
                        .is_ok()
                });
                if !started {
                    // a walk that cannot start (a label-stage plan) rolls back at once
                    end(state, Lifecycle::RolledBack, now);
                    effects.push(Effect::RolledBack {
                        cause: EndCause::Guard,
                    });
                }
            }
            GuardAction::Pause => pause(plan, state, now, effects),
            GuardAction::Stop => {
                state.stopped_share = Some(state.served_share(plan));
                end(state, Lifecycle::Stopped, now);
                effects.push(Effect::Stopped {
                    cause: EndCause::Guard,
                });
            }
            GuardAction::Rollback => {
                end(state, Lifecycle::RolledBack, now);
                effects.push(Effect::RolledBack {
                    cause: EndCause::Guard,
                });
            }
        }
        return;
    }
    advance_due(plan, state, now, Some(health), effects);
}

/// Leaves `queued` into step 0, planned at `planned_at`.
pub(super) fn start(
    state: &mut RolloutState,
    planned_at: Timestamp,
    now: Timestamp,
    cause: EntryCause,
    effects: &mut Vec<Effect>,
) {
    effects.push(Effect::Started { planned_at });
    state.lifecycle = Lifecycle::Running;
    state.queued_until = None;
    enter(state, 0, planned_at, now, Vec::new(), cause, effects);
}

/// Makes `to` the current step. `skipped` only names the steps passed over for the event;
/// their history records are the caller's (it knows their planned times).
#[allow(clippy::too_many_arguments)]
fn enter(
    state: &mut RolloutState,
    to: usize,
    planned_at: Timestamp,
    now: Timestamp,
    skipped: Vec<usize>,
    cause: EntryCause,
    effects: &mut Vec<Effect>,
) {
    let from = state.step;
    state.history.push(StepRecord {
        index: to,
        planned_at,
        entered_at: Some(now),
        skipped: false,
    });
    state.step = Some(to);
    state.step_anchor = Some(planned_at);
    state.approvals.clear();
    effects.push(Effect::StepEntered {
        from,
        to,
        skipped,
        cause,
        planned_at,
        lag_ms: now.millis_since(planned_at).max(0),
    });
}

/// Moves through every gate that the clock (or, for the current step only, health) has
/// opened, as ONE transition: never across a `continue` gate, and a completion gate only
/// when it is the current step's and [`RolloutState::gate_hold`] finds nothing holding it.
pub(super) fn advance_due(
    plan: &Plan,
    state: &mut RolloutState,
    now: Timestamp,
    health: Option<&Health>,
    effects: &mut Vec<Effect>,
) {
    let (Some(origin), Some(origin_anchor)) = (state.step, state.step_anchor) else {
        return;
    };
    let no_freezes = Freezes::default();
    let freezes = health.map_or(&no_freezes, |health| &health.freezes);
    // a freeze holds health gates too: they are judged once it ends
    let origin_health_gate_open = health.is_some_and(|health| {
        state.gate_hold(plan, health).is_none() && freezes.active_at(now).is_none()
    });
    let mut current = origin;
    let mut anchor = origin_anchor;
    let mut passed: Vec<(usize, Timestamp)> = Vec::new();
    let mut cause = EntryCause::Timer;
    let mut completes = false;
    loop {
        // a step waiting for approvals holds everything after it (one entered on the way
        // has none yet)
        if plan.approval_at(current).is_some()
            && (current != origin || state.pending_approval(plan).is_some())
        {
            break;
        }
        let gate = &plan.steps[current].gate;
        let opened_at = match gate {
            // a timer opens its gate only inside the rollout's windows, outside freezes
            Gate::Timer(duration) => {
                timer_opening(plan, freezes, anchor.plus(*duration)).filter(|end| *end <= now)
            }
            // the final step completes on entry; an earlier one has an approval and opens
            // once it is approved
            Gate::Immediate => {
                if current != plan.last_step() && current == origin {
                    cause = EntryCause::Approval;
                }
                Some(anchor)
            }
            Gate::Completion { .. } if current == origin && origin_health_gate_open => {
                cause = EntryCause::Gate;
                Some(now)
            }
            Gate::Completion { .. } | Gate::Continue => None,
        };
        let Some(opened_at) = opened_at else { break };
        if current == plan.last_step() {
            completes = true;
            break;
        }
        passed.push((current + 1, opened_at));
        current += 1;
        anchor = opened_at;
    }
    if let Some(((final_index, final_planned), skipped)) = passed.split_last() {
        for (index, planned_at) in skipped {
            state.history.push(StepRecord {
                index: *index,
                planned_at: *planned_at,
                entered_at: None,
                skipped: true,
            });
        }
        let skipped_indexes = skipped.iter().map(|(index, _)| *index).collect();
        enter(
            state,
            *final_index,
            *final_planned,
            now,
            skipped_indexes,
            cause,
            effects,
        );
    }
    if completes {
        complete(state, now, effects);
    }
}

/// When a timer that runs out at `end` opens its gate: inside the plan's windows and
/// outside the namespace's freezes; `None` while an open-ended freeze holds.
fn timer_opening(plan: &Plan, freezes: &Freezes, end: Timestamp) -> Option<Timestamp> {
    let mut at = end;
    loop {
        let windowed = plan.timer_opens_at(at);
        let thawed = freezes.open_at(windowed)?;
        if thawed == windowed {
            return Some(windowed);
        }
        // strictly later: the end of a freeze that held at `windowed`
        at = thawed;
    }
}

/// Why a completion gate with these counts stays shut, or `None` when it opens. Every member
/// counts: one that stopped heartbeating without reporting (`stale`) has not completed, so
/// a stage whose members all went silent holds; a stage with no members passes through.
pub(super) fn completion_hold(
    counts: Option<&StageCounts>,
    min_completed: Share,
    max_errors: u64,
) -> Option<String> {
    let Some(counts) = counts else {
        return Some("the stage's fleet counts are not known yet".to_owned());
    };
    let enough_completed = u128::from(counts.completed) * u128::from(Share::ALL.ppm())
        >= u128::from(counts.members) * u128::from(min_completed.ppm());
    if enough_completed && counts.errors <= max_errors {
        return None;
    }
    let completed_percent = if counts.members == 0 {
        0.0
    } else {
        counts.completed as f64 * 100.0 / counts.members as f64
    };
    let mut reason = format!(
        "{} of {} members completed ({completed_percent:.1}%), {min_completed} needed; {} pending, {} stale (no heartbeat, no report), {} errors",
        counts.completed, counts.members, counts.pending, counts.stale, counts.errors
    );
    if counts.errors > max_errors {
        reason.push_str(&format!(", at most {max_errors} allowed"));
    }
    Some(reason)
}

fn pause(plan: &Plan, state: &mut RolloutState, now: Timestamp, effects: &mut Vec<Effect>) {
    let remaining_ms = state.due_at(plan).map(|due| due.millis_since(now).max(0));
    state.lifecycle = Lifecycle::Paused;
    state.paused_at = Some(now);
    effects.push(Effect::Paused { remaining_ms });
}

fn complete(state: &mut RolloutState, now: Timestamp, effects: &mut Vec<Effect>) {
    end(state, Lifecycle::Completed, now);
    effects.push(Effect::Completed);
}

fn end(state: &mut RolloutState, lifecycle: Lifecycle, now: Timestamp) {
    state.lifecycle = lifecycle;
    state.paused_at = None;
    state.queued_until = None;
    state.rollback = None;
    state.finished_at = Some(now);
}

fn precondition(message: impl Into<String>) -> Rejection {
    Rejection {
        code: RejectionCode::FailedPrecondition,
        message: message.into(),
        field: None,
    }
}
