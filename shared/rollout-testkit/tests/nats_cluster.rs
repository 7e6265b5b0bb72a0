//! `NatsCluster`: three real `nats-server` processes in one cluster,
//! checked through async-nats as the services use it (core subjects
//! across nodes, an R3 JetStream stream through a node crash and restart).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use rollout_testkit::{NatsCluster, NatsOptions, TestkitError};

/// Bounds every wait in these tests; only reached when something is broken.
const DEADLINE: Duration = Duration::from_secs(30);

/// Retries `attempt` until it succeeds, failing the test with `what`
/// (and the last reason) after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(reason) => panic!("{what} did not happen within {DEADLINE:?}: {reason}"),
        }
    }
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

#[test]
fn a_cluster_needs_two_nodes() {
    for size in [0, 1] {
        let error = NatsCluster::start_with(size, NatsOptions::default()).expect_err("refused");
        assert!(matches!(error, TestkitError::InvalidOptions(_)), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_one_node_reaches_a_subscriber_on_another() {
    let cluster = tokio::task::block_in_place(NatsCluster::start).expect("start nats cluster");
    assert_eq!(cluster.size(), 3);
    assert_eq!(cluster.url_list(), cluster.urls().join(","));
    let names: BTreeSet<&str> = cluster.nodes().iter().map(|n| n.server_name()).collect();
    assert_eq!(names.len(), 3, "every node has its own server_name");

    let publisher = connect(&cluster.node(0).url()).await;
    let subscriber = connect(&cluster.node(2).url()).await;
    assert_eq!(publisher.server_info().port, cluster.node(0).port());
    assert_eq!(subscriber.server_info().port, cluster.node(2).port());
    let mut messages = subscriber
        .subscribe("orders.created")
        .await
        .expect("subscribe");
    subscriber.flush().await.expect("flush");

    // The subscription reaches node 0 over the route asynchronously: probe
    // until a message makes it across, then send the real ones.
    let deadline = Instant::now() + DEADLINE;
    loop {
        publisher
            .publish("orders.created", "probe".into())
            .await
            .expect("publish a probe");
        publisher.flush().await.expect("flush");
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(100), messages.next()).await
        {
            message.expect("subscription open");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 0 did not learn of node 2's subscription within {DEADLINE:?}"
        );
    }
    // drain probes still in flight (sent before one came back)
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), messages.next()).await {
    }

    for index in 0..10 {
        publisher
            .publish("orders.created", format!("order-{index}").into())
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    for index in 0..10 {
        let message = tokio::time::timeout(DEADLINE, messages.next())
            .await
            .expect("a message within the deadline")
            .expect("subscription open");
        assert_eq!(message.payload, format!("order-{index}").as_bytes());
    }
}

/// Publishes `orders.<i>` for every `i` in `range`, each with the message id
/// `order-<i>` so that a retry after a lost ack is deduplicated by the
/// stream; retries each until it is acknowledged.
async fn publish_orders(js: &jetstream::Context, range: std::ops::RangeInclusive<u64>) {
    for index in range {
        eventually(&format!("the ack of order {index}"), || async move {
            let publish = jetstream::message::PublishMessage::build()
                .payload(index.to_string().into())
                .message_id(format!("order-{index}"));
            js.send_publish(format!("orders.{index}"), publish)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        })
        .await;
    }
}

/// Reads the whole stream through a new ordered consumer (an R1 consumer
/// the client recreates where it left off if it stops answering, as one may
/// while the cluster settles) and returns the (stream sequence, payload) of
/// every message, in delivery order, checking that none follows the last.
async fn read_all(js: &jetstream::Context, expected: usize) -> Vec<(u64, u64)> {
    let stream = eventually("getting the stream", || async {
        js.get_stream("ORDERS").await.map_err(|e| e.to_string())
    })
    .await;
    let consumer = eventually("creating the consumer", || async {
        stream
            .create_consumer(consumer::pull::OrderedConfig::default())
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let mut messages = consumer.messages().await.expect("consume");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut read = Vec::new();
    let mut pending_after_last = None;
    let mut last_error = None;
    while read.len() < expected {
        let next = tokio::time::timeout_at(deadline, messages.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {expected} messages read within {DEADLINE:?} (last error: {last_error:?})",
                    read.len()
                )
            })
            .expect("consumer open");
        // an error (a missed heartbeat) is followed by the consumer's
        // recreation, not by a lost message
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                last_error = Some(error.to_string());
                continue;
            }
        };
        let info = message.info().expect("jetstream message");
        let payload: u64 = std::str::from_utf8(&message.payload)
            .expect("utf-8")
            .parse()
            .expect("number");
        read.push((info.stream_sequence, payload));
        pending_after_last = Some(info.pending);
    }
    assert_eq!(
        pending_after_last,
        Some(0),
        "messages beyond the {expected} expected"
    );
    read
}

/// The number of messages node `index` holds for `ORDERS` in its own store.
fn local_messages(cluster: &NatsCluster, index: usize) -> Result<u64, String> {
    let jsz = cluster
        .monitor(index, "/jsz?streams=true")
        .map_err(|e| e.to_string())?;
    jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
        .find(|detail| detail["name"] == "ORDERS")
        .and_then(|detail| detail["state"]["messages"].as_u64())
        .ok_or_else(|| format!("no ORDERS stream in {jsz}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_survives_a_killed_node_and_the_node_catches_up() {
    let started = Instant::now();
    let cluster = tokio::task::block_in_place(NatsCluster::start).expect("start nats cluster");
    eprintln!("cluster formed after {:?}", started.elapsed());

    let first = jetstream::new(connect(&cluster.node(0).url()).await);
    let mut stream = first
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create an R3 stream right after start");
    publish_orders(&first, 1..=100).await;

    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.messages, 100);
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let killed = cluster
        .nodes()
        .iter()
        .position(|node| node.server_name() == leader)
        .expect("the leader is a node");
    let kill_at = Instant::now();
    cluster.node(killed).kill().expect("kill the stream leader");

    // A short request timeout: publishes sent while the stream elects a new
    // leader go unanswered, and are retried sooner.
    let seeded = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(
            async_nats::ConnectOptions::new()
                .connect(cluster.urls().as_slice())
                .await
                .expect("connect with every seed"),
        );
    publish_orders(&seeded, 101..=200).await;
    eprintln!(
        "100 more published {:?} after killing {leader}",
        kill_at.elapsed()
    );

    let want: Vec<(u64, u64)> = (1..=200).map(|n| (n, n)).collect();
    assert_eq!(read_all(&seeded, 200).await, want);
    eprintln!("read 200 {:?} after the kill", kill_at.elapsed());

    let restart_at = Instant::now();
    tokio::task::block_in_place(|| cluster.restart_node(killed)).expect("restart the node");
    eprintln!("rejoined after {:?}", restart_at.elapsed());
    eventually(
        &format!("{leader} catching up on the stream after its restart"),
        || async {
            match local_messages(&cluster, killed)? {
                200 => Ok(()),
                other => Err(format!("it holds {other} messages")),
            }
        },
    )
    .await;
    eprintln!("restarted node caught up after {:?}", restart_at.elapsed());

    // Take down the third node (neither the restarted one nor the stream
    // leader, so no election is needed): an ack now needs the restarted
    // node's vote, which proves it is a live replica again.
    let mut orders = eventually("getting the stream", || async {
        seeded.get_stream("ORDERS").await.map_err(|e| e.to_string())
    })
    .await;
    let leader_now = orders
        .info()
        .await
        .expect("stream info")
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a leader");
    let third = (0..cluster.size())
        .find(|&index| index != killed && cluster.node(index).server_name() != leader_now)
        .expect("a node that is neither restarted nor leader");
    cluster.node(third).kill().expect("kill the third node");
    let third_at = Instant::now();
    publish_orders(&seeded, 201..=201).await;
    eprintln!("201 acked {:?} after killing the third", third_at.elapsed());
    let info = orders.info().await.expect("stream info");
    assert_eq!((info.state.messages, info.state.last_sequence), (201, 201));
    eprintln!("test took {:?}", started.elapsed());
}
