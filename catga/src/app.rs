//! Starting and stopping an instance: [`Catga::run`] for a service's `main`,
//! [`Catga::builder`] for explicit settings, clients and tests, and the
//! [`App`] handle to send, publish and shut down.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::Config;
use crate::context::Metadata;
use crate::error::{Error, Result};
use crate::message::{Command, Event};
use crate::middleware::Middleware;
use crate::registry::{self, HandlerRecord};
use crate::store::Store;
use crate::transport::Transport;
use crate::transport::memory::MemoryBus;

/// The entry points.
pub struct Catga;

impl Catga {
    /// Run this program as a service instance: read the `CATGA_*`
    /// environment (see [`Config`]), subscribe every registered handler, run
    /// until ctrl-c or SIGTERM, then shut down gracefully.
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> catga::Result<()> {
    ///     catga::Catga::run().await
    /// }
    /// ```
    pub async fn run() -> Result<()> {
        Builder::from_env()?.run().await
    }

    /// Explicit settings: start from the defaults, not the environment.
    pub fn builder() -> Builder {
        Builder::new(Config::default())
    }
}

impl Builder {
    /// [`start`](Builder::start) this instance, run until ctrl-c or SIGTERM,
    /// then shut down gracefully — [`Catga::run`] with these settings.
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> catga::Result<()> {
    ///     catga::Catga::builder().service("orders").run().await
    /// }
    /// ```
    pub async fn run(self) -> Result<()> {
        // Listen before subscribing, so a signal that arrives right after
        // startup is a graceful stop and not the default "terminate now".
        let mut signals = Signals::listen();
        let app = self.start().await?;
        signals.recv().await;
        tracing::info!(instance = app.instance_id(), "signal received, shutting down");
        tokio::select! {
            _ = app.shutdown() => {}
            _ = signals.recv() => {
                tracing::warn!(instance = app.instance_id(), "second signal: stopping without waiting for in-flight handlings");
            }
        }
        Ok(())
    }
}

/// Which registered handlers an instance subscribes.
type HandlerFilter = Box<dyn Fn(&HandlerRecord) -> bool + Send + Sync>;

/// Settings for one instance; [`start`](Builder::start) it.
///
/// ```
/// # #[tokio::main] async fn main() -> catga::Result<()> {
/// use std::time::Duration;
/// let app = catga::Catga::builder()
///     .service("orders")
///     .request_timeout(Duration::from_secs(2))
///     .client_only()               // send and publish, handle nothing
///     .start()
///     .await?;
/// app.shutdown().await;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `.start().await`"]
pub struct Builder {
    config: Config,
    bus: Option<MemoryBus>,
    store: Option<Store>,
    middleware: Vec<Arc<dyn Middleware>>,
    filter: Option<HandlerFilter>,
    recover_sagas: bool,
    state: State,
}

/// Shared values handlers reach with [`Context::state`](crate::Context::state),
/// one per type.
type State = HashMap<TypeId, Arc<dyn Any + Send + Sync>>;

impl Builder {
    fn new(config: Config) -> Self {
        Builder {
            config,
            bus: None,
            store: None,
            middleware: Vec::new(),
            filter: None,
            recover_sagas: true,
            state: State::new(),
        }
    }

    /// Settings from the `CATGA_*` environment variables (see [`Config`]).
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(Config::from_env()?))
    }

    /// Settings from a [`Config`].
    pub fn config(config: Config) -> Self {
        Self::new(config)
    }

    /// Change any setting of the [`Config`] directly.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = catga::Catga::builder().configure(|c| c.saga_lease_ttl = Duration::from_secs(2));
    /// # drop(b);
    /// ```
    pub fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// The service name (also the default queue group of its commands).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.config.service = name.into();
        self
    }

    /// This instance's id (default: service name and a random suffix).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.config.instance_id = id.into();
        self
    }

    /// NATS servers, comma-separated.
    pub fn nats_url(mut self, url: impl Into<String>) -> Self {
        self.config.nats_url = Some(url.into());
        self
    }

    /// Redis URL, or a comma-separated Redis Cluster node list.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.redis_url = Some(url.into());
        self
    }

    /// Run on this in-memory bus (default: [`MemoryBus::global`]).
    pub fn memory_bus(mut self, bus: MemoryBus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Keep shared state in this store (default: Redis when a Redis URL is
    /// set, else [`Store::global_memory`]).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Make handlers that do not say `idempotent = ..` idempotent (see
    /// [`Config::idempotent_by_default`]).
    pub fn idempotent_by_default(mut self, on: bool) -> Self {
        self.config.idempotent_by_default = on;
        self
    }

    /// How long recorded replies answer copies (see [`Config::idempotency_ttl`]).
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.config.idempotency_ttl = ttl;
        self
    }

    /// Default timeout of `send` (over NATS: of each attempt; see
    /// [`send_retries`](Builder::send_retries)).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Default limit on one handling.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.config.handler_timeout = Some(timeout);
        self
    }

    /// How long shutdown waits for in-flight handlings.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.config.grace_period = grace;
        self
    }

    /// The version the NATS service API reports (semver).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.config.version = version.into();
        self
    }

    /// NATS: retries of a send after a timeout or "no responders" (0 = none).
    pub fn send_retries(mut self, retries: u32) -> Self {
        self.config.send_retries = retries;
        self
    }

    /// NATS: concurrent handlings per handler (at least 1).
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.config.max_in_flight = limit.max(1);
        self
    }

    /// NATS: how often the server is pinged; a server that dies without
    /// closing the connection is noticed only after about two intervals.
    pub fn nats_ping_interval(mut self, interval: Duration) -> Self {
        self.config.nats_ping_interval = interval;
        self
    }

    /// Durable handlers (NATS JetStream): how long a delivered message may
    /// stay unacknowledged before it is redelivered (default 30 s). A
    /// running handler keeps extending it, so this is about crashed
    /// instances: a caller survives one only if its request timeout is
    /// longer.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = catga::Catga::builder().ack_wait(Duration::from_secs(10));
    /// # drop(builder);
    /// ```
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.config.ack_wait = wait;
        self
    }

    /// Durable handlers: deliveries of one message, the first included
    /// (default 5, at least 1); when the last fails, the message is moved
    /// to the dead-letter stream (see [`App::dead_letters`]).
    ///
    /// ```
    /// let builder = catga::Catga::builder().max_deliver(3);
    /// # drop(builder);
    /// ```
    pub fn max_deliver(mut self, deliveries: u32) -> Self {
        self.config.max_deliver = deliveries.max(1);
        self
    }

    /// Durable events: how long their stream keeps an event (default 7
    /// days).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = catga::Catga::builder().event_max_age(Duration::from_secs(24 * 3600));
    /// # drop(builder);
    /// ```
    pub fn event_max_age(mut self, age: Duration) -> Self {
        self.config.event_max_age = age;
        self
    }

    /// Add a middleware around every handling (first added is outermost).
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Share a value (a database pool, a client, settings) with every
    /// handler of this instance; they read it with
    /// [`Context::state`](crate::Context::state). One value per type; a
    /// second call with the same type replaces the first.
    ///
    /// ```
    /// use catga::prelude::*;
    /// # #[derive(Debug, Serialize, Deserialize, Command)]
    /// # #[catga(subject = "doc.state.price", reply = u64)]
    /// # pub struct Price;
    /// struct Prices { base: u64 }
    ///
    /// #[catga::command]
    /// async fn price(_: Price, ctx: Context) -> Result<u64, HandlerError> {
    ///     Ok(ctx.state::<Prices>()?.base)
    /// }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga::Result<()> {
    /// let app = Catga::builder().with_state(Prices { base: 42 }).start().await?;
    /// assert_eq!(app.send(Price).await?, 42);
    /// # app.shutdown().await; Ok(()) }
    /// ```
    pub fn with_state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// Subscribe only the registered handlers `keep` accepts.
    pub fn handlers_where(mut self, keep: impl Fn(&HandlerRecord) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Box::new(keep));
        self
    }

    /// Subscribe no handlers and recover no sagas: a client that only
    /// sends, publishes, and starts or queries sagas.
    pub fn client_only(mut self) -> Self {
        self.recover_sagas = false;
        self.handlers_where(|_| false)
    }

    /// Validate the settings and handlers, subscribe, and return the handle.
    ///
    /// Fails on a duplicate handler (naming both locations), a setting
    /// this build cannot honour, or a Redis store (`redis_url`) that does
    /// not answer.
    pub async fn start(self) -> Result<App> {
        let config = self.config.resolve()?;
        let store = match (self.store, &config.redis_url) {
            (Some(store), _) => store,
            (None, Some(url)) => match config.redis_replica_acks {
                Some(acks) => Store::connect(url).await?.with_replica_acks(acks),
                None => Store::connect(url).await?,
            },
            (None, None) => Store::global_memory(),
        };
        let mut handlers = registry::handlers();
        if let Some(keep) = &self.filter {
            handlers.retain(|h| keep(h));
        }
        registry::validate(&handlers, &config.service)?;
        let sagas = crate::saga::sagas();
        crate::saga::validate(&sagas)?;
        for h in &handlers {
            tracing::info!(
                kind = ?h.kind,
                subject = h.subject,
                queue = h.queue_group(&config.service).unwrap_or("(broadcast)"),
                handler = %format_args!("{}::{}", h.module, h.name),
                message_type = h.message_type(),
                reply_type = h.reply_type(),
                "handler found"
            );
        }
        if handlers.is_empty() && self.filter.is_none() {
            tracing::warn!(
                "no handlers registered; handlers in a library crate that main.rs never references are not linked — \
                 add `use my_handlers as _;`"
            );
        }
        let transport = match (&config.nats_url, self.bus) {
            (Some(_), Some(_)) => {
                return Err(Error::Config("both a NATS URL and a memory bus are set; choose one transport".into()));
            }
            (Some(_), None) => Transport::Nats(crate::transport::nats::Nats::connect(&config).await?),
            (None, bus) => Transport::Memory(bus.unwrap_or_else(MemoryBus::global)),
        };
        let inner = Arc::new(AppInner {
            config,
            transport,
            store,
            middleware: self.middleware,
            state: self.state,
            handlers,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stopped: tokio::sync::OnceCell::new(),
            running_sagas: crate::saga::Running::default(),
        });
        inner.transport.subscribe(&inner, &inner.handlers).await?;
        // Every instance that links a saga type helps recover it (but not a
        // client: `client_only`).
        if !sagas.is_empty() && self.recover_sagas {
            tokio::spawn(crate::saga::sweep(Arc::downgrade(&inner), sagas, inner.config.saga_sweep_interval));
        }
        tracing::info!(
            service = inner.config.service,
            instance = inner.config.instance_id,
            handlers = inner.handlers.len(),
            transport = inner.transport.name(),
            store = inner.store.name(),
            "catga instance started"
        );
        Ok(App { inner })
    }
}

pub(crate) struct AppInner {
    pub(crate) config: Config,
    transport: Transport,
    store: Store,
    middleware: Vec<Arc<dyn Middleware>>,
    state: State,
    handlers: Vec<&'static HandlerRecord>,
    in_flight: AtomicUsize,
    /// Set when shutdown starts: only then do finished handlings wake it.
    draining: AtomicBool,
    idle: Notify,
    closed: AtomicBool,
    stopped: tokio::sync::OnceCell<ShutdownReport>,
    running_sagas: crate::saga::Running,
}

/// A running instance: send commands, publish events, shut down. Cheap to
/// clone; every clone is the same instance. Dropping every handle stops the
/// instance from receiving (without the graceful wait of
/// [`shutdown`](App::shutdown)).
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

/// Options of one `send`.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// Overrides the instance's default request timeout.
    pub timeout: Option<Duration>,
}

impl SendOptions {
    /// Options with this timeout.
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

impl App {
    /// The service name.
    pub fn service(&self) -> &str {
        &self.inner.config.service
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.inner.config.instance_id
    }

    /// The settings this instance runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The store this instance shares state through.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The handlers this instance subscribed, sorted.
    pub fn handlers(&self) -> &[&'static HandlerRecord] {
        &self.inner.handlers
    }

    /// The value of type `T` given to [`Builder::with_state`], or an error
    /// that names the type and the fix.
    pub fn state<T: Send + Sync + 'static>(&self) -> std::result::Result<&T, crate::HandlerError> {
        self.inner.state.get(&TypeId::of::<T>()).and_then(|v| v.downcast_ref::<T>()).ok_or_else(|| {
            crate::HandlerError::new(
                crate::HandlerError::INTERNAL,
                format!(
                    "instance \"{}\" has no state of type `{}`; add `.with_state(..)` to its builder",
                    self.instance_id(),
                    std::any::type_name::<T>()
                ),
            )
        })
    }

    pub(crate) fn middleware(&self) -> &[Arc<dyn Middleware>] {
        &self.inner.middleware
    }

    /// Send a command to the one instance that handles it and wait for the
    /// typed reply (default timeout).
    ///
    /// Errors: [`Error::NoHandler`] when nobody serves the subject,
    /// [`Error::Timeout`], [`Error::Handler`] with the handler's code and
    /// message, [`Error::Shutdown`] after [`shutdown`](App::shutdown).
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
        let timeout = options.timeout.unwrap_or(self.inner.config.request_timeout);
        Sending { state: SendState::Start { app: self, command, meta, timeout } }
    }

    /// Publish an event: every broadcast subscriber and one member of each
    /// queue group receive it. Returns once it is handed to the transport.
    pub fn publish<E: Event>(&self, event: E) -> impl Future<Output = Result<()>> + Send + '_ {
        self.publish_as(event, Metadata::root())
    }

    /// Publish with explicit metadata.
    pub async fn publish_as<E: Event>(&self, event: E, meta: Metadata) -> Result<()> {
        self.check_open()?;
        self.inner.transport.publish(event, meta).await
    }

    /// The dead letters of a durable subject, oldest first: messages whose
    /// last delivery failed (after `max_deliver` attempts, or at once for
    /// an `invalid` message), with the reason, code, handler and delivery
    /// count. NATS JetStream only; in memory this is an [`Error::Config`].
    pub async fn dead_letters(&self, subject: &str) -> Result<Vec<crate::transport::DeadLetter>> {
        self.inner.transport.dead_letters(subject).await
    }

    /// Publish dead letter `sequence` (from [`dead_letters`](App::dead_letters))
    /// again to its original subject — same payload and Catga headers, a
    /// fresh JetStream deduplication id — and delete it from the dead-letter
    /// stream. A replayed command has no caller waiting: its reply is
    /// dropped.
    pub async fn replay_dead_letter(&self, sequence: u64) -> Result<()> {
        self.inner.transport.replay_dead_letter(sequence).await
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown { instance: self.inner.config.instance_id.clone() });
        }
        Ok(())
    }

    /// Start saga `id` of type `S` with `data`, run it here, and return its
    /// outcome. Idempotent on the id: if saga `id` exists, nothing starts;
    /// its outcome is returned (awaited while another instance runs it, up
    /// to [`Config::saga_wait`]). See [`crate::saga`].
    pub async fn start_saga<S: crate::saga::Saga>(&self, id: &str, data: S::Data) -> Result<crate::saga::SagaOutcome> {
        self.check_open()?;
        crate::saga::start::<S>(self, id, data).await
    }

    /// Create saga `id` of type `S` durably and run it in the background
    /// here; returns once its first state is in the store, so losing this
    /// instance afterwards loses nothing (the recovery sweep continues it).
    /// `Ok(false)` if saga `id` exists already: nothing new starts.
    pub async fn submit_saga<S: crate::saga::Saga>(&self, id: &str, data: S::Data) -> Result<bool> {
        self.check_open()?;
        crate::saga::submit::<S>(self, id, data).await
    }

    /// Where saga `id` of type `S` is, if it exists.
    pub async fn saga_status<S: crate::saga::Saga>(&self, id: &str) -> Result<Option<crate::saga::SagaInfo>> {
        crate::saga::status(S::definition().name, self, id).await
    }

    /// [`saga_status`](App::saga_status) by the saga's name, for an
    /// operator tool or a client that does not link the saga's type.
    pub async fn saga_status_by_name(&self, saga: &str, id: &str) -> Result<Option<crate::saga::SagaInfo>> {
        crate::saga::status(saga, self, id).await
    }

    /// The sagas of type `S` still known to the recovery index whose
    /// status `keep` accepts — running, compensating, or failed (finished
    /// sagas leave the index; query those by id).
    ///
    /// ```
    /// # use catga::saga::{Saga, SagaStatus};
    /// # async fn f<S: Saga>(app: &catga::App) -> catga::Result<()> {
    /// let stuck = app.sagas::<S>(|s| s == SagaStatus::Failed).await?;
    /// # Ok(()) }
    /// ```
    pub async fn sagas<S: crate::saga::Saga>(
        &self,
        keep: impl Fn(crate::saga::SagaStatus) -> bool,
    ) -> Result<Vec<crate::saga::SagaInfo>> {
        crate::saga::list(S::definition().name, self, keep).await
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn upgrade(inner: &std::sync::Weak<AppInner>) -> Option<App> {
        inner.upgrade().map(|inner| App { inner })
    }

    pub(crate) fn running_sagas(&self) -> &crate::saga::Running {
        &self.inner.running_sagas
    }

    /// Mark a saga as running here; it counts as in flight (shutdown waits
    /// for its current step) until the guard drops.
    pub(crate) fn running_saga(&self, saga: &'static str, id: &str) -> (crate::saga::RunningGuard<'_>, InFlight) {
        (self.inner.running_sagas.enter(saga, id), InFlight::count(self.inner.clone()))
    }

    /// Sends from this instance that were retried after a timeout or "no
    /// responders" (NATS; always 0 in memory).
    pub fn retries(&self) -> u64 {
        self.inner.transport.retries()
    }

    /// Handlings running in this instance now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
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
        // Concurrent and repeated calls share the one shutdown and its report.
        *self.inner.stopped.get_or_init(|| self.stop()).await
    }

    async fn stop(&self) -> ShutdownReport {
        self.inner.draining.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let grace = self.inner.config.grace_period;
        self.inner.transport.stop_receiving(&self.inner, grace).await;
        let left = grace.saturating_sub(started.elapsed());
        let drained = tokio::time::timeout(left, async {
            loop {
                let idle = self.inner.idle.notified();
                if self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await;
        self.inner.transport.close().await;
        self.inner.closed.store(true, Ordering::Release);
        let report =
            ShutdownReport { abandoned: if drained.is_ok() { 0 } else { self.in_flight() }, waited: started.elapsed() };
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

/// The future of one `send`: lazy (nothing happens until polled), then the
/// transport's pending reply. Hand-written so that the future every send
/// returns stays small instead of nesting `async` state machines.
struct Sending<'a, C: Command> {
    state: SendState<'a, C>,
}

enum SendState<'a, C: Command> {
    Start { app: &'a App, command: C, meta: Metadata, timeout: Duration },
    Pending(crate::transport::Sent<C::Reply>),
    Done,
}

// The command is only ever moved, never pinned, so `Sending` is `Unpin`
// whatever the command type is.
impl<C: Command> Unpin for Sending<'_, C> {}

impl<C: Command> Future for Sending<'_, C> {
    type Output = Result<C::Reply>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        loop {
            match std::mem::replace(&mut self.state, SendState::Done) {
                SendState::Start { app, command, meta, timeout } => {
                    if let Err(e) = app.check_open() {
                        return std::task::Poll::Ready(Err(e));
                    }
                    self.state = SendState::Pending(app.inner.transport.send(command, meta, timeout));
                }
                SendState::Pending(mut pending) => {
                    let poll = std::pin::Pin::new(&mut pending).poll(cx);
                    if poll.is_pending() {
                        self.state = SendState::Pending(pending);
                    }
                    return poll;
                }
                SendState::Done => panic!("a send future was polled after it completed"),
            }
        }
    }
}

/// One handling admitted by an instance: counts as in flight while alive
/// (and holds the transport's handling slot, if it has one).
#[doc(hidden)]
pub struct InFlight(Arc<AppInner>, Option<tokio::sync::OwnedSemaphorePermit>);

impl InFlight {
    /// Admit one handling unless the instance is draining. Counting first
    /// and checking second (both SeqCst, mirrored in `shutdown`) closes the
    /// race with a sender that routed here just before the unsubscribe:
    /// either it sees `draining` and goes elsewhere, or shutdown sees it
    /// in flight and waits for it.
    pub(crate) fn admit(app: Arc<AppInner>) -> Option<InFlight> {
        app.in_flight.fetch_add(1, Ordering::SeqCst);
        let admitted = InFlight(app, None);
        if admitted.0.draining.load(Ordering::SeqCst) {
            return None; // dropping `admitted` undoes the count
        }
        Some(admitted)
    }

    /// Count a handling that the transport already delivered to this
    /// instance (over NATS, a message received while draining is still
    /// ours to handle: the server will not give it to anyone else).
    pub(crate) fn count(app: Arc<AppInner>) -> InFlight {
        app.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(app, None)
    }

    /// Keep a handling slot until the handling ends.
    pub(crate) fn holding(mut self, permit: tokio::sync::OwnedSemaphorePermit) -> InFlight {
        self.1 = Some(permit);
        self
    }

    /// The instance that admitted the handling.
    pub(crate) fn app(&self) -> App {
        App { inner: self.0.clone() }
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

/// SIGTERM and SIGINT (ctrl-c), registered when created.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(term), Ok(int)) => Signals { streams: Some((term, int)) },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; falling back to ctrl-c only");
                    Signals { streams: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.streams {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
