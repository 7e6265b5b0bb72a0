//! [`EvalClient`]: which variation an entity gets, asked of the evaluators on
//! `rollout.eval.<ns>` (one flag, several, or all), with a small local cache that change
//! events invalidate, and outcome reports on `rollout.metrics.<ns>` for guards.
//!
//! The cache (see [`crate::cache`]) is kept current by a background task subscribed to
//! `rollout.events.<ns>.*` before the first request is sent. It never serves a version of a
//! flag older than one it has seen, and it is emptied when the NATS connection was
//! re-established (events may have been missed meanwhile); a time-to-live bounds what a
//! lost event could leave behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rollout_core::Entity;
use rollout_wire::codec::{self, CONTENT_TYPE_HEADER};
use rollout_wire::{
    Encoding, EvalMany, EvalRequest, EvalResult, Namespace, OutcomeBatch, OutcomeReport, Subjects,
};
use tokio::task::JoinHandle;

use crate::cache::{CacheStats, EvalCache, DEFAULT_CAPACITY, DEFAULT_TTL};
use crate::error::{Error, ErrorKind, Result};
use crate::events::EventSubscription;
use crate::transport::{self, RequestOptions};

/// Evaluation over NATS with an event-invalidated cache.
///
/// Cheap to clone; clones share the connection, the cache and the event subscription,
/// which ends when the last clone is dropped.
///
/// ```no_run
/// use rollout_sdk::{AttributeValue, Entity, EvalClient, Namespace};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let client = EvalClient::connect(nats, Namespace::new("prod")?).await?;
/// let user = Entity::with_id("user-42").attribute("plan", AttributeValue::String("pro".into()));
/// let answer = client.evaluate("new-checkout", &user).await?;
/// if answer.value == serde_json::json!(true) {
///     // the new checkout
/// }
/// client.report_result(&user, &answer, rollout_sdk::Outcome::Success).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct EvalClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nats: async_nats::Client,
    subjects: Subjects,
    namespace: Namespace,
    options: RequestOptions,
    cache: Option<Arc<Mutex<EvalCache>>>,
    connects_seen: AtomicU64,
    watcher: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
    }
}

/// Settings of an [`EvalClient`]; [`EvalClientBuilder::connect`] makes the client.
#[derive(Debug)]
pub struct EvalClientBuilder {
    nats: async_nats::Client,
    namespace: Namespace,
    subjects: Subjects,
    options: RequestOptions,
    cache_capacity: usize,
    cache_ttl: Duration,
}

impl EvalClientBuilder {
    /// Uses `subjects` (a deployment with another prefix).
    #[must_use]
    pub fn subjects(mut self, subjects: Subjects) -> EvalClientBuilder {
        self.subjects = subjects;
        self
    }

    /// Encodes requests with `encoding` (MessagePack by default).
    #[must_use]
    pub fn encoding(mut self, encoding: Encoding) -> EvalClientBuilder {
        self.options.encoding = encoding;
        self
    }

    /// Waits `timeout` for each attempt's reply.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> EvalClientBuilder {
        self.options.timeout = timeout;
        self
    }

    /// Retries an unanswered evaluation `retries` times.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> EvalClientBuilder {
        self.options.retries = retries;
        self
    }

    /// Holds at most `capacity` answers (least recently used go first); 0 turns the cache
    /// and its event subscription off.
    #[must_use]
    pub fn cache_capacity(mut self, capacity: usize) -> EvalClientBuilder {
        self.cache_capacity = capacity;
        self
    }

    /// Serves a cached answer for at most `ttl`.
    #[must_use]
    pub fn cache_ttl(mut self, ttl: Duration) -> EvalClientBuilder {
        self.cache_ttl = ttl;
        self
    }

    /// Subscribes to the namespace's change events (when caching) and returns the client.
    pub async fn connect(self) -> Result<EvalClient> {
        let connects = self.nats.statistics().connects.load(Ordering::Relaxed);
        let (cache, watcher) = if self.cache_capacity == 0 {
            (None, None)
        } else {
            let cache = Arc::new(Mutex::new(EvalCache::new(
                self.cache_capacity,
                self.cache_ttl,
            )));
            let events =
                EventSubscription::subscribe(&self.nats, &self.subjects, &self.namespace, None)
                    .await?;
            let watcher = tokio::spawn(invalidate_on_events(events, Arc::clone(&cache)));
            (Some(cache), Some(watcher))
        };
        Ok(EvalClient {
            inner: Arc::new(Inner {
                nats: self.nats,
                subjects: self.subjects,
                namespace: self.namespace,
                options: self.options,
                cache,
                connects_seen: AtomicU64::new(connects),
                watcher,
            }),
        })
    }
}

/// Drops cached answers as change events arrive, until the subscription ends.
async fn invalidate_on_events(mut events: EventSubscription, cache: Arc<Mutex<EvalCache>>) {
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                let dropped = lock(&cache).observe_event(&event.flag, event.version);
                tracing::debug!(flag = %event.flag, version = event.version, dropped, "change event");
            }
            Err(error) => tracing::warn!(%error, "ignoring an undecodable change event"),
        }
    }
}

fn lock(cache: &Mutex<EvalCache>) -> MutexGuard<'_, EvalCache> {
    // the cache holds no invariant a panic half-way could break beyond a lost entry
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EvalClient {
    /// Settings for a client of `namespace`: default prefix, MessagePack, a cache of
    /// [`DEFAULT_CAPACITY`] answers served for at most [`DEFAULT_TTL`].
    pub fn builder(nats: async_nats::Client, namespace: Namespace) -> EvalClientBuilder {
        EvalClientBuilder {
            nats,
            namespace,
            subjects: Subjects::default(),
            options: RequestOptions::default(),
            cache_capacity: DEFAULT_CAPACITY,
            cache_ttl: DEFAULT_TTL,
        }
    }

    /// A client of `namespace` with the default settings.
    pub async fn connect(nats: async_nats::Client, namespace: Namespace) -> Result<EvalClient> {
        EvalClient::builder(nats, namespace).connect().await
    }

    /// The namespace evaluated in.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// Counters of cache use (all zero when caching is off).
    pub fn cache_stats(&self) -> CacheStats {
        self.inner
            .cache
            .as_ref()
            .map(|cache| lock(cache).stats())
            .unwrap_or_default()
    }

    /// Which variation `entity` gets of `flag`: from the cache when it holds a current
    /// answer, else from an evaluator (`not_found` when the flag does not exist).
    pub async fn evaluate(&self, flag: &str, entity: &Entity) -> Result<EvalResult> {
        if let Some(hit) = self.cached(flag, entity) {
            return Ok(hit);
        }
        let request = EvalRequest {
            flag: Some(flag.to_owned()),
            flags: None,
            entity: entity.clone(),
            explain: false,
        };
        let result: EvalResult = self.request(&request).await?;
        self.store(entity, &result);
        Ok(result)
    }

    /// Several flags at once, in the order asked; unknown keys are listed in `missing`.
    /// Cached answers are used and only the rest is asked for.
    pub async fn evaluate_many<S: AsRef<str>>(
        &self,
        flags: &[S],
        entity: &Entity,
    ) -> Result<EvalMany> {
        let mut answers: Vec<Option<EvalResult>> = flags
            .iter()
            .map(|flag| self.cached(flag.as_ref(), entity))
            .collect();
        let to_ask: Vec<String> = flags
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_none())
            .map(|(flag, _)| flag.as_ref().to_owned())
            .collect();
        if to_ask.is_empty() {
            return Ok(EvalMany {
                results: answers.into_iter().flatten().collect(),
                missing: Vec::new(),
            });
        }
        let request = EvalRequest {
            flag: None,
            flags: Some(to_ask),
            entity: entity.clone(),
            explain: false,
        };
        let reply: EvalMany = self.request(&request).await?;
        for result in &reply.results {
            self.store(entity, result);
        }
        for (flag, answer) in flags.iter().zip(answers.iter_mut()) {
            if answer.is_none() {
                *answer = reply
                    .results
                    .iter()
                    .find(|result| result.flag == flag.as_ref())
                    .cloned();
            }
        }
        Ok(EvalMany {
            results: answers.into_iter().flatten().collect(),
            missing: reply.missing,
        })
    }

    /// Every flag of the namespace for `entity`, by key. Always asks an evaluator (new
    /// flags may exist); the answers refresh the cache.
    pub async fn evaluate_all(&self, entity: &Entity) -> Result<EvalMany> {
        let request = EvalRequest {
            flag: None,
            flags: None,
            entity: entity.clone(),
            explain: false,
        };
        let reply: EvalMany = self.request(&request).await?;
        for result in &reply.results {
            self.store(entity, result);
        }
        Ok(reply)
    }

    /// Like [`EvalClient::evaluate`], bypassing the cache, with a sentence explaining the
    /// answer in `explanation`.
    pub async fn explain(&self, flag: &str, entity: &Entity) -> Result<EvalResult> {
        let request = EvalRequest {
            flag: Some(flag.to_owned()),
            flags: None,
            entity: entity.clone(),
            explain: true,
        };
        let result: EvalResult = self.request(&request).await?;
        self.store(entity, &result);
        Ok(result)
    }

    /// Publishes one outcome on `rollout.metrics.<ns>` for the flag's guards.
    pub async fn report_outcome(&self, report: &OutcomeReport) -> Result<()> {
        report
            .validate()
            .map_err(|error| Error::new(ErrorKind::InvalidInput, error))?;
        self.publish_metrics(report).await
    }

    /// Publishes several outcomes in one message.
    pub async fn report_outcomes(&self, reports: Vec<OutcomeReport>) -> Result<()> {
        let batch = OutcomeBatch { outcomes: reports };
        batch
            .validate()
            .map_err(|error| Error::new(ErrorKind::InvalidInput, error))?;
        self.publish_metrics(&batch).await
    }

    /// Reports how `entity`'s use of an evaluation `result` went. The report names the
    /// rollout that decided the answer, so it counts for that rollout's guard only — never
    /// for a later rollout of the same flag.
    pub async fn report_result(
        &self,
        entity: &Entity,
        result: &EvalResult,
        outcome: rollout_wire::Outcome,
    ) -> Result<()> {
        let mut report = self::outcome(&result.flag, entity, &result.variation, outcome);
        report.rollout_id.clone_from(&result.rollout_id);
        self.report_outcome(&report).await
    }

    /// Reports that `entity`'s use of `variation` of `flag` went well (counted for the
    /// rollout active when the report arrives; [`EvalClient::report_result`] names the
    /// rollout that served it).
    pub async fn report_success(&self, flag: &str, entity: &Entity, variation: &str) -> Result<()> {
        self.report_outcome(&outcome(
            flag,
            entity,
            variation,
            rollout_wire::Outcome::Success,
        ))
        .await
    }

    /// Reports that `entity`'s use of `variation` of `flag` failed (see
    /// [`EvalClient::report_success`]).
    pub async fn report_error(&self, flag: &str, entity: &Entity, variation: &str) -> Result<()> {
        self.report_outcome(&outcome(
            flag,
            entity,
            variation,
            rollout_wire::Outcome::Error,
        ))
        .await
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<()> {
        self.inner
            .nats
            .flush()
            .await
            .map_err(|error| Error::transport(format!("flush: {error}")))
    }

    async fn publish_metrics<T: serde::Serialize>(&self, body: &T) -> Result<()> {
        let encoding = self.inner.options.encoding;
        let payload = codec::encode(body, encoding)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, encoding.content_type());
        let subject = self.inner.subjects.metrics(&self.inner.namespace);
        self.inner
            .nats
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|error| Error::transport(format!("publish on {subject}: {error}")))
    }

    async fn request<R: serde::de::DeserializeOwned>(&self, request: &EvalRequest) -> Result<R> {
        request
            .validate()
            .map_err(|error| Error::new(ErrorKind::InvalidInput, error))?;
        let subject = self.inner.subjects.eval(&self.inner.namespace);
        transport::request(&self.inner.nats, &self.inner.options, &subject, request).await
    }

    fn cached(&self, flag: &str, entity: &Entity) -> Option<EvalResult> {
        let cache = self.inner.cache.as_ref()?;
        let mut cache = lock(cache);
        // after a reconnection, events may have been missed: start afresh
        let connects = self
            .inner
            .nats
            .statistics()
            .connects
            .load(Ordering::Relaxed);
        if self.inner.connects_seen.swap(connects, Ordering::Relaxed) != connects {
            tracing::debug!("nats reconnected; emptying the evaluation cache");
            cache.clear();
        }
        cache.get(flag, entity, Instant::now())
    }

    fn store(&self, entity: &Entity, result: &EvalResult) {
        if let Some(cache) = &self.inner.cache {
            lock(cache).insert(entity, result, Instant::now());
        }
    }
}

fn outcome(
    flag: &str,
    entity: &Entity,
    variation: &str,
    outcome: rollout_wire::Outcome,
) -> OutcomeReport {
    OutcomeReport {
        flag: flag.to_owned(),
        entity: entity.id.clone(),
        variation: variation.to_owned(),
        outcome,
        value: None,
        rollout_id: None,
    }
}
