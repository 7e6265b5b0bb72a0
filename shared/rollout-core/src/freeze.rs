//! Namespace freezes (SPEC §12): `namespace.freeze {reason, until?}` holds every timer and
//! automatic gate of a namespace's rollouts — timers, completion gates, queued start times —
//! until `namespace.unfreeze` or `until`. Commands still act, and guards still protect.
//!
//! A freeze is a closed period on the namespace's calendar: a timer that runs out while it
//! holds opens when it ends, and the next step's timer runs from there, so catch-up after a
//! freeze never jumps across the steps whose time passed while frozen. The past periods are
//! kept (the last [`MAX_PAST_FREEZES`]) so that a ticker that was down across a freeze still
//! sees it.

use serde::{Deserialize, Serialize};

use crate::machine::{Rejection, RejectionCode};
use crate::time::Timestamp;

/// Past freezes kept per namespace.
pub const MAX_PAST_FREEZES: usize = 32;
/// Longest freeze reason, in bytes.
pub const MAX_REASON_LEN: usize = 512;

/// One freeze: why, who, from when and until when (open-ended without `until`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// Why, as the operator wrote it.
    pub reason: String,
    /// When it began.
    pub since: Timestamp,
    /// When it ends by itself; for a past freeze, when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// Who froze the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Who lifted it, for a freeze lifted by `namespace.unfreeze`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_by: Option<String>,
}

impl Freeze {
    /// Whether it holds at `time`.
    pub fn holds_at(&self, time: Timestamp) -> bool {
        self.since <= time && self.until.is_none_or(|until| time < until)
    }
}

/// A namespace's freezes: the current one, if any, and the recent past.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freezes {
    /// The latest freeze (it may have ended by its `until`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Freeze>,
    /// Earlier freezes, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past: Vec<Freeze>,
}

impl Freezes {
    /// The freeze holding at `time`, if one does.
    pub fn active_at(&self, time: Timestamp) -> Option<&Freeze> {
        self.current
            .iter()
            .chain(&self.past)
            .find(|freeze| freeze.holds_at(time))
    }

    /// The earliest time at or after `time` when no freeze holds; `None` while an
    /// open-ended freeze holds from then on.
    pub fn open_at(&self, mut time: Timestamp) -> Option<Timestamp> {
        // each step moves to the end of a freeze holding at `time`, strictly later
        while let Some(freeze) = self.active_at(time) {
            time = freeze.until?;
        }
        Some(time)
    }

    /// Freezes the namespace at `now` (or changes the freeze in force: its reason and end).
    pub fn freeze(
        &mut self,
        reason: &str,
        until: Option<Timestamp>,
        by: Option<&str>,
        now: Timestamp,
    ) -> Result<&Freeze, Rejection> {
        let invalid = |field: &str, message: String| Rejection {
            code: RejectionCode::InvalidArgument,
            message,
            field: Some(field.to_owned()),
        };
        if reason.trim().is_empty() || reason.len() > MAX_REASON_LEN {
            return Err(invalid(
                "reason",
                format!("say why, in 1..={MAX_REASON_LEN} bytes"),
            ));
        }
        if let Some(until) = until {
            if until <= now {
                return Err(invalid(
                    "until",
                    format!("{until} is not in the future (now is {now})"),
                ));
            }
        }
        let since = match self.current.take() {
            // a change to the freeze in force keeps its start
            Some(current) if current.holds_at(now) => current.since,
            Some(ended) => {
                self.remember(ended);
                now
            }
            None => now,
        };
        Ok(self.current.insert(Freeze {
            reason: reason.to_owned(),
            since,
            until,
            by: by.map(str::to_owned),
            lifted_by: None,
        }))
    }

    /// Lifts the freeze in force at `now`; it is kept in the past as ending now.
    pub fn unfreeze(&mut self, by: Option<&str>, now: Timestamp) -> Result<Freeze, Rejection> {
        match self.current.take() {
            Some(mut current) if current.holds_at(now) => {
                current.until = Some(now);
                current.lifted_by = by.map(str::to_owned);
                self.remember(current.clone());
                Ok(current)
            }
            other => {
                self.current = other;
                Err(Rejection {
                    code: RejectionCode::FailedPrecondition,
                    message: "the namespace is not frozen".to_owned(),
                    field: None,
                })
            }
        }
    }

    fn remember(&mut self, freeze: Freeze) {
        self.past.insert(0, freeze);
        self.past.truncate(MAX_PAST_FREEZES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> Timestamp {
        Timestamp::from_millis(minutes * 60_000)
    }

    #[test]
    fn freezes_close_the_calendar_until_they_end() {
        let mut freezes = Freezes::default();
        freezes
            .freeze("release train", Some(at(30)), Some("ana"), at(10))
            .expect("frozen");
        assert_eq!(freezes.open_at(at(5)), Some(at(5)));
        assert_eq!(freezes.open_at(at(10)), Some(at(30)));
        assert_eq!(freezes.open_at(at(30)), Some(at(30)));
        // extended open-ended at 20: the start stays, the end goes
        freezes
            .freeze("incident", None, Some("bo"), at(20))
            .expect("changed");
        assert_eq!(freezes.current.as_ref().map(|f| f.since), Some(at(10)));
        assert_eq!(freezes.open_at(at(12)), None);
        let lifted = freezes.unfreeze(Some("cy"), at(50)).expect("lifted");
        assert_eq!((lifted.since, lifted.until), (at(10), Some(at(50))));
        assert_eq!(
            freezes.open_at(at(12)),
            Some(at(50)),
            "the past still holds"
        );
        assert!(freezes.active_at(at(60)).is_none());
        assert_eq!(
            freezes.unfreeze(None, at(60)).expect_err("not frozen").code,
            RejectionCode::FailedPrecondition
        );
    }

    #[test]
    fn bad_freezes_name_their_field() {
        let mut freezes = Freezes::default();
        let empty = freezes.freeze(" ", None, None, at(1)).expect_err("empty");
        assert_eq!(empty.field.as_deref(), Some("reason"));
        let past = freezes
            .freeze("x", Some(at(1)), None, at(1))
            .expect_err("past");
        assert_eq!(past.field.as_deref(), Some("until"));
        assert_eq!(freezes, Freezes::default(), "nothing changed");
    }
}
