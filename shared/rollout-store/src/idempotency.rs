//! First outcomes of commands (`cmd:<command_id>`, with a time to live): what every retry
//! of a command id gets (SPEC §11.1). Outcomes that change something are stored by their
//! commit ([`crate::Commit`]); those that change nothing — refusals and no-ops — here.

use crate::keys::Keys;
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use crate::StoreError;

/// The first outcome stored for a command id, if any.
pub async fn stored_outcome<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    command_id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(connection.get(keys.command(command_id)).await?)
}

/// Records an outcome that changed nothing — a refusal or a no-op — as a command's first
/// outcome unless one is already stored (SET NX), returning the outcome that stands.
pub async fn store_unchanged_outcome<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    keys: &Keys,
    command_id: &str,
    outcome: &[u8],
    ttl_seconds: u64,
) -> Result<Vec<u8>, StoreError> {
    let key = keys.command(command_id);
    let set: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(outcome)
        .arg("NX")
        .arg("EX")
        .arg(ttl_seconds.max(1))
        .query_async(connection)
        .await?;
    if set.is_some() {
        return Ok(outcome.to_vec());
    }
    let existing: Option<Vec<u8>> = connection.get(&key).await?;
    Ok(existing.unwrap_or_else(|| outcome.to_vec()))
}
