//! Configuration of one instance, from the environment or the builder.
//!
//! | variable                     | meaning                                   | default |
//! |------------------------------|-------------------------------------------|---------|
//! | `CATGA_SERVICE`              | service name (default command queue group) | the executable's name |
//! | `CATGA_INSTANCE_ID`          | this instance's id                         | `{service}-{8 random hex}` |
//! | `CATGA_NATS_URL`             | NATS servers, comma-separated              | unset: in memory |
//! | `CATGA_REDIS_URL`            | the store: a Redis URL, or Redis Cluster nodes comma-separated | unset: in memory |
//! | `CATGA_REQUEST_TIMEOUT_MS`   | default timeout of `send`, every attempt included (its deadline) | 5000 |
//! | `CATGA_HANDLER_TIMEOUT_MS`   | default limit on one handling              | none |
//! | `CATGA_GRACE_PERIOD_MS`      | how long shutdown waits for in-flight work | 10000 |
//! | `CATGA_SERVICE_VERSION`      | version reported by the NATS service API (semver) | 0.0.0 |
//! | `CATGA_SEND_RETRIES`         | NATS: retries after a timeout or "no responders" | 2 |
//! | `CATGA_MAX_IN_FLIGHT`        | NATS: concurrent handlings per handler     | 256 |
//! | `CATGA_NATS_PING_INTERVAL_MS`| NATS: how often a silent server is probed  | 5000 |
//! | `CATGA_HTTP_ADDR`            | where `GET /metrics` (Prometheus text), `/healthz` and `/readyz` answer, e.g. `0.0.0.0:9464` | unset: no HTTP endpoint |
//! | `CATGA_METRIC_ERROR_CODES`   | handler error codes that get a metric label of their own, comma-separated (others are `other`) | none |
//! | `CATGA_LOG_FORMAT`           | `Catga::run()`'s default log lines: `plain` or `json` (one object per line); filtered by `RUST_LOG` (default `info`) | plain |
//! | `CATGA_REQUEST_LIVENESS_MS`  | NATS: a request whose responder sent no sign of life for this long is sent again (0: never) | 400 |
//! | `CATGA_IDEMPOTENT`           | handlers without `idempotent = ..` record results by message id (`true`/`false`) | false |
//! | `CATGA_IDEMPOTENCY_TTL_MS`   | how long a recorded result answers copies  | 86400000 (24 h) |
//! | `CATGA_SAGA_LEASE_MS`        | lease of the instance running a saga (renewed every third): only a last resort now, for a saga whose owner is not judged by its heartbeat | 60000 |
//! | `CATGA_SAGA_SWEEP_MS`        | how often each instance reads the heartbeats of the instances that may own sagas, and takes over a dead one's share | 250 |
//! | `CATGA_TIMER_INTERVAL_MS`    | how often each instance looks for scheduled messages due soon (each is then delivered at its time, not at the next look) | 250 |
//! | `CATGA_REDIS_REPLICA_ACKS`   | replicas that must confirm each Redis write | 1 on a Cluster, 0 on one server |
//! | `CATGA_SAGA_COMPENSATION_RETRIES` | retries of a failing compensation before the saga is `Failed` | 5 |
//! | `CATGA_SAGA_CRASH_RERUNS`    | re-runs of a step whose instance died mid-step before it counts as failed | 5 |
//! | `CATGA_HEARTBEAT_MS`         | how often an instance with a store writes its heartbeat (four beats per liveness window: a live instance is judged dead only if four in a row do not reach the store) | 250 |
//! | `CATGA_HEARTBEAT_TIMEOUT_MS`  | an instance whose heartbeat did not change for this long (read successfully throughout) is dead: its idempotency claims and sagas are taken over after about this plus one look | 1000 |
//! | `CATGA_ACK_WAIT_MS`          | durable: how long a pulled message may go without a sign of life before it is redelivered | 1500 |
//! | `CATGA_MAX_DELIVER`          | durable: deliveries of one message before it is dead-lettered | 5 |
//! | `CATGA_EVENT_MAX_AGE_MS`     | durable: how long a durable event stream keeps events | 604800000 (7 days) |
//! | `CATGA_POSTGRES_URL`         | the outbox and inbox's PostgreSQL (feature `postgres`; see [`crate::outbox`]) | unset: no outbox |
//! | `CATGA_OUTBOX_RETENTION_MS`  | how long published outbox rows are kept before they are deleted | 3600000 (1 h) |
//! | `CATGA_INBOX_RETENTION_MS`   | how long the inbox remembers a handled message (a copy arriving later is handled again) | 604800000 (7 days) |
//!
//! The durable settings apply to handlers of `#[catga(durable)]` contracts
//! over NATS (JetStream); every instance of a handler should use the same
//! values, since the last one to start sets them on the shared consumer.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::security::{NatsSecurity, RedisTls, redact_url};

/// How [`Catga::run`](crate::Catga::run)'s default subscriber writes log
/// lines (`CATGA_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The shortest [`Config::request_liveness`]: two periods of the signals
/// responders send (every 100 ms).
const LIVENESS_MIN: Duration = Duration::from_millis(200);

/// Settings of one instance. Its `Debug` output shows URLs without their
/// passwords or tokens, and no secret.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// The service name; command handlers without a `queue` join the queue
    /// group of this name.
    pub service: String,
    /// This instance's id (unique among the instances of the service).
    pub instance_id: String,
    /// NATS server URLs; `None` runs on the in-memory transport. A URL may
    /// carry credentials (`nats://user:password@host`, `nats://token@host`);
    /// they are used, and never shown (see [`crate::security`]).
    pub nats_url: Option<String>,
    /// NATS credentials and TLS (`CATGA_NATS_USER`, `_PASSWORD`, `_TOKEN`,
    /// `_NKEY`, `_CREDS`, `_TLS_CA`, `_TLS_CERT`, `_TLS_KEY`, `_TLS_REQUIRED`).
    pub nats_security: NatsSecurity,
    /// The store: one Redis URL (`redis://host:port`), or a comma-separated
    /// list of Redis Cluster nodes; `None` keeps state in memory (shared by
    /// the instances of one process only). See [`Store::connect`](crate::store::Store::connect).
    /// A password or ACL user goes in the URL (`redis://user:password@host`);
    /// `rediss://` is TLS.
    pub redis_url: Option<String>,
    /// Redis TLS files (`CATGA_REDIS_TLS_CA`, `_CERT`, `_KEY`), for
    /// `rediss://` URLs.
    pub redis_tls: RedisTls,
    /// Default timeout of [`App::send`](crate::App::send): the deadline of
    /// the whole send, every attempt included. It travels with the command
    /// ([`Context::deadline`](crate::Context::deadline)), bounds the sends
    /// its handler makes, and a command still waiting for a handling slot
    /// when it passes is not handled.
    pub request_timeout: Duration,
    /// Default limit on one handling (a handler's `timeout` overrides it).
    pub handler_timeout: Option<Duration>,
    /// How long shutdown waits for in-flight handlings.
    pub grace_period: Duration,
    /// The service's version (semver), reported by the NATS service API.
    pub version: String,
    /// NATS: how many times a send is retried after "no responders" (no
    /// instance subscribed), with exponential backoff and jitter, reusing
    /// its message id. Re-sends after a responder stopped showing signs of
    /// life ([`request_liveness`](Config::request_liveness)) do not count:
    /// the deadline bounds them.
    pub send_retries: u32,
    /// NATS: concurrent handlings per handler; further messages wait in the
    /// subscription's buffer (4 × this, at least 1024 messages) and beyond
    /// it are dropped by the client and logged as a slow consumer, so
    /// memory stays bounded.
    pub max_in_flight: usize,
    /// NATS: ping interval. A server that dies silently (no TCP reset) is
    /// only noticed after about two missed pings.
    pub nats_ping_interval: Duration,
    /// How the default log subscriber of [`Catga::run`](crate::Catga::run)
    /// writes (when the program installed none).
    pub log_format: LogFormat,
    /// Where the instance's HTTP endpoint listens: `GET /metrics` (see
    /// [`crate::metrics`]). `None`: no endpoint (the metrics are still
    /// kept: [`App::metrics_text`](crate::App::metrics_text)).
    pub http_addr: Option<std::net::SocketAddr>,
    /// Error codes of the program's handlers that get a label value of
    /// their own in the metrics; any other code is counted as `other`, so
    /// a code built from data cannot grow the metrics without bound.
    /// Catga's own codes always have theirs.
    pub metric_error_codes: Vec<String>,
    /// NATS: how long a sender waits for a sign of life of its request —
    /// the reply, or a `working` signal its responder sends every 100 ms
    /// while it holds the request (queued or running) — before it takes the
    /// responder for dead and sends the request again (same message id) to
    /// another instance. 400 ms is four signals: three may be late or lost
    /// before a live responder is given up on, and a dead one is noticed
    /// within half a second. `None` (`CATGA_REQUEST_LIVENESS_MS=0`): never re-send
    /// — for responders that are not Catga and answer slowly.
    pub request_liveness: Option<Duration>,
    /// Whether handlers that do not say `idempotent = ..` are idempotent:
    /// their first handling of a message id records its reply in the store,
    /// later copies get that reply without running the handler.
    pub idempotent_by_default: bool,
    /// How long a recorded reply answers copies of its message. It must
    /// cover every way a copy can arrive: the sender's whole retry window
    /// (`send_retries` × request timeout plus backoff) and, for durable
    /// messages, redelivery (max deliver × ack wait). Copies arriving later
    /// run the handler again.
    pub idempotency_ttl: Duration,
    /// The lease an instance holds on a saga it runs (renewed every third
    /// of it). A saga whose runner died is taken over once the runner is
    /// judged dead by its heartbeat ([`heartbeat_timeout`](Config::heartbeat_timeout)),
    /// not when this expires: the lease is the last resort, for a saga no
    /// owner's heartbeat accounts for (a saga written by an older build),
    /// which a slower sweep of every saga (every lease TTL) takes over
    /// once its lease expired. Long, so running sagas write rarely.
    pub saga_lease_ttl: Duration,
    /// How often every instance that recovers sagas reads the heartbeats of
    /// the instances that may own sagas and takes over its share of a dead
    /// one's sagas.
    pub saga_sweep_interval: Duration,
    /// How often every instance (but a client) looks at the timer queues
    /// for scheduled messages due within the next interval; each is then
    /// delivered at its due time.
    pub timer_interval: Duration,
    /// How long `start_saga` waits for the outcome of a saga with the same
    /// id that another instance is running, or of its saga when it parks
    /// at a waiting step.
    pub saga_wait: Duration,
    /// Retries of a failing compensation before the saga is `Failed`.
    pub saga_compensation_retries: u32,
    /// How often a step (or compensation) whose instance died mid-way is
    /// run again before that counts as the step failing — so a step that
    /// crashes every instance running it cannot take the whole service down.
    pub saga_crash_reruns: u32,
    /// How often a step that meets a transient error (no handler, timeout,
    /// transport, store, in progress, shutdown) is tried again before that
    /// counts as one of its failures. With the backoff (up to 2 s between
    /// tries) the default rides out an outage of about 30 s.
    pub saga_transient_retries: u32,
    /// How often an instance with a store writes its heartbeat (from a
    /// thread of its own on Redis, so busy handlers do not delay it). See
    /// [`crate::liveness`].
    pub heartbeat_interval: Duration,
    /// An instance whose heartbeat did not change for this long, read
    /// successfully throughout by the judge, is dead: a copy of a message
    /// it was handling takes its idempotency claim over, and the survivors
    /// take over its sagas. A failed read starts the window again, so a
    /// store failover never makes a live instance look dead. At least twice
    /// the heartbeat interval.
    pub heartbeat_timeout: Duration,
    /// Redis: replicas that must confirm each write (`WAIT`) before it is
    /// acknowledged. `None`: 1 on a Redis Cluster (a write is on two nodes
    /// before anyone relies on it; a shard with no live replica refuses
    /// writes until one is back), 0 on a single server.
    pub redis_replica_acks: Option<u32>,
    /// Durable (JetStream) handlers: how long a delivered message may go
    /// without a sign of life before the server redelivers it to another
    /// instance. A running handling extends it every `ack_wait / 4` from the
    /// instance's I/O thread (so a busy runtime does not miss it), so
    /// only a dead or frozen instance's messages are redelivered: within
    /// about 1.5 s by default, well inside the default request deadline.
    pub ack_wait: Duration,
    /// Durable handlers: deliveries of one message (the first included);
    /// when the last one fails, the message goes to the dead-letter stream.
    pub max_deliver: u32,
    /// Durable events: how long their stream keeps an event (acknowledged
    /// or not), so a queue group that is down for less than this misses
    /// nothing.
    pub event_max_age: Duration,
    /// The outbox and inbox's PostgreSQL (`postgres://user:password@host/db`,
    /// the password never shown; feature `postgres`, see [`crate::outbox`]).
    /// `None`: none, unless [`Builder::postgres`](crate::Builder::postgres).
    pub postgres_url: Option<String>,
    /// How long the outbox keeps a row after it was published.
    pub outbox_retention: Duration,
    /// How long the inbox remembers a handled message (a copy arriving
    /// later is handled again): longer than every way a copy can arrive.
    pub inbox_retention: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured without `..`: a new field is a compile error here
        // until it is shown (or deliberately hidden).
        let Config {
            service,
            instance_id,
            nats_url,
            nats_security,
            redis_url,
            redis_tls,
            request_timeout,
            handler_timeout,
            grace_period,
            version,
            send_retries,
            max_in_flight,
            nats_ping_interval,
            log_format,
            http_addr,
            metric_error_codes,
            request_liveness,
            idempotent_by_default,
            idempotency_ttl,
            saga_lease_ttl,
            saga_sweep_interval,
            timer_interval,
            saga_wait,
            saga_compensation_retries,
            saga_crash_reruns,
            saga_transient_retries,
            heartbeat_interval,
            heartbeat_timeout,
            redis_replica_acks,
            ack_wait,
            max_deliver,
            event_max_age,
            postgres_url,
            outbox_retention,
            inbox_retention,
        } = self;
        let url = |u: &Option<String>| u.as_deref().map(redact_url);
        f.debug_struct("Config")
            .field("service", service)
            .field("instance_id", instance_id)
            .field("nats_url", &url(nats_url))
            .field("nats_security", nats_security)
            .field("redis_url", &url(redis_url))
            .field("redis_tls", redis_tls)
            .field("request_timeout", request_timeout)
            .field("handler_timeout", handler_timeout)
            .field("grace_period", grace_period)
            .field("version", version)
            .field("send_retries", send_retries)
            .field("max_in_flight", max_in_flight)
            .field("nats_ping_interval", nats_ping_interval)
            .field("log_format", log_format)
            .field("http_addr", http_addr)
            .field("metric_error_codes", metric_error_codes)
            .field("request_liveness", request_liveness)
            .field("idempotent_by_default", idempotent_by_default)
            .field("idempotency_ttl", idempotency_ttl)
            .field("saga_lease_ttl", saga_lease_ttl)
            .field("saga_sweep_interval", saga_sweep_interval)
            .field("timer_interval", timer_interval)
            .field("saga_wait", saga_wait)
            .field("saga_compensation_retries", saga_compensation_retries)
            .field("saga_crash_reruns", saga_crash_reruns)
            .field("saga_transient_retries", saga_transient_retries)
            .field("heartbeat_interval", heartbeat_interval)
            .field("heartbeat_timeout", heartbeat_timeout)
            .field("redis_replica_acks", redis_replica_acks)
            .field("ack_wait", ack_wait)
            .field("max_deliver", max_deliver)
            .field("event_max_age", event_max_age)
            .field("postgres_url", &url(postgres_url))
            .field("outbox_retention", outbox_retention)
            .field("inbox_retention", inbox_retention)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        // The executable's name, made a valid queue-group token.
        let service = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .map(|name| name.replace(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'), "-"))
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "catga".to_owned());
        Config {
            instance_id: String::new(),
            service,
            nats_url: None,
            nats_security: NatsSecurity::default(),
            redis_url: None,
            redis_tls: RedisTls::default(),
            request_timeout: Duration::from_secs(5),
            handler_timeout: None,
            grace_period: Duration::from_secs(10),
            version: "0.0.0".to_owned(),
            send_retries: 2,
            max_in_flight: 256,
            nats_ping_interval: Duration::from_secs(5),
            log_format: LogFormat::Plain,
            http_addr: None,
            metric_error_codes: Vec::new(),
            request_liveness: Some(Duration::from_millis(400)),
            idempotent_by_default: false,
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            saga_lease_ttl: Duration::from_secs(60),
            saga_sweep_interval: Duration::from_millis(250),
            timer_interval: Duration::from_millis(250),
            saga_wait: Duration::from_secs(60),
            saga_compensation_retries: 5,
            saga_crash_reruns: 5,
            saga_transient_retries: 20,
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(1),
            redis_replica_acks: None,
            ack_wait: Duration::from_millis(1500),
            max_deliver: 5,
            event_max_age: Duration::from_secs(7 * 24 * 3600),
            postgres_url: None,
            outbox_retention: Duration::from_secs(3600),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Config {
    /// Defaults overridden by the `CATGA_*` variables that are set. A value
    /// that does not parse is an error naming the variable.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`from_env`](Self::from_env), reading from any lookup function.
    ///
    /// ```
    /// use catga::Config;
    /// let c = Config::from_lookup(|k| (k == "CATGA_SERVICE").then(|| "orders".to_owned())).unwrap();
    /// assert_eq!(c.service, "orders");
    /// let err = Config::from_lookup(|k| (k == "CATGA_GRACE_PERIOD_MS").then(|| "soon".to_owned())).unwrap_err();
    /// assert!(err.to_string().contains("CATGA_GRACE_PERIOD_MS"));
    /// let err = Config::from_lookup(|k| (k == "CATGA_REQUEST_TIMEOUT_MS").then(|| "0".to_owned())).unwrap_err();
    /// assert!(err.to_string().contains("zero"));
    /// let c = Config::from_lookup(|k| (k == "CATGA_MAX_DELIVER").then(|| "3".to_owned())).unwrap();
    /// assert_eq!(c.max_deliver, 3);
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = Config::default();
        let set = |key: &str| lookup(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if let Some(v) = set("CATGA_SERVICE") {
            c.service = v;
        }
        if let Some(v) = set("CATGA_INSTANCE_ID") {
            c.instance_id = v;
        }
        c.nats_url = set("CATGA_NATS_URL");
        c.nats_security = NatsSecurity::from_lookup(&lookup)?;
        c.redis_url = set("CATGA_REDIS_URL");
        c.redis_tls = RedisTls::from_lookup(&lookup);
        let millis = |key: &str| -> Result<Option<Duration>> {
            set(key)
                .map(|v| match v.parse::<u64>() {
                    Ok(ms) => Ok(Duration::from_millis(ms)),
                    Err(_) => Err(Error::Config(format!("{key}={v:?} is not a whole number of milliseconds"))),
                })
                .transpose()
        };
        if let Some(d) = millis("CATGA_REQUEST_TIMEOUT_MS")? {
            c.request_timeout = d;
        }
        if let Some(d) = millis("CATGA_HANDLER_TIMEOUT_MS")? {
            c.handler_timeout = Some(d);
        }
        if let Some(d) = millis("CATGA_GRACE_PERIOD_MS")? {
            c.grace_period = d;
        }
        if let Some(d) = millis("CATGA_NATS_PING_INTERVAL_MS")? {
            c.nats_ping_interval = d;
        }
        if let Some(v) = set("CATGA_LOG_FORMAT") {
            c.log_format = match v.to_ascii_lowercase().as_str() {
                "plain" | "text" => LogFormat::Plain,
                "json" => LogFormat::Json,
                _ => return Err(Error::Config(format!("CATGA_LOG_FORMAT={v:?} is not `plain` or `json`"))),
            };
        }
        if let Some(d) = millis("CATGA_REQUEST_LIVENESS_MS")? {
            c.request_liveness = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = millis("CATGA_SAGA_LEASE_MS")? {
            c.saga_lease_ttl = d;
        }
        if let Some(d) = millis("CATGA_SAGA_SWEEP_MS")? {
            c.saga_sweep_interval = d;
        }
        if let Some(d) = millis("CATGA_TIMER_INTERVAL_MS")? {
            c.timer_interval = d;
        }
        if let Some(d) = millis("CATGA_HEARTBEAT_MS")? {
            c.heartbeat_interval = d;
        }
        if let Some(d) = millis("CATGA_HEARTBEAT_TIMEOUT_MS")? {
            c.heartbeat_timeout = d;
        }
        if let Some(d) = millis("CATGA_IDEMPOTENCY_TTL_MS")? {
            c.idempotency_ttl = d;
        }
        if let Some(v) = set("CATGA_IDEMPOTENT") {
            c.idempotent_by_default = match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => return Err(Error::Config(format!("CATGA_IDEMPOTENT={v:?} is not true or false"))),
            };
        }
        if let Some(d) = millis("CATGA_ACK_WAIT_MS")? {
            c.ack_wait = d;
        }
        if let Some(d) = millis("CATGA_EVENT_MAX_AGE_MS")? {
            c.event_max_age = d;
        }
        c.postgres_url = set("CATGA_POSTGRES_URL");
        if let Some(d) = millis("CATGA_OUTBOX_RETENTION_MS")? {
            c.outbox_retention = d;
        }
        if let Some(d) = millis("CATGA_INBOX_RETENTION_MS")? {
            c.inbox_retention = d;
        }
        if let Some(v) = set("CATGA_SERVICE_VERSION") {
            c.version = v;
        }
        if let Some(v) = set("CATGA_HTTP_ADDR") {
            c.http_addr = Some(v.parse().map_err(|_| {
                Error::Config(format!("CATGA_HTTP_ADDR={v:?} is not an address with a port, like 0.0.0.0:9464"))
            })?);
        }
        if let Some(v) = set("CATGA_METRIC_ERROR_CODES") {
            c.metric_error_codes = v.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect();
        }
        let number = |key: &str| -> Result<Option<u64>> {
            set(key)
                .map(|v| v.parse::<u64>().map_err(|_| Error::Config(format!("{key}={v:?} is not a whole number"))))
                .transpose()
        };
        if let Some(n) = number("CATGA_SEND_RETRIES")? {
            c.send_retries = n.min(u32::MAX as u64) as u32;
        }
        if let Some(n) = number("CATGA_REDIS_REPLICA_ACKS")? {
            c.redis_replica_acks = Some(n.min(u32::MAX as u64) as u32);
        }
        if let Some(n) = number("CATGA_SAGA_COMPENSATION_RETRIES")? {
            c.saga_compensation_retries = n.min(u32::MAX as u64) as u32;
        }
        if let Some(n) = number("CATGA_SAGA_CRASH_RERUNS")? {
            c.saga_crash_reruns = n.min(u32::MAX as u64) as u32;
        }
        if let Some(n) = number("CATGA_MAX_IN_FLIGHT")? {
            c.max_in_flight = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = number("CATGA_MAX_DELIVER")? {
            c.max_deliver = n.min(u32::MAX as u64) as u32;
        }
        c.validate()?;
        Ok(c)
    }

    /// Check every setting, however it was set (environment, builder,
    /// [`Builder::configure`](crate::Builder::configure)): the one place
    /// where a value is refused. The error names the setting, its
    /// environment variable, and why.
    ///
    /// ```
    /// let mut c = catga::Config::default();
    /// c.max_in_flight = 0;
    /// let err = c.validate().unwrap_err().to_string();
    /// assert!(err.contains("max_in_flight") && err.contains("CATGA_MAX_IN_FLIGHT"), "{err}");
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.nats_security.validate()?;
        self.redis_tls.validate(self.redis_url.as_deref())?;
        let token = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !token(&self.service) {
            return Err(Error::Config(format!(
                "service name {:?} must be letters, digits, '-' or '_' (it names a NATS queue group and the \
                 service in $SRV subjects)",
                self.service
            )));
        }
        if !self.instance_id.is_empty() && !token(&self.instance_id) {
            return Err(Error::Config(format!(
                "instance id {:?} must be letters, digits, '-' or '_' (it is a token of $SRV subjects)",
                self.instance_id
            )));
        }
        if let Err(e) = semver::Version::parse(&self.version) {
            return Err(Error::Config(format!(
                "service version {:?} (CATGA_SERVICE_VERSION or `.version(..)`) is not semver, as the NATS service \
                 API requires (e.g. \"1.4.0\" or \"2.0.0-rc.1\"): {e}",
                self.version
            )));
        }
        let limits = [
            ("request_timeout", "CATGA_REQUEST_TIMEOUT_MS", Some(self.request_timeout)),
            ("handler_timeout", "CATGA_HANDLER_TIMEOUT_MS", self.handler_timeout),
            ("grace_period", "CATGA_GRACE_PERIOD_MS", Some(self.grace_period)),
            ("nats_ping_interval", "CATGA_NATS_PING_INTERVAL_MS", Some(self.nats_ping_interval)),
            ("request_liveness", "CATGA_REQUEST_LIVENESS_MS", self.request_liveness),
            ("saga_lease_ttl", "CATGA_SAGA_LEASE_MS", Some(self.saga_lease_ttl)),
            ("saga_sweep_interval", "CATGA_SAGA_SWEEP_MS", Some(self.saga_sweep_interval)),
            ("timer_interval", "CATGA_TIMER_INTERVAL_MS", Some(self.timer_interval)),
            ("heartbeat_interval", "CATGA_HEARTBEAT_MS", Some(self.heartbeat_interval)),
            ("heartbeat_timeout", "CATGA_HEARTBEAT_TIMEOUT_MS", Some(self.heartbeat_timeout)),
            ("idempotency_ttl", "CATGA_IDEMPOTENCY_TTL_MS", Some(self.idempotency_ttl)),
            ("ack_wait", "CATGA_ACK_WAIT_MS", Some(self.ack_wait)),
            ("event_max_age", "CATGA_EVENT_MAX_AGE_MS", Some(self.event_max_age)),
            ("outbox_retention", "CATGA_OUTBOX_RETENTION_MS", Some(self.outbox_retention)),
            ("inbox_retention", "CATGA_INBOX_RETENTION_MS", Some(self.inbox_retention)),
        ];
        for (name, var, value) in limits {
            if value == Some(Duration::ZERO) {
                return Err(Error::Config(format!(
                    "{name} is zero ({var}=0 or its builder method): a zero limit would fail every message"
                )));
            }
        }
        if self.heartbeat_timeout < self.heartbeat_interval * 2 {
            return Err(Error::Config(format!(
                "heartbeat_timeout ({:?}, CATGA_HEARTBEAT_TIMEOUT_MS) is less than twice heartbeat_interval ({:?}, \
                 CATGA_HEARTBEAT_MS): a live instance would be judged dead between two beats",
                self.heartbeat_timeout, self.heartbeat_interval
            )));
        }
        if let Some(liveness) = self.request_liveness
            && liveness < LIVENESS_MIN
        {
            return Err(Error::Config(format!(
                "request_liveness is {liveness:?} (CATGA_REQUEST_LIVENESS_MS): below {LIVENESS_MIN:?} the signals a live \
                 responder sends every 100 ms could not keep its requests from being sent again; set at least \
                 {LIVENESS_MIN:?}, or 0 to never re-send"
            )));
        }
        if self.max_in_flight == 0 {
            return Err(Error::Config(
                "max_in_flight is 0 (CATGA_MAX_IN_FLIGHT=0 or its builder method): it would never handle anything"
                    .into(),
            ));
        }
        if self.max_deliver == 0 {
            return Err(Error::Config(
                "max_deliver is 0 (CATGA_MAX_DELIVER=0 or its builder method): it would never deliver a durable \
                 message"
                    .into(),
            ));
        }
        if self.postgres_url.is_some() && !cfg!(feature = "postgres") {
            return Err(Error::Config(
                "CATGA_POSTGRES_URL is set but this build has no PostgreSQL support: enable catga's `postgres` \
                 feature (catga = { features = [\"postgres\"] })"
                    .into(),
            ));
        }
        if self.max_deliver > i32::MAX as u32 {
            return Err(Error::Config(format!(
                "max_deliver is {} (CATGA_MAX_DELIVER): JetStream counts deliveries up to {}",
                self.max_deliver,
                i32::MAX
            )));
        }
        Ok(())
    }

    /// Check the settings and fill in what is derived: the instance id.
    pub(crate) fn resolve(mut self) -> Result<Self> {
        self.validate()?;
        if self.instance_id.is_empty() {
            self.instance_id = format!("{}-{:08x}", self.service, fastrand::u32(..));
        }
        Ok(self)
    }
}
