//! Human output of `rolloutctl`: the steps table (share or stage, gate, planned and actual
//! times, the current position, stage counts) with its header line, lists, the audit, flags
//! as YAML, event lines for `watch`, and evaluation answers.

use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use rollout_core::{
    freeze::Freeze, Approval, DurationMs, Eta, GuardVerdict, Labels, Lifecycle, OutcomeCounts,
    Share, StageCounts, Timestamp,
};
use rollout_sdk::{ChangeEvent, EvalResult};
use rollout_wire::alerts::AlertResult;
use rollout_wire::webhooks::{Delivery, WebhookList};
use rollout_wire::{
    AuditPage, Deleted, EventKind, FlagCounts, FlagList, FlagResult, GateKind, GateStatus,
    NamespaceResult, PlanPreview, RolloutCounts, RolloutList, RolloutResult, RolloutStatus,
    SideEffect, StepStatus,
};
use serde::Serialize;

/// Marks the step the rollout is at.
const CURRENT: &str = "▶";
/// Marks steps already passed.
const PASSED: &str = "✓";
/// Marks steps catch-up passed over.
const SKIPPED: &str = "↷";

/// The wire name of a snake_case enum (`rolled_back`, `waiting_for: continue`).
pub fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// A time to the second, `2026-12-01 09:00:00Z` (`--json` keeps milliseconds).
pub fn short_time(time: Timestamp) -> String {
    let full = time.to_rfc3339();
    let seconds = match full.find('.') {
        Some(dot) => format!("{}Z", &full[..dot]),
        None => full,
    };
    seconds.replacen('T', " ", 1)
}

fn time(value: Option<Timestamp>) -> String {
    value.map_or_else(|| "-".to_owned(), short_time)
}

fn labels_text(labels: &Labels) -> String {
    if labels.is_empty() {
        return "(everyone else)".to_owned();
    }
    labels
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn gate_text(gate: &GateStatus, is_last: bool) -> String {
    let then = match gate.kind {
        GateKind::Timer => match gate.duration {
            Some(duration) if is_last => format!("bake {duration}"),
            Some(duration) => format!("timer {duration}"),
            None => "timer".to_owned(),
        },
        GateKind::Continue => "continue".to_owned(),
        GateKind::Completion => format!(
            "≥{} applied, ≤{} errors",
            gate.min_completed_percentage.unwrap_or(Share::ALL),
            gate.max_errors.unwrap_or(0)
        ),
        GateKind::Immediate if is_last => "final".to_owned(),
        GateKind::Immediate => "immediate".to_owned(),
    };
    match gate.approvers {
        Some(approvers) if gate.kind == GateKind::Immediate && !is_last => {
            format!("approval by {approvers}")
        }
        Some(approvers) => format!("approval by {approvers}, then {then}"),
        None => then,
    }
}

/// The columns of a stage's fleet counts, in [`count_cells`] order.
const COUNT_COLUMNS: [&str; 6] = [
    "members",
    "completed",
    "errors",
    "pending",
    "waiting",
    "stale",
];

/// A stage's fleet counts as right-aligned cells, in [`COUNT_COLUMNS`] order.
fn count_cells(counts: &StageCounts) -> [Cell; 6] {
    [
        counts.members,
        counts.completed,
        counts.errors,
        counts.pending,
        counts.waiting,
        counts.stale,
    ]
    .map(|count| Cell::new(count).set_alignment(CellAlignment::Right))
}

fn table(header: Vec<&str>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    table
}

/// Every step as a table: marker, index, share or stage and labels, gate, planned and
/// started times, and for stages the member counts.
pub fn steps_table(steps: &[StepStatus], current: Option<usize>) -> String {
    let staged = steps.iter().any(|step| step.name.is_some());
    let mut header = vec!["", "step"];
    if staged {
        header.extend(["stage", "labels"]);
    } else {
        header.push("share");
    }
    header.extend(["gate", "planned", "started"]);
    if staged {
        header.extend(COUNT_COLUMNS);
    }
    let mut rendered = table(header);
    let last = steps.len().saturating_sub(1);
    for step in steps {
        let marker = if current == Some(step.index) {
            CURRENT
        } else if step.skipped {
            SKIPPED
        } else if step.started_at.is_some() {
            PASSED
        } else {
            ""
        };
        let mut row = vec![Cell::new(marker), Cell::new(step.index + 1)];
        if staged {
            let name = step.name.as_deref().unwrap_or("-");
            row.push(Cell::new(match step.wave {
                Some(wave) => format!("{name} (wave {wave})"),
                None => name.to_owned(),
            }));
            row.push(Cell::new(
                step.labels
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), labels_text),
            ));
        } else {
            row.push(
                Cell::new(
                    step.percentage
                        .map_or_else(|| "-".to_owned(), |share| share.to_string()),
                )
                .set_alignment(CellAlignment::Right),
            );
        }
        row.push(Cell::new(gate_text(&step.gate, step.index == last)));
        row.push(Cell::new(time(step.planned_at)));
        let started = if step.skipped {
            "skipped".to_owned()
        } else {
            time(step.started_at)
        };
        row.push(Cell::new(started));
        if staged {
            match &step.counts {
                Some(counts) => row.extend(count_cells(counts)),
                None => row.extend(COUNT_COLUMNS.map(|_| Cell::new("-"))),
            }
        }
        rendered.add_row(row);
    }
    rendered.to_string()
}

/// A span of milliseconds for people: `42s`, `4m 10s`, `2h 5m`, `3d 4h` (two units at most).
pub fn span(ms: u64) -> String {
    let mut seconds = ms / 1000;
    if seconds == 0 {
        return format!("{ms}ms");
    }
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if seconds >= size {
            parts.push(format!("{}{unit}", seconds / size));
            seconds %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// When the clock next moves a rollout, seen from `at`: `12:00:00Z (in 4m 10s)`, or how
/// late it is, with the likely reason.
pub fn due_text(due_at: Timestamp, at: Option<Timestamp>, overdue_ms: Option<u64>) -> String {
    if let Some(late) = overdue_ms {
        return format!(
            "{} — overdue by {}: is a ticker running? (rolloutctl cluster status)",
            short_time(due_at),
            span(late)
        );
    }
    match at.map(|at| due_at.millis_since(at)) {
        Some(ahead) if ahead > 0 => format!(
            "{} (in {})",
            short_time(due_at),
            span(u64::try_from(ahead).unwrap_or(0))
        ),
        _ => short_time(due_at),
    }
}

/// Where a rollout is headed, seen from `at`: `ETA 12:30:00Z (in 25m)`, or what stands in
/// the way: `ETA unknown: step 3 waits for continue (from 12:05:00Z)`.
pub fn eta_text(eta: &Eta, at: Option<Timestamp>) -> String {
    if let Some(completes_at) = eta.completes_at {
        return format!("ETA {}", due_text(completes_at, at, None));
    }
    let waits_for = eta
        .blocked_by
        .as_ref()
        .map_or_else(|| "an operator".to_owned(), wire_name);
    let from = eta
        .blocked_from
        .filter(|from| at.is_none_or(|at| *from > at))
        .map_or_else(String::new, |from| format!(" (from {})", short_time(from)));
    match eta.blocked_at_step {
        Some(index) => format!(
            "ETA unknown: step {} waits for {waits_for}{from}",
            index + 1
        ),
        None => format!("ETA unknown: waits for {waits_for}{from}"),
    }
}

fn position_text(current: Option<usize>, steps: usize) -> String {
    match current {
        // people count steps from 1; the wire's indexes stay 0-based
        Some(index) => format!("step {} of {steps}", index + 1),
        None => "not started".to_owned(),
    }
}

fn state_line(
    state: Lifecycle,
    waiting_for: Option<String>,
    current: Option<usize>,
    steps: usize,
    share: Option<Share>,
) -> String {
    let mut parts = vec![format!("state: {}", state.as_str())];
    if let Some(waiting_for) = waiting_for {
        parts.push(format!("waiting for: {waiting_for}"));
    }
    parts.push(position_text(current, steps));
    if let Some(share) = share {
        parts.push(format!("share: {share}"));
    }
    parts.join(" · ")
}

/// `rollout status`: two header lines and the steps table.
pub fn status(status: &RolloutStatus) -> String {
    let rule = status
        .rule
        .as_ref()
        .map_or_else(String::new, |rule| format!(" rule {rule}"));
    let kind = match &status.preset {
        Some(preset) => format!("preset {preset}"),
        None => wire_name(&status.kind),
    };
    let bucketing = match (&status.salt, &status.stickiness) {
        (Some(salt), Some(stickiness)) => format!(" · salt {salt} by {stickiness}"),
        (Some(salt), None) => format!(" · salt {salt}"),
        _ => String::new(),
    };
    let mut text = format!(
        "rollout {} · flag {}{rule} · {kind} · {} → {}{bucketing}\n",
        status.rollout_id, status.flag, status.baseline, status.candidate
    );
    let mut line = state_line(
        status.state,
        status.waiting_for.as_ref().map(wire_name),
        status.current_step,
        status.steps.len(),
        status.share,
    );
    if let Some(due_at) = status.due_at {
        line.push_str(&format!(
            " · next: {}",
            due_text(due_at, status.at, status.overdue_ms)
        ));
    }
    if let Some(paused_at) = status.paused_at {
        line.push_str(&format!(" · paused since: {}", short_time(paused_at)));
    }
    if let Some(remaining) = status.remaining_ms {
        line.push_str(&format!(
            " · {} of this step left once resumed",
            span(remaining)
        ));
    }
    if let Some(eta) = &status.eta {
        line.push_str(&format!(" · {}", eta_text(eta, status.at)));
    }
    line.push_str(&format!(" · created: {}", short_time(status.created_at)));
    if let Some(finished_at) = status.finished_at {
        line.push_str(&format!(" · finished: {}", short_time(finished_at)));
    }
    text.push_str(&line);
    text.push('\n');
    if let Some(freeze) = &status.frozen {
        text.push_str(&format!("namespace frozen {}\n", freeze_line(freeze)));
    }
    for webhook in &status.failing_webhooks {
        text.push_str(&format!(
            "webhook {} failing: {}\n",
            webhook.id,
            delivery_text(&webhook.delivery)
        ));
    }
    if let Some(rollback) = &status.rollback {
        let shares: Vec<String> = rollback
            .shares
            .iter()
            .enumerate()
            .map(|(index, share)| {
                if index == rollback.index {
                    format!("[{share}]")
                } else {
                    share.to_string()
                }
            })
            .collect();
        text.push_str(&format!(
            "rolling back ({}): {} · one every {}\n",
            wire_name(&rollback.cause),
            shares.join(" → "),
            rollback.every
        ));
    }
    if !status.windows.is_empty() {
        let windows: Vec<String> = status
            .windows
            .iter()
            .map(|window| {
                let spec = rollout_core::window::WindowSpec::from(*window);
                format!(
                    "{} {}–{} {}",
                    spec.days.join(","),
                    spec.start,
                    spec.end,
                    spec.timezone
                )
            })
            .collect();
        text.push_str(&format!("timers open only in: {}\n", windows.join("; ")));
    }
    text.push_str(&approvals_line(&status.approvals));
    if let Some(hold) = &status.hold {
        text.push_str(&format!(
            "held by {}: {}\n",
            wire_name(&hold.held_by),
            hold.reason
        ));
    }
    text.push_str(&steps_table(&status.steps, status.current_step));
    text.push('\n');
    text
}

/// `rollout counts`: the outcomes of each side over the window with the guard's verdict,
/// then each label stage's fleet counts.
pub fn counts(counts: &RolloutCounts) -> String {
    let mut text = format!(
        "rollout {} · flag {} · {} → {} · {} · at {}\n",
        counts.rollout_id,
        counts.flag,
        counts.baseline,
        counts.candidate,
        wire_name(&counts.state),
        short_time(counts.at)
    );
    let window = DurationMs::from_millis(i64::try_from(counts.window_ms).unwrap_or(i64::MAX));
    let outcomes = outcome_table(&counts.candidate, &counts.baseline, &counts.outcomes);
    let since = counts
        .counted_from
        .map_or_else(String::new, |from| format!(" (from {})", short_time(from)));
    text.push_str(&format!(
        "outcomes of this rollout over the last {window}{since}\n{outcomes}\n"
    ));
    if counts.guards.is_empty() {
        text.push_str(&format!(
            "guard: {}\n",
            verdict_text(counts.guard.as_ref(), "no guard")
        ));
    }
    for (index, guard) in counts.guards.iter().enumerate() {
        text.push_str(&format!(
            "guard {} ({}, over {}): {}\n",
            index + 1,
            wire_name(&guard.action),
            DurationMs::from_millis(i64::try_from(guard.window_ms).unwrap_or(i64::MAX)),
            verdict_text(Some(&guard.verdict), "no guard")
        ));
    }
    if !counts.stages.is_empty() {
        let mut header = vec!["stage"];
        header.extend(COUNT_COLUMNS);
        let mut stages = table(header);
        for stage in &counts.stages {
            let mut row = vec![Cell::new(&stage.name)];
            row.extend(count_cells(&stage.counts));
            stages.add_row(row);
        }
        text.push_str(&stages.to_string());
        text.push('\n');
    }
    text
}

/// Successes, errors and the error rate of each side.
fn outcome_table(candidate: &str, baseline: &str, outcomes: &OutcomeCounts) -> Table {
    let mut rendered = table(vec!["side", "variation", "success", "error", "error rate"]);
    for (side, variation, tally) in [
        ("candidate", candidate, outcomes.candidate),
        ("baseline", baseline, outcomes.baseline),
    ] {
        let rate = if tally.samples() == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}%", tally.error_rate() * 100.0)
        };
        rendered.add_row(vec![
            Cell::new(side),
            Cell::new(variation),
            Cell::new(tally.success).set_alignment(CellAlignment::Right),
            Cell::new(tally.error).set_alignment(CellAlignment::Right),
            Cell::new(rate).set_alignment(CellAlignment::Right),
        ]);
    }
    rendered
}

/// A guard's or kill switch's verdict in words; `none` when there is no such limit.
fn verdict_text(verdict: Option<&GuardVerdict>, none: &str) -> String {
    match verdict {
        None => none.to_owned(),
        Some(GuardVerdict::InsufficientData) => "too few samples to judge".to_owned(),
        Some(GuardVerdict::Healthy) => "healthy".to_owned(),
        Some(GuardVerdict::Breached(figures)) => format!("BREACHED: {}", figures.limit),
    }
}

/// `flag counts`: the flag-level outcomes its kill switch judges, and its verdict.
pub fn flag_counts(counts: &FlagCounts) -> String {
    let sides = match &counts.rollout_id {
        Some(rollout_id) => format!("the sides of its active rollout {rollout_id}"),
        None => "its off variation against every other".to_owned(),
    };
    let mut text = format!(
        "flag {} · {} · at {} · compares {sides}\n",
        counts.flag,
        if counts.enabled {
            "enabled"
        } else {
            "disabled"
        },
        short_time(counts.at)
    );
    let window = DurationMs::from_millis(i64::try_from(counts.window_ms).unwrap_or(i64::MAX));
    let outcomes = outcome_table(
        &counts.candidates.join(" + "),
        &counts.baseline,
        &counts.outcomes,
    );
    text.push_str(&format!(
        "outcomes of this flag over the last {window}\n{outcomes}\n"
    ));
    text.push_str(&format!(
        "kill switch: {}\n",
        verdict_text(
            counts.kill_switch.as_ref(),
            "none (see the README, \"Kill switches\")"
        )
    ));
    text
}

/// What a command did beside what it was asked, one line each, prefixed with `prefix`
/// (`# ` where the output must stay YAML).
fn side_effect_lines(effects: &[SideEffect], prefix: &str) -> String {
    let share_text =
        |share: &Option<Share>| share.map_or_else(String::new, |share| format!(" at {share}"));
    effects
        .iter()
        .map(|effect| {
            let line = match effect {
                SideEffect::RolloutStopped { rollout_id, share } => format!(
                    "stopped rollout {rollout_id}{}: its split stays in the flag's serve, served again once the flag is enabled",
                    share_text(share)
                ),
                SideEffect::FlagEnabled { flag } => {
                    format!("enabled flag {flag}, which was disabled, for the rollout to start")
                }
                SideEffect::SplitKept { rollout_id, share } => format!(
                    "stopped rollout {rollout_id}{} before deleting it: its split stays served",
                    share_text(share)
                ),
            };
            format!("{prefix}{line}\n")
        })
        .collect()
}

/// The reply to a flag command: what was done, at which version, and what else it did.
pub fn flag_changed(verb: &str, result: &FlagResult) -> String {
    format!(
        "{verb} flag {} (version {})\n{}",
        result.flag.key,
        result.version,
        side_effect_lines(&result.side_effects, "")
    )
}

/// The reply to a rollout command: a header line and the steps table.
pub fn rollout_result(result: &RolloutResult) -> String {
    let mut text = side_effect_lines(&result.side_effects, "");
    text.push_str(&format!(
        "rollout {} · flag {}\n",
        result.rollout_id, result.flag
    ));
    text.push_str(&state_line(
        result.state,
        result.waiting_for.as_ref().map(wire_name),
        result.current_step,
        result.steps.len(),
        result.share,
    ));
    text.push('\n');
    text.push_str(&approvals_line(&result.approvals));
    text.push_str(&steps_table(&result.steps, result.current_step));
    text.push('\n');
    text
}

/// `approved by: ana (10:02:03), bo (10:04:00)` and a newline; empty without approvals.
fn approvals_line(approvals: &[Approval]) -> String {
    if approvals.is_empty() {
        return String::new();
    }
    let approvers: Vec<String> = approvals
        .iter()
        .map(|approval| format!("{} ({})", approval.actor, short_time(approval.at)))
        .collect();
    format!("approved by: {}\n", approvers.join(", "))
}

/// `rollout plan`: the compiled plan with projected times.
pub fn plan_preview(preview: &PlanPreview) -> String {
    let kind = match &preview.preset {
        Some(preset) => format!("preset {preset}"),
        None => wire_name(&preview.kind),
    };
    let rule = preview
        .rule
        .as_ref()
        .map_or_else(String::new, |rule| format!(" rule {rule}"));
    let count = preview.steps.len();
    let mut text = format!(
        "plan for flag {}{rule} · {kind} · {} → {} · {count} step{} (nothing stored)\n",
        preview.flag,
        preview.baseline,
        preview.candidate,
        if count == 1 { "" } else { "s" }
    );
    text.push_str(&steps_table(&preview.steps, None));
    text.push('\n');
    text
}

/// `flag get` and flag commands: a comment header and the flag as YAML, which `flag update
/// -f` reads back.
pub fn flag_result(result: &FlagResult) -> String {
    let mut text = format!("# flag {} · version {}", result.flag.key, result.version);
    if let Some(rollout) = &result.active_rollout {
        text.push_str(&format!(" · active rollout {rollout}"));
    }
    text.push('\n');
    text.push_str(&side_effect_lines(&result.side_effects, "# "));
    match serde_yaml_ng::to_string(&result.flag) {
        Ok(yaml) => text.push_str(&yaml),
        Err(error) => text.push_str(&format!("# cannot show as yaml: {error}\n")),
    }
    text
}

/// `flag list`.
pub fn flag_list(list: &FlagList) -> String {
    let mut rendered = table(vec![
        "key",
        "enabled",
        "version",
        "variations",
        "active rollout",
        "description",
    ]);
    for flag in &list.flags {
        rendered.add_row(vec![
            Cell::new(&flag.key),
            Cell::new(if flag.enabled { "yes" } else { "no" }),
            Cell::new(flag.version),
            Cell::new(flag.variations.join(",")),
            Cell::new(flag.active_rollout.as_deref().unwrap_or("-")),
            Cell::new(flag.description.as_deref().unwrap_or("")),
        ]);
    }
    with_next_page(
        rendered.to_string(),
        list.next_page,
        list.flags.is_empty(),
        "flags",
    )
}

/// `cluster status`: one row per replica, then what is missing.
pub fn cluster_status(members: &[rollout_wire::MemberInfo]) -> String {
    let mut rendered = table(vec![
        "service", "replica", "version", "ready", "role", "serves",
    ]);
    for member in members {
        let role = match (member.leader, member.epoch) {
            (Some(true), Some(epoch)) => match member.shard_count {
                Some(count) => format!(
                    "leads {} of {count} shards (epochs up to {epoch})",
                    member.shards.len()
                ),
                None => format!("leader (epoch {epoch})"),
            },
            (Some(false), Some(0)) | (Some(false), None) => "standby".to_owned(),
            (Some(false), Some(epoch)) => format!("standby (last epoch {epoch})"),
            _ => "-".to_owned(),
        };
        let serves = if member.served.is_empty() {
            "-".to_owned()
        } else {
            member
                .served
                .iter()
                .map(|(namespace, served)| {
                    format!(
                        "{namespace}: {} flags, versions {}",
                        served.flags, served.versions
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let ready = match &member.reason {
            Some(reason) if !member.ready => format!("no: {reason}"),
            _ if member.ready => "yes".to_owned(),
            _ => "no".to_owned(),
        };
        rendered.add_row(vec![
            Cell::new(&member.service),
            Cell::new(&member.replica),
            Cell::new(&member.version),
            Cell::new(ready),
            Cell::new(role),
            Cell::new(serves),
        ]);
    }
    let mut text = if members.is_empty() {
        "no replica answered: is NATS the right one, and is anything running?\n".to_owned()
    } else {
        format!("{rendered}\n")
    };
    let count = |service: &str| {
        members
            .iter()
            .filter(|member| member.service == service)
            .count()
    };
    for (service, missing) in [
        (
            "planner",
            "no planner answered: commands and queries get no reply",
        ),
        (
            "ticker",
            "no ticker answered: nothing advances rollouts (due steps become overdue)",
        ),
        (
            "evaluator",
            "no evaluator answered: applications get no evaluations",
        ),
    ] {
        if !members.is_empty() && count(service) == 0 {
            text.push_str(&format!("warning: {missing}\n"));
        }
    }
    let leaders = members
        .iter()
        .filter(|member| member.leader == Some(true))
        .count();
    if count("ticker") > 0 && leaders == 0 {
        text.push_str("warning: no ticker leads right now (one takes over within its lease)\n");
    } else if let Some(shard_count) = members.iter().find_map(|member| member.shard_count) {
        let led: std::collections::BTreeSet<u32> = members
            .iter()
            .flat_map(|member| member.shards.keys().copied())
            .collect();
        let unled: Vec<String> = (0..shard_count)
            .filter(|shard| !led.contains(shard))
            .map(|shard| shard.to_string())
            .collect();
        if !unled.is_empty() {
            text.push_str(&format!(
                "warning: {} of {shard_count} shards have no leader right now ({}); a ticker takes them over within its lease\n",
                unled.len(),
                unled.join(", ")
            ));
        }
    }
    text
}

/// `rollout list`.
pub fn rollout_list(list: &RolloutList) -> String {
    let mut rendered = table(vec![
        "rollout", "flag", "kind", "state", "waiting", "step", "share", "next", "eta", "created",
        "finished",
    ]);
    for rollout in &list.rollouts {
        let flag = match &rollout.rule {
            Some(rule) => format!("{} (rule {rule})", rollout.flag),
            None => rollout.flag.clone(),
        };
        let step = match rollout.current_step {
            Some(index) => format!("{}/{}", index + 1, rollout.step_count),
            None => "-".to_owned(),
        };
        rendered.add_row(vec![
            Cell::new(&rollout.rollout_id),
            Cell::new(flag),
            Cell::new(wire_name(&rollout.kind)),
            Cell::new(rollout.state.as_str()),
            Cell::new(
                rollout
                    .waiting_for
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), wire_name),
            ),
            Cell::new(step),
            Cell::new(
                rollout
                    .share
                    .map_or_else(|| "-".to_owned(), |share| share.to_string()),
            ),
            Cell::new(match (rollout.due_at, rollout.overdue_ms) {
                (Some(due_at), Some(late)) => {
                    format!("{} (overdue {})", short_time(due_at), span(late))
                }
                (Some(due_at), None) => short_time(due_at),
                (None, _) => "-".to_owned(),
            }),
            Cell::new(match &rollout.eta {
                Some(eta) => match (eta.completes_at, eta.blocked_at_step, &eta.blocked_by) {
                    (Some(completes_at), _, _) => short_time(completes_at),
                    (None, Some(index), Some(by)) => {
                        format!("step {} waits for {}", index + 1, wire_name(by))
                    }
                    (None, _, Some(by)) => format!("waits for {}", wire_name(by)),
                    _ => "-".to_owned(),
                },
                None => "-".to_owned(),
            }),
            Cell::new(short_time(rollout.created_at)),
            Cell::new(time(rollout.finished_at)),
        ]);
    }
    with_next_page(
        rendered.to_string(),
        list.next_page,
        list.rollouts.is_empty(),
        "rollouts",
    )
}

/// `rollout audit`.
pub fn audit_page(page: &AuditPage) -> String {
    let mut rendered = table(vec![
        "time",
        "actor",
        "kind",
        "rollout",
        "from → to",
        "details",
    ]);
    for entry in &page.entries {
        let change = match (&entry.from, &entry.to) {
            (Some(from), Some(to)) => format!("{from} → {to}"),
            (None, Some(to)) => format!("→ {to}"),
            (Some(from), None) => format!("{from} →"),
            (None, None) => "-".to_owned(),
        };
        rendered.add_row(vec![
            Cell::new(short_time(entry.time)),
            Cell::new(&entry.actor),
            Cell::new(wire_name(&entry.kind)),
            Cell::new(entry.rollout_id.as_deref().unwrap_or("-")),
            Cell::new(change),
            Cell::new(details_text(&entry.details)),
        ]);
    }
    with_next_page(
        rendered.to_string(),
        page.next_page,
        page.entries.is_empty(),
        "audit entries",
    )
}

/// Audit details as `name=value` pairs, leaving out what the other columns already say
/// (`effect`, `from`, `to`), the command id and empty or zero figures.
fn details_text(details: &serde_json::Value) -> String {
    let serde_json::Value::Object(fields) = details else {
        return details.to_string();
    };
    fields
        .iter()
        .filter(|(name, value)| {
            let redundant = matches!(name.as_str(), "effect" | "from" | "to" | "command_id");
            let empty = value.is_null()
                || value.as_array().is_some_and(Vec::is_empty)
                || (name.as_str() == "lag_ms" && value.as_u64() == Some(0));
            !redundant && !empty
        })
        .map(|(name, value)| match value {
            serde_json::Value::String(text) => format!("{name}={text}"),
            other => format!("{name}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn with_next_page(table: String, next_page: Option<u32>, empty: bool, what: &str) -> String {
    let mut text = if empty {
        format!("no {what}\n")
    } else {
        format!("{table}\n")
    };
    if let Some(next) = next_page {
        text.push_str(&format!("more: --page {next}\n"));
    }
    text
}

/// A freeze's one line: `frozen since … until … by ana: reason`.
fn freeze_line(freeze: &Freeze) -> String {
    let mut line = format!("since {}", short_time(freeze.since));
    if let Some(until) = freeze.until {
        line.push_str(&format!(" until {}", short_time(until)));
    }
    if let Some(by) = &freeze.by {
        line.push_str(&format!(" by {by}"));
    }
    if let Some(lifted_by) = &freeze.lifted_by {
        line.push_str(&format!(", lifted by {lifted_by}"));
    }
    format!("{line}: {}", freeze.reason)
}

/// `namespace freeze|unfreeze`: the freeze in force and the recent ones.
pub fn namespace_result(result: &NamespaceResult) -> String {
    let mut text = match &result.frozen {
        Some(freeze) => format!(
            "namespace {} is frozen {}\n",
            result.namespace,
            freeze_line(freeze)
        ),
        None => format!("namespace {} is not frozen\n", result.namespace),
    };
    for freeze in result.past.iter().take(5) {
        text.push_str(&format!("  earlier: {}\n", freeze_line(freeze)));
    }
    text
}

/// `namespace webhook ...`: each webhook, its filter and how its deliveries go.
pub fn webhook_list(list: &WebhookList) -> String {
    if list.webhooks.is_empty() {
        return format!("namespace {} has no webhooks\n", list.namespace);
    }
    let mut table = table(vec![
        "WEBHOOK",
        "URL",
        "EVENTS",
        "DELIVERED",
        "GIVEN UP",
        "PENDING",
        "STATE",
    ]);
    for webhook in &list.webhooks {
        let events = if webhook.events.is_empty() {
            "all".to_owned()
        } else {
            webhook
                .events
                .iter()
                .map(wire_name)
                .collect::<Vec<_>>()
                .join(",")
        };
        let state = if webhook.delivery.failing() {
            format!("failing: {}", delivery_text(&webhook.delivery))
        } else {
            "ok".to_owned()
        };
        table.add_row(vec![
            Cell::new(&webhook.id),
            Cell::new(&webhook.url),
            Cell::new(events),
            Cell::new(webhook.delivery.delivered).set_alignment(CellAlignment::Right),
            Cell::new(webhook.delivery.given_up).set_alignment(CellAlignment::Right),
            Cell::new(webhook.delivery.pending).set_alignment(CellAlignment::Right),
            Cell::new(state),
        ]);
    }
    format!("{table}\n")
}

/// A failing webhook's story: since when, why, and when it is tried again.
fn delivery_text(delivery: &Delivery) -> String {
    let mut text = format!("since {}", time(delivery.failing_since));
    if let Some(error) = &delivery.last_error {
        text.push_str(&format!(", last error: {error}"));
    }
    if delivery.attempts > 0 {
        text.push_str(&format!(", {} failed attempt(s)", delivery.attempts));
    }
    if let Some(next) = delivery.next_attempt_at {
        text.push_str(&format!(", next attempt {}", short_time(next)));
    }
    if delivery.given_up > 0 {
        text.push_str(&format!(", {} given up", delivery.given_up));
    }
    text
}

/// `namespace alert`: what the alert did to each rollout it matched.
pub fn alert_result(result: &AlertResult) -> String {
    let mut text = format!(
        "alert {} ({}){}: {} rollout(s) matched\n",
        result.alert_id,
        wire_name(&result.action),
        if result.repeated {
            ", a repeat: nothing new done"
        } else {
            ""
        },
        result.rollouts.len()
    );
    for rollout in &result.rollouts {
        let outcome = match (&rollout.state, &rollout.error) {
            (Some(state), _) => state.as_str().to_owned(),
            (None, Some(error)) => format!("unchanged: {}", error.message),
            (None, None) => "unchanged".to_owned(),
        };
        text.push_str(&format!(
            "  {} (flag {}): {outcome}\n",
            rollout.rollout_id, rollout.flag
        ));
    }
    text
}

/// A delete command's reply.
pub fn deleted(deleted: &Deleted) -> String {
    side_effect_lines(&deleted.side_effects, "")
        + &match &deleted.rollout_id {
            Some(rollout_id) => format!(
                "deleted rollout {rollout_id} of flag {} (its audit stays readable)\n",
                deleted.flag
            ),
            None => format!("deleted flag {}\n", deleted.flag),
        }
}

/// One line per change event, for `watch`.
pub fn event_line(event: &ChangeEvent) -> String {
    let mut line = format!("{} {}", short_time(event.time), wire_name(&event.kind));
    match (event.from_step, event.to_step) {
        (Some(from), Some(to)) => line.push_str(&format!(" step {} → {}", from + 1, to + 1)),
        (None, Some(to)) => line.push_str(&format!(" step {}", to + 1)),
        _ => {}
    }
    if event.kind == EventKind::RolloutApproved {
        let number = |name: &str| event.details.get(name).and_then(serde_json::Value::as_u64);
        if let (Some(step), Some(approvals), Some(required)) =
            (number("step"), number("approvals"), number("required"))
        {
            line.push_str(&format!(
                " step {} ({approvals} of {required} approvals)",
                step + 1
            ));
        }
    }
    if !event.skipped.is_empty() {
        let skipped: Vec<String> = event
            .skipped
            .iter()
            .map(|index| (index + 1).to_string())
            .collect();
        line.push_str(&format!(" (skipped {})", skipped.join(", ")));
    }
    if let Some(share) = event.share {
        line.push_str(&format!(" share {share}"));
    }
    if let Some(state) = event.state {
        line.push_str(&format!(" [{}]", state.as_str()));
    }
    if let Some(figures) = &event.figures {
        if let Ok(figures) = serde_json::to_string(figures) {
            line.push_str(&format!(" figures {figures}"));
        }
    }
    if let Some(actor) = &event.actor {
        line.push_str(&format!(" by {actor}"));
    }
    line
}

/// `eval`: the value and why.
pub fn eval_result(result: &EvalResult) -> String {
    let mut text = format!(
        "{} = {} (variation {}, reason {}",
        result.flag,
        result.value,
        result.variation,
        wire_name(&result.reason)
    );
    if let Some(rule_id) = &result.rule_id {
        text.push_str(&format!(", rule {rule_id}"));
    }
    if let Some(rollout_id) = &result.rollout_id {
        text.push_str(&format!(", rollout {rollout_id}"));
    }
    if let Some(step) = result.step {
        text.push_str(&format!(", step {}", step + 1));
    }
    if let Some(bucket) = result.bucket {
        text.push_str(&format!(", bucket {bucket}"));
    }
    text.push_str(&format!(", version {})\n", result.version));
    if let Some(explanation) = &result.explanation {
        text.push_str(explanation);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_says_when_or_what_stands_in_the_way() {
        let now = Timestamp::parse_rfc3339("2026-12-01T09:00:00Z").expect("time");
        let later = now.plus(rollout_core::DurationMs::from_millis(1_500_000));
        let done = Eta {
            completes_at: Some(later),
            blocked_at_step: None,
            blocked_by: None,
            blocked_from: None,
        };
        assert_eq!(
            eta_text(&done, Some(now)),
            "ETA 2026-12-01 09:25:00Z (in 25m)"
        );
        let blocked = Eta {
            completes_at: None,
            blocked_at_step: Some(2),
            blocked_by: Some(rollout_core::WaitingFor::Continue),
            blocked_from: Some(later),
        };
        assert_eq!(
            eta_text(&blocked, Some(now)),
            "ETA unknown: step 3 waits for continue (from 2026-12-01 09:25:00Z)"
        );
        let waiting_now = Eta {
            blocked_from: Some(now),
            ..blocked
        };
        assert_eq!(
            eta_text(&waiting_now, Some(now)),
            "ETA unknown: step 3 waits for continue"
        );
    }

    #[test]
    fn due_times_say_how_long_until_or_how_late() {
        let due = Timestamp::parse_rfc3339("2026-12-01T09:00:00Z").expect("time");
        let before = due.minus(rollout_core::DurationMs::from_millis(250_000));
        assert_eq!(
            due_text(due, Some(before), None),
            "2026-12-01 09:00:00Z (in 4m 10s)"
        );
        let overdue = due_text(due, None, Some(42_000));
        assert!(
            overdue.contains("overdue by 42s: is a ticker running?"),
            "{overdue}"
        );
        assert_eq!(span(93_784_000), "1d 2h");
        assert_eq!(span(500), "500ms");
    }

    #[test]
    fn times_show_to_the_second_and_details_only_what_is_new() {
        let time = Timestamp::parse_rfc3339("2026-12-01T09:00:00.791Z").expect("time");
        assert_eq!(short_time(time), "2026-12-01 09:00:00Z");
        let details = serde_json::json!({"cause": "continue", "command_id": "c-1", "effect": "step_entered",
            "from": 0, "to": 1, "lag_ms": 0, "skipped": [], "planned_at": "2026-12-01T09:00:00Z"});
        assert_eq!(
            details_text(&details),
            "cause=continue planned_at=2026-12-01T09:00:00Z"
        );
    }

    /// The documented example of wire type `type_name`.
    fn documented<T: serde::de::DeserializeOwned>(type_name: &str) -> T {
        let shape = rollout_wire::shapes::SHAPES
            .iter()
            .find(|shape| shape.type_name == type_name)
            .expect("documented");
        serde_json::from_str(shape.json).expect("shape decodes")
    }

    #[test]
    fn counts_show_both_sides_the_verdict_and_every_stage() {
        let counts: RolloutCounts = documented("RolloutCounts");
        let text = super::counts(&counts);
        assert!(
            text.contains("outcomes of this rollout over the last 5m (from 2026-12-01 09:25:00Z)"),
            "{text}"
        );
        let candidate = text
            .lines()
            .find(|line| line.contains("candidate"))
            .expect("candidate row");
        for figure in ["v2", "950", "50", "5.00%"] {
            assert!(candidate.contains(figure), "{candidate}");
        }
        let baseline = text
            .lines()
            .find(|line| line.contains("baseline"))
            .expect("baseline row");
        assert!(baseline.contains("2.00%"), "{baseline}");
        assert!(text.contains("guard: BREACHED: error rate"), "{text}");
        for stage in ["canary", "prod-eu", "unassigned"] {
            assert!(text.contains(stage), "{text}");
        }
    }

    #[test]
    fn stage_status_shows_counts_and_the_current_stage() {
        let status: RolloutStatus = documented("RolloutStatus");
        let text = super::status(&status);
        assert!(
            text.contains("state: running · waiting for: guard"),
            "{text}"
        );
        assert!(
            text.contains("held by completion: 3 of 12 members completed (25.0%), 90% needed"),
            "{text}"
        );
        assert!(text.contains("canary"), "{text}");
        assert!(text.contains("env=staging"), "{text}");
        assert!(text.contains("members"), "{text}");
        assert!(text.contains("≥90% applied, ≤2 errors"), "{text}");
        let canary_row = text
            .lines()
            .find(|line| line.contains("canary"))
            .expect("canary row");
        assert!(canary_row.contains(CURRENT), "{canary_row}");
        for count in ["12", "7", "40"] {
            assert!(text.contains(count), "{text}");
        }
    }

    #[test]
    fn share_plans_show_each_share_and_gate() {
        let result: RolloutResult = serde_json::from_value(serde_json::json!({
            "rollout_id": "r-1", "flag": "f", "state": "running", "waiting_for": "timer",
            "current_step": 1, "share": 25,
            "steps": [
                {"index": 0, "percentage": 5, "planned_at": "2026-12-01T09:00:00Z",
                 "started_at": "2026-12-01T09:00:00Z", "gate": {"kind": "timer", "duration": "6h"}},
                {"index": 1, "percentage": 25, "planned_at": "2026-12-01T15:00:00Z",
                 "started_at": "2026-12-01T15:00:01Z", "gate": {"kind": "timer", "duration": "6h"}},
                {"index": 2, "percentage": 100, "planned_at": "2026-12-01T21:00:00Z",
                 "gate": {"kind": "immediate"}}]}))
        .expect("result");
        let text = rollout_result(&result);
        for expected in [
            "5%",
            "25%",
            "100%",
            "timer 6h",
            "final",
            "2026-12-01 15:00:01Z",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        assert!(text.contains("waiting for: timer"), "{text}");
        let first = text
            .lines()
            .find(|line| line.contains("5%") && !line.contains("25%"));
        assert!(first.is_some_and(|line| line.contains(PASSED)), "{text}");
    }
}
