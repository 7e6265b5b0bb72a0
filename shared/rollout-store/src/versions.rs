//! The namespace flag-version counter (`ro:{ns}:versions`, see [`Keys::versions`]): how a
//! reader holding a namespace's flags learns, with one `GET` per namespace, whether it
//! missed a change. Every commit moves the counter by what it changes of the sum of the
//! listed flags' versions, so `counter − offset` is that sum, where the offset is a
//! constant of the stored data (zero for data written since the counter exists); a reader
//! measures it once with [`calibrate`] and then compares [`counters`] with the sum of the
//! versions it serves.

use rollout_wire::subjects::Namespace;

use crate::keys::Keys;
use crate::{Connection, StoreError};

/// The calibration script: read-only, sent with `EVAL_RO` (rarely: once per namespace
/// and reader, and after a comparison that explained nothing).
const CALIBRATE_SCRIPT: &str = include_str!("scripts/versions_calibrate.lua");

/// The counter's offset in `namespace`: the counter minus the sum of the versions of the
/// flags the namespace lists, both read at one instant (one script, O(flags)).
pub async fn calibrate(connection: &Connection, namespace: &Namespace) -> Result<i64, StoreError> {
    let keys = Keys::new(namespace);
    let mut connection = connection.clone();
    let (counter, sum): (i64, i64) = redis::cmd("EVAL_RO")
        .arg(CALIBRATE_SCRIPT)
        .arg(2)
        .arg(keys.flags())
        .arg(keys.versions())
        .arg(keys.flag(""))
        .query_async(&mut connection)
        .await?;
    Ok(counter - sum)
}

/// The counters of `namespaces`, in order (0 for a namespace that has none yet): one
/// pipeline on a single server, one request per namespace on a cluster.
pub async fn counters(
    connection: &Connection,
    namespaces: &[Namespace],
) -> Result<Vec<i64>, StoreError> {
    let commands = namespaces
        .iter()
        .map(|namespace| {
            let mut command = redis::cmd("GET");
            command.arg(Keys::new(namespace).versions());
            command
        })
        .collect();
    let counters: Vec<Option<i64>> = connection.query_each(commands).await?;
    Ok(counters
        .into_iter()
        .map(|counter| counter.unwrap_or(0))
        .collect())
}
