//! The compare-and-set commit: the only way anything in the system writes state. A
//! [`Commit`] lists the revisions it expects and everything it writes — records, indexes,
//! audit entries, outbox events, the command's stored outcome — and `scripts/commit.lua` applies
//! it atomically after checking every precondition, or applies nothing.

use redis::aio::ConnectionLike;
use rollout_core::Timestamp;

use crate::StoreError;

static COMMIT_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("scripts/commit.lua")));

/// The most commits one script call runs: what they share (the clock, the fence, the
/// webhooks check) is asked once per call, and one call holds Redis for about
/// this many commits' time.
pub const COMMITS_PER_CALL: usize = 32;

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

/// A hash's fields a put writes besides its revision: name and value.
pub type Fields = Vec<(&'static str, Vec<u8>)>;

/// A set of preconditions and writes applied all together or not at all.
#[derive(Debug, Default, Clone)]
pub struct Commit {
    keys: Vec<String>,
    idempotency: Option<(usize, Vec<u8>, u64)>,
    fence: Option<(usize, u64)>,
    not_before_ms: i64,
    checks: Vec<(usize, u64)>,
    puts: Vec<(usize, u64, Fields)>,
    tombstones: Vec<(usize, u64)>,
    deletes: Vec<usize>,
    zset_adds: Vec<(usize, i64, String)>,
    zset_removes: Vec<(usize, String)>,
    set_adds: Vec<(usize, String)>,
    set_removes: Vec<(usize, String)>,
    pushes: Vec<(Vec<usize>, Vec<u8>, usize)>,
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
        self.put_fields(key, revision, vec![("data", data)])
    }

    /// Write a record hash's revision and `fields`, leaving its other fields as they are.
    pub fn put_fields(&mut self, key: &str, revision: u64, fields: Fields) -> &mut Commit {
        let index = self.key(key);
        self.puts.push((index, revision, fields));
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
        self.push_each(&[key], value, max_len)
    }

    /// LPUSH `value` to each list of `keys` (passed to the script once), each keeping its
    /// newest `max_len` entries.
    pub fn push_each(&mut self, keys: &[&str], value: Vec<u8>, max_len: usize) -> &mut Commit {
        let indexes = keys.iter().map(|key| self.key(key)).collect();
        self.pushes.push((indexes, value, max_len.max(1)));
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

    /// Runs every commit of `commits` in one round trip, each atomic with its own
    /// preconditions (one refused or failed commit leaves the others as they are); one
    /// outcome per commit, in order. The commits go [`COMMITS_PER_CALL`] to a script call,
    /// so they must all be keys of one namespace (one cluster slot). `Err` only when the
    /// round trip failed; a call that failed as a whole (a runtime error in the script)
    /// fails each of its commits: nothing is known of them then, as of a lost reply.
    pub async fn execute_many<C: ConnectionLike>(
        connection: &mut C,
        commits: &[&Commit],
    ) -> Result<Vec<Result<CommitOutcome, StoreError>>, StoreError> {
        let chunks: Vec<&[&Commit]> = commits.chunks(COMMITS_PER_CALL).collect();
        let calls: Vec<_> = chunks.iter().map(|chunk| Commit::call(chunk)).collect();
        let answers = crate::pipelined::invoke_all(connection, calls, &[&COMMIT_SCRIPT]).await?;
        let mut outcomes = Vec::with_capacity(commits.len());
        for (chunk, answer) in chunks.iter().zip(answers) {
            let replies = answer.map_err(StoreError::from).and_then(|value| {
                let replies: Vec<Vec<redis::Value>> =
                    redis::FromRedisValue::from_redis_value(value).map_err(|error| {
                        StoreError::Protocol(format!("unexpected commit script reply: {error}"))
                    })?;
                if replies.len() == chunk.len() {
                    Ok(replies)
                } else {
                    Err(StoreError::Protocol(format!(
                        "{} commit outcomes for {} commits",
                        replies.len(),
                        chunk.len()
                    )))
                }
            });
            match replies {
                Ok(replies) => outcomes.extend(replies.into_iter().map(parse_reply)),
                Err(error) => outcomes.extend(chunk.iter().map(|_| Err(error.clone()))),
            }
        }
        Ok(outcomes)
    }

    /// The script call running `commits`: every commit's keys, then their count and each
    /// commit's key count, argument count and arguments, written in place into a command
    /// sized once.
    fn call(commits: &[&Commit]) -> redis::Cmd {
        let keys: usize = commits.iter().map(|commit| commit.keys.len()).sum();
        let args: usize = commits.iter().map(|commit| 2 + commit.arg_count()).sum();
        let bytes: usize = commits.iter().map(|commit| commit.byte_estimate()).sum();
        let mut invocation =
            crate::pipelined::script_call_sized(&COMMIT_SCRIPT, keys, keys + args + 1, bytes);
        for commit in commits {
            for key in &commit.keys {
                invocation.arg(key);
            }
        }
        invocation.arg(commits.len());
        for commit in commits {
            invocation.arg(commit.keys.len()).arg(commit.arg_count());
            commit.write_args(&mut invocation);
        }
        invocation
    }

    /// How many arguments [`Commit::write_args`] writes.
    fn arg_count(&self) -> usize {
        let notify = if self.notify.is_some() { 3 } else { 1 };
        6 + 1
            + 2 * self.checks.len()
            + 1
            + self
                .puts
                .iter()
                .map(|(_, _, fields)| 3 + 2 * fields.len())
                .sum::<usize>()
            + 1
            + 2 * self.tombstones.len()
            + 1
            + self.deletes.len()
            + 1
            + 3 * self.zset_adds.len()
            + 1
            + 2 * self.zset_removes.len()
            + 1
            + 2 * self.set_adds.len()
            + 1
            + 2 * self.set_removes.len()
            + 1
            + self
                .pushes
                .iter()
                .map(|(keys, _, _)| 3 + keys.len())
                .sum::<usize>()
            + 1
            + 2 * self.outbox.len()
            + notify
            + 1
            + 2 * self.increments.len()
    }

    /// About how many bytes the commit's keys and arguments take in a command.
    fn byte_estimate(&self) -> usize {
        let keys: usize = self.keys.iter().map(String::len).sum();
        let idempotency = self
            .idempotency
            .as_ref()
            .map_or(0, |(_, outcome, _)| outcome.len());
        let puts: usize = self
            .puts
            .iter()
            .flat_map(|(_, _, fields)| fields)
            .map(|(name, value)| name.len() + value.len())
            .sum();
        let pushes: usize = self.pushes.iter().map(|(_, value, _)| value.len()).sum();
        let outbox: usize = self.outbox.iter().map(|(_, event)| event.len()).sum();
        let members: usize = self
            .zset_adds
            .iter()
            .map(|(_, _, member)| member.len())
            .chain(self.zset_removes.iter().map(|(_, member)| member.len()))
            .chain(self.set_adds.iter().map(|(_, member)| member.len()))
            .chain(self.set_removes.iter().map(|(_, member)| member.len()))
            .sum();
        // every number is at most 20 digits
        keys + idempotency + puts + pushes + outbox + members + 20 * self.arg_count()
    }

    /// Writes the commit's arguments (the script's per-commit layout) into `invocation`.
    fn write_args(&self, invocation: &mut redis::Cmd) {
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
        for (index, revision, fields) in &self.puts {
            invocation.arg(*index).arg(*revision).arg(fields.len());
            for (name, value) in fields {
                invocation.arg(*name).arg(value.as_slice());
            }
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
        for (indexes, value, max_len) in &self.pushes {
            invocation.arg(indexes.len());
            for index in indexes {
                invocation.arg(*index);
            }
            invocation.arg(value.as_slice()).arg(*max_len);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit using every group, each more than once where it can.
    fn full_commit(tag: &str) -> Commit {
        let key = |name: &str| format!("ro:{{{tag}}}:{name}");
        let mut commit = Commit::new();
        commit
            .idempotent(&key("command:c"), b"outcome".to_vec(), 60)
            .fenced(&key("fence"), 3)
            .not_before(Timestamp::from_millis(1_000))
            .expect_revision(&key("flag:a"), 1)
            .expect_revision(&key("rollout:r"), 2)
            .put(&key("flag:a"), 2, b"flag".to_vec())
            .put(&key("rollout:r"), 3, b"rollout".to_vec())
            .put_fields(
                &key("rollout:s"),
                4,
                vec![("def", b"d".to_vec()), ("state", b"s".to_vec())],
            )
            .tombstone(&key("flag:b"), 9)
            .delete(&key("rollout:old"))
            .zadd(&key("due"), 5, "r")
            .zrem(&key("due"), "old")
            .sadd(&key("flags"), "a")
            .srem(&key("flags"), "b")
            .push(&key("audit:flag:a"), b"entry".to_vec(), 10)
            .push_each(
                &[&key("audit:flag:a"), &key("audit:rollout:r")],
                b"entry-2".to_vec(),
                10,
            )
            .outbox(&key("outbox"), b"event".to_vec())
            .outbox(&key("outbox"), b"event-2".to_vec())
            .notify(&key("notify"), &key("webhooks"), 100)
            .increment(&key("versions"), 1);
        commit
    }

    #[test]
    fn each_commit_of_a_call_announces_exactly_the_arguments_it_writes() {
        let full = full_commit("a");
        let empty = Commit::new();
        for commits in [vec![&full], vec![&empty], vec![&full, &empty, &full]] {
            let call = Commit::call(&commits);
            let args: Vec<Vec<u8>> = call
                .args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => bytes.to_vec(),
                    _ => panic!("a script call has plain arguments only"),
                })
                .collect();
            let keys: usize = commits.iter().map(|commit| commit.keys().len()).sum();
            assert_eq!(args[0], b"EVALSHA");
            assert_eq!(args[2], keys.to_string().into_bytes());
            // walk the script's layout: the commit count, then each commit's key count,
            // argument count and that many arguments, ending exactly at the end
            let mut position = 3 + keys;
            assert_eq!(args[position], commits.len().to_string().into_bytes());
            position += 1;
            for commit in &commits {
                assert_eq!(args[position], commit.keys().len().to_string().into_bytes());
                let announced: usize = String::from_utf8(args[position + 1].clone())
                    .expect("a number")
                    .parse()
                    .expect("a number");
                assert_eq!(announced, commit.arg_count());
                position += 2 + announced;
            }
            assert_eq!(
                position,
                args.len(),
                "the announced counts cover every argument"
            );
        }
    }
}
