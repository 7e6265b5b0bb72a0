//! Executes commands: load the records, [`decide`], commit through the store's one script,
//! publish the committed events, reply. A revision conflict (another planner replica or
//! the ticker changed the same flag or rollout meanwhile) means load and decide again; a
//! command id seen before returns its first outcome and changes nothing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use redis::aio::ConnectionManager;
use rollout_core::DurationMs;
use rollout_store::{
    load_flag, load_rollout, redis_time, store_refusal, stored_outcome, Actor, CommitOutcome,
    Mutation, StoreError,
};
use rollout_wire::codec::Encoding;
use rollout_wire::commands::Command;
use rollout_wire::envelope::{decode_reply, encode_reply, ErrorCode, WireError};
use rollout_wire::keys::{self, Keys};
use rollout_wire::subjects::Namespace;

use crate::decide::{decide, Change, DecideContext, Decision, Loaded};
use rollout_store::Relay;

/// How often a command is decided again after revision conflicts before giving up.
const MAX_ATTEMPTS: u32 = 16;

/// Executes commands against Redis; cheap to clone.
#[derive(Clone, Debug)]
pub struct Executor {
    redis: ConnectionManager,
    relay: Relay,
    min_phase_interval: DurationMs,
    namespaces_registered: Arc<Mutex<HashSet<String>>>,
}

impl Executor {
    /// An executor committing through `redis` and publishing through `relay`.
    pub fn new(redis: ConnectionManager, relay: Relay, min_phase_interval: DurationMs) -> Executor {
        Executor {
            redis,
            relay,
            min_phase_interval,
            namespaces_registered: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Runs `command` in `namespace`; `traceparent` is the command's W3C trace context.
    pub async fn execute(
        &self,
        namespace: &Namespace,
        command: &Command,
        traceparent: Option<String>,
    ) -> Result<serde_json::Value, WireError> {
        command.validate()?;
        let keys = Keys::new(namespace);
        let mut connection = self.redis.clone();
        self.register_namespace(&mut connection, namespace).await?;
        let command_id = command.command_id().map(str::to_owned);
        if let Some(id) = &command_id {
            if let Some(stored) = stored_outcome(&mut connection, &keys, id)
                .await
                .map_err(|error| error.to_wire())?
            {
                return decode_reply(&stored, Encoding::Json);
            }
        }
        let actor = Actor {
            name: command.actor().unwrap_or("operator").to_owned(),
            command_id: command_id.clone(),
            trace_id: traceparent.as_deref().and_then(trace_id_of),
        };
        for attempt in 0..MAX_ATTEMPTS {
            let now = redis_time(&mut connection)
                .await
                .map_err(|error| error.to_wire())?;
            let loaded = load(&mut connection, &keys, command)
                .await
                .map_err(|error| error.to_wire())?;
            let context = DecideContext {
                namespace: namespace.as_str().to_owned(),
                now,
                min_phase_interval: self.min_phase_interval,
                fresh_salt: random_hex(16),
                new_rollout_id: format!("r-{}", random_hex(12)),
                actor: command.actor().map(str::to_owned),
                traceparent: traceparent.clone(),
            };
            let change = match decide(command, &loaded, &context) {
                Ok(Decision::Change(change)) => change,
                Ok(Decision::Unchanged(result)) => return Ok(result),
                Err(error) => {
                    return self
                        .refuse(&mut connection, &keys, command_id.as_deref(), error)
                        .await
                }
            };
            let result = change.result.clone();
            let stored = encode_reply::<serde_json::Value>(&Ok(result.clone()), Encoding::Json);
            let prepared = build_mutation(&keys, namespace, now, actor.clone(), *change)
                .into_commit(Some(stored))
                .map_err(|error| error.to_wire())?;
            match prepared
                .commit
                .execute(&mut connection)
                .await
                .map_err(|error| error.to_wire())?
            {
                CommitOutcome::Committed { outbox_ids, .. } => {
                    crate::failpoint::hit("planner.after_commit");
                    self.relay
                        .publish_committed(&keys, &prepared.events, &outbox_ids)
                        .await;
                    return Ok(result);
                }
                CommitOutcome::Duplicate(first) => return decode_reply(&first, Encoding::Json),
                CommitOutcome::Conflict { key, actual } => {
                    tracing::debug!(%key, actual, attempt, "revision conflict, deciding again");
                    let jitter_ms = rand::rng().random_range(0..=(1_u64 << attempt.min(6)));
                    tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
                }
                CommitOutcome::Fenced { .. } | CommitOutcome::Early { .. } => {
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

    /// Records a state-dependent refusal as the command's first outcome (so a retry of the
    /// same id gets the same answer), and returns the outcome that stands.
    async fn refuse(
        &self,
        connection: &mut ConnectionManager,
        keys: &Keys,
        command_id: Option<&str>,
        error: WireError,
    ) -> Result<serde_json::Value, WireError> {
        // Only refusals that depend on state are remembered: a retry must not succeed where
        // the first attempt was refused. Invalid input is refused identically on every retry
        // without storing anything (bad input changes nothing, SPEC §11), and transient
        // failures must stay retryable.
        let remembered = matches!(
            error.code,
            ErrorCode::Conflict | ErrorCode::FailedPrecondition | ErrorCode::NotFound
        );
        let Some(id) = command_id.filter(|_| remembered) else {
            return Err(error);
        };
        let refusal = encode_reply::<serde_json::Value>(&Err(error.clone()), Encoding::Json);
        let standing = store_refusal(
            connection,
            keys,
            id,
            &refusal,
            rollout_store::mutation::COMMAND_OUTCOME_TTL_SECONDS,
        )
        .await
        .map_err(|store_error| store_error.to_wire())?;
        decode_reply(&standing, Encoding::Json)
    }

    async fn register_namespace(
        &self,
        connection: &mut ConnectionManager,
        namespace: &Namespace,
    ) -> Result<(), WireError> {
        let known = self
            .namespaces_registered
            .lock()
            .map(|registered| registered.contains(namespace.as_str()))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        let _: i64 = redis::cmd("SADD")
            .arg(keys::namespaces())
            .arg(namespace.as_str())
            .query_async(connection)
            .await
            .map_err(|error| StoreError::Redis(error).to_wire())?;
        if let Ok(mut registered) = self.namespaces_registered.lock() {
            registered.insert(namespace.as_str().to_owned());
        }
        Ok(())
    }
}

/// Loads what `command` reads: the flag (and its active rollout) for flag commands and
/// `rollout.create`; the rollout and then its flag for rollout commands.
async fn load(
    connection: &mut ConnectionManager,
    keys: &Keys,
    command: &Command,
) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    if let Some(rollout_id) = command.rollout_id() {
        loaded.rollout = load_rollout(connection, keys, rollout_id).await?;
        if let Some(rollout) = &loaded.rollout {
            loaded.flag = Some(load_flag(connection, keys, &rollout.plan.flag).await?);
        }
        return Ok(loaded);
    }
    if let Some(flag_key) = command.flag_key() {
        let stored = load_flag(connection, keys, flag_key).await?;
        if let Some(active_id) = stored
            .record
            .as_ref()
            .and_then(|record| record.active_rollout.clone())
        {
            loaded.active_rollout = load_rollout(connection, keys, &active_id).await?;
        }
        loaded.flag = Some(stored);
    }
    Ok(loaded)
}

fn build_mutation<'k>(
    keys: &'k Keys,
    namespace: &Namespace,
    now: rollout_core::Timestamp,
    actor: Actor,
    change: Change,
) -> Mutation<'k> {
    let mut mutation = Mutation::new(
        keys,
        namespace.as_str(),
        &change.flag_key,
        change.flag_version,
        now,
        actor,
    );
    if let Some(record) = change.flag {
        mutation.flag(record, change.flag_created);
    }
    if let Some((revision, record)) = change.rollout {
        mutation.rollout(revision, record);
    }
    if let Some(record) = change.deleted_rollout {
        mutation.delete_rollout(record);
    }
    for noted in change.noted {
        mutation.happened(
            noted.kind,
            noted.rollout_id.as_deref(),
            noted.from,
            noted.to,
        );
    }
    if let Some((rollout_id, before, effects)) = &change.effects {
        mutation.effects(rollout_id, before, effects);
    }
    for noted in change.noted_after {
        mutation.happened(
            noted.kind,
            noted.rollout_id.as_deref(),
            noted.from,
            noted.to,
        );
    }
    mutation
}

/// The trace id inside a W3C traceparent (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace_id = parts.next()?;
    (trace_id.len() == 32 && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .then(|| trace_id.to_owned())
}

fn random_hex(bytes: usize) -> String {
    let mut generator = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", generator.random::<u8>()))
        .collect()
}
