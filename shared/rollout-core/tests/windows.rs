//! Time windows (SPEC §12): timer gates open only inside a rollout's windows, in the
//! windows' own time zone across daylight-saving changes; catch-up never crosses a closed
//! window; bad windows are refused naming the field.

mod common;

use common::*;
use proptest::prelude::*;
use rollout_core::machine::{step, Effect, EntryCause, RolloutState, WaitingFor};
use rollout_core::window::{open_at, WindowSpec};
use rollout_core::{DurationMs, Lifecycle, Plan, Timestamp, ValidationErrors};
use serde_json::json;

fn utc(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).expect("time")
}

fn window(days: &[&str], start: &str, end: &str, zone: &str) -> rollout_core::window::Window {
    let spec = WindowSpec {
        days: days.iter().map(|day| (*day).to_owned()).collect(),
        start: start.into(),
        end: end.into(),
        timezone: zone.into(),
    };
    let mut errors = ValidationErrors::default();
    spec.compile("w", &mut errors)
        .unwrap_or_else(|| panic!("window is valid: {errors}"))
}

/// Weekdays 09:00–16:00 in Berlin, with phases of `hours` each.
fn office_hours(hours: u32) -> Plan {
    let duration = format!("{hours}h");
    plan(json!({
        "phases": [{"percentage": 10, "duration": duration}, {"percentage": 50, "duration": duration}, {"percentage": 100}],
        "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "16:00", "timezone": "Europe/Berlin"}]
    }))
}

#[test]
fn a_timer_that_runs_out_at_night_opens_at_the_next_opening() {
    // now is Tuesday 2026-12-01 00:00Z, 01:00 in Berlin
    let plan = office_hours(1);
    let running = RolloutState::created(&plan, now()).state;
    // step 0's hour ends at 02:00 local; the window opens at 09:00 local (08:00Z)
    assert_eq!(running.due_at(&plan), Some(utc("2026-12-01T08:00:00Z")));
    let night = utc("2026-12-01T03:00:00Z");
    let held = step(&plan, &running, &tick(), night).expect("tick");
    assert!(!held.changed(), "no timer opens outside the window");
    assert_eq!(
        running.waiting_for_at(&plan, night),
        Some(WaitingFor::Window)
    );
    assert_eq!(
        running.waiting_for_at(&plan, at(minutes(30))),
        Some(WaitingFor::Timer)
    );
    let eta = running.eta(&plan, night).expect("eta");
    assert_eq!(eta.completes_at, Some(utc("2026-12-01T09:00:00Z")));

    let opened = step(&plan, &running, &tick(), utc("2026-12-01T08:00:00Z")).expect("tick");
    let Some(Effect::StepEntered {
        to,
        planned_at,
        cause,
        ..
    }) = opened.effects.first()
    else {
        panic!("{:?}", opened.effects);
    };
    assert_eq!(
        (*to, *planned_at, *cause),
        (1, utc("2026-12-01T08:00:00Z"), EntryCause::Timer)
    );
    // the next timer runs from the opening, not from when the first one ran out
    assert_eq!(
        opened.state.due_at(&plan),
        Some(utc("2026-12-01T09:00:00Z"))
    );
}

#[test]
fn catch_up_never_crosses_a_closed_window() {
    // 7 h phases: step 0 ends 07:00Z (08:00 local) → opens 08:00Z; step 1 ends 15:00Z,
    // 16:00 local, when the window closes → opens Wednesday 08:00Z
    let plan = office_hours(7);
    let running = RolloutState::created(&plan, now()).state;
    let starts = running.projected_starts(&plan, now());
    assert_eq!(
        starts,
        [
            Some(now()),
            Some(utc("2026-12-01T08:00:00Z")),
            Some(utc("2026-12-02T08:00:00Z"))
        ]
    );
    // the ticker was down until Wednesday noon: one jump, to where the windows say
    let caught_up = step(&plan, &running, &tick(), utc("2026-12-02T12:00:00Z")).expect("tick");
    assert_eq!(caught_up.state.lifecycle, Lifecycle::Completed);
    let Some(Effect::StepEntered {
        to,
        skipped,
        planned_at,
        ..
    }) = caught_up.effects.first()
    else {
        panic!("{:?}", caught_up.effects);
    };
    assert_eq!((*to, skipped.as_slice()), (2, &[1][..]));
    assert_eq!(*planned_at, utc("2026-12-02T08:00:00Z"));
    let skipped_record = &caught_up.state.history[1];
    assert_eq!(skipped_record.planned_at, utc("2026-12-01T08:00:00Z"));
    // a look on Tuesday evening holds at step 1
    let evening = step(&plan, &running, &tick(), utc("2026-12-01T20:00:00Z")).expect("tick");
    assert_eq!(evening.state.step, Some(1));
    assert_eq!(
        evening
            .state
            .waiting_for_at(&plan, utc("2026-12-01T20:00:00Z")),
        Some(WaitingFor::Window)
    );
}

#[test]
fn windows_keep_their_local_hours_across_daylight_saving_changes() {
    let monday = window(&["mon"], "09:00", "10:00", "Europe/Berlin");
    // winter: 09:00 CET is 08:00Z; summer (after 2027-03-28): 09:00 CEST is 07:00Z
    assert_eq!(
        monday.open_at(utc("2027-03-21T12:00:00Z")),
        utc("2027-03-22T08:00:00Z")
    );
    assert_eq!(
        monday.open_at(utc("2027-03-28T12:00:00Z")),
        utc("2027-03-29T07:00:00Z")
    );
    // 02:30 does not exist on 2027-03-28 in Berlin: the window opens after the gap, 03:00
    // local (01:00Z)
    let gap = window(&["sun"], "02:30", "04:00", "Europe/Berlin");
    assert_eq!(
        gap.open_at(utc("2027-03-27T23:00:00Z")),
        utc("2027-03-28T01:00:00Z")
    );
    // 02:30 happens twice on 2027-10-31: the first (CEST, 00:30Z) opens it
    let overlap = window(&["sun"], "02:30", "05:00", "Europe/Berlin");
    assert_eq!(
        overlap.open_at(utc("2027-10-30T22:00:00Z")),
        utc("2027-10-31T00:30:00Z")
    );
    // inside a window a time is its own opening; the end is exclusive
    assert_eq!(
        monday.open_at(utc("2027-03-22T08:30:00Z")),
        utc("2027-03-22T08:30:00Z")
    );
    assert_eq!(
        monday.open_at(utc("2027-03-22T09:00:00Z")),
        utc("2027-03-29T07:00:00Z")
    );
    // the earliest of several windows wins; no windows is always open
    let tokyo = window(&["mon"], "09:00", "10:00", "Asia/Tokyo");
    assert_eq!(
        open_at(&[monday, tokyo], utc("2027-03-21T12:00:00Z")),
        utc("2027-03-22T00:00:00Z")
    );
    assert_eq!(open_at(&[], now()), now());
}

#[test]
fn bad_windows_are_refused_naming_the_field() {
    let errors = compile_kind(json!({
        "phases": [{"percentage": 100}],
        "windows": [
            {"days": ["mon"], "start": "16:00", "end": "09:00", "timezone": "Europe/Berlin"},
            {"days": ["monday", "tue", "tue"], "start": "9:00", "end": "24:01", "timezone": "Mars/Olympus"},
            {"days": [], "start": "00:00", "end": "24:00", "timezone": "UTC"}
        ]
    }))
    .expect_err("invalid");
    let fields: Vec<&str> = errors.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "rollout.windows[0].end",
            "rollout.windows[1].days[0]",
            "rollout.windows[1].days[2]",
            "rollout.windows[1].start",
            "rollout.windows[1].end",
            "rollout.windows[1].timezone",
            "rollout.windows[2].days"
        ]
    );
    assert!(
        errors.errors[5].message.contains("unknown time zone"),
        "{errors}"
    );
    // a valid plan travels with its windows in their spec form
    let plan = office_hours(1);
    let value = serde_json::to_value(&plan).expect("serialises");
    assert_eq!(value["windows"][0]["start"], "09:00");
    assert_eq!(value["windows"][0]["timezone"], "Europe/Berlin");
    let back: Plan = serde_json::from_value(value).expect("deserialises");
    assert_eq!(back, plan);
}

const ZONES: [&str; 5] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];

proptest! {
    /// Whatever the windows and however late the ticks, every timer-caused step begins
    /// inside a window, and never before its timer ran out.
    #[test]
    fn windows_never_fire_outside(
        day_mask in 1u8..128,
        start in 0u32..23,
        length in 1u32..6,
        zone in 0usize..ZONES.len(),
        minutes_per_phase in 1i64..600,
        ticks in proptest::collection::vec(1i64..3_000, 1..30),
    ) {
        let days: Vec<&str> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .iter()
            .enumerate()
            .filter(|(index, _)| day_mask & (1 << index) != 0)
            .map(|(_, day)| *day)
            .collect();
        let end = (start + length).min(24);
        let spec = json!({
            "phases": [
                {"percentage": 10, "duration": format!("{minutes_per_phase}m")},
                {"percentage": 40, "duration": format!("{minutes_per_phase}m")},
                {"percentage": 70, "duration": format!("{minutes_per_phase}m")},
                {"percentage": 100}
            ],
            "windows": [{"days": days, "start": format!("{start:02}:00"),
                         "end": format!("{end:02}:00"), "timezone": ZONES[zone]}]
        });
        let plan = plan(spec);
        let window = plan.windows[0];
        let mut state = RolloutState::created(&plan, now()).state;
        let mut time = now();
        for minutes_later in ticks {
            time = time.plus(DurationMs::from_minutes(minutes_later));
            let outcome = step(&plan, &state, &tick(), time).expect("tick");
            for record in &outcome.state.history[state.history.len()..] {
                if record.index > 0 {
                    prop_assert!(window.contains(record.planned_at),
                        "step {} planned at {} outside the window", record.index, record.planned_at);
                    prop_assert!(record.planned_at <= time);
                }
            }
            state = outcome.state;
            if state.lifecycle.is_finished() {
                break;
            }
        }
    }
}
