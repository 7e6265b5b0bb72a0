//! Read-only queries on `rollout.query.<ns>.<what>`: flags, rollout status (steps with
//! planned and actual times, current share or stage, per-stage fleet counts, and which
//! health gate holds it and why, judged on what the ticker reads), the counters
//! behind a rollout's health gates (the rollout's own outcomes over the guard window, never
//! before its last resume, with the guard's verdict; stage counts), lists, the audit log (newest first, paged) and plan previews. Reads never
//! write.

use rollout_core::plan::Audience;
use rollout_core::{CompileContext, DurationMs};
use rollout_store::freezes;
use rollout_store::health::load_health;
use rollout_store::reads::{self, AuditLog};
use rollout_store::webhooks::{self, Webhook};
use rollout_store::Keys;
use rollout_store::{
    fleet, load_flag, load_rollout, outcomes, redis_time, Connection, RolloutRecord, StoreError,
};
use rollout_wire::checks::PageWindow;
use rollout_wire::commands::FlagResult;
use rollout_wire::envelope::WireError;
use rollout_wire::queries::{
    AuditPage, FlagCounts, FlagList, FlagSummary, GuardCounts, NamedStageCounts, PlanPreview,
    Query, QueryReply, RolloutCounts, RolloutList, RolloutListQuery, RolloutStatus, RolloutSummary,
    DEFAULT_COUNTS_WINDOW,
};
use rollout_wire::subjects::Namespace;
use rollout_wire::webhooks::WebhookList;

/// Answers queries from Redis; cheap to clone.
#[derive(Clone, Debug)]
pub struct Reader {
    redis: Connection,
    min_phase_interval: DurationMs,
    stale_agent_after: DurationMs,
}

impl Reader {
    /// A reader over `redis`.
    pub fn new(
        redis: Connection,
        min_phase_interval: DurationMs,
        stale_agent_after: DurationMs,
    ) -> Reader {
        Reader {
            redis,
            min_phase_interval,
            stale_agent_after,
        }
    }

    /// Answers `query` in `namespace`.
    pub async fn answer(
        &self,
        namespace: &Namespace,
        query: &Query,
    ) -> Result<QueryReply, WireError> {
        query.validate()?;
        let keys = Keys::new(namespace);
        let mut connection = self.redis.clone();
        let result = match query {
            Query::FlagGet(get) => self.flag(&mut connection, &keys, &get.key).await,
            Query::FlagList(list) => {
                self.flags(
                    &mut connection,
                    &keys,
                    PageWindow::new(list.page, list.page_size),
                )
                .await
            }
            Query::RolloutStatus(status) => {
                self.status(&mut connection, &keys, &status.rollout_id)
                    .await
            }
            Query::RolloutCounts(counts) => {
                self.counts(&mut connection, &keys, &counts.rollout_id)
                    .await
            }
            Query::FlagCounts(counts) => {
                self.flag_counts(&mut connection, &keys, &counts.key).await
            }
            Query::RolloutList(list) => {
                let window = PageWindow::new(list.page, list.page_size);
                self.rollouts(&mut connection, &keys, list, window).await
            }
            Query::RolloutAudit(audit) => {
                let log = match (&audit.rollout_id, &audit.flag) {
                    _ if audit.namespace => AuditLog::Namespace,
                    (Some(rollout_id), _) => AuditLog::Rollout(rollout_id),
                    (None, Some(flag)) => AuditLog::Flag(flag),
                    (None, None) => {
                        return Err(WireError::invalid_argument(
                            "rollout_id",
                            "give rollout_id or flag",
                        ))
                    }
                };
                self.audit(
                    &mut connection,
                    &keys,
                    log,
                    PageWindow::new(audit.page, audit.page_size),
                )
                .await
            }
            Query::RolloutPlan(plan) => self.preview(&mut connection, &keys, &plan.rollout).await,
            Query::NamespaceWebhooks(_) => webhook_list(&mut connection, namespace, &keys)
                .await
                .map(QueryReply::Webhooks)
                .map_err(QueryError::Store),
        };
        result.map_err(|error| match error {
            QueryError::Wire(wire) => wire,
            QueryError::Store(store) => store.to_wire(),
        })
    }
}

/// Most pending notices counted per webhook in a list.
const PENDING_COUNT_CAP: usize = 10_000;

/// The namespace's webhooks as shown (no secrets), each with how many notices wait for it.
pub async fn webhook_list(
    connection: &mut Connection,
    namespace: &Namespace,
    keys: &Keys,
) -> Result<WebhookList, StoreError> {
    let mut views = Vec::new();
    for webhook in webhooks::load(connection, keys).await? {
        let mut view = webhook.view();
        view.delivery.pending =
            webhooks::pending_count(connection, keys, &webhook.state.cursor, PENDING_COUNT_CAP)
                .await?;
        views.push(view);
    }
    Ok(WebhookList {
        namespace: namespace.as_str().to_owned(),
        webhooks: views,
    })
}

/// The stored flag `key` and its version; `not_found` naming `key` when there is none.
async fn existing_flag(
    connection: &mut Connection,
    keys: &Keys,
    key: &str,
) -> Result<(u64, rollout_store::FlagRecord), QueryError> {
    let stored = load_flag(connection, keys, key).await?;
    let record = stored.record.ok_or_else(|| {
        WireError::not_found(format!("flag {key} does not exist")).with_field("key")
    })?;
    Ok((stored.version, record))
}

impl Reader {
    async fn flag(
        &self,
        connection: &mut Connection,
        keys: &Keys,
        key: &str,
    ) -> Result<QueryReply, QueryError> {
        let (stored_version, record) = existing_flag(connection, keys, key).await?;
        Ok(QueryReply::Flag(Box::new(FlagResult {
            flag: record.flag,
            version: stored_version,
            active_rollout: record.active_rollout,
            side_effects: Vec::new(),
        })))
    }

    /// The flag-level counters its kill switch judges, as the ticker would read them now.
    async fn flag_counts(
        &self,
        connection: &mut Connection,
        keys: &Keys,
        key: &str,
    ) -> Result<QueryReply, QueryError> {
        let (_, record) = existing_flag(connection, keys, key).await?;
        let now = redis_time(connection).await?;
        let rollout = match &record.active_rollout {
            Some(rollout_id) => load_rollout(connection, keys, rollout_id).await?,
            None => None,
        };
        let kill_switch = match &record.flag.kill_switch {
            Some(spec) => Some(spec.compile("flag.kill_switch").map_err(|errors| {
                WireError::internal(format!("the stored kill switch does not compile: {errors}"))
            })?),
            None => None,
        };
        let window = kill_switch
            .as_ref()
            .map_or(DEFAULT_COUNTS_WINDOW, |guard| guard.window);
        let sides =
            outcomes::load_flag_sides(connection, keys, &record, rollout.as_ref(), window, now)
                .await?;
        Ok(QueryReply::FlagCounts(FlagCounts {
            flag: record.flag.key.clone(),
            enabled: record.flag.enabled,
            at: now,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(0),
            rollout_id: sides.rollout_id,
            baseline: sides.baseline,
            candidates: sides.candidates,
            kill_switch: kill_switch.map(|guard| guard.verdict(&sides.counts)),
            outcomes: sides.counts,
        }))
    }

    async fn flags(
        &self,
        connection: &mut Connection,
        keys: &Keys,
        window: PageWindow,
    ) -> Result<QueryReply, QueryError> {
        let mut flag_keys = reads::flag_keys(connection, keys).await?;
        flag_keys.sort();
        let total = flag_keys.len() as u64;
        let page: Vec<&str> = flag_keys
            .iter()
            .map(String::as_str)
            .skip(usize::try_from(window.offset()).unwrap_or(usize::MAX))
            .take(window.size as usize)
            .collect();
        if page.is_empty() {
            return Ok(QueryReply::Flags(FlagList {
                flags: Vec::new(),
                next_page: None,
            }));
        }
        let stored = reads::load_flags(connection, keys, &page).await?;
        let mut flags = Vec::with_capacity(stored.len());
        for stored in stored {
            let version = stored.version;
            let Some(record) = stored.record else {
                continue;
            };
            flags.push(FlagSummary {
                key: record.flag.key.clone(),
                description: record.flag.description.clone(),
                enabled: record.flag.enabled,
                version,
                variations: record
                    .flag
                    .variations
                    .iter()
                    .map(|variation| variation.id.clone())
                    .collect(),
                active_rollout: record.active_rollout.clone(),
            });
        }
        Ok(QueryReply::Flags(FlagList {
            flags,
            next_page: window.next_page(total),
        }))
    }

    /// The rollout `rollout_id` and the Redis time it was read at.
    async fn rollout(
        connection: &mut Connection,
        keys: &Keys,
        rollout_id: &str,
    ) -> Result<(RolloutRecord, rollout_core::Timestamp), QueryError> {
        let now = redis_time(connection).await?;
        let record = load_rollout(connection, keys, rollout_id)
            .await?
            .ok_or_else(|| {
                WireError::not_found(format!("rollout {rollout_id} does not exist"))
                    .with_field("rollout_id")
            })?;
        Ok((record, now))
    }

    async fn status(
        &self,
        connection: &mut Connection,
        keys: &Keys,
        rollout_id: &str,
    ) -> Result<QueryReply, QueryError> {
        let (record, now) = Self::rollout(connection, keys, rollout_id).await?;
        let mut status = RolloutStatus::new(
            &record.id,
            &record.plan,
            &record.state,
            record.created_at,
            now,
        );
        let counts = self.stage_counts(connection, keys, &record, now).await?;
        for (step, stage_counts) in status.steps.iter_mut().zip(counts) {
            step.counts = Some(stage_counts);
        }
        let health = load_health(connection, keys, &record, now, self.stale_agent_after).await?;
        status.hold = record.state.gate_hold(&record.plan, &health);
        let freezes = freezes::load(connection, keys).await?.freezes;
        if let Some(freeze) = freezes.active_at(now) {
            status.frozen_by(freeze, now);
        }
        status.failing_webhooks = webhooks::load(connection, keys)
            .await?
            .iter()
            .filter(|webhook| webhook.state.delivery.failing())
            .map(Webhook::view)
            .collect();
        Ok(QueryReply::Status(Box::new(status)))
    }

    /// Per-step fleet counts of `record` at `now` (one per step of a label-stage plan).
    async fn stage_counts(
        &self,
        connection: &mut Connection,
        keys: &Keys,
        record: &RolloutRecord,
        now: rollout_core::Timestamp,
    ) -> Result<Vec<rollout_core::StageCounts>, StoreError> {
        fleet::load_stage_counts(
            connection,
            keys,
            &record.id,
            &record.plan,
            &record.state,
            now,
            self.stale_agent_after,
        )
        .await
    }

    /// The figures the ticker judges the rollout's gates by, as it would read them now.
    async fn counts(
        &self,
        connection: &mut Connection,
        keys: &Keys,
        rollout_id: &str,
    ) -> Result<QueryReply, QueryError> {
        let (record, now) = Self::rollout(connection, keys, rollout_id).await?;
        let plan = &record.plan;
        // each guard's outcomes over its own window, read once
        let mut judged = Vec::new();
        for guard in plan.guards() {
            let from = record.state.guard_window_start(guard.window, now);
            let outcomes =
                outcomes::load_rollout_outcomes(connection, keys, &record.id, from, now).await?;
            judged.push(GuardCounts {
                action: guard.action,
                window_ms: u64::try_from(guard.window.as_millis()).unwrap_or(0),
                counted_from: from,
                verdict: guard.verdict(&outcomes),
                outcomes,
            });
        }
        // the top-level figures are the first guard's, else the default window's
        let (window_ms, counted_from, outcome_counts, first_verdict) = match judged.first() {
            Some(first) => (
                first.window_ms,
                first.counted_from,
                first.outcomes,
                Some(first.verdict.clone()),
            ),
            None => {
                let from = record.state.guard_window_start(DEFAULT_COUNTS_WINDOW, now);
                let outcomes =
                    outcomes::load_rollout_outcomes(connection, keys, &record.id, from, now)
                        .await?;
                let window_ms = u64::try_from(DEFAULT_COUNTS_WINDOW.as_millis()).unwrap_or(0);
                (window_ms, from, outcomes, None)
            }
        };
        // a rollout with one guard shows it at the top level only
        let guards = if judged.len() > 1 { judged } else { Vec::new() };
        let stage_counts = self.stage_counts(connection, keys, &record, now).await?;
        let stages = plan
            .steps
            .iter()
            .zip(stage_counts)
            .filter_map(|(step, counts)| match &step.audience {
                Audience::Stage { name, wave, .. } => Some(NamedStageCounts {
                    name: name.clone(),
                    wave: *wave,
                    counts,
                }),
                Audience::Share(_) => None,
            })
            .collect();
        Ok(QueryReply::Counts(RolloutCounts {
            rollout_id: record.id.clone(),
            flag: plan.flag.clone(),
            baseline: plan.baseline.clone(),
            candidate: plan.candidate.clone(),
            state: record.state.lifecycle,
            at: now,
            window_ms,
            counted_from: Some(counted_from),
            outcomes: outcome_counts,
            guard: first_verdict,
            guards,
            stages,
        }))
    }

    async fn rollouts(
        &self,
        connection: &mut Connection,
        keys: &Keys,
        list: &RolloutListQuery,
        window: PageWindow,
    ) -> Result<QueryReply, QueryError> {
        let now = redis_time(connection).await?;
        let freezes = freezes::load(connection, keys).await?.freezes;
        let freeze = freezes.active_at(now);
        // newest first
        let ids = reads::rollout_ids(connection, keys, list.state).await?;
        let mut summaries = Vec::new();
        for id in ids {
            let Some(record) = load_rollout(connection, keys, &id).await? else {
                continue;
            };
            let other_flag = list
                .flag
                .as_deref()
                .is_some_and(|wanted| wanted != record.plan.flag);
            let other_state = list
                .lifecycle
                .is_some_and(|wanted| wanted != record.state.lifecycle);
            if other_flag || other_state {
                continue;
            }
            let mut summary = RolloutSummary::new(
                &record.id,
                &record.plan,
                &record.state,
                record.created_at,
                now,
            );
            if let Some(freeze) = freeze {
                summary.frozen_by(freeze, now);
            }
            summaries.push(summary);
        }
        let total = summaries.len() as u64;
        let rollouts = summaries
            .into_iter()
            .skip(usize::try_from(window.offset()).unwrap_or(usize::MAX))
            .take(window.size as usize)
            .collect();
        Ok(QueryReply::Rollouts(RolloutList {
            rollouts,
            next_page: window.next_page(total),
        }))
    }

    async fn audit(
        &self,
        connection: &mut Connection,
        keys: &Keys,
        log: AuditLog<'_>,
        window: PageWindow,
    ) -> Result<QueryReply, QueryError> {
        let (total, entries) =
            reads::audit_page(connection, keys, log, window.offset(), window.size).await?;
        Ok(QueryReply::Audit(AuditPage {
            entries,
            next_page: window.next_page(total),
        }))
    }

    async fn preview(
        &self,
        connection: &mut Connection,
        keys: &Keys,
        spec: &rollout_core::RolloutSpec,
    ) -> Result<QueryReply, QueryError> {
        let now = redis_time(connection).await?;
        let stored = load_flag(connection, keys, &spec.flag).await?;
        let record = stored.record.ok_or_else(|| {
            WireError::not_found(format!("flag {} does not exist", spec.flag))
                .with_field("rollout.flag")
        })?;
        let context = CompileContext {
            now,
            min_phase_interval: self.min_phase_interval,
            fresh_salt: "preview",
        };
        let plan = crate::decide::compile_from_current_serve(spec, &record.flag, &context)?;
        Ok(QueryReply::Plan(PlanPreview::new(&plan, now)))
    }
}

/// A query failure: the caller's fault, or the store's.
#[derive(Debug)]
enum QueryError {
    Wire(WireError),
    Store(StoreError),
}

impl From<WireError> for QueryError {
    fn from(error: WireError) -> QueryError {
        QueryError::Wire(error)
    }
}

impl From<StoreError> for QueryError {
    fn from(error: StoreError) -> QueryError {
        QueryError::Store(error)
    }
}
