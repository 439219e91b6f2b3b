//! A core request — a command over NATS request-reply — from the sender's
//! side: published with the connection's reply inbox ([`super::inbox`]) as
//! its reply subject and awaited until its deadline. The responder signals
//! that it still holds the request ([`super::pulse`]); a request whose
//! responder went silent for the liveness timeout (it died, or the message
//! was lost) is sent again with the same message id and the same reply
//! token, and "no responders" is retried with backoff (up to
//! `send_retries` times). A durable command goes through JetStream
//! instead ([`super::durable::sender`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::logging::warn_limited;
use crate::metadata::Metadata;
use crate::metrics::{Metrics, Retry};
use crate::transport::Encoded;
use crate::transport::connection::{Connection, SEND_RETRY};
use crate::transport::envelope::{names, request_headers, with_deadline_in};
use crate::transport::inbox::{Arrived, Inbox, Waiting};

/// Send `message` (a core command, encoded) and wait for its reply
/// message; `liveness`: the responder's silence after which it is sent
/// again (`None`: never).
pub(crate) async fn send(
    conn: &Connection,
    inbox: &Arc<Inbox>,
    metrics: &Metrics,
    liveness: Option<Duration>,
    message: Encoded<'_>,
    meta: Metadata,
) -> Result<async_nats::Message> {
    let subject = message.subject;
    let payload: bytes::Bytes = message.payload.into();
    // Built for each attempt (the deadline's time left changes): a
    // fresh map costs less than a copy of one.
    let headers = || {
        let mut headers = request_headers(&meta, message.content_type);
        if liveness.is_some() {
            headers.insert(names::LIVENESS, "1");
        }
        match meta.deadline {
            Some(deadline) => with_deadline_in(headers, deadline),
            None => headers,
        }
    };
    let started = conn.clock.now();
    let timeout = || Error::Timeout { subject, after: started.elapsed() };
    let mut waiting = inbox.wait(subject);
    let mut retries = 0;
    loop {
        let published =
            conn.client.publish_with_reply_and_headers(subject, waiting.reply_to.clone(), headers(), payload.clone());
        if let Err(e) = published.await {
            return Err(match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    Error::PayloadTooLarge { subject, size: payload.len(), max: conn.client.max_payload() }
                }
                _ => Error::Transport { subject, reason: e.to_string() },
            });
        }
        match awaited(&mut waiting, meta.deadline, liveness, conn.clock).await {
            Awaited::Reply(reply) if reply.status != Some(async_nats::StatusCode::NO_RESPONDERS) => {
                return Ok(reply);
            }
            Awaited::Reply(_no_responders) => {
                let pause = SEND_RETRY.delay(retries + 1);
                let late = meta.deadline.is_some_and(|d| conn.clock.now() + pause >= d);
                if retries >= conn.retries || late {
                    warn_limited!(
                        subject,
                        "no_handler",
                        subject = subject,
                        message_id = %meta.message_id,
                        retries,
                        "send failed: no instance subscribed (no responders)"
                    );
                    return Err(Error::NoHandler { subject });
                }
                retries += 1;
                conn.retried.fetch_add(1, Ordering::Relaxed);
                metrics.retried(subject, Retry::NoResponders);
                tracing::debug!(subject = subject, retries, ?pause, message_id = %meta.message_id, "no responders; retrying");
                conn.clock.sleep(pause).await;
                waiting = inbox.wait(subject); // the status took the token
            }
            Awaited::Silent => {
                conn.retried.fetch_add(1, Ordering::Relaxed);
                metrics.retried(subject, Retry::Silent);
                tracing::debug!(
                    subject = subject,
                    message_id = %meta.message_id,
                    after = ?started.elapsed(),
                    "no sign of life from the responder; sending again"
                );
            }
            Awaited::Deadline => {
                warn_limited!(
                    subject,
                    "timeout",
                    subject = subject,
                    message_id = %meta.message_id,
                    after = ?started.elapsed(),
                    signals = waiting.signals(),
                    "send failed: no reply by its deadline"
                );
                return Err(timeout());
            }
            Awaited::Closed => {
                return Err(Error::Transport { subject, reason: "the reply inbox closed".into() });
            }
            Awaited::Refused(reason) => return Err(Error::PermissionDenied { subject, reason }),
        }
    }
}

/// What one attempt of a send came to.
enum Awaited {
    /// A final message: the reply, or the server's "no responders".
    Reply(async_nats::Message),
    /// No reply and no signal for the liveness timeout.
    Silent,
    /// The send's deadline passed.
    Deadline,
    /// The inbox is gone (the connection closed).
    Closed,
    /// The server refused the publish (a permissions violation).
    Refused(String),
}

/// Wait for the final reply of one attempt until the deadline, watching
/// the responder's signals: none (and no reply) for `liveness` → `Silent`.
async fn awaited(
    waiting: &mut Waiting,
    deadline: Option<Instant>,
    liveness: Option<Duration>,
    clock: Clock,
) -> Awaited {
    let (mut seen, mut quiet_since) = (waiting.signals(), clock.now());
    loop {
        let now = clock.now();
        // Look at the signals four times per liveness period.
        let look = liveness.map(|l| now + l / 4);
        let wake = match (look, deadline) {
            (Some(look), Some(deadline)) => Some(look.min(deadline)),
            (look, deadline) => look.or(deadline),
        };
        let reply = match wake {
            Some(wake) => match clock.timeout(wake.saturating_duration_since(now), &mut waiting.reply).await {
                Ok(reply) => reply,
                Err(_) => {
                    let now = clock.now();
                    if deadline.is_some_and(|d| now >= d) {
                        return Awaited::Deadline;
                    }
                    let signals = waiting.signals();
                    if signals != seen {
                        (seen, quiet_since) = (signals, now);
                    } else if liveness.is_some_and(|l| now.duration_since(quiet_since) >= l) {
                        return Awaited::Silent;
                    }
                    continue;
                }
            },
            None => (&mut waiting.reply).await,
        };
        return match reply {
            Ok(Arrived::Reply(reply)) => Awaited::Reply(reply),
            Ok(Arrived::Refused(reason)) => Awaited::Refused(reason),
            Err(_) => Awaited::Closed,
        };
    }
}
