//! The [`Context`] a handler receives: the ids of its message, its
//! instance, and sending on behalf of the message.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Result;
use crate::instance::{Instance, SendOptions};
use crate::message::{Command, Event};
pub use crate::metadata::{MessageId, Metadata};
use crate::registry::HandlerRecord;
use crate::store::Store;

/// What a handler knows about the message it handles, and its way to send
/// and publish: messages sent through the context carry the same
/// correlation id and name this message as their cause.
///
/// ```
/// use catga::prelude::*;
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # #[catga(subject = "doc.ctx.seen")]
/// # pub struct Seen { by: String }
/// # #[derive(Debug, Serialize, Deserialize, Command)]
/// # #[catga(subject = "doc.ctx.ping", reply = String)]
/// # pub struct Ping;
/// #[catga::command(queue = "doc")]
/// async fn ping(_: Ping, ctx: Context) -> Result<String, HandlerError> {
///     ctx.publish(Seen { by: ctx.instance_id().to_owned() }).await?;
///     Ok(format!("pong, correlation {}", ctx.metadata().correlation_id))
/// }
/// ```
#[derive(Clone)]
pub struct Context {
    instance: Arc<Instance>,
    meta: Metadata,
    /// The handler this context is for.
    record: &'static HandlerRecord,
    /// An `idempotent` handling's fencing token, set once its claim is won.
    fence: Option<Arc<AtomicU64>>,
}

impl Context {
    /// The context of a delivered message's handling: its metadata in a
    /// span of its own, child of the send's (see [`Metadata::trace`]).
    pub(crate) fn new(instance: Arc<Instance>, meta: Metadata, record: &'static HandlerRecord) -> Self {
        Context { instance, meta: meta.delivered(), record, fence: None }
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    /// The handler this handling runs.
    pub(crate) fn record(&self) -> &'static HandlerRecord {
        self.record
    }

    /// Give this handling a fencing token, filled in by the idempotency
    /// stage once it has won the claim (before the handler runs).
    pub(crate) fn fenced(&mut self) -> Arc<AtomicU64> {
        self.fence.get_or_insert_with(|| Arc::new(AtomicU64::new(0))).clone()
    }

    /// The instance handling this message (the pipeline's stages read its
    /// settings, store and middleware).
    pub(crate) fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// The ids of the message being handled.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The id of the message being handled.
    pub fn message_id(&self) -> MessageId {
        self.meta.message_id
    }

    /// When the sender of this command stops waiting for its reply, if it
    /// said (Catga senders always do; events and plain NATS requests have
    /// none). Sends made through this context never outlive it.
    ///
    /// ```
    /// use catga::prelude::*;
    /// # #[derive(Debug, Serialize, Deserialize, Command)]
    /// # #[catga(subject = "doc.ctx.report", reply = u32)]
    /// # pub struct Report;
    /// #[catga::command(queue = "doc")]
    /// async fn report(_: Report, ctx: Context) -> Result<u32, HandlerError> {
    ///     // Do only as much as the caller will wait for.
    ///     let budget = ctx.remaining().unwrap_or(std::time::Duration::from_secs(1));
    ///     Ok(budget.as_millis().min(1000) as u32)
    /// }
    /// ```
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.meta.deadline
    }

    /// The time left until [`deadline`](Context::deadline) (zero once it
    /// passed), if there is one.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.meta.remaining()
    }

    /// The fencing token of an `idempotent` handling: 1 for the first
    /// instance to claim the message, one more each time a copy took the
    /// claim over from an instance judged dead (its heartbeat stopped — it
    /// crashed, or froze and may yet resume). `None` for handlers that are
    /// not idempotent.
    ///
    /// A handler whose effect lives in another store can fence it: write
    /// the token with the effect and refuse a write whose token is smaller
    /// than the largest seen for this message id, so a frozen instance that
    /// resumes cannot repeat what its copy did.
    ///
    /// ```
    /// use catga::prelude::*;
    /// # #[derive(Debug, Serialize, Deserialize, Command)]
    /// # #[catga(subject = "doc.ctx.ship", reply = ())]
    /// # pub struct Ship { order: String }
    /// #[catga::command(queue = "doc", idempotent)]
    /// async fn ship(cmd: Ship, ctx: Context) -> Result<(), HandlerError> {
    ///     let fence = ctx.fencing_token().expect("an idempotent handling has one");
    ///     // e.g. UPDATE shipments SET .., fence = $fence WHERE order = $order AND fence <= $fence
    ///     let _ = (cmd.order, fence);
    ///     Ok(())
    /// }
    /// ```
    pub fn fencing_token(&self) -> Option<u64> {
        let fence = self.fence.as_ref()?.load(Ordering::Acquire);
        (fence > 0).then_some(fence)
    }

    /// The subject of the message being handled.
    pub fn subject(&self) -> &'static str {
        self.record.subject
    }

    /// The service this instance belongs to.
    pub fn service(&self) -> &str {
        self.instance.service()
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        self.instance.instance_id()
    }

    /// The value of type `T` shared through
    /// [`Builder::with_state`](crate::Builder::with_state); the error names
    /// the missing type.
    pub fn state<T: Send + Sync + 'static>(&self) -> std::result::Result<&T, crate::HandlerError> {
        self.instance.state::<T>()
    }

    /// The store shared by every instance (for your own records, e.g. an
    /// effects ledger keyed by [`message_id`](Context::message_id)).
    pub fn store(&self) -> &Store {
        &self.instance.store
    }

    /// Send a command on behalf of this message (same correlation id, and
    /// within this message's deadline).
    pub fn send<C: Command>(&self, command: C) -> impl Future<Output = Result<C::Reply>> + Send + '_ {
        self.instance.send_as(command, self.meta.child(), SendOptions::default())
    }

    /// Send with explicit options on behalf of this message.
    pub fn send_with<C: Command>(
        &self,
        command: C,
        options: SendOptions,
    ) -> impl Future<Output = Result<C::Reply>> + Send + '_ {
        self.instance.send_as(command, self.meta.child(), options)
    }

    /// Publish an event on behalf of this message (same correlation id).
    pub fn publish<E: Event>(&self, event: E) -> impl Future<Output = Result<()>> + Send + '_ {
        self.instance.publish_as(event, self.meta.child())
    }
}
