//! The handler registry: one static [`HandlerRecord`] per annotated handler,
//! submitted with `inventory` by `#[command]` / `#[event]` and collected once
//! at startup. No runtime reflection: a record holds `&'static str`s and a
//! pointer to a static, typed entry that the transport calls.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;

use crate::dispatch::{Delivery, RawReply};
use crate::error::{Error, HandlerError};
use crate::future::BoxFuture;
use crate::instance::InFlight;
use crate::message::{Command, Event, Message};
use crate::metadata::Metadata;
use crate::metrics::HandlerLabels;

/// Whether a handler answers commands or receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandlerKind {
    /// Request-reply: one handler instance per request.
    Command,
    /// Publish-subscribe: every broadcast subscriber, one member per queue group.
    Event,
}

/// A handler, as `#[command]` or `#[event]` registered it.
pub struct HandlerRecord {
    /// Command or event.
    pub kind: HandlerKind,
    /// The handler function's name.
    pub name: &'static str,
    /// The module the handler is in (`module_path!()`).
    pub module: &'static str,
    /// The subject it subscribes to (the message type's subject).
    pub subject: &'static str,
    /// The queue group; `None` is "the service name" for commands and
    /// "broadcast" for events.
    pub queue: Option<&'static str>,
    #[doc(hidden)]
    pub message_type: fn() -> &'static str,
    #[doc(hidden)]
    pub reply_type: fn() -> &'static str,
    /// A handler timeout in milliseconds from the attribute, if any.
    pub timeout_ms: Option<u64>,
    /// `idempotent` from the attribute: `Some(true)` records results by
    /// message id, `Some(false)` opts out of the service default, `None`
    /// follows [`Config::idempotent_by_default`](crate::Config::idempotent_by_default).
    pub idempotent: Option<bool>,
    /// Source file of the handler.
    pub file: &'static str,
    /// Source line of the handler.
    pub line: u32,
    #[doc(hidden)]
    pub entry: &'static dyn Entry,
}

inventory::collect!(HandlerRecord);

impl HandlerRecord {
    /// The message type's full name.
    pub fn message_type(&self) -> &'static str {
        (self.message_type)()
    }

    /// The reply type's full name (`()` for events).
    pub fn reply_type(&self) -> &'static str {
        (self.reply_type)()
    }

    /// `file:line (module::name)`, for error messages.
    pub fn location(&self) -> String {
        format!("{}:{} ({}::{})", self.file, self.line, self.module, self.name)
    }

    /// Whether its message is durable (`#[catga(durable)]`): over NATS the
    /// handler pulls from a JetStream consumer instead of subscribing.
    pub fn durable(&self) -> bool {
        self.entry.durable()
    }

    /// The queue group this handler joins in a service called `service`:
    /// `None` means broadcast (events only).
    pub fn queue_group<'a>(&'a self, service: &'a str) -> Option<&'a str> {
        match (self.kind, self.queue) {
            (_, Some(q)) => Some(q),
            (HandlerKind::Command, None) => Some(service),
            (HandlerKind::Event, None) => None,
        }
    }
}

impl fmt::Debug for HandlerRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRecord")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("subject", &self.subject)
            .field("queue", &self.queue)
            .field("message_type", &self.message_type())
            .field("reply_type", &self.reply_type())
            .field("location", &format_args!("{}:{}", self.file, self.line))
            .finish()
    }
}

/// Every handler linked into this program, sorted by kind, subject, queue
/// and name (inventory's own order is unspecified).
///
/// A handler in a library crate that nothing in the binary references is not
/// linked, so it is not here: add `use my_handlers as _;` to `main.rs`.
pub fn handlers() -> Vec<&'static HandlerRecord> {
    let mut all: Vec<_> = inventory::iter::<HandlerRecord>.into_iter().collect();
    all.sort_by(|a, b| {
        (a.kind, a.subject, a.queue, a.name, a.file, a.line).cmp(&(b.kind, b.subject, b.queue, b.name, b.file, b.line))
    });
    all
}

/// Check that the handlers one process subscribes can coexist: one command
/// handler per subject, and one event handler per subject and queue group
/// (two in one group would split the events between them, not both get
/// them). The error names both locations.
///
/// ```
/// let all = catga::registry::handlers();
/// catga::registry::validate(&all, "my-service").unwrap();
/// ```
pub fn validate(handlers: &[&'static HandlerRecord], service: &str) -> Result<(), Error> {
    let mut seen: HashMap<(HandlerKind, &str, Option<&str>), &HandlerRecord> = HashMap::new();
    for &h in handlers {
        // Commands: one handler per subject, whatever its queue group (two
        // groups would both run every command over NATS).
        let queue = if h.kind == HandlerKind::Command { None } else { h.queue_group(service) };
        let key = (h.kind, h.subject, queue);
        // Broadcast event handlers may be many: each gets every event.
        if key.0 == HandlerKind::Event && key.2.is_none() {
            continue;
        }
        if let Some(first) = seen.insert(key, h) {
            let (what, queue_hint) = match h.kind {
                HandlerKind::Command => ("command handler".to_owned(), ""),
                HandlerKind::Event => (
                    format!("event handler in queue group \"{}\"", key.2.unwrap_or_default()),
                    ", or put it in another queue group",
                ),
            };
            return Err(Error::DuplicateHandler {
                what,
                subject: h.subject,
                first: first.location(),
                second: h.location(),
                queue_hint,
            });
        }
    }
    Ok(())
}

/// A future of a type-erased (bytes in, bytes out) handling.
pub(crate) type RawFuture = BoxFuture<'static, Result<RawReply, HandlerError>>;

/// A handler's typed entry point, erased so a record can point at it.
#[doc(hidden)]
pub trait Entry: Send + Sync + 'static {
    /// For the typed fast path: downcast to `CommandEntry<C>`/`EventEntry<E>`.
    fn as_any(&self) -> &dyn Any;
    /// The message's [`Message::DURABLE`](crate::Message::DURABLE).
    fn durable(&self) -> bool;
    /// Decode `payload` with the message's codec, handle it, encode the reply.
    /// For an event the future resolves once the handler is started.
    fn call_raw(
        &self,
        payload: &[u8],
        record: &'static HandlerRecord,
        in_flight: InFlight,
        meta: Metadata,
    ) -> RawFuture;
    /// Like [`call_raw`](Entry::call_raw), but an event's future resolves
    /// with the handler's outcome (a durable delivery acknowledges by it).
    fn call_to_end(
        &self,
        payload: &[u8],
        record: &'static HandlerRecord,
        in_flight: InFlight,
        meta: Metadata,
    ) -> RawFuture {
        self.call_raw(payload, record, in_flight, meta)
    }
}

impl HandlerRecord {
    /// The labels of this handler's metrics.
    pub(crate) fn labels(&self) -> HandlerLabels {
        HandlerLabels { handler: self.name, subject: self.subject }
    }
}

/// Decode a payload for `record`'s handler; one that cannot be decoded is
/// counted as a refused handling.
fn decoded<M: Message>(
    payload: &[u8],
    record: &'static HandlerRecord,
    in_flight: &InFlight,
) -> Result<M, HandlerError> {
    crate::dispatch::decode::<M>(payload)
        .inspect_err(|e| in_flight.instance().metrics.refused(record.labels(), e.code()))
}

/// A generated command thunk: runs one delivery through the pipeline.
#[doc(hidden)]
pub type CommandThunk<C> = fn(Delivery<C>) -> BoxFuture<'static, Result<<C as Command>::Reply, HandlerError>>;

/// The typed entry of a command handler.
#[doc(hidden)]
pub struct CommandEntry<C: Command> {
    pub(crate) thunk: CommandThunk<C>,
}

impl<C: Command> CommandEntry<C> {
    #[doc(hidden)]
    pub const fn new(thunk: CommandThunk<C>) -> Self {
        CommandEntry { thunk }
    }
}

impl<C: Command> Entry for CommandEntry<C> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn durable(&self) -> bool {
        C::DURABLE
    }

    fn call_raw(
        &self,
        payload: &[u8],
        record: &'static HandlerRecord,
        in_flight: InFlight,
        meta: Metadata,
    ) -> RawFuture {
        let handling = decoded::<C>(payload, record, &in_flight)
            .map(|message| (self.thunk)(Delivery::new(message, record, in_flight, meta)));
        Box::pin(async move {
            let reply = handling?.await?;
            crate::dispatch::encode_reply::<C>(&reply)
        })
    }
}

/// The typed entry of an event handler.
#[doc(hidden)]
pub struct EventEntry<E: Event> {
    pub(crate) thunk: fn(Delivery<E>),
}

impl<E: Event> EventEntry<E> {
    #[doc(hidden)]
    pub const fn new(thunk: fn(Delivery<E>)) -> Self {
        EventEntry { thunk }
    }
}

impl<E: Event> Entry for EventEntry<E> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn durable(&self) -> bool {
        E::DURABLE
    }

    fn call_to_end(
        &self,
        payload: &[u8],
        record: &'static HandlerRecord,
        in_flight: InFlight,
        meta: Metadata,
    ) -> RawFuture {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let started = decoded::<E>(payload, record, &in_flight)
            .map(|message| (self.thunk)(Delivery::new(message, record, in_flight, meta).reporting_to(done)));
        Box::pin(async move {
            started?;
            match outcome.await {
                Ok(result) => result.map(|()| RawReply::default()),
                Err(_) => Err(HandlerError::new(
                    HandlerError::INTERNAL,
                    format!("the handling by `{}` ended without an outcome (its task was cancelled)", record.name),
                )),
            }
        })
    }

    fn call_raw(
        &self,
        payload: &[u8],
        record: &'static HandlerRecord,
        in_flight: InFlight,
        meta: Metadata,
    ) -> RawFuture {
        let delivered = decoded::<E>(payload, record, &in_flight)
            .map(|message| (self.thunk)(Delivery::new(message, record, in_flight, meta)));
        Box::pin(std::future::ready(delivered.map(|()| RawReply::default())))
    }
}
