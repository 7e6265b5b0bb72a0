//! The commit script against a real, private Redis: all-or-nothing, idempotency, fencing,
//! earliest time, tombstones, and concurrent writers.

use redis::AsyncCommands;
use rollout_store::{Commit, CommitOutcome, Refused};
use rollout_testkit::RedisServer;

async fn connect(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).expect("valid url");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects")
}

async fn dump(connection: &mut redis::aio::MultiplexedConnection) -> Vec<(String, String)> {
    let mut keys: Vec<String> = connection.keys("*").await.expect("keys");
    keys.sort();
    let mut rows = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(connection)
            .await
            .expect("type");
        let dumped: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(connection)
            .await
            .expect("dump");
        rows.push((format!("{key}:{kind}"), format!("{dumped:?}")));
    }
    rows
}

fn committed(outcome: &CommitOutcome) -> bool {
    matches!(outcome, CommitOutcome::Committed { .. })
}

#[tokio::test]
async fn a_commit_writes_everything_it_lists() {
    let server = RedisServer::start().expect("redis starts");
    let mut connection = connect(&server).await;
    let mut commit = Commit::new();
    commit
        .expect_revision("ro:{t}:flag:a", 0)
        .put("ro:{t}:flag:a", 1, b"flag-a".to_vec())
        .sadd("ro:{t}:flags", "a")
        .zadd("ro:{t}:due", 1234, "r-1")
        .push("ro:{t}:audit:flag:a", b"created".to_vec(), 100)
        .outbox("ro:{t}:outbox", b"event-1".to_vec())
        .outbox("ro:{t}:outbox", b"event-2".to_vec());
    let outcome = commit.execute(&mut connection).await.expect("script runs");
    let CommitOutcome::Committed { now, outbox_ids } = outcome else {
        panic!("not committed: {outcome:?}");
    };
    assert!(now.as_millis() > 1_700_000_000_000, "redis time in ms");
    assert_eq!(outbox_ids.len(), 2);
    let (revision, data): (u64, Vec<u8>) = redis::cmd("HMGET")
        .arg("ro:{t}:flag:a")
        .arg("rev")
        .arg("data")
        .query_async(&mut connection)
        .await
        .expect("hmget");
    assert_eq!((revision, data.as_slice()), (1, &b"flag-a"[..]));
    let members: Vec<String> = connection.smembers("ro:{t}:flags").await.expect("smembers");
    assert_eq!(members, vec!["a".to_owned()]);
    let score: Option<i64> = connection
        .zscore("ro:{t}:due", "r-1")
        .await
        .expect("zscore");
    assert_eq!(score, Some(1234));
    let stream_len: usize = connection.xlen("ro:{t}:outbox").await.expect("xlen");
    assert_eq!(stream_len, 2);
}

#[tokio::test]
async fn a_failed_precondition_writes_nothing() {
    let server = RedisServer::start().expect("redis starts");
    let mut connection = connect(&server).await;
    let mut first = Commit::new();
    first
        .expect_revision("ro:{t}:rollout:r", 0)
        .put("ro:{t}:rollout:r", 1, b"v1".to_vec());
    assert!(committed(
        &first.execute(&mut connection).await.expect("runs")
    ));
    let before = dump(&mut connection).await;
    // the second check fails after the first one passed: still nothing is written
    let mut stale = Commit::new();
    stale
        .expect_revision("ro:{t}:flag:f", 0)
        .expect_revision("ro:{t}:rollout:r", 0)
        .put("ro:{t}:flag:f", 1, b"x".to_vec())
        .put("ro:{t}:rollout:r", 2, b"v2".to_vec())
        .zadd("ro:{t}:due", 1, "r")
        .push("ro:{t}:audit:rollout:r", b"a".to_vec(), 10)
        .outbox("ro:{t}:outbox", b"e".to_vec())
        .idempotent("ro:{t}:cmd:c-1", b"outcome".to_vec(), 60);
    let outcome = stale.execute(&mut connection).await.expect("runs");
    assert_eq!(
        outcome,
        CommitOutcome::Refused(Refused::Conflict {
            key: "ro:{t}:rollout:r".into(),
            actual: 1
        })
    );
    assert_eq!(
        dump(&mut connection).await,
        before,
        "a refused commit changes nothing"
    );
}

#[tokio::test]
async fn a_repeated_command_id_returns_the_first_outcome_and_changes_nothing() {
    let server = RedisServer::start().expect("redis starts");
    let mut connection = connect(&server).await;
    let mut first = Commit::new();
    first
        .idempotent("ro:{t}:cmd:c-9", b"first outcome".to_vec(), 3600)
        .put("ro:{t}:flag:f", 1, b"v1".to_vec());
    assert!(committed(
        &first.execute(&mut connection).await.expect("runs")
    ));
    let before = dump(&mut connection).await;
    let mut again = Commit::new();
    again
        .idempotent("ro:{t}:cmd:c-9", b"second outcome".to_vec(), 3600)
        .put("ro:{t}:flag:f", 2, b"v2".to_vec());
    let outcome = again.execute(&mut connection).await.expect("runs");
    assert_eq!(
        outcome,
        CommitOutcome::Refused(Refused::Duplicate(b"first outcome".to_vec()))
    );
    assert_eq!(dump(&mut connection).await, before);
    let ttl: i64 = connection.ttl("ro:{t}:cmd:c-9").await.expect("ttl");
    assert!(ttl > 0 && ttl <= 3600, "stored outcomes expire: {ttl}");
}

#[tokio::test]
async fn a_writer_with_a_stale_epoch_is_fenced_off() {
    let server = RedisServer::start().expect("redis starts");
    let mut connection = connect(&server).await;
    let _: () = connection.set("ro:{t}:fence", 7).await.expect("set fence");
    let mut stale = Commit::new();
    stale
        .fenced("ro:{t}:fence", 6)
        .put("ro:{t}:rollout:r", 1, b"x".to_vec());
    assert_eq!(
        stale.execute(&mut connection).await.expect("runs"),
        CommitOutcome::Refused(Refused::Fenced { fence: 7 })
    );
    let exists: bool = connection.exists("ro:{t}:rollout:r").await.expect("exists");
    assert!(!exists);
    let mut current = Commit::new();
    current
        .fenced("ro:{t}:fence", 7)
        .put("ro:{t}:rollout:r", 1, b"x".to_vec());
    assert!(committed(
        &current.execute(&mut connection).await.expect("runs")
    ));
}

#[tokio::test]
async fn a_transition_cannot_commit_before_its_due_time() {
    let server = RedisServer::start().expect("redis starts");
    let mut connection = connect(&server).await;
    let now = rollout_store::redis_time(&mut connection)
        .await
        .expect("time");
    let mut early = Commit::new();
    early
        .not_before(now.plus(rollout_core::DurationMs::from_minutes(10)))
        .put("ro:{t}:rollout:r", 1, b"x".to_vec());
    assert!(matches!(
        early.execute(&mut connection).await.expect("runs"),
        CommitOutcome::Refused(Refused::Early { .. })
    ));
    let mut due = Commit::new();
    due.not_before(now)
        .put("ro:{t}:rollout:r", 1, b"x".to_vec());
    assert!(committed(
        &due.execute(&mut connection).await.expect("runs")
    ));
}

#[tokio::test]
async fn a_tombstone_keeps_the_revision_so_versions_never_go_back() {
    let server = RedisServer::start().expect("redis starts");
    let mut connection = connect(&server).await;
    let mut create = Commit::new();
    create
        .expect_revision("ro:{t}:flag:f", 0)
        .put("ro:{t}:flag:f", 1, b"v1".to_vec());
    assert!(committed(
        &create.execute(&mut connection).await.expect("runs")
    ));
    let mut delete = Commit::new();
    delete
        .expect_revision("ro:{t}:flag:f", 1)
        .tombstone("ro:{t}:flag:f", 2);
    assert!(committed(
        &delete.execute(&mut connection).await.expect("runs")
    ));
    let data: Option<Vec<u8>> = connection
        .hget("ro:{t}:flag:f", "data")
        .await
        .expect("hget");
    assert_eq!(data, None);
    // re-creating must name the tombstone's revision
    let mut naive = Commit::new();
    naive
        .expect_revision("ro:{t}:flag:f", 0)
        .put("ro:{t}:flag:f", 1, b"again".to_vec());
    assert_eq!(
        naive.execute(&mut connection).await.expect("runs"),
        CommitOutcome::Refused(Refused::Conflict {
            key: "ro:{t}:flag:f".into(),
            actual: 2
        })
    );
}

#[tokio::test]
async fn concurrent_writers_of_one_revision_produce_exactly_one_winner() {
    let server = RedisServer::start().expect("redis starts");
    let mut setup = connect(&server).await;
    let mut create = Commit::new();
    create.put("ro:{t}:rollout:r", 1, b"v1".to_vec());
    assert!(committed(&create.execute(&mut setup).await.expect("runs")));
    let mut writers = Vec::new();
    for writer in 0..16 {
        let mut connection = connect(&server).await;
        writers.push(tokio::spawn(async move {
            let mut commit = Commit::new();
            commit
                .expect_revision("ro:{t}:rollout:r", 1)
                .put(
                    "ro:{t}:rollout:r",
                    2,
                    format!("writer-{writer}").into_bytes(),
                )
                .push(
                    "ro:{t}:audit:rollout:r",
                    format!("writer-{writer}").into_bytes(),
                    100,
                );
            commit.execute(&mut connection).await.expect("runs")
        }));
    }
    let mut winners = 0;
    for writer in writers {
        winners += usize::from(committed(&writer.await.expect("joins")));
    }
    assert_eq!(winners, 1);
    let audit_len: usize = setup.llen("ro:{t}:audit:rollout:r").await.expect("llen");
    assert_eq!(audit_len, 1, "only the winner's audit entry exists");
}

#[tokio::test]
async fn the_commits_of_one_call_are_each_decided_on_their_own_in_order() {
    let server = RedisServer::start().expect("redis starts");
    let mut connection = connect(&server).await;
    let _: () = connection.set("ro:{t}:fence", 7).await.expect("set fence");
    // more commits than one script call takes, so the batch spans calls
    let count = rollout_store::COMMITS_PER_CALL * 2 + 6;
    let stale = |index: usize| index % 7 == 3;
    let fenced = |index: usize| index % 11 == 5;
    let commits: Vec<Commit> = (0..count)
        .map(|index| {
            let key = format!("ro:{{t}}:flag:f{index}");
            let mut commit = Commit::new();
            commit
                .fenced("ro:{t}:fence", if fenced(index) { 6 } else { 7 })
                .expect_revision(&key, if stale(index) { 5 } else { 0 })
                .put(&key, 1, format!("flag-{index}").into_bytes())
                .outbox("ro:{t}:outbox", format!("event-{index}").into_bytes())
                .increment("ro:{t}:versions", i64::try_from(index).expect("small"));
            commit
        })
        .collect();
    // the same command id twice in one call: the second gets the first's outcome
    let mut first = Commit::new();
    first
        .idempotent("ro:{t}:command:c-1", b"first".to_vec(), 60)
        .put("ro:{t}:flag:once", 1, b"once".to_vec());
    let mut second = Commit::new();
    second
        .idempotent("ro:{t}:command:c-1", b"second".to_vec(), 60)
        .put("ro:{t}:flag:once", 2, b"twice".to_vec());
    let mut all: Vec<&Commit> = commits.iter().collect();
    all.push(&first);
    all.push(&second);
    let outcomes = Commit::execute_many(&mut connection, &all)
        .await
        .expect("the round trip succeeds");
    assert_eq!(outcomes.len(), count + 2);
    let mut expected_sum = 0;
    for (index, outcome) in outcomes.iter().take(count).enumerate() {
        let outcome = outcome.as_ref().expect("each commit has an outcome");
        let stored: Option<Vec<u8>> = connection
            .hget(format!("ro:{{t}}:flag:f{index}"), "data")
            .await
            .expect("hget");
        if fenced(index) {
            assert_eq!(
                outcome,
                &CommitOutcome::Refused(Refused::Fenced { fence: 7 }),
                "commit {index}"
            );
            assert_eq!(stored, None, "a fenced commit {index} wrote nothing");
        } else if stale(index) {
            assert!(
                matches!(
                    outcome,
                    CommitOutcome::Refused(Refused::Conflict { actual: 0, .. })
                ),
                "commit {index}: {outcome:?}"
            );
            assert_eq!(stored, None, "a refused commit {index} wrote nothing");
        } else {
            let CommitOutcome::Committed { outbox_ids, .. } = outcome else {
                panic!("commit {index} not committed: {outcome:?}");
            };
            assert_eq!(outbox_ids.len(), 1, "commit {index}");
            assert_eq!(stored, Some(format!("flag-{index}").into_bytes()));
            expected_sum += i64::try_from(index).expect("small");
        }
    }
    let committed_count = (0..count)
        .filter(|index| !stale(*index) && !fenced(*index))
        .count();
    let stream_len: usize = connection.xlen("ro:{t}:outbox").await.expect("xlen");
    assert_eq!(
        stream_len, committed_count,
        "one outbox entry per commit made"
    );
    let versions: i64 = connection.get("ro:{t}:versions").await.expect("get");
    assert_eq!(versions, expected_sum, "only commits made move the counter");
    assert!(committed(outcomes[count].as_ref().expect("first")));
    assert_eq!(
        outcomes[count + 1].as_ref().expect("second"),
        &CommitOutcome::Refused(Refused::Duplicate(b"first".to_vec()))
    );
    let once: Vec<u8> = connection
        .hget("ro:{t}:flag:once", "data")
        .await
        .expect("hget");
    assert_eq!(once, b"once");
}
