//! `rolloutctl rollout watch`: follows a rollout's change events live, printing each one
//! above a progress bar of the share served (or the stages released), until the rollout
//! completes, stops, is rolled back or deleted.
//!
//! The event subscription is made before the starting status is read, so nothing that
//! happens in between is missed.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rollout_core::{Eta, Lifecycle, Share, Timestamp, ViewAudience, WaitingFor};
use rollout_sdk::{ChangeEvent, EventSubscription};
use rollout_wire::{EventKind, RolloutListQuery, RolloutStatus};

use crate::failure::{Context, Failure};
use crate::render::{event_line, span, wire_name};
use crate::run::Session;

/// Where the followed rollout stands.
#[derive(Debug)]
struct Progress {
    rollout_id: String,
    staged: bool,
    steps: usize,
    state: Lifecycle,
    waiting_for: Option<WaitingFor>,
    step: Option<usize>,
    share: Share,
    /// Each step's share (none for stages), for events that carry a step but no share.
    step_shares: Vec<Option<Share>>,
    /// When the clock next moves it: milliseconds ahead of the planner's time when the
    /// status was read, and when that was here.
    next: Option<(Instant, i64)>,
    /// How late the due transition was when read, once overdue.
    overdue_ms: Option<u64>,
    /// When it completes as it stands: milliseconds ahead of the planner's time when read
    /// (status or event), and when that was here.
    completes: Option<(Instant, i64)>,
    /// Otherwise the first wait no clock ends.
    blocked: Option<Blocked>,
}

/// The first wait no clock ends: the step (none: the start) and what it waits for.
type Blocked = (Option<usize>, WaitingFor);

/// The ETA of a status or event read at the planner's time `at`, as [`Progress`] keeps it.
fn eta_parts(
    eta: Option<&Eta>,
    at: Option<Timestamp>,
) -> (Option<(Instant, i64)>, Option<Blocked>) {
    let Some(eta) = eta else {
        return (None, None);
    };
    let completes = eta
        .completes_at
        .zip(at)
        .map(|(completes_at, at)| (Instant::now(), completes_at.millis_since(at)));
    let blocked = eta.blocked_by.map(|by| (eta.blocked_at_step, by));
    (completes, blocked)
}

impl Progress {
    fn from_status(status: &RolloutStatus) -> Progress {
        let (completes, blocked) = eta_parts(status.eta.as_ref(), status.at);
        Progress {
            rollout_id: status.rollout_id.clone(),
            staged: status.steps.iter().any(|step| step.name.is_some()),
            steps: status.steps.len(),
            state: status.state,
            waiting_for: status.waiting_for,
            step: status.current_step,
            share: status.share.unwrap_or(Share::NONE),
            step_shares: status.steps.iter().map(|step| step.percentage).collect(),
            next: status
                .due_at
                .zip(status.at)
                .map(|(due_at, at)| (Instant::now(), due_at.millis_since(at))),
            overdue_ms: status.overdue_ms,
            completes,
            blocked,
        }
    }

    /// Applies an event of this rollout.
    fn apply(&mut self, event: &ChangeEvent) {
        if let Some(to) = event.to_step {
            self.step = Some(to);
        }
        if event.state.is_some() {
            // a rollout's event says where it is headed after the change (nothing once
            // paused or finished)
            (self.completes, self.blocked) = eta_parts(event.eta.as_ref(), Some(event.time));
        }
        let snapshot_share = event
            .snapshot
            .as_ref()
            .and_then(|snapshot| snapshot.rollout.as_ref())
            .filter(|view| view.rollout_id == self.rollout_id)
            .and_then(|view| match &view.audience {
                ViewAudience::Share(share) => Some(*share),
                ViewAudience::Stages { .. } => None,
            });
        let step_share = event
            .to_step
            .and_then(|to| self.step_shares.get(to).copied().flatten());
        if let Some(share) = event.share.or(snapshot_share).or(step_share) {
            self.share = share;
        }
        let implied = match event.kind {
            EventKind::RolloutPaused => Some(Lifecycle::Paused),
            EventKind::RolloutResumed | EventKind::RolloutStarted => Some(Lifecycle::Running),
            EventKind::RolloutCompleted => Some(Lifecycle::Completed),
            EventKind::RolloutStopped => Some(Lifecycle::Stopped),
            EventKind::RolloutRolledBack => Some(Lifecycle::RolledBack),
            _ => None,
        };
        if let Some(state) = event.state.or(implied) {
            self.state = state;
        }
        if self.state != Lifecycle::Running {
            self.waiting_for = None;
        } else if event.kind == EventKind::RolloutStep {
            // the next status read would tell; the event does not carry it
            self.waiting_for = None;
        }
        if self.state == Lifecycle::RolledBack {
            self.share = Share::NONE;
        }
    }

    /// Takes what a status read adds (what is waited for, the next step's time) when it
    /// stands where the events so far put the rollout; a status already moved on by later
    /// events is left for those events to show, so a line never pairs an event with a later
    /// state.
    fn refresh(&mut self, read: Progress) {
        if read.step == self.step && read.state == self.state {
            *self = read;
        }
    }

    fn finished(&self) -> bool {
        self.state.is_finished()
    }

    /// Bar length and position: parts per million of the share, or stages released.
    fn bar(&self) -> (u64, u64) {
        if self.staged {
            let released = match (self.state, self.step) {
                (Lifecycle::Completed, _) => self.steps,
                (Lifecycle::RolledBack, _) | (Lifecycle::Queued, _) | (_, None) => 0,
                (_, Some(step)) => step + 1,
            };
            (self.steps as u64, released as u64)
        } else {
            (1_000_000, u64::from(self.share.ppm()))
        }
    }

    fn message(&self) -> String {
        let (length, position) = self.bar();
        let audience = if self.staged {
            format!("{position}/{length} stages released")
        } else {
            format!("{} served", self.share)
        };
        let step = match self.step {
            Some(step) => format!("step {} of {}", step + 1, self.steps),
            None => "not started".to_owned(),
        };
        let waiting = self
            .waiting_for
            .as_ref()
            .map_or_else(String::new, |waiting| {
                format!(", waiting for {}", wire_name(waiting))
            });
        let next = match (self.overdue_ms, self.next) {
            (Some(late), _) => format!(
                " · overdue by {}: is a ticker running?",
                span(late.saturating_add(elapsed_ms(self.next)))
            ),
            (None, Some((read, ahead))) => {
                let left = ahead - i64::try_from(read.elapsed().as_millis()).unwrap_or(i64::MAX);
                if left > 0 {
                    format!(" · next step in {}", span(u64::try_from(left).unwrap_or(0)))
                } else {
                    " · next step due now".to_owned()
                }
            }
            (None, None) => String::new(),
        };
        let eta = match (self.completes, self.blocked) {
            (Some((read, ahead)), _) => {
                let left = ahead - i64::try_from(read.elapsed().as_millis()).unwrap_or(i64::MAX);
                format!(
                    " · done in {}",
                    span(u64::try_from(left.max(0)).unwrap_or(0))
                )
            }
            (None, Some((Some(index), by))) => format!(
                " · ETA unknown: step {} waits for {}",
                index + 1,
                wire_name(&by)
            ),
            (None, Some((None, by))) => format!(" · ETA unknown: waits for {}", wire_name(&by)),
            (None, None) => String::new(),
        };
        format!(
            "{audience} · {step} · {}{waiting}{next}{eta}",
            self.state.as_str()
        )
    }
}

/// Follows `rollout_id`, or the active (else the next) rollout of `flag`.
pub async fn watch(
    session: &Session,
    rollout_id: Option<String>,
    flag: Option<String>,
) -> Result<(), Failure> {
    let context = Context {
        rollout_id: rollout_id.clone(),
        flag: flag.clone(),
        ..Context::default()
    };
    let client = session.commands();
    let sdk = |error| Failure::sdk(error, &context);
    let flag = match (&rollout_id, flag) {
        (Some(rollout_id), _) => client.rollout_status(rollout_id).await.map_err(sdk)?.flag,
        (None, Some(flag)) => flag,
        (None, None) => return Err(Failure::Usage("give a rollout id or --flag".to_owned())),
    };
    let mut events = EventSubscription::subscribe(
        session.nats(),
        client.subjects(),
        client.namespace(),
        Some(&flag),
    )
    .await
    .map_err(sdk)?;
    let followed = match &rollout_id {
        Some(rollout_id) => Some(rollout_id.clone()),
        None => client
            .list_rollouts(RolloutListQuery {
                lifecycle: None,
                flag: Some(flag.clone()),
                ..RolloutListQuery::default()
            })
            .await
            .map_err(sdk)?
            .rollouts
            .first()
            .map(|summary| summary.rollout_id.clone()),
    };
    let mut progress = None;
    if let Some(rollout_id) = followed {
        let status = client.rollout_status(&rollout_id).await.map_err(sdk)?;
        if status.state.is_finished() && session.json() {
            // nothing more will happen: the one thing to print is where it ended
            println!(
                "{}",
                serde_json::to_string(&status)
                    .map_err(|error| Failure::Usage(error.to_string()))?
            );
            return Ok(());
        }
        progress = Some(Progress::from_status(&status));
    }

    let bar = if session.json() {
        ProgressBar::hidden()
    } else {
        new_bar()
    };
    let say = |line: String| bar.suspend(|| println!("{line}"));
    match &progress {
        Some(progress) if progress.finished() => {
            if !session.json() {
                println!(
                    "rollout {} already finished: {}",
                    progress.rollout_id,
                    progress.message()
                );
            }
            return Ok(());
        }
        Some(progress) => {
            if !session.json() {
                say(format!(
                    "watching rollout {} of flag {flag}",
                    progress.rollout_id
                ));
            }
            show(&bar, progress);
        }
        None => {
            if !session.json() {
                say(format!(
                    "flag {flag} has no active rollout; waiting for one to be created"
                ));
            }
        }
    }

    // the countdown to the next step moves every second between events
    let mut countdown = tokio::time::interval(Duration::from_secs(1));
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = countdown.tick() => {
                if let Some(current) = &progress {
                    show(&bar, current);
                }
                continue;
            }
            _ = tokio::signal::ctrl_c() => {
                bar.abandon();
                return Ok(());
            }
        };
        let Some(event) = event else {
            bar.abandon();
            return Err(Failure::sdk(
                rollout_sdk::Error::transport("the event subscription ended"),
                &context,
            ));
        };
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                say(format!("warning: {error}"));
                continue;
            }
        };
        if progress.is_none() && event.kind == EventKind::RolloutCreated {
            if let Some(created) = &event.rollout_id {
                let status = client.rollout_status(created).await.map_err(sdk)?;
                progress = Some(Progress::from_status(&status));
            }
        }
        let ours = match (&progress, &event.rollout_id) {
            (Some(progress), Some(rollout_id)) => *rollout_id == progress.rollout_id,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if !ours {
            continue;
        }
        if session.json() {
            match serde_json::to_string(&event) {
                Ok(line) => println!("{line}"),
                Err(error) => say(format!("warning: cannot show the event: {error}")),
            }
        } else {
            say(event_line(&event));
        }
        let Some(current) = progress.as_mut() else {
            continue;
        };
        if event.rollout_id.is_none() {
            continue;
        }
        current.apply(&event);
        // events need not carry what is waited for or when the next step comes: read them
        // back, but never let a status that is already past this event speak for it
        if event.kind != EventKind::RolloutDeleted {
            if let Ok(status) = client.rollout_status(&current.rollout_id).await {
                current.refresh(Progress::from_status(&status));
            }
        }
        show(&bar, current);
        if current.finished() || event.kind == EventKind::RolloutDeleted {
            let message = current.message();
            bar.finish_with_message(message.clone());
            if bar.is_hidden() && !session.json() {
                println!("{message}");
            }
            return Ok(());
        }
    }
}

/// Milliseconds since the status was read.
fn elapsed_ms(next: Option<(Instant, i64)>) -> u64 {
    next.map_or(0, |(read, _)| {
        u64::try_from(read.elapsed().as_millis()).unwrap_or(u64::MAX)
    })
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::new(1_000_000);
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:40}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show(bar: &ProgressBar, progress: &Progress) {
    let (length, position) = progress.bar();
    bar.set_length(length);
    bar.set_position(position);
    bar.set_message(progress.message());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::Timestamp;

    fn progress(staged: bool) -> Progress {
        Progress {
            rollout_id: "r-1".into(),
            staged,
            steps: 3,
            state: Lifecycle::Running,
            waiting_for: Some(WaitingFor::Timer),
            step: Some(0),
            share: Share::from_ppm(50_000),
            step_shares: if staged {
                vec![None; 3]
            } else {
                vec![
                    Some(Share::from_ppm(50_000)),
                    Some(Share::from_ppm(500_000)),
                    Some(Share::ALL),
                ]
            },
            next: None,
            overdue_ms: None,
            completes: None,
            blocked: None,
        }
    }

    fn event(kind: EventKind) -> ChangeEvent {
        let mut event = ChangeEvent::new("default", "f", 3, kind, Timestamp::from_millis(0));
        event.rollout_id = Some("r-1".into());
        event
    }

    #[test]
    fn a_status_ahead_of_the_event_shown_does_not_replace_it() {
        let mut shown = progress(false);
        shown.apply(&{
            let mut event = event(EventKind::RolloutStep);
            event.to_step = Some(1);
            event
        });
        let mut ahead = progress(false);
        ahead.step = Some(2);
        ahead.state = Lifecycle::Completed;
        shown.refresh(ahead);
        assert_eq!((shown.step, shown.state), (Some(1), Lifecycle::Running));
        let mut same = progress(false);
        same.step = Some(1);
        same.waiting_for = Some(WaitingFor::Timer);
        shown.refresh(same);
        assert_eq!(shown.waiting_for, Some(WaitingFor::Timer));
    }

    #[test]
    fn the_message_counts_down_to_the_next_step_or_says_it_is_late() {
        let mut waiting = progress(false);
        waiting.next = Some((Instant::now(), 250_000));
        let message = waiting.message();
        assert!(message.contains("next step in 4m"), "{message}");
        waiting.overdue_ms = Some(42_000);
        let message = waiting.message();
        assert!(
            message.contains("overdue by 42s: is a ticker running?"),
            "{message}"
        );
    }

    #[test]
    fn the_message_says_when_it_is_done_or_what_stands_in_the_way_as_events_tell() {
        let mut watched = progress(false);
        let now = Timestamp::parse_rfc3339("2026-12-01T09:00:00Z").expect("time");
        let mut step = event(EventKind::RolloutStep);
        step.state = Some(Lifecycle::Running);
        step.time = now;
        step.eta = Some(Eta {
            completes_at: Some(now.plus(rollout_core::DurationMs::from_millis(3_600_000))),
            blocked_at_step: None,
            blocked_by: None,
            blocked_from: None,
        });
        watched.apply(&step);
        let message = watched.message();
        assert!(
            message.contains("done in 1h") || message.contains("done in 59m"),
            "{message}"
        );
        step.eta = Some(Eta {
            completes_at: None,
            blocked_at_step: Some(2),
            blocked_by: Some(WaitingFor::Continue),
            blocked_from: Some(now),
        });
        watched.apply(&step);
        let message = watched.message();
        assert!(
            message.contains("ETA unknown: step 3 waits for continue"),
            "{message}"
        );
        let mut paused = event(EventKind::RolloutPaused);
        paused.state = Some(Lifecycle::Paused);
        watched.apply(&paused);
        assert!(!watched.message().contains("ETA"), "{}", watched.message());
    }

    #[test]
    fn step_events_move_the_bar_and_end_states_finish_it() {
        let mut shares = progress(false);
        assert_eq!(shares.bar(), (1_000_000, 50_000));
        let mut step = event(EventKind::RolloutStep);
        step.from_step = Some(0);
        step.to_step = Some(1);
        shares.apply(&step);
        assert_eq!(shares.bar(), (1_000_000, 500_000));
        step.to_step = Some(2);
        step.share = Some(Share::from_ppm(600_000));
        shares.apply(&step);
        assert_eq!(shares.bar(), (1_000_000, 600_000));
        step.to_step = Some(1);
        step.share = None;
        shares.apply(&step);
        assert!(
            shares.message().starts_with("50% served · step 2 of 3"),
            "{}",
            shares.message()
        );
        shares.apply(&event(EventKind::RolloutRolledBack));
        assert!(shares.finished());
        assert_eq!(shares.bar().1, 0);

        let mut stages = progress(true);
        assert_eq!(stages.bar(), (3, 1));
        let mut released = event(EventKind::RolloutStep);
        released.to_step = Some(1);
        stages.apply(&released);
        assert_eq!(stages.bar(), (3, 2));
        stages.apply(&event(EventKind::RolloutCompleted));
        assert_eq!(stages.bar(), (3, 3));
        assert!(stages.finished());
    }
}
