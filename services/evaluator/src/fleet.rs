//! Fleet agents on `rollout.fleet.<ns>.<verb>` (SPEC §3.4), queue group `evaluator`:
//! `register` stores the agent with its labels (it joins its label stage at once, since
//! stage membership is computed from labels when counted), `heartbeat` keeps it alive,
//! `desired` answers which variation it should run given the released stages, and
//! `report` records that it applied (or failed to apply) a variation, which feeds the
//! per-stage counts of `rollout_store::fleet::stage_counts`. A report counts only if it
//! can: from a registered agent, for a variation of an existing flag and a rollout of that
//! flag; anything else is refused and stores nothing.
//!
//! An agent is evaluated as the entity `{id: agent_id, labels}` with the labels stored in
//! Redis (cached for `agent_cache_ttl`), so every replica gives it the same answer. Any
//! fleet call proves the agent alive: `desired` and `report` refresh its heartbeat when
//! the last refresh this replica made is older than a quarter of `stale_agent_after`, so
//! an agent that only polls is never counted stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rollout_core::plan::stage_of;
use rollout_core::{DurationMs, Entity, Labels, ViewAudience};
use rollout_store::fleet::{self, Agent, Report};
use rollout_store::Keys;
use rollout_store::StoreError;
use rollout_wire::envelope::{encode_reply, ErrorCode, WireError};
use rollout_wire::fleet::{
    AgentAck, AgentHeartbeat, AgentRegister, AgentReport, Desired, DesiredQuery, FleetRequest,
    ReportStatus,
};
use rollout_wire::subjects::{Namespace, Route};
use serde::Serialize;

use crate::eval::unknown_flag;
use crate::Shared;
use rollout_runtime::serve::{request_encoding, send_reply};

/// Entries kept before a cache starts over (bounds memory against agent-id floods).
const CACHE_LIMIT: usize = 100_000;

/// The reply of any fleet call.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FleetReply {
    /// `register`, `heartbeat`, `report`.
    Ack(AgentAck),
    /// `desired`.
    Desired(Desired),
}

#[derive(Debug)]
struct CachedAgent {
    profile: AgentProfile,
    read_at: Instant,
    refreshed_at: Option<Instant>,
}

/// What an agent is evaluated with: its labels and attributes.
#[derive(Clone, Debug, Default, PartialEq)]
struct AgentProfile {
    labels: Labels,
    attributes: rollout_core::Attributes,
}

/// Agents' profiles as recently read, and when this replica last refreshed each one's
/// heartbeat.
#[derive(Debug, Default)]
pub struct AgentCache {
    entries: Mutex<HashMap<(String, String), CachedAgent>>,
}

impl AgentCache {
    fn profile(&self, namespace: &str, agent_id: &str, ttl: Duration) -> Option<AgentProfile> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = entries.get(&(namespace.to_owned(), agent_id.to_owned()))?;
        (cached.read_at.elapsed() < ttl).then(|| cached.profile.clone())
    }

    fn remember(&self, namespace: &str, agent_id: &str, profile: AgentProfile, refreshed: bool) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_LIMIT {
            entries.clear();
        }
        let now = Instant::now();
        let entry = entries
            .entry((namespace.to_owned(), agent_id.to_owned()))
            .or_insert(CachedAgent {
                profile: AgentProfile::default(),
                read_at: now,
                refreshed_at: None,
            });
        entry.profile = profile;
        entry.read_at = now;
        if refreshed {
            entry.refreshed_at = Some(now);
        }
    }

    /// Whether the agent's heartbeat should be refreshed now; if so, notes it as done.
    fn claim_refresh(&self, namespace: &str, agent_id: &str, every: Duration) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get_mut(&(namespace.to_owned(), agent_id.to_owned())) {
            Some(entry) => {
                let due = entry
                    .refreshed_at
                    .is_none_or(|refreshed| refreshed.elapsed() >= every);
                if due {
                    entry.refreshed_at = Some(Instant::now());
                }
                due
            }
            None => true,
        }
    }
}

/// What the fleet calls need to know of a rollout: its flag and its stage names. A plan
/// never changes, so each rollout is read from Redis once; a rollout not found is not
/// remembered, since it may be created later.
#[derive(Debug, Default)]
pub struct KnownRollouts {
    entries: Mutex<HashMap<(String, String), Arc<RolloutFacts>>>,
}

/// The unchanging facts of one rollout.
#[derive(Debug)]
struct RolloutFacts {
    /// The flag it rolls out.
    flag: String,
    /// The names of its label stages, `unassigned` last (empty for percentage plans).
    stage_names: Vec<String>,
}

impl KnownRollouts {
    async fn facts(
        &self,
        shared: &Shared,
        keys: &Keys,
        namespace: &str,
        rollout_id: &str,
    ) -> Result<Option<Arc<RolloutFacts>>, StoreError> {
        let cache_key = (namespace.to_owned(), rollout_id.to_owned());
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&cache_key)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let mut connection = shared.io.redis.clone();
        let Some(record) = rollout_store::load_rollout(&mut connection, keys, rollout_id).await?
        else {
            return Ok(None);
        };
        let facts = Arc::new(RolloutFacts {
            flag: record.spec.flag.clone(),
            stage_names: record.plan.stage_names(),
        });
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_LIMIT {
            entries.clear();
        }
        entries.insert(cache_key, Arc::clone(&facts));
        Ok(Some(facts))
    }
}

/// Handles one message of `rollout.fleet.*.*`.
pub(crate) async fn handle(shared: &Shared, message: async_nats::Message) {
    let encoding = request_encoding(message.headers.as_ref());
    let (verb, outcome) = match shared.io.subjects.parse(message.subject.as_str()) {
        Ok(Route::Fleet { namespace, verb }) => {
            let outcome = match FleetRequest::decode(verb, &message.payload, encoding) {
                Ok(request) => dispatch(shared, &namespace, request).await,
                Err(error) => Err(WireError::from(error)),
            };
            (Some(verb), outcome)
        }
        Ok(_) | Err(_) => (
            None,
            Err(WireError::invalid_argument(
                "subject",
                format!("{} is not a fleet subject", message.subject),
            )),
        ),
    };
    let code = outcome.as_ref().err().map(|error| error.code);
    if let Some(verb) = verb {
        shared.metrics.add_fleet(verb, code);
    }
    if let Err(error) = &outcome {
        if matches!(error.code, ErrorCode::Internal | ErrorCode::Unavailable) {
            tracing::warn!(%error, subject = %message.subject, "fleet call failed");
        }
    }
    send_reply(
        &shared.io.nats,
        message.reply,
        encoding,
        encode_reply(&outcome, encoding),
    )
    .await;
}

/// Validates and runs one fleet call in `namespace`.
pub async fn dispatch(
    shared: &Shared,
    namespace: &Namespace,
    request: FleetRequest,
) -> Result<FleetReply, WireError> {
    request.validate()?;
    let keys = Keys::new(namespace);
    match request {
        FleetRequest::Register(register) => {
            self::register(shared, namespace, &keys, register).await
        }
        FleetRequest::Heartbeat(beat) => heartbeat(shared, &keys, beat).await,
        FleetRequest::Desired(query) => desired(shared, namespace, &keys, query)
            .await
            .map(FleetReply::Desired),
        FleetRequest::Report(report) => self::report(shared, namespace, &keys, report).await,
    }
}

async fn register(
    shared: &Shared,
    namespace: &Namespace,
    keys: &Keys,
    register: AgentRegister,
) -> Result<FleetReply, WireError> {
    let mut connection = shared.io.redis.clone();
    let now = rollout_store::redis_time(&mut connection)
        .await
        .map_err(|error| error.to_wire())?;
    let agent = Agent {
        id: register.agent_id.clone(),
        labels: register.labels.clone(),
        attributes: register.attributes.clone(),
        last_seen: now,
    };
    fleet::register_agent(&mut connection, keys, &agent, agent_expiry(shared))
        .await
        .map_err(|error| error.to_wire())?;
    shared.fleet.agents.remember(
        namespace.as_str(),
        &register.agent_id,
        AgentProfile {
            labels: register.labels,
            attributes: register.attributes,
        },
        true,
    );
    tracing::debug!(namespace = %namespace, agent = %register.agent_id, "agent registered");
    Ok(FleetReply::Ack(AgentAck {
        agent_id: register.agent_id,
    }))
}

async fn heartbeat(
    shared: &Shared,
    keys: &Keys,
    beat: AgentHeartbeat,
) -> Result<FleetReply, WireError> {
    let mut connection = shared.io.redis.clone();
    let now = rollout_store::redis_time(&mut connection)
        .await
        .map_err(|error| error.to_wire())?;
    let known = fleet::heartbeat(
        &mut connection,
        keys,
        &beat.agent_id,
        now,
        agent_expiry(shared),
    )
    .await
    .map_err(|error| error.to_wire())?;
    if !known {
        return Err(WireError::not_found(format!(
            "agent {} is not registered; register it again",
            beat.agent_id
        ))
        .with_field("agent_id"));
    }
    Ok(FleetReply::Ack(AgentAck {
        agent_id: beat.agent_id,
    }))
}

/// How long a silent agent is remembered.
fn agent_expiry(shared: &Shared) -> DurationMs {
    DurationMs::from_millis(
        i64::try_from(shared.settings.agent_expire_after.as_millis()).unwrap_or(i64::MAX),
    )
}

/// Refreshes the agent's heartbeat when this replica has not done so lately.
async fn refresh_liveness(shared: &Shared, namespace: &Namespace, keys: &Keys, agent_id: &str) {
    let every = shared.settings.stale_agent_after / 4;
    if !shared
        .fleet
        .agents
        .claim_refresh(namespace.as_str(), agent_id, every)
    {
        return;
    }
    let mut connection = shared.io.redis.clone();
    let refreshed = match rollout_store::redis_time(&mut connection).await {
        Ok(now) => {
            fleet::heartbeat(&mut connection, keys, agent_id, now, agent_expiry(shared)).await
        }
        Err(error) => Err(error),
    };
    if let Err(error) = refreshed {
        tracing::debug!(%error, agent = %agent_id, "liveness refresh failed");
    }
}

async fn agent_profile(
    shared: &Shared,
    namespace: &Namespace,
    keys: &Keys,
    agent_id: &str,
) -> Result<AgentProfile, WireError> {
    if let Some(profile) = shared.fleet.agents.profile(
        namespace.as_str(),
        agent_id,
        shared.settings.agent_cache_ttl,
    ) {
        return Ok(profile);
    }
    let mut connection = shared.io.redis.clone();
    let agent = fleet::load_agent(&mut connection, keys, agent_id)
        .await
        .map_err(|error| error.to_wire())?
        .ok_or_else(|| {
            WireError::not_found(format!(
                "agent {agent_id} is not registered in namespace {namespace}; register it first"
            ))
            .with_field("agent_id")
        })?;
    let profile = AgentProfile {
        labels: agent.labels,
        attributes: agent.attributes,
    };
    shared
        .fleet
        .agents
        .remember(namespace.as_str(), agent_id, profile.clone(), false);
    Ok(profile)
}

/// What the evaluation of a `desired` query decided, before the stage is named.
struct Decided {
    desired: Desired,
    stage: Option<(String, usize)>,
}

async fn desired(
    shared: &Shared,
    namespace: &Namespace,
    keys: &Keys,
    query: DesiredQuery,
) -> Result<Desired, WireError> {
    let profile = agent_profile(shared, namespace, keys, &query.agent_id).await?;
    refresh_liveness(shared, namespace, keys, &query.agent_id).await;
    let entity = Entity {
        id: query.agent_id.clone(),
        attributes: profile.attributes,
        labels: profile.labels,
    };
    let decided = shared
        .served
        .snapshot
        .namespace(namespace.as_str())
        .and_then(|snapshot| {
            snapshot.with_flag(&query.flag, |live| {
                let evaluation = live.compiled().evaluate(&entity);
                let stage = match (evaluation.rollout_id, live.rollout()) {
                    (Some(rollout_id), Some(view)) => match &view.audience {
                        ViewAudience::Stages { stages, .. } => {
                            Some((rollout_id.to_owned(), stage_of(stages, &entity.labels)))
                        }
                        ViewAudience::Share(_) => None,
                    },
                    _ => None,
                };
                Decided {
                    desired: Desired {
                        flag: query.flag.clone(),
                        variation: evaluation.variation.to_owned(),
                        value: evaluation.value.clone(),
                        rollout_id: evaluation.rollout_id.map(str::to_owned),
                        stage: None,
                        version: live.version(),
                    },
                    stage,
                }
            })
        })
        .ok_or_else(|| unknown_flag(&query.flag, namespace.as_str()))?;
    let mut desired = decided.desired;
    if let Some((rollout_id, stage)) = decided.stage {
        match shared
            .fleet
            .rollouts
            .facts(shared, keys, namespace.as_str(), &rollout_id)
            .await
        {
            Ok(facts) => {
                desired.stage = facts.and_then(|facts| facts.stage_names.get(stage).cloned())
            }
            Err(error) => {
                tracing::warn!(%error, rollout = %rollout_id, "stage names unavailable; answering without the stage")
            }
        }
    }
    Ok(desired)
}

/// Records an agent's report after checking that it can count: the agent is registered,
/// the flag exists and has the variation, and the rollout (named, else the flag's active
/// one, else the one that last finished on it) is a rollout of that flag. A report that
/// fails a check changes nothing.
async fn report(
    shared: &Shared,
    namespace: &Namespace,
    keys: &Keys,
    report: AgentReport,
) -> Result<FleetReply, WireError> {
    agent_profile(shared, namespace, keys, &report.agent_id).await?;
    let (has_variation, active) = shared
        .served
        .snapshot
        .namespace(namespace.as_str())
        .and_then(|snapshot| {
            snapshot.with_flag(&report.flag, |live| {
                (
                    live.compiled().has_variation(&report.variation),
                    // no rollout runs: the one that last finished (agents finish applying
                    // its last stage after it completed, without knowing its id)
                    live.rollout()
                        .map(|view| view.rollout_id.clone())
                        .or_else(|| live.last_rollout().map(str::to_owned)),
                )
            })
        })
        .ok_or_else(|| unknown_flag(&report.flag, namespace.as_str()))?;
    if !has_variation {
        return Err(WireError::invalid_argument(
            "variation",
            format!(
                "flag {} has no variation {:?}",
                report.flag, report.variation
            ),
        ));
    }
    let rollout_id = match (&report.rollout_id, active) {
        (Some(named), _) => {
            let facts = shared
                .fleet
                .rollouts
                .facts(shared, keys, namespace.as_str(), named)
                .await
                .map_err(|error| error.to_wire())?
                .ok_or_else(|| {
                    WireError::not_found(format!(
                        "rollout {named} does not exist in namespace {namespace}"
                    ))
                    .with_field("rollout_id")
                })?;
            if facts.flag != report.flag {
                return Err(WireError::invalid_argument(
                    "rollout_id",
                    format!(
                        "rollout {named} rolls out flag {}, not {}",
                        facts.flag, report.flag
                    ),
                ));
            }
            named.clone()
        }
        (None, Some(active)) => active,
        (None, None) => {
            return Err(WireError::failed_precondition(format!(
                "flag {} has no active or finished rollout; name the rollout_id the report is for",
                report.flag
            ))
            .with_field("rollout_id"))
        }
    };
    let stored = match report.status {
        ReportStatus::Applied => Report::Applied(report.variation.clone()),
        ReportStatus::Failed => Report::Failed(report.variation.clone()),
    };
    let mut connection = shared.io.redis.clone();
    fleet::record_report(
        &mut connection,
        keys,
        &rollout_id,
        &report.agent_id,
        &stored,
    )
    .await
    .map_err(|error| error.to_wire())?;
    refresh_liveness(shared, namespace, keys, &report.agent_id).await;
    tracing::debug!(namespace = %namespace, agent = %report.agent_id, rollout = %rollout_id, report = %stored.encode(), "agent report recorded");
    Ok(FleetReply::Ack(AgentAck {
        agent_id: report.agent_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_cache_expires_profiles_and_spaces_refreshes() {
        let cache = AgentCache::default();
        assert_eq!(cache.profile("prod", "a", Duration::from_secs(60)), None);
        assert!(cache.claim_refresh("prod", "a", Duration::from_secs(60)));
        let profile = AgentProfile {
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            attributes: [(
                "arch".to_owned(),
                rollout_core::AttributeValue::String("arm64".to_owned()),
            )]
            .into(),
        };
        cache.remember("prod", "a", profile.clone(), true);
        assert_eq!(
            cache.profile("prod", "a", Duration::from_secs(60)),
            Some(profile)
        );
        assert_eq!(cache.profile("prod", "a", Duration::ZERO), None);
        assert!(!cache.claim_refresh("prod", "a", Duration::from_secs(60)));
        assert!(cache.claim_refresh("prod", "a", Duration::ZERO));
    }
}
