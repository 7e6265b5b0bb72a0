//! What a simulation run did and saw, kept for the checks at its end: every command id with
//! the body it was sent with and every reply it got (over request-reply and on
//! `rollout.outcome.<ns>.<id>`), the rollouts created, the fleet agents' evidence (registered,
//! applied, failed), the outcome reports sent, and when Redis lost data.
//!
//! Replies are compared only within one *data epoch*: the epoch rises when Redis is about to
//! lose data and again once it is back, since a first outcome stored in Redis can only be
//! remembered while Redis keeps it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rollout_core::Timestamp;
use rollout_wire::CommandVerb;
use serde_json::Value;

use super::schedule::Transport;
use crate::support::cluster::wall_clock_now;

/// The data epoch: rises twice around each loss of Redis data (before and after).
#[derive(Clone, Debug, Default)]
pub struct DataEpoch(Arc<AtomicU64>);

impl DataEpoch {
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// One reply to one sending of a command.
#[derive(Clone, Debug)]
pub struct ReplyRecord {
    pub transport: Transport,
    /// The reply envelope: `{ok: true, result}` or `{ok: false, error: {code, message}}`.
    pub envelope: Value,
    /// The data epoch when the command was sent (for the stream: last published).
    pub sent_epoch: u64,
    pub reply_epoch: u64,
}

impl ReplyRecord {
    /// `ok`, or the error code.
    pub fn code(&self) -> String {
        if self.envelope["ok"] == Value::Bool(true) {
            "ok".to_owned()
        } else {
            self.envelope["error"]["code"]
                .as_str()
                .unwrap_or("malformed reply")
                .to_owned()
        }
    }

    /// A reply that is the command's outcome: not a transient failure (`unavailable`, or
    /// `internal`, which the planner does not remember either).
    pub fn is_outcome(&self) -> bool {
        !matches!(self.code().as_str(), "unavailable" | "internal")
    }

    /// Sent and answered in one data epoch, with no loss of Redis data in between.
    pub fn within_one_epoch(&self) -> bool {
        self.sent_epoch == self.reply_epoch
    }
}

/// One command id: what was sent and what came back.
#[derive(Clone, Debug)]
pub struct CommandRecord {
    pub verb: CommandVerb,
    pub flag: Option<String>,
    pub rollout_id: Option<String>,
    pub first_transport: Transport,
    /// The body, exactly as sent (retries send it again).
    pub body: Value,
    /// Stream sequences of every publish of it on the durable stream, in order.
    pub stream_sequences: Vec<u64>,
    /// The data epoch of its latest publish on the stream.
    pub stream_epoch: u64,
    /// Attempts over request-reply that got no reply in time.
    pub unanswered: u64,
    /// Replies, in the order they arrived.
    pub replies: Vec<ReplyRecord>,
}

impl CommandRecord {
    /// The first reply that is an outcome.
    pub fn first_outcome(&self) -> Option<&ReplyRecord> {
        self.replies.iter().find(|reply| reply.is_outcome())
    }
}

/// What a fleet call proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetEvidence {
    /// A register or heartbeat was acknowledged: the agent is registered.
    Registered,
    /// It reported `variation` of `rollout_id` applied.
    Applied {
        rollout_id: String,
        variation: String,
    },
    /// It reported `variation` of `rollout_id` failed.
    Failed {
        rollout_id: String,
        variation: String,
    },
}

/// A fleet call and when it was made.
#[derive(Clone, Debug)]
pub struct FleetRecord {
    pub agent: String,
    pub evidence: FleetEvidence,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// When its acknowledgement arrived (`None`: refused or unanswered).
    pub acked_at: Option<Timestamp>,
}

/// Outcome reports sent for one variation of one flag.
#[derive(Clone, Debug)]
pub struct OutcomeRecord {
    pub flag: String,
    pub variation: String,
    pub reports: u64,
    pub sent_at: Timestamp,
}

/// A rollout a create command made, on its flag.
#[derive(Clone, Debug)]
pub struct RolloutBirth {
    pub rollout_id: String,
    pub flag: String,
}

/// Everything the run recorded; shared by its tasks behind a mutex.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub commands: BTreeMap<String, CommandRecord>,
    pub rollouts: Vec<RolloutBirth>,
    pub fleet: Vec<FleetRecord>,
    pub outcomes: Vec<OutcomeRecord>,
    /// When Redis came back having lost (or gone back on) data.
    pub data_losses: Vec<Timestamp>,
    /// Operations other than commands, by kind and how they went.
    pub operations: BTreeMap<String, BTreeMap<String, u64>>,
    /// Operations not performed, by kind and why.
    pub skipped: BTreeMap<String, u64>,
    /// Outcomes published for command ids this run never sent.
    pub foreign_outcomes: u64,
}

/// The ledger, shared.
pub type SharedLedger = Arc<Mutex<Ledger>>;

impl Ledger {
    /// Starts the record of command `id`, unless it exists (a retry).
    pub fn begin(&mut self, id: &str, record: CommandRecord) {
        self.commands.entry(id.to_owned()).or_insert(record);
    }

    /// Records a reply of command `id`; a create that succeeded names its rollout.
    pub fn reply(&mut self, id: &str, reply: ReplyRecord) {
        let Some(command) = self.commands.get_mut(id) else {
            self.foreign_outcomes += 1;
            return;
        };
        if command.verb == CommandVerb::RolloutCreate && reply.code() == "ok" {
            let rollout_id = reply.envelope["result"]["rollout_id"]
                .as_str()
                .map(str::to_owned);
            if let (Some(rollout_id), Some(flag)) = (rollout_id, command.flag.clone()) {
                if !self
                    .rollouts
                    .iter()
                    .any(|birth| birth.rollout_id == rollout_id)
                {
                    self.rollouts.push(RolloutBirth { rollout_id, flag });
                }
            }
        }
        command.replies.push(reply);
    }

    /// The latest rollout created on `flag`.
    pub fn latest_rollout(&self, flag: &str) -> Option<String> {
        self.rollouts
            .iter()
            .rev()
            .find(|birth| birth.flag == flag)
            .map(|birth| birth.rollout_id.clone())
    }

    /// Counts one operation of `kind` that went `how`.
    pub fn operation(&mut self, kind: &str, how: &str) {
        *self
            .operations
            .entry(kind.to_owned())
            .or_default()
            .entry(how.to_owned())
            .or_default() += 1;
    }

    /// Counts an operation of `kind` not performed, and why.
    pub fn skip(&mut self, kind: &str, why: &str) {
        *self.skipped.entry(format!("{kind}: {why}")).or_default() += 1;
    }

    /// Records a fleet call made at `sent_at`, acknowledged now if `acked`.
    pub fn fleet(&mut self, agent: &str, evidence: FleetEvidence, sent_at: Timestamp, acked: bool) {
        self.fleet.push(FleetRecord {
            agent: agent.to_owned(),
            evidence,
            sent_at,
            acked_at: acked.then(wall_clock_now),
        });
    }

    /// The last time Redis came back without (some of) its data, before `at`.
    pub fn last_data_loss_before(&self, at: Timestamp) -> Option<Timestamp> {
        self.data_losses
            .iter()
            .copied()
            .filter(|loss| *loss <= at)
            .max()
    }

    /// How each kind of command went: by verb and first transport, the first outcome's code
    /// (or `unanswered`).
    pub fn command_census(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut census: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for command in self.commands.values() {
            let kind = format!("{} ({})", command.verb, command.first_transport.as_str());
            let how = command
                .first_outcome()
                .map_or_else(|| "unanswered".to_owned(), ReplyRecord::code);
            *census.entry(kind).or_default().entry(how).or_default() += 1;
        }
        census
    }
}
