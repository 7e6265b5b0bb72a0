//! A namespace's webhooks and their notification stream (SPEC §12 "Notifications").
//!
//! - `ro:{ns}:webhooks` holds each webhook's record, secret included; the planner's
//!   `namespace.webhook.put` / `delete` write it with [`put`] and [`delete`], each with its
//!   namespace audit entry in the same script.
//! - While that hash exists, `commit.lua` appends every committed event to `ro:{ns}:notify`
//!   (field `event`, the outbox bytes) and `freezes_save.lua` every freeze and thaw (field
//!   `audit`): the notices are written by the commit that makes the change, so none is lost
//!   between a commit and its delivery.
//! - `ro:{ns}:webhooks:delivery` holds each webhook's [`DeliveryState`]: the stream id it
//!   was told of last (its cursor) and its counts. A new webhook starts at the stream's
//!   end. The planner holding `ro:{ns}:notify:lease` ([`take_lease`]) delivers: it reads
//!   each webhook's [`pending`] entries, saves the state after each ([`save_state`]), and
//!   [`trim`]s what every webhook has.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use rollout_core::Timestamp;
use rollout_wire::codec::{self, Encoding};
use rollout_wire::events::{ChangeEvent, EventKind};
use rollout_wire::queries::AuditEntry;
use rollout_wire::webhooks::{Delivery, Notice, WebhookView};
use serde::{Deserialize, Serialize};

use crate::keys::Keys;
use crate::mutation::AUDIT_MAX_ENTRIES;
use crate::StoreError;

/// About how many notices a namespace's stream keeps when a webhook stays behind (the
/// oldest go first: the webhook's cursor then points before the stream, and it resumes at
/// the oldest kept).
pub const NOTIFY_MAX_ENTRIES: usize = 100_000;

static PUT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/webhook_put.lua")));
static DELETE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("scripts/webhook_delete.lua")));
static SAVE_STATE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS[1] webhooks, KEYS[2] deliveries; ARGV[1] id, ARGV[2] state: saved only while the
-- webhook exists (a delete in between wins)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1",
    )
});
static LEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS[1] lease; ARGV[1] owner, ARGV[2] ttl ms: take a free lease or renew one's own
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0",
    )
});

/// A webhook as stored, secret included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    pub updated_at: Timestamp,
}

impl WebhookRecord {
    /// Whether the webhook is told of `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// How far a webhook's deliveries got: the last stream id it was told of (or that was
/// skipped for it), and the counts shown as its [`Delivery`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    pub cursor: String,
    #[serde(flatten)]
    pub delivery: Delivery,
}

/// A webhook with its delivery state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub record: WebhookRecord,
    pub state: DeliveryState,
}

impl Webhook {
    /// As shown: no secret.
    pub fn view(&self) -> WebhookView {
        WebhookView {
            id: self.record.id.clone(),
            url: self.record.url.clone(),
            events: self.record.events.clone(),
            updated_by: self.record.updated_by.clone(),
            updated_at: self.record.updated_at,
            delivery: self.state.delivery.clone(),
        }
    }
}

/// One entry of the notification stream.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingNotice {
    /// Its stream id (the idempotency key is `<namespace>:<id>`).
    pub id: String,
    /// What it tells; `None` when the entry cannot be read (logged; skipped by delivery).
    pub notice: Option<Notice>,
}

/// A field of a hash or a stream entry, with its value.
type HashField = (String, Vec<u8>);

fn json<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|error| StoreError::Corrupt(format!("{what}: {error}")))
}

fn from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt(format!("{what}: {error}")))
}

/// The namespace's webhooks with their delivery state, by id.
pub async fn load<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
) -> Result<Vec<Webhook>, StoreError> {
    let (records, states): (Vec<HashField>, Vec<HashField>) = redis::pipe()
        .cmd("HGETALL")
        .arg(keys.webhooks())
        .cmd("HGETALL")
        .arg(keys.deliveries())
        .query_async(connection)
        .await?;
    let mut webhooks = Vec::with_capacity(records.len());
    for (id, raw) in records {
        let record: WebhookRecord = from_json(&raw, &format!("webhook {id}"))?;
        let state = match states.iter().find(|(state_id, _)| *state_id == id) {
            Some((_, raw)) => from_json(raw, &format!("webhook {id} delivery state"))?,
            None => DeliveryState::default(),
        };
        webhooks.push(Webhook { record, state });
    }
    webhooks.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    Ok(webhooks)
}

/// Saves `record` (new: its deliveries start after the stream's last entry; known: it
/// keeps its place), appending `audit` to the namespace's log.
pub async fn put<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    record: &WebhookRecord,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    let _: i64 = PUT
        .key(keys.webhooks())
        .key(keys.deliveries())
        .key(keys.notify())
        .key(keys.audit_namespace())
        .arg(&record.id)
        .arg(json(record, "webhook")?)
        .arg(encode_audit(audit)?)
        .arg(AUDIT_MAX_ENTRIES)
        .invoke_async(connection)
        .await?;
    Ok(())
}

/// Removes webhook `id` and its delivery state, appending `audit` to the namespace's log;
/// the last one's removal also drops the stream. `false`: there was no such webhook.
pub async fn delete<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    id: &str,
    audit: &AuditEntry,
) -> Result<bool, StoreError> {
    let deleted: i64 = DELETE
        .key(keys.webhooks())
        .key(keys.deliveries())
        .key(keys.notify())
        .key(keys.audit_namespace())
        .arg(id)
        .arg(encode_audit(audit)?)
        .arg(AUDIT_MAX_ENTRIES)
        .invoke_async(connection)
        .await?;
    Ok(deleted == 1)
}

fn encode_audit(audit: &AuditEntry) -> Result<Vec<u8>, StoreError> {
    codec::encode(audit, Encoding::MessagePack)
        .map_err(|error| StoreError::Corrupt(format!("audit entry: {error}")))
}

/// Takes the namespace's delivery lease for `owner` for `ttl`, or renews it if `owner`
/// holds it. `false`: another planner delivers.
pub async fn take_lease<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    owner: &str,
    ttl: std::time::Duration,
) -> Result<bool, StoreError> {
    let taken: i64 = LEASE
        .key(keys.notify_lease())
        .arg(owner)
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
        .invoke_async(connection)
        .await?;
    Ok(taken == 1)
}

/// Up to `count` notices after stream id `cursor`, oldest first.
pub async fn pending<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    cursor: &str,
    count: usize,
) -> Result<Vec<PendingNotice>, StoreError> {
    let entries: Vec<(String, Vec<HashField>)> = redis::cmd("XRANGE")
        .arg(keys.notify())
        .arg(after(cursor))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(connection)
        .await?;
    Ok(entries
        .into_iter()
        .map(|(id, fields)| {
            let notice = decode_entry(&fields).unwrap_or_else(|error| {
                tracing::error!(%error, entry = %id, "an unreadable notification is skipped");
                None
            });
            PendingNotice { id, notice }
        })
        .collect())
}

/// The XRANGE start of the entries after `cursor` (all of them for no cursor).
fn after(cursor: &str) -> String {
    if cursor.is_empty() {
        "-".to_owned()
    } else {
        format!("({cursor}")
    }
}

fn decode_entry(fields: &[HashField]) -> Result<Option<Notice>, StoreError> {
    let Some((field, bytes)) = fields.first() else {
        return Ok(None);
    };
    let corrupt = |error: codec::CodecError| StoreError::Corrupt(format!("notice: {error}"));
    Ok(Some(match field.as_str() {
        "event" => {
            Notice::of_event(&ChangeEvent::decode(bytes, Encoding::MessagePack).map_err(corrupt)?)
        }
        "audit" => {
            let audit: AuditEntry = codec::decode(bytes, Encoding::MessagePack).map_err(corrupt)?;
            Notice::Namespace {
                kind: audit.kind,
                time: audit.time,
                actor: audit.actor,
                freeze: audit
                    .details
                    .get("freeze")
                    .and_then(|freeze| serde_json::from_value(freeze.clone()).ok()),
            }
        }
        _ => return Ok(None),
    }))
}

/// How many notices wait after `cursor`, counting at most `cap`.
pub async fn pending_count<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    cursor: &str,
    cap: usize,
) -> Result<u64, StoreError> {
    let entries: Vec<(String, redis::Value)> = redis::cmd("XRANGE")
        .arg(keys.notify())
        .arg(after(cursor))
        .arg("+")
        .arg("COUNT")
        .arg(cap)
        .query_async(connection)
        .await?;
    Ok(u64::try_from(entries.len()).unwrap_or(u64::MAX))
}

/// Saves webhook `id`'s delivery state, unless it was deleted meanwhile.
pub async fn save_state<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    id: &str,
    state: &DeliveryState,
) -> Result<bool, StoreError> {
    crate::failpoint::hit("webhook.before_save");
    let saved: i64 = SAVE_STATE
        .key(keys.webhooks())
        .key(keys.deliveries())
        .arg(id)
        .arg(json(state, "delivery state")?)
        .invoke_async(connection)
        .await?;
    Ok(saved == 1)
}

/// Drops the notices before stream id `before` (every webhook has them).
pub async fn trim<C: ConnectionLike + Send>(
    connection: &mut C,
    keys: &Keys,
    before: &str,
) -> Result<(), StoreError> {
    if before.is_empty() || before == "0-0" {
        return Ok(());
    }
    let _: i64 = redis::cmd("XTRIM")
        .arg(keys.notify())
        .arg("MINID")
        .arg(before)
        .query_async(connection)
        .await?;
    Ok(())
}
