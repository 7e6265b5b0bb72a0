//! The answering side of `rollout.cluster.ping`: every service replica subscribes (not in a
//! queue group: each one answers) and replies with what its `describe` says now.

use std::sync::Arc;

use futures_util::StreamExt;
use rollout_wire::cluster::MemberInfo;
use rollout_wire::subjects::Subjects;

use crate::shutdown::{Shutdown, Tasks};

/// Answers cluster pings with `describe()` until `shutdown`.
pub async fn answer_pings(
    nats: async_nats::Client,
    subjects: &Subjects,
    describe: Arc<dyn Fn() -> MemberInfo + Send + Sync>,
    shutdown: Shutdown,
    tasks: &Tasks,
) -> Result<(), async_nats::SubscribeError> {
    let mut pings = nats.subscribe(subjects.cluster_ping()).await?;
    tasks.spawn("cluster-pings", async move {
        loop {
            let ping = tokio::select! {
                () = shutdown.cancelled() => return,
                ping = pings.next() => ping,
            };
            let Some(ping) = ping else { return };
            let Some(reply) = ping.reply else { continue };
            match serde_json::to_vec(&describe()) {
                Ok(body) => {
                    if let Err(error) = nats.publish(reply, body.into()).await {
                        tracing::debug!(%error, "cluster ping reply failed");
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot describe this replica"),
            }
        }
    });
    Ok(())
}
