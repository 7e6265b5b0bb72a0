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
    let members = wait_until("a ticker to lead", || async {
        let members = members(&sandbox).await;
        members
            .iter()
            .any(|member| member.leader == Some(true))
            .then_some(members)
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
    assert_eq!(leaders.len(), 1, "one leader: {members:?}");
    let evaluator = &members[0];
    let served = &evaluator.served[sandbox.namespace().as_str()];
    assert_eq!((served.flags, served.versions), (1, 1), "{evaluator:?}");

    let human = run_ctl(&sandbox.nats.url(), &["cluster", "status"]).await;
    human.assert_ok();
    assert!(human.stdout.contains("leader (epoch"), "{}", human.stdout);
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
