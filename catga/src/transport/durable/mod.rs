//! Durable delivery over NATS JetStream, for `#[catga(durable)]` contracts.
//!
//! Core NATS is at-most-once: a message in flight when an instance dies is
//! gone. A durable message is instead published into a JetStream stream and
//! the sender returns (or starts waiting for the reply) only once the
//! server has *stored* it; handlers pull it from a consumer and it is
//! redelivered until a handler succeeds — at-least-once.
//!
//! - **Streams** (created by every instance with a durable handler, at
//!   startup, idempotently): one per durable subject, named by
//!   [`stream_name`], file storage. Commands: work-queue retention (a
//!   message is deleted once acknowledged; exactly one consumer, the
//!   handler's queue group). Events: limits retention with a maximum age
//!   ([`Config::event_max_age`](crate::Config::event_max_age)), one
//!   consumer per queue group.
//! - **Consumers**: pull, explicit ack, `ack_wait`, `max_deliver`. An
//!   instance pulls only as many messages as it has free handling slots
//!   (`max_in_flight` per handler), so that is the per-instance bound;
//!   the consumer's `max_ack_pending` is left at the server's default
//!   (1000), a ceiling for the whole group — setting it to one instance's
//!   `max_in_flight` would cap every instance of the group together at
//!   what one may run. A queue group's consumer is
//!   durable, named after the group; it receives what was published since
//!   it was first created. A broadcast event handler gets a consumer per
//!   instance that the server removes once the instance is gone.
//! - **Handling**: success → the reply (commands), *then* the ack, so a
//!   crash in between redelivers instead of losing the reply. An error →
//!   a delayed negative ack (redelivery with backoff), except on the last
//!   delivery or for an `invalid` message (retrying cannot help): then the
//!   message is copied to the dead-letter stream [`DLQ_STREAM`] with the
//!   reason, the error reply is sent, and the message is terminated (so is
//!   a command whose `Catga-Deadline-At` passed before it ran, code
//!   `deadline`). A running handling tells the server it is alive every
//!   `ack_wait / 4`, from the instance's I/O thread
//!   ([`super::pulse`]), so only a dead instance's messages are redelivered.
//! - **Replies** to a durable command go to the connection's reply inbox
//!   ([`super::inbox`]), named in the `Catga-Reply-To` header.
//!
//! The wire format is in `docs/WIRE.md` ("Durable delivery").
//!
//! ## Where things are
//! - `topology`: stream and consumer names, settings, creating them;
//! - `sender`: storing a message (with retries), and a durable command's
//!   wait for its reply;
//! - `consumer`: a durable handler's pull loop and the handling of one
//!   message (keep-alive, reply, ack);
//! - `decision`: ack, redeliver later, or dead-letter — a pure function of
//!   the outcome, the delivery count and the settings;
//! - `dlq`: the dead-letter stream — writing a letter, listing, replaying.

pub(crate) mod consumer;
mod decision;
pub(crate) mod dlq;
pub(crate) mod sender;
pub(crate) mod topology;

use crate::error::Error;

fn js_error(subject: &'static str, what: impl std::fmt::Display) -> Error {
    Error::Transport { subject, reason: what.to_string() }
}
