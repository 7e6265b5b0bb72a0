//! Time windows (SPEC §12): `windows: [{days: ["mon", …], start: "09:00", end: "16:00",
//! timezone: "Europe/Berlin"}]` on a rollout spec. A rollout's timer gates open only inside
//! one of its windows: a timer that runs out while every window is closed opens at the next
//! opening, and the next step's timer runs from there, so catch-up never crosses a closed
//! window.
//!
//! Days and times are the zone's local calendar (the `chrono-tz` database), so a window keeps
//! its local hours across daylight-saving changes. A local time that does not exist on a
//! spring-forward day means the first instant after the gap; one that exists twice on a
//! fall-back day means its first occurrence.

use std::str::FromStr;

use chrono::{Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::error::ValidationErrors;
use crate::time::Timestamp;

/// Most windows one rollout may have.
pub const MAX_WINDOWS: usize = 16;

/// The days of the week as specs write them, Monday first.
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A window as written in a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Days it opens on: `mon` … `sun`.
    pub days: Vec<String>,
    /// Local opening time, `HH:MM`.
    pub start: String,
    /// Local closing time, `HH:MM` (up to `24:00`), after `start`.
    pub end: String,
    /// IANA time zone (`Europe/Berlin`, `UTC`).
    pub timezone: String,
}

/// A checked window. It travels (in plans and statuses) in its spec form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WindowSpec", try_from = "WindowSpec")]
pub struct Window {
    /// Open on these days, Monday first.
    days: [bool; 7],
    /// Opening, minutes after local midnight.
    start_minute: u32,
    /// Closing, minutes after local midnight (up to 1440).
    end_minute: u32,
    /// The zone whose calendar it follows.
    zone: Tz,
}

impl WindowSpec {
    /// Checks this window, reporting each problem under `path`.
    pub fn compile(&self, path: &str, errors: &mut ValidationErrors) -> Option<Window> {
        let problems_before = errors.errors.len();
        let mut days = [false; 7];
        if self.days.is_empty() {
            errors.push(format!("{path}.days"), "give at least one day");
        }
        for (index, day) in self.days.iter().enumerate() {
            match DAY_NAMES.iter().position(|name| name == day) {
                Some(_) if self.days[..index].contains(day) => errors.push(
                    format!("{path}.days[{index}]"),
                    format!("{day:?} is listed twice"),
                ),
                Some(position) => days[position] = true,
                None => errors.push(
                    format!("{path}.days[{index}]"),
                    format!("unknown day {day:?}; use mon, tue, wed, thu, fri, sat or sun"),
                ),
            }
        }
        let start = local_minute(&self.start, &format!("{path}.start"), errors);
        let end = local_minute(&self.end, &format!("{path}.end"), errors);
        if let (Some(start), Some(end)) = (start, end) {
            if end <= start {
                errors.push(
                    format!("{path}.end"),
                    format!(
                        "{} is not after the start {}; a window closes later on the day it opens",
                        self.end, self.start
                    ),
                );
            }
        }
        let zone = match Tz::from_str(&self.timezone) {
            Ok(zone) => Some(zone),
            Err(_) => {
                errors.push(
                    format!("{path}.timezone"),
                    format!(
                        "unknown time zone {:?}; use an IANA name such as Europe/Berlin or UTC",
                        self.timezone
                    ),
                );
                None
            }
        };
        if errors.errors.len() > problems_before {
            return None;
        }
        Some(Window {
            days,
            start_minute: start?,
            end_minute: end?,
            zone: zone?,
        })
    }
}

/// `HH:MM` → minutes after midnight, `24:00` included.
fn local_minute(text: &str, field: &str, errors: &mut ValidationErrors) -> Option<u32> {
    let parsed = text.split_once(':').and_then(|(hours, minutes)| {
        let two_digits = |part: &str| part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit());
        if !two_digits(hours) || !two_digits(minutes) {
            return None;
        }
        let (hours, minutes) = (hours.parse::<u32>().ok()?, minutes.parse::<u32>().ok()?);
        (minutes < 60 && (hours < 24 || (hours == 24 && minutes == 0)))
            .then_some(hours * 60 + minutes)
    });
    if parsed.is_none() {
        errors.push(
            field,
            format!("{text:?} is not a local time HH:MM (00:00 to 24:00)"),
        );
    }
    parsed
}

impl TryFrom<WindowSpec> for Window {
    type Error = String;

    fn try_from(spec: WindowSpec) -> Result<Window, String> {
        let mut errors = ValidationErrors::default();
        spec.compile("window", &mut errors)
            .ok_or_else(|| errors.to_string())
    }
}

impl From<Window> for WindowSpec {
    fn from(window: Window) -> WindowSpec {
        let clock = |minute: u32| format!("{:02}:{:02}", minute / 60, minute % 60);
        WindowSpec {
            days: DAY_NAMES
                .iter()
                .zip(window.days)
                .filter(|(_, open)| *open)
                .map(|(name, _)| (*name).to_owned())
                .collect(),
            start: clock(window.start_minute),
            end: clock(window.end_minute),
            timezone: window.zone.name().to_owned(),
        }
    }
}

impl Window {
    /// The earliest instant at or after `time` inside this window.
    pub fn open_at(&self, time: Timestamp) -> Timestamp {
        let Some(utc) = Utc.timestamp_millis_opt(time.as_millis()).single() else {
            return time;
        };
        let today = utc.with_timezone(&self.zone).date_naive();
        // a window lies within its local day, so the next 8 local days hold its next opening
        for offset in 0..=7 {
            let Some(date) = today.checked_add_signed(Duration::days(offset)) else {
                break;
            };
            if !self.days[date.weekday().num_days_from_monday() as usize] {
                continue;
            }
            let (Some(opens), Some(closes)) = (
                self.instant(date, self.start_minute),
                self.instant(date, self.end_minute),
            ) else {
                continue;
            };
            if time < closes {
                return time.max(opens);
            }
        }
        time
    }

    /// Whether `time` is inside this window.
    pub fn contains(&self, time: Timestamp) -> bool {
        self.open_at(time) == time
    }

    /// The instant of local `minute` on local `date`: the first instant after a
    /// spring-forward gap, the first of two on a fall-back overlap.
    fn instant(&self, date: NaiveDate, minute: u32) -> Option<Timestamp> {
        let local: NaiveDateTime =
            date.and_hms_opt(0, 0, 0)? + Duration::minutes(i64::from(minute));
        // gaps are at most a few hours; step through one minute at a time
        (0..=240).find_map(|shift| {
            match self
                .zone
                .from_local_datetime(&(local + Duration::minutes(shift)))
            {
                LocalResult::Single(instant) | LocalResult::Ambiguous(instant, _) => {
                    Some(Timestamp::from_millis(instant.timestamp_millis()))
                }
                LocalResult::None => None,
            }
        })
    }
}

/// The earliest instant at or after `time` inside any of `windows` (`time` itself when
/// there are none: a rollout without windows is always open).
pub fn open_at(windows: &[Window], time: Timestamp) -> Timestamp {
    windows
        .iter()
        .map(|window| window.open_at(time))
        .min()
        .unwrap_or(time)
}

/// Checks a spec's windows; every problem under `rollout.windows[i]`.
pub fn compile_windows(specs: &[WindowSpec], errors: &mut ValidationErrors) -> Vec<Window> {
    if specs.len() > MAX_WINDOWS {
        errors.push(
            "rollout.windows",
            format!("at most {MAX_WINDOWS} windows, not {}", specs.len()),
        );
    }
    specs
        .iter()
        .enumerate()
        .filter_map(|(index, spec)| spec.compile(&format!("rollout.windows[{index}]"), errors))
        .collect()
}
