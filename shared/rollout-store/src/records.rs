//! The records stored in Redis — `rollout_core::record`'s [`FlagRecord`] and
//! [`RolloutRecord`] — and how each is laid out in its hash. `rev` is what commits compare;
//! the other fields are MessagePack (named fields) encodings, so that what a step changes
//! is written alone:
//!
//! | hash | fields |
//! |---|---|
//! | `flag:<key>` | `rev`; `data`: the [`FlagRecord`]; `touched`: its `updated_at` in ms — the Redis time of the commit that wrote the version, the `time` of that commit's events, and so what tells two histories' commits of one version apart after a restore from an older backup — written with every commit, so a commit that moves only the flag's version and timestamp (a rollout's step) leaves `data` as it is. A deleted flag keeps `rev` only (a tombstone; older tombstones may keep a `touched`), so a re-created flag's versions continue upwards and evaluators never see a version go back. |
//! | `rollout:<id>` | `rev`; `def`: everything but the state ([`RolloutDefinitionRef`]: id, spec, plan, creation), written when the rollout is created or rescheduled; `state`: the [`rollout_core::RolloutState`], written with every commit. Records written before this layout hold the whole record in `data`: read as the definition (and the state, until a commit writes `state`). |
//!
//! Every reader goes through [`flag_from_hash`] and [`rollout_from_hash`]; every writer
//! through the commit's puts of `crate::mutation`.

use rollout_core::plan::Plan;
use rollout_core::{RolloutSpec, RolloutState, Timestamp};
use rollout_wire::codec::{self, Encoding};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use rollout_core::record::{FlagRecord, RolloutRecord};

use crate::StoreError;

/// The fields of a flag hash a reader asks for, in the order [`flag_from_hash`] takes them.
pub(crate) const FLAG_FIELDS: [&str; 3] = ["rev", "data", "touched"];
/// The fields of a rollout hash a reader asks for, in the order [`rollout_from_hash`]
/// takes them.
pub(crate) const ROLLOUT_FIELDS: [&str; 4] = ["rev", "def", "state", "data"];

/// A flag hash as read: its version and record (`None` for a tombstone or no hash).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredFlag {
    /// Revision of the hash (0 when it never existed).
    pub version: u64,
    /// The record, unless deleted or never created.
    pub record: Option<FlagRecord>,
}

/// What a record, audit entry or event encodes to at most, typically (a rollout record
/// ≈ 830 bytes, its step event ≈ 770): their buffers start at this size, so encoding one on
/// the commit path does not grow it on the way.
pub(crate) const TYPICAL_ENCODED_SIZE: usize = 1024;

/// MessagePack with named fields: the encoding of every stored record.
pub fn encode_record<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    codec::encode_reserving(record, Encoding::MessagePack, TYPICAL_ENCODED_SIZE)
        .map_err(|error| StoreError::Corrupt(format!("cannot encode record: {error}")))
}

/// Decodes a stored record; `what` names it in the error.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes)
        .map_err(|error| StoreError::Corrupt(format!("cannot decode {what}: {error}")))
}

/// A rollout's definition as stored in its hash's `def`: the [`RolloutRecord`] but its
/// state, with the record's own field names (so a whole record decodes as one too).
#[derive(Serialize)]
pub(crate) struct RolloutDefinitionRef<'a> {
    id: &'a str,
    namespace: &'a str,
    spec: &'a RolloutSpec,
    plan: &'a Plan,
    created_at: Timestamp,
    created_by: Option<&'a str>,
    traceparent: Option<&'a str>,
}

impl<'a> RolloutDefinitionRef<'a> {
    /// The definition of `record`. Every field is named, so a field added to the record
    /// does not compile until it is stored here or in the state (and read back in
    /// [`RolloutDefinition::with_state`]).
    pub(crate) fn of(record: &'a RolloutRecord) -> RolloutDefinitionRef<'a> {
        let RolloutRecord {
            id,
            namespace,
            spec,
            plan,
            state: _,
            created_at,
            created_by,
            traceparent,
        } = record;
        RolloutDefinitionRef {
            id,
            namespace,
            spec,
            plan,
            created_at: *created_at,
            created_by: created_by.as_deref(),
            traceparent: traceparent.as_deref(),
        }
    }
}

/// [`RolloutDefinitionRef`] as decoded.
#[derive(Deserialize)]
struct RolloutDefinition {
    id: String,
    namespace: String,
    spec: RolloutSpec,
    plan: Plan,
    created_at: Timestamp,
    created_by: Option<String>,
    traceparent: Option<String>,
}

impl RolloutDefinition {
    fn with_state(self, state: RolloutState) -> RolloutRecord {
        RolloutRecord {
            id: self.id,
            namespace: self.namespace,
            spec: self.spec,
            plan: self.plan,
            state,
            created_at: self.created_at,
            created_by: self.created_by,
            traceparent: self.traceparent,
        }
    }
}

/// The flag `flag_key` from its hash's [`FLAG_FIELDS`].
pub(crate) fn flag_from_hash(
    flag_key: &str,
    (revision, data, touched): (Option<u64>, Option<Vec<u8>>, Option<i64>),
) -> Result<StoredFlag, StoreError> {
    let record = match data {
        Some(bytes) => {
            let mut record: FlagRecord = decode_record(&bytes, &format!("flag {flag_key}"))?;
            if let Some(touched) = touched {
                record.updated_at = Timestamp::from_millis(touched);
            }
            Some(record)
        }
        None => None,
    };
    Ok(StoredFlag {
        version: revision.unwrap_or(0),
        record,
    })
}

/// The fields of a rollout hash, as [`ROLLOUT_FIELDS`] reads them.
pub(crate) type RolloutHash = (
    Option<u64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// The rollout `rollout_id` from its hash's [`ROLLOUT_FIELDS`]: its revision (0 when there
/// is none, readable even when its record is not) and record (`None` when there is none).
pub(crate) fn rollout_from_hash(
    rollout_id: &str,
    (revision, definition, state, whole): RolloutHash,
) -> (u64, Result<Option<RolloutRecord>, StoreError>) {
    let what = || format!("rollout {rollout_id}");
    let decode_state = || -> Result<Option<RolloutState>, StoreError> {
        state
            .as_deref()
            .map(|bytes| decode_record(bytes, &format!("the state of rollout {rollout_id}")))
            .transpose()
    };
    let record = match (definition, whole) {
        (Some(definition), _) => {
            decode_record::<RolloutDefinition>(&definition, &what()).and_then(|definition| {
                let state = decode_state()?.ok_or_else(|| {
                    StoreError::Corrupt(format!("{} has a definition but no state", what()))
                })?;
                Ok(Some(definition.with_state(state)))
            })
        }
        // written before definition and state were stored apart
        (None, Some(whole)) => decode_record::<RolloutRecord>(&whole, &what()).and_then(|record| {
            Ok(Some(match decode_state()? {
                Some(state) => RolloutRecord { state, ..record },
                None => record,
            }))
        }),
        (None, None) if state.is_some() => Err(StoreError::Corrupt(format!(
            "{} has a state but no definition",
            what()
        ))),
        (None, None) => Ok(None),
    };
    (revision.unwrap_or(0), record)
}
