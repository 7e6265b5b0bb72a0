//! Fleet agents and per-stage counts (SPEC §3.4). Evaluators write agents (labels, last
//! heartbeat) and their applied/failed reports; the planner's status query and the ticker's
//! completion gates read the counts, computed the same way by [`stage_counts`].
//!
//! - `ro:{ns}:agent:<id>`: hash `{labels: JSON object, attributes: JSON object,
//!   registered_at, last_seen}` (times in ms)
//! - `ro:{ns}:agents`: zset agent id → last heartbeat (ms)
//! - `ro:{ns}:rollout:<id>:reports`: hash agent id → `applied:<variation>` | `failed:<variation>`
//!
//! Membership is computed from labels at read time, so an agent that registers mid-rollout
//! joins its stage at once, and one counted in an earlier stage is never counted again.

use std::collections::HashMap;

use crate::keys::Keys;
use redis::aio::ConnectionLike;
use rollout_core::{
    plan::stage_of, Attributes, BucketSeed, DurationMs, Labels, Plan, RolloutState, StageCounts,
    Timestamp,
};

use crate::StoreError;

/// An agent as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// Agent id.
    pub id: String,
    /// Its labels.
    pub labels: Labels,
    /// Its targeting attributes (flags evaluated for the agent see them).
    pub attributes: Attributes,
    /// Last registration or heartbeat.
    pub last_seen: Timestamp,
}

/// What an agent reported for a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Applied this variation.
    Applied(String),
    /// Failed to apply this variation.
    Failed(String),
}

impl Report {
    /// The stored form, `applied:<variation>` / `failed:<variation>`.
    pub fn encode(&self) -> String {
        match self {
            Report::Applied(variation) => format!("applied:{variation}"),
            Report::Failed(variation) => format!("failed:{variation}"),
        }
    }

    /// Reads the stored form.
    pub fn decode(text: &str) -> Option<Report> {
        let (status, variation) = text.split_once(':')?;
        match status {
            "applied" => Some(Report::Applied(variation.to_owned())),
            "failed" => Some(Report::Failed(variation.to_owned())),
            _ => None,
        }
    }
}

/// How long a silent agent is remembered unless configured otherwise: a week.
pub const DEFAULT_AGENT_EXPIRY: DurationMs = DurationMs::from_minutes(7 * 24 * 60);

/// Registers (or re-registers, with new labels and attributes) an agent, seen at its
/// `last_seen`. Its record expires after `expire_after` without a heartbeat, and agents
/// silent that long leave the agent index (see [`forget_expired`]).
pub async fn register_agent<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    agent: &Agent,
    expire_after: DurationMs,
) -> Result<(), StoreError> {
    let labels = serde_json::to_string(&agent.labels)
        .map_err(|error| StoreError::Corrupt(error.to_string()))?;
    let attributes = serde_json::to_string(&agent.attributes)
        .map_err(|error| StoreError::Corrupt(error.to_string()))?;
    redis::pipe()
        .atomic()
        .hset_multiple(
            keys.agent(&agent.id),
            &[
                ("labels", labels),
                ("attributes", attributes),
                ("last_seen", agent.last_seen.as_millis().to_string()),
            ],
        )
        .hset_nx(
            keys.agent(&agent.id),
            "registered_at",
            agent.last_seen.as_millis(),
        )
        .zadd(keys.agents(), &agent.id, agent.last_seen.as_millis())
        .pexpire(keys.agent(&agent.id), expire_after.as_millis())
        .ignore()
        .query_async::<()>(connection)
        .await?;
    forget_expired(connection, keys, agent.last_seen, expire_after).await
}

/// Removes agents silent for `expire_after` or longer from the agent index (their records
/// expire by themselves).
pub async fn forget_expired<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    now: Timestamp,
    expire_after: DurationMs,
) -> Result<(), StoreError> {
    let cutoff = now.as_millis() - expire_after.as_millis();
    let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
        .arg(keys.agents())
        .arg("-inf")
        .arg(format!("({cutoff}"))
        .query_async(connection)
        .await?;
    Ok(())
}

/// Records a heartbeat, renewing the record's expiry; `false` when the agent never
/// registered (or expired).
pub async fn heartbeat<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    agent_id: &str,
    now: Timestamp,
    expire_after: DurationMs,
) -> Result<bool, StoreError> {
    let known: bool = redis::cmd("EXISTS")
        .arg(keys.agent(agent_id))
        .query_async(connection)
        .await?;
    if !known {
        return Ok(false);
    }
    redis::pipe()
        .atomic()
        .hset(keys.agent(agent_id), "last_seen", now.as_millis())
        .zadd(keys.agents(), agent_id, now.as_millis())
        .pexpire(keys.agent(agent_id), expire_after.as_millis())
        .ignore()
        .query_async::<()>(connection)
        .await?;
    Ok(true)
}

/// Reads one agent.
pub async fn load_agent<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    agent_id: &str,
) -> Result<Option<Agent>, StoreError> {
    let (labels, attributes, last_seen): (Option<String>, Option<String>, Option<i64>) =
        redis::cmd("HMGET")
            .arg(keys.agent(agent_id))
            .arg("labels")
            .arg("attributes")
            .arg("last_seen")
            .query_async(connection)
            .await?;
    let Some(labels) = labels else {
        return Ok(None);
    };
    Ok(Some(Agent {
        id: agent_id.to_owned(),
        labels: decode_json(&labels, agent_id, "labels")?,
        attributes: attributes
            .map(|text| decode_json(&text, agent_id, "attributes"))
            .transpose()?
            .unwrap_or_default(),
        last_seen: Timestamp::from_millis(last_seen.unwrap_or(0)),
    }))
}

fn decode_json<T: serde::de::DeserializeOwned>(
    text: &str,
    agent_id: &str,
    field: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|error| StoreError::Corrupt(format!("agent {agent_id} {field}: {error}")))
}

/// Reads every agent of a namespace.
pub async fn load_agents<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
) -> Result<Vec<Agent>, StoreError> {
    let ids: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(keys.agents())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(connection)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (id, _) in &ids {
        pipe.cmd("HMGET")
            .arg(keys.agent(id))
            .arg("labels")
            .arg("attributes");
    }
    let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(connection).await?;
    let mut agents = Vec::with_capacity(ids.len());
    for ((id, last_seen), (labels, attributes)) in ids.into_iter().zip(rows) {
        let Some(labels) = labels else { continue };
        agents.push(Agent {
            labels: decode_json(&labels, &id, "labels")?,
            attributes: attributes
                .map(|text| decode_json(&text, &id, "attributes"))
                .transpose()?
                .unwrap_or_default(),
            id,
            last_seen: Timestamp::from_millis(last_seen),
        });
    }
    Ok(agents)
}

/// Records an agent's report for a rollout (the latest report wins).
pub async fn record_report<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    rollout_id: &str,
    agent_id: &str,
    report: &Report,
) -> Result<(), StoreError> {
    let _: i64 = redis::cmd("HSET")
        .arg(keys.stage_reports(rollout_id))
        .arg(agent_id)
        .arg(report.encode())
        .query_async(connection)
        .await?;
    Ok(())
}

/// Reads every report of a rollout.
pub async fn load_reports<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    rollout_id: &str,
) -> Result<HashMap<String, Report>, StoreError> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.stage_reports(rollout_id))
        .query_async(connection)
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|(agent, text)| Report::decode(&text).map(|report| (agent, report)))
        .collect())
}

/// Per-step counts of a label-stage rollout (one entry per step, `unassigned` last):
/// members by the step that releases them — their first matching stage, and within a stage
/// with waves the first wave whose share holds their bucket (SPEC §12) —; among released
/// steps, `completed` applied the candidate, `errors` reported failure, `stale` stopped
/// heartbeating (older than `stale_after`) without reporting, `pending` the rest; members
/// of unreleased steps are `waiting` (or `stale`).
pub fn stage_counts(
    plan: &Plan,
    state: &RolloutState,
    agents: &[Agent],
    reports: &HashMap<String, Report>,
    now: Timestamp,
    stale_after: DurationMs,
) -> Vec<StageCounts> {
    let stages = plan.stage_labels();
    let seed = BucketSeed::from_salt(&plan.salt);
    let mut counts = vec![StageCounts::default(); plan.steps.len()];
    let released = state.released_stages();
    for agent in agents {
        let Some(stage) =
            plan.releasing_step(stage_of(&stages, &agent.labels), seed.bucket(&agent.id))
        else {
            continue;
        };
        let Some(entry) = counts.get_mut(stage) else {
            continue;
        };
        entry.members += 1;
        let stale = now.millis_since(agent.last_seen) > stale_after.as_millis();
        match reports.get(&agent.id) {
            Some(Report::Applied(variation))
                if stage < released && *variation == plan.candidate =>
            {
                entry.completed += 1
            }
            Some(Report::Failed(_)) if stage < released => entry.errors += 1,
            _ if stale => entry.stale += 1,
            _ if stage < released => entry.pending += 1,
            _ => entry.waiting += 1,
        }
    }
    counts
}

/// Loads agents and reports and computes [`stage_counts`]; empty for share rollouts.
pub async fn load_stage_counts<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    rollout_id: &str,
    plan: &Plan,
    state: &RolloutState,
    now: Timestamp,
    stale_after: DurationMs,
) -> Result<Vec<StageCounts>, StoreError> {
    if !plan.is_staged() {
        return Ok(Vec::new());
    }
    let agents = load_agents(connection, keys).await?;
    let reports = load_reports(connection, keys, rollout_id).await?;
    Ok(stage_counts(
        plan,
        state,
        &agents,
        &reports,
        now,
        stale_after,
    ))
}
