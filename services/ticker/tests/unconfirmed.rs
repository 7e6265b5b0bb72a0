//! A ticker whose store confirms commits on a replica (`redis.wait_replicas` = 1), against a
//! real Redis master with a real replica and a real NATS server, driven round by round: a
//! transition the replica could not confirm holds its namespace until it can.
//!
//! With the replica in sync, a round steps a phased rollout 0 → 1 and its event is
//! published. The replica is then stopped (SIGSTOP): the next round commits 1 → 2 in Redis,
//! but the commit comes back unconfirmed, so its event stays in the outbox and reaches no
//! evaluator. The ticker now holds the namespace: with step 3 due (its planned time is in
//! the past, so the commit script would accept it), rounds do not even look at the rollout,
//! and it stays at step 2 — without the hold it would go on stepping in Redis while
//! evaluators still serve step 1. Once the replica runs again, a round sweeps the
//! namespace's outbox — publishing the held 1 → 2 event once the replica confirms it holds
//! it — then fires 2 → 3 and publishes its event: evaluators see the steps in order. Every
//! step is entered and audited once, and its event reaches NATS once.

mod common;

use std::time::Duration;

use common::{
    after, assert_single_advances, connect_redis, eventually, CreateOptions, HandDriven, Harness,
    NS,
};
use rollout_core::Lifecycle;
use rollout_runtime::config::RedisSettings;
use rollout_store::Connection;
use rollout_testkit::RedisServer;
use rollout_wire::codec::Encoding;
use rollout_wire::events::{ChangeEvent, EventKind};
use serde_json::json;
use ticker::Ticker;

const DEADLINE: Duration = Duration::from_secs(30);
/// How long a commit waits for the replica to confirm it.
const WAIT_TIMEOUT: Duration = Duration::from_millis(300);
/// The namespace's outbox: events committed but not published yet.
const OUTBOX: &str = "ro:{prod}:outbox";
/// Each phase lasts this long.
const PHASE_MS: i64 = 10_000;

/// A connection to the harness's Redis (the master) asking, as a service configured with
/// `redis.wait_replicas` = 1 does, that every commit reach one replica.
async fn replicated(harness: &Harness) -> Connection {
    let settings = RedisSettings {
        url: harness.cluster.redis.url(),
        wait_replicas: 1,
        wait_timeout: WAIT_TIMEOUT,
        ..RedisSettings::default()
    };
    let connection = rollout_runtime::connect::connect_redis(&settings)
        .await
        .expect("redis connects");
    assert!(connection.replication().is_some(), "replication asked for");
    connection
}

/// The events waiting in the namespace's outbox, oldest first.
async fn outbox(harness: &Harness) -> Vec<ChangeEvent> {
    let mut connection = connect_redis(&harness.cluster.redis.url()).await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(OUTBOX)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("xrange");
    entries
        .ids
        .iter()
        .map(|entry| match entry.map.get("event") {
            Some(redis::Value::BulkString(bytes)) => {
                ChangeEvent::decode(bytes, Encoding::MessagePack).expect("outbox event decodes")
            }
            other => panic!("outbox entry {} without an event: {other:?}", entry.id),
        })
        .collect()
}

/// The `to` steps of the ticker's `rollout_step` events among `events`, in order.
fn steps_of(events: &[ChangeEvent]) -> Vec<usize> {
    events
        .iter()
        .filter(|event| {
            event.kind == EventKind::RolloutStep && event.actor.as_deref() == Some("ticker")
        })
        .map(|event| event.to_step.expect("a step event names its step"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_transition_holds_its_namespace_until_the_replica_confirms_it() {
    let harness = Harness::start().await;
    let replica =
        tokio::task::block_in_place(|| RedisServer::start_replica_of(&harness.cluster.redis))
            .expect("a replica in sync");
    let events = harness.collect_events(NS).await;
    let now = harness.now().await;
    // started a minute ago, while no ticker ran: every step's planned time is past, so the
    // commit script accepts each transition a round at that time decides
    let started = after(now, -60_000);
    let record = harness
        .create(
            NS,
            "checkout",
            Some(json!({"phases": [
                {"percentage": 10, "duration": "10s"},
                {"percentage": 25, "duration": "10s"},
                {"percentage": 50, "duration": "10s"},
                {"percentage": 75, "duration": "10s"},
                {"percentage": 100},
            ]})),
            started,
            CreateOptions::published(),
        )
        .await
        .expect("rollout");
    assert_eq!(
        (record.state.step, record.state.lifecycle),
        (Some(0), Lifecycle::Running)
    );
    let ticker = Ticker::new(
        replicated(&harness).await,
        async_nats::connect(harness.cluster.nats.url())
            .await
            .expect("nats connects"),
        harness.subjects.clone(),
        harness.settings("solo"),
    );
    let leader = HandDriven::lead(ticker).await;

    // the replica in sync: step 0 → 1 is confirmed and published
    assert_eq!(
        harness.due_at(NS, &record.id).await,
        Some(after(started, PHASE_MS))
    );
    let round = leader.round_when_due(&harness, NS, &record.id).await;
    assert_eq!((round.committed, round.errors), (1, 0), "{round:?}");
    assert_eq!(harness.rollout(NS, &record.id).await.state.step, Some(1));
    eventually("the step 1 event", DEADLINE, || async {
        (steps_of(&events.events()) == [1]).then_some(())
    })
    .await;
    // (a published event's outbox entry is trimmed once NATS proved it has it)
    eventually("the outbox emptied", DEADLINE, || async {
        outbox(&harness).await.is_empty().then_some(())
    })
    .await;

    // the replica stopped: step 1 → 2 lands in Redis but cannot be confirmed
    replica.pause().expect("the replica stops");
    let step_2_due = harness.due_at(NS, &record.id).await.expect("due");
    assert_eq!(step_2_due, after(started, 2 * PHASE_MS));
    let round = leader.round_at(step_2_due).await;
    assert_eq!(
        (round.looked_at, round.committed, round.errors),
        (1, 0, 1),
        "an unconfirmed commit is reported as an error: {round:?}"
    );
    let unconfirmed = harness.rollout(NS, &record.id).await;
    assert_eq!(
        (unconfirmed.state.step, unconfirmed.state.lifecycle),
        (Some(2), Lifecycle::Running),
        "the commit is in Redis"
    );
    assert_eq!(
        unconfirmed.state.revision,
        record.state.revision + 2,
        "two transitions since the creation"
    );
    let held_back = outbox(&harness).await;
    assert_eq!(
        steps_of(&held_back),
        [2],
        "its event waits in the outbox: {held_back:?}"
    );

    // step 3 is due too (its planned time is past): the held namespace is not fired
    let step_3_due = harness.due_at(NS, &record.id).await.expect("due");
    assert_eq!(step_3_due, after(started, 3 * PHASE_MS));
    assert!(
        step_3_due <= harness.now().await,
        "step 3 is due in Redis time"
    );
    for _ in 0..3 {
        let round = leader.round_at(step_3_due).await;
        assert_eq!(
            (round.looked_at, round.committed, round.errors),
            (0, 0, 0),
            "a held namespace is not looked at: {round:?}"
        );
    }
    // nor at the current Redis time, where a catch-up would take it to its last step
    let round = leader.round().await;
    assert_eq!(
        (round.looked_at, round.committed, round.errors),
        (0, 0, 0),
        "{round:?}"
    );
    let held = harness.rollout(NS, &record.id).await;
    assert_eq!(
        held.state, unconfirmed.state,
        "the rollout stays where the unconfirmed commit left it"
    );
    assert_eq!(steps_of(&outbox(&harness).await), [2], "still held back");
    assert_eq!(
        steps_of(&events.events()),
        [1],
        "no event of step 2 or later reached NATS while the replica was stopped"
    );

    // the replica runs again: the next round confirms what the master holds and fires
    replica.resume().expect("the replica runs again");
    let resumed = eventually("firing resumes", DEADLINE, || async {
        let round = leader.round_at(step_3_due).await;
        let now = harness.rollout(NS, &record.id).await;
        (now.state.step != Some(2)).then_some((round, now))
    })
    .await;
    let (round, stepped) = resumed;
    assert_eq!(
        (round.looked_at, round.committed, round.errors),
        (1, 1, 0),
        "{round:?}"
    );
    assert_eq!(
        (stepped.state.step, stepped.state.lifecycle),
        (Some(3), Lifecycle::Running),
        "one step on, no further"
    );
    // the held events went out first, in order, then the new step's
    eventually(
        "the step 2 and step 3 events, in order",
        DEADLINE,
        || async { (steps_of(&events.events()) == [1, 2, 3]).then_some(()) },
    )
    .await;
    eventually("the outbox emptied", DEADLINE, || async {
        outbox(&harness).await.is_empty().then_some(())
    })
    .await;
    assert!(outbox(&harness).await.is_empty());

    // every step entered and audited once, each step event published once
    let audit = harness.audit(NS, &record.id).await;
    assert_eq!(assert_single_advances(&stepped, &audit), 4);
    let versions: Vec<u64> = events
        .events()
        .iter()
        .filter(|event| event.actor.as_deref() == Some("ticker"))
        .map(|event| event.version)
        .collect();
    let mut distinct = versions.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        versions.len(),
        "no event twice: {versions:?}"
    );
    leader.resign().await;
}
