//! The compare-and-set commit: the only way anything in the system writes state. A
//! [`Commit`] lists the revisions it expects and everything it writes — records, indexes,
//! audit entries, outbox events, the command's stored outcome — and `scripts/commit.lua` applies
//! it atomically after checking every precondition, or applies nothing.

use redis::aio::ConnectionLike;
use rollout_core::Timestamp;

use crate::StoreError;

static COMMIT_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("scripts/commit.lua")));

/// What the script did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Everything was written at Redis time `now`; `outbox_ids` are the stream ids of the
    /// appended events, in order.
    Committed {
        /// Redis `TIME` at commit.
        now: Timestamp,
        /// Outbox stream entry ids.
        outbox_ids: Vec<String>,
    },
    /// A precondition did not hold; nothing was written.
    Refused(Refused),
}

/// Why a commit wrote nothing: the precondition that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The command id was seen before: here is its first outcome.
    Duplicate(Vec<u8>),
    /// A record's revision was not the expected one.
    Conflict {
        /// The key whose revision differed.
        key: String,
        /// Its actual revision.
        actual: u64,
    },
    /// The writer's epoch is not the fence's: a newer leader holds the namespace.
    Fenced {
        /// The fence's epoch.
        fence: u64,
    },
    /// Redis time is before the commit's earliest allowed time.
    Early {
        /// Redis `TIME`.
        now: Timestamp,
    },
}

/// A set of preconditions and writes applied all together or not at all.
#[derive(Debug, Default, Clone)]
pub struct Commit {
    keys: Vec<String>,
    idempotency: Option<(usize, Vec<u8>, u64)>,
    fence: Option<(usize, u64)>,
    not_before_ms: i64,
    checks: Vec<(usize, u64)>,
    puts: Vec<(usize, u64, Vec<u8>)>,
    tombstones: Vec<(usize, u64)>,
    deletes: Vec<usize>,
    zset_adds: Vec<(usize, i64, String)>,
    zset_removes: Vec<(usize, String)>,
    set_adds: Vec<(usize, String)>,
    set_removes: Vec<(usize, String)>,
    pushes: Vec<(usize, Vec<u8>, usize)>,
    outbox: Vec<(usize, bytes::Bytes)>,
    notify: Option<(usize, usize, usize)>,
    increments: Vec<(usize, i64)>,
}

impl Commit {
    /// An empty commit.
    pub fn new() -> Commit {
        Commit::default()
    }

    fn key(&mut self, key: &str) -> usize {
        // a commit touches a dozen keys or so: a scan beats hashing each one
        if let Some(position) = self.keys.iter().position(|known| known == key) {
            return position + 1;
        }
        self.keys.push(key.to_owned());
        self.keys.len()
    }

    /// Refuse (returning the stored outcome) if `key` exists; on success store `outcome`
    /// under it for `ttl_seconds`.
    pub fn idempotent(&mut self, key: &str, outcome: Vec<u8>, ttl_seconds: u64) -> &mut Commit {
        let index = self.key(key);
        self.idempotency = Some((index, outcome, ttl_seconds.max(1)));
        self
    }

    /// Refuse unless the epoch stored at `key` equals `epoch`.
    pub fn fenced(&mut self, key: &str, epoch: u64) -> &mut Commit {
        let index = self.key(key);
        self.fence = Some((index, epoch));
        self
    }

    /// Refuse while Redis time is before `time`.
    pub fn not_before(&mut self, time: Timestamp) -> &mut Commit {
        self.not_before_ms = time.as_millis();
        self
    }

    /// Refuse unless the record hash at `key` has revision `revision` (0: no record yet).
    pub fn expect_revision(&mut self, key: &str, revision: u64) -> &mut Commit {
        let index = self.key(key);
        self.checks.push((index, revision));
        self
    }

    /// Write a record hash: revision and data.
    pub fn put(&mut self, key: &str, revision: u64, data: Vec<u8>) -> &mut Commit {
        let index = self.key(key);
        self.puts.push((index, revision, data));
        self
    }

    /// Remove a record's data but keep its revision, so a re-created record continues
    /// from it and versions never go backwards.
    pub fn tombstone(&mut self, key: &str, revision: u64) -> &mut Commit {
        let index = self.key(key);
        self.tombstones.push((index, revision));
        self
    }

    /// Delete a key.
    pub fn delete(&mut self, key: &str) -> &mut Commit {
        let index = self.key(key);
        self.deletes.push(index);
        self
    }

    /// ZADD.
    pub fn zadd(&mut self, key: &str, score: i64, member: &str) -> &mut Commit {
        let index = self.key(key);
        self.zset_adds.push((index, score, member.to_owned()));
        self
    }

    /// ZREM.
    pub fn zrem(&mut self, key: &str, member: &str) -> &mut Commit {
        let index = self.key(key);
        self.zset_removes.push((index, member.to_owned()));
        self
    }

    /// SADD.
    pub fn sadd(&mut self, key: &str, member: &str) -> &mut Commit {
        let index = self.key(key);
        self.set_adds.push((index, member.to_owned()));
        self
    }

    /// SREM.
    pub fn srem(&mut self, key: &str, member: &str) -> &mut Commit {
        let index = self.key(key);
        self.set_removes.push((index, member.to_owned()));
        self
    }

    /// LPUSH `value` and keep the newest `max_len` entries.
    pub fn push(&mut self, key: &str, value: Vec<u8>, max_len: usize) -> &mut Commit {
        let index = self.key(key);
        self.pushes.push((index, value, max_len.max(1)));
        self
    }

    /// Append an event to the outbox stream at `key`.
    pub fn outbox(&mut self, key: &str, event: impl Into<bytes::Bytes>) -> &mut Commit {
        let index = self.key(key);
        self.outbox.push((index, event.into()));
        self
    }

    /// Also append every outbox event to the notification stream at `stream` (keeping
    /// about `max_len` entries) when the webhooks hash at `webhooks` exists.
    pub fn notify(&mut self, stream: &str, webhooks: &str, max_len: usize) -> &mut Commit {
        let stream = self.key(stream);
        let webhooks = self.key(webhooks);
        self.notify = Some((stream, webhooks, max_len.max(1)));
        self
    }

    /// INCRBY `key` by `amount` (a counter the commit moves with what it writes).
    pub fn increment(&mut self, key: &str, amount: i64) -> &mut Commit {
        let index = self.key(key);
        self.increments.push((index, amount));
        self
    }

    /// The keys this commit touches, in KEYS order.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Runs the script.
    pub async fn execute<C: ConnectionLike>(
        &self,
        connection: &mut C,
    ) -> Result<CommitOutcome, StoreError> {
        Commit::execute_many(connection, &[self])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Protocol("a commit left no outcome".to_owned())))
    }

    /// Runs every commit of `commits` in one round trip, each its own atomic script with
    /// its own preconditions; one outcome per commit, in order. `Err` only when the round
    /// trip failed (nothing is known then: each commit may or may not have run).
    pub async fn execute_many<C: ConnectionLike>(
        connection: &mut C,
        commits: &[&Commit],
    ) -> Result<Vec<Result<CommitOutcome, StoreError>>, StoreError> {
        let calls: Vec<_> = commits.iter().map(|commit| commit.call()).collect();
        let answers = crate::pipelined::invoke_all(connection, calls, &[&COMMIT_SCRIPT]).await?;
        Ok(answers
            .into_iter()
            .map(|answer| {
                let value = answer?;
                let reply: Vec<redis::Value> = redis::FromRedisValue::from_redis_value(value)
                    .map_err(|error| {
                        StoreError::Protocol(format!("unexpected commit script reply: {error}"))
                    })?;
                parse_reply(reply)
            })
            .collect())
    }

    /// The script call this commit makes, its keys and arguments written in place.
    fn call(&self) -> redis::Cmd {
        let mut invocation = crate::pipelined::script_call(&COMMIT_SCRIPT, self.keys.len());
        for key in &self.keys {
            invocation.arg(key);
        }
        let (idempotency_index, outcome, ttl) = match &self.idempotency {
            Some((index, outcome, ttl)) => (*index, outcome.as_slice(), *ttl),
            None => (0, &[][..], 0),
        };
        let (fence_index, epoch) = self.fence.unwrap_or((0, 0));
        invocation
            .arg(idempotency_index)
            .arg(outcome)
            .arg(ttl)
            .arg(fence_index)
            .arg(epoch)
            .arg(self.not_before_ms.max(0));
        invocation.arg(self.checks.len());
        for (index, revision) in &self.checks {
            invocation.arg(*index).arg(*revision);
        }
        invocation.arg(self.puts.len());
        for (index, revision, data) in &self.puts {
            invocation.arg(*index).arg(*revision).arg(data.as_slice());
        }
        invocation.arg(self.tombstones.len());
        for (index, revision) in &self.tombstones {
            invocation.arg(*index).arg(*revision);
        }
        invocation.arg(self.deletes.len());
        for index in &self.deletes {
            invocation.arg(*index);
        }
        invocation.arg(self.zset_adds.len());
        for (index, score, member) in &self.zset_adds {
            invocation.arg(*index).arg(*score).arg(member);
        }
        invocation.arg(self.zset_removes.len());
        for (index, member) in &self.zset_removes {
            invocation.arg(*index).arg(member);
        }
        invocation.arg(self.set_adds.len());
        for (index, member) in &self.set_adds {
            invocation.arg(*index).arg(member);
        }
        invocation.arg(self.set_removes.len());
        for (index, member) in &self.set_removes {
            invocation.arg(*index).arg(member);
        }
        invocation.arg(self.pushes.len());
        for (index, value, max_len) in &self.pushes {
            invocation.arg(*index).arg(value.as_slice()).arg(*max_len);
        }
        invocation.arg(self.outbox.len());
        for (index, event) in &self.outbox {
            invocation.arg(*index).arg(event.as_ref());
        }
        match self.notify {
            Some((stream, webhooks, max_len)) => {
                invocation.arg(stream).arg(webhooks).arg(max_len);
            }
            None => {
                invocation.arg(0);
            }
        }
        invocation.arg(self.increments.len());
        for (index, amount) in &self.increments {
            invocation.arg(*index).arg(*amount);
        }
        invocation
    }
}

fn bytes_of(value: &redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes.clone()),
        redis::Value::SimpleString(text) => Some(text.clone().into_bytes()),
        redis::Value::Int(number) => Some(number.to_string().into_bytes()),
        _ => None,
    }
}

fn text_of(value: &redis::Value) -> Option<String> {
    bytes_of(value).and_then(|bytes| String::from_utf8(bytes).ok())
}

fn number_of(value: Option<&redis::Value>) -> Option<i64> {
    value.and_then(text_of).and_then(|text| text.parse().ok())
}

fn parse_reply(reply: Vec<redis::Value>) -> Result<CommitOutcome, StoreError> {
    let malformed = || StoreError::Protocol(format!("unexpected commit script reply {reply:?}"));
    let status = reply.first().and_then(text_of).ok_or_else(malformed)?;
    match status.as_str() {
        "ok" => {
            let now = number_of(reply.get(1)).ok_or_else(malformed)?;
            let outbox_ids = reply[2..].iter().filter_map(text_of).collect();
            Ok(CommitOutcome::Committed {
                now: Timestamp::from_millis(now),
                outbox_ids,
            })
        }
        "duplicate" => Ok(CommitOutcome::Refused(Refused::Duplicate(
            reply.get(1).and_then(bytes_of).ok_or_else(malformed)?,
        ))),
        "conflict" => Ok(CommitOutcome::Refused(Refused::Conflict {
            key: reply.get(1).and_then(text_of).ok_or_else(malformed)?,
            actual: number_of(reply.get(2))
                .and_then(|number| u64::try_from(number).ok())
                .ok_or_else(malformed)?,
        })),
        "fenced" => Ok(CommitOutcome::Refused(Refused::Fenced {
            fence: number_of(reply.get(1))
                .and_then(|number| u64::try_from(number).ok())
                .ok_or_else(malformed)?,
        })),
        "early" => Ok(CommitOutcome::Refused(Refused::Early {
            now: Timestamp::from_millis(number_of(reply.get(1)).ok_or_else(malformed)?),
        })),
        _ => Err(malformed()),
    }
}
