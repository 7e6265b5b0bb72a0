//! The records stored in Redis — `rollout_core::record`'s [`FlagRecord`] and
//! [`RolloutRecord`], the stored format. Each lives in a hash `{rev, data}`: `rev` is what commits
//! compare, `data` the MessagePack (named fields) encoding of the record. A deleted flag
//! keeps its hash with `rev` only (a tombstone), so a re-created flag's versions continue
//! upwards and evaluators never see a version go back.

use rollout_wire::codec::{self, Encoding};
use serde::{de::DeserializeOwned, Serialize};

pub use rollout_core::record::{FlagRecord, RolloutRecord};

use crate::StoreError;

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
