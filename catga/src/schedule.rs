//! Scheduled messages: a command sent, or an event published, at a time or
//! after a delay — durably, by whichever instance is up then.
//!
//! ```
//! use std::time::Duration;
//! use catga::prelude::*;
//! use catga::schedule::Schedule;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[catga(subject = "docs.reminder.due")]
//! struct ReminderDue { order: String }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> catga::Result<()> {
//! let app = Catga::builder().start().await?;
//! // Published in 30 minutes, by whichever instance is running then.
//! let when = Schedule::after(Duration::from_secs(30 * 60)).id("reminder:o-42");
//! let scheduled = app.schedule_publish(when.clone(), ReminderDue { order: "o-42".into() }).await?;
//! assert_eq!(scheduled.id, "reminder:o-42");
//! // Scheduling the same id again changes nothing while it waits...
//! assert!(!app.schedule_publish(when, ReminderDue { order: "o-42".into() }).await?.new);
//! // ... and cancelling it means it will not be published.
//! assert!(app.cancel_scheduled("reminder:o-42").await?);
//! # app.shutdown().await; Ok(()) }
//! ```
//!
//! ## How it works
//! A scheduled message is encoded at once (its codec, its ids, the trace
//! context it was scheduled in) and kept in the store, in a timer queue
//! ([`crate::store::Store::timer_put`]; one of 16 by its id, so on a Redis
//! Cluster they spread over the slots). Every instance but a client looks at
//! the queues every [`Config::timer_interval`](crate::Config::timer_interval)
//! (250 ms) for what falls due before its next look, and delivers each at
//! its time: one instance takes it in the store, sends or publishes it with
//! its message id, and removes it. So it is delivered once, by any
//! instance, whatever restarted meanwhile. If the instance delivering it
//! dies, its taking lapses after 30 s and another instance delivers it
//! again with the same message id (an `idempotent` handler, or JetStream's
//! deduplication for a durable contract, sees one message).
//!
//! - A command is sent as [`App::send`] would, with the instance's request
//!   timeout; its reply is not kept, a handler's error is logged. A durable
//!   command counts as delivered once JetStream stored it.
//! - A failure of the infrastructure or a transient error code (no
//!   handler, a timeout, the transport or the store) is retried, with
//!   pauses growing with the lateness (1 s to 1 min), until it is delivered
//!   or cancelled. A message that can never be delivered (not permitted,
//!   over the server's size limit, unreadable) is logged as an error and
//!   dropped.
//! - Due times are wall-clock milliseconds read through each instance's
//!   [`Clock`](crate::Clock): an instance whose clock is ahead by *d*
//!   delivers *d* early. Skew below the 30 s taking never delivers a
//!   message twice; NTP keeps it to milliseconds.
//! - In memory (no `CATGA_REDIS_URL`) the same holds for the instances of
//!   one process.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::codec::{Codec, Json};
use crate::delivery::{self, Kind, Outcome};
use crate::error::{Error, Result};
use crate::message::{Command, Event};
use crate::metadata::Metadata;
use crate::timers::queue_of;
use crate::transport::envelope::codec_error;
use crate::transport::{Encoded, intern_subject};

/// When a message is to be delivered, and (optionally) its id.
#[derive(Debug, Clone)]
pub struct Schedule {
    when: When,
    id: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum When {
    At(SystemTime),
    After(Duration),
}

impl Schedule {
    /// At `time` (wall clock); a time past is delivered at once.
    pub fn at(time: SystemTime) -> Schedule {
        Schedule { when: When::At(time), id: None }
    }

    /// `delay` from now.
    pub fn after(delay: Duration) -> Schedule {
        Schedule { when: When::After(delay), id: None }
    }

    /// Name it (1 to 200 characters), to cancel it by a name you know, and
    /// so that scheduling the same id again while it waits changes nothing.
    /// Without one, the id is the message's id.
    pub fn id(mut self, id: impl Into<String>) -> Schedule {
        self.id = Some(id.into());
        self
    }
}

/// A scheduled message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Scheduled {
    /// Its id: to cancel it with [`App::cancel_scheduled`].
    pub id: String,
    /// When it is due.
    pub due: SystemTime,
    /// False if a message with this id was waiting already (it was kept,
    /// unchanged, and `due` is this call's, not its).
    pub new: bool,
}

impl App {
    /// Send `command` at the time `when` says, durably: by whichever
    /// instance is running then, once (see [`crate::schedule`]).
    pub async fn schedule_send<C: Command>(&self, when: Schedule, command: C) -> Result<Scheduled> {
        let payload = C::Codec::encode(&command).map_err(|e| codec_error::<C>("encode", C::SUBJECT, e.0))?;
        let message =
            Encoded { subject: C::SUBJECT, payload, content_type: C::Codec::CONTENT_TYPE, durable: C::DURABLE };
        schedule(self, when, Kind::Send, message).await
    }

    /// Publish `event` at the time `when` says, durably (see
    /// [`crate::schedule`]).
    pub async fn schedule_publish<E: Event>(&self, when: Schedule, event: E) -> Result<Scheduled> {
        let payload = E::Codec::encode(&event).map_err(|e| codec_error::<E>("encode", E::SUBJECT, e.0))?;
        let message =
            Encoded { subject: E::SUBJECT, payload, content_type: E::Codec::CONTENT_TYPE, durable: E::DURABLE };
        schedule(self, when, Kind::Publish, message).await
    }

    /// Cancel the scheduled message `id`: true if it was waiting and now
    /// never will be delivered; false if it is being delivered right now,
    /// was delivered or cancelled already, or is unknown.
    pub async fn cancel_scheduled(&self, id: &str) -> Result<bool> {
        self.instance().check_open()?;
        self.store().timer_cancel(&queue_of(id), id, self.instance().clock.epoch_ms()).await
    }
}

/// What the store keeps of a scheduled message besides its payload (as
/// JSON, then a line break, then the payload as its codec wrote it).
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    kind: Kind,
    subject: String,
    /// The codec's content type; absent for JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default)]
    durable: bool,
    message_id: String,
    correlation_id: String,
    traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
    /// When it is due (epoch ms).
    due: u64,
}

async fn schedule(app: &App, when: Schedule, kind: Kind, message: Encoded<'_>) -> Result<Scheduled> {
    app.instance().check_open()?;
    let clock = app.instance().clock;
    let due = match when.when {
        When::At(time) => epoch_ms(time),
        When::After(delay) => clock.epoch_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
    };
    // A new conversation, in the trace of the handling it was scheduled from
    // (an `App` from `Context::app`), if any.
    let mut meta = Metadata::root();
    if let Some(origin) = app.trace_context() {
        meta = meta.in_trace(origin);
    }
    let id = when.id.unwrap_or_else(|| meta.message_id.to_string());
    if id.is_empty() || id.len() > 200 {
        return Err(Error::Config(format!("scheduled message id {id:?} must be 1 to 200 characters (Schedule::id)")));
    }
    let header = Header {
        kind,
        subject: message.subject.to_owned(),
        content_type: (message.content_type != Json::CONTENT_TYPE).then(|| message.content_type.to_owned()),
        durable: message.durable,
        message_id: meta.message_id.to_string(),
        correlation_id: meta.correlation_id.to_string(),
        traceparent: meta.trace.traceparent(),
        tracestate: meta.trace.tracestate().map(str::to_owned),
        due,
    };
    let mut item = serde_json::to_vec(&header).expect("a header serializes");
    item.push(b'\n');
    item.extend_from_slice(&message.payload);
    let new = app.store().timer_put(&queue_of(&id), &id, due, &item, false).await?;
    if new {
        app.instance().metrics.scheduled(message.subject);
    }
    tracing::debug!(id, subject = message.subject, due, new, "message scheduled");
    Ok(Scheduled { id, due: UNIX_EPOCH + Duration::from_millis(due), new })
}

fn epoch_ms(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// What the timer sweep does with a scheduled message after a delivery.
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    /// Delivered (or never deliverable, and logged): remove it.
    Done,
    /// Not delivered this time: due again after this pause.
    Again(Duration),
}

/// Deliver scheduled message `id` (the timer sweep took it).
pub(crate) async fn deliver(app: &App, id: &str, item: &[u8]) -> Next {
    let instance = app.instance();
    let metrics = &instance.metrics;
    let (header, payload) = match read(item) {
        Ok(read) => read,
        Err(reason) => {
            tracing::error!(id, reason, "scheduled message is unreadable; dropped");
            metrics.scheduled_delivery("(unreadable)", "dropped", None);
            return Next::Done;
        }
    };
    let subject = match intern_subject(&header.subject) {
        Ok(subject) => subject,
        Err(reason) => {
            tracing::error!(id, subject = header.subject, reason, "scheduled message cannot be delivered; dropped");
            metrics.scheduled_delivery("(invalid)", "dropped", None);
            return Next::Done;
        }
    };
    let ids = (&header.message_id, &header.correlation_id, &header.traceparent, header.tracestate.as_deref());
    let Some(meta) = delivery::metadata(ids.0, ids.1, None, Some(ids.2), ids.3) else {
        tracing::error!(id, "scheduled message has no valid message id; dropped");
        return Next::Done;
    };
    let content_type = header.content_type.as_deref().unwrap_or(Json::CONTENT_TYPE);
    let message = Encoded { subject, payload: payload.to_vec(), content_type, durable: header.durable };
    let mark = instance.transport.mark();
    let mut outcome = delivery::deliver(instance, header.kind, message, meta).await;
    // A core NATS publish is in the client's buffer: on the server before
    // the item is removed.
    if matches!(outcome, Outcome::Delivered)
        && header.kind == Kind::Publish
        && let Err(error) = instance.transport.confirm(mark).await
    {
        outcome = Outcome::Transient(error);
    }
    let late = Duration::from_millis(instance.clock.epoch_ms().saturating_sub(header.due));
    match outcome {
        Outcome::Delivered => {
            tracing::debug!(id, subject, "scheduled message delivered");
            metrics.scheduled_delivery(subject, "delivered", Some(late));
        }
        Outcome::Refused(error) => {
            tracing::warn!(id, subject, %error, "scheduled command handled with an error");
            metrics.scheduled_delivery(subject, "delivered", Some(late));
        }
        Outcome::Transient(error) => {
            let pause = (late / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
            crate::logging::warn_limited!(
                subject,
                "scheduled",
                id,
                subject,
                %error,
                retry_in = ?pause,
                "scheduled message not delivered; trying again"
            );
            metrics.scheduled_delivery(subject, "retried", None);
            return Next::Again(pause);
        }
        Outcome::Undeliverable(error) => {
            tracing::error!(id, subject, %error, "scheduled message cannot be delivered; dropped");
            metrics.scheduled_delivery(subject, "dropped", None);
        }
    }
    Next::Done
}

/// A stored item: its header and its payload.
fn read(item: &[u8]) -> std::result::Result<(Header, &[u8]), String> {
    let end = item.iter().position(|b| *b == b'\n').ok_or("no header")?;
    let header: Header = serde_json::from_slice(&item[..end]).map_err(|e| format!("its header does not parse: {e}"))?;
    // Header values go on the wire: printable, short.
    let texts = [Some(&header.traceparent), header.content_type.as_ref(), header.tracestate.as_ref()];
    if !texts.into_iter().flatten().all(|t| delivery::printable(t)) {
        return Err("its header has a value that cannot go on the wire".into());
    }
    Ok((header, &item[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::MessageId;

    #[test]
    fn an_item_is_a_header_line_and_the_payload_bytes() {
        let header = Header {
            kind: Kind::Send,
            subject: "orders.remind".into(),
            content_type: Some("application/octet-stream".into()),
            durable: false,
            message_id: MessageId::new().to_string(),
            correlation_id: MessageId::new().to_string(),
            traceparent: crate::trace::TraceContext::root(crate::trace::TraceId::random()).traceparent(),
            tracestate: None,
            due: 42,
        };
        let mut item = serde_json::to_vec(&header).unwrap();
        item.push(b'\n');
        item.extend_from_slice(b"\n\x00binary\n");
        let (read, payload) = read(&item).unwrap();
        assert_eq!((read.kind, read.subject.as_str(), read.due), (Kind::Send, "orders.remind", 42));
        assert_eq!(payload, b"\n\x00binary\n");
        assert!(super::read(b"no header at all").is_err());
        let mut bad = serde_json::to_vec(&Header { content_type: Some("a\r\nb".into()), ..read }).unwrap();
        bad.push(b'\n');
        assert!(super::read(&bad).unwrap_err().contains("cannot go on the wire"));
    }
}
