//! The running instance's core: the state every part of one instance shares
//! (settings, transport, store, middleware, handler state, clock) and its
//! lifecycle — admission, drain, in-flight counts, the sagas running here.
//!
//! The public [`App`](crate::App) handle, the [`Context`](crate::Context) a
//! handler gets, the transports (through a
//! [`Receiver`](crate::receiver::Receiver)) and the saga runner all hold this
//! core; none of them reaches into the builder.
//!
//! **The admission protocol** (the one rule every transport follows, written
//! once here and in [`crate::receiver`]): a handling is counted in flight
//! *first* and checked against `draining` *second*, both `SeqCst`, mirrored
//! by [`Instance::shutdown`] which sets `draining` first and reads the count
//! second. So either a sender that routed here just before the unsubscribe
//! sees `draining` and goes elsewhere, or shutdown sees its handling in
//! flight and waits for it. A message a network transport already delivered
//! is ours even while draining (the server gives it to no one else): it is
//! counted without the check.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, HandlerError, Result};
use crate::liveness::Heartbeat;
use crate::message::{Command, Event};
use crate::metadata::Metadata;
use crate::metrics::{Metrics, SendSet};
use crate::middleware::Middleware;
use crate::registry::HandlerRecord;
use crate::store::Store;
use crate::transport::{Encoded, Sent, Transport};

/// Shared values handlers reach with [`Context::state`](crate::Context::state),
/// one per type.
pub(crate) type State = HashMap<TypeId, Arc<dyn Any + Send + Sync>>;

/// One running instance.
pub(crate) struct Instance {
    pub(crate) config: Config,
    pub(crate) transport: Transport,
    pub(crate) store: Store,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    /// A test harness's hold on saga steps ([`crate::testing`]), if any.
    pub(crate) saga_gate: Option<Arc<dyn SagaGate>>,
    pub(crate) state: State,
    pub(crate) handlers: Vec<&'static HandlerRecord>,
    pub(crate) clock: Clock,
    /// What this instance counts ([`crate::metrics`]).
    pub(crate) metrics: Arc<Metrics>,
    /// `GET /metrics`, when `http_addr` is set; stopped by shutdown.
    http: Mutex<Option<Serving>>,
    in_flight: AtomicUsize,
    /// Set when shutdown starts: only then do finished handlings wake it.
    draining: AtomicBool,
    /// Set once every handler is subscribed (readiness, `/readyz`).
    subscribed: AtomicBool,
    idle: Notify,
    closed: AtomicBool,
    stopped: tokio::sync::OnceCell<ShutdownReport>,
    running_sagas: RunningSagas,
    /// This instance's heartbeat in the store (set by the builder), stopped
    /// by shutdown.
    pub(crate) heartbeat: Mutex<Option<Heartbeat>>,
}

/// The HTTP endpoint's address and accepting task.
struct Serving {
    addr: std::net::SocketAddr,
    task: tokio::task::AbortHandle,
}

/// What an instance is built from besides its configuration, transport
/// and store.
pub(crate) struct Parts {
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) saga_gate: Option<Arc<dyn SagaGate>>,
    pub(crate) state: State,
    pub(crate) handlers: Vec<&'static HandlerRecord>,
    pub(crate) clock: Clock,
    pub(crate) metrics: Arc<Metrics>,
}

/// Holds each saga step attempt until a test lets it run
/// ([`Harness::step_sagas`](crate::testing::Harness)).
pub(crate) trait SagaGate: Send + Sync {
    /// Before an attempt of `step` of saga `id` runs (its start recorded).
    fn before<'a>(&'a self, saga: &'static str, id: &'a str, step: &'static str) -> crate::future::BoxFuture<'a, ()>;
}

/// Options of one `send`.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// How long the send may take in all, every attempt and re-send
    /// included; overrides the instance's request timeout. A send from a
    /// handler never outlives the deadline of the message being handled.
    pub timeout: Option<Duration>,
}

impl SendOptions {
    /// Options with this total timeout.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let o = catga::SendOptions::timeout(Duration::from_millis(200));
    /// assert_eq!(o.timeout, Some(Duration::from_millis(200)));
    /// ```
    pub fn timeout(timeout: Duration) -> Self {
        SendOptions { timeout: Some(timeout) }
    }
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Handlings that were still running when the grace period ended.
    pub abandoned: usize,
    /// How long the wait for in-flight handlings took.
    pub waited: Duration,
}

impl Instance {
    pub(crate) fn new(config: Config, transport: Transport, store: Store, parts: Parts) -> Arc<Instance> {
        let Parts { middleware, saga_gate, state, handlers, clock, metrics } = parts;
        Arc::new(Instance {
            config,
            transport,
            store,
            middleware,
            saga_gate,
            state,
            handlers,
            clock,
            metrics,
            http: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            idle: Notify::new(),
            closed: AtomicBool::new(false),
            stopped: tokio::sync::OnceCell::new(),
            running_sagas: RunningSagas::default(),
            heartbeat: Mutex::new(None),
        })
    }

    /// Every handler is subscribed: the instance takes work.
    pub(crate) fn mark_subscribed(&self) {
        self.subscribed.store(true, Ordering::SeqCst);
    }

    /// Subscribed and not draining; the transport's connection is checked
    /// by [`crate::http`] beside it.
    pub(crate) fn taking_work(&self) -> std::result::Result<(), &'static str> {
        if self.draining.load(Ordering::SeqCst) {
            Err("draining: shutting down")
        } else if !self.subscribed.load(Ordering::SeqCst) {
            Err("starting: handlers not subscribed yet")
        } else {
            Ok(())
        }
    }

    /// The HTTP endpoint (`Config::http_addr`, [`crate::http`]) answering
    /// at `addr` until shutdown stops its task.
    pub(crate) fn serve_http(&self, addr: std::net::SocketAddr, task: tokio::task::AbortHandle) {
        *self.http.lock().unwrap_or_else(|e| e.into_inner()) = Some(Serving { addr, task });
    }

    /// Where `GET /metrics` answers, when it does.
    pub(crate) fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.addr)
    }

    pub(crate) fn service(&self) -> &str {
        &self.config.service
    }

    pub(crate) fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    /// The value of type `T` given to `with_state`, or an error that names
    /// the type and the fix.
    pub(crate) fn state<T: Send + Sync + 'static>(&self) -> std::result::Result<&T, HandlerError> {
        self.state.get(&TypeId::of::<T>()).and_then(|v| v.downcast_ref::<T>()).ok_or_else(|| {
            HandlerError::new(
                HandlerError::INTERNAL,
                format!(
                    "instance \"{}\" has no state of type `{}`; add `.with_state(..)` to its builder",
                    self.instance_id(),
                    std::any::type_name::<T>()
                ),
            )
        })
    }

    /// Refuse sends and publishes once shut down.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown { instance: self.config.instance_id.clone() });
        }
        Ok(())
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Handlings running in this instance now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Send a command with explicit metadata; lazy until polled. Its
    /// deadline is the options' (or the instance's) timeout from the first
    /// poll, or the deadline `meta` inherited, whichever comes first.
    pub(crate) fn send_as<C: Command>(&self, command: C, meta: Metadata, options: SendOptions) -> Sending<'_, C> {
        let timeout = options.timeout.unwrap_or(self.config.request_timeout);
        Sending { state: SendState::Start { instance: self, command, meta, timeout } }
    }

    /// Publish an event with explicit metadata. An event has no deadline:
    /// it does not inherit the one of the handling that publishes it.
    pub(crate) async fn publish_as<E: Event>(&self, event: E, mut meta: Metadata) -> Result<()> {
        self.check_open()?;
        meta.deadline = None;
        let span = hop_span!("catga.publish", E::SUBJECT, meta);
        self.transport.publish(event, meta).instrument(span).await?;
        self.metrics.published(E::SUBJECT);
        Ok(())
    }

    /// Send a command already encoded (a scheduled one, whose type this
    /// program may not link) within the instance's request timeout; its
    /// reply as its codec wrote it. In a `catga.send` span, measured.
    pub(crate) async fn send_encoded(&self, message: Encoded<'_>, mut meta: Metadata) -> Result<Vec<u8>> {
        self.check_open()?;
        let (subject, left, started) = (message.subject, self.config.request_timeout, self.clock.now());
        meta.deadline = started.checked_add(left);
        let metrics = self.metrics.sent(subject);
        let span = hop_span!("catga.send", subject, meta);
        let outcome = self.transport.send_encoded(message, meta, left).instrument(span).await;
        metrics.ended(self.clock.now().saturating_duration_since(started), outcome.as_ref().err());
        outcome
    }

    /// Publish an event already encoded (a scheduled one).
    pub(crate) async fn publish_encoded(&self, message: Encoded<'_>, mut meta: Metadata) -> Result<()> {
        self.check_open()?;
        meta.deadline = None;
        let subject = message.subject;
        let span = hop_span!("catga.publish", subject, meta);
        self.transport.publish_encoded(message, meta).instrument(span).await?;
        self.metrics.published(subject);
        Ok(())
    }

    /// The sagas running here now.
    pub(crate) fn running_sagas(&self) -> &RunningSagas {
        &self.running_sagas
    }

    /// Mark a saga as running here; it counts as in flight (shutdown waits
    /// for its current step) until both guards drop.
    pub(crate) fn running_saga(self: &Arc<Self>, saga: &'static str, id: &str) -> (RunningGuard<'_>, InFlight) {
        (self.running_sagas.enter(saga, id), InFlight::count(self.clone()))
    }

    /// Graceful shutdown; concurrent and repeated calls share one shutdown
    /// and its report.
    pub(crate) async fn shutdown(&self) -> ShutdownReport {
        *self.stopped.get_or_init(|| self.stop()).await
    }

    async fn stop(&self) -> ShutdownReport {
        self.draining.store(true, Ordering::SeqCst);
        let started = self.clock.now();
        let grace = self.config.grace_period;
        self.transport.stop_receiving(self, grace).await;
        let left = grace.saturating_sub(started.elapsed());
        let drained = self
            .clock
            .timeout(left, async {
                loop {
                    let idle = self.idle.notified();
                    if self.in_flight.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    idle.await;
                }
            })
            .await;
        self.transport.close().await;
        // Last: the drain handed this instance's sagas over; the beat marked
        // `gone` lets the survivors take them (and any claim left) at once.
        let heartbeat = self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut heartbeat) = heartbeat {
            heartbeat.stop(&self.store).await;
        }
        if let Some(http) = self.http.lock().unwrap_or_else(|e| e.into_inner()).take() {
            http.task.abort();
        }
        self.closed.store(true, Ordering::Release);
        let report =
            ShutdownReport { abandoned: if drained.is_ok() { 0 } else { self.in_flight() }, waited: started.elapsed() };
        // Failure lines still counted by the rate limit are said now.
        crate::logging::flush();
        if report.abandoned > 0 {
            tracing::warn!(
                instance = self.instance_id(),
                abandoned = report.abandoned,
                ?grace,
                "grace period over; handlings abandoned"
            );
        } else {
            tracing::info!(instance = self.instance_id(), waited = ?report.waited, "catga instance stopped");
        }
        report
    }
}

/// One handling admitted by an instance: counts as in flight while alive
/// (and holds the transport's handling slot, if it has one). Made by a
/// [`Receiver`](crate::receiver::Receiver), following the admission
/// protocol above.
#[doc(hidden)]
pub struct InFlight(Arc<Instance>, Option<OwnedSemaphorePermit>);

impl InFlight {
    /// Admit one handling unless the instance is draining: count first,
    /// check second (see the module docs).
    pub(crate) fn admit(instance: Arc<Instance>) -> Option<InFlight> {
        instance.in_flight.fetch_add(1, Ordering::SeqCst);
        let admitted = InFlight(instance, None);
        if admitted.0.draining.load(Ordering::SeqCst) {
            return None; // dropping `admitted` undoes the count
        }
        Some(admitted)
    }

    /// Count a handling the transport already delivered to this instance.
    pub(crate) fn count(instance: Arc<Instance>) -> InFlight {
        instance.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(instance, None)
    }

    /// Keep a handling slot until the handling ends.
    pub(crate) fn holding(mut self, permit: OwnedSemaphorePermit) -> InFlight {
        self.1 = Some(permit);
        self
    }

    /// The instance that admitted the handling.
    pub(crate) fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // SeqCst on both sides: either shutdown sees zero in flight, or this
        // sees `draining` and wakes it.
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.draining.load(Ordering::SeqCst) {
            self.0.idle.notify_waiters();
        }
    }
}

/// The sagas this instance is running now (so its sweep skips them), and
/// those it is creating (so its sweep does not take back their lease
/// mid-creation); counted, so two guards of one saga overlap safely.
#[derive(Default)]
pub(crate) struct RunningSagas {
    running: Sagas,
    creating: Sagas,
}

type Sagas = Mutex<HashMap<(&'static str, String), usize>>;

/// Marks a saga as running (or being created) here while alive.
pub(crate) struct RunningGuard<'a>(&'a Sagas, (&'static str, String));

impl RunningSagas {
    fn enter(&self, saga: &'static str, id: &str) -> RunningGuard<'_> {
        guard(&self.running, saga, id)
    }

    /// Mark saga `id` as being created here, until its run has started.
    pub(crate) fn creating(&self, saga: &'static str, id: &str) -> RunningGuard<'_> {
        guard(&self.creating, saga, id)
    }

    pub(crate) fn contains(&self, saga: &'static str, id: &str) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&(saga, id.to_owned()))
    }

    pub(crate) fn being_created(&self, saga: &'static str, id: &str) -> bool {
        self.creating.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&(saga, id.to_owned()))
    }
}

fn guard<'a>(sagas: &'a Sagas, saga: &'static str, id: &str) -> RunningGuard<'a> {
    let key = (saga, id.to_owned());
    *sagas.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default() += 1;
    RunningGuard(sagas, key)
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        let mut sagas = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = sagas.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                sagas.remove(&self.1);
            }
        }
    }
}

/// The future of one `send`: lazy (nothing happens until polled), then the
/// transport's pending reply. Hand-written so that the future every send
/// returns stays small instead of nesting `async` state machines.
pub(crate) struct Sending<'a, C: Command> {
    state: SendState<'a, C>,
}

enum SendState<'a, C: Command> {
    Start {
        instance: &'a Instance,
        command: C,
        meta: Metadata,
        timeout: Duration,
    },
    /// The send under way, in its span (`catga.send`), measured.
    Pending {
        sent: Sent<C::Reply>,
        span: tracing::Span,
        instance: &'a Instance,
        metrics: Arc<SendSet>,
        started: tokio::time::Instant,
    },
    Done,
}

/// The span of one send (`catga.send`) or publish (`catga.publish`): the
/// hop whose id goes on the wire as `traceparent`'s parent id (its own
/// parent: the handling or saga step it was made from), so the hop's log
/// lines join the trace.
macro_rules! hop_span {
    ($name:literal, $subject:expr, $meta:expr) => {{
        let (meta, trace) = (&$meta, &$meta.trace);
        let span = tracing::info_span!(
            $name,
            subject = $subject,
            message_id = %meta.message_id,
            trace_id = %trace.trace_id(),
            span_id = %trace.span_id(),
            parent_span_id = trace.parent_span_id().map(tracing::field::display),
        );
        crate::otel::adopt(&span, trace);
        span
    }};
}
use hop_span;

// The command is only ever moved, never pinned, so `Sending` is `Unpin`
// whatever the command type is.
impl<C: Command> Unpin for Sending<'_, C> {}

impl<C: Command> Future for Sending<'_, C> {
    type Output = Result<C::Reply>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        loop {
            match std::mem::replace(&mut self.state, SendState::Done) {
                SendState::Start { instance, command, mut meta, timeout } => {
                    if let Err(e) = instance.check_open() {
                        return Poll::Ready(Err(e));
                    }
                    let now = instance.clock.now();
                    let left = meta
                        .deadline
                        .map_or(timeout, |inherited| timeout.min(inherited.saturating_duration_since(now)));
                    meta.deadline = now.checked_add(left).or(meta.deadline);
                    let metrics = instance.metrics.sent(C::SUBJECT);
                    let span = hop_span!("catga.send", C::SUBJECT, meta);
                    let sent = span.in_scope(|| instance.transport.send(command, meta, left));
                    self.state = SendState::Pending { sent, span, instance, metrics, started: now };
                }
                SendState::Pending { mut sent, span, instance, metrics, started } => {
                    let poll = span.in_scope(|| Pin::new(&mut sent).poll(cx));
                    match &poll {
                        Poll::Pending => self.state = SendState::Pending { sent, span, instance, metrics, started },
                        Poll::Ready(outcome) => {
                            let took = instance.clock.now().saturating_duration_since(started);
                            metrics.ended(took, outcome.as_ref().err());
                        }
                    }
                    return poll;
                }
                SendState::Done => panic!("a send future was polled after it completed"),
            }
        }
    }
}
