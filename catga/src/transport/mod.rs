//! Transports move messages between instances. Handler code never sees
//! which one runs: the same registry entries are subscribed to either.
//!
//! - [`memory`]: the embedded default — instances in one process share a
//!   [`MemoryBus`](memory::MemoryBus); values pass without serializing.

pub mod memory;

use std::time::Duration;

use crate::app::AppInner;
use crate::context::Metadata;
use crate::error::Result;
use crate::message::{Command, Event};
use crate::registry::HandlerRecord;

/// The transport an instance runs on. An enum, not a trait object: sending
/// is generic over the message type, and the set of transports is closed.
pub(crate) enum Transport {
    Memory(memory::MemoryBus),
}

impl Transport {
    pub(crate) fn subscribe(&self, app: &std::sync::Arc<AppInner>, handlers: &[&'static HandlerRecord]) {
        match self {
            Transport::Memory(bus) => bus.subscribe(app, handlers),
        }
    }

    /// Stop routing new messages to this instance.
    pub(crate) fn unsubscribe(&self, app: &AppInner) {
        match self {
            Transport::Memory(bus) => bus.unsubscribe(app),
        }
    }

    /// Route a command and start its handling; the returned future
    /// resolves to the reply.
    pub(crate) fn send<C: Command>(&self, command: C, meta: Metadata, timeout: Duration) -> memory::Pending<C::Reply> {
        match self {
            Transport::Memory(bus) => bus.send(command, meta, timeout),
        }
    }

    pub(crate) fn publish<E: Event>(&self, event: E, meta: Metadata) -> Result<()> {
        match self {
            Transport::Memory(bus) => {
                bus.publish(event, meta);
                Ok(())
            }
        }
    }
}
