//! The console's Prometheus counters (`GET /metrics`): requests by outcome, operator
//! actions by verb and outcome, sign-ins, open live streams and live events relayed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters shared by every request.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    actions: Mutex<BTreeMap<(String, &'static str), u64>>,
    sign_ins_ok: AtomicU64,
    sign_ins_refused: AtomicU64,
    live_streams: AtomicI64,
    live_events: AtomicU64,
}

impl Metrics {
    /// One API request of `route` answered with `status`.
    pub fn request(&self, route: &'static str, status: u16) {
        let mut requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *requests.entry((route, status)).or_default() += 1;
    }

    /// One operator action (`pause`, `create`, …) that `succeeded` or not.
    pub fn action(&self, verb: &str, succeeded: bool) {
        let outcome = if succeeded { "accepted" } else { "refused" };
        let mut actions = self
            .actions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *actions.entry((verb.to_owned(), outcome)).or_default() += 1;
    }

    /// One sign-in attempt.
    pub fn sign_in(&self, succeeded: bool) {
        if succeeded {
            self.sign_ins_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.sign_ins_refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A live stream opened (`+1`) or closed (`-1`).
    pub fn live_stream(&self, delta: i64) {
        self.live_streams.fetch_add(delta, Ordering::Relaxed);
    }

    /// One live event relayed to the pages.
    pub fn live_event(&self) {
        self.live_events.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        text.push_str("# HELP console_requests_total API requests answered, by route and status.\n# TYPE console_requests_total counter\n");
        for ((route, status), count) in self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                text,
                "console_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        text.push_str("# HELP console_actions_total Operator actions sent to the planner, by verb and outcome.\n# TYPE console_actions_total counter\n");
        for ((verb, outcome), count) in self
            .actions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                text,
                "console_actions_total{{verb=\"{verb}\",outcome=\"{outcome}\"}} {count}"
            );
        }
        let _ = writeln!(
            text,
            "# HELP console_sign_ins_total Sign-in attempts, by outcome.\n# TYPE console_sign_ins_total counter\nconsole_sign_ins_total{{outcome=\"accepted\"}} {}\nconsole_sign_ins_total{{outcome=\"refused\"}} {}",
            self.sign_ins_ok.load(Ordering::Relaxed),
            self.sign_ins_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            text,
            "# HELP console_live_streams Open live-update streams.\n# TYPE console_live_streams gauge\nconsole_live_streams {}",
            self.live_streams.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            text,
            "# HELP console_live_events_total Live events relayed to pages.\n# TYPE console_live_events_total counter\nconsole_live_events_total {}",
            self.live_events.load(Ordering::Relaxed)
        );
        text
    }
}
