//! Executes commands: load the records, [`decide`], commit the change through the store's
//! [`Writer`] (which publishes its events), reply. A revision conflict (another planner replica or
//! the ticker changed the same flag or rollout meanwhile) means load and decide again; a
//! command id seen before returns its first outcome and changes nothing.

use std::time::Duration;

use rand::Rng;
use rollout_core::DurationMs;
use rollout_runtime::telemetry::{new_traceparent, trace_id_of};
use rollout_store::reads::CommandTarget;
use rollout_store::{freezes, reads, webhooks, Keys};
use rollout_store::{
    load_flag, load_rollout, redis_time_registering, store_unchanged_outcome, stored_outcome,
    Actor, Conditions, Connection, Refused, Writer, Written,
};
use rollout_wire::alerts::{derived_token, Alert, AlertAction, AlertResult, AlertedRollout};
use rollout_wire::codec::Encoding;
use rollout_wire::commands::{Command, CommandReply};
use rollout_wire::commands::{RolloutAction, RolloutRollback};
use rollout_wire::envelope::{decode_reply, encode_reply, ErrorCode, WireError};
use rollout_wire::queries::{AuditEntry, ListState};
use rollout_wire::subjects::Namespace;

use crate::decide::namespace::WebhookChange;
use crate::decide::{self, decide, DecideContext, Decision, Loaded};

/// How often a command is decided again after revision conflicts before giving up.
const MAX_ATTEMPTS: u32 = 16;

/// Executes commands against Redis; cheap to clone.
#[derive(Clone, Debug)]
pub struct Executor {
    redis: Connection,
    writer: Writer,
    min_phase_interval: DurationMs,
}

impl Executor {
    /// An executor reading through `redis` and committing through `writer`.
    pub fn new(redis: Connection, writer: Writer, min_phase_interval: DurationMs) -> Executor {
        Executor {
            redis,
            writer,
            min_phase_interval,
        }
    }

    /// Runs `command` in `namespace`; `traceparent` is the command's W3C trace context.
    pub async fn execute(
        &self,
        namespace: &Namespace,
        command: &Command,
        traceparent: Option<String>,
    ) -> Result<CommandReply, WireError> {
        self.execute_keyed(namespace, command, command.command_id(), traceparent)
            .await
    }

    /// [`Executor::execute`] remembering the outcome under idempotency key `key` (the
    /// command's id, or the stand-in of a queued command without one).
    pub async fn execute_keyed(
        &self,
        namespace: &Namespace,
        command: &Command,
        key: Option<&str>,
        traceparent: Option<String>,
    ) -> Result<CommandReply, WireError> {
        self.run(namespace, command, key, traceparent, None).await
    }

    /// [`Executor::execute`] on someone's behalf with a `reason` for the audit (an alert's).
    pub async fn execute_for(
        &self,
        namespace: &Namespace,
        command: &Command,
        traceparent: Option<String>,
        reason: Option<&str>,
    ) -> Result<CommandReply, WireError> {
        self.run(
            namespace,
            command,
            command.command_id(),
            traceparent,
            reason,
        )
        .await
    }

    async fn run(
        &self,
        namespace: &Namespace,
        command: &Command,
        key: Option<&str>,
        traceparent: Option<String>,
        reason: Option<&str>,
    ) -> Result<CommandReply, WireError> {
        command.validate()?;
        // the edge of the system: a command that came without trace context gets one, so
        // its audit entries and events carry a trace id whether or not spans are exported
        let traceparent = traceparent.or_else(|| Some(new_traceparent()));
        let keys = Keys::new(namespace);
        let mut connection = self.redis.clone();
        let command_id = key.map(str::to_owned);
        let actor = Actor {
            name: command.actor().unwrap_or("operator").to_owned(),
            command_id: command_id.clone(),
            trace_id: traceparent.as_deref().and_then(trace_id_of),
            reason: reason.map(str::to_owned),
        };
        let namespace_command = matches!(
            command,
            Command::NamespaceFreeze(_)
                | Command::NamespaceUnfreeze(_)
                | Command::WebhookPut(_)
                | Command::WebhookDelete(_)
        );
        if let Some(id) = command_id.as_deref().filter(|_| namespace_command) {
            if let Some(stored) = stored_outcome(&mut connection, &keys, id)
                .await
                .map_err(|error| error.to_wire())?
            {
                return repeat(&mut connection, &keys, &stored).await;
            }
        }
        if matches!(
            command,
            Command::NamespaceFreeze(_) | Command::NamespaceUnfreeze(_)
        ) {
            return self
                .execute_namespace(namespace, &keys, command, command_id.as_deref(), &actor)
                .await;
        }
        if matches!(command, Command::WebhookPut(_) | Command::WebhookDelete(_)) {
            return self
                .execute_webhook(namespace, &keys, command, command_id.as_deref(), &actor)
                .await;
        }
        let target = match (command.rollout_id(), command.flag_key()) {
            (Some(rollout_id), _) => CommandTarget::Rollout(rollout_id),
            (None, Some(flag_key)) => CommandTarget::Flag(flag_key),
            (None, None) => CommandTarget::Nothing,
        };
        let mut expected_step = command.expected_step();
        for attempt in 0..MAX_ATTEMPTS {
            // clock, namespace registration, the command id's first outcome and the
            // records, in one round trip (two for a rollout command)
            let read = reads::for_command(
                &mut connection,
                namespace.as_str(),
                &keys,
                command_id.as_deref(),
                target,
            )
            .await
            .map_err(|error| error.to_wire())?;
            if let Some(stored) = read.stored_outcome {
                return repeat(&mut connection, &keys, &stored).await;
            }
            let now = read.now;
            let loaded = Loaded {
                flag: read.flag,
                rollout: read.rollout,
                active_rollout: read.active_rollout,
            };
            let context = DecideContext {
                namespace: namespace.as_str().to_owned(),
                now,
                min_phase_interval: self.min_phase_interval,
                fresh_salt: random_hex(16),
                new_rollout_id: format!("r-{}", random_hex(12)),
                actor: command.actor().map(str::to_owned),
                traceparent: traceparent.clone(),
                expected_step,
            };
            let (change, reply) = match decide(command, &loaded, &context) {
                Ok(Decision::Changed { change, reply }) => (change, reply),
                Ok(Decision::Unchanged(reply)) => {
                    return remember(&mut connection, &keys, command_id.as_deref(), Ok(reply)).await
                }
                Err(error) => {
                    return remember(&mut connection, &keys, command_id.as_deref(), Err(error))
                        .await
                }
            };
            let conditions = Conditions {
                outcome: Some(encode_reply(&Ok::<_, WireError>(&reply), Encoding::Json)),
                ..Conditions::default()
            };
            match self
                .writer
                .commit(namespace, *change, actor.clone(), now, conditions)
                .await
                .map_err(|error| error.to_wire())?
            {
                Written::Committed { .. } => return Ok(reply),
                Written::Refused(Refused::Duplicate(first)) => {
                    return repeat(&mut connection, &keys, &first).await
                }
                Written::Refused(Refused::Conflict { key, actual }) => {
                    // decide again on fresh records, but never move a rollout on from a
                    // step other than the one this decision saw (a `continue` racing a
                    // timer must not move two steps)
                    if command.moves_steps() {
                        expected_step = expected_step.or(loaded
                            .rollout
                            .as_ref()
                            .and_then(|rollout| rollout.state.step));
                    }
                    tracing::debug!(%key, actual, attempt, "revision conflict, deciding again");
                    let jitter_ms = rand::rng().random_range(0..=(1_u64 << attempt.min(6)));
                    tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
                }
                Written::Refused(Refused::Fenced { .. } | Refused::Early { .. }) => {
                    return Err(WireError::internal(
                        "planner commits carry neither fence nor due time",
                    ));
                }
            }
        }
        Err(WireError::unavailable(format!(
            "gave up after {MAX_ATTEMPTS} attempts: the flag keeps changing under this command; retry"
        )))
    }
}

/// A command seen before gets its first outcome `stored` again, once the writes the master
/// holds (the first attempt's commit among them) are confirmed on the replicas asked for:
/// an attempt refused as unreplicated is never acknowledged by its retry alone.
async fn repeat(
    connection: &mut Connection,
    keys: &Keys,
    stored: &[u8],
) -> Result<CommandReply, WireError> {
    rollout_store::confirm_before_repeating(connection, keys)
        .await
        .map_err(|error| error.to_wire())?;
    decode_reply(stored, Encoding::Json)
}

impl Executor {
    /// Acts on an alert (SPEC §12): pauses or rolls back every active rollout its selector
    /// matches, each through the command path (so each is audited, with the alert's
    /// reason, and idempotent per rollout), once per alert id: a repeat gets the first
    /// result, marked `repeated`, and acts on nothing.
    pub async fn alert(
        &self,
        namespace: &Namespace,
        alert: &Alert,
        traceparent: Option<String>,
    ) -> Result<AlertResult, WireError> {
        alert.validate()?;
        let traceparent = traceparent.or_else(|| Some(new_traceparent()));
        let keys = Keys::new(namespace);
        let mut connection = self.redis.clone();
        let alert_key = derived_token("alert", &[&alert.alert_id]);
        if let Some(stored) = stored_outcome(&mut connection, &keys, &alert_key)
            .await
            .map_err(|error| error.to_wire())?
        {
            return repeated_alert(&stored);
        }
        let mut ids = reads::rollout_ids(&mut connection, &keys, ListState::Active)
            .await
            .map_err(|error| error.to_wire())?;
        ids.sort();
        let mut rollouts = Vec::new();
        for id in ids {
            let Some(record) = load_rollout(&mut connection, &keys, &id)
                .await
                .map_err(|error| error.to_wire())?
            else {
                continue;
            };
            if !record.state.lifecycle.is_active() {
                continue;
            }
            let labels = load_flag(&mut connection, &keys, &record.plan.flag)
                .await
                .map_err(|error| error.to_wire())?
                .record
                .map(|flag| flag.flag.labels)
                .unwrap_or_default();
            if !alert
                .selector
                .matches(&record.id, &record.plan.flag, &labels)
            {
                continue;
            }
            // one command id per alert and rollout: a retry acts once
            let command_id = derived_token("alert", &[&alert.alert_id, &record.id]);
            let actor = Some(format!("alert:{}", alert.alert_id));
            let command = match alert.action {
                AlertAction::Pause => Command::RolloutPause(RolloutAction {
                    command_id: Some(command_id),
                    actor,
                    ..RolloutAction::new(&record.id)
                }),
                AlertAction::Rollback => Command::RolloutRollback(RolloutRollback {
                    command_id: Some(command_id),
                    actor,
                    ..RolloutRollback::now(&record.id)
                }),
            };
            let outcome = self
                .execute_for(
                    namespace,
                    &command,
                    traceparent.clone(),
                    Some(&alert.reason),
                )
                .await;
            rollouts.push(AlertedRollout {
                rollout_id: record.id.clone(),
                flag: record.plan.flag.clone(),
                state: match &outcome {
                    Ok(CommandReply::Rollout(result)) => Some(result.state),
                    _ => None,
                },
                error: outcome.err(),
            });
        }
        let result = AlertResult {
            alert_id: alert.alert_id.clone(),
            action: alert.action,
            repeated: false,
            rollouts,
        };
        let encoded = serde_json::to_vec(&result)
            .map_err(|error| WireError::internal(format!("alert result: {error}")))?;
        let stored = store_unchanged_outcome(
            &mut connection,
            &keys,
            &alert_key,
            &encoded,
            ALERT_REMEMBERED_SECONDS,
        )
        .await
        .map_err(|error| error.to_wire())?;
        if stored != encoded {
            // another replica acted on the same alert at the same time: its result stands
            return repeated_alert(&stored);
        }
        Ok(result)
    }

    /// Runs a namespace command (freeze, unfreeze): read the namespace's freezes, decide,
    /// save them with their audit entry if nobody changed them meanwhile (else read again),
    /// then tell the namespace's notice subject.
    async fn execute_namespace(
        &self,
        namespace: &Namespace,
        keys: &Keys,
        command: &Command,
        command_id: Option<&str>,
        actor: &Actor,
    ) -> Result<CommandReply, WireError> {
        let mut connection = self.redis.clone();
        for attempt in 0..MAX_ATTEMPTS {
            let now = redis_time_registering(&mut connection, namespace.as_str())
                .await
                .map_err(|error| error.to_wire())?;
            let read = freezes::load(&mut connection, keys)
                .await
                .map_err(|error| error.to_wire())?;
            let context = DecideContext::for_namespace(
                namespace.as_str(),
                now,
                self.min_phase_interval,
                command.actor(),
            );
            let change = match decide::namespace::decide(command, &read.freezes, &context) {
                Some(Ok(change)) => change,
                Some(Err(error)) => {
                    return remember(&mut connection, keys, command_id, Err(error)).await
                }
                None => return Err(WireError::internal("not a namespace command")),
            };
            let freeze = change.reply.frozen.as_ref().or(change.freezes.past.first());
            let audit = namespace_audit(
                namespace,
                now,
                actor,
                change.kind,
                serde_json::json!({"command_id": command_id, "freeze": freeze}),
            );
            let saved = freezes::save(&mut connection, keys, &read, &change.freezes, &audit)
                .await
                .map_err(|error| error.to_wire())?;
            if saved {
                self.writer.publish_notice(namespace, &audit).await;
                let reply = CommandReply::Namespace(change.reply);
                return remember(&mut connection, keys, command_id, Ok(reply)).await;
            }
            tracing::debug!(
                attempt,
                "the namespace's freezes changed meanwhile; deciding again"
            );
        }
        Err(WireError::unavailable(format!(
            "gave up after {MAX_ATTEMPTS} attempts: the namespace's freezes keep changing; retry"
        )))
    }
}

impl Executor {
    /// Runs a webhook command (put, delete): read the namespace's webhooks, decide, save
    /// with the namespace audit entry in one script, and reply with the webhooks as they
    /// are now (secrets left out). Repeats of a command id get the first outcome.
    async fn execute_webhook(
        &self,
        namespace: &Namespace,
        keys: &Keys,
        command: &Command,
        command_id: Option<&str>,
        actor: &Actor,
    ) -> Result<CommandReply, WireError> {
        let mut connection = self.redis.clone();
        let store = |error: rollout_store::StoreError| error.to_wire();
        let now = redis_time_registering(&mut connection, namespace.as_str())
            .await
            .map_err(store)?;
        let existing = webhooks::load(&mut connection, keys).await.map_err(store)?;
        let context = DecideContext::for_namespace(
            namespace.as_str(),
            now,
            self.min_phase_interval,
            command.actor(),
        );
        let change = match decide::namespace::decide_webhook(command, &existing, &context) {
            Some(Ok(change)) => change,
            Some(Err(error)) => {
                return remember(&mut connection, keys, command_id, Err(error)).await
            }
            None => return Err(WireError::internal("not a webhook command")),
        };
        let mut details = change.details(&existing);
        details["command_id"] = serde_json::json!(command_id);
        let audit = namespace_audit(namespace, now, actor, change.kind(), details);
        match &change {
            WebhookChange::Put(record) => webhooks::put(&mut connection, keys, record, &audit)
                .await
                .map_err(store)?,
            WebhookChange::Delete(id) => {
                // a concurrent delete of the same webhook may have come first: same outcome
                webhooks::delete(&mut connection, keys, id, &audit)
                    .await
                    .map_err(store)?;
            }
        }
        let list = crate::queries::webhook_list(&mut connection, namespace, keys)
            .await
            .map_err(store)?;
        remember(
            &mut connection,
            keys,
            command_id,
            Ok(CommandReply::Webhooks(list)),
        )
        .await
    }
}

/// An entry of the namespace's own audit log (freezes, webhooks) by `actor` at `now`.
fn namespace_audit(
    namespace: &Namespace,
    now: rollout_core::Timestamp,
    actor: &Actor,
    kind: rollout_wire::events::EventKind,
    details: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        time: now,
        actor: actor.name.clone(),
        kind,
        namespace: namespace.as_str().to_owned(),
        flag: String::new(),
        rollout_id: None,
        from: None,
        to: None,
        details,
        trace_id: actor.trace_id.clone(),
    }
}

/// Records an outcome that changed nothing as the command's first outcome, so that every
/// retry of the same id gets it (SPEC §11.1), and returns the outcome that stands (another
/// attempt may have stored one first).
///
/// No-ops (disabling a disabled flag) and every refusal of [`decide`] are remembered: those
/// depend on state (a candidate that is the off variation, a stop percentage on a staged
/// rollout, an `execute_at` now past), so a retry must not apply where the first attempt
/// did nothing. Input that [`Command::validate`] refuses is refused identically on every
/// retry without storing anything (bad input changes nothing, SPEC §11), and transient
/// failures stay retryable.
async fn remember(
    connection: &mut Connection,
    keys: &Keys,
    command_id: Option<&str>,
    outcome: Result<CommandReply, WireError>,
) -> Result<CommandReply, WireError> {
    let remembered = match &outcome {
        Ok(_) => true,
        Err(error) => matches!(
            error.code,
            ErrorCode::Conflict
                | ErrorCode::FailedPrecondition
                | ErrorCode::NotFound
                | ErrorCode::InvalidArgument
        ),
    };
    let Some(id) = command_id.filter(|_| remembered) else {
        return outcome;
    };
    let encoded = encode_reply(&outcome, Encoding::Json);
    let standing = store_unchanged_outcome(
        connection,
        keys,
        id,
        &encoded,
        rollout_store::mutation::COMMAND_OUTCOME_TTL_SECONDS,
    )
    .await
    .map_err(|store_error| store_error.to_wire())?;
    decode_reply(&standing, Encoding::Json)
}

/// How long an alert's result is kept to recognise its repeats: a week.
const ALERT_REMEMBERED_SECONDS: u64 = 7 * 24 * 3600;

/// The first result of an alert acted on before, stored as `stored`, marked `repeated`.
fn repeated_alert(stored: &[u8]) -> Result<AlertResult, WireError> {
    let mut first: AlertResult = serde_json::from_slice(stored)
        .map_err(|error| WireError::internal(format!("stored alert result: {error}")))?;
    first.repeated = true;
    Ok(first)
}

fn random_hex(bytes: usize) -> String {
    use std::fmt::Write as _;
    let mut generator = rand::rng();
    let mut text = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        // writing to a String cannot fail
        let _ = write!(text, "{:02x}", generator.random::<u8>());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::random_hex;

    #[test]
    fn random_hex_is_two_lowercase_hex_digits_per_byte_and_differs_between_calls() {
        for bytes in [1, 8, 12, 16] {
            let text = random_hex(bytes);
            assert_eq!(text.len(), bytes * 2, "{text}");
            assert!(
                text.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
                "{text}"
            );
        }
        assert_ne!(random_hex(16), random_hex(16));
    }
}
