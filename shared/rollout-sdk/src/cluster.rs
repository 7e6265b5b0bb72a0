//! Who is running: one `rollout.cluster.ping` and every replica's answer gathered for a
//! moment ([`members`]).

use std::time::Duration;

use futures_util::StreamExt;
use rollout_wire::cluster::MemberInfo;
use rollout_wire::subjects::Subjects;

use crate::error::{Error, Result};

/// Asks every planner, ticker, evaluator and console replica reachable on `nats` who it is,
/// and returns the answers that arrived within `wait`, sorted by service and replica.
pub async fn members(
    nats: &async_nats::Client,
    subjects: &Subjects,
    wait: Duration,
) -> Result<Vec<MemberInfo>> {
    let inbox = nats.new_inbox();
    let mut replies = nats
        .subscribe(inbox.clone())
        .await
        .map_err(|error| Error::transport(error.to_string()))?;
    nats.publish_with_reply(subjects.cluster_ping(), inbox, "".into())
        .await
        .map_err(|error| Error::transport(error.to_string()))?;
    nats.flush()
        .await
        .map_err(|error| Error::transport(error.to_string()))?;
    let mut members = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
        match serde_json::from_slice::<MemberInfo>(&reply.payload) {
            Ok(member) => members.push(member),
            Err(error) => tracing::warn!(%error, "an undecodable cluster ping answer"),
        }
    }
    members.sort_by(|a, b| (&a.service, &a.replica).cmp(&(&b.service, &b.replica)));
    Ok(members)
}
