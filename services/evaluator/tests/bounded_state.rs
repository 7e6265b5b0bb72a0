//! SPEC §11.1 "nothing any client does ... grows state without bound": fleet agents that
//! went silent are forgotten after `agent_expire_after`, so machines that left do not stay
//! stage members (or Redis keys) forever.

mod common;

use std::time::Duration;

use common::*;
use rollout_wire::codec::Encoding;
use rollout_wire::envelope::ErrorCode;
use rollout_wire::subjects::{FleetVerb, Subjects};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_silent_past_their_expiry_are_forgotten() {
    let servers = Servers::start();
    let mut config = servers.config();
    config.evaluator.stale_agent_after = Duration::from_millis(300);
    config.evaluator.agent_expire_after = Duration::from_secs(1);
    let replica = start(config).await;
    let client = servers.client().await;
    let subjects = Subjects::default();
    let fleet = |verb| subjects.fleet(&namespace(NS), verb);
    let register = |agent: &'static str| {
        let client = client.clone();
        let subject = fleet(FleetVerb::Register);
        async move {
            request(
                &client,
                subject,
                &serde_json::json!({"agent_id": agent, "labels": {"env": "prod"}}),
                Encoding::Json,
            )
            .await
            .expect("registers");
        }
    };
    register("departed").await;
    let store = servers.store().await;
    let keys = rollout_store::Keys::new(&namespace(NS));

    // the departed machine says nothing more; another one keeps registering and beating
    eventually("the departed agent is forgotten", || async {
        register("present").await;
        let mut connection = store.redis.clone();
        let members = rollout_store::fleet::load_agents(&mut connection, &keys)
            .await
            .expect("zrange");
        members.len() == 1 && members[0].id == "present"
    })
    .await;
    let beat = request(
        &client,
        fleet(FleetVerb::Heartbeat),
        &serde_json::json!({"agent_id": "departed"}),
        Encoding::Json,
    )
    .await
    .expect_err("a forgotten agent must register again");
    assert_eq!(
        (beat.code, beat.field.as_deref()),
        (ErrorCode::NotFound, Some("agent_id"))
    );
    replica.stop().await;
}
