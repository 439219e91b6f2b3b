//! Future building blocks shared by the pipeline and the transports.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

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
