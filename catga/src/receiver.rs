//! The one inbound entry for transports: a [`Receiver`] is a handler's record
//! plus a weak reference to the instance it was subscribed for. Every
//! transport admits and accounts a delivery through it, so the admission
//! protocol ([`crate::instance`]) is written once:
//!
//! - [`Receiver::admit`] — at routing time (the in-memory bus): count the
//!   handling, refuse while draining (the bus then tries another member);
//! - [`Receiver::accept`] — for a message a server already delivered here
//!   (NATS, JetStream): it is ours even while draining. It counts twice: the
//!   handling itself (holding the transport's handling slot, so an event
//!   handler that runs on its own task keeps it until it ends), and a
//!   [`Replying`] count the transport holds until the reply (and ack) are
//!   handed to the client — so a drain never closes between a handler's end
//!   and its reply.
//!
//! Holding a receiver keeps nothing alive: once every `App` handle is
//! dropped, admission fails and the transport stops serving it.

use std::sync::{Arc, Weak};

use tokio::sync::OwnedSemaphorePermit;

use crate::config::Config;
use crate::instance::{InFlight, Instance};
use crate::registry::HandlerRecord;

/// A handler subscribed for one instance.
#[derive(Clone)]
pub(crate) struct Receiver {
    record: &'static HandlerRecord,
    instance: Weak<Instance>,
}

/// Held by a network transport until the reply (and ack) of a handling are
/// handed to the client; counts as in flight meanwhile.
pub(crate) struct Replying {
    _count: InFlight,
}

impl Receiver {
    pub(crate) fn new(instance: &Arc<Instance>, record: &'static HandlerRecord) -> Receiver {
        Receiver { record, instance: Arc::downgrade(instance) }
    }

    /// The handler.
    pub(crate) fn record(&self) -> &'static HandlerRecord {
        self.record
    }

    /// Whether the instance still exists (some `App` handle is alive).
    pub(crate) fn is_live(&self) -> bool {
        self.instance.strong_count() > 0
    }

    /// Whether this receiver belongs to `instance`.
    pub(crate) fn is_for(&self, instance: &Instance) -> bool {
        std::ptr::eq(self.instance.as_ptr(), instance)
    }

    /// The instance's settings, while it exists.
    pub(crate) fn config(&self) -> Option<Config> {
        Some(self.instance.upgrade()?.config.clone())
    }

    /// Routing-time admission: `None` when the instance is gone or draining.
    pub(crate) fn admit(&self) -> Option<InFlight> {
        InFlight::admit(self.instance.upgrade()?)
    }

    /// A message the server delivered here, holding handling slot `slot`:
    /// the handling's count and the reply's. `None` when the instance is gone.
    pub(crate) fn accept(&self, slot: OwnedSemaphorePermit) -> Option<(InFlight, Replying)> {
        let instance = self.instance.upgrade()?;
        let replying = Replying { _count: InFlight::count(instance.clone()) };
        Some((InFlight::count(instance).holding(slot), replying))
    }
}
