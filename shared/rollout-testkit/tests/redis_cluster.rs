//! `RedisCluster`: real `redis-server` processes in cluster mode, checked
//! through the `redis` crate's cluster client (slots spread over the
//! masters, a replica taking over a killed master's slots) and the test
//! kit's own per-node commands.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::AsyncCommands;
use rollout_testkit::{
    RedisCluster, RedisClusterOptions, RedisReply, TestkitError, REDIS_CLUSTER_SLOTS,
};

/// Bounds every wait in these tests; only reached when something is broken.
const DEADLINE: Duration = Duration::from_secs(30);

/// Retries `attempt` until it succeeds, failing the test with `what` (and
/// the last error) after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what} did not happen within {DEADLINE:?}: {e}"),
        }
    }
}

async fn cluster_connection(cluster: &RedisCluster) -> ClusterConnection {
    ClusterClient::new(cluster.urls())
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("connect to the cluster")
}

fn bulk(text: &str) -> RedisReply {
    RedisReply::Bulk(Some(text.as_bytes().to_vec()))
}

#[test]
fn a_cluster_needs_three_masters() {
    let error = RedisCluster::start_with(RedisClusterOptions::default().masters(2))
        .expect_err("redis-cli --cluster create refuses fewer than 3 masters");
    assert!(matches!(error, TestkitError::InvalidOptions(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_different_hash_tags_land_on_different_masters() {
    let started = Instant::now();
    let cluster = tokio::task::block_in_place(RedisCluster::start).expect("start redis cluster");
    eprintln!("cluster ok after {:?}", started.elapsed());
    assert_eq!(cluster.nodes().len(), 3);
    let masters = cluster.masters().expect("masters");
    assert_eq!(
        masters.len(),
        3,
        "every node of a replica-less cluster is a master"
    );

    // One key per master: hash tags until every master owns one.
    let mut key_of_master: BTreeMap<u16, String> = BTreeMap::new();
    for tag in b'a'..=b'z' {
        let key = format!("{{{}}}:flag", char::from(tag));
        let slot = cluster.keyslot(&key).expect("keyslot");
        assert!(u32::from(slot) < REDIS_CLUSTER_SLOTS);
        let owner = cluster.node_for_key(&key).expect("owner");
        key_of_master.entry(owner.port()).or_insert(key);
    }
    assert_eq!(
        key_of_master.len(),
        3,
        "hash tags a..z spread over every master: {key_of_master:?}"
    );

    let mut connection = cluster_connection(&cluster).await;
    for key in key_of_master.values() {
        let () = connection
            .set(key, format!("value of {key}"))
            .await
            .expect("SET");
    }
    for (port, key) in &key_of_master {
        let read: String = connection.get(key).await.expect("GET");
        assert_eq!(read, format!("value of {key}"));
        // The value lives on the master that node_for_key named, and only there.
        for node in cluster.nodes() {
            let reply = node.command(&["GET", key]).expect("GET on one node");
            if node.port() == *port {
                assert_eq!(reply, bulk(&format!("value of {key}")));
            } else {
                let moved = reply.as_text().unwrap_or_default();
                assert!(
                    reply.is_error() && moved.starts_with("MOVED"),
                    "{key} on 127.0.0.1:{} answered {reply:?}",
                    node.port()
                );
            }
        }
    }

    // Waiting for the failover of a node that still runs is a mistake;
    // one that is not failed over in time names what is missing.
    let running = tokio::task::block_in_place(|| {
        cluster.wait_for_failover(masters[0], Duration::from_secs(1))
    })
    .expect_err("a running node");
    assert!(
        matches!(running, TestkitError::InvalidOptions(_)),
        "{running}"
    );
    masters[0].kill().expect("kill a master");
    let no_replica = tokio::task::block_in_place(|| {
        cluster.wait_for_failover(masters[0], Duration::from_millis(200))
    })
    .expect_err("nobody takes over within 200 ms");
    assert!(
        no_replica.to_string().contains(&format!(
            "did not fail over node 127.0.0.1:{}",
            masters[0].port()
        )),
        "{no_replica}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_the_slots_of_a_killed_master() {
    let started = Instant::now();
    let cluster = tokio::task::block_in_place(|| {
        RedisCluster::start_with(RedisClusterOptions::default().replicas_per_master(1))
    })
    .expect("start redis cluster with replicas");
    eprintln!("cluster ok after {:?}", started.elapsed());
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.masters().expect("masters").len(), 3);

    let mut connection = cluster_connection(&cluster).await;
    let keys: Vec<String> = (0..30).map(|index| format!("rollout:{index}")).collect();
    for key in &keys {
        let () = connection
            .set(key, format!("state of {key}"))
            .await
            .expect("SET");
    }
    // WAIT goes to every master over the connections that wrote: each
    // has its writes acknowledged by its replica before the kill.
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut connection)
        .await
        .expect("WAIT");
    assert_eq!(acked, 1, "every master's replica has the writes");

    let key = &keys[0];
    let owner = cluster.node_for_key(key).expect("owner");
    let replicas = cluster.replicas_of(owner).expect("replicas");
    assert_eq!(replicas.len(), 1, "one replica per master");
    let replica_port = replicas[0].port();

    let kill_at = Instant::now();
    owner.kill().expect("kill the master");
    tokio::task::block_in_place(|| cluster.wait_for_failover(owner, DEADLINE)).expect("failover");
    eprintln!("failed over {:?} after the kill", kill_at.elapsed());

    let promoted = cluster.node_for_key(key).expect("new owner");
    assert_eq!(promoted.port(), replica_port, "the replica took the slot");
    assert_eq!(
        promoted.command(&["GET", key]).expect("GET"),
        bulk(&format!("state of {key}"))
    );
    let masters = cluster.masters().expect("masters");
    assert_eq!(masters.len(), 3);
    assert!(masters.iter().all(|master| master.port() != owner.port()));
    for key in &keys {
        let read: String = eventually(&format!("reading {key} after the failover"), || {
            let mut connection = connection.clone();
            async move { connection.get(key).await }
        })
        .await;
        assert_eq!(read, format!("state of {key}"));
    }

    // The old master comes back on its port and dir, and rejoins as the
    // replica of the node that took its slots.
    tokio::task::block_in_place(|| {
        owner.restart()?;
        cluster.wait_until_ok(DEADLINE)
    })
    .expect("the old master rejoins");
    let rejoined = cluster.replicas_of(promoted).expect("replicas");
    assert_eq!(
        rejoined.iter().map(|node| node.port()).collect::<Vec<_>>(),
        [owner.port()]
    );
    eprintln!("test took {:?}", started.elapsed());
}
