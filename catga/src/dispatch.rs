//! The handling pipeline: what happens between a transport delivering a
//! message and the handler's reply. Generated code calls [`handle_command`]
//! and [`handle_event`] with the user's function; everything else — in-flight
//! tracking, the validation hook, the tracing span, middleware, the handler
//! timeout and turning a panic into an error reply — is here, once.
//!
//! Order of stages for one handling:
//! `validate → span → middleware… → handler timeout → catch panic → handler`.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tracing::Instrument;

use crate::app::InFlight;
use crate::codec::Codec;
use crate::context::Context;
use crate::error::HandlerError;
use crate::message::{Command, Event, Message};
use crate::middleware::{Handling, Next, Terminal};
use crate::registry::HandlerRecord;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
}

impl<M> Delivery<M> {
    pub(crate) fn new(message: M, ctx: Context, record: &'static HandlerRecord) -> Self {
        let in_flight = ctx.app().in_flight_guard();
        Delivery { message, ctx, record, in_flight }
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
    Box::pin(run(delivery, handler))
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
    tokio::spawn(async move {
        let record = delivery.record;
        if let Err(error) = run(delivery, handler).await {
            tracing::error!(subject = record.subject, handler = record.name, %error, "event handler failed");
        }
    });
}

async fn run<M, F, Fut, R, E>(delivery: Delivery<M>, handler: F) -> Result<R, HandlerError>
where
    M: Message,
    F: FnOnce(M, Context) -> Fut + Send + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Send + 'static,
    E: Into<HandlerError> + 'static,
{
    let Delivery { message, ctx, record, in_flight: _in_flight } = delivery;
    message.validate()?;
    let meta = ctx.metadata();
    let span = tracing::info_span!(
        "catga.handle",
        subject = record.subject,
        handler = record.name,
        message_id = %meta.message_id,
        correlation_id = %meta.correlation_id,
        causation_id = meta.causation_id.map(tracing::field::display),
    );
    let app = ctx.app();
    let timeout = record.timeout_ms.map(Duration::from_millis).or(app.config().handler_timeout);
    if app.middleware().is_empty() {
        return guard(record, timeout, handler(message, ctx)).instrument(span).await;
    }
    with_middleware(record, ctx.clone(), guard(record, timeout, handler(message, ctx))).instrument(span).await
}

/// The middleware chain around the guarded handler (boxed: the common,
/// middleware-free path keeps its future small).
fn with_middleware<R: Send + 'static>(
    record: &'static HandlerRecord,
    ctx: Context,
    guarded: impl Future<Output = Result<R, HandlerError>> + Send + 'static,
) -> BoxFuture<'static, Result<R, HandlerError>> {
    Box::pin(async move {
        let mut terminal = Once { future: Some(Box::pin(guarded)), reply: None };
        let handling = Handling { record, metadata: *ctx.metadata(), instance_id: ctx.instance_id() };
        let outcome = Next::new(ctx.app().middleware(), &handling, &mut terminal).run().await;
        match (outcome, terminal.reply) {
            (Err(error), _) => Err(error),
            (Ok(()), Some(reply)) => Ok(reply),
            (Ok(()), None) => Err(HandlerError::new(
                HandlerError::INTERNAL,
                format!("a middleware returned Ok without calling next.run() for \"{}\"", record.subject),
            )),
        }
    })
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

/// The handler timeout and panic catching around the user's future.
async fn guard<R, E: Into<HandlerError>>(
    record: &'static HandlerRecord,
    timeout: Option<Duration>,
    handler: impl Future<Output = Result<R, E>>,
) -> Result<R, HandlerError> {
    let caught = CatchUnwind(std::pin::pin!(handler));
    let Some(result) = within(timeout, caught).await else {
        return Err(HandlerError::new(
            HandlerError::HANDLER_TIMEOUT,
            format!("handler `{}` did not finish within {:?}", record.name, timeout.unwrap_or_default()),
        ));
    };
    result.map(|r| r.map_err(Into::into)).unwrap_or_else(|panic| {
        let what = panic_message(&*panic);
        tracing::error!(subject = record.subject, handler = record.name, panic = what, "handler panicked");
        Err(HandlerError::new(
            HandlerError::PANIC,
            format!("handler `{}` at {}:{} panicked: {what}", record.name, record.file, record.line),
        ))
    })
}

/// `future`'s output, or `None` when `limit` passes first.
///
/// The timer is created only if the future does not finish on its first
/// poll, so an in-process handling that never waits pays no clock read and
/// no timer; the limit counts from that first wait.
pub(crate) async fn within<F: Future>(limit: Option<Duration>, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let Some(limit) = limit else { return Some(future.await) };
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Polls a future, turning a panic into `Err(payload)`.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "a non-string panic payload"
    }
}

/// Decode a payload as `M` with its codec; the error names the subject and
/// type, and goes back to the sender as an `invalid` reply.
pub(crate) fn decode<M: Message>(payload: &[u8]) -> Result<M, HandlerError> {
    M::Codec::decode(payload).map_err(|e| {
        HandlerError::invalid(format!(
            "malformed payload for \"{}\": expected a `{}` encoded as {}: {e}",
            M::SUBJECT,
            std::any::type_name::<M>(),
            M::Codec::CONTENT_TYPE
        ))
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
