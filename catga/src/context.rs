//! Message metadata (ids) and the [`Context`] a handler receives.

use std::fmt;
use std::future::Future;

use crate::app::{App, SendOptions};
use crate::error::Result;
use crate::message::{Command, Event};

/// A 128-bit message id, shown as 32 lowercase hex digits.
///
/// ```
/// use catga::MessageId;
/// let id = MessageId::new();
/// assert_eq!(id.to_string().len(), 32);
/// assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    // Two halves rather than a `u128`: 8-byte alignment keeps the metadata
    // (and every future that carries it) small.
    hi: u64,
    lo: u64,
}

impl MessageId {
    /// A fresh random id (not a syscall: a thread-local generator seeded once).
    pub fn new() -> Self {
        MessageId { hi: fastrand::u64(..), lo: fastrand::u64(..) }
    }

    /// The id as a number.
    pub const fn as_u128(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }

    /// An id from a number (for deterministic ids, e.g. a saga step's).
    pub const fn from_u128(v: u128) -> Self {
        MessageId { hi: (v >> 64) as u64, lo: v as u64 }
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.as_u128())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(MessageId::from_u128)
    }
}

/// The ids every message carries.
///
/// - `message_id`: unique per message (retries of one send reuse it);
/// - `correlation_id`: shared by everything one original request caused;
/// - `causation_id`: the id of the message whose handler sent this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// This message's id.
    pub message_id: MessageId,
    /// The id shared by a whole conversation.
    pub correlation_id: MessageId,
    /// The message that caused this one, if it was sent from a handler.
    pub causation_id: Option<MessageId>,
}

impl Metadata {
    /// Metadata of a message that starts a conversation.
    pub fn root() -> Self {
        let id = MessageId::new();
        Metadata { message_id: id, correlation_id: id, causation_id: None }
    }

    /// Metadata of a message sent while handling `self`: same correlation,
    /// caused by `self`.
    pub fn child(&self) -> Self {
        Metadata {
            message_id: MessageId::new(),
            correlation_id: self.correlation_id,
            causation_id: Some(self.message_id),
        }
    }
}

/// What a handler knows about the message it handles, and its way to send
/// and publish: messages sent through the context carry the same
/// correlation id and name this message as their cause.
///
/// ```
/// use catga::prelude::*;
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # #[catga(subject = "doc.ctx.seen")]
/// # pub struct Seen { by: String }
/// # #[derive(Debug, Serialize, Deserialize, Command)]
/// # #[catga(subject = "doc.ctx.ping", reply = String)]
/// # pub struct Ping;
/// #[catga::command(queue = "doc")]
/// async fn ping(_: Ping, ctx: Context) -> Result<String, HandlerError> {
///     ctx.publish(Seen { by: ctx.instance_id().to_owned() }).await?;
///     Ok(format!("pong, correlation {}", ctx.metadata().correlation_id))
/// }
/// ```
#[derive(Clone)]
pub struct Context {
    app: App,
    meta: Metadata,
    subject: &'static str,
}

impl Context {
    pub(crate) fn new(app: App, meta: Metadata, subject: &'static str) -> Self {
        Context { app, meta, subject }
    }

    /// The ids of the message being handled.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The id of the message being handled.
    pub fn message_id(&self) -> MessageId {
        self.meta.message_id
    }

    /// The subject of the message being handled.
    pub fn subject(&self) -> &'static str {
        self.subject
    }

    /// The service this instance belongs to.
    pub fn service(&self) -> &str {
        self.app.service()
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        self.app.instance_id()
    }

    /// The value of type `T` shared through
    /// [`Builder::with_state`](crate::Builder::with_state); the error names
    /// the missing type.
    pub fn state<T: Send + Sync + 'static>(&self) -> std::result::Result<&T, crate::HandlerError> {
        self.app.state::<T>()
    }

    /// The store shared by every instance (for your own records, e.g. an
    /// effects ledger keyed by [`message_id`](Context::message_id)).
    pub fn store(&self) -> &crate::store::Store {
        self.app.store()
    }

    /// The instance handling this message. Holding a `Context` (or this
    /// handle) beyond the handling keeps the instance alive and subscribed
    /// until [`App::shutdown`].
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Send a command on behalf of this message (same correlation id).
    pub fn send<C: Command>(&self, command: C) -> impl Future<Output = Result<C::Reply>> + Send + '_ {
        self.app.send_as(command, self.meta.child(), SendOptions::default())
    }

    /// Send with explicit options on behalf of this message.
    pub fn send_with<C: Command>(
        &self,
        command: C,
        options: SendOptions,
    ) -> impl Future<Output = Result<C::Reply>> + Send + '_ {
        self.app.send_as(command, self.meta.child(), options)
    }

    /// Publish an event on behalf of this message (same correlation id).
    pub fn publish<E: Event>(&self, event: E) -> impl Future<Output = Result<()>> + Send + '_ {
        self.app.publish_as(event, self.meta.child())
    }
}
