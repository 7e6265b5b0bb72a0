//! The one NATS serving loop of the services, and the request plumbing around it: the
//! encoding a request asks for, replies in that encoding, and [`serve`], which bounds
//! in-flight work and, on shutdown, stops taking requests (unsubscribing) and finishes the
//! ones already received. The planner and the evaluator serve every subscription with it;
//! [`answer_in_place`] is its lean twin for requests answered from memory (evaluations).

use std::future::Future;
use std::time::Duration;

use async_nats::{HeaderMap, Subject, Subscriber};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use rollout_wire::codec::{Encoding, CONTENT_TYPE_HEADER};

use crate::shutdown::Shutdown;

/// The encoding a request selects with its `Content-Type` header (MessagePack without).
pub fn request_encoding(headers: Option<&HeaderMap>) -> Encoding {
    let content_type = headers
        .and_then(|headers| headers.get(CONTENT_TYPE_HEADER))
        .map(|value| value.as_str());
    Encoding::from_content_type(content_type)
}

/// Publishes `payload`, encoded as `encoding`, on `subject`. A JSON payload is labelled
/// with its `Content-Type`; a MessagePack one is not, since no header means MessagePack
/// (SPEC §8.2) and a header block costs every reply on the hot path.
pub async fn publish_encoded(
    client: &async_nats::Client,
    subject: Subject,
    encoding: Encoding,
    payload: Vec<u8>,
) -> Result<(), async_nats::PublishError> {
    match encoding {
        Encoding::MessagePack => client.publish(subject, payload.into()).await,
        Encoding::Json => {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, encoding.content_type());
            client
                .publish_with_headers(subject, headers, payload.into())
                .await
        }
    }
}

/// Publishes `payload` to the request's reply subject ([`publish_encoded`]); a failure is
/// logged. A request without a reply subject (a publish) gets nothing.
pub async fn send_reply(
    client: &async_nats::Client,
    reply: Option<Subject>,
    encoding: Encoding,
    payload: Vec<u8>,
) {
    let Some(reply) = reply else {
        return;
    };
    if let Err(error) = publish_encoded(client, reply, encoding, payload).await {
        tracing::warn!(%error, "reply publish failed");
    }
}

/// Feeds the messages of `subscriber` to `handler`, at most `concurrency` at a time, until
/// `shutdown`; then unsubscribes, handles what was already delivered, and returns once
/// everything in flight is done (or `grace` after shutdown if the server never confirms
/// the unsubscription).
pub async fn serve<H, F>(
    mut subscriber: Subscriber,
    concurrency: usize,
    shutdown: Shutdown,
    grace: Duration,
    handler: H,
) where
    H: Fn(async_nats::Message) -> F,
    F: Future<Output = ()>,
{
    let mut in_flight = FuturesUnordered::new();
    let mut draining = false;
    let drain_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain_deadline);
    // one waiter for the whole loop: a fresh one per message would register and drop a
    // notification (two lock round trips) for every request served
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled, if !draining => {
                draining = true;
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + grace);
                if let Err(error) = subscriber.drain().await {
                    tracing::warn!(%error, "unsubscribe failed; stopping at once");
                    break;
                }
            }
            () = &mut drain_deadline, if draining => {
                tracing::warn!("subscription drain not confirmed within the grace period");
                break;
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            message = subscriber.next(), if in_flight.len() < concurrency => match message {
                Some(message) => in_flight.push(handler(message)),
                None => break,
            },
        }
    }
    while in_flight.next().await.is_some() {}
}

/// [`serve`] for requests answered from memory at once (evaluations): `answer` computes each
/// reply (its encoding and bytes) in place and the loop publishes it to the request's reply
/// subject, one request at a time, with nothing kept per request — no future boxed, no set
/// of them to poll, no handle cloned. Run several on one queue group for parallelism. On
/// `shutdown` it unsubscribes, answers what was already delivered, and returns (or `grace`
/// after shutdown if the server never confirms the unsubscription).
pub async fn answer_in_place<A>(
    mut subscriber: Subscriber,
    client: async_nats::Client,
    shutdown: Shutdown,
    grace: Duration,
    mut answer: A,
) where
    A: FnMut(&async_nats::Message) -> (Encoding, Vec<u8>),
{
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            message = subscriber.next() => match message {
                Some(message) => reply_in_place(&client, message, &mut answer).await,
                None => return,
            },
        }
    }
    if let Err(error) = subscriber.drain().await {
        tracing::warn!(%error, "unsubscribe failed; stopping at once");
        return;
    }
    let delivered = async {
        while let Some(message) = subscriber.next().await {
            reply_in_place(&client, message, &mut answer).await;
        }
    };
    if tokio::time::timeout(grace, delivered).await.is_err() {
        tracing::warn!("subscription drain not confirmed within the grace period");
    }
}

/// Answers `message` with `answer` and publishes the reply ([`send_reply`]).
async fn reply_in_place<A>(
    client: &async_nats::Client,
    message: async_nats::Message,
    answer: &mut A,
) where
    A: FnMut(&async_nats::Message) -> (Encoding, Vec<u8>),
{
    let (encoding, payload) = answer(&message);
    send_reply(client, message.reply, encoding, payload).await;
}
