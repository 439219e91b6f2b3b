//! Message contracts: the types services exchange. A contract carries its own
//! routing (subject, reply type, codec), so a sender that has only the types
//! needs no subject strings and gets a typed reply.
//!
//! Implement them with `#[derive(Command)]` / `#[derive(Event)]` and a
//! `#[catga(...)]` attribute; the derive checks the subject at compile time.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::error::HandlerError;

/// What every message has: a subject, a codec, an optional validation hook.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// The NATS subject this message travels on (checked at compile time).
    const SUBJECT: &'static str;
    /// The codec that puts this message on the wire (JSON unless the
    /// contract says `#[catga(codec = ...)]`).
    type Codec: Codec;
    /// Whether the message is delivered durably: set by `#[catga(durable)]`.
    ///
    /// Over NATS a durable message is published into a JetStream stream
    /// and acknowledged once stored; handlers pull it, and it is redelivered
    /// until a handler succeeds (or dead-lettered after `max_deliver`
    /// attempts) — at-least-once instead of core NATS's at-most-once. The
    /// sender must know, which is why it is part of the contract. In memory
    /// it changes nothing: there is no other process to survive.
    ///
    /// ```
    /// use catga::prelude::*;
    ///
    /// #[derive(Debug, Serialize, Deserialize, Command)]
    /// #[catga(subject = "doc.payments.capture", reply = (), durable)]
    /// pub struct Capture { pub payment_id: String }
    ///
    /// assert!(<Capture as catga::Message>::DURABLE);
    /// ```
    const DURABLE: bool = false;
    /// Runs before every handling; an error here is returned to the caller
    /// with code [`HandlerError::INVALID`] and the handler is not called.
    /// The derive calls [`Validate::validate`] when the contract says
    /// `#[catga(validate)]`, and accepts everything otherwise.
    fn validate(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A request with exactly one handler (one instance of its queue group) and
/// a typed reply.
///
/// ```
/// use catga::prelude::*;
///
/// #[derive(Debug, Serialize, Deserialize, Command)]
/// #[catga(subject = "orders.create", reply = OrderAccepted)]
/// pub struct CreateOrder { pub order_id: String }
///
/// #[derive(Debug, Serialize, Deserialize)]
/// pub struct OrderAccepted { pub order_id: String }
///
/// assert_eq!(<CreateOrder as catga::Message>::SUBJECT, "orders.create");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Catga command",
    label = "this type has no command contract",
    note = "declare it: #[derive(Command)] #[catga(subject = \"...\", reply = ReplyType)]"
)]
pub trait Command: Message {
    /// The handler's successful reply.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}

/// A fact that happened, published once and delivered to every broadcast
/// subscriber and to one member of each queue group.
///
/// ```
/// use catga::prelude::*;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// #[catga(subject = "orders.created")]
/// pub struct OrderCreated { pub order_id: String }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Catga event",
    label = "this type has no event contract",
    note = "declare it: #[derive(Clone, Event)] #[catga(subject = \"...\")]"
)]
pub trait Event: Message + Clone + Sync {}

/// A validation hook for a contract declared with `#[catga(validate)]`.
///
/// ```
/// use catga::prelude::*;
///
/// #[derive(Debug, Serialize, Deserialize, Command)]
/// #[catga(subject = "payments.charge", reply = (), validate)]
/// pub struct Charge { pub amount_cents: u64 }
///
/// impl Validate for Charge {
///     fn validate(&self) -> Result<(), HandlerError> {
///         if self.amount_cents == 0 { return Err(HandlerError::invalid("amount_cents must be > 0")); }
///         Ok(())
///     }
/// }
/// ```
pub trait Validate {
    /// Accept or reject the message before any handler sees it.
    fn validate(&self) -> Result<(), HandlerError>;
}
