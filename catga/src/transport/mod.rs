//! Transports move messages between instances. Handler code never sees
//! which one runs: the same registry entries are subscribed to either.
//!
//! - [`memory`]: the embedded default — instances in one process share a
//!   [`MemoryBus`](memory::MemoryBus); values pass without serializing.
//! - `nats`: instances anywhere, over NATS queue groups (set
//!   `CATGA_NATS_URL`); payloads go through the message's codec, with the
//!   wire format of `docs/WIRE.md`, and the NATS service API (`$SRV.*`).
//!   Messages of `#[catga(durable)]` contracts go through JetStream
//!   instead (stored, acknowledged, redelivered, dead-lettered).

mod connection;
mod durable;
pub(crate) mod envelope;
mod inbox;
mod io;
pub mod memory;
pub(crate) mod nats;
mod pulse;
mod request;
mod secure;
mod service;

pub use durable::dlq::{DLQ_PREFIX, DLQ_STREAM, DeadLetter, DeadLetterPage, MAX_PAGE};
pub use durable::topology::stream_name;
pub use envelope::headers;
pub use secure::connect_client;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use crate::error::Result;
use crate::future::BoxFuture;
use crate::instance::Instance;
use crate::message::{Command, Event};
use crate::metadata::Metadata;
use crate::registry::HandlerRecord;

/// The transport an instance runs on. An enum, not a trait object: sending
/// is generic over the message type, and the set of transports is closed.
pub(crate) enum Transport {
    Memory(memory::MemoryBus),
    Nats(nats::Nats),
}

impl Transport {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Transport::Memory(_) => "memory",
            Transport::Nats(_) => "nats",
        }
    }

    /// Whether the transport can carry messages now: the NATS connection is
    /// up (the in-memory bus always is).
    pub(crate) fn connected(&self) -> bool {
        match self {
            Transport::Memory(_) => true,
            Transport::Nats(nats) => nats.connected(),
        }
    }

    /// Start receiving for these handlers.
    pub(crate) async fn subscribe(&self, instance: &Arc<Instance>, handlers: &[&'static HandlerRecord]) -> Result<()> {
        match self {
            Transport::Memory(bus) => {
                bus.subscribe(instance, handlers);
                Ok(())
            }
            Transport::Nats(nats) => nats.subscribe(instance, handlers).await,
        }
    }

    /// Stop receiving new messages; over NATS, drain (messages already
    /// delivered here are still handed to handlers), within `limit`.
    pub(crate) async fn stop_receiving(&self, instance: &Instance, limit: Duration) {
        match self {
            Transport::Memory(bus) => bus.unsubscribe(instance),
            Transport::Nats(nats) => nats.drain(limit).await,
        }
    }

    /// After the last handling: push out what is still buffered and close.
    pub(crate) async fn close(&self) {
        if let Transport::Nats(nats) = self {
            nats.close().await;
        }
    }

    /// Route a command and start its handling; the returned future
    /// resolves to the reply, or to a timeout at `meta.deadline`, `left`
    /// from now.
    pub(crate) fn send<C: Command>(&self, command: C, meta: Metadata, left: Duration) -> Sent<C::Reply> {
        match self {
            Transport::Memory(bus) => Sent::Memory(bus.send(command, meta, left)),
            Transport::Nats(nats) => Sent::Nats(Box::pin(nats.clone().send::<C>(command, meta))),
        }
    }

    pub(crate) async fn publish<E: Event>(&self, event: E, meta: Metadata) -> Result<()> {
        match self {
            Transport::Memory(bus) => {
                bus.publish(event, meta);
                Ok(())
            }
            Transport::Nats(nats) => nats.publish(event, meta).await,
        }
    }

    /// Send a command already encoded (its type may not be linked here)
    /// and wait for its reply, as its codec wrote it.
    pub(crate) async fn send_encoded(&self, message: Encoded<'_>, meta: Metadata, left: Duration) -> Result<Vec<u8>> {
        match self {
            Transport::Memory(bus) => bus.send_encoded(message, meta, left).await,
            Transport::Nats(nats) => {
                let subject = message.subject;
                let reply = nats.clone().request(message, meta).await?;
                match envelope::read_reply(&reply) {
                    envelope::ReplyPart::Final(Ok(body)) => Ok(body.to_vec()),
                    envelope::ReplyPart::Final(Err(error)) => Err(crate::Error::Handler { subject, error }),
                    envelope::ReplyPart::Working => Err(crate::Error::Transport {
                        subject,
                        reason: "a liveness signal was taken for the reply (a bug in catga)".into(),
                    }),
                }
            }
        }
    }

    /// Publish an event already encoded (its type may not be linked here).
    pub(crate) async fn publish_encoded(&self, message: Encoded<'_>, meta: Metadata) -> Result<()> {
        match self {
            Transport::Memory(bus) => {
                bus.publish_encoded(&message, meta);
                Ok(())
            }
            Transport::Nats(nats) => nats.publish_encoded(message, meta).await,
        }
    }

    /// A mark of the connection now, for [`confirm`](Self::confirm).
    pub(crate) fn mark(&self) -> u64 {
        match self {
            Transport::Memory(_) => 0,
            Transport::Nats(nats) => nats.mark(),
        }
    }

    /// Confirm that everything published since `mark` reached the server
    /// (the in-memory bus delivers at once): what a relay checks before it
    /// marks messages sent.
    pub(crate) async fn confirm(&self, mark: u64) -> Result<()> {
        match self {
            Transport::Memory(_) => Ok(()),
            Transport::Nats(nats) => nats.confirm(mark).await,
        }
    }

    /// Watch the events published on `subject` from now on, as their
    /// payloads.
    pub(crate) async fn watch(&self, subject: &'static str) -> Result<Watch> {
        match self {
            Transport::Memory(bus) => Ok(Watch::Memory(bus.watch(subject))),
            Transport::Nats(nats) => Ok(Watch::Nats(nats.watch(subject).await?)),
        }
    }

    /// Dead letters of `subject` (NATS JetStream only).
    pub(crate) async fn dead_letters(&self, subject: &str) -> Result<Vec<DeadLetter>> {
        match self {
            Transport::Memory(_) => Err(no_dead_letters()),
            Transport::Nats(nats) => nats.dead_letters(subject).await,
        }
    }

    /// A page of the dead letters of `subject` (NATS JetStream only).
    pub(crate) async fn dead_letters_page(&self, subject: &str, from: u64, limit: usize) -> Result<DeadLetterPage> {
        match self {
            Transport::Memory(_) => Err(no_dead_letters()),
            Transport::Nats(nats) => nats.dead_letters_page(subject, from, limit).await,
        }
    }

    /// Re-publish a dead letter and delete it (NATS JetStream only).
    pub(crate) async fn replay_dead_letter(&self, sequence: u64) -> Result<()> {
        match self {
            Transport::Memory(_) => Err(no_dead_letters()),
            Transport::Nats(nats) => nats.replay_dead_letter(sequence).await,
        }
    }

    /// Sends retried so far (NATS only).
    pub(crate) fn retries(&self) -> u64 {
        match self {
            Transport::Memory(_) => 0,
            Transport::Nats(nats) => nats.retries(),
        }
    }
}

fn no_dead_letters() -> crate::Error {
    crate::Error::Config(
        "dead letters exist only on NATS JetStream (durable contracts over CATGA_NATS_URL); in memory a failed \
         handling returns its error to the caller and is not kept"
            .into(),
    )
}

/// A message as its codec wrote it: what a transport sends for a typed
/// message, and all there is of a message whose type this program may not
/// link (a scheduled one).
pub(crate) struct Encoded<'a> {
    pub(crate) subject: &'static str,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: &'a str,
    /// Through JetStream (`#[catga(durable)]`).
    pub(crate) durable: bool,
}

/// The most subjects named at run time in one process (each is kept for
/// the process's life, as a contract's subject is).
const MAX_SUBJECTS: usize = 10_000;

/// A subject named at run time (a scheduled message's, a saga type's
/// outcome subject) as the transports take it: `&'static`, as a contract's.
/// Those name contracts' subjects or saga types, so this set stays small.
pub(crate) fn intern_subject(subject: &str) -> std::result::Result<&'static str, &'static str> {
    static SUBJECTS: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let valid = !subject.is_empty()
        && subject.len() <= 256
        && !subject.split('.').any(|t| t.is_empty() || t == "*" || t == ">")
        && !subject.contains(|c: char| c.is_whitespace());
    if !valid {
        return Err("not a subject a message can be sent to");
    }
    let mut subjects = SUBJECTS.lock().unwrap_or_else(|e| e.into_inner());
    let subjects = subjects.get_or_insert_with(HashSet::new);
    if let Some(known) = subjects.get(subject) {
        return Ok(known);
    }
    if subjects.len() >= MAX_SUBJECTS {
        return Err("too many distinct subjects named at run time (scheduled messages, saga outcomes)");
    }
    let leaked: &'static str = Box::leak(subject.to_owned().into_boxed_str());
    subjects.insert(leaked);
    Ok(leaked)
}

/// The events published on one subject, as a watcher reads them.
pub(crate) enum Watch {
    Memory(tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>),
    Nats(async_nats::Subscriber),
}

impl Watch {
    /// The next event's payload (`None`: the transport closed).
    pub(crate) async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            Watch::Memory(rx) => rx.recv().await,
            Watch::Nats(subscriber) => {
                futures_util::StreamExt::next(subscriber).await.map(|message| message.payload.to_vec())
            }
        }
    }
}

/// A send in progress, on either transport.
pub(crate) enum Sent<R> {
    Memory(memory::Pending<R>),
    /// Network I/O dominates here; one box is noise.
    Nats(BoxFuture<'static, Result<R>>),
}

impl<R> Future for Sent<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<R>> {
        match self.get_mut() {
            Sent::Memory(pending) => Pin::new(pending).poll(cx),
            Sent::Nats(future) => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked_and_interned_once() {
        let a = intern_subject("orders.remind").unwrap();
        let b = intern_subject(&String::from("orders.remind")).unwrap();
        assert!(std::ptr::eq(a, b));
        for bad in ["", "orders.*", "orders.>", "a..b", "has space", ".a"] {
            assert!(intern_subject(bad).is_err(), "{bad:?}");
        }
    }
}
