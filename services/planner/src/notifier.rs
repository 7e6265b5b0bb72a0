//! Webhook delivery (SPEC §12 "Notifications"): the planners tell each namespace's webhooks
//! of every notice its commits appended to `ro:{ns}:notify`.
//!
//! Every `planner.notify_interval`, each planner looks at every namespace with webhooks and
//! delivers it if it holds (or can take) the namespace's delivery lease, so one planner at a
//! time delivers a namespace and each webhook hears its notices in order. For each webhook
//! whose next attempt is due, it reads the notices after the webhook's cursor and POSTs each
//! one ([`post`]): a JSON [`Notification`] signed with HMAC-SHA256 under the webhook's secret,
//! with an idempotency key (`<namespace>:<stream id>`) that every attempt of that notice
//! repeats. A 2xx answer moves the cursor on. Anything else is a failed attempt: the
//! notice stays at the head of that webhook's queue and is tried again after an
//! exponential backoff ([`DeliveryPolicy::backoff`]); after `webhook_attempts` failures it is
//! given up, counted, and the queue moves on. The state is saved after every notice, so a
//! planner that dies mid-delivery leaves at most the notice in flight to be sent again —
//! at least once, never lost; receivers drop repeats by the idempotency key.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rollout_core::Timestamp;
use rollout_runtime::shutdown::Shutdown;
use rollout_store::webhooks::{self, DeliveryState, PendingNotice, Webhook};
use rollout_store::{Connection, Keys, StoreError};
use rollout_wire::subjects::Namespace;
use rollout_wire::webhooks::{
    signature, Notification, ATTEMPT_HEADER, EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};

use crate::metrics::PlannerMetrics;

/// Notices one webhook is sent per round at most (the rest wait for the next round).
const BATCH: usize = 64;
/// Longest error text kept in a webhook's delivery state.
const MAX_ERROR_LEN: usize = 300;

/// How deliveries are attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// How long one POST may take.
    pub timeout: Duration,
    /// Attempts of one notice before it is given up.
    pub attempts: u32,
    /// The wait after the first failed attempt; each further failure doubles it.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
}

impl DeliveryPolicy {
    /// The wait after the `failures`-th failed attempt of a notice (1: the first):
    /// `backoff · 2^(failures-1)`, at most `backoff_max`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.backoff
            .saturating_mul(1_u32 << doublings)
            .min(self.backoff_max)
    }

    /// The state after notice `id` was delivered at `now`.
    pub fn delivered(&self, mut state: DeliveryState, id: &str, now: Timestamp) -> DeliveryState {
        state.cursor = id.to_owned();
        let delivery = &mut state.delivery;
        delivery.delivered += 1;
        delivery.attempts = 0;
        delivery.failing_since = None;
        delivery.last_error = None;
        delivery.next_attempt_at = None;
        delivery.last_delivered_at = Some(now);
        state
    }

    /// The state after an attempt of notice `id` failed at `now` with `error`: retried after
    /// the backoff, or given up (the cursor passes it) after the last attempt. Either way
    /// the webhook counts as failing until its next success.
    pub fn failed(
        &self,
        mut state: DeliveryState,
        id: &str,
        key: &str,
        error: &str,
        now: Timestamp,
    ) -> DeliveryState {
        let delivery = &mut state.delivery;
        delivery.attempts += 1;
        delivery.failing_since.get_or_insert(now);
        delivery.last_error = Some(truncate(error));
        if delivery.attempts >= self.attempts {
            delivery.given_up += 1;
            delivery.last_given_up = Some(key.to_owned());
            delivery.attempts = 0;
            delivery.next_attempt_at = None;
            state.cursor = id.to_owned();
        } else {
            let wait = self.backoff(delivery.attempts);
            delivery.next_attempt_at = Some(Timestamp::from_millis(
                now.as_millis()
                    .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
            ));
        }
        state
    }
}

fn truncate(error: &str) -> String {
    if error.len() <= MAX_ERROR_LEN {
        return error.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

/// Delivers the namespaces' notifications; cheap to clone.
#[derive(Clone, Debug)]
pub struct Notifier {
    redis: Connection,
    /// This planner's name on the delivery leases.
    owner: String,
    policy: DeliveryPolicy,
    /// How long a delivery lease lasts without renewal.
    lease: Duration,
    metrics: Arc<PlannerMetrics>,
}

impl Notifier {
    /// A notifier delivering through `redis` under `policy`, renewing its leases every
    /// round (`interval`).
    pub fn new(
        redis: Connection,
        policy: DeliveryPolicy,
        interval: Duration,
        metrics: Arc<PlannerMetrics>,
    ) -> Notifier {
        Notifier {
            redis,
            owner: format!("planner-{}", rollout_wire::cluster::process_replica()),
            policy,
            // a round may spend one timeout per webhook in flight: the lease outlives it
            lease: (interval + policy.timeout).saturating_mul(3),
            metrics,
        }
    }

    /// Runs delivery rounds every `interval` until shutdown.
    pub async fn run(self, interval: Duration, shutdown: Shutdown) {
        shutdown
            .every(interval, || async {
                if let Err(error) = self.round().await {
                    tracing::warn!(%error, "webhook delivery round failed");
                }
            })
            .await;
    }

    /// One round: every namespace with webhooks whose lease this planner holds.
    pub async fn round(&self) -> Result<(), StoreError> {
        let mut connection = self.redis.clone();
        let namespaces = rollout_store::namespaces::registered(&mut connection).await?;
        for namespace in namespaces {
            let keys = Keys::new(&namespace);
            let hooks = webhooks::load(&mut connection, &keys).await?;
            if hooks.is_empty() {
                continue;
            }
            if !webhooks::take_lease(&mut connection, &keys, &self.owner, self.lease).await? {
                continue;
            }
            self.deliver_namespace(&namespace, &keys, hooks).await?;
        }
        Ok(())
    }

    async fn deliver_namespace(
        &self,
        namespace: &Namespace,
        keys: &Keys,
        hooks: Vec<Webhook>,
    ) -> Result<(), StoreError> {
        let mut connection = self.redis.clone();
        let now = rollout_store::redis_time(&mut connection).await?;
        let before: Vec<String> = hooks.iter().map(|hook| hook.state.cursor.clone()).collect();
        let results = join_all(
            hooks
                .into_iter()
                .map(|hook| self.deliver_webhook(namespace, keys, hook, now)),
        )
        .await;
        let mut cursors = Vec::with_capacity(results.len());
        for result in results {
            cursors.push(result?);
        }
        // what every webhook has is dropped, once a cursor moved
        if cursors != before {
            let oldest = cursors
                .iter()
                .reduce(|oldest, cursor| {
                    if stream_id_before(cursor, oldest) {
                        cursor
                    } else {
                        oldest
                    }
                })
                .cloned();
            if let Some(cursor) = oldest {
                webhooks::trim(&mut connection, keys, &cursor).await?;
            }
        }
        Ok(())
    }

    /// Sends one webhook its due notices, in order, until one fails; returns its cursor.
    async fn deliver_webhook(
        &self,
        namespace: &Namespace,
        keys: &Keys,
        hook: Webhook,
        now: Timestamp,
    ) -> Result<String, StoreError> {
        let Webhook { record, mut state } = hook;
        if state
            .delivery
            .next_attempt_at
            .is_some_and(|next| next > now)
        {
            return Ok(state.cursor);
        }
        let mut connection = self.redis.clone();
        let notices = webhooks::pending(&mut connection, keys, &state.cursor, BATCH).await?;
        // notices its filter passes over move the cursor without a delivery to record
        let mut skipped = false;
        for PendingNotice { id, notice } in notices {
            let Some(notice) = notice.filter(|notice| record.wants(notice.kind())) else {
                state.cursor = id;
                skipped = true;
                continue;
            };
            let key = format!("{namespace}:{id}");
            let notification = notice.notification(&key, namespace.as_str());
            let attempt = state.delivery.attempts + 1;
            let sent = post(
                &record.url,
                record.secret.as_bytes(),
                &notification,
                attempt,
                self.policy.timeout,
            )
            .await;
            let at = rollout_store::redis_time(&mut connection).await?;
            let failed = sent.is_err();
            state = match sent {
                Ok(()) => {
                    self.metrics.webhook("delivered");
                    self.policy.delivered(state, &id, at)
                }
                Err(error) => {
                    tracing::warn!(webhook = %record.id, %namespace, notice = %key, attempt, %error, "webhook delivery failed");
                    let next = self.policy.failed(state, &id, &key, &error, at);
                    self.metrics.webhook(if next.cursor == id {
                        "given_up"
                    } else {
                        "failed"
                    });
                    next
                }
            };
            skipped = false;
            if !webhooks::save_state(&mut connection, keys, &record.id, &state).await? {
                // deleted meanwhile: nothing more to tell it
                return Ok(state.cursor);
            }
            if failed && state.cursor != id {
                return Ok(state.cursor);
            }
        }
        if skipped {
            webhooks::save_state(&mut connection, keys, &record.id, &state).await?;
        }
        Ok(state.cursor)
    }
}

/// Whether stream id `a` comes before `b` (`<ms>-<seq>`; an empty id comes first).
fn stream_id_before(a: &str, b: &str) -> bool {
    fn parts(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parts(a) < parts(b)
}

/// POSTs `notification` to `url`, signed under `secret`, within `timeout`; `Ok` on a 2xx
/// answer (redirects are not followed: a webhook's address is where it is).
pub async fn post(
    url: &str,
    secret: &[u8],
    notification: &Notification,
    attempt: u32,
    timeout: Duration,
) -> Result<(), String> {
    let body = serde_json::to_vec(notification).map_err(|error| error.to_string())?;
    let timestamp = now_seconds();
    let headers = [
        (IDEMPOTENCY_HEADER, notification.id.clone()),
        (EVENT_HEADER, event_name(notification)),
        (ATTEMPT_HEADER, attempt.to_string()),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (SIGNATURE_HEADER, signature(secret, timestamp, &body)),
    ];
    let status = crate::webhook_http::post(url, &headers, body, timeout).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

fn event_name(notification: &Notification) -> String {
    serde_json::to_value(notification.kind)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The signing time: the sender's clock, which receivers compare with theirs to refuse
/// replays.
fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            timeout: Duration::from_secs(5),
            attempts: 4,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (1..=6)
            .map(|failures| policy().backoff(failures).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 5, 5, 5]);
        assert_eq!(policy().backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn a_failing_notice_is_retried_then_given_up_and_the_queue_moves_on() {
        let policy = policy();
        let start = DeliveryState {
            cursor: "100-0".into(),
            ..DeliveryState::default()
        };
        let t0 = Timestamp::from_millis(1_000_000);
        let mut state = policy.failed(start, "101-0", "ns:101-0", "answered 503", t0);
        assert_eq!(state.cursor, "100-0", "a failed notice stays at the head");
        assert_eq!(state.delivery.attempts, 1);
        assert_eq!(state.delivery.failing_since, Some(t0));
        assert_eq!(
            state.delivery.next_attempt_at,
            Some(Timestamp::from_millis(1_001_000))
        );
        for attempt in 2..=3 {
            state = policy.failed(state, "101-0", "ns:101-0", "answered 503", t0);
            assert_eq!(state.delivery.attempts, attempt);
            assert_eq!(state.cursor, "100-0");
        }
        state = policy.failed(state, "101-0", "ns:101-0", "timed out", t0);
        assert_eq!(state.cursor, "101-0", "given up after the last attempt");
        assert_eq!(state.delivery.given_up, 1);
        assert_eq!(state.delivery.last_given_up.as_deref(), Some("ns:101-0"));
        assert_eq!(state.delivery.attempts, 0);
        assert!(state.delivery.failing(), "still failing until a success");
        assert_eq!(state.delivery.last_error.as_deref(), Some("timed out"));

        let t1 = Timestamp::from_millis(2_000_000);
        let state = policy.delivered(state, "102-0", t1);
        assert_eq!(state.cursor, "102-0");
        assert_eq!(state.delivery.delivered, 1);
        assert!(!state.delivery.failing());
        assert_eq!(state.delivery.last_error, None);
        assert_eq!(state.delivery.last_delivered_at, Some(t1));
    }

    #[test]
    fn stream_ids_compare_by_time_then_sequence() {
        assert!(stream_id_before("99-5", "100-0"));
        assert!(stream_id_before("100-1", "100-2"));
        assert!(!stream_id_before("100-2", "100-2"));
        assert!(stream_id_before("", "0-1"));
        assert!(stream_id_before("0-0", "1700000000000-0"));
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(400);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_ERROR_LEN + "…".len());
        assert!(cut.ends_with('…'));
    }
}
