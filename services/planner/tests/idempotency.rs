//! A command id seen before returns the first outcome and changes nothing — for successes
//! and refusals alike, over request-reply and the durable stream.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_repeated_command_id_returns_the_first_outcome_and_changes_nothing() {
    let cluster = Cluster::start(1).await;
    let body = json!({"command_id": "c-1", "flag": flag_body("checkout")});
    let first = cluster.command("flag.create", body.clone()).await;
    ok(&first);
    let dump = cluster.dump().await;
    let again = cluster.command("flag.create", body).await;
    assert_eq!(again, first, "the first outcome, not a conflict");
    assert_eq!(cluster.dump().await, dump, "nothing changed");

    let rollout_id = create_rollout(&cluster, "checkout").await;
    let pause = json!({"command_id": "c-2", "rollout_id": rollout_id});
    let paused = cluster.command("rollout.pause", pause.clone()).await;
    ok(&paused);
    ok(&cluster
        .command("rollout.resume", json!({"rollout_id": rollout_id}))
        .await);
    let dump = cluster.dump().await;
    // a retry after a lost reply must not pause the resumed rollout again
    let retried = cluster.command("rollout.pause", pause).await;
    assert_eq!(retried, paused);
    assert_eq!(cluster.dump().await, dump);
    let status = cluster
        .query("rollout.status", json!({"rollout_id": rollout_id}))
        .await;
    assert_eq!(ok(&status)["state"], json!("running"));
}

#[tokio::test]
async fn a_refusal_stands_for_its_command_id() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "checkout").await;
    let rollout_id = create_rollout(&cluster, "checkout").await;
    let resume = json!({"command_id": "c-9", "rollout_id": rollout_id});
    let refused = cluster.command("rollout.resume", resume.clone()).await;
    assert_eq!(error(&refused).0, "failed_precondition");
    ok(&cluster
        .command("rollout.pause", json!({"rollout_id": rollout_id}))
        .await);
    // the same id now would succeed as a new command, but it is the same command
    let retried = cluster.command("rollout.resume", resume).await;
    assert_eq!(retried, refused);
    let status = cluster
        .query("rollout.status", json!({"rollout_id": rollout_id}))
        .await;
    assert_eq!(ok(&status)["state"], json!("paused"));
}

/// Publishes JSON bodies to the durable command stream, as automation would.
struct Queue {
    jetstream: async_nats::jetstream::Context,
}

impl Queue {
    fn new(cluster: &Cluster) -> Queue {
        Queue {
            jetstream: async_nats::jetstream::new(cluster.client.clone()),
        }
    }

    /// Publishes `body` as a `flag.create` command; returns its stream sequence.
    async fn flag_create(&self, body: Vec<u8>) -> u64 {
        self.publish("flag.create", body).await
    }

    /// Publishes JSON `body` as a `verb` command; returns its stream sequence.
    async fn publish(&self, verb: &str, body: Vec<u8>) -> u64 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        self.jetstream
            .publish_with_headers(format!("rollout.cmdq.test.{verb}"), headers, body.into())
            .await
            .expect("publish")
            .await
            .expect("stored in the stream")
            .sequence
    }
}

/// Subscribes to every outcome subject before anything is queued.
async fn outcomes(cluster: &Cluster) -> async_nats::Subscriber {
    let subscriber = cluster
        .client
        .subscribe("rollout.outcome.>")
        .await
        .expect("subscribe");
    cluster.client.flush().await.expect("flush");
    subscriber
}

/// The next outcome: its subject and its JSON body.
async fn next_outcome(outcomes: &mut async_nats::Subscriber) -> (String, serde_json::Value) {
    let message = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        futures_util::StreamExt::next(outcomes),
    )
    .await
    .expect("outcome within 20 s")
    .expect("subscription open");
    let body = serde_json::from_slice(&message.payload).expect("json outcome");
    (message.subject.to_string(), body)
}

#[tokio::test]
async fn queued_commands_are_applied_once_and_answered_on_their_outcome_subject() {
    let cluster = Cluster::start(1).await;
    let mut outcomes = outcomes(&cluster).await;
    let queue = Queue::new(&cluster);
    let body = serde_json::to_vec(&json!({"command_id": "q-1", "flag": flag_body("queued")}))
        .expect("json");
    for _ in 0..2 {
        queue.flag_create(body.clone()).await;
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (subject, outcome) = next_outcome(&mut outcomes).await;
        assert_eq!(subject, "rollout.outcome.test.q-1");
        seen.push(outcome);
    }
    assert_eq!(
        seen[0], seen[1],
        "the same command twice gets the first outcome twice"
    );
    assert_eq!(ok(&seen[0])["version"], json!(1));
    let flag = cluster.query("flag.get", json!({"key": "queued"})).await;
    assert_eq!(ok(&flag)["version"], json!(1), "applied exactly once");
}

#[tokio::test]
async fn queued_messages_that_are_not_commands_are_answered_and_change_nothing() {
    let cluster = Cluster::start(1).await;
    let mut outcomes = outcomes(&cluster).await;
    let dump = cluster.dump().await;
    let queue = Queue::new(&cluster);
    // a readable id names the outcome subject even though the body is not a command
    queue
        .flag_create(br#"{"command_id": "bad-1", "flag": 5}"#.to_vec())
        .await;
    // without one, the stream sequence the publisher was acknowledged with stands in
    let sequence = queue.flag_create(b"not a command at all".to_vec()).await;
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 2 {
        let (subject, outcome) = next_outcome(&mut outcomes).await;
        answered.insert(subject, error(&outcome).0);
    }
    assert_eq!(
        answered,
        std::collections::BTreeMap::from([
            (
                "rollout.outcome.test.bad-1".to_owned(),
                "invalid_argument".to_owned()
            ),
            (
                format!("rollout.outcome.test.js-{sequence}"),
                "invalid_argument".to_owned()
            ),
        ])
    );
    assert_eq!(cluster.dump().await, dump, "nothing changed");
}

#[tokio::test]
async fn queued_commands_on_one_flag_apply_in_the_order_the_stream_accepted_them() {
    let cluster = Cluster::start(2).await;
    create_flag(&cluster, "ordered").await;
    let mut outcomes = outcomes(&cluster).await;
    let queue = Queue::new(&cluster);
    // alternating toggles: applied out of order, the flag would end in the wrong state or
    // a toggle would find nothing to do
    let toggles = 40;
    for index in 0..toggles {
        let verb = if index % 2 == 0 { "disable" } else { "enable" };
        let body =
            serde_json::to_vec(&json!({"command_id": format!("t-{index}"), "key": "ordered"}))
                .expect("json");
        queue.publish(&format!("flag.{verb}"), body).await;
    }
    for _ in 0..toggles {
        let (_, outcome) = next_outcome(&mut outcomes).await;
        ok(&outcome);
    }
    let kinds =
        audit_kinds_oldest_first(&cluster, json!({"flag": "ordered", "page_size": 100})).await;
    let expected: Vec<String> = std::iter::once("flag_created".to_owned())
        .chain((0..toggles).map(|index| {
            if index % 2 == 0 {
                "flag_disabled"
            } else {
                "flag_enabled"
            }
            .to_owned()
        }))
        .collect();
    assert_eq!(kinds, expected, "every toggle applied, in stream order");
    let flag = cluster.query("flag.get", json!({"key": "ordered"})).await;
    assert_eq!(
        ok(&flag)["flag"]["enabled"],
        json!(true),
        "the last one stands"
    );
}

#[tokio::test]
async fn a_queued_command_failing_internally_is_answered_once_and_does_not_block_the_stream() {
    let cluster = Cluster::start(1).await;
    let mut outcomes = outcomes(&cluster).await;
    // a record no planner can read: every attempt fails the same way
    let mut connection = cluster.redis().await;
    let _: () = redis::cmd("HSET")
        .arg("ro:{test}:rollout:r-garbled")
        .arg("rev")
        .arg(1)
        .arg("data")
        .arg("not a record")
        .query_async(&mut connection)
        .await
        .expect("hset");
    let queue = Queue::new(&cluster);
    queue
        .publish(
            "rollout.pause",
            br#"{"command_id": "p-1", "rollout_id": "r-garbled"}"#.to_vec(),
        )
        .await;
    queue
        .flag_create(
            serde_json::to_vec(&json!({"command_id": "after-1", "flag": flag_body("after")}))
                .expect("json"),
        )
        .await;
    let (subject, outcome) = next_outcome(&mut outcomes).await;
    assert_eq!(subject, "rollout.outcome.test.p-1");
    assert_eq!(error(&outcome).0, "internal");
    let (subject, outcome) = next_outcome(&mut outcomes).await;
    assert_eq!(
        subject, "rollout.outcome.test.after-1",
        "the stream went on"
    );
    ok(&outcome);
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = queue
        .jetstream
        .get_stream("ROLLOUT_CMDS")
        .await
        .expect("stream")
        .get_consumer("planner")
        .await
        .expect("consumer");
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(
        (info.num_ack_pending, info.num_pending),
        (0, 0),
        "the failing command was acknowledged, not left for redelivery"
    );
}

#[tokio::test]
async fn client_command_ids_cannot_take_a_stand_in() {
    let cluster = Cluster::start(1).await;
    let reply = cluster
        .command(
            "flag.create",
            json!({"command_id": "js-5", "flag": flag_body("mine")}),
        )
        .await;
    assert_eq!(
        error(&reply),
        ("invalid_argument".to_owned(), Some("command_id".to_owned()))
    );
}

#[tokio::test]
async fn a_finished_rollout_of_a_deleted_flag_can_be_deleted() {
    let cluster = Cluster::start(1).await;
    create_flag(&cluster, "gone").await;
    let rollout_id = create_rollout(&cluster, "gone").await;
    ok(&cluster
        .command("rollout.rollback", json!({"rollout_id": rollout_id}))
        .await);
    ok(&cluster.command("flag.delete", json!({"key": "gone"})).await);
    let deleted = cluster
        .command("rollout.delete", json!({"rollout_id": rollout_id}))
        .await;
    assert_eq!(ok(&deleted)["rollout_id"], json!(rollout_id));
    let status = cluster
        .query("rollout.status", json!({"rollout_id": rollout_id}))
        .await;
    assert_eq!(error(&status).0, "not_found");
    let flag = cluster.query("flag.get", json!({"key": "gone"})).await;
    assert_eq!(error(&flag).0, "not_found", "the flag stays deleted");
}
