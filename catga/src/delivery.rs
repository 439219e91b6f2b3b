//! Delivering a message kept encoded for later — a scheduled message
//! ([`crate::schedule`]), an outbox row ([`crate::outbox`]): its ids back
//! from text, its send or publish, and what the outcome means for the copy
//! kept (done, or try again).

use serde::{Deserialize, Serialize};

use crate::error::{Error, HandlerError};
use crate::instance::Instance;
use crate::metadata::Metadata;
use crate::trace::TraceContext;
use crate::transport::Encoded;

/// A command is sent, an event published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Send,
    Publish,
}

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Send => "send",
            Kind::Publish => "publish",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Kind> {
        match text {
            "send" => Some(Kind::Send),
            "publish" => Some(Kind::Publish),
            _ => None,
        }
    }
}

/// The ids and trace context of a kept message, as they were when it was
/// made; `None` if they do not parse or cannot go on the wire (a header
/// value must be printable and short).
pub(crate) fn metadata(
    message_id: &str,
    correlation_id: &str,
    causation_id: Option<&str>,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Option<Metadata> {
    if ![traceparent, tracestate].into_iter().flatten().all(printable) {
        return None;
    }
    let causation = match causation_id {
        Some(id) => Some(id.parse().ok()?),
        None => None,
    };
    let mut meta = Metadata::with_ids(message_id.parse().ok()?, correlation_id.parse().ok()?, causation);
    if let Some(trace) = traceparent.and_then(|parent| TraceContext::parse(parent, tracestate)) {
        meta.trace = trace;
    }
    Some(meta)
}

/// Whether a content type can go on the wire as a header value.
pub(crate) fn printable(text: &str) -> bool {
    text.len() <= 512 && text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// What one delivery came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Sent and replied to, or published (core NATS: into the client's
    /// buffer — flush before counting on it), or stored by JetStream.
    Delivered,
    /// The command's handler answered with an error of its own: delivered.
    Refused(Error),
    /// The infrastructure failed (no handler, a timeout, the transport, the
    /// store, a shutdown): try again later.
    Transient(Error),
    /// It can never be delivered (not permitted, over the server's size
    /// limit): give up.
    Undeliverable(Error),
}

/// Send or publish `message` with the ids it was made with. A command's
/// reply is not kept; a durable command counts as delivered once JetStream
/// stored it (its consumer takes it from there).
pub(crate) async fn deliver(instance: &Instance, kind: Kind, message: Encoded<'_>, meta: Metadata) -> Outcome {
    let outcome = match kind {
        Kind::Publish => instance.publish_encoded(message, meta).await,
        Kind::Send if message.durable && instance.transport.name() == "nats" => {
            instance.publish_encoded(message, meta).await
        }
        Kind::Send => instance.send_encoded(message, meta).await.map(drop),
    };
    let Err(error) = outcome else {
        return Outcome::Delivered;
    };
    let code = error.handler_error().map_or(error.failure_code(), HandlerError::code);
    if HandlerError::is_transient_code(code) {
        Outcome::Transient(error)
    } else if matches!(error, Error::Handler { .. }) {
        Outcome::Refused(error)
    } else {
        Outcome::Undeliverable(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::MessageId;

    #[test]
    fn kept_ids_come_back_or_not_at_all() {
        let (id, correlation) = (MessageId::new(), MessageId::new());
        let trace = TraceContext::root(crate::trace::TraceId::random());
        let parent = trace.traceparent();
        let meta = metadata(&id.to_string(), &correlation.to_string(), None, Some(&parent), None).unwrap();
        assert_eq!((meta.message_id, meta.correlation_id, meta.causation_id), (id, correlation, None));
        assert_eq!(meta.trace.traceparent(), parent);
        assert!(metadata("not an id", &correlation.to_string(), None, None, None).is_none());
        assert!(metadata(&id.to_string(), &correlation.to_string(), Some("x"), None, None).is_none());
        assert!(metadata(&id.to_string(), &correlation.to_string(), None, Some("a\r\nb"), None).is_none());
        assert_eq!(Kind::parse(Kind::Send.as_str()), Some(Kind::Send));
        assert_eq!(Kind::parse("delete"), None);
        assert!(printable("application/json") && !printable("a\nb"));
    }
}
