//! The ticker in process against a private NATS and Redis: transitions at their times,
//! several replicas and crashes without double advances, the fence refusing a stale
//! leader, catch-up in one transition, lease hand-over on shutdown, guards, kill switches,
//! stage completion gates, and a small firing run.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    after, assert_single_advances, eventually, rfc3339, CreateOptions, HandDriven, Harness,
    Running, NS,
};
use rollout_core::{GateHold, HeldBy, Lifecycle, Timestamp, WaitingFor};
use rollout_store::due;
use rollout_store::fleet::{self, Agent, Report};
use rollout_store::health::load_health;
use rollout_store::lease::{ShardLeases, Stance};
use rollout_store::outcomes::{self, Side, Tallies, Tally};
use rollout_testkit::{RedisOptions, RedisServer};
use rollout_wire::events::EventKind;
use serde_json::json;
use ticker::TickerSettings;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_fire_at_their_planned_times_in_order() {
    let harness = Harness::start().await;
    let events = harness.collect_events(NS).await;
    let running = Running::start(harness.ticker(harness.settings("solo")).await);
    let now = harness.now().await;
    let start = after(now, 1_500);
    let phases = harness
        .create(
            NS,
            "checkout",
            Some(json!({
                "phases": [{"percentage": 10, "duration": "1s"}, {"percentage": 50, "duration": "1s"}, {"percentage": 100}],
                "start_at": rfc3339(start),
            })),
            now,
            CreateOptions::published(),
        )
        .await
        .expect("rollout");
    let manual = harness
        .create(
            NS,
            "search",
            Some(json!({
                "manual": [
                    {"weight": 20, "execute_at": rfc3339(after(now, 1_200))},
                    {"weight": 60, "execute_at": rfc3339(after(now, 2_200))},
                ],
            })),
            now,
            CreateOptions::published(),
        )
        .await
        .expect("rollout");
    assert_eq!(phases.state.lifecycle, Lifecycle::Queued);

    let (phases_done, manual_done) = eventually("both rollouts complete", DEADLINE, || async {
        let phases_now = harness.rollout(NS, &phases.id).await;
        let manual_now = harness.rollout(NS, &manual.id).await;
        (phases_now.state.lifecycle == Lifecycle::Completed
            && manual_now.state.lifecycle == Lifecycle::Completed)
            .then_some((phases_now, manual_now))
    })
    .await;

    let planned: Vec<Timestamp> = phases_done
        .state
        .history
        .iter()
        .map(|step| step.planned_at)
        .collect();
    assert_eq!(planned, [start, after(start, 1_000), after(start, 2_000)]);
    let entered: Vec<Timestamp> = phases_done
        .state
        .history
        .iter()
        .map(|step| step.entered_at.expect("entered"))
        .collect();
    assert!(
        entered.windows(2).all(|pair| pair[0] <= pair[1]),
        "{entered:?}"
    );
    for (entered_at, planned_at) in entered.iter().zip(&planned) {
        assert!(
            entered_at >= planned_at,
            "entered {entered_at} before {planned_at}"
        );
        println!(
            "step planned {planned_at} entered {entered_at} lag {} ms",
            entered_at.millis_since(*planned_at)
        );
    }
    assert!(phases_done.state.finished_at.expect("finished") >= after(start, 2_000));
    let manual_planned: Vec<Timestamp> = manual_done
        .state
        .history
        .iter()
        .map(|step| step.planned_at)
        .collect();
    assert_eq!(manual_planned, [after(now, 1_200), after(now, 2_200)]);

    for record in [&phases_done, &manual_done] {
        let audit = harness.audit(NS, &record.id).await;
        assert_eq!(
            assert_single_advances(record, &audit),
            record.plan.steps.len()
        );
        // every transition carries a W3C trace id of its own, spans exported or not
        let trace_ids: Vec<&str> = audit
            .iter()
            .filter(|entry| entry.kind == EventKind::RolloutStep && entry.actor == "ticker")
            .map(|entry| entry.trace_id.as_deref().expect("a trace id"))
            .collect();
        assert!(!trace_ids.is_empty());
        assert!(trace_ids
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit())));
        let distinct: std::collections::BTreeSet<&&str> = trace_ids.iter().collect();
        assert_eq!(distinct.len(), trace_ids.len(), "{trace_ids:?}");
    }

    // the events on NATS: the ticker's, with rising versions, in order
    let flag_events = eventually("the completion event", DEADLINE, || async {
        let flag_events: Vec<_> = events
            .events()
            .into_iter()
            .filter(|event| event.flag == "checkout")
            .collect();
        flag_events
            .iter()
            .any(|event| event.kind == EventKind::RolloutCompleted)
            .then_some(flag_events)
    })
    .await;
    let versions: Vec<u64> = flag_events.iter().map(|event| event.version).collect();
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "{versions:?}"
    );
    let ticker_kinds: Vec<EventKind> = flag_events
        .iter()
        .filter(|event| event.actor.as_deref() == Some("ticker"))
        .map(|event| event.kind)
        .collect();
    assert_eq!(
        ticker_kinds,
        [
            EventKind::RolloutStarted,
            EventKind::RolloutStep,
            EventKind::RolloutStep,
            EventKind::RolloutStep,
            EventKind::RolloutCompleted
        ]
    );
    // every event of the running rollout says when it completes: two one-second timers from
    // its planned start, whenever the ticker fired; the commit that completes it (entering
    // the final 100 % completes on entry) names no ETA
    for event in flag_events
        .iter()
        .filter(|event| event.actor.as_deref() == Some("ticker"))
    {
        let expected = (event.state == Some(Lifecycle::Running)).then(|| after(start, 2_000));
        assert_eq!(
            event.eta.and_then(|eta| eta.completes_at),
            expected,
            "{:?}",
            event.kind
        );
    }
    let last = flag_events.last().expect("events");
    let snapshot = last.snapshot.as_ref().expect("snapshot");
    assert_eq!(
        snapshot.flag.default.variation.as_deref(),
        Some("on"),
        "completed at 100 %"
    );
    assert!(snapshot.rollout.is_none());
    // finished rollouts left the due index
    let mut connection = harness.redis.clone();
    let earliest = due::earliest(&mut connection, &[&harness.keys(NS)])
        .await
        .expect("zrange");
    assert_eq!(earliest, None, "nothing is due any more");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tickers_and_crashed_leaders_never_advance_a_step_twice() {
    let harness = Harness::start().await;
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        replicas.push(Running::start(harness.ticker(harness.settings(name)).await));
    }
    let now = harness.now().await;
    let mut phases: Vec<serde_json::Value> = (1..=6)
        .map(|step| json!({"percentage": step * 10, "duration": "300ms"}))
        .collect();
    phases.push(json!({"percentage": 100, "duration": "300ms"}));
    let mut ids = Vec::new();
    for index in 0..8_i64 {
        let record = harness
            .create(
                NS,
                &format!("flag-{index}"),
                Some(json!({"phases": phases, "start_at": rfc3339(after(now, 500 + index * 37))})),
                now,
                CreateOptions::published(),
            )
            .await
            .expect("rollout");
        ids.push(record.id);
    }
    // crash the replica leading the namespace's shard twice while the rollouts move, then
    // add a fresh replica
    let mut crashed_epochs = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let (leader, epoch) = eventually("a leader", DEADLINE, || async {
            let (holder, epoch) = harness.holder_of(NS).await?;
            let position = replicas
                .iter()
                .position(|running| running.ticker.replica_id() == holder)?;
            Some((position, epoch))
        })
        .await;
        let crashed = replicas.remove(leader);
        println!(
            "crashing {} (namespace's shard at epoch {epoch})",
            crashed.ticker.replica_id()
        );
        crashed.crash().await;
        crashed_epochs.push(epoch);
    }
    replicas.push(Running::start(harness.ticker(harness.settings("d")).await));

    let mut steps = 0;
    for id in &ids {
        let record = eventually("the rollout completes", DEADLINE, || async {
            let record = harness.rollout(NS, id).await;
            (record.state.lifecycle == Lifecycle::Completed).then_some(record)
        })
        .await;
        let audit = harness.audit(NS, id).await;
        steps += assert_single_advances(&record, &audit);
    }
    let holder = harness.holder_of(NS).await.expect("a leader");
    println!("rollout_step entries: {steps}; leader now {holder:?}");
    assert!(
        crashed_epochs.iter().all(|crashed| holder.1 > *crashed),
        "the shard was taken over after each crash: {holder:?} after {crashed_epochs:?}"
    );
    for running in replicas {
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_spread_the_namespaces_and_a_crashed_replicas_shards_are_taken_over() {
    let harness = Harness::start().await;
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        replicas.push(Running::start(harness.ticker(harness.settings(name)).await));
    }
    // three replicas, 64 shards: fair shares of 22, 22 and 20
    eventually("the shards to spread", DEADLINE, || async {
        let holders = harness.holders().await;
        let mut shares: Vec<usize> = ["a", "b", "c"]
            .iter()
            .map(|name| {
                holders
                    .iter()
                    .filter(|holder| holder.replica == *name)
                    .count()
            })
            .collect();
        shares.sort_unstable();
        (shares == [20, 22, 22]).then_some(())
    })
    .await;

    let now = harness.now().await;
    let phases: Vec<serde_json::Value> = (1..=5)
        .map(|step| json!({"percentage": step * 15, "duration": "400ms"}))
        .chain([json!({"percentage": 100})])
        .collect();
    let namespaces: Vec<String> = (0..24).map(|index| format!("spread-{index}")).collect();
    let mut rollouts = Vec::new();
    for namespace in &namespaces {
        let record = harness
            .create(
                namespace,
                "checkout",
                Some(json!({"phases": phases, "start_at": rfc3339(after(now, 1_000))})),
                now,
                CreateOptions::published(),
            )
            .await
            .expect("rollout");
        rollouts.push((namespace.clone(), record.id));
    }

    // mid-rollout, crash the replica leading the first namespace's shard
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let (victim, _) = harness.holder_of(&namespaces[0]).await.expect("led");
    let position = replicas
        .iter()
        .position(|running| running.ticker.replica_id() == victim)
        .expect("one of ours");
    let crashed = replicas.remove(position);
    let orphaned: Vec<u32> = crashed.ticker.stats().led_shards().into_keys().collect();
    let crashed_stats = crashed.ticker.stats();
    crashed.crash().await;
    let crashed_at = tokio::time::Instant::now();
    eventually(
        "the survivors to take every orphaned shard",
        DEADLINE,
        || async {
            let holders = harness.holders().await;
            orphaned
                .iter()
                .all(|shard| {
                    holders
                        .iter()
                        .any(|holder| holder.shard == *shard && holder.replica != victim)
                })
                .then_some(())
        },
    )
    .await;
    println!(
        "{victim} crashed with {} shards; the survivors held them all {:?} later (lease 1 s)",
        orphaned.len(),
        crashed_at.elapsed()
    );

    // every rollout completes, each step entered once, wherever its shard went
    for (namespace, id) in &rollouts {
        let record = eventually("the rollout completes", DEADLINE, || async {
            let record = harness.rollout(namespace, id).await;
            (record.state.lifecycle == Lifecycle::Completed).then_some(record)
        })
        .await;
        let audit = harness.audit(namespace, id).await;
        assert_single_advances(&record, &audit);
    }
    // the work was spread: more than one replica committed transitions
    let mut committed: Vec<u64> = replicas
        .iter()
        .map(|running| running.ticker.stats().snapshot().transitions)
        .collect();
    committed.push(crashed_stats.snapshot().transitions);
    println!("transitions per replica (survivors, then the crashed one): {committed:?}");
    assert!(
        committed.iter().filter(|count| **count > 0).count() >= 2,
        "{committed:?}"
    );
    for running in replicas {
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_is_refused_by_the_fence() {
    let harness = Harness::start().await;
    let now = harness.now().await;
    let record = harness
        .create(
            NS,
            "checkout",
            Some(json!({"phases": [{"percentage": 10, "duration": "1s"}, {"percentage": 100, "duration": "1h"}]})),
            after(now, -5_000),
            CreateOptions::default(),
        )
        .await
        .expect("rollout");
    let old = harness.ticker(harness.settings("old")).await;
    let new = harness.ticker(harness.settings("new")).await;
    let mut old_term = old.campaign().await.expect("campaign").expect("old leads");
    assert!(
        new.campaign().await.expect("campaign").is_none(),
        "the lease is held"
    );

    // the old leader stalls past its lease; the lease expires; the new one takes over
    let mut connection = harness.redis.clone();
    rollout_store::lease::expire(&mut connection)
        .await
        .expect("del");
    let mut new_term = new.campaign().await.expect("campaign").expect("new leads");
    let old_epoch = old_term.epoch_of(NS).expect("old fenced the namespace");
    assert!(new_term.epoch_of(NS).expect("new fenced the namespace") > old_epoch);
    assert_eq!(new_term.namespaces(), [NS]);
    assert_eq!(
        new_term.shards().len(),
        64,
        "alone, the new one takes every shard"
    );

    // the stale leader wakes up and tries to fire the due step: refused
    let stale_round = old.fire_due(&mut old_term).await.expect("round runs");
    assert!(stale_round.fenced, "{stale_round:?}");
    assert_eq!(stale_round.committed, 0);
    assert_eq!(old_term.epoch_of(NS), None, "the fenced shard is given up");
    assert_eq!(old.stats().fenced(), 1);
    let untouched = harness.rollout(NS, &record.id).await;
    assert_eq!(
        untouched.state, record.state,
        "nothing written by the stale leader"
    );

    let round = new.fire_due(&mut new_term).await.expect("round runs");
    assert_eq!((round.committed, round.fenced), (1, false));
    let advanced = harness.rollout(NS, &record.id).await;
    assert_eq!(advanced.state.step, Some(1));
    assert_eq!(advanced.state.revision, record.state.revision + 1);

    // a lost term takes no more work; resigning it does not touch the new lease
    let after_loss = old.fire_due(&mut old_term).await.expect("round runs");
    assert_eq!(after_loss.looked_at, 0);
    assert!(!old.resign(old_term).await.expect("resign"));
    assert!(new.resign(new_term).await.expect("resign"));
    let audit = harness.audit(NS, &record.id).await;
    assert_eq!(assert_single_advances(&advanced, &audit), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_after_twelve_missed_steps_is_one_transition() {
    let harness = Harness::start().await;
    let events = harness.collect_events(NS).await;
    let now = harness.now().await;
    let mut phases: Vec<serde_json::Value> = (1..=12)
        .map(|step| json!({"percentage": step * 5, "duration": "1s"}))
        .collect();
    phases.push(json!({"percentage": 100, "duration": "1h"}));
    // created (and started) 15 s ago, while no ticker ran
    let record = harness
        .create(
            NS,
            "checkout",
            Some(json!({ "phases": phases })),
            after(now, -15_000),
            CreateOptions::published(),
        )
        .await
        .expect("rollout");
    assert_eq!(record.state.step, Some(0));
    let running = Running::start(harness.ticker(harness.settings("solo")).await);
    let caught_up = eventually("the catch-up", DEADLINE, || async {
        let record = harness.rollout(NS, &record.id).await;
        (record.state.step == Some(12)).then_some(record)
    })
    .await;
    let audit = harness.audit(NS, &record.id).await;
    let ticker_steps: Vec<_> = audit
        .iter()
        .filter(|entry| entry.kind == EventKind::RolloutStep && entry.actor == "ticker")
        .collect();
    assert_eq!(ticker_steps.len(), 1, "one transition: {ticker_steps:?}");
    assert_eq!(ticker_steps[0].details["from"], 0);
    assert_eq!(ticker_steps[0].details["to"], 12);
    assert_eq!(
        ticker_steps[0].details["skipped"],
        json!((1..=11).collect::<Vec<_>>())
    );
    assert_single_advances(&caught_up, &audit);
    let skipped_event = eventually("the catch-up event", DEADLINE, || async {
        events.events().into_iter().find(|event| {
            event.kind == EventKind::RolloutStep && event.actor.as_deref() == Some("ticker")
        })
    })
    .await;
    assert!(
        skipped_event.skipped.len() >= 9,
        "{:?}",
        skipped_event.skipped
    );
    // the ticker counts a transition once its commit returned, after its events went out
    let skipped_steps = eventually("the skipped steps to be counted", DEADLINE, || async {
        let counted = running.ticker.stats().snapshot().skipped_steps;
        (counted > 0).then_some(counted)
    })
    .await;
    assert_eq!(skipped_steps, 11);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_shards_and_a_clean_shutdown_hands_them_over_at_once() {
    let harness = Harness::start().await;
    let long_lease = |name: &str| TickerSettings {
        lease_ttl: Duration::from_secs(30),
        renew_interval: Some(Duration::from_millis(200)),
        ..harness.settings(name)
    };
    let led_by = |holders: &[rollout_store::lease::ShardHolder], replica: &str| {
        holders
            .iter()
            .filter(|holder| holder.replica == replica)
            .count()
    };
    let first = Running::start(harness.ticker(long_lease("first")).await);
    eventually("first leads every shard", DEADLINE, || async {
        (led_by(&harness.holders().await, "first") == 64).then_some(())
    })
    .await;
    // a second replica joins: the first gives half back, the second takes it
    let second = Running::start(harness.ticker(long_lease("second")).await);
    let holders = eventually("the shards split evenly", DEADLINE, || async {
        let holders = harness.holders().await;
        (led_by(&holders, "first") == 32 && led_by(&holders, "second") == 32).then_some(holders)
    })
    .await;
    assert_eq!(holders.len(), 64, "every shard has one holder: {holders:?}");
    // each replica's own view follows once its balancing round has its reply
    eventually("each replica's own view to agree", DEADLINE, || async {
        (first.ticker.stats().led_shards().len() == 32
            && second.ticker.stats().led_shards().len() == 32)
            .then_some(())
    })
    .await;

    // the first stops: the second takes its shards far sooner than their 30 s lease
    let stopped_at = tokio::time::Instant::now();
    first.stop().await;
    let taken = eventually(
        "second leads every shard",
        Duration::from_secs(10),
        || async {
            let holders = harness.holders().await;
            (led_by(&holders, "second") == 64).then_some(holders)
        },
    )
    .await;
    println!("hand-over took {:?} (lease ttl 30 s)", stopped_at.elapsed());
    for holder in &taken {
        if let Some(before) = holders.iter().find(|before| before.shard == holder.shard) {
            assert!(holder.epoch >= before.epoch, "epochs only rise: {holder:?}");
        }
    }
    second.stop().await;
    assert_eq!(
        harness.holders().await,
        [],
        "every shard given back on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_configured_with_another_shard_count_is_refused() {
    let harness = Harness::start().await;
    let sixty_four = harness.ticker(harness.settings("sixty-four")).await;
    let leadership = sixty_four
        .campaign()
        .await
        .expect("campaign")
        .expect("leads");
    let eight = harness
        .ticker(TickerSettings {
            shards: 8,
            ..harness.settings("eight")
        })
        .await;
    let error = eight.campaign().await.expect_err("refused");
    let message = error.to_string();
    assert!(
        message.contains("ticker.shards is 8") && message.contains("use 64"),
        "{message}"
    );
    // it took nothing: the first still leads every shard
    let holders = harness.holders().await;
    assert_eq!(holders.len(), 64);
    assert!(holders.iter().all(|holder| holder.replica == "sixty-four"));
    assert!(sixty_four.resign(leadership).await.expect("resign"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_rise_on_every_acquisition_and_survive_a_redis_restart() {
    rollout_runtime::telemetry::init_for_tests();
    let server = tokio::task::spawn_blocking(|| {
        RedisServer::start_with(RedisOptions::default().appendonly(true))
    })
    .await
    .expect("task")
    .expect("redis starts");
    let redis = common::connect_redis(&server.url()).await;
    let none = BTreeMap::new();
    let solo = ShardLeases::new(redis.clone(), "solo", Duration::from_secs(5), 4);
    let first = solo
        .balance(&none, &none, Stance::Share)
        .await
        .expect("balance");
    assert_eq!(first.acquired.len(), 4, "alone, it takes every shard");
    let mut epochs: Vec<u64> = first.acquired.values().copied().collect();
    epochs.dedup();
    assert_eq!(epochs.len(), 4, "each shard at an epoch of its own");

    // another replica joins: nothing is free for it yet
    let other = ShardLeases::new(redis.clone(), "other", Duration::from_secs(5), 4);
    let joined = other
        .balance(&none, &none, Stance::Share)
        .await
        .expect("balance");
    assert_eq!((joined.acquired.len(), joined.replicas), (0, 2));
    // the first renews, sees two replicas and gives its extras back
    let renewed = solo
        .balance(&first.held(), &none, Stance::Share)
        .await
        .expect("balance");
    assert_eq!((renewed.kept.len(), renewed.released.len()), (2, 2));
    let taken = other
        .balance(&none, &none, Stance::Share)
        .await
        .expect("balance");
    assert_eq!(taken.acquired.len(), 2);
    let highest_first = first.acquired.values().max().copied().expect("epochs");
    assert!(taken.acquired.values().all(|epoch| *epoch > highest_first));
    // a lease is not ours any more once another replica took it: it is lost, not renewed
    let stale = solo
        .balance(&first.held(), &none, Stance::Share)
        .await
        .expect("balance");
    assert_eq!(stale.lost.len(), 2, "{stale:?}");
    // leaving gives every lease back
    let left = other
        .balance(&none, &taken.held(), Stance::Leave)
        .await
        .expect("balance");
    assert_eq!(left.released.len(), 2);
    assert_eq!(left.replicas, 1);
    let highest = taken.acquired.values().max().copied().expect("epochs");

    let restarted = tokio::task::spawn_blocking(move || {
        server.stop().expect("stop");
        server.restart().expect("restart");
        server
    })
    .await
    .expect("task");
    let redis = common::connect_redis(&restarted.url()).await;
    let again = ShardLeases::new(redis, "solo", Duration::from_secs(5), 4);
    let after_restart = again
        .balance(&none, &none, Stance::Share)
        .await
        .expect("balance");
    assert!(
        after_restart
            .acquired
            .values()
            .all(|epoch| *epoch > highest),
        "{after_restart:?} after {highest}"
    );
}

/// Outcomes an evaluator attributed to `rollout_id`: (successes, errors) of each side.
fn rollout_tallies(rollout_id: &str, candidate: (u64, u64), baseline: (u64, u64)) -> Tallies {
    let mut tallies = Tallies::default();
    for (side, (success, error)) in [(Side::Candidate, candidate), (Side::Baseline, baseline)] {
        if success + error > 0 {
            tallies
                .rollouts
                .insert((rollout_id.to_owned(), side), Tally { success, error });
        }
    }
    tallies
}

/// Outcomes an evaluator counted per flag: (flag, variation, successes, errors).
fn flag_tallies(entries: &[(&str, &str, u64, u64)]) -> Tallies {
    let mut tallies = Tallies::default();
    for (flag, variation, success, error) in entries {
        tallies.flags.insert(
            ((*flag).to_owned(), (*variation).to_owned()),
            Tally {
                success: *success,
                error: *error,
            },
        );
    }
    tallies
}

/// Adds `tallies` to the counters at the current Redis time, as an evaluator's flush does.
async fn add_outcomes(harness: &Harness, tallies: &Tallies) {
    let mut connection = harness.redis.clone();
    outcomes::add_tallies(
        &mut connection,
        &harness.keys(NS),
        tallies,
        harness.now().await,
    )
    .await
    .expect("tallies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_breach_rolls_back_with_its_figures() {
    let harness = Harness::start().await;
    let now = harness.now().await;
    let record = harness
        .create(
            NS,
            "checkout",
            Some(json!({
                "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}],
                "guard": {"max_error_rate": 5, "min_samples": 20, "window": "1m", "action": "rollback"},
            })),
            now,
            CreateOptions::published(),
        )
        .await
        .expect("rollout");
    let leader = HandDriven::lead(harness.ticker(harness.settings("solo")).await).await;
    // its first health check
    leader.round_when_due(&harness, NS, &record.id).await;
    assert_eq!(
        harness.rollout(NS, &record.id).await.state.lifecycle,
        Lifecycle::Running,
        "healthy without samples"
    );

    add_outcomes(&harness, &rollout_tallies(&record.id, (50, 10), (500, 5))).await;
    let rolled_back = leader
        .rounds_until("the rollback", DEADLINE, || async {
            let record = harness.rollout(NS, &record.id).await;
            (record.state.lifecycle == Lifecycle::RolledBack).then_some(record)
        })
        .await;
    let audit = harness.audit(NS, &record.id).await;
    let breach = audit
        .iter()
        .find(|entry| entry.kind == EventKind::GuardBreached)
        .expect("a guard_breached entry");
    assert_eq!(breach.details["figures"]["candidate_samples"], 60);
    assert_eq!(breach.details["action"], "rollback");
    assert!(audit
        .iter()
        .any(|entry| entry.kind == EventKind::RolloutRolledBack));
    let flag = harness.flag(NS, "checkout").await.record.expect("flag");
    assert_eq!(flag.active_rollout, None);
    assert_eq!(flag.flag.default.variation.as_deref(), Some("off"));
    assert!(rolled_back.state.finished_at.is_some());
    leader.resign().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switches_disable_their_flags_and_stop_the_rollout() {
    let harness = Harness::start().await;
    let now = harness.now().await;
    let kill_switch = json!({"max_error_rate": 5, "min_samples": 20, "window": "1m"});
    let record = harness
        .create(
            NS,
            "checkout",
            Some(json!({"phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}]})),
            now,
            CreateOptions {
                kill_switch: Some(kill_switch.clone()),
                ..CreateOptions::published()
            },
        )
        .await
        .expect("rollout");
    let running = Running::start(harness.ticker(harness.settings("solo")).await);
    eventually("leadership", DEADLINE, || {
        let leads = running.ticker.stats().is_leader();
        async move { leads.then_some(()) }
    })
    .await;
    // a flag created after the term started reaches the index through its event
    create_guarded_flag(&harness, "plain", kill_switch).await;
    add_outcomes(
        &harness,
        &flag_tallies(&[("checkout", "on", 50, 10), ("plain", "on", 10, 20)]),
    )
    .await;

    for flag_key in ["checkout", "plain"] {
        let flag = eventually("the flag disabled", DEADLINE, || async {
            let flag = harness.flag(NS, flag_key).await.record.expect("flag");
            (!flag.flag.enabled).then_some(flag)
        })
        .await;
        assert_eq!(flag.active_rollout, None);
        let audit = harness.flag_audit(NS, flag_key).await;
        let tripped = audit
            .iter()
            .find(|entry| entry.kind == EventKind::KillSwitchTripped)
            .expect("kill_switch_tripped");
        assert!(
            tripped
                .to
                .as_deref()
                .unwrap_or_default()
                .contains("error rate"),
            "{tripped:?}"
        );
        // the figures behind the breach are kept with the audit entry
        assert!(
            tripped.details["candidate_samples"]
                .as_u64()
                .is_some_and(|samples| samples > 0),
            "{tripped:?}"
        );
        assert!(audit
            .iter()
            .any(|entry| entry.kind == EventKind::FlagDisabled));
    }
    let stopped = harness.rollout(NS, &record.id).await;
    assert_eq!(stopped.state.lifecycle, Lifecycle::Stopped);
    let audit = harness.audit(NS, &record.id).await;
    let stop = audit
        .iter()
        .find(|entry| entry.kind == EventKind::RolloutStopped)
        .expect("rollout_stopped");
    assert_eq!(stop.details["cause"], "flag_disabled");
    // the counter follows the commit once its events are published
    eventually("two trips counted", DEADLINE, || {
        let trips = running.ticker.stats().snapshot().kill_switch_trips;
        async move { (trips == 2).then_some(()) }
    })
    .await;
    running.stop().await;
}

/// Creates flag `key` of `NS`, published, without a rollout, guarded by `kill_switch`.
async fn create_guarded_flag(harness: &Harness, key: &str, kill_switch: serde_json::Value) {
    harness
        .create(
            NS,
            key,
            None,
            harness.now().await,
            CreateOptions {
                kill_switch: Some(kill_switch),
                ..CreateOptions::published()
            },
        )
        .await;
}

/// A kill switch set on a flag the moment a term has started is judged in that term (the
/// term listens for changes before it reads the flags, so none falls in between), long
/// before the periodic rescan would find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_set_as_the_term_starts_is_judged_in_that_term() {
    let harness = Harness::start().await;
    // the namespace exists before the term: the term fences it and scans its flags
    harness
        .create(
            NS,
            "other",
            None,
            harness.now().await,
            CreateOptions::published(),
        )
        .await;
    let leader = HandDriven::lead(harness.ticker(harness.settings("solo")).await).await;
    let kill_switch = json!({"max_error_rate": 5, "min_samples": 20, "window": "1m"});
    create_guarded_flag(&harness, "plain", kill_switch).await;
    add_outcomes(&harness, &flag_tallies(&[("plain", "on", 10, 20)])).await;
    let flag = eventually("the flag disabled", DEADLINE, || async {
        leader.check_kill_switches().await;
        let flag = harness.flag(NS, "plain").await.record.expect("flag");
        (!flag.flag.enabled).then_some(flag)
    })
    .await;
    assert!(!flag.flag.enabled);
    let audit = harness.flag_audit(NS, "plain").await;
    assert!(audit
        .iter()
        .any(|entry| entry.kind == EventKind::KillSwitchTripped));
    // the flag without a switch is left alone
    let other = harness.flag(NS, "other").await.record.expect("flag");
    assert!(other.flag.enabled);
    leader.resign().await;
}

/// Registers fleet agents with `env` labels, last seen at `seen`.
async fn register_agents(harness: &Harness, agents: &[(&str, &str)], seen: Timestamp) {
    let keys = harness.keys(NS);
    let mut connection = harness.redis.clone();
    for (id, env) in agents {
        let agent = Agent {
            id: (*id).to_owned(),
            labels: [("env".to_owned(), (*env).to_owned())]
                .into_iter()
                .collect(),
            attributes: rollout_core::Attributes::new(),
            last_seen: seen,
        };
        fleet::register_agent(&mut connection, &keys, &agent, fleet::DEFAULT_AGENT_EXPIRY)
            .await
            .expect("register");
    }
}

/// Creates flag `firmware` with a label-stage rollout: `canary` (`env: staging`, released
/// on 50 % completed) then `fleet` (`env: prod`), with `guard` if given.
async fn create_staged(
    harness: &Harness,
    now: Timestamp,
    guard: Option<serde_json::Value>,
) -> rollout_store::RolloutRecord {
    let mut spec = json!({"stages": [
        {"name": "canary", "labels": {"env": "staging"}, "gate": {"min_completed_percentage": 50}},
        {"name": "fleet", "labels": {"env": "prod"}},
    ]});
    if let Some(guard) = guard {
        spec["guard"] = guard;
    }
    harness
        .create(NS, "firmware", Some(spec), now, CreateOptions::published())
        .await
        .expect("rollout")
}

/// Each of `agents` reports the candidate `on` applied for `rollout_id`.
async fn report_applied(harness: &Harness, rollout_id: &str, agents: &[(&str, &str)]) {
    let keys = harness.keys(NS);
    let mut connection = harness.redis.clone();
    for (id, _) in agents {
        fleet::record_report(
            &mut connection,
            &keys,
            rollout_id,
            id,
            &Report::Applied("on".to_owned()),
        )
        .await
        .expect("report");
    }
}

/// Asserts that the ticker's step of rollout `rollout_id` in the audit was caused by its
/// stage gate.
async fn assert_released_by_its_gate(harness: &Harness, rollout_id: &str) {
    let audit = harness.audit(NS, rollout_id).await;
    let gate_step = audit
        .iter()
        .find(|entry| entry.kind == EventKind::RolloutStep && entry.actor == "ticker")
        .expect("the gate's step");
    assert_eq!(gate_step.details["cause"], "gate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_completion_gate_releases_the_next_stage() {
    let harness = Harness::start().await;
    let now = harness.now().await;
    let keys = harness.keys(NS);
    let mut connection = harness.redis.clone();
    let edge_1 = ("edge-1", "staging");
    register_agents(
        &harness,
        &[edge_1, ("edge-2", "staging"), ("edge-3", "prod")],
        now,
    )
    .await;
    let record = create_staged(&harness, now, None).await;
    let leader = HandDriven::lead(harness.ticker(harness.settings("solo")).await).await;
    // its gate check
    leader.round_when_due(&harness, NS, &record.id).await;
    assert_eq!(
        harness.rollout(NS, &record.id).await.state.step,
        Some(0),
        "gate shut: nothing applied"
    );

    report_applied(&harness, &record.id, &[edge_1]).await;
    let released = leader
        .rounds_until("the next stage", DEADLINE, || async {
            let record = harness.rollout(NS, &record.id).await;
            (record.state.step == Some(1)).then_some(record)
        })
        .await;
    assert_released_by_its_gate(&harness, &record.id).await;
    // the next stage waits for `continue`: the rollout left the due index
    let scheduled = due::scheduled(&mut connection, &keys, &record.id)
        .await
        .expect("zscore");
    assert_eq!(scheduled, None);
    let round = leader.round().await;
    assert_eq!(
        round.committed, 0,
        "nothing is due: held at the continue gate"
    );
    assert_eq!(
        harness.rollout(NS, &record.id).await.state,
        released.state,
        "held at the continue gate"
    );
    leader.resign().await;
}

/// What status shows of a rollout at `now`: its step, what it waits for and which health
/// gate holds it, read the way the planner's status query reads them.
async fn held_at(
    harness: &Harness,
    rollout_id: &str,
    now: Timestamp,
) -> (Option<usize>, Option<WaitingFor>, Option<GateHold>) {
    let record = harness.rollout(NS, rollout_id).await;
    let mut connection = harness.redis.clone();
    let health = load_health(
        &mut connection,
        &harness.keys(NS),
        &record,
        now,
        rollout_core::DurationMs::from_millis(
            i64::try_from(TickerSettings::default().stale_agent_after.as_millis()).expect("ms"),
        ),
    )
    .await
    .expect("health");
    (
        record.state.step,
        record.state.waiting_for(&record.plan),
        record.state.gate_hold(&record.plan, &health),
    )
}

/// Asserts that at `now` rollout `rollout_id` is still at its first stage, waiting on
/// health, and that status names `held_by` as the gate that holds it, for a reason
/// containing each of `reason_parts`.
async fn assert_held(
    harness: &Harness,
    rollout_id: &str,
    now: Timestamp,
    held_by: HeldBy,
    reason_parts: &[&str],
) {
    let (step, waiting_for, hold) = held_at(harness, rollout_id, now).await;
    assert_eq!(step, Some(0), "held at the first stage");
    assert_eq!(waiting_for, Some(WaitingFor::Guard));
    let hold = hold.expect("status says which gate holds");
    assert_eq!(hold.held_by, held_by, "{}", hold.reason);
    for part in reason_parts {
        assert!(hold.reason.contains(part), "{part:?} in {}", hold.reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_go_silent_hold_their_stage_completion_gate() {
    let harness = Harness::start().await;
    let start = harness.now().await;
    let canary = [
        ("edge-1", "staging"),
        ("edge-2", "staging"),
        ("edge-3", "staging"),
    ];
    register_agents(&harness, &canary, start).await;
    register_agents(&harness, &[("edge-4", "prod")], start).await;
    let record = create_staged(&harness, start, None).await;
    let ticker = harness.ticker(harness.settings("solo")).await;
    let mut term = ticker.campaign().await.expect("campaign").expect("leads");

    // the candidate crashes the canary agents: no heartbeat, no report, for two minutes
    let silent_for = after(start, 120_000);
    let round = ticker
        .fire_round(&mut term, silent_for)
        .await
        .expect("round");
    assert_eq!(round.looked_at, 1, "{round:?}");
    assert_eq!(round.committed, 0, "{round:?}");
    // silence must not release the next stage
    assert_held(
        &harness,
        &record.id,
        silent_for,
        HeldBy::Completion,
        &["0 of 3 members completed", "3 stale"],
    )
    .await;

    // they come back and report the candidate applied: the gate opens
    report_applied(&harness, &record.id, &canary[..2]).await;
    let later = after(silent_for, 2_000);
    let round = ticker.fire_round(&mut term, later).await.expect("round");
    assert_eq!(round.committed, 1, "{round:?}");
    let (step, _, hold) = held_at(&harness, &record.id, later).await;
    assert_eq!(step, Some(1));
    assert_eq!(hold, None);
    assert_released_by_its_gate(&harness, &record.id).await;
    ticker.resign(term).await.expect("resign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_without_samples_holds_a_completion_gate() {
    let harness = Harness::start().await;
    let start = harness.now().await;
    let canary = [("edge-1", "staging"), ("edge-2", "staging")];
    register_agents(&harness, &canary, start).await;
    let guard = json!({"max_error_rate": 5, "min_samples": 20, "window": "1m", "action": "pause"});
    let record = create_staged(&harness, start, Some(guard)).await;
    report_applied(&harness, &record.id, &canary).await;
    let ticker = harness.ticker(harness.settings("solo")).await;
    let mut term = ticker.campaign().await.expect("campaign").expect("leads");

    // every member applied, but nobody reported how the candidate does
    let quiet = after(start, 2_000);
    let round = ticker.fire_round(&mut term, quiet).await.expect("round");
    assert_eq!((round.looked_at, round.committed), (1, 0), "{round:?}");
    assert_held(
        &harness,
        &record.id,
        quiet,
        HeldBy::Guard,
        &["0 candidate samples, 20 needed"],
    )
    .await;

    // healthy outcomes arrive: the gate opens
    add_outcomes(&harness, &rollout_tallies(&record.id, (30, 0), (0, 0))).await;
    // the next health check of a held gate
    let judged = after(quiet, 2_000);
    let round = ticker.fire_round(&mut term, judged).await.expect("round");
    assert_eq!(round.committed, 1, "{round:?}");
    let (step, _, hold) = held_at(&harness, &record.id, judged).await;
    assert_eq!((step, hold), (Some(1), None));
    ticker.resign(term).await.expect("resign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_smoke_run_reports_its_lag() {
    let harness = Harness::start().await;
    let count = 300_i64;
    let spread_ms = 2_000_i64;
    let now = harness.now().await;
    let first_due = after(now, 2_000);
    for index in 0..count {
        let due = after(first_due, index * spread_ms / count);
        harness
            .create(
                NS,
                &format!("smoke-{index}"),
                Some(json!({"phases": [
                    {"percentage": 10, "duration": format!("{}ms", due.millis_since(now))},
                    {"percentage": 100, "duration": "1h"},
                ]})),
                now,
                CreateOptions::default(),
            )
            .await;
    }
    let running = Running::start(harness.ticker(harness.settings("solo")).await);
    let stats = running.ticker.stats();
    eventually("every rollout fired", DEADLINE, || {
        let fired = stats.transitions();
        async move { (fired >= count as u64).then_some(()) }
    })
    .await;
    let snapshot = stats.snapshot();
    println!(
        "smoke: {} transitions, lag p50 {} ms, p99 {} ms, max {} ms",
        snapshot.transitions, snapshot.lag_p50_ms, snapshot.lag_p99_ms, snapshot.lag_max_ms
    );
    assert_eq!(snapshot.transitions, count as u64, "each fired once");
    assert_eq!(snapshot.fenced, 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_rollout_is_pushed_back_not_spun_on() {
    let harness = Harness::start().await;
    harness.register_namespace(NS).await;
    let keys = harness.keys(NS);
    let now = harness.now().await;
    let mut connection = harness.redis.clone();
    // written by hand under the stored layout (README's key table): no writer of the
    // system can produce it
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(format!("ro:{{{NS}}}:rollout:r-broken"))
        .arg("rev")
        .arg(3)
        .arg("data")
        .arg(&b"\xc1 not messagepack"[..])
        .ignore()
        .cmd("ZADD")
        .arg(format!("ro:{{{NS}}}:due"))
        .arg(now.as_millis() - 10)
        .arg("r-broken")
        .ignore()
        .query_async(&mut connection)
        .await
        .expect("write");
    let ticker = harness.ticker(harness.settings("solo")).await;
    let mut term = ticker.campaign().await.expect("campaign").expect("leads");
    let round = ticker.fire_due(&mut term).await.expect("round");
    assert_eq!((round.looked_at, round.errors, round.fenced), (1, 1, false));
    let scheduled = due::scheduled(&mut connection, &keys, "r-broken")
        .await
        .expect("zscore")
        .expect("still in the due index");
    assert!(
        scheduled >= after(now, 29_000),
        "pushed back: {scheduled:?}"
    );
    let again = ticker.fire_due(&mut term).await.expect("round");
    assert_eq!(again.looked_at, 0, "not due again at once");
    assert!(ticker.resign(term).await.expect("resign"));
}
