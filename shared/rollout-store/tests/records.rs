//! The stored records against a real, private Redis: whatever a commit wrote — the whole
//! record or only what a step changed — and whatever layout an older release left, a
//! reader gets back exactly the records the decision made.

use rollout_core::machine::Event;
use rollout_core::plan::{compile, CompileContext};
use rollout_core::spec::RescheduleStepSpec;
use rollout_core::transition::{self, NewRollout, Transition};
use rollout_core::{DurationMs, Flag, RolloutSpec, Timestamp};
use rollout_store::reads::{audit_page, flag_commits, AuditLog};
use rollout_store::{
    encode_record, load_flag, load_rollout, Actor, Change, Conditions, Connection, FlagRecord,
    Happened, Keys, RolloutRecord, Writer, Written,
};
use rollout_testkit::RedisServer;
use rollout_wire::events::EventKind;
use rollout_wire::queries::AuditEntry;
use rollout_wire::subjects::Namespace;

struct Store {
    _server: RedisServer,
    connection: Connection,
    writer: Writer,
    namespace: Namespace,
    keys: Keys,
}

impl Store {
    async fn start() -> Store {
        let server = RedisServer::start().expect("redis starts");
        let client = redis::Client::open(server.url()).expect("url");
        let manager = redis::aio::ConnectionManager::new(client)
            .await
            .expect("redis connects");
        let connection = Connection::from(manager);
        let namespace = Namespace::new("records").expect("namespace");
        Store {
            _server: server,
            writer: Writer::unpublished(connection.clone()),
            keys: Keys::new(&namespace),
            connection,
            namespace,
        }
    }

    async fn commit(&self, change: Change, now: Timestamp) {
        let written = self
            .writer
            .commit(
                &self.namespace,
                change,
                Actor {
                    name: "test".to_owned(),
                    ..Actor::default()
                },
                now,
                Conditions::default(),
            )
            .await
            .expect("the commit runs");
        assert!(
            matches!(written, Written::Committed { .. }),
            "not committed: {written:?}"
        );
    }

    async fn flag(&self, key: &str) -> (u64, FlagRecord) {
        let mut connection = self.connection.clone();
        let stored = load_flag(&mut connection, &self.keys, key)
            .await
            .expect("the flag reads");
        (stored.version, stored.record.expect("the flag exists"))
    }

    async fn rollout(&self, id: &str) -> RolloutRecord {
        let mut connection = self.connection.clone();
        load_rollout(&mut connection, &self.keys, id)
            .await
            .expect("the rollout reads")
            .expect("the rollout exists")
    }

    async fn audit(&self, log: AuditLog<'_>) -> Vec<AuditEntry> {
        let mut connection = self.connection.clone();
        audit_page(&mut connection, &self.keys, log, 0, u32::MAX)
            .await
            .expect("the audit reads")
            .1
    }

    /// Moves the stored rollout `id` by `event` at `now`, committed as the ticker and the
    /// planner commit a step of the flag as stored; returns the transition decided.
    async fn step(&self, id: &str, event: &Event, now: Timestamp) -> Transition {
        let rollout = self.rollout(id).await;
        let (version, flag) = self.flag(&rollout.plan.flag).await;
        let moved = transition::apply(&flag, &rollout, event, now).expect("the event applies");
        let change = Change::rollout_moved_on_stored_flag(version, &rollout.state, moved.clone());
        self.commit(change, now).await;
        moved
    }

    /// Replaces the steps of the stored rollout `id` after its current one with `steps`
    /// at `now`, committed as the planner commits it; returns the transition decided.
    async fn reschedule(&self, id: &str, steps: serde_json::Value, now: Timestamp) -> Transition {
        let rollout = self.rollout(id).await;
        let (version, flag) = self.flag(&rollout.plan.flag).await;
        let steps: Vec<RescheduleStepSpec> = serde_json::from_value(steps).expect("steps");
        let rescheduled =
            transition::reschedule(&flag, &rollout, &steps, now).expect("the reschedule applies");
        assert_ne!(rescheduled.rollout.plan, rollout.plan, "the plan changes");
        let change =
            Change::rollout_moved_on_stored_flag(version, &rollout.state, rescheduled.clone());
        self.commit(change, now).await;
        rescheduled
    }

    /// Expects the stored flag and rollout to be exactly `decided`'s, at `version`.
    async fn expect_stored(&self, decided: &Transition, version: u64) {
        assert_eq!(
            self.flag(&decided.flag.flag.key).await,
            (version, decided.flag.clone()),
            "the flag as stored"
        );
        assert_eq!(
            self.rollout(&decided.rollout.id).await,
            decided.rollout,
            "the rollout as stored"
        );
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + seconds * 1_000)
}

fn flag_record(key: &str, now: Timestamp) -> FlagRecord {
    let flag: Flag = serde_json::from_value(serde_json::json!({
        "key": key,
        "variations": [{"id": "off", "value": false}, {"id": "on", "value": true}],
        "off_variation": "off",
        "enabled": false,
        "default": {"variation": "off"},
    }))
    .expect("flag");
    FlagRecord {
        flag,
        active_rollout: None,
        last_rollout: None,
        created_at: now,
        updated_at: now,
    }
}

/// A rollout of `flag` in three hour-long phases, created at `now`.
fn created(flag: &FlagRecord, id: &str, now: Timestamp) -> Transition {
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "flag": flag.flag.key,
        "baseline": "off",
        "candidate": "on",
        "phases": [
            {"percentage": 10, "duration": "1h"},
            {"percentage": 50, "duration": "1h"},
            {"percentage": 100}
        ],
    }))
    .expect("spec");
    let context = CompileContext {
        now,
        min_phase_interval: DurationMs::from_millis(500),
        fresh_salt: "salt",
    };
    let plan = compile(&spec, &flag.flag, &context).expect("the spec compiles");
    transition::create(
        flag,
        NewRollout {
            id: id.to_owned(),
            namespace: "records".to_owned(),
            spec,
            plan,
            created_by: Some("test".to_owned()),
            traceparent: None,
        },
        now,
    )
}

/// What `flag_commits` reads for the flag `checkout`.
async fn stored_commit(store: &Store) -> (u64, Option<Timestamp>) {
    let mut connection = store.connection.clone();
    let commits = flag_commits(&mut connection, &store.keys, &["checkout".to_owned()])
        .await
        .expect("the flag's commit reads");
    commits[0]
}

#[tokio::test]
async fn a_flag_version_is_known_by_the_time_of_the_commit_that_wrote_it() {
    let store = Store::start().await;
    // the decision stamped its record an hour early: what counts is the commit's time,
    // which its events carry too
    let mut change = Change::of_flag("checkout", 0);
    change.flag = Some(flag_record("checkout", at(-3_600)));
    change.flag_created = true;
    change.happened = vec![Happened::event(EventKind::FlagCreated, None)];
    let written = store
        .writer
        .commit(
            &store.namespace,
            change,
            Actor::default(),
            at(0),
            Conditions::default(),
        )
        .await
        .expect("the commit runs");
    let Written::Committed {
        events,
        flag_version,
        ..
    } = written
    else {
        panic!("not committed: {written:?}");
    };
    assert!(!events.is_empty() && events.iter().all(|event| event.time == at(0)));
    assert_eq!(store.flag("checkout").await.1.updated_at, at(0));
    assert_eq!(stored_commit(&store).await, (flag_version, Some(at(0))));

    // a deletion keeps the version (a tombstone) and no commit time: nothing to compare
    let mut deletion = Change::of_flag("checkout", flag_version);
    deletion.happened = vec![Happened::event(EventKind::FlagDeleted, None)];
    store.commit(deletion, at(10)).await;
    assert_eq!(stored_commit(&store).await, (flag_version + 1, None));
}

#[tokio::test]
async fn every_commit_of_a_rollout_reads_back_as_decided() {
    let store = Store::start().await;
    let flag = flag_record("checkout", at(0));
    let creation = created(&flag, "r-1", at(0));
    // creating enables the disabled flag and takes its active slot
    assert!(creation.flag.flag.enabled);
    store
        .commit(Change::rollout_created(0, true, creation.clone()), at(0))
        .await;
    let mut version = creation.effects.len() as u64 + 1;
    store.expect_stored(&creation, version).await;

    // steps that change only the rollout (the flag's timestamp moves with them)
    for (seconds, event) in [
        (10, Event::Pause),
        (20, Event::Resume),
        (30, Event::Continue),
    ] {
        let moved = store.step("r-1", &event, at(seconds)).await;
        assert!(moved.changed(), "{event:?} moves the rollout");
        assert!(!moved.flag_changed, "{event:?} leaves the flag as it was");
        version += moved.effects.len() as u64;
        store.expect_stored(&moved, version).await;
        assert_eq!(
            store.flag("checkout").await.1.updated_at,
            at(seconds),
            "the flag's timestamp follows its every change"
        );
    }

    // a reschedule changes the rollout's plan, not its flag
    let steps = serde_json::json!([{"percentage": 75, "duration": "2h"}, {"percentage": 100}]);
    let rescheduled = store.reschedule("r-1", steps, at(40)).await;
    version += 1;
    store.expect_stored(&rescheduled, version).await;

    // a step after the reschedule keeps the new plan
    let moved = store.step("r-1", &Event::Continue, at(50)).await;
    version += moved.effects.len() as u64;
    store.expect_stored(&moved, version).await;

    // ending frees the flag's slot and writes the serve the rollout leaves into the flag
    let stopped = store
        .step("r-1", &Event::Stop { percentage: None }, at(60))
        .await;
    assert!(stopped.flag_changed, "ending the rollout changes its flag");
    assert_eq!(stopped.flag.active_rollout, None);
    version += stopped.effects.len() as u64;
    store.expect_stored(&stopped, version).await;

    // one audit entry per event, in the flag's log and the rollout's alike
    let rollout_log = store.audit(AuditLog::Rollout("r-1")).await;
    let flag_log = store.audit(AuditLog::Flag("checkout")).await;
    assert_eq!(rollout_log.len() as u64, version);
    assert_eq!(rollout_log, flag_log);
}

#[tokio::test]
async fn a_rollout_stored_whole_by_an_older_release_reads_and_moves_as_decided() {
    let store = Store::start().await;
    let flag = flag_record("legacy", at(0));
    let creation = created(&flag, "r-old", at(0));
    // the layout before definition and state were stored apart: the whole record in
    // `data`, the flag without `touched`
    let mut connection = store.connection.clone();
    let version = creation.effects.len() as u64 + 1;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("ro:{records}:flag:legacy")
        .arg("rev")
        .arg(version)
        .arg("data")
        .arg(encode_record(&creation.flag).expect("encodes"))
        .ignore()
        .cmd("HSET")
        .arg("ro:{records}:rollout:r-old")
        .arg("rev")
        .arg(creation.rollout.state.revision)
        .arg("data")
        .arg(encode_record(&creation.rollout).expect("encodes"))
        .ignore()
        .query_async(&mut connection)
        .await
        .expect("the old layout is written");
    store.expect_stored(&creation, version).await;

    // a step writes the state alone: the definition still comes from the old record
    let paused = store.step("r-old", &Event::Pause, at(10)).await;
    let version = version + paused.effects.len() as u64;
    store.expect_stored(&paused, version).await;

    // a reschedule writes the definition apart: it wins over the old record's
    let steps = serde_json::json!([{"percentage": 100}]);
    let rescheduled = store.reschedule("r-old", steps, at(20)).await;
    store.expect_stored(&rescheduled, version + 1).await;
    let resumed = store.step("r-old", &Event::Resume, at(30)).await;
    store
        .expect_stored(&resumed, version + 1 + resumed.effects.len() as u64)
        .await;
}
