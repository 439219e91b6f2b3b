//! Future building blocks shared by the pipeline and the transports.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A timeout whose timer is created only when first needed: an
/// in-process handling that finishes on its first poll pays no clock read
/// and no timer. The limit counts from that first wait. (Its timer is
/// tokio's, the monotonic reading of [`Clock`](crate::Clock).)
pub(crate) struct Deadline {
    pub(crate) limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    pub(crate) fn new(limit: Duration) -> Self {
        Deadline { limit, timer: None }
    }

    /// Ready once the limit has passed; call after the guarded work
    /// returned `Pending`.
    pub(crate) fn poll_expired(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let limit = self.limit;
        self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit))).as_mut().poll(cx)
    }
}

pin_project! {
    /// A future whose panic is caught: `Err(payload)` instead of unwinding
    /// through the caller.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(future: F) -> Self {
        CatchUnwind { future }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// What a panic said (its `&str` or `String` payload).
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.as_str()
    } else {
        "a non-string panic payload"
    }
}
