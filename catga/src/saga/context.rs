//! What a saga step gets besides the data: the [`SagaContext`], whose sends
//! and publishes carry deterministic message ids.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::app::App;
use crate::error::Result;
use crate::instance::SendOptions;
use crate::message::{Command, Event};
use crate::metadata::{MessageId, Metadata};
use crate::saga::status::Direction;
use crate::trace::{TraceContext, TraceId};

/// What a step gets besides the data: sending and publishing with
/// deterministic message ids, and the saga's identity.
pub struct SagaContext {
    app: App,
    saga: &'static str,
    id: String,
    step: &'static str,
    step_index: usize,
    direction: Direction,
    attempt: u32,
    sends: AtomicU32,
    /// This step's span: a child of the span that started the saga.
    trace: TraceContext,
}

impl SagaContext {
    pub(crate) fn new(
        app: App,
        saga: &'static str,
        id: String,
        step: (&'static str, usize),
        direction: Direction,
        attempt: u32,
        origin: Option<TraceContext>,
    ) -> SagaContext {
        // A state written before the trace was kept: the saga's own trace,
        // whose id is its correlation id (the same for all its steps).
        let origin = origin.unwrap_or_else(|| {
            let correlation = correlation_id(saga, &id).as_u128();
            TraceContext::root(TraceId::from_u128(correlation).unwrap_or_else(TraceId::random))
        });
        let trace = origin.child();
        SagaContext {
            app,
            saga,
            id,
            step: step.0,
            step_index: step.1,
            direction,
            attempt,
            sends: AtomicU32::new(0),
            trace,
        }
    }
}

impl SagaContext {
    /// The saga's name.
    pub fn saga(&self) -> &'static str {
        self.saga
    }

    /// This saga's id.
    pub fn saga_id(&self) -> &str {
        &self.id
    }

    /// The step (or, compensating, the step being undone).
    pub fn step(&self) -> &'static str {
        self.step
    }

    /// Forward or compensating.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// 1 on the first attempt of this step, counting attempts made by
    /// instances that died.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// This step's span: a span of the trace of the request that started
    /// the saga, whose parent is that request's handling (on every attempt
    /// and whichever instance runs it: a saga parked for a long time does
    /// not keep one span open, each step points back at its starter). The
    /// step's sends and publishes are children of it.
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// The instance running the step.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The message id the next send or publish of this step will carry:
    /// the same on every re-run of the step, so idempotent receivers
    /// apply it once.
    fn next_metadata(&self) -> Metadata {
        let n = self.sends.fetch_add(1, Ordering::Relaxed);
        let message_id = deterministic_id(&[
            self.saga.as_bytes(),
            self.id.as_bytes(),
            &(self.step_index as u64).to_le_bytes(),
            &[self.direction as u8],
            &n.to_le_bytes(),
        ]);
        Metadata::with_ids(message_id, correlation_id(self.saga, &self.id), None).in_trace(&self.trace)
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    /// This step's own ids (deterministic: the same on every run of it),
    /// what the messages it writes to an outbox descend from.
    pub(crate) fn metadata(&self) -> Metadata {
        let step_id = deterministic_id(&[
            self.saga.as_bytes(),
            self.id.as_bytes(),
            &(self.step_index as u64).to_le_bytes(),
            &[self.direction as u8],
        ]);
        Metadata::with_ids(step_id, correlation_id(self.saga, &self.id), None).in_trace(&self.trace)
    }

    /// Send a command with this step's deterministic message id.
    pub async fn send<C: Command>(&self, command: C) -> Result<C::Reply> {
        self.app.send_as(command, self.next_metadata(), SendOptions::default()).await
    }

    /// [`send`](Self::send) with options.
    pub async fn send_with<C: Command>(&self, command: C, options: SendOptions) -> Result<C::Reply> {
        self.app.send_as(command, self.next_metadata(), options).await
    }

    /// Publish an event with this step's deterministic message id.
    pub async fn publish<E: Event>(&self, event: E) -> Result<()> {
        self.app.publish_as(event, self.next_metadata()).await
    }
}

/// A 128-bit id from the parts: FNV-1a, twice with different bases (stable
/// across builds and platforms, unlike std's hasher).
/// The correlation id of everything a saga sends.
fn correlation_id(saga: &str, id: &str) -> MessageId {
    deterministic_id(&[saga.as_bytes(), id.as_bytes()])
}

pub(crate) fn deterministic_id(parts: &[&[u8]]) -> MessageId {
    let fnv = |mut h: u64| {
        for part in parts {
            for &b in part.iter().chain(&[0xff]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    };
    MessageId::from_u128((u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x6c62_272e_07bb_0142)))
}
