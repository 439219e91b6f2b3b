//! Starting an instance: [`Catga::run`] for a service's `main`,
//! [`Catga::builder`] for explicit settings, clients and tests. What they
//! start is the instance core ([`crate::instance`]), handed out as an
//! [`App`].

use std::any::TypeId;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http;
use crate::instance::{Instance, Parts, State};
use crate::liveness::{self, Heartbeat};
use crate::metrics::Metrics;
use crate::middleware::Middleware;
use crate::registry::{self, HandlerRecord};
use crate::saga::{self, definition, recovery};
use crate::security::Secret;
use crate::signals::Signals;
use crate::store::Store;
use crate::timers;
use crate::transport::Transport;
use crate::transport::memory::MemoryBus;

/// The entry points.
pub struct Catga;

impl Catga {
    /// Run this program as a service instance: read the `CATGA_*`
    /// environment (see [`Config`]), install a log subscriber if the program
    /// has none (`RUST_LOG`, `CATGA_LOG_FORMAT`), subscribe every registered
    /// handler, run until ctrl-c or SIGTERM, then shut down gracefully.
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
    /// then shut down gracefully — [`Catga::run`] with these settings. When
    /// the program has no `tracing` subscriber, it installs one: log lines
    /// on standard error, filtered by `RUST_LOG` (`info` by default), plain
    /// or JSON ([`Config::log_format`], `CATGA_LOG_FORMAT`).
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> catga::Result<()> {
    ///     catga::Catga::builder().service("orders").run().await
    /// }
    /// ```
    pub async fn run(self) -> Result<()> {
        // A program with no log subscriber of its own gets one, so the
        // handlers found and every warning are seen (see `logging`).
        crate::logging::install_default(self.config.log_format);
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
        // The spans of the last handlings go out before the process ends.
        crate::otel::stop();
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
    saga_gate: Option<Arc<dyn crate::instance::SagaGate>>,
    filter: Option<HandlerFilter>,
    /// Run the background sweeps: saga recovery, scheduled deliveries (not a client).
    sweeps: bool,
    state: State,
    clock: Clock,
    /// A pool for the outbox given by the program, and whether to create
    /// its tables.
    #[cfg(feature = "postgres")]
    postgres: (Option<sqlx::PgPool>, bool),
}

impl Builder {
    fn new(config: Config) -> Self {
        Builder {
            config,
            bus: None,
            store: None,
            middleware: Vec::new(),
            saga_gate: None,
            filter: None,
            sweeps: true,
            state: State::new(),
            clock: Clock::system(),
            #[cfg(feature = "postgres")]
            postgres: (None, true),
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

    /// NATS user and password (`CATGA_NATS_USER`, `CATGA_NATS_PASSWORD`).
    pub fn nats_user_password(mut self, user: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.config.nats_security.user = Some(user.into());
        self.config.nats_security.password = Some(password.into());
        self
    }

    /// NATS token (`CATGA_NATS_TOKEN`).
    pub fn nats_token(mut self, token: impl Into<Secret>) -> Self {
        self.config.nats_security.token = Some(token.into());
        self
    }

    /// NATS NKey seed, `SU…` (`CATGA_NATS_NKEY` names a file holding it).
    pub fn nats_nkey_seed(mut self, seed: impl Into<Secret>) -> Self {
        self.config.nats_security.nkey_seed = Some(seed.into());
        self
    }

    /// NATS `.creds` file: a user JWT and its seed (`CATGA_NATS_CREDS`).
    pub fn nats_creds_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.nats_security.creds_file = Some(path.into());
        self
    }

    /// NATS over TLS, trusting the CA certificates of this PEM file
    /// (`CATGA_NATS_TLS_CA`); without it, a TLS connection trusts the
    /// system's roots.
    pub fn nats_tls_ca(mut self, pem: impl Into<std::path::PathBuf>) -> Self {
        self.config.nats_security.tls_ca = Some(pem.into());
        self
    }

    /// NATS over TLS with this client certificate and key, both PEM
    /// (`CATGA_NATS_TLS_CERT`, `CATGA_NATS_TLS_KEY`).
    pub fn nats_tls_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.config.nats_security.tls_cert = Some(cert.into());
        self.config.nats_security.tls_key = Some(key.into());
        self
    }

    /// Refuse to connect to NATS without TLS (`CATGA_NATS_TLS_REQUIRED`).
    pub fn nats_tls_required(mut self, required: bool) -> Self {
        self.config.nats_security.tls_required = required;
        self
    }

    /// Redis TLS (for `rediss://` URLs): trust the CA certificates of this
    /// PEM file (`CATGA_REDIS_TLS_CA`) instead of the system's roots.
    pub fn redis_tls_ca(mut self, pem: impl Into<std::path::PathBuf>) -> Self {
        self.config.redis_tls.ca = Some(pem.into());
        self
    }

    /// Redis TLS with this client certificate and key, both PEM
    /// (`CATGA_REDIS_TLS_CERT`, `CATGA_REDIS_TLS_KEY`).
    pub fn redis_tls_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.config.redis_tls.cert = Some(cert.into());
        self.config.redis_tls.key = Some(key.into());
        self
    }

    /// Redis URL, or a comma-separated Redis Cluster node list.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.redis_url = Some(url.into());
        self
    }

    /// The outbox and inbox's PostgreSQL database (`CATGA_POSTGRES_URL`;
    /// see [`crate::outbox`]).
    #[cfg(feature = "postgres")]
    pub fn postgres_url(mut self, url: impl Into<String>) -> Self {
        self.config.postgres_url = Some(url.into());
        self
    }

    /// The outbox and inbox in the database of this pool (the program's
    /// own, so its handlers' transactions and the outbox share it);
    /// overrides `postgres_url`.
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, pool: sqlx::PgPool) -> Self {
        self.postgres.0 = Some(pool);
        self
    }

    /// Whether `start` creates the outbox and inbox tables when they are
    /// missing (default true; the SQL is `catga/migrations/`, idempotent).
    /// Turn it off when a migration tool of yours runs that SQL, or the
    /// database user may not create tables.
    #[cfg(feature = "postgres")]
    pub fn postgres_migrate(mut self, migrate: bool) -> Self {
        self.postgres.1 = migrate;
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

    /// Default timeout of `send`: the deadline of the whole send, every
    /// attempt included (see [`Config::request_timeout`]).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Serve `GET /metrics` on `addr` (port 0: any free one; see
    /// [`Config::http_addr`]).
    pub fn http_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.config.http_addr = Some(addr);
        self
    }

    /// NATS: how long a request may go without a sign of life from its
    /// responder before it is sent again elsewhere; `None` never re-sends
    /// (see [`Config::request_liveness`]).
    pub fn request_liveness(mut self, timeout: Option<Duration>) -> Self {
        self.config.request_liveness = timeout;
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

    /// NATS: retries of a send after "no responders" (0 = none).
    pub fn send_retries(mut self, retries: u32) -> Self {
        self.config.send_retries = retries;
        self
    }

    /// NATS: concurrent handlings per handler (at least 1; 0 is refused at start).
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.config.max_in_flight = limit;
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
    /// (default 5, at least 1: 0 is refused at start); when the last fails, the message is moved
    /// to the dead-letter stream (see [`App::dead_letters`]).
    ///
    /// ```
    /// let builder = catga::Catga::builder().max_deliver(3);
    /// # drop(builder);
    /// ```
    pub fn max_deliver(mut self, deliveries: u32) -> Self {
        self.config.max_deliver = deliveries;
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

    /// Read time through `clock` (default [`Clock::system`]): timeouts,
    /// leases, TTLs and backoff pauses of this instance (see [`Clock`]).
    ///
    /// ```
    /// let b = catga::Catga::builder().clock(catga::Clock::following_tokio());
    /// # drop(b);
    /// ```
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Subscribe only the registered handlers `keep` accepts.
    pub fn handlers_where(mut self, keep: impl Fn(&HandlerRecord) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Box::new(keep));
        self
    }

    /// Hold every saga step attempt at this gate (a test harness's).
    pub(crate) fn saga_gate(mut self, gate: Arc<dyn crate::instance::SagaGate>) -> Self {
        self.saga_gate = Some(gate);
        self
    }

    /// Subscribe no handlers, recover no sagas and deliver no scheduled
    /// messages: a client that only sends, publishes, schedules, and starts
    /// or queries sagas.
    pub fn client_only(mut self) -> Self {
        self.sweeps = false;
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
                Some(acks) => Store::connect_with(url, &config.redis_tls).await?.with_replica_acks(acks),
                None => Store::connect_with(url, &config.redis_tls).await?,
            },
            (None, None) => Store::global_memory(),
        };
        let sagas = definition::sagas();
        definition::validate(&sagas)?;
        let recovers = !sagas.is_empty() && self.sweeps;
        let mut handlers = registry::handlers();
        handlers.retain(|h| match h.saga {
            // A saga's event recorder: wherever that saga runs.
            Some(saga) => recovers && sagas.iter().any(|s| s.name == saga),
            None => self.filter.as_ref().is_none_or(|keep| keep(h)),
        });
        registry::validate(&handlers, &config.service)?;
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
        let metrics = Arc::new(Metrics::new(&config.metric_error_codes));
        let transport = match (&config.nats_url, self.bus) {
            (Some(_), Some(_)) => {
                return Err(Error::Config("both a NATS URL and a memory bus are set; choose one transport".into()));
            }
            (Some(_), None) => {
                Transport::Nats(crate::transport::nats::Nats::connect(&config, self.clock, metrics.clone()).await?)
            }
            (None, bus) => Transport::Memory(bus.unwrap_or_else(MemoryBus::global)),
        };
        #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
        let mut state = self.state;
        // The outbox is shared state (`Context::outbox` reads it there).
        #[cfg(feature = "postgres")]
        if let Some(outbox) = crate::outbox::Outbox::open(self.postgres, config.postgres_url.as_deref()).await? {
            state.insert(TypeId::of::<crate::outbox::Outbox>(), Arc::new(outbox));
        }
        let parts = Parts {
            middleware: self.middleware,
            saga_gate: self.saga_gate,
            state,
            handlers,
            clock: self.clock,
            metrics,
        };
        let instance = Instance::new(config, transport, store, parts);
        // Up before the handlers: `/readyz` says "starting" meanwhile.
        if let Some(addr) = instance.config.http_addr {
            let (addr, task) = http::start(addr, &instance).await?;
            instance.serve_http(addr, task);
        }
        // Beat before handling anything: a copy of a message this instance
        // claims judges it by its beats. An instance that may run sagas
        // joins the set the saga sweeps read; one that recovers them, the
        // sweepers among whom a dead instance's sagas are shared.
        let mut sets = Vec::new();
        if !sagas.is_empty() {
            sets.push(liveness::members_key());
            saga::store::register_names(&instance.store, sagas.iter().map(|s| s.name)).await?;
        }
        if recovers {
            sets.extend(sagas.iter().map(|s| liveness::sweepers_key(s.name)));
        }
        let heartbeat = Heartbeat::start(
            &instance.store,
            &instance.config.instance_id,
            instance.config.heartbeat_interval,
            instance.clock,
            sets,
        )
        .await?;
        *instance.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Some(heartbeat);
        // Every instance that links a saga type helps recover it (but not a
        // client: `client_only`). Before subscribing: what this instance id
        // owns before it handles anything is a previous run's.
        if recovers {
            recovery::start(&instance, sagas.clone()).await;
        }
        // Every instance but a client delivers scheduled messages.
        if self.sweeps {
            timers::start(&instance, if recovers { &sagas } else { &[] });
            // ... and relays what the outbox holds.
            #[cfg(feature = "postgres")]
            crate::outbox::relay::start(&instance);
        }
        instance.transport.subscribe(&instance, &instance.handlers).await?;
        instance.mark_subscribed();
        tracing::info!(
            service = instance.config.service,
            instance = instance.config.instance_id,
            handlers = instance.handlers.len(),
            transport = instance.transport.name(),
            store = instance.store.name(),
            "catga instance started"
        );
        Ok(App::from_instance(instance))
    }
}
