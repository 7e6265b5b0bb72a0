//! SPEC §11.1 "nothing any client does stalls the system" and "data loss is detected, not
//! served", judged by what a replica serves: events the NATS client dropped as a slow
//! consumer, and a Redis restored from an older backup (same generation, older versions).

mod common;

use std::time::Duration;

use common::*;
use rollout_wire::codec::Encoding;

/// Served variation and version of `flag` for entity `u-1`, over NATS.
async fn served(client: &async_nats::Client, flag: &str) -> (String, u64) {
    let reply = eval(
        client,
        NS,
        &serde_json::json!({"flag": flag, "entity": {"id": "u-1"}}),
        Encoding::Json,
    )
    .await
    .expect("evaluates");
    (
        reply["variation"].as_str().expect("variation").to_owned(),
        reply["version"].as_u64().expect("version"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_dropped_by_a_slow_consumer_are_caught_up_without_waiting_for_the_periodic_resync() {
    let servers = Servers::start();
    let store = servers.store().await;
    let flags: Vec<String> = (0..20).map(|index| format!("quiet-{index}")).collect();
    for flag in &flags {
        store.create_flag(NS, checkout_flag(flag)).await;
    }
    store.create_flag(NS, checkout_flag("noisy")).await;
    let mut config = servers.config();
    // a tiny client buffer makes the burst below overflow it; the periodic comparison is
    // far away, so only the slow-consumer signal can bring dropped changes in
    config.nats.subscription_capacity = 4;
    config.evaluator.resync_interval = Duration::from_secs(3600);
    config.evaluator.reconnect_check_interval = Duration::from_millis(200);
    let replica = start(config).await;

    // each quiet flag changes once (to serve `on`), its one event buried in a burst of
    // stale events of another flag: a dropped one is followed by no later event that
    // would reveal a gap
    let mut changes = Vec::new();
    for flag in &flags {
        let mut changed = checkout_flag(flag);
        changed.default = rollout_core::Serve::variation("on");
        changes.push(store.commit_update_flag(NS, changed).await);
    }
    let noisy = store.commit_update_flag(NS, checkout_flag("noisy")).await;
    for change in &changes {
        for _ in 0..500 {
            store.publish_raw_unflushed(&noisy.events[0]).await;
        }
        store.publish_raw_unflushed(&change.events[0]).await;
    }
    store.flush().await;

    let client = servers.client().await;
    eventually("every quiet flag serves its change", || async {
        let mut all = true;
        for (flag, change) in flags.iter().zip(&changes) {
            all &= served(&client, flag).await == ("on".to_owned(), change.version);
        }
        all
    })
    .await;
    let metrics = http(replica.http_addr(), "GET", "/metrics", &[], b"")
        .await
        .text();
    assert!(
        metrics.contains(r#"reason="slow_consumer"} "#)
            && !metrics.contains(r#"reason="slow_consumer"} 0"#),
        "the burst overflowed the client's buffer (else this test proves nothing):\n{metrics}"
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_older_backup_is_served_as_it_is_now() {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    let mut config = servers.config();
    config.evaluator.resync_interval = Duration::from_millis(500);
    let replica = start(config).await;
    // the backup holds the generation id the replica loaded under
    let backup = store.backup().await;
    assert!(backup.iter().any(|(key, _)| key == "ro:generation"));
    // after the backup: two more versions, the last one serving `on`
    store.update_flag(NS, checkout_flag("checkout")).await;
    let mut turned_on = checkout_flag("checkout");
    turned_on.default = rollout_core::Serve::variation("on");
    let lost_version = store.update_flag(NS, turned_on).await;
    let client = servers.client().await;
    eventually("the replica serves the last version", || async {
        served(&client, "checkout").await == ("on".to_owned(), lost_version)
    })
    .await;

    // the operator restores the older backup (same generation id): Redis holds version 1
    // again, and its history goes on from there with other content
    store.restore(&backup).await;
    let mut new_history = checkout_flag("checkout");
    new_history.description = Some("after the restore".to_owned());
    let new_version = store.commit_update_flag(NS, new_history).await.version;
    assert!(new_version < lost_version);
    eventually("the replica serves what Redis holds now", || async {
        served(&client, "checkout").await == ("off".to_owned(), new_version)
    })
    .await;
    replica.stop().await;
}
