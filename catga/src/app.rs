//! The [`App`] handle of a running instance: send, publish, shut down. Start
//! one with [`Catga::run`](crate::Catga::run) or
//! [`Catga::builder`](crate::Catga::builder); the shared state behind it is
//! the instance core (`instance.rs`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::config::Config;
use crate::context::Context;
use crate::error::Result;
use crate::instance::Instance;
pub use crate::instance::{SendOptions, ShutdownReport};
use crate::message::{Command, Event};
use crate::metadata::Metadata;
use crate::registry::HandlerRecord;
use crate::signals::Signals;
use crate::store::Store;
use crate::trace::{TraceContext, TraceId};

/// A running instance: send commands, publish events, shut down. Cheap to
/// clone; every clone is the same instance. Dropping every handle stops the
/// instance from receiving (without the graceful wait of
/// [`shutdown`](App::shutdown)).
#[derive(Clone)]
pub struct App {
    instance: Arc<Instance>,
    /// The span of the handling this handle was taken from
    /// ([`Context::app`]): the sagas it starts continue that trace.
    trace: Option<TraceContext>,
}

impl App {
    /// The service name.
    pub fn service(&self) -> &str {
        &self.instance.config.service
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance.config.instance_id
    }

    /// The settings this instance runs with.
    pub fn config(&self) -> &Config {
        &self.instance.config
    }

    /// The store this instance shares state through.
    pub fn store(&self) -> &Store {
        &self.instance.store
    }

    /// This instance's metrics in the Prometheus text format (see
    /// [`crate::metrics`]): what `GET /metrics` answers on
    /// [`Config::http_addr`], for a program that serves them itself.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga::Result<()> {
    /// let app = catga::Catga::builder().service("docs-metrics").client_only().start().await?;
    /// assert!(app.metrics_text().contains("# TYPE catga_nats_connected gauge"));
    /// # app.shutdown().await; Ok(()) }
    /// ```
    pub fn metrics_text(&self) -> String {
        self.instance.metrics.render()
    }

    /// Where `GET /metrics` answers (the port chosen when port 0 was
    /// asked for), when [`Config::http_addr`] is set.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.instance.http_addr()
    }

    /// `/metrics`, `/healthz` and `/readyz` as a `tower` service to mount
    /// in the program's own HTTP server (axum: `nest_service`); see
    /// [`Routes`](crate::http::Routes).
    pub fn routes(&self) -> crate::http::Routes {
        crate::http::Routes::new(&self.instance)
    }

    /// The handlers this instance subscribed, sorted.
    pub fn handlers(&self) -> &[&'static HandlerRecord] {
        &self.instance.handlers
    }

    /// The value of type `T` given to [`Builder::with_state`](crate::Builder::with_state), or an error
    /// that names the type and the fix.
    pub fn state<T: Send + Sync + 'static>(&self) -> std::result::Result<&T, crate::HandlerError> {
        self.instance.state::<T>()
    }

    /// Send a command to the one instance that handles it and wait for the
    /// typed reply (default timeout).
    ///
    /// Errors: [`Error::NoHandler`](crate::Error::NoHandler) when nobody serves the subject,
    /// [`Error::Timeout`](crate::Error::Timeout), [`Error::Handler`](crate::Error::Handler) with the handler's code and
    /// message, [`Error::Shutdown`](crate::Error::Shutdown) after [`shutdown`](App::shutdown).
    pub fn send<C: Command>(&self, command: C) -> impl Future<Output = Result<C::Reply>> + Send + '_ {
        // Not an `async fn`: one less layer of future around every send.
        self.send_as(command, Metadata::root(), SendOptions::default())
    }

    /// [`send`](App::send) with options (e.g. a per-call timeout).
    pub fn send_with<C: Command>(
        &self,
        command: C,
        options: SendOptions,
    ) -> impl Future<Output = Result<C::Reply>> + Send + '_ {
        self.send_as(command, Metadata::root(), options)
    }

    /// Send with explicit metadata (the context uses this to propagate ids).
    pub fn send_as<C: Command>(
        &self,
        command: C,
        meta: Metadata,
        options: SendOptions,
    ) -> impl Future<Output = Result<C::Reply>> + Send + '_ {
        self.instance.send_as(command, meta, options)
    }

    /// Publish an event: every broadcast subscriber and one member of each
    /// queue group receive it. Returns once it is handed to the transport.
    pub fn publish<E: Event>(&self, event: E) -> impl Future<Output = Result<()>> + Send + '_ {
        self.publish_as(event, Metadata::root())
    }

    /// Publish with explicit metadata.
    pub fn publish_as<E: Event>(&self, event: E, meta: Metadata) -> impl Future<Output = Result<()>> + Send + '_ {
        self.instance.publish_as(event, meta)
    }

    /// The dead letters of a durable subject, oldest first: messages whose
    /// last delivery failed (after `max_deliver` attempts, or at once for
    /// an `invalid` message), with the reason, code, handler and delivery
    /// count. NATS JetStream only; in memory this is an [`Error::Config`](crate::Error::Config).
    /// Reads page by page; for a large dead-letter stream, use
    /// [`dead_letters_page`](App::dead_letters_page).
    pub async fn dead_letters(&self, subject: &str) -> Result<Vec<crate::transport::DeadLetter>> {
        self.instance.transport.dead_letters(subject).await
    }

    /// One page of the dead letters of a durable subject: up to `limit` (at
    /// most [`MAX_PAGE`](crate::transport::MAX_PAGE)), oldest first, from
    /// dead-letter stream sequence `from_sequence` on (0: the oldest). Pass
    /// the page's `next` as the following call's `from_sequence`; `None`
    /// means there is no more.
    ///
    /// ```no_run
    /// # async fn f(app: &catga::App) -> catga::Result<()> {
    /// let mut from = 0;
    /// loop {
    ///     let page = app.dead_letters_page("payments.capture", from, 100).await?;
    ///     for letter in &page.letters {
    ///         println!("{} {}: {}", letter.sequence, letter.code, letter.reason);
    ///     }
    ///     match page.next {
    ///         Some(next) => from = next,
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn dead_letters_page(
        &self,
        subject: &str,
        from_sequence: u64,
        limit: usize,
    ) -> Result<crate::transport::DeadLetterPage> {
        self.instance.transport.dead_letters_page(subject, from_sequence, limit).await
    }

    /// Publish dead letter `sequence` (from [`dead_letters`](App::dead_letters))
    /// again to its original subject — same payload and Catga headers, a
    /// fresh JetStream deduplication id — and delete it from the dead-letter
    /// stream. A replayed command has no caller waiting: its reply is
    /// dropped.
    pub async fn replay_dead_letter(&self, sequence: u64) -> Result<()> {
        self.instance.transport.replay_dead_letter(sequence).await
    }

    /// Sends from this instance that were retried after a timeout or "no
    /// responders" (NATS; always 0 in memory).
    pub fn retries(&self) -> u64 {
        self.instance.transport.retries()
    }

    /// Handlings running in this instance now.
    pub fn in_flight(&self) -> usize {
        self.instance.in_flight()
    }

    /// Graceful shutdown: stop receiving new messages at once, wait up to
    /// the grace period for in-flight handlings, then refuse further sends
    /// and publishes. Idempotent.
    ///
    /// Handlings still running when the grace period ends are reported in
    /// [`ShutdownReport::abandoned`], not cancelled. Called from inside one
    /// of this instance's own handlers, it waits for that handler too, so
    /// it takes the whole grace period: spawn it instead.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.instance.shutdown().await
    }

    /// Wait for ctrl-c or SIGTERM, then [`shutdown`](App::shutdown).
    pub async fn run_until_signal(&self) -> ShutdownReport {
        Signals::listen().recv().await;
        tracing::info!(instance = self.instance_id(), "signal received, shutting down");
        self.shutdown().await
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App").field("service", &self.service()).field("instance_id", &self.instance_id()).finish()
    }
}

impl App {
    pub(crate) fn from_instance(instance: Arc<Instance>) -> App {
        App { instance, trace: None }
    }

    /// The span a saga started through this handle continues: the handling
    /// it was taken from, or the first span of a new trace.
    pub(crate) fn trace_origin(&self) -> TraceContext {
        self.trace.clone().unwrap_or_else(|| TraceContext::root(TraceId::random()))
    }

    /// The span of the handling this handle was taken from, if any.
    pub(crate) fn trace_context(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// The instance core behind this handle.
    pub(crate) fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }
}

impl Context {
    /// The instance handling this message. Holding a `Context` (or this
    /// handle) beyond the handling keeps the instance alive and subscribed
    /// until [`App::shutdown`]. Sagas started through it continue this
    /// handling's trace (their steps are spans of it).
    pub fn app(&self) -> App {
        App { instance: self.instance().clone(), trace: Some(self.metadata().trace.clone()) }
    }
}
