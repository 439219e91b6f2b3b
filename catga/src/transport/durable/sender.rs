//! Sending durably: a message is stored in its stream (the server
//! acknowledges it) with retries of a lost acknowledgement, and a durable
//! command's reply comes back on the connection's reply inbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{HeaderMap, HeaderName};

use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::trace::Hex;
use crate::transport::Encoded;
use crate::transport::connection::{Connection, SEND_RETRY};
use crate::transport::durable::js_error;
use crate::transport::envelope::{names, request_headers, with_deadline_at};
use crate::transport::inbox::{Arrived, Inbox};

/// JetStream's deduplication header: the Catga message id, so a retried
/// publish is stored once.
pub(crate) const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// A durable command (encoded): stored in its stream (acknowledged by the
/// server), then the reply message awaited on this connection's reply inbox until
/// the deadline, which travels as wall-clock time (time in the stream
/// counts).
pub(crate) async fn send(
    inner: &Connection,
    inbox: &Arc<Inbox>,
    message: Encoded<'_>,
    meta: Metadata,
) -> Result<async_nats::Message> {
    let (subject, payload) = (message.subject, message.payload);
    let mut waiting = inbox.wait(subject);
    // The JetStream deduplication id is this send's own (kept across
    // `publish_stored`'s retries of a lost acknowledgement), not the
    // message id: a caller that sends the same message id again (a
    // retry, a saga step re-run) waits on a new reply token, so its copy
    // must be stored and handled; idempotent handlers dedupe by the
    // message id instead.
    let mut dedup = String::with_capacity(32 + 1 + 16);
    dedup.push_str(Hex::<32>::of(meta.message_id.as_u128()).as_str());
    dedup.push('.');
    dedup.push_str(Hex::<16>::of(u128::from(fastrand::u64(..))).as_str());
    let headers = || {
        let mut headers = with_msg_id(request_headers(&meta, message.content_type), &dedup);
        headers.insert(names::REPLY_TO, waiting.reply_to.as_str());
        match meta.deadline {
            Some(deadline) => with_deadline_at(headers, deadline, inner.clock),
            None => headers,
        }
    };
    let started = inner.clock.now();
    // A publish the server refuses (permissions) gets no PubAck: the
    // inbox's refusal ends the wait for it at once.
    tokio::select! {
        stored = publish_stored(inner, subject, headers, payload) => stored?,
        arrived = &mut waiting.reply => return match arrived {
            Ok(Arrived::Refused(reason)) => Err(Error::PermissionDenied { subject, reason }),
            Ok(Arrived::Reply(reply)) => Ok(reply),
            Err(_) => Err(Error::Transport {
                subject,
                reason: "the durable reply inbox closed (connection closed?)".into(),
            }),
        },
    }
    let left = meta.deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(inner.clock.now()));
    match inner.clock.timeout(left, &mut waiting.reply).await {
        Ok(Ok(Arrived::Reply(reply))) => Ok(reply),
        Ok(Ok(Arrived::Refused(reason))) => Err(Error::PermissionDenied { subject, reason }),
        Ok(Err(_)) => {
            Err(Error::Transport { subject, reason: "the durable reply inbox closed (connection closed?)".into() })
        }
        Err(_) => Err(Error::Timeout { subject, after: started.elapsed() }),
    }
}

/// Publish into JetStream and wait for the server to have stored it,
/// retrying a lost acknowledgement with the same `Nats-Msg-Id` (stored
/// once). `headers` makes each attempt's headers, the same every time (a
/// fresh map costs less than a copy of one). No stream for the subject →
/// [`Error::NoHandler`] at once.
pub(crate) async fn publish_stored(
    inner: &Connection,
    subject: &'static str,
    headers: impl Fn() -> HeaderMap,
    payload: Vec<u8>,
) -> Result<()> {
    use async_nats::jetstream::context::PublishErrorKind as Kind;
    let (js, retries, retried) = (&inner.js, inner.retries, &inner.retried);
    let payload: bytes::Bytes = payload.into();
    let started = inner.clock.now();
    let mut attempt = 0;
    loop {
        let stored = match js.publish_with_headers(subject, headers(), payload.clone()).await {
            Ok(ack) => ack.await.map(drop),
            Err(e) => Err(e),
        };
        let failure = match stored {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let error = match failure.kind() {
            Kind::StreamNotFound => return Err(Error::NoHandler { subject }),
            Kind::MaxPayloadExceeded => {
                return Err(Error::PayloadTooLarge { subject, size: payload.len(), max: js.client().max_payload() });
            }
            Kind::TimedOut => Error::Timeout { subject, after: started.elapsed() },
            _ => return Err(js_error(subject, format!("JetStream did not store the message: {failure}"))),
        };
        if attempt >= retries {
            return Err(error);
        }
        attempt += 1;
        retried.fetch_add(1, Ordering::Relaxed);
        inner.clock.sleep(SEND_RETRY.delay(attempt)).await;
    }
}

/// Add the JetStream deduplication id to a durable message's headers.
pub(crate) fn with_msg_id(mut h: HeaderMap, id: &str) -> HeaderMap {
    h.insert(const { HeaderName::from_static(NATS_MSG_ID) }, id);
    h
}
