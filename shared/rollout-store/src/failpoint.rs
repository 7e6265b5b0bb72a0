//! Fault injection for crash tests: `ROLLOUT_FAILPOINTS=write.after_commit` makes the
//! process abort right after a successful commit of [`crate::Writer`], before it publishes
//! events, replies or acknowledges — the window SPEC §11 says must lose nothing and double
//! nothing; `webhook.before_save` aborts a planner after a webhook answered a notice and
//! before its delivery is recorded (the notice must then be delivered again, under the same
//! key). Read once at start; unset in production, where a check costs one load of a static.

use std::sync::LazyLock;

static ACTIVE: LazyLock<Vec<String>> = LazyLock::new(|| {
    std::env::var("ROLLOUT_FAILPOINTS")
        .map(|names| {
            names
                .split(',')
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .collect()
        })
        .unwrap_or_default()
});

/// Aborts the process when the failpoint `name` is active.
pub(crate) fn hit(name: &str) {
    if ACTIVE.iter().any(|active| active == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
