//! A percentage rollout's cohort can be reused: its status (and the audit of its creation)
//! shows the bucketing salt — drawn at random when the spec gave none — and a later rollout
//! given that salt moves exactly the same entities first. Judged on what the evaluators
//! serve, not on the plans.

use std::collections::BTreeSet;

use rollout_sandbox::{boolean_flag, Sandbox};
use rollout_sdk::{CommandClient, Entity, EvalClient, RolloutSpec};
use rollout_wire::events::EventKind;
use rollout_wire::queries::AuditQuery;
use serde_json::json;

/// A rollout of `flag` holding 20 % for an hour, with `salt` when given.
fn spec(flag: &str, salt: Option<&str>) -> RolloutSpec {
    let mut spec = json!({
        "flag": flag, "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 20, "duration": "1h"}, {"percentage": 100}],
    });
    if let Some(salt) = salt {
        spec["salt"] = json!(salt);
    }
    serde_json::from_value(spec).expect("a valid spec")
}

/// The entities (of 400) the evaluators serve the candidate of `flag`, once they serve
/// its latest version.
async fn cohort(
    sandbox: &Sandbox,
    operator: &CommandClient,
    application: &EvalClient,
    flag: &str,
) -> BTreeSet<String> {
    let version = operator
        .get_flag(flag)
        .await
        .expect("the flag reads")
        .version;
    sandbox.until_served(flag, version).await;
    let mut cohort = BTreeSet::new();
    for index in 0..400 {
        let id = format!("user-{index}");
        let served = application
            .evaluate(flag, &Entity::with_id(id.as_str()))
            .await
            .expect("evaluates");
        if served.variation == "on" {
            cohort.insert(id);
        }
    }
    cohort
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_salt_a_status_shows_brings_back_the_same_cohort() {
    let sandbox = Sandbox::builder().planners(1).evaluators(1).start().await;
    let operator = sandbox.operator();
    let application = sandbox.eval_client().await;
    for key in ["first", "again", "other"] {
        operator
            .create_flag(boolean_flag(key))
            .await
            .expect("created");
    }

    let first = operator
        .create_rollout(spec("first", None))
        .await
        .expect("created");
    let status = operator
        .rollout_status(&first.rollout_id)
        .await
        .expect("status");
    let salt = status
        .salt
        .clone()
        .expect("a percentage rollout shows the salt it drew");
    // the audit of its creation records it too
    let audit = operator
        .audit(AuditQuery {
            rollout_id: Some(first.rollout_id.clone()),
            flag: None,
            namespace: false,
            page: None,
            page_size: None,
        })
        .await
        .expect("audit");
    let created = audit
        .entries
        .iter()
        .find(|entry| entry.kind == EventKind::RolloutCreated)
        .expect("a rollout_created entry");
    assert_eq!(created.details["salt"], json!(salt), "{created:?}");

    // another flag's rollout given that salt moves the same entities
    let again = operator
        .create_rollout(spec("again", Some(&salt)))
        .await
        .expect("created");
    let shown = operator
        .rollout_status(&again.rollout_id)
        .await
        .expect("status")
        .salt;
    assert_eq!(shown.as_deref(), Some(salt.as_str()));
    // and one with another salt, mostly others (the control: the salt is what matters)
    operator
        .create_rollout(spec("other", Some("another-salt")))
        .await
        .expect("created");

    let first_cohort = cohort(&sandbox, &operator, &application, "first").await;
    let again_cohort = cohort(&sandbox, &operator, &application, "again").await;
    let other_cohort = cohort(&sandbox, &operator, &application, "other").await;
    assert!(
        (40..=120).contains(&first_cohort.len()),
        "about 20 % of 400: {}",
        first_cohort.len()
    );
    assert_eq!(first_cohort, again_cohort, "the same salt, the same cohort");
    let shared = first_cohort.intersection(&other_cohort).count();
    assert!(
        shared < first_cohort.len() / 2,
        "another salt picks mostly other entities: {shared} of {} shared",
        first_cohort.len()
    );
    sandbox.stop().await;
}
