//! Message ids: [`MessageId`] and the [`Metadata`] every message carries.

use std::fmt;

use tokio::time::Instant;

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
/// - `causation_id`: the id of the message whose handler sent this one;
/// - `deadline`: when its sender stops waiting for the outcome (commands
///   only; inherited by the sends of its handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// This message's id.
    pub message_id: MessageId,
    /// The id shared by a whole conversation.
    pub correlation_id: MessageId,
    /// The message that caused this one, if it was sent from a handler.
    pub causation_id: Option<MessageId>,
    /// When the sender of a command stops waiting for its reply (on this
    /// instance's monotonic clock); `None` for events and for messages from
    /// senders that set no deadline.
    pub deadline: Option<Instant>,
}

impl Metadata {
    /// Metadata of a message that starts a conversation.
    pub fn root() -> Self {
        let id = MessageId::new();
        Metadata { message_id: id, correlation_id: id, causation_id: None, deadline: None }
    }

    /// Metadata with explicit ids and no deadline (for deterministic ids,
    /// e.g. a saga step's sends).
    pub fn with_ids(message_id: MessageId, correlation_id: MessageId, causation_id: Option<MessageId>) -> Self {
        Metadata { message_id, correlation_id, causation_id, deadline: None }
    }

    /// Metadata of a message sent while handling `self`: same correlation,
    /// caused by `self`, within the same deadline.
    pub fn child(&self) -> Self {
        Metadata {
            message_id: MessageId::new(),
            correlation_id: self.correlation_id,
            causation_id: Some(self.message_id),
            deadline: self.deadline,
        }
    }

    /// The time left until the deadline (zero once it passed), if there is one.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}
