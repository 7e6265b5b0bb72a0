//! What is committed in Redis — rollout records, flag versions and audits — read for the
//! invariant checks ([`super::checks`]) from any system under test: the cluster of a chaos
//! run ([`super::cluster::Cluster::committed`]) or the compose cluster's Redis.

use rollout_store::reads::{audit_page, AuditLog};
use rollout_store::Connection;
use rollout_store::{load_flag, load_rollout, Keys, RolloutRecord};
use rollout_wire::queries::AuditEntry;
use rollout_wire::subjects::Namespace;

/// Reads one namespace's committed records.
#[derive(Clone)]
pub struct CommittedReader {
    redis: Connection,
    keys: Keys,
}

impl CommittedReader {
    pub fn new(redis: Connection, namespace: &str) -> CommittedReader {
        CommittedReader {
            redis,
            keys: Keys::new(&Namespace::new(namespace).expect("namespace")),
        }
    }

    /// The rollout's record, `None` once deleted (or lost with Redis's data).
    pub async fn find_rollout(&self, id: &str) -> Option<RolloutRecord> {
        let mut connection = self.redis.clone();
        load_rollout(&mut connection, &self.keys, id)
            .await
            .expect("rollout loads")
    }

    pub async fn rollout(&self, id: &str) -> RolloutRecord {
        self.find_rollout(id)
            .await
            .unwrap_or_else(|| panic!("rollout {id} exists"))
    }

    /// The flag's version in Redis.
    pub async fn flag_version(&self, key: &str) -> u64 {
        let mut connection = self.redis.clone();
        load_flag(&mut connection, &self.keys, key)
            .await
            .expect("flag loads")
            .version
    }

    /// A rollout's audit, oldest first.
    pub async fn rollout_audit(&self, id: &str) -> Vec<AuditEntry> {
        self.audit(AuditLog::Rollout(id)).await
    }

    /// A flag's audit, oldest first.
    pub async fn flag_audit(&self, key: &str) -> Vec<AuditEntry> {
        self.audit(AuditLog::Flag(key)).await
    }

    async fn audit(&self, log: AuditLog<'_>) -> Vec<AuditEntry> {
        let mut connection = self.redis.clone();
        let (_, mut entries) = audit_page(&mut connection, &self.keys, log, 0, u32::MAX)
            .await
            .expect("the audit reads");
        entries.reverse();
        entries
    }
}
