//! The handling pipeline: what happens between a transport delivering a
//! message and the handler's reply. Generated code calls [`handle_command`]
//! and [`handle_event`] with the user's function; everything else — in-flight
//! tracking, the validation hook, the tracing span, middleware, the handler
//! timeout and turning a panic into an error reply — is here, once.
//!
//! Order of stages for one handling:
//! `validate → span → idempotency → middleware… → handler timeout → catch panic → handler`;
//! the optional ones (idempotency, middleware) are applied one by one (`prepare`).
//!
//! The futures here are written by hand (with `pin-project-lite` for safe
//! pinning) rather than as nested `async fn`s: nested state machines store
//! their inputs twice and made every handling's future ~4× bigger, which
//! showed up as memcpy at the top of the in-process profile.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tracing::Instrument;

use crate::clock::Clock;
use crate::codec::Codec;
use crate::context::Context;
use crate::error::HandlerError;
pub use crate::future::BoxFuture;
use crate::future::{Deadline, panic_message};
use crate::idempotency::{self, Recorder};
use crate::instance::InFlight;
use crate::logging::warn_limited;
use crate::message::{Command, Event, Message};
use crate::metadata::Metadata;
use crate::metrics::HandlingGauge;
use crate::middleware::{Handling, Next, Terminal};
use crate::registry::{HandlerKind, HandlerRecord};

/// An encoded reply payload.
pub(crate) type RawReply = Vec<u8>;

/// One message delivered to one handler. It counts as in flight in the
/// receiving instance from delivery (not from first poll) until the
/// handling ends, so a graceful shutdown waits for spawned handlings too.
#[doc(hidden)]
pub struct Delivery<M> {
    message: M,
    ctx: Context,
    record: &'static HandlerRecord,
    in_flight: InFlight,
    /// Events only: where the outcome goes when somebody waits for it (a
    /// durable delivery acknowledges or redelivers by it); otherwise the
    /// error is logged.
    done: Option<Done>,
}

/// Receives the outcome of an event handling that runs on its own task.
pub(crate) type Done = tokio::sync::oneshot::Sender<Result<(), HandlerError>>;

impl<M> Delivery<M> {
    pub(crate) fn new(message: M, record: &'static HandlerRecord, in_flight: InFlight, meta: Metadata) -> Self {
        let ctx = Context::new(in_flight.instance().clone(), meta, record);
        Delivery { message, ctx, record, in_flight, done: None }
    }

    /// Report the handling's outcome to `done` instead of logging it.
    pub(crate) fn reporting_to(mut self, done: Done) -> Self {
        self.done = Some(done);
        self
    }
}

/// Run a command handler through the pipeline. One allocation: the box.
#[doc(hidden)]
pub fn handle_command<C, F, Fut, E>(
    delivery: Delivery<C>,
    handler: F,
) -> BoxFuture<'static, Result<C::Reply, HandlerError>>
where
    C: Command,
    F: FnOnce(C, Context) -> Fut + Send + 'static,
    Fut: Future<Output = Result<C::Reply, E>> + Send + 'static,
    E: Into<HandlerError> + 'static,
{
    let recorder = Recorder { encode: C::Codec::encode::<C::Reply>, decode: C::Codec::decode::<C::Reply> };
    Box::pin(prepare(delivery, handler, recorder))
}

/// Start an event handler through the pipeline on its own task; errors are
/// logged (there is no caller to return them to). One allocation: the task.
#[doc(hidden)]
pub fn handle_event<M, F, Fut, E>(delivery: Delivery<M>, handler: F)
where
    M: Event,
    F: FnOnce(M, Context) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<HandlerError> + 'static,
{
    let mut delivery = delivery;
    let done = delivery.done.take();
    let handling = prepare(delivery, handler, idempotency::unit_recorder());
    drop(tokio::spawn(Spawned { handling, done }));
}

pin_project! {
    /// One handling as the stages made it: the common case is the guarded
    /// handler itself (no allocation); each optional stage that applies
    /// wraps what is there and boxes it.
    #[project = StagedProj]
    enum Staged<Fut, R> {
        Direct { #[pin] guarded: Guarded<Fut> },
        Boxed { boxed: BoxFuture<'static, Result<R, HandlerError>> },
    }
}

impl<Fut, R, E> Future for Staged<Fut, R>
where
    Fut: Future<Output = Result<R, E>>,
    E: Into<HandlerError>,
{
    type Output = Result<R, HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project() {
            StagedProj::Direct { guarded } => guarded.poll(cx),
            StagedProj::Boxed { boxed } => boxed.as_mut().poll(cx),
        }
    }
}

/// The pipeline: validate → span → idempotency (if on) → middleware (if
/// any) → handler timeout → catch panic → handler. The optional stages are
/// a list of wrappers, each applied on its own — adding one is one more
/// `if`, not another arm per combination.
fn prepare<M, F, Fut, R, E>(
    delivery: Delivery<M>,
    handler: F,
    recorder: Recorder<R>,
) -> tracing::instrument::Instrumented<Reported<Staged<Fut, R>>>
where
    M: Message,
    F: FnOnce(M, Context) -> Fut,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Send + 'static,
    E: Into<HandlerError> + 'static,
{
    let Delivery { message, mut ctx, record, in_flight, done: _ } = delivery;
    let validated = catch_unwind(AssertUnwindSafe(|| message.validate())).unwrap_or_else(|p| Err(panicked(record, p)));
    if let Err(invalid) = validated {
        ctx.instance().metrics.refused(record.labels(), invalid.code());
        drop(in_flight);
        let meta = ctx.metadata();
        let (message_id, correlation_id) = (meta.message_id, meta.correlation_id);
        warn_limited!(
            record.name,
            invalid.code(),
            subject = record.subject,
            handler = record.name,
            %message_id,
            %correlation_id,
            code = invalid.code(),
            error = invalid.message(),
            "message refused by its validation hook"
        );
        let failed = std::future::ready(Err(invalid));
        let staged = Staged::Boxed { boxed: Box::pin(failed) };
        return Reported { inner: staged, record: None, measured: None }.instrument(tracing::Span::none());
    }
    let meta = ctx.metadata();
    let span = tracing::info_span!(
        "catga.handle",
        subject = record.subject,
        handler = record.name,
        message_id = %meta.message_id,
        correlation_id = %meta.correlation_id,
        causation_id = meta.causation_id.map(tracing::field::display),
        trace_id = %meta.trace.trace_id(),
        span_id = %meta.trace.span_id(),
        parent_span_id = meta.trace.parent_span_id().map(tracing::field::display),
    );
    crate::otel::adopt(&span, &meta.trace);
    let timeout = record.timeout_ms.map(Duration::from_millis).or(ctx.instance().config.handler_timeout);
    let once = idempotency::applies(record, &ctx).then(|| {
        let fence = ctx.fenced();
        (ctx.clone(), fence)
    });
    let chained = (!ctx.instance().middleware.is_empty()).then(|| ctx.clone());
    let instance = ctx.instance();
    if record.kind == HandlerKind::Event {
        instance.metrics.delivered(record.labels());
    }
    let measured = Measured {
        gauge: instance.metrics.handling(record.labels()),
        clock: instance.clock,
        started: instance.clock.now(),
    };
    let guarded = Guarded {
        future: handler(message, ctx),
        record,
        deadline: timeout.map(Deadline::new),
        _in_flight: Some(in_flight),
    };
    // Innermost first: each stage wraps everything inside it.
    let mut staged = Staged::Direct { guarded };
    if let Some(ctx) = chained {
        staged = Staged::Boxed { boxed: Box::pin(caught(record, ctx, staged)) };
    }
    if let Some((ctx, fence)) = once {
        staged = Staged::Boxed { boxed: Box::pin(idempotency::once(record, ctx, fence, timeout, recorder, staged)) };
    }
    Reported { inner: staged, record: Some(record), measured: Some(measured) }.instrument(span)
}

/// A handling's metrics: in flight until dropped, then its duration and
/// outcome (see [`crate::metrics`]).
struct Measured {
    gauge: HandlingGauge,
    clock: Clock,
    started: tokio::time::Instant,
}

pin_project! {
    /// The outermost stage: a failed handling is logged at `warn` where it
    /// happened — inside the handling's span, so with its subject, handler
    /// and ids — through the rate limit of [`crate::logging`], and every
    /// handling is measured. (`None`: refused before, logged and counted
    /// already.)
    struct Reported<F> {
        #[pin]
        inner: F,
        record: Option<&'static HandlerRecord>,
        measured: Option<Measured>,
    }
}

impl<F, R> Future for Reported<F>
where
    F: Future<Output = Result<R, HandlerError>>,
{
    type Output = Result<R, HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.inner.poll(cx));
        if let (Err(error), Some(record)) = (&outcome, *this.record) {
            report(record, error);
        }
        if let Some(m) = this.measured.take() {
            let took = m.clock.now().saturating_duration_since(m.started);
            m.gauge.ended(took, outcome.as_ref().err());
        }
        Poll::Ready(outcome)
    }
}

/// Log one failed handling (not the `in_progress` answer to a copy: that
/// is no failure of this message).
fn report(record: &'static HandlerRecord, error: &HandlerError) {
    if error.code() == HandlerError::IN_PROGRESS {
        tracing::debug!(
            code = error.code(),
            error = error.message(),
            "answered a copy: its first handling runs elsewhere"
        );
        return;
    }
    // Subject, handler and ids are the fields of the span this runs in.
    warn_limited!(record.name, error.code(), code = error.code(), error = error.message(), "handling failed");
}

/// The middleware chain around the guarded handler; a panicking middleware
/// is caught like a panicking handler.
fn caught<R: Send + 'static>(
    record: &'static HandlerRecord,
    ctx: Context,
    guarded: impl Future<Output = Result<R, HandlerError>> + Send + 'static,
) -> Guarded<impl Future<Output = Result<R, HandlerError>> + Send + 'static> {
    Guarded { future: with_middleware(record, ctx, guarded), record, deadline: None, _in_flight: None }
}

/// The middleware chain around the guarded handler.
async fn with_middleware<R: Send + 'static>(
    record: &'static HandlerRecord,
    ctx: Context,
    guarded: impl Future<Output = Result<R, HandlerError>> + Send + 'static,
) -> Result<R, HandlerError> {
    let mut terminal = Once { future: Some(Box::pin(guarded)), reply: None };
    let handling = Handling { record, metadata: ctx.metadata().clone(), instance_id: ctx.instance_id() };
    let outcome = Next::new(&ctx.instance().middleware, &handling, &mut terminal).run().await;
    match (outcome, terminal.reply) {
        (Err(error), _) => Err(error),
        (Ok(()), Some(reply)) => Ok(reply),
        (Ok(()), None) => Err(HandlerError::new(
            HandlerError::INTERNAL,
            format!("a middleware returned Ok without calling next.run() for \"{}\"", record.subject),
        )),
    }
}

/// The end of the middleware chain: runs the guarded handler at most once.
struct Once<R> {
    future: Option<BoxFuture<'static, Result<R, HandlerError>>>,
    reply: Option<R>,
}

impl<R: Send> Terminal for Once<R> {
    fn run(&mut self) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async move {
            let Some(future) = self.future.take() else {
                return Err(HandlerError::new(HandlerError::INTERNAL, "next.run() called twice; a handler runs once"));
            };
            self.reply = Some(future.await?);
            Ok(())
        })
    }
}

pin_project! {
    /// The user's handler future under the handler timeout, with a panic
    /// turned into a `panic` error; counts as in flight until dropped.
    struct Guarded<F> {
        #[pin]
        future: F,
        record: &'static HandlerRecord,
        deadline: Option<Deadline>,
        _in_flight: Option<InFlight>,
    }
}

impl<F, R, E> Future for Guarded<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<HandlerError>,
{
    type Output = Result<R, HandlerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let record = *this.record;
        let future = this.future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(result)) => Poll::Ready(result.map_err(Into::into)),
            Err(panic) => Poll::Ready(Err(panicked(record, panic))),
            Ok(Poll::Pending) => match this.deadline {
                None => Poll::Pending,
                Some(deadline) => deadline.poll_expired(cx).map(|()| {
                    Err(HandlerError::new(
                        HandlerError::HANDLER_TIMEOUT,
                        format!("handler `{}` did not finish within {:?}", record.name, deadline.limit),
                    ))
                }),
            },
        }
    }
}

pin_project! {
    /// An event handling on its own task: its outcome is reported to
    /// whoever waits for it (a failure was logged by the pipeline).
    struct Spawned<F> {
        #[pin]
        handling: F,
        done: Option<Done>,
    }
}

impl<F: Future<Output = Result<(), HandlerError>>> Future for Spawned<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.project();
        this.handling.poll(cx).map(|result| {
            if let Some(done) = this.done.take() {
                let _ = done.send(result);
            }
        })
    }
}

/// The `panic` error for a panic in a handler, its validation hook or a
/// middleware; logged here, returned to the caller.
fn panicked(record: &'static HandlerRecord, panic: Box<dyn Any + Send>) -> HandlerError {
    let what = panic_message(&*panic);
    tracing::error!(subject = record.subject, handler = record.name, panic = what, "handler panicked");
    HandlerError::new(
        HandlerError::PANIC,
        format!("handling by `{}` at {}:{} panicked: {what}", record.name, record.file, record.line),
    )
}

/// Decode a payload as `M` with its codec; the error names the subject and
/// type, and goes back to the sender as an `invalid` reply.
pub(crate) fn decode<M: Message>(payload: &[u8]) -> Result<M, HandlerError> {
    M::Codec::decode(payload).map_err(|e| {
        let invalid = HandlerError::invalid(format!(
            "malformed payload for \"{}\": expected a `{}` encoded as {}: {e}",
            M::SUBJECT,
            std::any::type_name::<M>(),
            M::Codec::CONTENT_TYPE
        ));
        warn_limited!(M::SUBJECT, invalid.code(), subject = M::SUBJECT, error = invalid.message(), "message refused");
        invalid
    })
}

/// Encode a command's reply with the command's codec.
pub(crate) fn encode_reply<C: Command>(reply: &C::Reply) -> Result<RawReply, HandlerError> {
    C::Codec::encode(reply).map_err(|e| {
        HandlerError::new(
            HandlerError::INTERNAL,
            format!("could not encode the `{}` reply to \"{}\": {e}", std::any::type_name::<C::Reply>(), C::SUBJECT),
        )
    })
}
