//! Request-reply over NATS in the wire contract's terms: encode the body (MessagePack or
//! JSON, announced in `Content-Type`), send with a per-request timeout, decode the reply
//! envelope, and retry what never got an answer.
//!
//! Retrying is safe for commands because every command the SDK sends carries a command
//! id: a planner that did commit the first attempt returns its first outcome again.

use std::time::Duration;

use async_nats::{HeaderMap, Request, RequestErrorKind};
use rollout_wire::codec::{self, CONTENT_TYPE_HEADER};
use rollout_wire::{Encoding, Limits, Reply, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

/// Request timeout when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after a request got no answer, when none is configured.
pub const DEFAULT_RETRIES: u32 = 2;
/// Pause before the first retry; doubled for each further one.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// How requests travel: encoding, timeout and retries. Shared by the command and the
/// evaluation clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestOptions {
    /// Body encoding; the reply comes back in the same one.
    pub encoding: Encoding,
    /// How long one attempt waits for its reply.
    pub timeout: Duration,
    /// Further attempts after a timeout or a transport failure. "No responders" is asked
    /// again (with the same doubling pauses, at most a second) until `timeout × (retries +
    /// 1)` or [`NO_RESPONDERS_PATIENCE`], whichever is shorter, has passed; 0 means one
    /// attempt, whatever the error.
    pub retries: u32,
    /// Pause before the first retry, doubled for each further one (at most a second).
    pub retry_delay: Duration,
}

impl Default for RequestOptions {
    fn default() -> RequestOptions {
        RequestOptions {
            encoding: Encoding::MessagePack,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
        }
    }
}

/// Encodes `body` and sends it on `subject`, retrying unanswered attempts, and decodes the
/// reply envelope into `R` or the service's error.
pub(crate) async fn request<B, R>(
    nats: &async_nats::Client,
    options: &RequestOptions,
    subject: &str,
    body: &B,
) -> Result<R>
where
    B: Serialize + ?Sized,
    R: DeserializeOwned,
{
    request_traced(nats, options, subject, body, None).await
}

/// [`request`] carrying W3C trace context: every attempt of one call sends the same
/// `traceparent`, so the planner records the caller's trace in the audit.
pub(crate) async fn request_traced<B, R>(
    nats: &async_nats::Client,
    options: &RequestOptions,
    subject: &str,
    body: &B,
    traceparent: Option<&str>,
) -> Result<R>
where
    B: Serialize + ?Sized,
    R: DeserializeOwned,
{
    let payload = codec::encode(body, options.encoding)?;
    let mut delay = options.retry_delay;
    let mut attempt = 0;
    // "no responders" comes back at once and cost no service any work: asked again until
    // the time every attempt timing out would have taken is spent, so that a caller rides
    // out a moment with no responder in reach (a NATS node rejoining its cluster, the last
    // replica restarting) instead of spending its retries in a few hundred milliseconds
    let budget = options
        .timeout
        .saturating_mul(options.retries.saturating_add(1))
        .min(NO_RESPONDERS_PATIENCE);
    let started = tokio::time::Instant::now();
    loop {
        let outcome = request_once(nats, options, subject, payload.clone(), traceparent).await;
        match outcome {
            Err(error) if error.is_retryable() && options.retries > 0 => {
                let no_responders = error.kind() == ErrorKind::NoResponders;
                let retry = if no_responders {
                    started.elapsed() + delay < budget
                } else {
                    attempt < options.retries
                };
                if !retry {
                    return Err(error);
                }
                tracing::debug!(subject, attempt, %error, "request unanswered; retrying");
                if !no_responders {
                    attempt += 1;
                }
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(MAX_RETRY_DELAY);
            }
            other => return other,
        }
    }
}

/// The longest pause between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest a call keeps asking while nobody responds (a command-line user whose
/// planner is not running hears so after this long, not after every timeout). Longer than
/// services need to leave a NATS node that vanished and be reachable again through another
/// (two unanswered pings at the default 2 s interval, then one reconnection attempt of at
/// most 1 s: about 7 s), so that an application whose every evaluator was connected
/// through the lost node gets its answer.
pub const NO_RESPONDERS_PATIENCE: Duration = Duration::from_secs(10);

async fn request_once<R: DeserializeOwned>(
    nats: &async_nats::Client,
    options: &RequestOptions,
    subject: &str,
    payload: Vec<u8>,
    traceparent: Option<&str>,
) -> Result<R> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, options.encoding.content_type());
    if let Some(traceparent) = traceparent {
        headers.insert(TRACEPARENT_HEADER, traceparent);
    }
    let request = Request::new()
        .payload(payload.into())
        .headers(headers)
        .timeout(Some(options.timeout));
    let message = nats
        .send_request(subject.to_owned(), request)
        .await
        .map_err(|error| match error.kind() {
            RequestErrorKind::NoResponders => Error::no_responders(subject),
            RequestErrorKind::TimedOut => Error::timeout(subject, options.timeout),
            RequestErrorKind::InvalidSubject => {
                Error::invalid_input("subject", format!("invalid subject {subject:?}"))
            }
            RequestErrorKind::MaxPayloadExceeded => Error::invalid_input(
                "payload",
                format!("request too large for the server: {error}"),
            ),
            RequestErrorKind::Other => {
                Error::transport(format!("request on {subject} failed: {error}"))
            }
        })?;
    decode_reply(&message.payload, options.encoding)
}

/// Decodes a reply envelope: the result, the service's error ([`ErrorKind::Refused`]), or
/// [`ErrorKind::Decode`] when the bytes are not an envelope of `R`.
pub(crate) fn decode_reply<R: DeserializeOwned>(bytes: &[u8], encoding: Encoding) -> Result<R> {
    match codec::decode_with::<Reply<R>>(bytes, encoding, Limits::SERVICE_OUTPUT) {
        Ok(Reply::Ok(result)) => Ok(result),
        Ok(Reply::Err(error)) => Err(Error::refused(error)),
        Err(error) => Err(Error::new(
            ErrorKind::Decode,
            WireError::internal(format!("malformed reply: {}", error.message())),
        )),
    }
}

/// Header carrying W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A fresh W3C `traceparent` (version 00, sampled): a new trace started at this edge, so
/// a command carries a trace id even where nothing exports spans.
pub fn new_traceparent() -> String {
    use rand::Rng;
    let mut random = rand::rng();
    let trace_id: u128 = random.random_range(1..=u128::MAX);
    let span_id: u64 = random.random_range(1..=u64::MAX);
    format!("00-{trace_id:032x}-{span_id:016x}-01")
}

/// A fresh command id: `sdk-` and 32 hex digits, one subject token.
pub fn new_command_id() -> String {
    format!("sdk-{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use rollout_wire::{encode_reply, ErrorCode};

    /// A responder that subscribes only after the first attempts found nobody (past the
    /// first pauses, 200 + 400 ms) is still reached within the call's time.
    #[tokio::test]
    async fn no_responders_is_asked_again_until_the_calls_time_is_spent() {
        let server = rollout_testkit::NatsServer::start().expect("nats starts");
        let nats = async_nats::connect(server.url())
            .await
            .expect("nats connects");
        let options = RequestOptions {
            encoding: Encoding::Json,
            timeout: Duration::from_millis(800),
            retries: 2,
            retry_delay: Duration::from_millis(200),
        };
        let responder = nats.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            let mut requests = responder.subscribe("late.responder").await.expect("sub");
            responder.flush().await.expect("flush");
            while let Some(request) = requests.next().await {
                let reply = encode_reply::<u32>(&Ok(42), Encoding::Json);
                let to = request.reply.expect("a request");
                responder.publish(to, reply.into()).await.expect("reply");
            }
        });
        let started = tokio::time::Instant::now();
        let answer: u32 = request(&nats, &options, "late.responder", &1_u32)
            .await
            .expect("answered once the responder is there");
        assert_eq!(answer, 42);
        assert!(started.elapsed() >= Duration::from_millis(900));

        // nobody ever: "no responders" once the call's time (3 × 800 ms) is spent
        let started = tokio::time::Instant::now();
        let error = request::<_, u32>(&nats, &options, "nobody.home", &1_u32)
            .await
            .expect_err("no responder");
        assert_eq!(error.kind(), ErrorKind::NoResponders);
        assert!(
            started.elapsed() >= Duration::from_millis(1_400),
            "asked again meanwhile"
        );
    }

    #[test]
    fn replies_decode_into_results_or_refusals() {
        for encoding in [Encoding::Json, Encoding::MessagePack] {
            let ok = encode_reply::<u32>(&Ok(7), encoding);
            assert_eq!(decode_reply::<u32>(&ok, encoding), Ok(7));
            let refused =
                encode_reply::<u32>(&Err(WireError::not_found("no rollout r-1")), encoding);
            let error = decode_reply::<u32>(&refused, encoding).expect_err("refused");
            assert_eq!(error.kind(), ErrorKind::Refused);
            assert_eq!(error.code(), ErrorCode::NotFound);
            let error = decode_reply::<u32>(b"\xc1garbage", encoding).expect_err("garbage");
            assert_eq!(error.kind(), ErrorKind::Decode);
            assert_eq!(error.code(), ErrorCode::Internal);
        }
    }

    #[test]
    fn traceparents_are_well_formed_and_fresh() {
        let first = new_traceparent();
        let parts: Vec<&str> = first.split('-').collect();
        assert_eq!(parts.len(), 4, "{first}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert!(
            parts[1].bytes().all(|byte| byte.is_ascii_hexdigit()),
            "{first}"
        );
        assert_ne!(first, new_traceparent());
    }

    #[test]
    fn command_ids_are_unique_subject_tokens() {
        let first = new_command_id();
        let second = new_command_id();
        assert_ne!(first, second);
        assert!(rollout_wire::subjects::check_subject_token(&first, "command id").is_ok());
    }
}
