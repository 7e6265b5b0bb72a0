//! The planner's NATS front: request-reply commands on `rollout.cmd.<ns>.<verb>` and
//! queries on `rollout.query.<ns>.<what>` (queue group `planner`, any number of replicas),
//! and the durable stream `ROLLOUT_CMDS` on `rollout.cmdq.<ns>.<verb>`, whose outcomes are
//! published on `rollout.outcome.<command_id>`. Replies use the request's encoding.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use rollout_runtime::serve::{publish_encoded, request_encoding, send_reply};
use rollout_runtime::shutdown::Shutdown;
use rollout_runtime::telemetry::{
    set_remote_parent, trace_id_of, traceparent_of_current_span, TRACEPARENT_HEADER,
};
use rollout_wire::alerts::{Alert, AlertResult};
use rollout_wire::codec::Encoding;
use rollout_wire::commands::{Command, CommandReply};
use rollout_wire::envelope::{encode_reply, ErrorCode, WireError};
use rollout_wire::queries::Query;
use rollout_wire::queries::QueryReply;
use rollout_wire::subjects::{Route, Subjects, COMMAND_CONSUMER, COMMAND_STREAM};
use tracing::Instrument;

use crate::executor::Executor;
use crate::metrics::PlannerMetrics;
use crate::queries::Reader;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct Handler {
    /// The NATS client (replies and outcomes).
    pub nats: async_nats::Client,
    /// Subject builder and parser.
    pub subjects: Subjects,
    /// Command execution.
    pub executor: Executor,
    /// Queries.
    pub reader: Reader,
    /// Requests by verb and outcome, for `/metrics`.
    pub metrics: Arc<PlannerMetrics>,
}

/// The command's W3C trace context: the `traceparent` it arrived with, else the one of the
/// span handling it (when tracing exports), so a rollout links back to its creator.
fn command_traceparent(headers: Option<&HeaderMap>) -> Option<String> {
    headers
        .and_then(|map| map.get(TRACEPARENT_HEADER))
        .map(|value| value.as_str().to_owned())
        .filter(|value| trace_id_of(value).is_some())
        .or_else(traceparent_of_current_span)
}

impl Handler {
    /// Handles one request-reply message (command or query) and sends the reply.
    pub async fn handle_request(&self, message: async_nats::Message) {
        if message.reply.is_none() {
            tracing::debug!(subject = %message.subject, "request without a reply subject ignored");
            return;
        }
        let encoding = request_encoding(message.headers.as_ref());
        let span = tracing::info_span!("planner.request", subject = %message.subject, command_id = tracing::field::Empty, code = tracing::field::Empty);
        set_remote_parent(&span, message.headers.as_ref());
        let result = self
            .dispatch(&message, encoding)
            .instrument(span.clone())
            .await;
        if let Err(error) = &result {
            span.record("code", error.code.as_str());
        }
        let (family, verb) = match self.subjects.parse(&message.subject) {
            Ok(Route::Command { verb, .. }) => ("command", verb.as_str()),
            Ok(Route::Query { kind, .. }) => ("query", kind.as_str()),
            Ok(Route::Alert { .. }) => ("alert", "alert"),
            _ => ("other", "-"),
        };
        self.metrics.request(family, verb, outcome_name(&result));
        let payload = encode_reply(&result, encoding);
        send_reply(&self.nats, message.reply.clone(), encoding, payload).await;
    }

    async fn dispatch(
        &self,
        message: &async_nats::Message,
        encoding: Encoding,
    ) -> Result<Answer, WireError> {
        match self.subjects.parse(&message.subject)? {
            Route::Command { namespace, verb } => {
                let command = Command::decode(verb, &message.payload, encoding)?;
                if let Some(id) = command.command_id() {
                    tracing::Span::current().record("command_id", id);
                }
                self.executor
                    .execute(
                        &namespace,
                        &command,
                        command_traceparent(message.headers.as_ref()),
                    )
                    .await
                    .map(Answer::Command)
            }
            Route::Alert { namespace } => {
                let alert: Alert = rollout_wire::codec::decode(&message.payload, encoding)?;
                self.executor
                    .alert(
                        &namespace,
                        &alert,
                        command_traceparent(message.headers.as_ref()),
                    )
                    .await
                    .map(Answer::Alert)
            }
            Route::Query { namespace, kind } => {
                let query = Query::decode(kind, &message.payload, encoding)?;
                self.reader
                    .answer(&namespace, &query)
                    .await
                    .map(Answer::Query)
            }
            _ => Err(WireError::invalid_argument(
                "subject",
                format!("the planner does not serve {}", message.subject),
            )),
        }
    }

    /// Handles one message of the durable command stream: executes it exactly once by its
    /// command id, publishes the outcome on `rollout.outcome.<ns>.<command_id>`, then
    /// acknowledges.
    ///
    /// A command without an id is answered on `rollout.outcome.<ns>.js-<sequence>` (the
    /// sequence its publisher got in the stream's acknowledgement) and remembered under
    /// `js-<sequence>-<publish time>`, a key no client id can take (clients may not use the
    /// `js-` prefix) and no recreated stream repeats. A message that is not a command at all
    /// is answered too, with its error, on the outcome subject of the id that can still be
    /// read from it, else of its stand-in.
    ///
    /// Failures are bounded (SPEC §11.1): Redis unreachable is retried in place — keeping
    /// the message in progress so the stream holds back the commands after it, which keeps
    /// their order — and only after [`UNAVAILABLE_RETRY`] handed back to the stream; an
    /// internal error is tried [`INTERNAL_ATTEMPTS`] times, then answered and acknowledged,
    /// never redelivered forever.
    pub async fn handle_queued(&self, message: jetstream::Message) {
        let encoding = request_encoding(message.headers.as_ref());
        let (sequence, published_nanos) = message
            .info()
            .map(|info| (info.stream_sequence, info.published.unix_timestamp_nanos()))
            .unwrap_or((0, 0));
        let span = tracing::info_span!("planner.queued_command", subject = %message.subject, sequence, code = tracing::field::Empty);
        set_remote_parent(&span, message.headers.as_ref());
        let stand_in = format!("{STAND_IN_PREFIX}{sequence}");
        let stand_in_key = format!("{stand_in}-{published_nanos}");
        let Some(namespace) = self.subjects.queued_namespace(&message.subject) else {
            tracing::warn!(subject = %message.subject, "queued message outside any namespace; acknowledged, nobody can be answered");
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, "ack failed");
            }
            return;
        };
        let answer_to = |salvaged: Option<String>| {
            salvaged
                .filter(|id| self.subjects.outcome(&namespace, id).is_ok())
                .unwrap_or_else(|| stand_in.clone())
        };
        let (command_id, result) = async {
            let route = match self.subjects.parse(&message.subject) {
                Ok(Route::QueuedCommand { verb, namespace }) => Ok((namespace, verb)),
                Ok(_) => Err(WireError::invalid_argument(
                    "subject",
                    "not a queued command subject",
                )),
                Err(error) => Err(error.into()),
            };
            let decoded = route.and_then(|(namespace, verb)| {
                Command::decode(verb, &message.payload, encoding)
                    .map(|command| (namespace, command))
                    .map_err(WireError::from)
            });
            let (namespace, command) = match decoded {
                Ok(decoded) => decoded,
                Err(error) => {
                    let salvaged = Command::salvage_command_id(&message.payload, encoding);
                    return (answer_to(salvaged), Err(error));
                }
            };
            let (command_id, key) = match command.command_id() {
                Some(id) => (id.to_owned(), id.to_owned()),
                None => (stand_in.clone(), stand_in_key.clone()),
            };
            let traceparent = command_traceparent(message.headers.as_ref());
            let started = tokio::time::Instant::now();
            let mut attempt: u32 = 0;
            let result = loop {
                attempt += 1;
                let result = self
                    .executor
                    .execute_keyed(&namespace, &command, Some(&key), traceparent.clone())
                    .await;
                let retry = match &result {
                    Err(error) if error.code == ErrorCode::Unavailable => {
                        started.elapsed() < UNAVAILABLE_RETRY
                    }
                    Err(error) if error.code == ErrorCode::Internal => attempt < INTERNAL_ATTEMPTS,
                    _ => false,
                };
                if !retry {
                    break result;
                }
                tracing::warn!(error = ?result.as_ref().err(), sequence, attempt, "queued command failed; retrying in place");
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(%error, "in-progress ack failed");
                }
                tokio::time::sleep(retry_delay(attempt)).await;
            };
            (command_id, result)
        }
        .instrument(span.clone())
        .await;
        if let Err(error) = &result {
            span.record("code", error.code.as_str());
            if error.code == ErrorCode::Unavailable {
                tracing::warn!(%error, sequence, "queued command still failing; handed back to the stream for redelivery");
                if let Err(nak_error) = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
                {
                    tracing::warn!(error = %nak_error, "nak failed");
                }
                return;
            }
        }
        let verb = match self.subjects.parse(&message.subject) {
            Ok(Route::QueuedCommand { verb, .. }) => verb.as_str(),
            _ => "-",
        };
        self.metrics
            .request("queued_command", verb, outcome_name(&result));
        // an id that cannot be a subject token (validation refused the command) is answered
        // on the stand-in, like a command without one
        let command_id = answer_to(Some(command_id));
        match self.subjects.outcome(&namespace, &command_id) {
            Ok(subject) => {
                let payload = encode_reply(&result, encoding);
                if let Err(error) =
                    publish_encoded(&self.nats, subject.into(), encoding, payload).await
                {
                    // not acknowledged: the redelivery finds the stored outcome and publishes it again
                    tracing::warn!(%error, "outcome publish failed");
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, %command_id, "no outcome subject can be named; the outcome is only logged")
            }
        }
        if let Err(error) = message.ack().await {
            tracing::warn!(%error, sequence, "ack failed; the command will be redelivered and answered from its stored outcome");
        }
    }
}

/// `ok`, or the refusal's error code.
fn outcome_name<T>(result: &Result<T, WireError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(error) => error.code.as_str(),
    }
}

/// Client command ids may not start with this: it marks the stand-ins of commands queued
/// without one.
pub const STAND_IN_PREFIX: &str = rollout_wire::checks::STAND_IN_COMMAND_ID_PREFIX;
/// How long a queued command whose Redis is unreachable is retried in place before it is
/// handed back to the stream.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(10);
/// How often a queued command that fails with an internal error is tried before that
/// error is its answer.
const INTERNAL_ATTEMPTS: u32 = 3;

/// Backoff before retry `attempt` (1-based): 50 ms doubling up to 1 s.
fn retry_delay(attempt: u32) -> Duration {
    (Duration::from_millis(50) * 2_u32.pow(attempt.min(5))).min(Duration::from_secs(1))
}

/// Creates the stream `ROLLOUT_CMDS` (with `replicas` replicas) and its durable consumer if
/// missing, and brings an existing consumer to the ordering rule: one command in flight at a
/// time across every planner replica (`max_ack_pending = 1`), so commands apply in the
/// order the stream accepted them (SPEC §11.1). Request-reply commands are not affected.
pub async fn ensure_command_stream(
    nats: &async_nats::Client,
    subjects: &Subjects,
    ack_wait: Duration,
    replicas: usize,
) -> Result<jetstream::consumer::PullConsumer, async_nats::Error> {
    let context = jetstream::new(nats.clone());
    let stream_config = jetstream::stream::Config {
        name: COMMAND_STREAM.to_owned(),
        subjects: vec![subjects.cmdq_all()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    let stream = retry_unanswered(
        "command stream",
        || context.get_or_create_stream(stream_config.clone()),
        |error| error.kind() == jetstream::context::CreateStreamErrorKind::TimedOut,
    )
    .await?;
    let config = pull::Config {
        durable_name: Some(COMMAND_CONSUMER.to_owned()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 1,
        ..Default::default()
    };
    let mut consumer: jetstream::consumer::PullConsumer = retry_unanswered(
        "command stream consumer",
        || stream.get_or_create_consumer(COMMAND_CONSUMER, config.clone()),
        |error| error.kind() == jetstream::stream::ConsumerErrorKind::TimedOut,
    )
    .await?;
    let max_ack_pending = retry_unanswered(
        "command stream consumer info",
        || async {
            consumer
                .get_info()
                .await
                .map(|info| info.config.max_ack_pending)
        },
        |error| error.kind() == jetstream::context::ConsumerInfoErrorKind::TimedOut,
    )
    .await?;
    if max_ack_pending != 1 {
        consumer = stream.update_consumer(config).await?;
    }
    Ok(consumer)
}

/// How often a JetStream request setting up the command stream or its consumer is sent
/// before its going unanswered fails the start.
const SETUP_ATTEMPTS: u32 = 4;

/// Runs `request` until it is answered, at most [`SETUP_ATTEMPTS`] times. On a NATS cluster
/// a request to create the stream can go unanswered while another planner's identical
/// request is in flight, or while the new stream's group elects its leader; the next
/// attempt finds the stream.
async fn retry_unanswered<T, E, Fut>(
    what: &str,
    mut request: impl FnMut() -> Fut,
    unanswered: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut attempt = 1;
    loop {
        match request().await {
            Err(error) if attempt < SETUP_ATTEMPTS && unanswered(&error) => {
                tracing::warn!(%error, what, attempt, "jetstream did not answer; asking again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The pause before pulling again after a pull went unanswered or the consumption ended.
const PULL_AGAIN_AFTER: Duration = Duration::from_millis(500);

/// Consumes the durable command stream until `shutdown`.
///
/// A pull answered "no responders" is given up and a new one sent after
/// [`PULL_AGAIN_AFTER`]: on a NATS cluster the consumer's group has no leader for a moment
/// after it is created, and the client would otherwise take the unanswered pull as waiting
/// on the server and send no other until it expired (30 s, all that time consuming
/// nothing). Consumption that ends, or cannot start, starts again the same way.
pub async fn serve_stream(
    handler: Handler,
    consumer: jetstream::consumer::PullConsumer,
    concurrency: usize,
    shutdown: Shutdown,
) {
    while !shutdown.is_triggered() {
        match consumer.messages().await {
            Ok(messages) => {
                messages
                    .take_until(shutdown.clone().cancelled_owned())
                    .take_while(|message| {
                        let unanswered = matches!(
                            message,
                            Err(error) if error.kind() == MessagesErrorKind::NoResponders
                        );
                        if unanswered {
                            tracing::warn!(
                                "command stream pull unanswered (no responders); pulling again"
                            );
                        }
                        std::future::ready(!unanswered)
                    })
                    .for_each_concurrent(concurrency, |message| {
                        let handler = handler.clone();
                        async move {
                            match message {
                                Ok(message) => handler.handle_queued(message).await,
                                Err(error) => tracing::warn!(%error, "command stream error"),
                            }
                        }
                    })
                    .await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot consume the command stream; trying again");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PULL_AGAIN_AFTER) => {}
        }
    }
}

/// A request's answer, typed until it is encoded.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum Answer {
    /// A command's reply.
    Command(CommandReply),
    /// A query's answer.
    Query(QueryReply),
    /// What an alert did.
    Alert(AlertResult),
}
