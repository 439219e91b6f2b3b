//! Message ids: [`MessageId`] and the [`Metadata`] every message carries.

use std::fmt;

use tokio::time::Instant;

use crate::trace::{TraceContext, TraceId};

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
        crate::trace::write_hex::<32>(f, self.as_u128())
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
///   only; inherited by the sends of its handler);
/// - `trace`: the W3C trace context of this hop (see [`TraceContext`]).
///
/// `Clone`, not `Copy`: the trace context's `tracestate` is shared
/// (`Arc<str>`), so a clone costs a reference count increment when the
/// message has one and nothing more otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The W3C trace context of this hop. On a message being sent, the
    /// send's own span (its parent: the handling or saga step it is sent
    /// from); in a handler's [`Context`](crate::Context), the handling's
    /// span, whose parent is the send it received. A new conversation
    /// starts a new trace whose id is its correlation id.
    pub trace: TraceContext,
}

impl Metadata {
    /// Metadata of a message that starts a conversation.
    pub fn root() -> Self {
        let id = MessageId::new();
        Metadata { message_id: id, correlation_id: id, causation_id: None, deadline: None, trace: new_trace(id) }
    }

    /// Metadata with explicit ids and no deadline (for deterministic ids,
    /// e.g. a saga step's sends), in a new trace whose id is the
    /// correlation id (set [`trace`](Metadata::trace) to continue another).
    pub fn with_ids(message_id: MessageId, correlation_id: MessageId, causation_id: Option<MessageId>) -> Self {
        Metadata { message_id, correlation_id, causation_id, deadline: None, trace: new_trace(correlation_id) }
    }

    /// This metadata in the trace of `trace`: the span becomes a child of
    /// `trace` (a fresh span id), in its trace, with its tracestate.
    pub fn in_trace(mut self, trace: &TraceContext) -> Self {
        self.trace = trace.child();
        self
    }

    /// Metadata of a message sent while handling `self`: same correlation,
    /// caused by `self`, within the same deadline, its span a child of
    /// `self`'s (same trace, a fresh span id).
    pub fn child(&self) -> Self {
        Metadata {
            message_id: MessageId::new(),
            correlation_id: self.correlation_id,
            causation_id: Some(self.message_id),
            deadline: self.deadline,
            trace: self.trace.child(),
        }
    }

    /// The metadata of the handling of a delivered message: the same, in a
    /// span of its own whose parent is the send's span. Every transport
    /// delivers through this, so in memory and over NATS a handling has the
    /// same place in the trace.
    pub(crate) fn delivered(mut self) -> Self {
        self.trace = self.trace.child();
        self
    }

    /// The time left until the deadline (zero once it passed), if there is one.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// A new trace for a conversation: its id is the correlation id (so a
/// receiver that reads only `traceparent` finds the conversation), or a
/// random one for the all-zero id, which W3C trace context refuses.
fn new_trace(correlation_id: MessageId) -> TraceContext {
    TraceContext::root(TraceId::from_u128(correlation_id.as_u128()).unwrap_or_else(TraceId::random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hop_is_a_span_of_its_own() {
        let sent = Metadata::root();
        assert_eq!(sent.trace.trace_id().as_u128(), sent.correlation_id.as_u128());
        let handling = sent.clone().delivered();
        assert_eq!(handling.message_id, sent.message_id);
        assert_eq!(handling.trace.parent_span_id(), Some(sent.trace.span_id()));
        let reply_send = handling.child();
        assert_eq!(reply_send.trace.trace_id(), sent.trace.trace_id());
        assert_eq!(reply_send.trace.parent_span_id(), Some(handling.trace.span_id()));
        assert_eq!(reply_send.causation_id, Some(sent.message_id));
    }

    #[test]
    fn in_trace_continues_another_trace() {
        let starter = Metadata::root();
        let step_send = Metadata::with_ids(MessageId::new(), MessageId::new(), None).in_trace(&starter.trace);
        assert_eq!(step_send.trace.trace_id(), starter.trace.trace_id());
        assert_eq!(step_send.trace.parent_span_id(), Some(starter.trace.span_id()));
        assert_ne!(step_send.trace.trace_id().as_u128(), step_send.correlation_id.as_u128());
    }

    #[test]
    fn an_all_zero_correlation_id_gets_a_random_trace_id() {
        let meta = Metadata::with_ids(MessageId::new(), MessageId::from_u128(0), None);
        assert_ne!(meta.trace.trace_id().as_u128(), 0);
    }
}
