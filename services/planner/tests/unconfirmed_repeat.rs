//! A retried command is acknowledged no sooner than its first attempt could have been.
//!
//! The planner here confirms every commit on one replica (`redis.wait_replicas = 1`, Redis
//! `WAIT`, 300 ms) of a real Redis master with a real replica. With the replica stopped
//! (SIGSTOP), an operator's `flag.update` commits in the master but cannot be confirmed, so
//! it is answered `unavailable` — while the master already stores the command id's first
//! outcome. Retrying the same command id then finds that outcome; answering it at once would
//! acknowledge a write no replica holds (a fail-over could lose an acknowledged command). So
//! the retry is answered `unavailable` too as long as the replica stays stopped, and once the
//! replica runs again the retry is acknowledged with the first attempt's outcome — the
//! update applied once, and held by the replica.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Cluster;
use rollout_sandbox::{boolean_flag, Sandbox};
use rollout_sdk::{CommandClient, CommandOutcome, ErrorCode};
use rollout_testkit::RedisServer;
use rollout_wire::commands::{Command, FlagCreate, FlagResult, FlagUpdate};

const FLAG: &str = "checkout";
const FLAG_KEY: &str = "ro:{test}:flag:checkout";
const FLAG_AUDIT: &str = "ro:{test}:audit:flag:checkout";
/// The command id of the update that is not confirmed at first.
const UPDATE_ID: &str = "update-unconfirmed";

async fn connect(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects")
}

/// The flag's stored version (`rev` of its record), if it exists.
async fn stored_version(redis: &mut redis::aio::MultiplexedConnection) -> Option<u64> {
    redis::cmd("HGET")
        .arg(FLAG_KEY)
        .arg("rev")
        .query_async(redis)
        .await
        .expect("hget")
}

/// How many audit entries the flag has.
async fn audit_len(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("LLEN")
        .arg(FLAG_AUDIT)
        .query_async(redis)
        .await
        .expect("llen")
}

/// The flag's whole record, field by field (a master and its replica may list a hash's
/// fields in different orders).
async fn record(redis: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, Vec<u8>> {
    redis::cmd("HGETALL")
        .arg(FLAG_KEY)
        .query_async(redis)
        .await
        .expect("hgetall")
}

fn flag_result(outcome: CommandOutcome) -> FlagResult {
    match outcome {
        CommandOutcome::Flag(result) => *result,
        other => panic!("a flag command answered {other:?}"),
    }
}

/// The update sent, and sent again, under [`UPDATE_ID`]: the flag serving `on` by default.
fn update() -> Command {
    let mut flag = boolean_flag(FLAG);
    flag.description = Some("on for everyone".to_owned());
    flag.default.variation = Some("on".to_owned());
    Command::FlagUpdate(FlagUpdate {
        command_id: Some(UPDATE_ID.to_owned()),
        actor: None,
        flag,
        expected_version: None,
    })
}

/// Sends [`update`] and expects the planner to answer `unavailable` because the commit is
/// not confirmed on the replica.
async fn expect_unconfirmed(operator: &CommandClient, attempt: &str) {
    let refused = operator.send(update()).await.expect_err(&format!(
        "{attempt}: acknowledged, though no replica holds the update"
    ));
    assert_eq!(
        refused.code(),
        ErrorCode::Unavailable,
        "{attempt}: {refused}"
    );
    assert!(
        refused.message().contains("not replicated"),
        "{attempt}: refused for another reason than the replica: {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_is_acknowledged_only_once_its_first_commit_is_replicated() {
    // the planner confirms every commit on one replica of the sandbox's Redis
    let mut cluster = Cluster {
        sandbox: Sandbox::builder()
            .namespace("test")
            .planners(0)
            .planner_config(|config| {
                config.redis.wait_replicas = 1;
                config.redis.wait_timeout = Duration::from_millis(300);
            })
            .start()
            .await,
    };
    let replica = tokio::task::block_in_place(|| RedisServer::start_replica_of(&cluster.redis))
        .expect("a replica in sync");
    cluster.add_planner().await;
    let operator = cluster.operator();
    let mut master = cluster.redis().await;

    // 1. the replica in sync: a command is confirmed and acknowledged
    let created = flag_result(
        operator
            .send(Command::FlagCreate(FlagCreate {
                command_id: Some("create".to_owned()),
                actor: None,
                flag: boolean_flag(FLAG),
            }))
            .await
            .expect("acknowledged while the replica is in sync"),
    );
    assert_eq!(created.version, 1);

    // 2. the replica stopped: the update commits in the master but is not confirmed
    replica.pause().expect("the replica stops");
    expect_unconfirmed(&operator, "the first attempt").await;
    assert_eq!(
        stored_version(&mut master).await,
        Some(2),
        "the first attempt committed in the master"
    );
    assert_eq!(audit_len(&mut master).await, 2, "created, updated");

    // 3. still stopped: the retry finds the stored outcome, yet is not acknowledged
    expect_unconfirmed(&operator, "a retry while the replica is stopped").await;
    assert_eq!(
        stored_version(&mut master).await,
        Some(2),
        "the retry applied nothing again"
    );

    // 4. the replica runs again: a retry is acknowledged with the first attempt's outcome
    replica.resume().expect("the replica runs again");
    let deadline = Instant::now() + Duration::from_secs(20);
    let acknowledged = loop {
        match operator.send(update()).await {
            Ok(outcome) => break flag_result(outcome),
            Err(error) if error.code() == ErrorCode::Unavailable => {
                assert!(
                    Instant::now() < deadline,
                    "never acknowledged once the replica ran again: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the retry was refused: {error}"),
        }
    };
    assert_eq!(
        acknowledged.version, 2,
        "the first attempt's outcome: {acknowledged:?}"
    );
    assert_eq!(acknowledged.flag.default.variation.as_deref(), Some("on"));
    assert_eq!(stored_version(&mut master).await, Some(2), "applied once");
    assert_eq!(audit_len(&mut master).await, 2, "one update in the audit");

    // the acknowledged update is the replica's too
    let mut on_replica = connect(&replica).await;
    assert_eq!(stored_version(&mut on_replica).await, Some(2));
    assert_eq!(record(&mut on_replica).await, record(&mut master).await);
    assert_eq!(audit_len(&mut on_replica).await, 2);
}
