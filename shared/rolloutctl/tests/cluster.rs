//! `rolloutctl cluster status`: who is running, asked over NATS — and what is missing, said
//! plainly (no ticker: nothing advances rollouts).

mod common;

use common::run_ctl;
use rollout_sandbox::{wait_until, Sandbox};
use rollout_wire::MemberInfo;

async fn members(sandbox: &Sandbox) -> Vec<MemberInfo> {
    let run = run_ctl(&sandbox.nats.url(), &["--json", "cluster", "status"]).await;
    run.assert_ok();
    serde_json::from_str(&run.stdout).expect("members json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_answers_and_the_leader_is_named() {
    let sandbox = Sandbox::builder()
        .planners(1)
        .tickers(2)
        .evaluators(1)
        .start()
        .await;
    sandbox
        .operator()
        .create_flag(rollout_sandbox::boolean_flag("checkout"))
        .await
        .expect("flag");
    sandbox.until_served("checkout", 1).await;
    // two tickers split the 64 shards evenly between them
    let members = wait_until("the tickers to share the shards", || async {
        let members = members(&sandbox).await;
        let shares: Vec<usize> = members
            .iter()
            .filter(|member| member.service == "ticker")
            .map(|member| member.shards.len())
            .collect();
        (shares == [32, 32]).then_some(members)
    })
    .await;
    let services: Vec<&str> = members
        .iter()
        .map(|member| member.service.as_str())
        .collect();
    assert_eq!(
        services,
        ["evaluator", "planner", "ticker", "ticker"],
        "{members:?}"
    );
    assert!(members.iter().all(|member| member.ready), "{members:?}");
    let leaders: Vec<&MemberInfo> = members
        .iter()
        .filter(|member| member.leader == Some(true))
        .collect();
    assert_eq!(leaders.len(), 2, "both lead: {members:?}");
    let mut shards: Vec<u32> = leaders
        .iter()
        .flat_map(|member| member.shards.keys().copied())
        .collect();
    shards.sort_unstable();
    assert_eq!(shards, (0..64).collect::<Vec<_>>(), "each shard led once");
    assert!(leaders.iter().all(|member| member.shard_count == Some(64)));
    let evaluator = &members[0];
    let served = &evaluator.served[sandbox.namespace().as_str()];
    assert_eq!((served.flags, served.versions), (1, 1), "{evaluator:?}");

    let human = run_ctl(&sandbox.nats.url(), &["cluster", "status"]).await;
    human.assert_ok();
    assert_eq!(
        human.stdout.matches("leads 32 of 64 shards").count(),
        2,
        "{}",
        human.stdout
    );
    assert!(!human.stdout.contains("warning"), "{}", human.stdout);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_a_ticker_is_said_to_advance_nothing() {
    let sandbox = Sandbox::builder().planners(1).start().await;
    let human = run_ctl(&sandbox.nats.url(), &["cluster", "status"]).await;
    human.assert_ok();
    assert!(
        human
            .stdout
            .contains("warning: no ticker answered: nothing advances rollouts"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("planner"), "{}", human.stdout);
    sandbox.stop().await;
}
