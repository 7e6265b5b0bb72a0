//! Benchmark state written the way the planner writes it — the core's
//! [`transition::create`] committed by the store's one [`Writer`] — for set-ups too large
//! to send as commands (10 000 flags, 100 000 rollouts) or that need what commands do not
//! let a client choose: rollout ids the scenario can recognise (`r-<salt>`) and one
//! creation time for a whole wave, so due times are exact. Events are not published
//! (evaluators started afterwards load the state; the ticker reads its due index), and bulk
//! set-ups drop their outbox so no sweep publishes 100 000 stale events mid-measurement.

use anyhow::{bail, Context};
use futures_util::StreamExt;
use rollout_core::plan::DEFAULT_MIN_PHASE_INTERVAL;
use rollout_core::transition::{self, NewRollout};
use rollout_core::{compile, CompileContext, Flag, RolloutSpec, Timestamp};
use rollout_store::Connection;
use rollout_store::{
    load_flag, redis_time, Actor, Change, Conditions, FlagRecord, Happened, Writer, Written,
};
use rollout_wire::events::EventKind;
use rollout_wire::subjects::Namespace;
use serde_json::json;

use crate::progress;

/// Writes flags and rollouts into one Redis.
#[derive(Clone)]
pub struct Seeder {
    redis: Connection,
    writer: Writer,
}

impl std::fmt::Debug for Seeder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Seeder").finish_non_exhaustive()
    }
}

fn actor() -> Actor {
    Actor {
        name: "loadtest".into(),
        command_id: None,
        trace_id: None,
        reason: None,
    }
}

impl Seeder {
    /// A seeder on `redis`.
    pub fn new(redis: Connection) -> Seeder {
        Seeder {
            writer: Writer::unpublished(redis.clone()),
            redis,
        }
    }

    /// The Redis clock.
    pub async fn now(&self) -> anyhow::Result<Timestamp> {
        let mut connection = self.redis.clone();
        redis_time(&mut connection)
            .await
            .context("reading redis time")
    }

    async fn commit(
        &self,
        namespace: &Namespace,
        change: Change,
        now: Timestamp,
    ) -> anyhow::Result<()> {
        match self
            .writer
            .commit(namespace, change, actor(), now, Conditions::default())
            .await
            .context("running the commit script")?
        {
            Written::Committed { .. } => Ok(()),
            other => bail!("commit refused: {other:?}"),
        }
    }

    /// Adds `namespace` to the registry evaluators load and tickers fence.
    pub async fn register_namespace(&self, namespace: &Namespace) -> anyhow::Result<()> {
        let mut connection = self.redis.clone();
        rollout_store::namespaces::register(&mut connection, namespace)
            .await
            .context("registering the namespace")
    }

    /// Drops `namespace`'s outbox: nobody relays bulk set-up events.
    pub async fn drop_outbox(&self, namespace: &Namespace) -> anyhow::Result<()> {
        let mut connection = self.redis.clone();
        rollout_store::outbox::discard(&mut connection, &rollout_store::Keys::new(namespace))
            .await
            .context("dropping the outbox")
    }

    /// Creates `flag` in `namespace`.
    pub async fn create_flag(&self, namespace: &Namespace, flag: Flag) -> anyhow::Result<()> {
        let now = self.now().await?;
        let mut change = Change::of_flag(&flag.key, 0);
        change.flag = Some(FlagRecord {
            flag,
            active_rollout: None,
            last_rollout: None,
            created_at: now,
            updated_at: now,
        });
        change.flag_created = true;
        change.happened = vec![Happened::event(EventKind::FlagCreated, None)];
        self.commit(namespace, change, now).await
    }

    /// Creates and starts a rollout `r-<salt>` of `spec` (its flag exists) with `salt`.
    pub async fn create_rollout(
        &self,
        namespace: &Namespace,
        spec: RolloutSpec,
        salt: &str,
    ) -> anyhow::Result<()> {
        let keys = rollout_store::Keys::new(namespace);
        let mut connection = self.redis.clone();
        let now = self.now().await?;
        let stored = load_flag(&mut connection, &keys, &spec.flag).await?;
        let record = stored.record.context("rollout of a missing flag")?;
        let change = rollout_created(namespace, (&record, stored.version), spec, salt, now)?;
        self.commit(namespace, change, now).await
    }

    /// `count` flags `flag-<i>` of the typical shape (two variations, one rule), every
    /// tenth with an active 10 % rollout; written `concurrency` at a time.
    pub async fn many_flags(
        &self,
        namespace: &Namespace,
        count: u32,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        self.register_namespace(namespace).await?;
        let bar = progress::counter("seeding", u64::from(count));
        let mut writes = futures_util::stream::iter(0..count)
            .map(|index| async move {
                let key = format!("flag-{index}");
                self.create_flag(namespace, typical_flag(&key)?).await?;
                if index % 10 == 0 {
                    let spec = phases_spec(&key, 10.0, "24h")?;
                    self.create_rollout(namespace, spec, &format!("s{index}"))
                        .await?;
                }
                Ok::<(), anyhow::Error>(())
            })
            .buffer_unordered(concurrency);
        while let Some(written) = writes.next().await {
            written?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        self.drop_outbox(namespace).await
    }

    /// `count` flags `<prefix>-<i>` each with a running rollout of `spec_of(i)` (flag key
    /// filled in), created at Redis time `now`, `concurrency` commits in flight.
    pub async fn flags_with_rollouts(
        &self,
        namespace: &Namespace,
        prefix: &str,
        count: u32,
        now: Timestamp,
        concurrency: usize,
        spec_of: impl Fn(u32) -> serde_json::Value,
    ) -> anyhow::Result<()> {
        self.register_namespace(namespace).await?;
        let bar = progress::counter("seeding", u64::from(count));
        let mut commits = futures_util::stream::iter(0..count)
            .map(|index| {
                let key = format!("{prefix}-{index}");
                let change = flag_with_rollout(
                    namespace,
                    &key,
                    spec_of(index),
                    now,
                    &format!("{prefix}-{index}"),
                );
                async move { self.commit(namespace, change?, now).await }
            })
            .buffer_unordered(concurrency);
        while let Some(committed) = commits.next().await {
            committed?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        self.drop_outbox(namespace).await
    }
}

/// The change creating the running rollout `r-<salt>` of `spec` (compiled at `now` with
/// `salt`) on `flag`, loaded at `flag.1` (0: the flag is new in the same change), as the
/// planner's `rollout.create` does.
fn rollout_created(
    namespace: &Namespace,
    flag: (&FlagRecord, u64),
    spec: RolloutSpec,
    salt: &str,
    now: Timestamp,
) -> anyhow::Result<Change> {
    let (flag_record, flag_version) = flag;
    let context = CompileContext {
        now,
        min_phase_interval: DEFAULT_MIN_PHASE_INTERVAL,
        fresh_salt: salt,
    };
    let plan = compile(&spec, &flag_record.flag, &context)
        .map_err(|errors| anyhow::anyhow!("the benchmark spec does not compile: {errors}"))?;
    let created = transition::create(
        flag_record,
        NewRollout {
            id: format!("r-{salt}"),
            namespace: namespace.as_str().to_owned(),
            spec,
            plan,
            created_by: Some("loadtest".to_owned()),
            traceparent: None,
        },
        now,
    );
    Ok(Change::rollout_created(
        flag_version,
        flag_version == 0,
        created,
    ))
}

/// One change creating flag `key` (variations `off`/`on`, serving `off`) with a running
/// rollout of `spec` (its `flag`, `baseline` and `candidate` filled in when absent).
pub fn flag_with_rollout(
    namespace: &Namespace,
    key: &str,
    spec: serde_json::Value,
    now: Timestamp,
    salt: &str,
) -> anyhow::Result<Change> {
    let flag = typical_flag(key)?;
    let mut spec = spec;
    let object = spec.as_object_mut().context("a spec is an object")?;
    object.insert("flag".into(), json!(key));
    object.entry("baseline").or_insert(json!("off"));
    object.entry("candidate").or_insert(json!("on"));
    let spec: RolloutSpec = serde_json::from_value(spec).context("the benchmark spec")?;
    let flag_record = FlagRecord {
        flag,
        active_rollout: None,
        last_rollout: None,
        created_at: now,
        updated_at: now,
    };
    let mut change = rollout_created(namespace, (&flag_record, 0), spec, salt, now)?;
    change
        .happened
        .insert(0, Happened::event(EventKind::FlagCreated, None));
    Ok(change)
}

/// Two boolean variations, one targeting rule, default off.
pub fn typical_flag(key: &str) -> anyhow::Result<Flag> {
    Ok(serde_json::from_value(json!({
        "key": key,
        "description": "a typical release toggle",
        "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
        "off_variation": "off",
        "default": {"variation": "off"},
        "rules": [{"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta", "staff"]}],
                   "serve": {"variation": "on"}}],
    }))?)
}

/// Ten rules of mixed operators (none of which the benchmark entities match) before the
/// default's active rollout decides: the worst case of SPEC §10, as in the core benchmark.
pub fn ten_rule_flag(key: &str) -> anyhow::Result<Flag> {
    let rules: Vec<serde_json::Value> = (0..10)
        .map(|index| {
            let condition = match index % 5 {
                0 => json!({"attribute": "country", "op": "in", "values": ["fr", "it", "es", format!("x{index}")]}),
                1 => json!({"attribute": "email", "op": "ends_with", "values": [format!("@corp{index}.example")]}),
                2 => json!({"attribute": "age", "op": "gt", "values": [100 + index]}),
                3 => json!({"attribute": "app_version", "op": "semver_lt", "values": ["1.0.0"]}),
                _ => json!({"attribute": "plan", "op": "equals", "values": [format!("plan-{index}")]}),
            };
            json!({"id": format!("rule-{index}"), "conditions": [condition], "serve": {"variation": "on"}})
        })
        .collect();
    Ok(serde_json::from_value(json!({
        "key": key,
        "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
        "off_variation": "off", "enabled": true, "default": {"variation": "off"}, "rules": rules
    }))?)
}

/// A phases rollout of `flag`'s default serve at `percentage` for `duration`, then 100 %.
pub fn phases_spec(flag: &str, percentage: f64, duration: &str) -> anyhow::Result<RolloutSpec> {
    Ok(serde_json::from_value(json!({
        "flag": flag, "baseline": "off", "candidate": "on",
        "phases": [{"percentage": percentage, "duration": duration}, {"percentage": 100}],
    }))?)
}
