//! Middleware: code that runs around every handling in an instance —
//! metrics, auditing, authorization, rate limits.
//!
//! A deliberately small trait rather than tower layers: a middleware sees
//! which handler runs and the message's ids, may refuse with a
//! [`HandlerError`] or let the handling go on with [`Next::run`], and sees
//! the outcome. Tower's `Service` would force one erased request/response
//! type (and an allocation per layer and call) on every handler, and its
//! readiness protocol adds nothing for in-process dispatch. With no
//! middleware installed the pipeline costs nothing.
//!
//! Built-in stages are not middleware and always run: the message's
//! validation hook before the chain, and the handler timeout and panic
//! catching after it. Later layers (idempotency, retries) slot in the same
//! way, as stages of [`crate::dispatch`].
//!
//! ```
//! use catga::middleware::{Handling, Middleware, Next};
//! use catga::{BoxFuture, HandlerError};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! /// Counts handlings and failures.
//! #[derive(Default)]
//! struct Count { ok: AtomicU64, failed: AtomicU64 }
//!
//! impl Middleware for Count {
//!     fn handle<'a>(&'a self, _h: &'a Handling<'a>, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
//!         Box::pin(async move {
//!             let outcome = next.run().await;
//!             let counter = if outcome.is_ok() { &self.ok } else { &self.failed };
//!             counter.fetch_add(1, Ordering::Relaxed);
//!             outcome
//!         })
//!     }
//! }
//! # let _ = catga::Catga::builder().middleware(Count::default());
//! ```

use std::sync::Arc;

use crate::error::HandlerError;
use crate::future::BoxFuture;
use crate::metadata::Metadata;
use crate::registry::HandlerRecord;

/// What a middleware knows about the handling it wraps.
#[derive(Debug)]
pub struct Handling<'a> {
    /// The handler that will run.
    pub record: &'static HandlerRecord,
    /// The message's ids.
    pub metadata: Metadata,
    /// The instance running it.
    pub instance_id: &'a str,
}

/// A stage around every handling of an instance. Install with
/// [`Builder::middleware`](crate::Builder::middleware); the first installed
/// is the outermost.
pub trait Middleware: Send + Sync + 'static {
    /// Handle one message: call `next.run().await` to go on (at most once),
    /// or return an error to refuse. Return the outcome of `next` (or your
    /// own error) — it becomes the caller's reply status.
    fn handle<'a>(&'a self, handling: &'a Handling<'a>, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// The rest of the chain: the remaining middleware, then the handler.
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    handling: &'a Handling<'a>,
    terminal: &'a mut (dyn Terminal + Send),
}

/// The handler at the end of the chain.
pub(crate) trait Terminal {
    fn run(&mut self) -> BoxFuture<'_, Result<(), HandlerError>>;
}

impl<'a> Next<'a> {
    pub(crate) fn new(
        chain: &'a [Arc<dyn Middleware>],
        handling: &'a Handling<'a>,
        terminal: &'a mut (dyn Terminal + Send),
    ) -> Self {
        Next { rest: chain, handling, terminal }
    }

    /// Run the remaining middleware and the handler; `Ok(())` when the
    /// handler succeeded (its reply goes to the caller), its error otherwise.
    pub async fn run(self) -> Result<(), HandlerError> {
        match self.rest.split_first() {
            Some((first, rest)) => {
                let next = Next { rest, handling: self.handling, terminal: self.terminal };
                first.handle(self.handling, next).await
            }
            None => self.terminal.run().await,
        }
    }
}
