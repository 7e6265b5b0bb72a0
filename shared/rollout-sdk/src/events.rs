//! Following change events on `rollout.events.<ns>.<flag>`: a subscription to one flag or
//! to a whole namespace that yields decoded [`ChangeEvent`]s, in the encoding each message's
//! `Content-Type` names.

use futures_util::StreamExt;
use rollout_wire::codec::CONTENT_TYPE_HEADER;
use rollout_wire::{ChangeEvent, Encoding, Namespace, Subjects, WireError};

use crate::error::{Error, ErrorKind, Result};

/// A live subscription to change events.
///
/// ```no_run
/// use rollout_sdk::{EventSubscription, Namespace, Subjects};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let namespace = Namespace::new("prod")?;
/// let mut events =
///     EventSubscription::subscribe(&nats, &Subjects::default(), &namespace, Some("new-checkout"))
///         .await?;
/// while let Some(event) = events.next().await {
///     let event = event?;
///     println!("{} v{}: {:?}", event.flag, event.version, event.kind);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct EventSubscription {
    subscriber: async_nats::Subscriber,
}

impl EventSubscription {
    /// Subscribes to the events of `flag`, or of every flag of `namespace` when `None`.
    /// The subscription is registered with the server when this returns, so no event
    /// published afterwards is missed.
    pub async fn subscribe(
        nats: &async_nats::Client,
        subjects: &Subjects,
        namespace: &Namespace,
        flag: Option<&str>,
    ) -> Result<EventSubscription> {
        let subject = match flag {
            Some(flag) => subjects
                .events(namespace, flag)
                .map_err(|error| Error::new(ErrorKind::InvalidInput, WireError::from(error)))?,
            None => subjects.events_namespace(namespace),
        };
        let subscriber = nats
            .subscribe(subject.clone())
            .await
            .map_err(|error| Error::transport(format!("subscribe to {subject}: {error}")))?;
        nats.flush()
            .await
            .map_err(|error| Error::transport(format!("flush after subscribing: {error}")))?;
        Ok(EventSubscription { subscriber })
    }

    /// The next event; `None` once the subscription ends. An undecodable message is an
    /// [`ErrorKind::Decode`] error and the subscription goes on.
    pub async fn next(&mut self) -> Option<Result<ChangeEvent>> {
        let message = self.subscriber.next().await?;
        Some(decode_event(&message))
    }
}

/// The encoding a message's `Content-Type` header names (MessagePack when it names none).
pub fn message_encoding(message: &async_nats::Message) -> Encoding {
    let content_type = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(CONTENT_TYPE_HEADER))
        .map(|value| value.as_str());
    Encoding::from_content_type(content_type)
}

/// Decodes a change event in the encoding its `Content-Type` header names.
pub fn decode_event(message: &async_nats::Message) -> Result<ChangeEvent> {
    let encoding = message_encoding(message);
    ChangeEvent::decode(&message.payload, encoding).map_err(|error| {
        Error::new(
            ErrorKind::Decode,
            WireError::internal(format!(
                "undecodable event on {}: {}",
                message.subject,
                error.message()
            )),
        )
    })
}
