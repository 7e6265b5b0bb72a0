//! A namespace's freezes (`ro:{ns}:freezes`, JSON; SPEC §12): read by the ticker each round
//! (a frozen namespace's timers wait) and by status queries, written by the planner's
//! `namespace.freeze` / `namespace.unfreeze` with a compare-and-set that also appends the
//! change to the namespace's audit log (`ro:{ns}:audit:namespace`).

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use rollout_core::freeze::Freezes;
use rollout_wire::codec::{self, Encoding};
use rollout_wire::queries::AuditEntry;

use crate::keys::Keys;
use crate::mutation::AUDIT_MAX_ENTRIES;
use crate::{Connection, StoreError};

static SAVE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/freezes_save.lua")));

/// A namespace's freezes as read, with the stored bytes a [`save`] compares against.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredFreezes {
    /// The freezes (none when nothing is stored).
    pub freezes: Freezes,
    /// The stored value, empty when there is none.
    pub raw: Vec<u8>,
}

fn decode(raw: &[u8]) -> Result<Freezes, StoreError> {
    if raw.is_empty() {
        return Ok(Freezes::default());
    }
    serde_json::from_slice(raw).map_err(|error| StoreError::Corrupt(format!("freezes: {error}")))
}

/// Reads the freezes of the namespace of `keys`.
pub async fn load<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
) -> Result<StoredFreezes, StoreError> {
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg(keys.freezes())
        .query_async(connection)
        .await?;
    let raw = raw.unwrap_or_default();
    Ok(StoredFreezes {
        freezes: decode(&raw)?,
        raw,
    })
}

/// Reads the freezes of every namespace of `namespaces` in one round trip
/// ([`Connection::query_each`]), in order. An unreadable value counts as no freeze (and is
/// logged): it must not stop the ticker.
pub async fn load_many(
    connection: &Connection,
    namespaces: &[&Keys],
) -> Result<Vec<Freezes>, StoreError> {
    let commands = namespaces
        .iter()
        .map(|keys| {
            let mut command = redis::cmd("GET");
            command.arg(keys.freezes());
            command
        })
        .collect();
    let raws: Vec<Option<Vec<u8>>> = connection.query_each(commands).await?;
    Ok(raws
        .into_iter()
        .map(|raw| {
            decode(&raw.unwrap_or_default()).unwrap_or_else(|error| {
                tracing::error!(%error, "a namespace's freezes cannot be read; treated as none");
                Freezes::default()
            })
        })
        .collect())
}

/// Saves `freezes` if the stored value is still `read` (what [`load`] returned), appending
/// `audit` to the namespace's log (and, while it has webhooks, to its notifications). `false`: another writer came first; read again.
pub async fn save<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    read: &StoredFreezes,
    freezes: &Freezes,
    audit: &AuditEntry,
) -> Result<bool, StoreError> {
    let value = serde_json::to_vec(freezes)
        .map_err(|error| StoreError::Corrupt(format!("freezes: {error}")))?;
    let entry = codec::encode(audit, Encoding::MessagePack)
        .map_err(|error| StoreError::Corrupt(format!("audit entry: {error}")))?;
    let saved: i64 = SAVE
        .key(keys.freezes())
        .key(keys.audit_namespace())
        .key(keys.notify())
        .key(keys.webhooks())
        .arg(&read.raw)
        .arg(value)
        .arg(entry)
        .arg(AUDIT_MAX_ENTRIES)
        .arg(crate::webhooks::NOTIFY_MAX_ENTRIES)
        .invoke_async(connection)
        .await?;
    Ok(saved == 1)
}
