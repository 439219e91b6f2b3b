//! The transactional outbox and inbox on PostgreSQL (feature `postgres`):
//! a handler that changes a database publishes and sends in the same
//! transaction as its change, and applies each message once.
//!
//! ```no_run
//! use catga::prelude::*;
//! use catga::outbox::Begin;
//!
//! #[derive(Debug, Serialize, Deserialize, Command)]
//! #[catga(subject = "doc.outbox.place", reply = u64)]
//! pub struct PlaceOrder { customer: String, amount: i64 }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[catga(subject = "doc.outbox.placed")]
//! pub struct OrderPlaced { order: u64 }
//!
//! #[catga::command(queue = "orders")]
//! async fn place(cmd: PlaceOrder, ctx: Context) -> Result<u64, HandlerError> {
//!     // BEGIN, and record this message in the inbox — or find that a copy
//!     // of it was handled already, and answer what that handling did.
//!     let mut tx = match ctx.outbox()?.begin(&ctx).await? {
//!         Begin::New(tx) => tx,
//!         Begin::Done(reply) => return Ok(reply),
//!     };
//!     let (order,): (i64,) = sqlx::query_as("INSERT INTO orders (customer, amount) VALUES ($1, $2) RETURNING id")
//!         .bind(&cmd.customer)
//!         .bind(cmd.amount)
//!         .fetch_one(&mut *tx)
//!         .await?;
//!     let order = order as u64;
//!     // A row of the outbox, in the same transaction: published once it commits.
//!     tx.key(format!("order:{order}")).publish(OrderPlaced { order })?;
//!     tx.commit_with(&order).await?;
//!     Ok(order)
//! }
//!
//! # #[tokio::main] async fn main() -> catga::Result<()> {
//! // CATGA_POSTGRES_URL=postgres://localhost/shop, or a pool of the program's:
//! let app = Catga::builder().postgres_url("postgres://localhost/shop").start().await?;
//! # app.shutdown().await; Ok(()) }
//! ```
//!
//! ## What it guarantees
//! - **Outbox**: what a transaction publishes or sends ([`Tx::publish`],
//!   [`Tx::send`]) is a row of `catga_outbox`, committed or rolled back
//!   with the rest of the transaction. A committed row is delivered at
//!   least once — with the message id, correlation id and trace context it
//!   was written with — whatever instance dies when: a crash after the
//!   commit leaves the row for another instance's relay; a crash after the
//!   delivery but before the row was marked sent delivers it again, with
//!   the same message id (a receiver with an inbox, or an `idempotent`
//!   one, sees it once).
//! - **Order**: the rows of one key ([`Tx::key`]; by default, the
//!   transaction's own: its messages in the order written) are delivered
//!   one at a time, in commit order; a row that cannot be delivered yet
//!   holds back the later rows of its key, not other keys.
//! - **Inbox**: [`Outbox::begin`] records the handled message's id (per
//!   handler: its queue group, or its instance for a broadcast handler) in
//!   `catga_inbox` in the same transaction. A copy of the message — a
//!   retry, a redelivery, a saga step run again — finds it and gets
//!   [`Begin::Done`] with the reply the first handling recorded, and
//!   changes nothing. A copy arriving while the first handling's
//!   transaction is open waits for it to end (PostgreSQL's unique index),
//!   then is `Done` if it committed, `New` if it rolled back.
//!
//! A command written to the outbox is sent as [`App::send`](crate::App::send)
//! would (the reply is not kept; a handler's error is logged and counts as
//! delivered); a durable one counts as delivered once JetStream stored it.
//!
//! ## The relay
//! Every instance but a client (`client_only`) runs one. It wakes when a
//! transaction with messages commits (`NOTIFY catga_outbox`, sent by
//! [`Tx::commit`]) and every second, and takes the unsent rows a bucket
//! (64, by a stable hash of the key) at a time under a transaction-scoped
//! advisory lock, so no two relays deliver one key at once and a dead
//! relay's lock is gone with its connection. It delivers each key's rows
//! in order (keys of a bucket concurrently), confirms publishes with the
//! NATS server (flush), then marks the rows sent in the same transaction.
//! A transient failure (no handler, a timeout, NATS down) is tried again
//! with a growing pause (1 s to 1 min); a row that can never be delivered
//! (not permitted, over the server's size limit) is marked `dropped` with
//! its error and logged. Sent rows are deleted after
//! [`Config::outbox_retention`](crate::Config::outbox_retention), inbox
//! rows after [`Config::inbox_retention`](crate::Config::inbox_retention).
//!
//! ## The tables
//! `catga/migrations/0001_catga_outbox_inbox.sql` (idempotent), run by
//! `start` under an advisory lock unless
//! [`Builder::postgres_migrate`](crate::Builder::postgres_migrate) says not.

pub(crate) mod relay;
mod tx;

pub use tx::Tx;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use sqlx::postgres::{PgPool, PgPoolOptions, Postgres};
use tokio::sync::Notify;

use crate::app::App;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::saga::SagaContext;

/// The schema: created by `start` unless told not to.
pub const MIGRATION: &str = include_str!("../migrations/0001_catga_outbox_inbox.sql");

/// The buckets rows are locked by (a stable hash of their key).
pub(crate) const BUCKETS: u64 = 64;

/// The NOTIFY channel a commit with messages wakes the relays on.
pub(crate) const CHANNEL: &str = "catga_outbox";

/// Advisory lock keys are (this, n): the migration 0, pruning 1, bucket
/// b is 1000 + b.
pub(crate) const LOCK_SPACE: i32 = 0x6361_7467; // "catg"

/// The lock a committing transaction holds on each key it wrote to:
/// (this, hashtext(key)).
pub(crate) const KEY_LOCK_SPACE: i32 = LOCK_SPACE + 1;

/// The outbox and inbox of one database: [`Context::outbox`],
/// [`App::outbox`]. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// The relay's and its listener's own two connections (to the same
    /// database), so they never wait for, or take from, the handlers'.
    relay_pool: PgPool,
    /// Whether this instance relays: its commits wake its own relay, and
    /// only a client's commits notify the others (a `NOTIFY` serializes
    /// committing transactions on the server).
    relaying: std::sync::atomic::AtomicBool,
    /// Wakes this instance's relay when one of its transactions committed
    /// messages (before the database's notification comes back).
    wake: Notify,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("pool_size", &self.inner.pool.size()).finish()
    }
}

pub(crate) fn database(what: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| Error::Database { what, reason: e.to_string() }
}

impl Outbox {
    /// The outbox of the builder's pool or URL (none without either),
    /// its tables created if `migrate`.
    pub(crate) async fn open(given: (Option<PgPool>, bool), url: Option<&str>) -> Result<Option<Outbox>> {
        let (pool, migrate) = given;
        let pool = match (pool, url) {
            (Some(pool), _) => pool,
            // A server that does not answer is an error within 5 s (sqlx's
            // default waits 30 s for a connection).
            (None, Some(url)) => {
                PgPoolOptions::new().acquire_timeout(std::time::Duration::from_secs(5)).connect(url).await.map_err(
                    |e| Error::Database {
                        what: "connecting",
                        reason: format!("{} ({e})", crate::security::redact_url(url)),
                    },
                )?
            }
            (None, None) => return Ok(None),
        };
        let relay_pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with((*pool.connect_options()).clone());
        let relaying = std::sync::atomic::AtomicBool::new(false);
        let outbox = Outbox { inner: Arc::new(Inner { pool, relay_pool, relaying, wake: Notify::new() }) };
        if migrate {
            outbox.migrate().await?;
        }
        Ok(Some(outbox))
    }

    /// Create the outbox and inbox tables and indexes where missing
    /// ([`MIGRATION`]), under an advisory lock (instances starting at once
    /// do not race).
    pub async fn migrate(&self) -> Result<()> {
        let error = database("creating the outbox and inbox tables (catga/migrations)");
        let mut tx = self.inner.pool.begin().await.map_err(&error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)").bind(LOCK_SPACE).execute(&mut *tx).await.map_err(&error)?;
        sqlx::raw_sql(MIGRATION).execute(&mut *tx).await.map_err(&error)?;
        tx.commit().await.map_err(&error)
    }

    /// The pool (for queries outside a transaction of the outbox).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Begin handling `handling`'s message once: a transaction with the
    /// message recorded in the inbox ([`Begin::New`]), or the reply a
    /// handling of a copy of it recorded ([`Begin::Done`]; nothing to do).
    /// A copy whose handling is in progress is waited for.
    pub async fn begin<R: DeserializeOwned>(&self, handling: &impl Handling) -> Result<Begin<R>> {
        let tx = self.inner.pool.begin().await.map_err(database("beginning a transaction"))?;
        self.begin_in(tx, handling).await
    }

    /// [`begin`](Self::begin) in a transaction the program opened.
    pub async fn begin_in<R: DeserializeOwned>(
        &self,
        mut tx: sqlx::Transaction<'static, Postgres>,
        handling: &impl Handling,
    ) -> Result<Begin<R>> {
        let (consumer, message_id) = handling.inbox_key()?;
        let error = database("recording the message in the inbox");
        let inserted = sqlx::query(
            "INSERT INTO catga_inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(&consumer)
        .bind(&message_id)
        .execute(&mut *tx)
        .await
        .map_err(&error)?;
        if inserted.rows_affected() == 0 {
            let (reply,): (Option<Vec<u8>>,) =
                sqlx::query_as("SELECT reply FROM catga_inbox WHERE consumer = $1 AND message_id = $2")
                    .bind(&consumer)
                    .bind(&message_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(&error)?;
            tx.rollback().await.map_err(&error)?;
            let reply = reply.as_deref().unwrap_or(b"null");
            return serde_json::from_slice(reply).map(Begin::Done).map_err(|e| Error::Database {
                what: "reading the reply the inbox recorded",
                reason: format!(
                    "message {message_id} was handled by {consumer}, but its recorded reply is not a {}: {e}",
                    std::any::type_name::<R>()
                ),
            });
        }
        Ok(Begin::New(Tx::new(self.clone(), tx, handling.parent(), Some((consumer, message_id)))))
    }

    /// A transaction whose messages go out when it commits, without an
    /// inbox record (an API endpoint's, a job's).
    pub async fn transaction(&self, origin: &impl Origin) -> Result<Tx> {
        let tx = self.inner.pool.begin().await.map_err(database("beginning a transaction"))?;
        Ok(Tx::new(self.clone(), tx, origin.parent(), None))
    }

    /// [`transaction`](Self::transaction) in a transaction the program
    /// opened.
    pub fn transaction_in(&self, tx: sqlx::Transaction<'static, Postgres>, origin: &impl Origin) -> Tx {
        Tx::new(self.clone(), tx, origin.parent(), None)
    }

    pub(crate) fn wake(&self) -> &Notify {
        &self.inner.wake
    }

    pub(crate) fn relay_pool(&self) -> &PgPool {
        &self.inner.relay_pool
    }

    /// This instance runs a relay (not a client).
    pub(crate) fn set_relaying(&self) {
        self.inner.relaying.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn is_relaying(&self) -> bool {
        self.inner.relaying.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What [`Outbox::begin`] found.
#[derive(Debug)]
#[must_use = "a New transaction does nothing until it commits; a Done reply is what to answer"]
// Matched at once, never stored: boxing `New` would make `&mut *tx` a
// `&mut Tx` instead of the connection.
#[allow(clippy::large_enum_variant)]
pub enum Begin<R> {
    /// The first handling of this message: a transaction, with the message
    /// recorded in the inbox when it commits.
    New(Tx<R>),
    /// A copy of a message already handled (its transaction committed):
    /// the reply that handling recorded.
    Done(R),
}

/// Where messages written to the outbox come from: their correlation id,
/// cause and trace ([`Context`], [`SagaContext`], [`App`]).
pub trait Origin: sealed::Sealed {
    /// The metadata the messages are children of; `None` for a new
    /// conversation.
    #[doc(hidden)]
    fn parent(&self) -> Parent;
}

/// A handling whose message the inbox records: a handler's [`Context`],
/// a saga step's [`SagaContext`] (the saga id, per step and direction).
pub trait Handling: Origin {
    /// (who handles, the message id): the inbox's key.
    #[doc(hidden)]
    fn inbox_key(&self) -> Result<(String, String)>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::context::Context {}
    impl Sealed for crate::saga::SagaContext {}
    impl Sealed for crate::app::App {}
}

/// What the messages of a transaction descend from.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum Parent {
    /// A handled message (or saga step): children of its metadata.
    Message(Metadata),
    /// None: each message starts a conversation, in this trace if any.
    Root(Option<crate::trace::TraceContext>),
}

impl Origin for Context {
    fn parent(&self) -> Parent {
        Parent::Message(self.metadata().clone())
    }
}

impl Handling for Context {
    fn inbox_key(&self) -> Result<(String, String)> {
        let record = self.record();
        if record.queue_group(self.service()).is_none() {
            // Each instance would apply it (and, its id new at every start,
            // again after a restart).
            return Err(Error::Config(format!(
                "the inbox needs a queue group: {}::{} is a broadcast event handler, run by every instance; give it \
                 one (#[catga::event(queue = \"..\")]) so the message is applied once, or use \
                 Outbox::transaction (no inbox)",
                record.module, record.name
            )));
        }
        Ok((crate::idempotency::receiver(record, self), self.message_id().to_string()))
    }
}

impl Origin for SagaContext {
    fn parent(&self) -> Parent {
        Parent::Message(self.metadata())
    }
}

impl Handling for SagaContext {
    fn inbox_key(&self) -> Result<(String, String)> {
        let direction = match self.direction() {
            crate::saga::Direction::Forward => "do",
            crate::saga::Direction::Compensate => "undo",
        };
        Ok((format!("saga:{}:{}:{direction}", self.saga(), self.step()), self.saga_id().to_owned()))
    }
}

impl Origin for App {
    fn parent(&self) -> Parent {
        Parent::Root(self.trace_context().cloned())
    }
}

impl Context {
    /// The outbox and inbox (PostgreSQL, feature `postgres`); the error
    /// says how to configure one.
    pub fn outbox(&self) -> std::result::Result<&Outbox, crate::HandlerError> {
        self.state::<Outbox>().map_err(|_| not_configured())
    }
}

impl App {
    /// The outbox and inbox (PostgreSQL, feature `postgres`); the error
    /// says how to configure one.
    pub fn outbox(&self) -> std::result::Result<&Outbox, crate::HandlerError> {
        self.state::<Outbox>().map_err(|_| not_configured())
    }
}

fn not_configured() -> crate::HandlerError {
    crate::HandlerError::new(
        crate::HandlerError::CONFIG,
        "no outbox: this instance has no PostgreSQL — set CATGA_POSTGRES_URL (or Builder::postgres_url / \
         Builder::postgres)",
    )
}
