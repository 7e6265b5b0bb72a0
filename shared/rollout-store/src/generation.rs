//! Redis's generation id (`ro:generation`): a random id stored once per data history. An
//! evaluator that finds a different id than the one it loaded under knows the versions it
//! holds belong to a lost history, and rebuilds its snapshot from what Redis holds now.

use crate::keys;
use redis::aio::ConnectionLike;

use crate::StoreError;

/// The stored generation id, or `fresh` stored now (`SET NX GET`) when there was none.
pub async fn current_or_set<C: ConnectionLike + Send + Sync>(
    connection: &mut C,
    fresh: &str,
) -> Result<String, StoreError> {
    let previous: Option<String> = redis::cmd("SET")
        .arg(keys::generation())
        .arg(fresh)
        .arg("NX")
        .arg("GET")
        .query_async(connection)
        .await?;
    Ok(previous.unwrap_or_else(|| fresh.to_owned()))
}
