//! SPEC §11.1 at the planner, judged by what entities are served: computed with
//! `rollout-core` from the records committed in Redis and from the snapshots the planner
//! publishes — the answer every evaluator gives.
//!
//! - A flag edit allowed during a rollout keeps the rollout in the published snapshot.
//! - A new rollout starts from what its target serves: it continues a split left by an
//!   earlier rollout (nobody loses the candidate) and refuses anything else unless told.
//! - A command id's first outcome stands, no-ops included.
//! - A move expecting another step than the current one is `conflict` and moves nothing.
//! - Commands write their namespace into the registry again after Redis lost its data.

mod common;

use common::*;
use futures_util::StreamExt;
use rollout_core::{CompiledFlag, Entity};
use rollout_store::Keys;
use rollout_store::{load_flag, load_rollout};
use rollout_wire::codec::{self, Encoding};
use rollout_wire::events::ChangeEvent;
use rollout_wire::subjects::Namespace;
use serde_json::{json, Value};

const ENTITIES: usize = 2_000;

/// What every entity `user-0 … user-1999` is served according to the committed state.
async fn served_by_committed_state(cluster: &Cluster, flag: &str) -> Vec<String> {
    let keys = Keys::new(&Namespace::new("test").expect("namespace"));
    let mut connection = cluster.redis().await;
    let stored = load_flag(&mut connection, &keys, flag)
        .await
        .expect("flag loads");
    let record = stored.record.expect("flag exists");
    let view = match &record.active_rollout {
        Some(id) => {
            let rollout = load_rollout(&mut connection, &keys, id)
                .await
                .expect("rollout loads")
                .expect("active rollout exists");
            rollout.state.view(&rollout.id, &rollout.plan)
        }
        None => None,
    };
    let compiled = CompiledFlag::compile(&record.flag, stored.version, view.as_ref())
        .expect("committed flag compiles");
    served_by(&compiled)
}

fn served_by(compiled: &CompiledFlag) -> Vec<String> {
    (0..ENTITIES)
        .map(|index| {
            compiled
                .evaluate(&Entity::with_id(format!("user-{index}")))
                .variation
                .to_owned()
        })
        .collect()
}

fn count(served: &[String], variation: &str) -> usize {
    served.iter().filter(|served| *served == variation).count()
}

fn rollout_spec(extra: Value) -> Value {
    let mut spec = json!({"flag": "checkout", "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 60, "duration": "1h"},
                   {"percentage": 100}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

#[tokio::test]
async fn a_flag_edit_during_a_rollout_publishes_a_snapshot_that_keeps_serving_the_rollout() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let rollout_id = create_rollout(&cluster, "checkout").await;
    ok(&cluster
        .command("rollout.continue", json!({"rollout_id": rollout_id}))
        .await);
    let before = served_by_committed_state(&cluster, "checkout").await;
    assert!(
        count(&before, "on") > ENTITIES / 4,
        "50 % of the entities get the candidate"
    );
    let mut events = cluster
        .client
        .subscribe("rollout.events.test.checkout")
        .await
        .expect("subscribe");
    cluster.client.flush().await.expect("flush");

    let mut edited = flag_body("checkout");
    edited["description"] = json!("checkout v2");
    edited["variations"][1]["value"] = json!("yes");
    edited["rules"][0]["conditions"][0]["values"] = json!(["beta", "gamma"]);
    ok(&cluster
        .command("flag.update", json!({"flag": edited}))
        .await);

    let message = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
        .await
        .expect("the edit is published")
        .expect("event");
    let event: ChangeEvent = codec::decode(&message.payload, Encoding::MessagePack).expect("event");
    let snapshot = event
        .snapshot
        .expect("a flag edit carries the flag's whole state");
    let published = served_by(&snapshot.compile().expect("snapshot compiles"));
    let committed = served_by_committed_state(&cluster, "checkout").await;
    assert_eq!(
        published, committed,
        "an evaluator applying the edit serves what is committed"
    );
    assert_eq!(committed, before, "the edit changed nobody's variation");
}

#[tokio::test]
async fn a_new_rollout_continues_the_split_a_stopped_one_left_behind() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let first = ok(&cluster
        .command(
            "rollout.create",
            json!({"rollout": rollout_spec(json!({}))}),
        )
        .await)["rollout_id"]
        .as_str()
        .expect("id")
        .to_owned();
    ok(&cluster
        .command(
            "rollout.stop",
            json!({"rollout_id": first, "percentage": 40}),
        )
        .await);
    let split = served_by_committed_state(&cluster, "checkout").await;
    let on_before = count(&split, "on");
    assert!(on_before > ENTITIES / 4 && on_before < ENTITIES / 2);

    let second = cluster
        .command(
            "rollout.create",
            json!({"rollout": rollout_spec(json!({}))}),
        )
        .await;
    let result = ok(&second);
    assert_eq!(
        result["steps"][0]["percentage"],
        json!(40),
        "no step below the current share: {result}"
    );
    let continued = served_by_committed_state(&cluster, "checkout").await;
    assert_eq!(
        continued, split,
        "the new rollout serves exactly what the split served"
    );
    let second_id = result["rollout_id"].as_str().expect("id").to_owned();
    ok(&cluster
        .command("rollout.continue", json!({"rollout_id": second_id}))
        .await);
    let grown = served_by_committed_state(&cluster, "checkout").await;
    for (index, (was, now)) in split.iter().zip(&grown).enumerate() {
        if was == "on" {
            assert_eq!(now, "on", "user-{index} had the candidate and lost it");
        }
    }
    assert!(count(&grown, "on") > on_before);
}

#[tokio::test]
async fn a_rollout_that_would_change_what_users_get_is_refused_unless_told() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let first = create_rollout(&cluster, "checkout").await;
    ok(&cluster
        .command("rollout.promote", json!({"rollout_id": first}))
        .await);
    let everyone_on = served_by_committed_state(&cluster, "checkout").await;
    assert_eq!(count(&everyone_on, "on"), ENTITIES);

    let dump = cluster.dump().await;
    let refused = cluster
        .command(
            "rollout.create",
            json!({"rollout": rollout_spec(json!({}))}),
        )
        .await;
    assert_eq!(
        error(&refused),
        (
            "failed_precondition".to_owned(),
            Some("rollout.replace_current_serve".to_owned())
        )
    );
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(message.contains("on to everyone"), "{message}");
    assert_eq!(cluster.dump().await, dump, "a refusal changes nothing");
    assert_eq!(
        served_by_committed_state(&cluster, "checkout").await,
        everyone_on
    );

    let replaced = cluster
        .command(
            "rollout.create",
            json!({"rollout": rollout_spec(json!({"replace_current_serve": true}))}),
        )
        .await;
    ok(&replaced);
    let restarted = served_by_committed_state(&cluster, "checkout").await;
    assert!(
        count(&restarted, "on") < ENTITIES / 5,
        "told to, the rollout starts over at 10 %"
    );
}

#[tokio::test]
async fn a_no_op_is_the_first_outcome_of_its_command_id() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    ok(&cluster
        .command("flag.disable", json!({"key": "checkout"}))
        .await);
    let disable = json!({"command_id": "c-noop", "key": "checkout"});
    let first = cluster.command("flag.disable", disable.clone()).await;
    assert_eq!(ok(&first)["flag"]["enabled"], json!(false));
    ok(&cluster
        .command("flag.enable", json!({"key": "checkout"}))
        .await);
    let dump = cluster.dump().await;
    let retried = cluster.command("flag.disable", disable).await;
    assert_eq!(retried, first, "a retry gets the first outcome");
    assert_eq!(cluster.dump().await, dump, "and changes nothing");
    let served = served_by_committed_state(&cluster, "checkout").await;
    assert_eq!(
        count(&served, "off"),
        ENTITIES,
        "the flag stays enabled, serving its default"
    );
    let flag = cluster.query("flag.get", json!({"key": "checkout"})).await;
    assert_eq!(ok(&flag)["flag"]["enabled"], json!(true));
}

#[tokio::test]
async fn a_refusal_that_depends_on_state_is_the_first_outcome_of_its_command_id() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    // the candidate is the flag's off variation: refused while that holds
    let create = json!({"command_id": "c-off-candidate",
        "rollout": rollout_spec(json!({"baseline": "on", "candidate": "off"}))});
    let first = cluster.command("rollout.create", create.clone()).await;
    assert_eq!(error(&first).0, "invalid_argument", "{first}");
    let mut edited = flag_body("checkout");
    edited["off_variation"] = json!("on");
    ok(&cluster
        .command("flag.update", json!({"flag": edited}))
        .await);
    let retried = cluster.command("rollout.create", create).await;
    assert_eq!(retried, first, "a retry gets the first outcome");
    let flag = cluster.query("flag.get", json!({"key": "checkout"})).await;
    assert_eq!(
        ok(&flag)["flag"]["active_rollout"],
        Value::Null,
        "the retry started no rollout"
    );
    let served = served_by_committed_state(&cluster, "checkout").await;
    assert_eq!(
        count(&served, "off"),
        ENTITIES,
        "everyone keeps the default"
    );
}

#[tokio::test]
async fn a_move_expecting_another_step_is_a_conflict_and_moves_nothing() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let rollout_id = create_rollout(&cluster, "checkout").await;
    let before = served_by_committed_state(&cluster, "checkout").await;
    let dump = cluster.dump().await;
    let stale = cluster
        .command(
            "rollout.continue",
            json!({"command_id": "c-stale", "rollout_id": rollout_id, "expected_step": 1}),
        )
        .await;
    assert_eq!(
        error(&stale),
        ("conflict".to_owned(), Some("expected_step".to_owned()))
    );
    assert_eq!(
        served_by_committed_state(&cluster, "checkout").await,
        before
    );
    let status = cluster
        .query("rollout.status", json!({"rollout_id": rollout_id}))
        .await;
    assert_eq!(ok(&status)["current_step"], json!(0));
    // the refusal is remembered for its id; nothing else changed
    let after_refusal = cluster.dump().await;
    assert_eq!(
        after_refusal
            .iter()
            .filter(|(key, _)| !key.contains(":cmd:"))
            .collect::<Vec<_>>(),
        dump.iter().collect::<Vec<_>>()
    );

    let moved = cluster
        .command(
            "rollout.continue",
            json!({"rollout_id": rollout_id, "expected_step": 0}),
        )
        .await;
    assert_eq!(ok(&moved)["current_step"], json!(1));
    assert!(
        count(&served_by_committed_state(&cluster, "checkout").await, "on") > count(&before, "on")
    );
}

#[tokio::test]
async fn commands_register_their_namespace_again_after_redis_lost_its_data() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let mut connection = cluster.redis().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .expect("flushall");
    create_flag(&cluster, "checkout").await;
    let namespaces: Vec<String> = rollout_store::namespaces::registered(&mut connection)
        .await
        .expect("smembers")
        .iter()
        .map(|namespace| namespace.as_str().to_owned())
        .collect();
    assert_eq!(
        namespaces,
        ["test"],
        "the ticker finds the namespace's rollouts again"
    );
}

#[tokio::test]
async fn a_subscriber_on_everything_does_not_hold_the_outbox_up() {
    let cluster = Cluster::start(1).await;
    // an operator debugging with `nats sub '>'`, or any client that may subscribe there,
    // never answering anything
    let rogue = async_nats::connect(cluster.nats.url())
        .await
        .expect("rogue connects");
    let _everything = rogue.subscribe(">").await.expect("subscribe >");
    let _inboxes = rogue
        .subscribe("_INBOX.>")
        .await
        .expect("subscribe _INBOX.>");
    rogue.flush().await.expect("flush");
    let mut watcher = cluster
        .client
        .subscribe("rollout.events.test.>")
        .await
        .expect("watch");
    cluster.client.flush().await.expect("flush");

    // more than one sweep page
    let flags = 600;
    for index in 0..flags {
        create_flag(&cluster, &format!("flag-{index}")).await;
    }
    let mut delivered = std::collections::BTreeSet::new();
    while delivered.len() < flags {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), watcher.next())
            .await
            .expect("every flag's event is delivered")
            .expect("event");
        delivered.insert(message.subject.to_string());
    }
    let keys = Keys::new(&Namespace::new("test").expect("namespace"));
    let mut connection = cluster.redis().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let pending = rollout_store::outbox::pending(&mut connection, &keys)
            .await
            .expect("xlen");
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox still holds {pending} delivered events: they would be republished forever"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
