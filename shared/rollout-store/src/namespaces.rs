//! The namespace registry (`ro:namespaces`): every namespace a command was ever decided
//! in. Writers register theirs in the same round trip as they read the clock, so a
//! registry lost with Redis's data is written again by the next command in each namespace;
//! the ticker and the evaluators read it to find every namespace.

use crate::keys;
use redis::aio::ConnectionLike;
use redis::AsyncCommands;
use rollout_core::Timestamp;
use rollout_wire::subjects::Namespace;

use crate::StoreError;

/// Every registered namespace, in no order. A name that is not a valid namespace (written
/// by hand: writers register only validated ones) is skipped with a warning.
pub async fn registered<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
) -> Result<Vec<Namespace>, StoreError> {
    let names: Vec<String> = connection.smembers(keys::namespaces()).await?;
    Ok(names
        .into_iter()
        .filter_map(|name| match Namespace::new(name.as_str()) {
            Ok(namespace) => Some(namespace),
            Err(error) => {
                tracing::warn!(%error, namespace = %name, "skipping an invalid namespace in the registry");
                None
            }
        })
        .collect())
}

/// Redis `TIME`, with `namespace` (re)written into the registry in the same round trip.
/// Writers call it before deciding a change.
pub async fn redis_time_registering<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    namespace: &str,
) -> Result<Timestamp, StoreError> {
    let ((seconds, micros),): ((i64, i64),) = redis::pipe()
        .cmd("SADD")
        .arg(keys::namespaces())
        .arg(namespace)
        .ignore()
        .cmd("TIME")
        .query_async(connection)
        .await?;
    Ok(Timestamp::from_redis_time(seconds, micros))
}

/// Adds `namespace` to the registry (what [`redis_time_registering`] does beside reading the
/// clock), for set-ups that write before any command ran.
pub async fn register<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    namespace: &Namespace,
) -> Result<(), StoreError> {
    let _: i64 = connection
        .sadd(keys::namespaces(), namespace.as_str())
        .await?;
    Ok(())
}
