//! Errors: [`Error`] is what a caller of Catga gets; [`HandlerError`] is what a
//! handler returns and what travels back to the caller as a typed reply.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// The result type of Catga's own operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when sending, publishing or running Catga.
///
/// A handler's own failure arrives as [`Error::Handler`], carrying the
/// handler's [`HandlerError`] (code and message) unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nobody serves the subject: no instance has a handler subscribed to it.
    #[error(
        "no handler for subject \"{subject}\": no running instance subscribes to it; \
         start a service with a handler for it, or check the subject"
    )]
    NoHandler {
        /// The subject that was sent to.
        subject: &'static str,
    },

    /// No reply arrived within the timeout.
    #[error("no reply on subject \"{subject}\" within {after:?}; raise the timeout or check the handler")]
    Timeout {
        /// The subject that was sent to.
        subject: &'static str,
        /// How long the caller waited.
        after: Duration,
    },

    /// The handler ran and returned an error (or panicked, or its own
    /// handling timeout fired). The code and message are the handler's.
    #[error("handler for \"{subject}\" failed: {error}")]
    Handler {
        /// The subject that was sent to.
        subject: &'static str,
        /// The handler's error, as it returned it.
        error: HandlerError,
    },

    /// A payload could not be encoded or decoded.
    #[error("could not {action} a `{type_name}` for subject \"{subject}\": {reason}")]
    Codec {
        /// `encode` or `decode`.
        action: &'static str,
        /// The Rust type involved.
        type_name: &'static str,
        /// The subject of the message.
        subject: &'static str,
        /// What the codec said.
        reason: String,
    },

    /// The configuration is invalid; the message names the setting.
    #[error("configuration error: {0}")]
    Config(String),

    /// Two handlers claim what only one may own in one process.
    #[error(
        "duplicate {what} for subject \"{subject}\": {first} and {second}; \
         one process may have only one — remove one of them or give it another subject{queue_hint}"
    )]
    DuplicateHandler {
        /// "command handler" or "event handler in queue group \"q\"".
        what: String,
        /// The subject both handlers subscribe to.
        subject: &'static str,
        /// `file:line (name)` of the first handler.
        first: String,
        /// `file:line (name)` of the second handler.
        second: String,
        /// Extra advice, possibly empty.
        queue_hint: &'static str,
    },

    /// The encoded message is larger than the server accepts.
    #[error(
        "message on \"{subject}\" is {size} bytes, over the server's max_payload of {max} bytes; \
         send less, or raise max_payload in the nats-server configuration"
    )]
    PayloadTooLarge {
        /// The subject of the message.
        subject: &'static str,
        /// The encoded size.
        size: usize,
        /// The server's limit.
        max: usize,
    },

    /// The instance is shutting down or was shut down and takes no new work.
    #[error("instance \"{instance}\" is shut down; start a new one to send or publish")]
    Shutdown {
        /// The instance id.
        instance: String,
    },

    /// The store (Redis or in memory) refused or failed an operation: a
    /// version conflict, a fenced write, an unreachable server.
    #[error(transparent)]
    Store(#[from] crate::store::types::StoreError),

    /// PostgreSQL (the outbox and inbox, feature `postgres`) refused or
    /// failed an operation.
    #[error("PostgreSQL: {what} failed: {reason}")]
    Database {
        /// What Catga was doing, e.g. "writing a message to the outbox".
        what: &'static str,
        /// What the database (or its driver) said.
        reason: String,
    },

    /// A saga could not be started, continued or read.
    #[error("saga \"{saga}\" id \"{id}\": {reason}")]
    Saga {
        /// The saga's name.
        saga: String,
        /// The saga's id.
        id: String,
        /// What went wrong and what to do.
        reason: String,
    },

    /// The NATS server refused to let this connection publish to the
    /// subject (a permissions violation): not retried, since it will not
    /// change by itself.
    #[error(
        "not permitted to publish to \"{subject}\": the NATS server refused it ({reason}); grant this \
         service's NATS user publish permission for it (docs/SECURITY.md)"
    )]
    PermissionDenied {
        /// The subject.
        subject: &'static str,
        /// What the server said.
        reason: String,
    },

    /// The transport failed (connection lost, server refused, ...).
    #[error("transport error on \"{subject}\": {reason}")]
    Transport {
        /// The subject involved.
        subject: &'static str,
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    /// What failed, as a [`HandlerError`] code: `no_handler`, `timeout`,
    /// `codec`, `shutdown`, `transport`, `permission_denied`,
    /// `payload_too_large`, `store`, `database`, `saga`, `config` — or, for a
    /// handler's own error, `handler` (its code is [`code`](Error::code)).
    pub(crate) fn failure_code(&self) -> &'static str {
        match self {
            Error::Handler { .. } => "handler",
            Error::NoHandler { .. } => HandlerError::NO_HANDLER,
            Error::Timeout { .. } => HandlerError::TIMEOUT,
            Error::Codec { .. } => HandlerError::CODEC,
            Error::Shutdown { .. } => HandlerError::SHUTDOWN,
            Error::Transport { .. } => HandlerError::TRANSPORT,
            Error::PermissionDenied { .. } => HandlerError::PERMISSION_DENIED,
            Error::PayloadTooLarge { .. } => HandlerError::PAYLOAD_TOO_LARGE,
            Error::Store(_) => HandlerError::STORE,
            Error::Database { .. } => HandlerError::DATABASE,
            Error::Saga { .. } => HandlerError::SAGA,
            Error::Config(_) | Error::DuplicateHandler { .. } => HandlerError::CONFIG,
        }
    }

    /// The handler's error code, when the handler failed (`None` otherwise).
    ///
    /// ```
    /// # use catga::{Error, HandlerError};
    /// let e = Error::Handler { subject: "a.b", error: HandlerError::new("not_found", "no such order") };
    /// assert_eq!(e.code(), Some("not_found"));
    /// ```
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Handler { error, .. } => Some(error.code()),
            _ => None,
        }
    }

    /// The handler's error, when the handler failed.
    pub fn handler_error(&self) -> Option<&HandlerError> {
        match self {
            Error::Handler { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The error a handler returns: a machine-readable `code` and a message for
/// humans. It reaches the caller unchanged inside [`Error::Handler`].
///
/// Any `std::error::Error` converts into it with code [`HandlerError::INTERNAL`],
/// so `?` works on every error in a handler; give a specific code with
/// [`HandlerError::new`]. A failed `ctx.send(..).await?` passes the
/// downstream handler's error on unchanged.
///
/// ```
/// use catga::HandlerError;
/// let e = HandlerError::new("insufficient_funds", "balance is 3, order is 5");
/// assert_eq!(e.code(), "insufficient_funds");
/// assert_eq!(e.to_string(), "insufficient_funds: balance is 3, order is 5");
///
/// fn parse(s: &str) -> Result<u32, HandlerError> { Ok(s.parse::<u32>()?) }
/// assert_eq!(parse("x").unwrap_err().code(), HandlerError::INTERNAL);
/// ```
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandlerError {
    code: Cow<'static, str>,
    message: String,
}

/// Every error code Catga itself produces, in one place: a code matched in
/// one module and produced in another is the same constant.
impl HandlerError {
    /// Code of errors converted from any `std::error::Error`.
    pub const INTERNAL: &'static str = "internal";
    /// Code of a handler that panicked.
    pub const PANIC: &'static str = "panic";
    /// Code of a message that failed its validation hook (or did not decode).
    pub const INVALID: &'static str = "invalid";
    /// Code of a handling that exceeded its handler timeout.
    pub const HANDLER_TIMEOUT: &'static str = "handler_timeout";
    /// An [`Error::NoHandler`] met inside a handler (e.g. by `ctx.send`).
    pub const NO_HANDLER: &'static str = "no_handler";
    /// An [`Error::Timeout`] met inside a handler.
    pub const TIMEOUT: &'static str = "timeout";
    /// An [`Error::Codec`] met inside a handler.
    pub const CODEC: &'static str = "codec";
    /// An [`Error::Shutdown`] met inside a handler.
    pub const SHUTDOWN: &'static str = "shutdown";
    /// An [`Error::Transport`] met inside a handler.
    pub const TRANSPORT: &'static str = "transport";
    /// An [`Error::PayloadTooLarge`] met inside a handler, or a reply over
    /// the server's `max_payload`.
    pub const PAYLOAD_TOO_LARGE: &'static str = "payload_too_large";
    /// An [`Error::Store`] met inside a handler.
    pub const STORE: &'static str = "store";
    /// An [`Error::Database`] met inside a handler (the outbox or inbox).
    pub const DATABASE: &'static str = "database";
    /// An [`Error::Saga`] met inside a handler.
    pub const SAGA: &'static str = "saga";
    /// An [`Error::Config`] or [`Error::DuplicateHandler`] met inside a handler.
    pub const CONFIG: &'static str = "config";
    /// The answer to a copy of a message whose first handling is still
    /// running (idempotent handlers; retry later with the same message id).
    pub const IN_PROGRESS: &'static str = "in_progress";
    /// A durable message whose deliveries never finished (the instances
    /// handling it died or shut down); dead-lettered without running again.
    pub const NOT_FINISHED: &'static str = "not_finished";
    /// A command that reached its handler after its sender's deadline (or
    /// whose deadline passed while it waited for a handling slot): not
    /// handled, since nobody waits for the outcome.
    pub const DEADLINE: &'static str = "deadline";
    /// An [`Error::PermissionDenied`] met inside a handler: its NATS user
    /// may not publish where it tried to. Not transient.
    pub const PERMISSION_DENIED: &'static str = "permission_denied";

    /// Whether `code` is a failure of the infrastructure rather than of a
    /// handler's own logic: no handler reachable, a timeout (the caller's or
    /// the handler's), the transport, the store or the database failing, a copy still in
    /// progress, an instance shutting down. Retrying later may succeed.
    ///
    /// ```
    /// use catga::HandlerError;
    /// assert!(HandlerError::is_transient_code(HandlerError::TIMEOUT));
    /// assert!(!HandlerError::is_transient_code("insufficient_funds"));
    /// ```
    pub fn is_transient_code(code: &str) -> bool {
        [
            Self::NO_HANDLER,
            Self::TIMEOUT,
            Self::TRANSPORT,
            Self::STORE,
            Self::DATABASE,
            Self::SHUTDOWN,
            Self::IN_PROGRESS,
            Self::HANDLER_TIMEOUT,
        ]
        .contains(&code)
    }

    /// An error with a code (snake_case by convention) and a message.
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        HandlerError { code: code.into(), message: message.into() }
    }

    /// An [`INVALID`](Self::INVALID) error: the message failed validation.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Self::INVALID, message)
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError").field("code", &self.code).field("message", &self.message).finish()
    }
}

// `HandlerError` deliberately does not implement `std::error::Error`, so that
// every error type converts into it with `?` (the same trick as `anyhow`).
impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    /// A Catga [`Error`] keeps its meaning: a downstream handler's error
    /// passes through unchanged (so `ctx.send(..).await?` propagates its
    /// code), the others get a code naming what failed (`no_handler`,
    /// `timeout`, `codec`, `shutdown`, `transport`, `config`). A `sqlx`
    /// error of the database rather than of the query (a lost connection, a
    /// deadlock, a serialization failure, no connection free) becomes
    /// [`DATABASE`](Self::DATABASE), transient. Any other error becomes
    /// [`INTERNAL`](Self::INTERNAL) with its message and causes.
    fn from(error: E) -> Self {
        if let Some(catga) = (&error as &dyn std::any::Any).downcast_ref::<Error>() {
            if let Error::Handler { error, .. } = catga {
                return error.clone();
            }
            return HandlerError::new(catga.failure_code(), catga.to_string());
        }
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        // A database that failed, not the query (a lost connection, a
        // deadlock, a serialization failure): worth trying again.
        #[cfg(feature = "postgres")]
        if let Some(db) = (&error as &dyn std::any::Any).downcast_ref::<sqlx::Error>()
            && sqlx_transient(db)
        {
            return HandlerError::new(Self::DATABASE, message);
        }
        HandlerError::new(Self::INTERNAL, message)
    }
}

#[cfg(feature = "postgres")]
/// Whether a `sqlx` error is the database failing rather than the query:
/// a connection lost or refused (SQLSTATE class 08), a deadlock or a
/// serialization failure (40), the server out of resources (53), shutting
/// down (57P), a lock not available (55P03), no connection free in time.
pub(crate) fn sqlx_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "40", "53", "57P"].iter().any(|class| code.starts_with(class)) || code == "55P03"
        }),
        _ => false,
    }
}
