//! The `ticker` binary as child processes: a leader killed with SIGKILL is replaced within
//! its lease, a leader frozen with SIGSTOP past its lease is refused by the fence when it
//! thaws (and nothing advances twice), spans reach an OTLP receiver, SIGTERM gives every
//! shard back, and a bad setting exits with code 64. The two failover tests run one shard
//! (a leader and a standby), so the replica they stop is the one leading the rollouts;
//! sharded take-overs are `tests/chaos.rs`' and `ticker.rs`'.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    after, assert_single_advances, eventually, CreateOptions, Harness, TickerProcess, NS,
};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use rollout_core::Lifecycle;
use rollout_wire::events::EventKind;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(30);

async fn wait_for_holder(harness: &Harness, replica: &str, deadline: Duration) -> u64 {
    eventually(&format!("{replica} to lead"), deadline, || async {
        harness
            .holder_of(NS)
            .await
            .filter(|(holder, _)| holder == replica)
            .map(|(_, epoch)| epoch)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_its_lease() {
    let harness = Harness::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // default lease: 2 s; one shard, so the second replica stands by
    let env_for = |replica: &str| {
        let mut env = harness.child_env(replica);
        env.insert("ROLLOUT_TICKER__SHARDS".into(), "1".into());
        env
    };
    let mut first = TickerProcess::spawn(dir.path(), &env_for("first"));
    let first_epoch = wait_for_holder(&harness, "first", DEADLINE).await;
    let _second = TickerProcess::spawn(dir.path(), &env_for("second"));

    let now = harness.now().await;
    let record = harness
        .create(
            NS,
            "checkout",
            Some(json!({"phases": [
                {"percentage": 10, "duration": "3s"},
                {"percentage": 50, "duration": "3s"},
                {"percentage": 100},
            ]})),
            now,
            CreateOptions::published(),
        )
        .await
        .expect("rollout");
    let due = after(now, 3_000);
    // kill -9 the leader half a second before the next transition is due
    let until_kill = after(now, 2_500).millis_since(harness.now().await).max(0);
    tokio::time::sleep(Duration::from_millis(until_kill as u64)).await;
    first.kill();
    let killed_at = harness.now().await;

    let advanced = eventually("the next step", DEADLINE, || async {
        let record = harness.rollout(NS, &record.id).await;
        (record.state.step >= Some(1)).then_some(record)
    })
    .await;
    let fired_at = advanced.state.history[1].entered_at.expect("entered");
    let waiting_since = due.max(killed_at);
    let delay = fired_at.millis_since(waiting_since);
    println!("killed {} ms before the due time; the follower fired {delay} ms after it (lease ttl 2000 ms)", due.millis_since(killed_at));
    assert!(delay <= 2_000 + 1_500, "fired {delay} ms late");
    let (holder, epoch) = harness.holder_of(NS).await.expect("held");
    assert_eq!(holder, "second");
    assert!(epoch > first_epoch);

    let completed = eventually("completion", DEADLINE, || async {
        let record = harness.rollout(NS, &record.id).await;
        (record.state.lifecycle == Lifecycle::Completed).then_some(record)
    })
    .await;
    let audit = harness.audit(NS, &record.id).await;
    assert_single_advances(&completed, &audit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_is_fenced_when_it_thaws() {
    let harness = Harness::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let env_for = |replica: &str| {
        let mut env = harness.child_env(replica);
        env.insert("ROLLOUT_TICKER__SHARDS".into(), "1".into());
        env.insert("ROLLOUT_TICKER__LEASE_TTL".into(), "1s".into());
        env.insert("ROLLOUT_TICKER__RENEW_INTERVAL".into(), "250ms".into());
        // many small batches in flight, so a freeze always catches some between their read
        // and their commit: those are the writes the fence must refuse after the thaw
        env.insert("ROLLOUT_TICKER__MAX_IN_FLIGHT".into(), "64".into());
        env.insert("ROLLOUT_TICKER__COMMIT_BATCH".into(), "4".into());
        // a frozen process must not time its Redis requests out when it thaws: the point
        // is to see what its writes do
        env.insert("ROLLOUT_REDIS__RESPONSE_TIMEOUT".into(), "60s".into());
        env
    };
    let mut frozen = TickerProcess::spawn(dir.path(), &env_for("frozen"));
    let frozen_epoch = wait_for_holder(&harness, "frozen", DEADLINE).await;
    let follower = TickerProcess::spawn(dir.path(), &env_for("follower"));

    // many rollouts due at the same moment, so the leader is frozen in the middle of work
    let count = 1_500_usize;
    let now = harness.now().await;
    let start = after(now, 6_000);
    let ids: Vec<String> = futures_util::stream::iter(0..count)
        .map(|index| {
            let harness = &harness;
            async move {
                harness
                    .create(
                        NS,
                        &format!("flag-{index}"),
                        Some(json!({
                            "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}],
                            "start_at": start.to_rfc3339(),
                        })),
                        now,
                        CreateOptions::default(),
                    )
                    .await
                    .expect("rollout")
                    .id
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        harness.now().await < start,
        "set-up took longer than its margin"
    );

    let started = || async {
        let mut connection = harness.redis.clone();
        let started = rollout_store::due::count_after(
            &mut connection,
            &harness.keys(NS),
            after(start, 60_000),
        )
        .await
        .expect("zcount");
        usize::try_from(started).expect("a count")
    };
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        // freeze in the thick of the burst, not at its first commit
        if started().await >= 100 {
            frozen.signal(Signal::SIGSTOP);
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the burst never began");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started_when_frozen = started().await;
    println!("froze the leader with {started_when_frozen} of {count} rollouts started");
    assert!(
        started_when_frozen < count,
        "the burst ended before the freeze: inconclusive"
    );

    // the follower takes over once the lease expires and finishes the burst
    let follower_epoch = wait_for_holder(&harness, "follower", DEADLINE).await;
    assert!(follower_epoch > frozen_epoch);
    eventually("every rollout started", DEADLINE, || async {
        (started().await == count).then_some(())
    })
    .await;

    // thaw the old leader: it resumes holding work it had taken, and its writes hit the fence
    frozen.signal(Signal::SIGCONT);
    let rejections = eventually(
        "fence rejections in the thawed leader's log",
        DEADLINE,
        || {
            let log = frozen.log_text();
            async move {
                let refused = log
                    .lines()
                    .filter(|line| line.contains("refused by the fence"))
                    .count();
                (refused > 0 && log.contains("giving it up")).then_some(refused)
            }
        },
    )
    .await;
    println!("the thawed leader's writes refused by the fence: {rejections}");
    for line in frozen
        .log_text()
        .lines()
        .filter(|line| line.contains("refused by the fence"))
        .take(3)
    {
        println!("  {line}");
    }
    assert!(rejections > 0);
    assert_eq!(
        harness
            .holder_of(NS)
            .await
            .map(|(holder, _)| holder)
            .as_deref(),
        Some("follower")
    );

    // nothing advanced twice
    let mut double = 0;
    for id in &ids {
        let record = harness.rollout(NS, id).await;
        let audit = harness.audit(NS, id).await;
        assert_single_advances(&record, &audit);
        let started_entries = audit
            .iter()
            .filter(|entry| entry.kind == EventKind::RolloutStarted)
            .count();
        if started_entries != 1 || record.state.revision != 2 {
            double += 1;
        }
    }
    assert_eq!(double, 0, "double advances");
    drop(follower);
}

/// Every body POSTed to `/v1/traces`, answered with an empty 200.
async fn otlp_receiver(listener: TcpListener, bodies: Arc<Mutex<Vec<Vec<u8>>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let bodies = Arc::clone(&bodies);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut content_length = 0_usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.trim().eq_ignore_ascii_case("content-length") {
                            content_length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0_u8; content_length];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                if request_line.contains("/v1/traces") {
                    bodies.lock().expect("lock").push(body);
                }
                let response = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                if reader.get_mut().write_all(response).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transition_spans_reach_the_otlp_receiver_linked_to_the_creating_command() {
    let harness = Harness::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let receiver = tokio::spawn(otlp_receiver(listener, Arc::clone(&bodies)));

    let mut env = harness.child_env("traced");
    env.insert(
        "ROLLOUT_OTLP__ENDPOINT".into(),
        format!("http://127.0.0.1:{port}"),
    );
    env.insert(
        "ROLLOUT_OTLP__SERVICE_NAME".into(),
        "ticker-under-test".into(),
    );
    let mut traced = TickerProcess::spawn(dir.path(), &env);
    wait_for_holder(&harness, "traced", DEADLINE).await;

    let creator_trace = "0af7651916cd43dd8448eb211c80319c";
    let now = harness.now().await;
    let record = harness
        .create(
            NS,
            "checkout",
            Some(json!({"phases": [{"percentage": 10, "duration": "1s"}, {"percentage": 100}]})),
            now,
            CreateOptions {
                traceparent: Some(format!("00-{creator_trace}-b7ad6b7169203331-01")),
                ..CreateOptions::published()
            },
        )
        .await
        .expect("rollout");
    eventually("completion", DEADLINE, || async {
        let record = harness.rollout(NS, &record.id).await;
        (record.state.lifecycle == Lifecycle::Completed).then_some(())
    })
    .await;
    let audit = harness.audit(NS, &record.id).await;
    let step = audit
        .iter()
        .find(|entry| entry.kind == EventKind::RolloutStep && entry.actor == "ticker")
        .expect("the ticker's step");
    let transition_trace = step
        .trace_id
        .clone()
        .expect("the transition's trace id is audited");
    assert_ne!(transition_trace, creator_trace, "a link, not a parent");

    // SIGTERM: the ticker releases its lease and flushes its spans on the way out
    traced.signal(Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let status = traced.wait_exit(Duration::from_secs(20));
        (traced, status)
    })
    .await
    .expect("wait task");
    let (traced, status) = status;
    assert!(status.expect("exited").success(), "{}", traced.log_text());
    assert_eq!(
        harness.holders().await,
        [],
        "every shard given back on SIGTERM"
    );

    let body = eventually("a span batch", DEADLINE, || {
        let received: Vec<u8> = bodies.lock().expect("lock").concat();
        async move {
            String::from_utf8_lossy(&received)
                .contains("rollout.transition")
                .then_some(received)
        }
    })
    .await;
    let text = String::from_utf8_lossy(&body);
    for attribute in [
        "rollout_id",
        "namespace",
        "from_step",
        "to_step",
        "share_percent",
        "lag_ms",
        "leader_epoch",
        "steps_caught_up",
        "ticker-under-test",
        record.id.as_str(),
    ] {
        assert!(text.contains(attribute), "span batch lacks {attribute}");
    }
    let link = hex_bytes(creator_trace);
    assert!(
        body.windows(link.len())
            .any(|window| window == link.as_slice()),
        "no link to the creating command's trace"
    );
    let own = hex_bytes(&transition_trace);
    assert!(body
        .windows(own.len())
        .any(|window| window == own.as_slice()));
    receiver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_exits_with_code_64_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = std::collections::HashMap::from([
        ("ROLLOUT_TICKER__LEASE_TTL".to_owned(), "soonish".to_owned()),
        ("ROLLOUT_TICKER__REPLICA_ID".to_owned(), "broken".to_owned()),
    ]);
    let mut process = TickerProcess::spawn(dir.path(), &env);
    let status = process.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(64));
    assert!(
        process.log_text().contains("ticker.lease_ttl"),
        "{}",
        process.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_nats_is_retried_aloud_then_exits_69_in_one_plain_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = rollout_testkit::free_port().expect("a free port");
    let env = std::collections::HashMap::from([
        (
            "ROLLOUT_NATS__URL".to_owned(),
            format!("nats://127.0.0.1:{port}"),
        ),
        ("ROLLOUT_NATS__CONNECT_TIMEOUT".to_owned(), "2s".to_owned()),
        ("ROLLOUT_TICKER__REPLICA_ID".to_owned(), "lonely".to_owned()),
        // a backtrace must not decorate an expected failure
        ("RUST_BACKTRACE".to_owned(), "1".to_owned()),
    ]);
    let mut process = TickerProcess::spawn(dir.path(), &env);
    let status = process.wait_exit(Duration::from_secs(30)).expect("exits");
    let log = process.log_text();
    assert_eq!(status.code(), Some(69), "{log}");
    assert!(
        log.contains("not reachable yet, retrying"),
        "every retry is logged: {log}"
    );
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "names what it could not reach: {log}"
    );
    assert!(!log.contains("stack backtrace"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colours in a file: {log:?}");
}
