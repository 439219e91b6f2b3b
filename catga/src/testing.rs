//! A test harness for your handlers and sagas: one in-memory instance with
//! the handlers and sagas linked into the test, that records every message
//! sent and published and every handling (with its handler and outcome),
//! stands in for commands another service handles, makes handlers fail,
//! and moves time so that deadlines, waits and scheduled messages come due
//! without sleeping.
//!
//! ```
//! use std::time::Duration;
//! use catga::prelude::*;
//! use catga::testing::Harness;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Command)]
//! #[catga(subject = "docs.harness.place", reply = String)]
//! struct PlaceOrder { id: String, cents: u64 }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Command)]
//! #[catga(subject = "docs.harness.charge", reply = String)]
//! struct ChargeCard { cents: u64 }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[catga(subject = "docs.harness.placed")]
//! struct OrderPlaced { id: String, receipt: String }
//!
//! #[catga::command(queue = "orders")]
//! async fn place_order(cmd: PlaceOrder, ctx: Context) -> Result<String, HandlerError> {
//!     // Another service handles `ChargeCard`; the test stands in for it.
//!     let receipt = ctx.send(ChargeCard { cents: cmd.cents }).await?;
//!     ctx.publish(OrderPlaced { id: cmd.id.clone(), receipt: receipt.clone() }).await?;
//!     Ok(receipt)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let harness = Harness::builder().handlers_where(|h| h.subject.starts_with("docs.harness.")).start().await.unwrap();
//! harness.stub(|charge: ChargeCard| Ok(format!("receipt for {}", charge.cents)));
//! let receipt = harness.app().send(PlaceOrder { id: "o-1".into(), cents: 250 }).await.unwrap();
//! assert_eq!(receipt, "receipt for 250");
//! let placed = harness.wait_published(Duration::from_secs(1), |e: &OrderPlaced| e.id == "o-1").await.unwrap();
//! assert_eq!(placed.receipt, "receipt for 250");
//! assert_eq!(harness.sent::<ChargeCard>().len(), 1);
//! assert_eq!(harness.handled().iter().filter(|h| h.handler == "place_order").count(), 1);
//!
//! // The next handling of `PlaceOrder` fails, as a broken dependency would.
//! harness.fail_next::<PlaceOrder>(1, HandlerError::new("unavailable", "on purpose"));
//! let err = harness.app().send(PlaceOrder { id: "o-2".into(), cents: 1 }).await.unwrap_err();
//! assert_eq!(err.code(), Some("unavailable"));
//! assert_eq!(harness.failed().len(), 1);
//! harness.shutdown().await;
//! # }
//! ```
//!
//! An event fan-out: every broadcast handler and one member of each queue
//! group handle it, and the harness sees each handling.
//!
//! ```
//! use std::time::Duration;
//! use catga::prelude::*;
//! use catga::testing::Harness;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[catga(subject = "docs.fanout.shipped")]
//! struct Shipped { order: String }
//!
//! #[catga::event] // every instance
//! async fn update_dashboard(_: Shipped) -> Result<(), HandlerError> { Ok(()) }
//!
//! #[catga::event(queue = "email")] // once per group
//! async fn email_customer(_: Shipped) -> Result<(), HandlerError> { Ok(()) }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let harness = Harness::builder().handlers_where(|h| h.subject.starts_with("docs.fanout.")).start().await.unwrap();
//! harness.app().publish(Shipped { order: "o-1".into() }).await.unwrap();
//! for handler in ["update_dashboard", "email_customer"] {
//!     harness.wait_handled(Duration::from_secs(1), |h| h.handler == handler).await.unwrap();
//! }
//! assert_eq!(harness.published::<Shipped>().len(), 1);
//! assert!(harness.failed().is_empty());
//! # harness.shutdown().await; }
//! ```
//!
//! ## Time
//! The instance reads time through a [`Clock`] that follows tokio's clock
//! (wall-clock readings included), so in a test on a paused runtime
//! (`#[tokio::test(start_paused = true)]`) [`Harness::advance`] moves it:
//! a saga's deadline or a step's wait of ten minutes, or a message
//! scheduled for tomorrow, comes due at once. (A paused runtime also jumps
//! ahead by itself whenever every task waits.)

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::app::App;
use crate::builder::Catga;
use crate::clock::Clock;
use crate::codec::Codec;
use crate::error::{HandlerError, Result};
use crate::message::{Command, Event, Message};
use crate::metadata::{MessageId, Metadata};
use crate::registry::HandlerRecord;
use crate::saga::SagaInfo;
use crate::store::{Key, MemoryStore, Store};
use crate::transport::memory::{MemoryBus, Stub, Tap};

mod recorder;
mod steps;

use recorder::{Fault, Recorder};
use steps::Steps;

/// A running harness: one in-memory instance and what it recorded.
pub struct Harness {
    app: App,
    log: Arc<Log>,
    steps: Arc<Steps>,
}

/// How to start a [`Harness`].
pub struct HarnessBuilder {
    service: String,
    filter: Option<Filter>,
}

/// Which handlers a harness subscribes.
type Filter = Box<dyn Fn(&HandlerRecord) -> bool + Send + Sync>;

/// Whether a recorded message was sent (a command) or published (an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A command, by `send`.
    Sent,
    /// An event, by `publish`.
    Published,
}

/// A message as the harness saw it go through the bus.
#[derive(Clone)]
pub struct Recorded {
    /// Sent or published.
    pub kind: Kind,
    /// Its subject.
    pub subject: &'static str,
    /// Its ids.
    pub message_id: MessageId,
    /// The conversation it belongs to.
    pub correlation_id: MessageId,
    /// The message whose handling sent it, if any.
    pub causation_id: Option<MessageId>,
    payload: Vec<u8>,
}

impl Recorded {
    /// The message as `M`, if it is one (its subject and payload).
    pub fn decode<M: Message>(&self) -> Option<M> {
        (self.subject == M::SUBJECT).then(|| M::Codec::decode(&self.payload).ok()).flatten()
    }
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {} {}", self.kind, self.subject, String::from_utf8_lossy(&self.payload))
    }
}

/// A handling that ran (or was refused), as the harness saw it.
#[derive(Debug, Clone)]
pub struct Handled {
    /// The handler's function name.
    pub handler: &'static str,
    /// The subject it handles.
    pub subject: &'static str,
    /// The message it handled.
    pub message_id: MessageId,
    /// Its error, if it failed.
    pub error: Option<HandlerError>,
}

/// What [`Harness::wait_published`] (and friends) found instead of the
/// message waited for: every message recorded by then.
#[derive(Debug)]
pub struct NotSeen {
    /// What was waited for.
    pub wanted: String,
    /// What went through the bus meanwhile, in order.
    pub seen: Vec<Recorded>,
}

impl fmt::Display for NotSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} did not come; the bus carried {} message(s):", self.wanted, self.seen.len())?;
        for message in &self.seen {
            write!(f, "\n  {message:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NotSeen {}

/// What the harness records and the rules it applies.
#[derive(Default)]
struct Log {
    messages: Mutex<Vec<Recorded>>,
    handlings: Mutex<Vec<Handled>>,
    stubs: Mutex<HashMap<&'static str, Stub>>,
    /// Faults to inject, by subject: how many more, and which.
    faults: Mutex<HashMap<&'static str, (u32, Fault)>>,
    changed: tokio::sync::Notify,
}

impl Log {
    fn record(&self, kind: Kind, subject: &'static str, payload: &[u8], meta: &Metadata) {
        let recorded = Recorded {
            kind,
            subject,
            message_id: meta.message_id,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            payload: payload.to_vec(),
        };
        self.messages.lock().unwrap_or_else(|e| e.into_inner()).push(recorded);
        self.changed.notify_waiters();
    }
}

impl Tap for Log {
    fn saw(&self, published: bool, subject: &'static str, payload: &[u8], meta: &Metadata) {
        let kind = if published { Kind::Published } else { Kind::Sent };
        self.record(kind, subject, payload, meta);
    }

    fn stub(&self, subject: &'static str) -> Option<Stub> {
        self.stubs.lock().unwrap_or_else(|e| e.into_inner()).get(subject).cloned()
    }
}

impl Harness {
    /// Start a harness with every handler and saga linked into the test.
    pub async fn start() -> Result<Harness> {
        Harness::builder().start().await
    }

    /// Start one with a subset of the handlers, another service name, ...
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder { service: "test".into(), filter: None }
    }

    /// The instance, to send, publish and start sagas as the test.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Every message sent or published so far, in order.
    pub fn messages(&self) -> Vec<Recorded> {
        self.log.messages.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The commands of type `C` sent so far (by the test or a handler).
    pub fn sent<C: Command>(&self) -> Vec<C> {
        self.decoded::<C>(Kind::Sent)
    }

    /// The events of type `E` published so far.
    pub fn published<E: Event>(&self) -> Vec<E> {
        self.decoded::<E>(Kind::Published)
    }

    fn decoded<M: Message>(&self, kind: Kind) -> Vec<M> {
        self.messages().iter().filter(|m| m.kind == kind).filter_map(Recorded::decode).collect()
    }

    /// Every handling so far, in the order they ended.
    pub fn handled(&self) -> Vec<Handled> {
        self.log.handlings.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The handlings that failed (or had a failure injected).
    pub fn failed(&self) -> Vec<Handled> {
        self.handled().into_iter().filter(|h| h.error.is_some()).collect()
    }

    /// Wait (up to `within`) until an event of type `E` that `matches` has
    /// been published — already, or from now; it, or what was published
    /// instead.
    pub async fn wait_published<E: Event>(
        &self,
        within: Duration,
        matches: impl Fn(&E) -> bool,
    ) -> std::result::Result<E, NotSeen> {
        let wanted = || format!("a matching `{}` on {}", short(std::any::type_name::<E>()), E::SUBJECT);
        self.wait(within, wanted, || self.published::<E>().into_iter().find(|e| matches(e))).await
    }

    /// Wait (up to `within`) until a command of type `C` that `matches` has
    /// been sent; it, or what was sent and published instead.
    pub async fn wait_sent<C: Command>(
        &self,
        within: Duration,
        matches: impl Fn(&C) -> bool,
    ) -> std::result::Result<C, NotSeen> {
        let wanted = || format!("a matching `{}` sent on {}", short(std::any::type_name::<C>()), C::SUBJECT);
        self.wait(within, wanted, || self.sent::<C>().into_iter().find(|c| matches(c))).await
    }

    /// Wait (up to `within`) until a handling that `matches` has ended
    /// (e.g. `|h| h.handler == "reserve" && h.error.is_some()`).
    pub async fn wait_handled(
        &self,
        within: Duration,
        matches: impl Fn(&Handled) -> bool,
    ) -> std::result::Result<Handled, NotSeen> {
        self.wait(within, || "a matching handling".to_owned(), || self.handled().into_iter().find(|h| matches(h))).await
    }

    async fn wait<T>(
        &self,
        within: Duration,
        wanted: impl Fn() -> String,
        found: impl Fn() -> Option<T>,
    ) -> std::result::Result<T, NotSeen> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.log.changed.notified();
            if let Some(found) = found() {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return found().ok_or_else(|| NotSeen { wanted: wanted(), seen: self.messages() });
            }
        }
    }

    /// Stand in for the handler of `C` (another service's, or one not
    /// linked): every send of a `C` gets `answer`'s reply or error, and no
    /// handler runs. The sends are still recorded.
    pub fn stub<C: Command>(
        &self,
        answer: impl Fn(C) -> std::result::Result<C::Reply, HandlerError> + Send + Sync + 'static,
    ) {
        let stub: Stub = Arc::new(move |payload| {
            let command = C::Codec::decode::<C>(payload).map_err(|e| {
                HandlerError::new(HandlerError::INVALID, format!("the stub could not decode it: {}", e.0))
            })?;
            let reply = answer(command)?;
            C::Codec::encode(&reply).map_err(|e| HandlerError::new(HandlerError::CODEC, e.0))
        });
        self.log.stubs.lock().unwrap_or_else(|e| e.into_inner()).insert(C::SUBJECT, stub);
    }

    /// Make the next `times` handlings of `M` fail with `error` (without
    /// running the handler), as a broken dependency would.
    pub fn fail_next<M: Message>(&self, times: u32, error: HandlerError) {
        self.inject::<M>(times, Fault::Fail(error));
    }

    /// Make the next `times` handlings of `M` wait `by` before the handler
    /// runs (a slow dependency: the handler timeout and the sender's
    /// deadline apply).
    pub fn delay_next<M: Message>(&self, times: u32, by: Duration) {
        self.inject::<M>(times, Fault::Delay(by));
    }

    /// Make the next `times` handlings of `M` panic where the handler would
    /// run (a `panic` error reply, as for a handler that panics).
    pub fn panic_next<M: Message>(&self, times: u32) {
        self.inject::<M>(times, Fault::Panic);
    }

    fn inject<M: Message>(&self, times: u32, fault: Fault) {
        self.log.faults.lock().unwrap_or_else(|e| e.into_inner()).insert(M::SUBJECT, (times, fault));
    }

    /// From now on, hold every saga step (and compensation) attempt until
    /// [`step`](Harness::step) lets it run: to look at a saga between its
    /// steps.
    pub fn hold_saga_steps(&self) {
        self.steps.holding.store(true, Ordering::SeqCst);
    }

    /// Stop holding saga steps: everything held runs on.
    pub fn release_saga_steps(&self) {
        self.steps.holding.store(false, Ordering::SeqCst);
        self.steps.changed.notify_waiters();
    }

    /// Let the next attempt of a step (or compensation) of saga `id` of the
    /// named type run, and wait (up to `within`) until it has: the saga is
    /// held before its next attempt, parked at a waiting step, or finished.
    /// Where it is then.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use catga::prelude::*;
    /// # use catga::saga::{SagaContext, SagaStatus, StepError};
    /// # use catga::testing::Harness;
    /// # #[derive(Debug, Clone, Default, Serialize, Deserialize)] struct Trip { booked: Vec<String> }
    /// # struct TripSaga;
    /// # #[catga::saga(name = "docs-step-trip")]
    /// # impl TripSaga {
    /// #     #[step(compensate = cancel_flight)]
    /// #     async fn flight(t: &mut Trip, _: &SagaContext) -> Result<(), StepError> { t.booked.push("flight".into()); Ok(()) }
    /// #     #[step(pivot)]
    /// #     async fn hotel(t: &mut Trip, _: &SagaContext) -> Result<(), StepError> { t.booked.push("hotel".into()); Ok(()) }
    /// #     async fn cancel_flight(_: &Trip, _: &SagaContext) -> Result<(), StepError> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let harness = Harness::builder().handlers_where(|_| false).start().await.unwrap();
    /// harness.hold_saga_steps();
    /// harness.app().submit_saga::<TripSaga>("t-1", Trip::default()).await.unwrap();
    /// let after_flight = harness.step("docs-step-trip", "t-1", Duration::from_secs(5)).await.unwrap();
    /// assert_eq!(after_flight.current_step.as_deref(), Some("hotel"));
    /// assert_eq!(after_flight.data["booked"], serde_json::json!(["flight"]));
    /// let done = harness.step("docs-step-trip", "t-1", Duration::from_secs(5)).await.unwrap();
    /// assert_eq!(done.status, SagaStatus::Completed);
    /// # harness.shutdown().await; }
    /// ```
    pub async fn step(&self, saga: &str, id: &str, within: Duration) -> std::result::Result<SagaInfo, NotSeen> {
        let key = format!("{saga}/{id}");
        let ran = self.steps.gate(&key, |g| {
            g.permits += 1;
            g.ran
        });
        self.steps.changed.notify_waiters();
        let parked = Key::new(format!("saga-index:{saga}"), "parked");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.steps.changed.notified();
            let (moved, waiting) = self.steps.gate(&key, |g| (g.ran > ran, g.waiting));
            if moved {
                let info = self.app.saga_status_by_name(saga, id).await.ok().flatten();
                let is_parked = self.app.store().set_members(&parked).await.unwrap_or_default().iter().any(|p| p == id);
                if let Some(info) = info
                    && (waiting || is_parked || info.status.is_finished())
                {
                    return Ok(info);
                }
            }
            let poll = tokio::time::Instant::now() + Duration::from_millis(10);
            if tokio::time::timeout_at(deadline.min(poll), changed).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Err(NotSeen {
                    wanted: format!("the next step of saga {saga} {id} (is it started, and held?)"),
                    seen: self.messages(),
                });
            }
        }
    }

    /// Move time on by `by` — the instance's clock, wall-clock readings
    /// included — and let what came due run. Needs a paused runtime:
    /// `#[tokio::test(start_paused = true)]`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use catga::prelude::*;
    /// use catga::saga::{SagaContext, SagaOutcome, StepError};
    /// use catga::testing::Harness;
    ///
    /// #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    /// struct Hold { released: bool }
    ///
    /// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    /// #[catga(subject = "docs.advance.paid")]
    /// struct Paid { hold: String }
    ///
    /// struct HoldSaga;
    ///
    /// #[catga::saga(name = "docs-advance-hold")]
    /// impl HoldSaga {
    ///     #[step(compensate = release)]
    ///     async fn hold(_: &mut Hold, _: &SagaContext) -> Result<(), StepError> { Ok(()) }
    ///
    ///     // Gives up (and releases the hold) after 15 minutes without payment.
    ///     #[step(wait = Paid, key = hold, within = "15m", pivot)]
    ///     async fn paid(_: &mut Hold, _: Paid, _: &SagaContext) -> Result<(), StepError> { Ok(()) }
    ///
    ///     async fn release(_: &Hold, _: &SagaContext) -> Result<(), StepError> { Ok(()) }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let harness = Harness::builder().handlers_where(|_| false).start().await.unwrap();
    /// harness.app().submit_saga::<HoldSaga>("h-1", Hold::default()).await.unwrap();
    /// harness.advance(Duration::from_secs(16 * 60)).await; // no waiting in real time
    /// let outcome = harness.app().saga_outcome("docs-advance-hold", "h-1", Duration::from_secs(1)).await.unwrap();
    /// assert!(matches!(outcome, SagaOutcome::Compensated { .. }));
    /// # harness.shutdown().await; }
    /// ```
    pub async fn advance(&self, by: Duration) {
        // In up to 200 steps (of at least 50 ms), so that what comes due on
        // the way runs on the way, and what it sets in motion too.
        let step = (by / 200).max(Duration::from_millis(50));
        let mut left = by;
        while !left.is_zero() {
            let now = step.min(left);
            tokio::time::advance(now).await;
            left -= now;
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Shut the instance down (waiting for what is in flight; held saga
    /// steps are let go first).
    pub async fn shutdown(self) {
        self.release_saga_steps();
        self.app.shutdown().await;
    }
}

impl HarnessBuilder {
    /// The instance's service name (`test` by default).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }

    /// Subscribe only the handlers `keep` accepts (the sagas' own event
    /// recorders are always subscribed).
    pub fn handlers_where(mut self, keep: impl Fn(&HandlerRecord) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Box::new(keep));
        self
    }

    /// Start it: a fresh bus and store of its own, time that a paused
    /// runtime controls, the recorder.
    pub async fn start(self) -> Result<Harness> {
        let log = Arc::new(Log::default());
        let steps = Arc::new(Steps::default());
        let bus = MemoryBus::new();
        bus.set_tap(log.clone());
        let clock = Clock::following_tokio();
        let store = Store::from(MemoryStore::with_clock(clock));
        let mut builder = Catga::builder()
            .service(self.service)
            .memory_bus(bus)
            .store(store)
            .clock(clock)
            .middleware(Recorder(log.clone()))
            .saga_gate(steps.clone());
        if let Some(keep) = self.filter {
            builder = builder.handlers_where(move |h| keep(h));
        }
        let app = builder.start().await?;
        Ok(Harness { app, log, steps })
    }
}

fn short(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}
