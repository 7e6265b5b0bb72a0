//! SPEC §11.1 "nothing any client does stalls the system" and "data loss is detected, not
//! served", judged by what a replica serves: events the NATS client dropped as a slow
//! consumer, and a Redis restored from an older backup (same generation, older versions —
//! or, once its new history has moved on, the same version numbers with other content).

mod common;

use std::time::Duration;

use common::*;
use rollout_wire::codec::Encoding;

/// Served variation and version of `flag` for entity `u-1`, over NATS (it must exist).
async fn served(client: &async_nats::Client, flag: &str) -> (String, u64) {
    served_or_missing(client, flag)
        .await
        .unwrap_or_else(|| panic!("flag {flag} is not served"))
}

/// What `flag` serves entity `u-1` over NATS: its variation and version, or `None` when
/// the replica says it does not exist.
async fn served_or_missing(client: &async_nats::Client, flag: &str) -> Option<(String, u64)> {
    let reply = eval(
        client,
        NS,
        &serde_json::json!({"flag": flag, "entity": {"id": "u-1"}}),
        Encoding::Json,
    )
    .await;
    match reply {
        Ok(reply) => Some((
            reply["variation"].as_str().expect("variation").to_owned(),
            reply["version"].as_u64().expect("version"),
        )),
        Err(error) if error.code == rollout_wire::envelope::ErrorCode::NotFound => None,
        Err(error) => panic!("evaluation failed: {error}"),
    }
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

/// A replica serving a history Redis loses: the operator restores a backup taken
/// `lost_versions` versions before (the last one lost turned the flag on), and Redis's
/// history goes on from the backup with one commit of other content — below the version
/// served, or (one version lost) at that same version number. What the replica serves
/// must follow Redis, whether that commit's event arrives (`announced`) or only the
/// periodic comparison can tell.
async fn restored_from_an_older_backup(lost_versions: u64, announced: bool) {
    let servers = Servers::start();
    let store = servers.store().await;
    store.create_flag(NS, checkout_flag("checkout")).await;
    let mut config = servers.config();
    config.evaluator.resync_interval = if announced {
        // only the event can bring the new history in
        Duration::from_secs(3600)
    } else {
        Duration::from_millis(300)
    };
    let replica = start(config).await;
    // the backup holds the generation id the replica loaded under
    let backup = store.backup().await;
    assert!(backup.iter().any(|(key, _)| key == "ro:generation"));
    for _ in 1..lost_versions {
        store.update_flag(NS, checkout_flag("checkout")).await;
    }
    let mut turned_on = checkout_flag("checkout");
    turned_on.default = rollout_core::Serve::variation("on");
    let lost_version = store.update_flag(NS, turned_on).await;
    let client = servers.client().await;
    eventually("the replica serves the version to be lost", || async {
        served(&client, "checkout").await == ("on".to_owned(), lost_version)
    })
    .await;

    // the operator restores the backup (same generation id), and Redis's history goes on
    // from there with other content before the replica looked at Redis again
    store.restore(&backup).await;
    let mut new_history = checkout_flag("checkout");
    new_history.description = Some("after the restore".to_owned());
    let committed = store.commit_update_flag(NS, new_history).await;
    assert_eq!(committed.version, lost_version + 1 - lost_versions);
    if announced {
        store.publish(NS, &committed).await;
    }
    eventually("the replica serves what Redis holds now", || async {
        served(&client, "checkout").await == ("off".to_owned(), committed.version)
    })
    .await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_an_older_backup_is_served_as_it_is_now() {
    restored_from_an_older_backup(2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_redis_whose_new_history_reaches_the_served_version_is_served_as_it_is_now() {
    restored_from_an_older_backup(1, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_redis_reaching_the_served_version_unannounced_is_served_as_it_is_now() {
    restored_from_an_older_backup(1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_whose_events_never_arrive_are_served_without_waiting_for_the_periodic_resync() {
    let servers = Servers::start();
    let store = servers.store().await;
    for flag in ["edited", "deleted", "busy"] {
        store.create_flag(NS, checkout_flag(flag)).await;
    }
    // the namespace's version counter is off by a constant, as for data written before it
    // existed: only its movements count
    let mut connection = store.redis.clone();
    let _: () = redis::cmd("INCRBY")
        .arg(format!("ro:{{{NS}}}:versions"))
        .arg(1_000)
        .query_async(&mut connection)
        .await
        .expect("offset the counter");
    let mut config = servers.config();
    // the periodic comparison never comes: only the version counter can bring these in
    config.evaluator.resync_interval = Duration::from_secs(3600);
    config.evaluator.reconnect_check_interval = Duration::from_millis(200);
    let replica = start(config).await;
    let client = servers.client().await;
    let edited_before = served(&client, "edited").await;
    assert_eq!(edited_before.0, "off");

    // another flag of the namespace changes all the time, its events delivered
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (store, stop) = (store.clone(), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let mut changes = 0_u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.update_flag(NS, checkout_flag("busy")).await;
                changes += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            changes
        })
    };
    // an edit and a new flag, committed; their events are lost (the last of each flag)
    let mut turned_on = checkout_flag("edited");
    turned_on.default = rollout_core::Serve::variation("on");
    let edited = store.commit_update_flag(NS, turned_on).await;
    let created = store.commit_create_flag(NS, checkout_flag("created")).await;
    eventually(
        "the lost edit and creation are served while the namespace is busy",
        || async {
            served_or_missing(&client, "edited").await == Some(("on".to_owned(), edited.version))
                && served_or_missing(&client, "created").await
                    == Some(("off".to_owned(), created.version))
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let busy_changes = busy.await.expect("busy writer");
    assert!(busy_changes > 0, "the namespace was busy meanwhile");

    // a deletion whose event is lost, in a namespace at rest
    store.commit_delete_flag(NS, "deleted").await;
    eventually("the lost deletion is served", || async {
        served_or_missing(&client, "deleted").await.is_none()
    })
    .await;
    let metrics = http(replica.http_addr(), "GET", "/metrics", &[], b"")
        .await
        .text();
    assert!(
        metrics.contains(r#"reason="missed"} "#) && !metrics.contains(r#"reason="missed"} 0"#),
        "the version counter brought the changes in (else this test proves nothing):\n{metrics}"
    );
    // every commit (creations, edits, a deletion) moved the counter with the listed
    // versions: its offset is still the one it started with
    let offset = rollout_store::versions::calibrate(&store.redis, &namespace(NS))
        .await
        .expect("calibrates");
    assert_eq!(offset, 1_000);
    replica.stop().await;
}
