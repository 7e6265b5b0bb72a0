//! Every rule of the planner's pure decision function, as tables: each row is the stored
//! state before, a command as the wire carries it, and what a user then sees — the
//! refusal's code and field, "nothing changed", or the flag and rollout after the change.
//! Adding a rule is adding a row. No servers: `decide` does no IO (SPEC §9).
//!
//! Stored states are built with the pure core (`compile`, the step function and
//! `transition::create` and `apply`), not with `decide`, so a fault in `decide` cannot hide in the setup.

use std::collections::HashSet;

use planner::decide::{decide, DecideContext, Decision, Loaded};
use rollout_core::transition::{self, NewRollout};
use rollout_core::{
    compile, CompileContext, DurationMs, Event, Flag, Lifecycle, RolloutSpec, Serve, Timestamp,
};
use rollout_store::Change;
use rollout_store::{FlagRecord, RolloutRecord, StoredFlag};
use rollout_wire::codec::Encoding;
use rollout_wire::commands::{Command, CommandReply};
use rollout_wire::envelope::{ErrorCode, WireError};
use rollout_wire::subjects::CommandVerb;
use serde_json::{json, Value};
use ErrorCode::{Conflict, FailedPrecondition, Internal, InvalidArgument, NotFound};
use Lifecycle::{Completed, Paused, Queued, RolledBack, Running, Stopped};

/// Redis time at every decision: 2026-12-01T00:00:00Z.
const NOW_MS: i64 = 1_796_083_200_000;
const IN_AN_HOUR: &str = "2026-12-01T01:00:00Z";
const IN_TWO_HOURS: &str = "2026-12-01T02:00:00Z";
const AN_HOUR_AGO: &str = "2026-11-30T23:00:00Z";
/// The stored rollout of every state that has one, and the salt it was compiled with.
const ROLLOUT: &str = "r-1";
const ROLLOUT_SALT: &str = "salt-1";
/// The id and salt `decide` gives a new rollout.
const NEW_ROLLOUT: &str = "r-2";
const FRESH_SALT: &str = "fresh";
/// The stored flag's version (and a tombstone's).
const FLAG_VERSION: u64 = 7;
/// What the base flag serves: default, then each rule in order.
const BASE_SERVES: &str = "default=off beta=off staff=alt";

fn now() -> Timestamp {
    Timestamp::from_millis(NOW_MS)
}

// ---- the stored state before ----

fn beta_rule() -> Value {
    json!({"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
           "serve": {"variation": "off"}})
}

fn staff_rule() -> Value {
    json!({"id": "staff",
           "conditions": [{"attribute": "team", "op": "equals", "values": ["staff"]}],
           "serve": {"variation": "alt"}})
}

/// Three variations: rollouts move `off` → `on`; `alt` is served by the `staff` rule.
fn flag_json() -> Value {
    json!({"key": "checkout",
        "variations": [{"id": "off", "value": false}, {"id": "on", "value": true},
                       {"id": "alt", "value": "legacy"}],
        "off_variation": "off", "enabled": true, "default": {"variation": "off"},
        "rules": [beta_rule(), staff_rule()]})
}

fn edited(edit: impl FnOnce(&mut Value)) -> Value {
    let mut flag = flag_json();
    edit(&mut flag);
    flag
}

/// The default-target rollout every rollout state starts from: 10 % (1h), 50 % (1h),
/// 100 % with a 30m bake.
fn spec_json() -> Value {
    json!({"flag": "checkout", "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 50, "duration": "1h"},
                   {"percentage": 100, "duration": "30m"}]})
}

/// [`spec_json`] with `changes` merged in; a `null` removes the key.
fn spec_with(changes: Value) -> Value {
    let mut spec = spec_json();
    if let (Some(fields), Some(changes)) = (spec.as_object_mut(), changes.as_object()) {
        for (key, value) in changes {
            if value.is_null() {
                fields.remove(key);
            } else {
                fields.insert(key.clone(), value.clone());
            }
        }
    }
    spec
}

/// What is stored before the command: the flag hash and the one rollout there is.
#[derive(Clone, Debug)]
struct World {
    flag: Option<StoredFlag>,
    rollout: Option<RolloutRecord>,
}

fn stored(record: FlagRecord) -> Option<StoredFlag> {
    Some(StoredFlag {
        version: FLAG_VERSION,
        record: Some(record),
    })
}

fn flag_record(flag: Value) -> FlagRecord {
    let flag: Flag = serde_json::from_value(flag).expect("a flag definition");
    FlagRecord {
        flag,
        active_rollout: None,
        last_rollout: None,
        created_at: setup_time(),
        updated_at: setup_time(),
    }
}

/// States are set up a minute before the decision.
fn setup_time() -> Timestamp {
    now().minus(DurationMs::from_minutes(1))
}

fn flag_only(flag: Value) -> World {
    World {
        flag: stored(flag_record(flag)),
        rollout: None,
    }
}

/// `spec` created on `flag` and moved by `events`, stored as the store would hold it.
fn with_rollout(flag: Value, spec: Value, events: &[Event]) -> World {
    let record = flag_record(flag);
    let spec: RolloutSpec = serde_json::from_value(spec).expect("a rollout spec");
    let context = CompileContext {
        now: setup_time(),
        min_phase_interval: DurationMs::from_minutes(5),
        fresh_salt: ROLLOUT_SALT,
    };
    let plan = compile(&spec, &record.flag, &context).expect("the setup spec compiles");
    let created = transition::create(
        &record,
        NewRollout {
            id: ROLLOUT.to_owned(),
            namespace: "test".to_owned(),
            spec,
            plan,
            created_by: None,
            traceparent: None,
        },
        setup_time(),
    );
    let (mut record, mut rollout) = (created.flag, created.rollout);
    for event in events {
        let moved = transition::apply(&record, &rollout, event, setup_time())
            .expect("the setup event applies");
        (record, rollout) = (moved.flag, moved.rollout);
    }
    World {
        flag: stored(record),
        rollout: Some(rollout),
    }
}

fn no_flag() -> World {
    World {
        flag: None,
        rollout: None,
    }
}

fn deleted_flag() -> World {
    World {
        flag: Some(StoredFlag {
            version: FLAG_VERSION,
            record: None,
        }),
        rollout: None,
    }
}

fn enabled_flag() -> World {
    flag_only(flag_json())
}

fn disabled_flag() -> World {
    flag_only(edited(|flag| flag["enabled"] = json!(false)))
}

fn serving_candidate() -> World {
    flag_only(edited(|flag| flag["default"] = json!({"variation": "on"})))
}

fn serving_alt() -> World {
    flag_only(edited(|flag| flag["default"] = json!({"variation": "alt"})))
}

fn queued() -> World {
    with_rollout(flag_json(), spec_with(json!({"wait_for_start": true})), &[])
}

fn queued_on_disabled_flag() -> World {
    with_rollout(
        edited(|flag| flag["enabled"] = json!(false)),
        spec_with(json!({"wait_for_start": true})),
        &[],
    )
}

fn queued_until_later() -> World {
    with_rollout(flag_json(), spec_with(json!({"start_at": IN_AN_HOUR})), &[])
}

fn running() -> World {
    with_rollout(flag_json(), spec_json(), &[])
}

fn running_step_1() -> World {
    with_rollout(flag_json(), spec_json(), &[Event::Continue])
}

fn running_last_step() -> World {
    with_rollout(flag_json(), spec_json(), &[Event::Promote])
}

fn paused() -> World {
    with_rollout(flag_json(), spec_json(), &[Event::Pause])
}

fn paused_last_step() -> World {
    with_rollout(flag_json(), spec_json(), &[Event::Promote, Event::Pause])
}

/// Left the default serving `on`.
fn completed() -> World {
    with_rollout(flag_json(), spec_json(), &[Event::Promote, Event::Continue])
}

/// Stopped at step 1: left the default serving `on` 50 % / `off` 50 % with its salt.
fn stopped() -> World {
    with_rollout(
        flag_json(),
        spec_json(),
        &[Event::Continue, Event::Stop { percentage: None }],
    )
}

fn rolled_back() -> World {
    with_rollout(flag_json(), spec_json(), &[Event::Rollback])
}

/// A rule-level rollout on `beta`, at step 0.
fn rule_running() -> World {
    with_rollout(flag_json(), spec_with(json!({"rule": "beta"})), &[])
}

/// Label stages `canary` then `unassigned`, `canary` released.
fn staged_running() -> World {
    with_rollout(
        flag_json(),
        spec_with(json!({"phases": null,
            "stages": [{"name": "canary", "labels": {"env": "staging"}}]})),
        &[],
    )
}

/// A completed rollout whose flag was deleted afterwards.
fn completed_of_deleted_flag() -> World {
    World {
        flag: deleted_flag().flag,
        ..completed()
    }
}

/// Inconsistent on purpose: an active rollout whose flag is gone.
fn running_without_flag() -> World {
    World {
        flag: deleted_flag().flag,
        ..running()
    }
}

/// What the executor loads for `command` (see `executor::load`): for rollout commands the
/// named rollout and then its flag; otherwise the flag; and the flag's active rollout.
fn loaded_for(world: &World, command: &Command) -> Loaded {
    let named = |id: &str| world.rollout.clone().filter(|rollout| rollout.id == id);
    let rollout = command.rollout_id().and_then(named);
    if command.rollout_id().is_some() && rollout.is_none() {
        return Loaded::default();
    }
    let active_rollout = world
        .flag
        .as_ref()
        .and_then(|stored| stored.record.as_ref())
        .and_then(|record| record.active_rollout.as_deref())
        .and_then(named);
    Loaded {
        flag: world.flag.clone(),
        rollout,
        active_rollout,
    }
}

fn context_for(command: &Command) -> DecideContext {
    DecideContext {
        namespace: "test".to_owned(),
        now: now(),
        min_phase_interval: DurationMs::from_minutes(5),
        fresh_salt: FRESH_SALT.to_owned(),
        new_rollout_id: NEW_ROLLOUT.to_owned(),
        actor: command.actor().map(str::to_owned),
        traceparent: None,
        expected_step: command.expected_step(),
    }
}

// ---- what a user sees ----

#[derive(Clone, Debug, PartialEq)]
enum Seen {
    /// The reply is this error code and field; nothing is written.
    Refused(ErrorCode, Option<String>),
    /// Nothing is written; the reply shows this.
    Unchanged(Reply),
    /// A change is written: the flag and the rollout afterwards.
    Changed(FlagAfter, RolloutAfter),
}

/// What an unchanged reply says (fields a reply kind lacks are `None`).
#[derive(Clone, Debug, PartialEq)]
struct Reply {
    state: Option<Lifecycle>,
    step: Option<usize>,
    enabled: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
enum FlagAfter {
    /// No flag afterwards (deleted, or it stays deleted).
    Gone,
    Is {
        enabled: bool,
        active_rollout: Option<String>,
        /// What the default and each rule serve: see [`serves`].
        serves: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum RolloutAfter {
    /// The change does not write the rollout.
    Untouched,
    Is {
        lifecycle: Lifecycle,
        step: Option<usize>,
        /// Percentage of the audience served the candidate now.
        share: f64,
        /// Bucketing salt: who is in the cohort.
        salt: String,
    },
    /// The rollout record is removed.
    Deleted(String),
}

fn refused(code: ErrorCode, field: &str) -> Seen {
    Seen::Refused(code, Some(field.to_owned()))
}

fn refused_without_field(code: ErrorCode) -> Seen {
    Seen::Refused(code, None)
}

fn unchanged_flag(enabled: bool) -> Seen {
    Seen::Unchanged(Reply {
        state: None,
        step: None,
        enabled: Some(enabled),
    })
}

fn unchanged_rollout(state: Lifecycle, step: Option<usize>) -> Seen {
    Seen::Unchanged(Reply {
        state: Some(state),
        step,
        enabled: None,
    })
}

fn changed(flag: FlagAfter, rollout: RolloutAfter) -> Seen {
    Seen::Changed(flag, rollout)
}

fn flag_after(enabled: bool, active_rollout: Option<&str>, serves: &str) -> FlagAfter {
    FlagAfter::Is {
        enabled,
        active_rollout: active_rollout.map(str::to_owned),
        serves: serves.to_owned(),
    }
}

/// The stored rollout `r-1` afterwards.
fn rollout_after(lifecycle: Lifecycle, step: Option<usize>, share: f64) -> RolloutAfter {
    salted(lifecycle, step, share, ROLLOUT_SALT)
}

/// A rollout created by the command, with the fresh salt.
fn created(lifecycle: Lifecycle, step: Option<usize>, share: f64) -> RolloutAfter {
    salted(lifecycle, step, share, FRESH_SALT)
}

fn salted(lifecycle: Lifecycle, step: Option<usize>, share: f64, salt: &str) -> RolloutAfter {
    RolloutAfter::Is {
        lifecycle,
        step,
        share,
        salt: salt.to_owned(),
    }
}

fn rollout_deleted() -> RolloutAfter {
    RolloutAfter::Deleted(ROLLOUT.to_owned())
}

/// `default=<serve> <rule id>=<serve> …`; a serve is a variation, `on:10/off:90@salt` for a
/// split, or `on to 1 of 2 stages`.
fn serves(flag: &Flag) -> String {
    let mut parts = vec![format!("default={}", describe(&flag.default))];
    parts.extend(
        flag.rules
            .iter()
            .map(|rule| format!("{}={}", rule.id, describe(&rule.serve))),
    );
    parts.join(" ")
}

fn describe(serve: &Serve) -> String {
    if let Some(split) = &serve.split {
        let entries: Vec<String> = split
            .iter()
            .map(|entry| format!("{}:{}", entry.variation, entry.weight))
            .collect();
        return format!(
            "{}@{}",
            entries.join("/"),
            serve.salt.as_deref().unwrap_or("-")
        );
    }
    if let Some(stages) = &serve.stages {
        return format!(
            "{} to {} of {} stages",
            stages.candidate,
            stages.released,
            stages.stages.len() + 1
        );
    }
    serve
        .variation
        .clone()
        .unwrap_or_else(|| "nothing".to_owned())
}

fn refusal(error: &WireError) -> Seen {
    Seen::Refused(error.code, error.field.clone())
}

/// Decodes the command as the wire does, checks it statelessly as the executor does
/// first, decides, and describes the outcome. `Err` names a broken invariant between the
/// reply and what is written.
fn outcome_of(case: &Case) -> Result<Seen, String> {
    let verb = CommandVerb::parse(case.verb).map_err(|error| format!("verb: {error}"))?;
    let bytes = serde_json::to_vec(&case.body).map_err(|error| error.to_string())?;
    let command = Command::decode(verb, &bytes, Encoding::Json)
        .map_err(|error| format!("the command does not decode: {error}"))?;
    if let Err(error) = command.validate() {
        return Ok(refusal(&error));
    }
    let world = (case.before)();
    let loaded = loaded_for(&world, &command);
    match decide(&command, &loaded, &context_for(&command)) {
        Err(error) => Ok(refusal(&error)),
        Ok(Decision::Unchanged(reply)) => {
            unchanged_reply(&as_json(&reply)?, &loaded).map(Seen::Unchanged)
        }
        Ok(Decision::Changed { change, reply }) => {
            seen_change(&command, &loaded, &change, &as_json(&reply)?)
        }
    }
}

/// A reply as the client reads it.
fn as_json(reply: &CommandReply) -> Result<Value, String> {
    serde_json::to_value(reply).map_err(|error| error.to_string())
}

fn loaded_version(loaded: &Loaded) -> u64 {
    loaded.flag.as_ref().map_or(0, |stored| stored.version)
}

fn unchanged_reply(result: &Value, loaded: &Loaded) -> Result<Reply, String> {
    if let Some(version) = result.get("version") {
        if version != &json!(loaded_version(loaded)) {
            return Err(format!(
                "an unchanged reply shows version {version}, the flag is at {}",
                loaded_version(loaded)
            ));
        }
    }
    Ok(Reply {
        state: result
            .get("state")
            .map(|state| serde_json::from_value(state.clone()))
            .transpose()
            .map_err(|error| error.to_string())?,
        step: result
            .get("current_step")
            .and_then(Value::as_u64)
            .and_then(|step| usize::try_from(step).ok()),
        enabled: result
            .get("flag")
            .and_then(|flag| flag.get("enabled"))
            .and_then(Value::as_bool),
    })
}

fn seen_change(
    command: &Command,
    loaded: &Loaded,
    change: &Change,
    reply: &Value,
) -> Result<Seen, String> {
    let flag = match &change.flag {
        None => FlagAfter::Gone,
        Some(record) => {
            // a flag reply shows what is written, at a version above the one loaded
            if let Some(reply_flag) = reply.get("flag").filter(|flag| flag.is_object()) {
                if reply_flag != &serde_json::to_value(&record.flag).map_err(|e| e.to_string())? {
                    return Err(format!("the reply shows {reply_flag}, not the stored flag"));
                }
                if reply.get("active_rollout").and_then(Value::as_str)
                    != record.active_rollout.as_deref()
                {
                    return Err("the reply's active_rollout is not the stored one".to_owned());
                }
                let version = reply.get("version").and_then(Value::as_u64).unwrap_or(0);
                if version <= loaded_version(loaded) {
                    return Err(format!(
                        "the reply's version {version} does not rise above {}",
                        loaded_version(loaded)
                    ));
                }
            }
            FlagAfter::Is {
                enabled: record.flag.enabled,
                active_rollout: record.active_rollout.clone(),
                serves: serves(&record.flag),
            }
        }
    };
    if let (Command::FlagUpdate(update), Some(record)) = (command, &change.flag) {
        let (sent, kept) = (&update.flag, &record.flag);
        let conditions = |flag: &Flag| -> Vec<(String, Vec<rollout_core::Condition>)> {
            flag.rules
                .iter()
                .map(|rule| (rule.id.clone(), rule.conditions.clone()))
                .collect()
        };
        if sent.description != kept.description
            || sent.variations != kept.variations
            || sent.off_variation != kept.off_variation
            || sent.kill_switch != kept.kill_switch
            || conditions(sent) != conditions(kept)
        {
            return Err("the accepted update is not what is written".to_owned());
        }
    }
    let rollout = match (&change.rollout, &change.deleted_rollout) {
        (Some((_, record)), _) => {
            // a rollout reply shows the state written
            if let Some(state) = reply.get("state") {
                if state != &json!(record.state.lifecycle)
                    || reply.get("current_step").and_then(Value::as_u64)
                        != record.state.step.map(|step| step as u64)
                {
                    return Err(format!("the reply shows {reply}, not the stored rollout"));
                }
            }
            RolloutAfter::Is {
                lifecycle: record.state.lifecycle,
                step: record.state.step,
                share: record.state.served_share(&record.plan).percentage(),
                salt: record.plan.salt.clone(),
            }
        }
        (None, Some(deleted)) => {
            if reply.get("rollout_id").and_then(Value::as_str) != Some(deleted.id.as_str()) {
                return Err(format!(
                    "the reply {reply} does not name the deleted rollout"
                ));
            }
            RolloutAfter::Deleted(deleted.id.clone())
        }
        (None, None) => RolloutAfter::Untouched,
    };
    Ok(Seen::Changed(flag, rollout))
}

// ---- the tables and their one loop ----

struct Case {
    name: &'static str,
    before: fn() -> World,
    verb: &'static str,
    body: Value,
    expect: Seen,
}

fn case(
    name: &'static str,
    before: fn() -> World,
    verb: &'static str,
    body: Value,
    expect: Seen,
) -> Case {
    Case {
        name,
        before,
        verb,
        body,
        expect,
    }
}

fn run_table(table: &[Case]) {
    let mut names = HashSet::new();
    let mut failures = Vec::new();
    for case in table {
        assert!(
            names.insert(case.name),
            "two cases are named {:?}",
            case.name
        );
        match outcome_of(case) {
            Ok(seen) if seen == case.expect => {}
            Ok(seen) => failures.push(format!(
                "{}:\n    expected {:?}\n    got      {seen:?}",
                case.name, case.expect
            )),
            Err(problem) => failures.push(format!("{}: {problem}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

fn update(edit: impl FnOnce(&mut Value)) -> Value {
    json!({"flag": edited(edit)})
}

fn create_rollout(changes: Value) -> Value {
    json!({"rollout": spec_with(changes)})
}

fn on_rollout(extra: Value) -> Value {
    let mut body = json!({"rollout_id": ROLLOUT});
    if let (Some(fields), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        fields.extend(extra.clone());
    }
    body
}

fn key() -> Value {
    json!({"key": "checkout"})
}

#[test]
fn flag_create() {
    let create = |flag: Value| json!({"flag": flag});
    // rows laid out by hand: rustfmt would give every argument of a row its own line
    #[rustfmt::skip]
    let cases = [
        case("a new flag", no_flag, "flag.create", create(flag_json()),
            changed(flag_after(true, None, BASE_SERVES), RolloutAfter::Untouched)),
        case("a new disabled flag", no_flag, "flag.create",
            create(edited(|flag| flag["enabled"] = json!(false))),
            changed(flag_after(false, None, BASE_SERVES), RolloutAfter::Untouched)),
        // the reply's version must rise above the tombstone's (checked for every change)
        case("re-creating a deleted flag", deleted_flag, "flag.create", create(flag_json()),
            changed(flag_after(true, None, BASE_SERVES), RolloutAfter::Untouched)),
        case("a flag that exists", enabled_flag, "flag.create", create(flag_json()),
            refused(Conflict, "flag.key")),
        case("a flag that exists, disabled", disabled_flag, "flag.create", create(flag_json()),
            refused(Conflict, "flag.key")),
        case("a flag that exists with a running rollout", running, "flag.create",
            create(flag_json()), refused(Conflict, "flag.key")),
        case("an off variation that is no variation", no_flag, "flag.create",
            create(edited(|flag| flag["off_variation"] = json!("nope"))),
            refused(InvalidArgument, "flag.off_variation")),
        case("a duplicate variation id", no_flag, "flag.create",
            create(edited(|flag| flag["variations"][1]["id"] = json!("off"))),
            refused(InvalidArgument, "flag.variations[1].id")),
    ];
    run_table(&cases);
}

#[test]
fn flag_update() {
    let described = || update(|flag| flag["description"] = json!("the one-page checkout"));
    let default_alt = || update(|flag| flag["default"] = json!({"variation": "alt"}));
    let add_variation = || {
        update(|flag| {
            if let Some(variations) = flag["variations"].as_array_mut() {
                variations.push(json!({"id": "blue", "value": "blue"}));
            }
        })
    };
    let disable = || update(|flag| flag["enabled"] = json!(false));
    let beta_everyone = || update(|flag| flag["rules"][0]["conditions"] = json!([]));
    let kept = Some(ROLLOUT);
    // rows laid out by hand: rustfmt would give every argument of a row its own line
    #[rustfmt::skip]
    let cases = [
        // no rollout: everything is editable
        case("a description", enabled_flag, "flag.update", described(),
            changed(flag_after(true, None, BASE_SERVES), RolloutAfter::Untouched)),
        case("the expected version", enabled_flag, "flag.update",
            json!({"flag": flag_json(), "expected_version": FLAG_VERSION}),
            changed(flag_after(true, None, BASE_SERVES), RolloutAfter::Untouched)),
        case("a stale expected version", enabled_flag, "flag.update",
            json!({"flag": flag_json(), "expected_version": FLAG_VERSION - 1}),
            refused(Conflict, "expected_version")),
        case("a missing flag", no_flag, "flag.update", described(),
            refused(NotFound, "flag.key")),
        case("a deleted flag", deleted_flag, "flag.update", described(),
            refused(NotFound, "flag.key")),
        case("an invalid definition", enabled_flag, "flag.update",
            update(|flag| flag["off_variation"] = json!("nope")),
            refused(InvalidArgument, "flag.off_variation")),
        case("a new variation without a rollout", enabled_flag, "flag.update", add_variation(),
            changed(flag_after(true, None, BASE_SERVES), RolloutAfter::Untouched)),
        case("the default without a rollout", enabled_flag, "flag.update", default_alt(),
            changed(flag_after(true, None, "default=alt beta=off staff=alt"),
                RolloutAfter::Untouched)),
        case("disabling without a rollout", enabled_flag, "flag.update", disable(),
            changed(flag_after(false, None, BASE_SERVES), RolloutAfter::Untouched)),
        case("the default after a completed rollout", completed, "flag.update", default_alt(),
            changed(flag_after(true, None, "default=alt beta=off staff=alt"),
                RolloutAfter::Untouched)),
        case("a new variation after a completed rollout", completed, "flag.update",
            add_variation(),
            changed(flag_after(true, None, BASE_SERVES), RolloutAfter::Untouched)),
        // a default-target rollout runs: values, names, descriptions, other rules, the kill
        // switch and the off variation stay editable (SPEC §5, §11.1)
        case("a description while running", running, "flag.update", described(),
            changed(flag_after(true, kept, BASE_SERVES), RolloutAfter::Untouched)),
        case("the candidate's value while running", running, "flag.update",
            update(|flag| flag["variations"][1]["value"] = json!("yes")),
            changed(flag_after(true, kept, BASE_SERVES), RolloutAfter::Untouched)),
        case("a variation's name while running", running, "flag.update",
            update(|flag| flag["variations"][0]["name"] = json!("Classic")),
            changed(flag_after(true, kept, BASE_SERVES), RolloutAfter::Untouched)),
        case("a non-target rule's conditions while running", running, "flag.update",
            beta_everyone(),
            changed(flag_after(true, kept, BASE_SERVES), RolloutAfter::Untouched)),
        case("a non-target rule's serve while running", running, "flag.update",
            update(|flag| flag["rules"][1]["serve"] = json!({"variation": "on"})),
            changed(flag_after(true, kept, "default=off beta=off staff=on"),
                RolloutAfter::Untouched)),
        case("a kill switch while running", running, "flag.update",
            update(|flag| flag["kill_switch"] = json!({"metric": "error_rate",
                "max_error_rate": 20, "min_samples": 500, "window": "5m"})),
            changed(flag_after(true, kept, BASE_SERVES), RolloutAfter::Untouched)),
        case("the off variation to a bystander while running", running, "flag.update",
            update(|flag| flag["off_variation"] = json!("alt")),
            changed(flag_after(true, kept, BASE_SERVES), RolloutAfter::Untouched)),
        case("the variations reordered while running", running, "flag.update",
            update(|flag| flag["variations"] = json!([{"id": "alt", "value": "legacy"},
                {"id": "on", "value": true}, {"id": "off", "value": false}])),
            changed(flag_after(true, kept, BASE_SERVES), RolloutAfter::Untouched)),
        // ... while what the rollout moves is frozen
        case("the off variation to the candidate while running", running, "flag.update",
            update(|flag| flag["off_variation"] = json!("on")),
            refused(FailedPrecondition, "flag.off_variation")),
        case("removing the candidate while running", running, "flag.update",
            update(|flag| flag["variations"] = json!([{"id": "off", "value": false},
                {"id": "alt", "value": "legacy"}])),
            refused(FailedPrecondition, "flag.variations")),
        case("removing the baseline while running", running, "flag.update",
            update(|flag| {
                flag["variations"] = json!([{"id": "on", "value": true},
                    {"id": "alt", "value": "legacy"}]);
                flag["off_variation"] = json!("alt");
                flag["default"] = json!({"variation": "alt"});
                flag["rules"][0]["serve"] = json!({"variation": "alt"});
            }),
            refused(FailedPrecondition, "flag.variations")),
        case("removing a bystander variation while running", running, "flag.update",
            update(|flag| {
                flag["variations"] = json!([{"id": "off", "value": false},
                    {"id": "on", "value": true}]);
                flag["rules"][1]["serve"] = json!({"variation": "on"});
            }),
            refused(FailedPrecondition, "flag.variations")),
        case("adding a variation while running", running, "flag.update", add_variation(),
            refused(FailedPrecondition, "flag.variations")),
        case("adding a variation while paused", paused, "flag.update", add_variation(),
            refused(FailedPrecondition, "flag.variations")),
        case("the target default while running", running, "flag.update", default_alt(),
            refused(FailedPrecondition, "flag.default")),
        case("the target default while queued", queued, "flag.update", default_alt(),
            refused(FailedPrecondition, "flag.default")),
        // disabling through an update stops the rollout like flag.disable
        case("disabling while running", running, "flag.update", disable(),
            changed(flag_after(false, None, "default=on:10/off:90@salt-1 beta=off staff=alt"),
                rollout_after(Stopped, Some(0), 10.0))),
        case("enabling with a queued rollout", queued_on_disabled_flag, "flag.update",
            described(),
            changed(flag_after(true, kept, BASE_SERVES), RolloutAfter::Untouched)),
        case("keeping a flag disabled with a queued rollout", queued_on_disabled_flag,
            "flag.update", update(|flag| {
                flag["enabled"] = json!(false);
                flag["description"] = json!("not yet");
            }),
            changed(flag_after(false, kept, BASE_SERVES), RolloutAfter::Untouched)),
        case("disabling while queued", queued, "flag.update", disable(),
            changed(flag_after(false, None, BASE_SERVES), rollout_after(Stopped, None, 0.0))),
        // a rule-level rollout on beta freezes that rule only
        case("the target rule's conditions", rule_running, "flag.update", beta_everyone(),
            refused(FailedPrecondition, "flag.rules[0]")),
        case("the target rule's serve", rule_running, "flag.update",
            update(|flag| flag["rules"][0]["serve"] = json!({"variation": "alt"})),
            refused(FailedPrecondition, "flag.rules[0]")),
        case("removing the target rule", rule_running, "flag.update",
            update(|flag| flag["rules"] = json!([staff_rule()])),
            refused(FailedPrecondition, "flag.rules")),
        case("the default during a rule rollout", rule_running, "flag.update", default_alt(),
            changed(flag_after(true, kept, "default=alt beta=off staff=alt"),
                RolloutAfter::Untouched)),
        case("another rule during a rule rollout", rule_running, "flag.update",
            update(|flag| flag["rules"][1]["conditions"] = json!([])),
            changed(flag_after(true, kept, BASE_SERVES), RolloutAfter::Untouched)),
        // the target rule cannot change while its rollout is active (SPEC §5), its place
        // in the order included: moved behind another rule, other entities reach it
        case("moving the target rule behind another", rule_running, "flag.update",
            update(|flag| flag["rules"] = json!([staff_rule(), beta_rule()])),
            refused(FailedPrecondition, "flag.rules[1]")),
        case("disabling during a rule rollout", rule_running, "flag.update", disable(),
            changed(flag_after(false, None, "default=off beta=on:10/off:90@salt-1 staff=alt"),
                rollout_after(Stopped, Some(0), 10.0))),
    ];
    run_table(&cases);
}

#[test]
fn flag_enable_and_disable() {
    let stopped_at_10 = "default=on:10/off:90@salt-1 beta=off staff=alt";
    // rows laid out by hand: rustfmt would give every argument of a row its own line
    #[rustfmt::skip]
    let cases = [
        case("enabling a disabled flag", disabled_flag, "flag.enable", key(),
            changed(flag_after(true, None, BASE_SERVES), RolloutAfter::Untouched)),
        case("enabling an enabled flag", enabled_flag, "flag.enable", key(),
            unchanged_flag(true)),
        case("enabling a missing flag", no_flag, "flag.enable", key(),
            refused(NotFound, "key")),
        case("enabling a deleted flag", deleted_flag, "flag.enable", key(),
            refused(NotFound, "key")),
        case("enabling a bad key", enabled_flag, "flag.enable", json!({"key": "a.b"}),
            refused(InvalidArgument, "key")),
        case("enabling leaves a queued rollout queued", queued_on_disabled_flag, "flag.enable",
            key(),
            changed(flag_after(true, Some(ROLLOUT), BASE_SERVES), RolloutAfter::Untouched)),
        case("disabling an enabled flag", enabled_flag, "flag.disable", key(),
            changed(flag_after(false, None, BASE_SERVES), RolloutAfter::Untouched)),
        case("disabling a disabled flag", disabled_flag, "flag.disable", key(),
            unchanged_flag(false)),
        case("disabling a disabled flag with a queued rollout", queued_on_disabled_flag,
            "flag.disable", key(), unchanged_flag(false)),
        case("disabling a missing flag", no_flag, "flag.disable", key(),
            refused(NotFound, "key")),
        // SPEC §5: disabling stops the rollout; the share stays at its last value
        case("disabling stops a running rollout", running, "flag.disable", key(),
            changed(flag_after(false, None, stopped_at_10),
                rollout_after(Stopped, Some(0), 10.0))),
        case("disabling stops a rollout at step 1", running_step_1, "flag.disable", key(),
            changed(flag_after(false, None, "default=on:50/off:50@salt-1 beta=off staff=alt"),
                rollout_after(Stopped, Some(1), 50.0))),
        case("disabling stops a paused rollout", paused, "flag.disable", key(),
            changed(flag_after(false, None, stopped_at_10),
                rollout_after(Stopped, Some(0), 10.0))),
        case("disabling stops a queued rollout", queued, "flag.disable", key(),
            changed(flag_after(false, None, BASE_SERVES), rollout_after(Stopped, None, 0.0))),
        case("disabling stops a rule rollout", rule_running, "flag.disable", key(),
            changed(flag_after(false, None, "default=off beta=on:10/off:90@salt-1 staff=alt"),
                rollout_after(Stopped, Some(0), 10.0))),
        case("disabling stops a staged rollout", staged_running, "flag.disable", key(),
            changed(flag_after(false, None, "default=on to 1 of 2 stages beta=off staff=alt"),
                rollout_after(Stopped, Some(0), 0.0))),
        case("disabling after a completed rollout", completed, "flag.disable", key(),
            changed(flag_after(false, None, "default=on beta=off staff=alt"),
                RolloutAfter::Untouched)),
        case("disabling after a stopped rollout", stopped, "flag.disable", key(),
            changed(flag_after(false, None, "default=on:50/off:50@salt-1 beta=off staff=alt"),
                RolloutAfter::Untouched)),
    ];
    run_table(&cases);
}

#[test]
fn flag_delete() {
    // rows laid out by hand: rustfmt would give every argument of a row its own line
    #[rustfmt::skip]
    let cases = [
        case("a flag without a rollout", enabled_flag, "flag.delete", key(),
            changed(FlagAfter::Gone, RolloutAfter::Untouched)),
        case("a disabled flag", disabled_flag, "flag.delete", key(),
            changed(FlagAfter::Gone, RolloutAfter::Untouched)),
        case("a flag whose rollout completed", completed, "flag.delete", key(),
            changed(FlagAfter::Gone, RolloutAfter::Untouched)),
        case("a flag whose rollout was rolled back", rolled_back, "flag.delete", key(),
            changed(FlagAfter::Gone, RolloutAfter::Untouched)),
        case("a missing flag", no_flag, "flag.delete", key(), refused(NotFound, "key")),
        case("a deleted flag", deleted_flag, "flag.delete", key(), refused(NotFound, "key")),
        case("a flag with a running rollout", running, "flag.delete", key(),
            refused(FailedPrecondition, "key")),
        case("a flag with a queued rollout", queued, "flag.delete", key(),
            refused(FailedPrecondition, "key")),
        case("a flag with a paused rollout", paused, "flag.delete", key(),
            refused(FailedPrecondition, "key")),
        case("a bad key", enabled_flag, "flag.delete", json!({"key": ""}),
            refused(InvalidArgument, "key")),
    ];
    run_table(&cases);
}

#[test]
fn rollout_create() {
    let taken = Some(NEW_ROLLOUT);
    let running_new = || {
        changed(
            flag_after(true, taken, BASE_SERVES),
            created(Running, Some(0), 10.0),
        )
    };
    let queued_new = |enabled: bool| {
        changed(
            flag_after(enabled, taken, BASE_SERVES),
            created(Queued, None, 0.0),
        )
    };
    let manual = json!([{"weight": 10, "execute_at": IN_AN_HOUR},
                        {"weight": 100, "execute_at": IN_TWO_HOURS}]);
    let replace = || create_rollout(json!({"replace_current_serve": true}));
    let must_replace = refused(FailedPrecondition, "rollout.replace_current_serve");
    // rows laid out by hand: rustfmt would give every argument of a row its own line
    #[rustfmt::skip]
    let cases = [
        case("phases start now", enabled_flag, "rollout.create", create_rollout(json!({})),
            running_new()),
        case("a preset starts now", enabled_flag, "rollout.create",
            create_rollout(json!({"phases": null, "preset": "1hr"})), running_new()),
        // SPEC §5: a disabled flag is enabled when its rollout starts
        case("starting now enables a disabled flag", disabled_flag, "rollout.create",
            create_rollout(json!({})), running_new()),
        case("a future start_at queues", disabled_flag, "rollout.create",
            create_rollout(json!({"start_at": IN_AN_HOUR})), queued_new(false)),
        case("wait_for_start queues", enabled_flag, "rollout.create",
            create_rollout(json!({"wait_for_start": true})), queued_new(true)),
        case("a manual schedule queues until its first step", enabled_flag, "rollout.create",
            create_rollout(json!({"phases": null, "manual": manual})), queued_new(true)),
        case("a template with a future start queues", enabled_flag, "rollout.create",
            create_rollout(json!({"phases": null,
                "template": {"increment": 50, "frequency": "hourly", "start_at": IN_AN_HOUR}})),
            queued_new(true)),
        case("label stages start at the first stage", enabled_flag, "rollout.create",
            create_rollout(json!({"phases": null,
                "stages": [{"name": "canary", "labels": {"env": "staging"}}]})),
            changed(flag_after(true, taken, BASE_SERVES), created(Running, Some(0), 0.0))),
        case("a rule-level rollout", enabled_flag, "rollout.create",
            create_rollout(json!({"rule": "beta"})), running_new()),
        case("a given salt is used", enabled_flag, "rollout.create",
            create_rollout(json!({"salt": "cohort-7"})),
            changed(flag_after(true, taken, BASE_SERVES),
                salted(Running, Some(0), 10.0, "cohort-7"))),
        case("a rolled-back rollout frees the slot", rolled_back, "rollout.create",
            create_rollout(json!({})), running_new()),
        // what the flag must be
        case("a missing flag", no_flag, "rollout.create", create_rollout(json!({})),
            refused(NotFound, "rollout.flag")),
        case("a deleted flag", deleted_flag, "rollout.create", create_rollout(json!({})),
            refused(NotFound, "rollout.flag")),
        case("a bad flag key", enabled_flag, "rollout.create",
            create_rollout(json!({"flag": "a.b"})), refused(InvalidArgument, "rollout.flag")),
        // one active rollout per flag (SPEC §5)
        case("another rollout running", running, "rollout.create", create_rollout(json!({})),
            refused(Conflict, "rollout.flag")),
        case("another rollout queued", queued, "rollout.create", create_rollout(json!({})),
            refused(Conflict, "rollout.flag")),
        case("another rollout paused", paused, "rollout.create", create_rollout(json!({})),
            refused(Conflict, "rollout.flag")),
        case("a rule rollout beside a flag-level one", running, "rollout.create",
            create_rollout(json!({"rule": "staff", "baseline": "alt"})),
            refused(Conflict, "rollout.flag")),
        case("a flag-level rollout beside a rule one", rule_running, "rollout.create",
            create_rollout(json!({})), refused(Conflict, "rollout.flag")),
        // the spec against the flag
        case("the candidate is the off variation", enabled_flag, "rollout.create",
            create_rollout(json!({"baseline": "alt", "candidate": "off"})),
            refused(InvalidArgument, "rollout.candidate")),
        // an invalid spec is refused as such before the current serve is looked at
        case("the candidate is the off variation on a flag serving another", serving_alt,
            "rollout.create", create_rollout(json!({"baseline": "on", "candidate": "off"})),
            refused(InvalidArgument, "rollout.candidate")),
        case("the candidate is the baseline", enabled_flag, "rollout.create",
            create_rollout(json!({"candidate": "off"})),
            refused(InvalidArgument, "rollout.candidate")),
        case("an unknown candidate", enabled_flag, "rollout.create",
            create_rollout(json!({"candidate": "blue"})),
            refused(InvalidArgument, "rollout.candidate")),
        case("an unknown baseline", enabled_flag, "rollout.create",
            create_rollout(json!({"baseline": "blue"})),
            refused(InvalidArgument, "rollout.baseline")),
        case("an unknown rule", enabled_flag, "rollout.create",
            create_rollout(json!({"rule": "gamma"})), refused(InvalidArgument, "rollout.rule")),
        case("start_at in the past", enabled_flag, "rollout.create",
            create_rollout(json!({"start_at": AN_HOUR_AGO})),
            refused(InvalidArgument, "rollout.start_at")),
        case("start_at and wait_for_start", enabled_flag, "rollout.create",
            create_rollout(json!({"start_at": IN_AN_HOUR, "wait_for_start": true})),
            refused(InvalidArgument, "rollout.wait_for_start")),
        case("an execute_at in the past", enabled_flag, "rollout.create",
            create_rollout(json!({"phases": null,
                "manual": [{"weight": 10, "execute_at": AN_HOUR_AGO},
                           {"weight": 100, "execute_at": IN_AN_HOUR}]})),
            refused(InvalidArgument, "rollout.manual[0].execute_at")),
        case("execute_at steps closer than the minimum interval", enabled_flag,
            "rollout.create",
            create_rollout(json!({"phases": null,
                "manual": [{"weight": 10, "execute_at": IN_AN_HOUR},
                           {"weight": 100, "execute_at": "2026-12-01T01:04:00Z"}]})),
            refused(InvalidArgument, "rollout.manual[1].execute_at")),
        case("a template start_at in the past", enabled_flag, "rollout.create",
            create_rollout(json!({"phases": null,
                "template": {"increment": 50, "frequency": "hourly", "start_at": AN_HOUR_AGO}})),
            refused(InvalidArgument, "rollout.template.start_at")),
        case("two plan kinds", enabled_flag, "rollout.create",
            create_rollout(json!({"preset": "1hr"})), refused(InvalidArgument, "rollout")),
        // SPEC §11.1: no silent change of what users get
        case("the target serves the candidate", serving_candidate, "rollout.create",
            create_rollout(json!({})), must_replace.clone()),
        case("the target serves the candidate, replaced", serving_candidate, "rollout.create",
            replace(),
            changed(flag_after(true, taken, "default=on beta=off staff=alt"),
                created(Running, Some(0), 10.0))),
        case("the target serves another variation", serving_alt, "rollout.create",
            create_rollout(json!({})), must_replace.clone()),
        case("the target rule serves another variation", enabled_flag, "rollout.create",
            create_rollout(json!({"rule": "staff"})), must_replace.clone()),
        case("a completed rollout left the candidate", completed, "rollout.create",
            create_rollout(json!({})), must_replace.clone()),
        case("a stopped rollout's split is continued", stopped, "rollout.create",
            create_rollout(json!({})),
            changed(flag_after(true, taken, "default=on:50/off:50@salt-1 beta=off staff=alt"),
                salted(Running, Some(0), 50.0, ROLLOUT_SALT))),
        case("a split continued with another salt", stopped, "rollout.create",
            create_rollout(json!({"salt": "other"})), must_replace.clone()),
        case("a split continued by label stages", stopped, "rollout.create",
            create_rollout(json!({"phases": null,
                "stages": [{"name": "canary", "labels": {"env": "staging"}}]})),
            must_replace.clone()),
        case("a split of other variations", stopped, "rollout.create",
            create_rollout(json!({"baseline": "alt"})), must_replace),
    ];
    run_table(&cases);
}

#[test]
fn rollout_verbs() {
    let none = || on_rollout(json!({}));
    let flag_running = |serves: &str| flag_after(true, Some(ROLLOUT), serves);
    let flag_ended = |serves: &str| flag_after(true, None, serves);
    let at_10 = "default=on:10/off:90@salt-1 beta=off staff=alt";
    let fp = || refused_without_field(FailedPrecondition);
    // rows laid out by hand: rustfmt would give every argument of a row its own line
    #[rustfmt::skip]
    let cases = [
        // start
        case("start queued", queued, "rollout.start", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(0), 10.0))),
        // SPEC §5: a disabled flag is enabled when its rollout starts
        case("start queued on a disabled flag", queued_on_disabled_flag, "rollout.start",
            none(), changed(flag_running(BASE_SERVES), rollout_after(Running, Some(0), 10.0))),
        case("start queued for later, early", queued_until_later, "rollout.start", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(0), 10.0))),
        case("start running", running, "rollout.start", none(), fp()),
        case("start paused", paused, "rollout.start", none(), fp()),
        case("start completed", completed, "rollout.start", none(), fp()),
        case("start stopped", stopped, "rollout.start", none(), fp()),
        case("start rolled back", rolled_back, "rollout.start", none(), fp()),
        // pause
        case("pause running", running, "rollout.pause", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Paused, Some(0), 10.0))),
        case("pause running at step 1", running_step_1, "rollout.pause", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Paused, Some(1), 50.0))),
        case("pause queued", queued, "rollout.pause", none(), fp()),
        case("pause paused", paused, "rollout.pause", none(), fp()),
        case("pause completed", completed, "rollout.pause", none(), fp()),
        case("pause stopped", stopped, "rollout.pause", none(), fp()),
        case("pause rolled back", rolled_back, "rollout.pause", none(), fp()),
        // resume
        case("resume paused", paused, "rollout.resume", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(0), 10.0))),
        case("resume paused at the last step", paused_last_step, "rollout.resume", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(2), 100.0))),
        case("resume running", running, "rollout.resume", none(), fp()),
        case("resume queued", queued, "rollout.resume", none(), fp()),
        case("resume completed", completed, "rollout.resume", none(), fp()),
        case("resume stopped", stopped, "rollout.resume", none(), fp()),
        case("resume rolled back", rolled_back, "rollout.resume", none(), fp()),
        // continue
        case("continue running", running, "rollout.continue", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(1), 50.0))),
        case("continue running at step 1", running_step_1, "rollout.continue", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(2), 100.0))),
        // SPEC §5: a completed rollout leaves the target serving the candidate
        case("continue at the last step completes", running_last_step, "rollout.continue",
            none(),
            changed(flag_ended("default=on beta=off staff=alt"),
                rollout_after(Completed, Some(2), 100.0))),
        case("continue releasing the unassigned stage completes", staged_running,
            "rollout.continue", none(),
            changed(flag_ended("default=on beta=off staff=alt"),
                rollout_after(Completed, Some(1), 0.0))),
        case("continue queued", queued, "rollout.continue", none(), fp()),
        case("continue paused", paused, "rollout.continue", none(), fp()),
        case("continue completed", completed, "rollout.continue", none(), fp()),
        case("continue stopped", stopped, "rollout.continue", none(), fp()),
        case("continue rolled back", rolled_back, "rollout.continue", none(), fp()),
        // promote
        case("promote running", running, "rollout.promote", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(2), 100.0))),
        case("promote queued", queued, "rollout.promote", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(2), 100.0))),
        case("promote queued on a disabled flag", queued_on_disabled_flag, "rollout.promote",
            none(), changed(flag_running(BASE_SERVES), rollout_after(Running, Some(2), 100.0))),
        case("promote paused", paused, "rollout.promote", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(2), 100.0))),
        case("promote running at the last step", running_last_step, "rollout.promote",
            none(), unchanged_rollout(Running, Some(2))),
        // promote jumps to the final step now (SPEC §5): one paused there comes out running
        case("promote paused at the last step", paused_last_step, "rollout.promote", none(),
            changed(flag_running(BASE_SERVES), rollout_after(Running, Some(2), 100.0))),
        case("promote completed", completed, "rollout.promote", none(), fp()),
        case("promote stopped", stopped, "rollout.promote", none(), fp()),
        case("promote rolled back", rolled_back, "rollout.promote", none(), fp()),
        // stop (SPEC §5: the target keeps serving the given share, or the current one)
        case("stop running", running, "rollout.stop", none(),
            changed(flag_ended(at_10), rollout_after(Stopped, Some(0), 10.0))),
        case("stop running at step 1", running_step_1, "rollout.stop", none(),
            changed(flag_ended("default=on:50/off:50@salt-1 beta=off staff=alt"),
                rollout_after(Stopped, Some(1), 50.0))),
        case("stop running at 25 %", running, "rollout.stop",
            on_rollout(json!({"percentage": 25})),
            changed(flag_ended("default=on:25/off:75@salt-1 beta=off staff=alt"),
                rollout_after(Stopped, Some(0), 25.0))),
        case("stop running at 0 %", running, "rollout.stop",
            on_rollout(json!({"percentage": 0})),
            changed(flag_ended(BASE_SERVES), rollout_after(Stopped, Some(0), 0.0))),
        case("stop running at 100 %", running, "rollout.stop",
            on_rollout(json!({"percentage": 100})),
            changed(flag_ended("default=on beta=off staff=alt"),
                rollout_after(Stopped, Some(0), 100.0))),
        case("stop paused", paused, "rollout.stop", none(),
            changed(flag_ended(at_10), rollout_after(Stopped, Some(0), 10.0))),
        case("stop queued", queued, "rollout.stop", none(),
            changed(flag_ended(BASE_SERVES), rollout_after(Stopped, None, 0.0))),
        case("stop a rule rollout", rule_running, "rollout.stop", none(),
            changed(flag_ended("default=off beta=on:10/off:90@salt-1 staff=alt"),
                rollout_after(Stopped, Some(0), 10.0))),
        case("stop label stages", staged_running, "rollout.stop", none(),
            changed(flag_ended("default=on to 1 of 2 stages beta=off staff=alt"),
                rollout_after(Stopped, Some(0), 0.0))),
        case("stop label stages at a percentage", staged_running, "rollout.stop",
            on_rollout(json!({"percentage": 50})), refused(InvalidArgument, "percentage")),
        case("stop at 150 %", running, "rollout.stop", on_rollout(json!({"percentage": 150})),
            refused(InvalidArgument, "percentage")),
        case("stop at five decimals", running, "rollout.stop",
            on_rollout(json!({"percentage": 12.34567})),
            refused(InvalidArgument, "percentage")),
        case("stop completed", completed, "rollout.stop", none(), fp()),
        case("stop stopped", stopped, "rollout.stop", none(), fp()),
        case("stop rolled back", rolled_back, "rollout.stop", none(), fp()),
        // rollback (SPEC §5: everyone gets the baseline)
        case("rollback running", running, "rollout.rollback", none(),
            changed(flag_ended(BASE_SERVES), rollout_after(RolledBack, Some(0), 0.0))),
        case("rollback running at step 1", running_step_1, "rollout.rollback", none(),
            changed(flag_ended(BASE_SERVES), rollout_after(RolledBack, Some(1), 0.0))),
        case("rollback paused", paused, "rollout.rollback", none(),
            changed(flag_ended(BASE_SERVES), rollout_after(RolledBack, Some(0), 0.0))),
        case("rollback queued", queued, "rollout.rollback", none(),
            changed(flag_ended(BASE_SERVES), rollout_after(RolledBack, None, 0.0))),
        case("rollback a rule rollout", rule_running, "rollout.rollback", none(),
            changed(flag_ended(BASE_SERVES), rollout_after(RolledBack, Some(0), 0.0))),
        case("rollback completed", completed, "rollout.rollback", none(), fp()),
        case("rollback stopped", stopped, "rollout.rollback", none(), fp()),
        case("rollback rolled back", rolled_back, "rollout.rollback", none(), fp()),
        // which rollout
        case("pause an unknown rollout", running, "rollout.pause",
            json!({"rollout_id": "r-9"}), refused(NotFound, "rollout_id")),
        case("stop an unknown rollout", running, "rollout.stop",
            json!({"rollout_id": "r-9"}), refused(NotFound, "rollout_id")),
        case("a bad rollout id", running, "rollout.continue", json!({"rollout_id": "r.1"}),
            refused(InvalidArgument, "rollout_id")),
        case("resume a finished rollout of a deleted flag", completed_of_deleted_flag,
            "rollout.resume", none(), refused(NotFound, "rollout_id")),
    ];
    run_table(&cases);
}

#[test]
fn rollout_delete() {
    let gone = |serves: &str| changed(flag_after(true, None, serves), rollout_deleted());
    // rows laid out by hand: rustfmt would give every argument of a row its own line
    #[rustfmt::skip]
    let cases = [
        // deleting an active rollout stops it first, keeping its share
        case("delete running", running, "rollout.delete", on_rollout(json!({})),
            gone("default=on:10/off:90@salt-1 beta=off staff=alt")),
        case("delete running at step 1", running_step_1, "rollout.delete",
            on_rollout(json!({})), gone("default=on:50/off:50@salt-1 beta=off staff=alt")),
        case("delete paused", paused, "rollout.delete", on_rollout(json!({})),
            gone("default=on:10/off:90@salt-1 beta=off staff=alt")),
        case("delete queued", queued, "rollout.delete", on_rollout(json!({})),
            gone(BASE_SERVES)),
        case("delete queued on a disabled flag", queued_on_disabled_flag, "rollout.delete",
            on_rollout(json!({})),
            changed(flag_after(false, None, BASE_SERVES), rollout_deleted())),
        case("delete label stages", staged_running, "rollout.delete", on_rollout(json!({})),
            gone("default=on to 1 of 2 stages beta=off staff=alt")),
        case("delete a rule rollout", rule_running, "rollout.delete", on_rollout(json!({})),
            gone("default=off beta=on:10/off:90@salt-1 staff=alt")),
        // a finished rollout goes; what it left stays served
        case("delete completed", completed, "rollout.delete", on_rollout(json!({})),
            gone("default=on beta=off staff=alt")),
        case("delete stopped", stopped, "rollout.delete", on_rollout(json!({})),
            gone("default=on:50/off:50@salt-1 beta=off staff=alt")),
        case("delete rolled back", rolled_back, "rollout.delete", on_rollout(json!({})),
            gone(BASE_SERVES)),
        case("delete a finished rollout of a deleted flag", completed_of_deleted_flag,
            "rollout.delete", on_rollout(json!({})),
            changed(FlagAfter::Gone, rollout_deleted())),
        case("delete an active rollout whose flag is gone", running_without_flag,
            "rollout.delete", on_rollout(json!({})), refused_without_field(Internal)),
        case("delete an unknown rollout", running, "rollout.delete",
            json!({"rollout_id": "r-9"}), refused(NotFound, "rollout_id")),
        case("delete with no rollout at all", enabled_flag, "rollout.delete",
            on_rollout(json!({})), refused(NotFound, "rollout_id")),
    ];
    run_table(&cases);
}

#[test]
fn expected_step() {
    let at = |step: usize| on_rollout(json!({"expected_step": step}));
    let stale = || refused(Conflict, "expected_step");
    let flag_running = || flag_after(true, Some(ROLLOUT), BASE_SERVES);
    // rows laid out by hand: rustfmt would give every argument of a row its own line
    #[rustfmt::skip]
    let cases = [
        case("continue at the expected step", running, "rollout.continue", at(0),
            changed(flag_running(), rollout_after(Running, Some(1), 50.0))),
        case("continue expecting the next step", running, "rollout.continue", at(1), stale()),
        case("continue after a timer moved it", running_step_1, "rollout.continue", at(0),
            stale()),
        case("promote at the expected step", running, "rollout.promote", at(0),
            changed(flag_running(), rollout_after(Running, Some(2), 100.0))),
        case("promote at a stale step", running_step_1, "rollout.promote", at(0), stale()),
        case("pause at the expected step", running_step_1, "rollout.pause", at(1),
            changed(flag_running(), rollout_after(Paused, Some(1), 50.0))),
        case("pause at a stale step", running, "rollout.pause", at(2), stale()),
        case("resume at the expected step", paused, "rollout.resume", at(0),
            changed(flag_running(), rollout_after(Running, Some(0), 10.0))),
        case("resume at a stale step", paused, "rollout.resume", at(3), stale()),
        case("stop at the expected step", running_step_1, "rollout.stop",
            on_rollout(json!({"expected_step": 1, "percentage": 20})),
            changed(flag_after(true, None, "default=on:20/off:80@salt-1 beta=off staff=alt"),
                rollout_after(Stopped, Some(1), 20.0))),
        case("stop at a stale step", running_step_1, "rollout.stop",
            on_rollout(json!({"expected_step": 0, "percentage": 20})), stale()),
        case("rollback at a stale step", running, "rollout.rollback", at(1), stale()),
        case("delete at the expected step", running, "rollout.delete", at(0),
            changed(flag_after(true, None, "default=on:10/off:90@salt-1 beta=off staff=alt"),
                rollout_deleted())),
        case("delete at a stale step", running, "rollout.delete", at(1), stale()),
        // a queued rollout is at no step, so any expected step is stale
        case("start a queued rollout expecting step 0", queued, "rollout.start", at(0),
            stale()),
        // the step is checked before the lifecycle, the rollout's existence before both
        case("continue a completed rollout at a stale step", completed, "rollout.continue",
            at(0), stale()),
        case("continue a completed rollout at its step", completed, "rollout.continue", at(2),
            refused_without_field(FailedPrecondition)),
        case("an unknown rollout at any step", running, "rollout.continue",
            json!({"rollout_id": "r-9", "expected_step": 0}), refused(NotFound, "rollout_id")),
    ];
    run_table(&cases);
}
