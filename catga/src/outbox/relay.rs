//! The outbox relay: delivers committed `catga_outbox` rows, on every
//! instance but a client (see [`crate::outbox`] for what it guarantees).
//!
//! A round, in one transaction, picks up to [`BUCKETS_PER_ROUND`] of the
//! buckets with rows due at random and takes the transaction-scoped
//! advisory locks of those no other relay holds (one statement), reads
//! their unsent rows in order (the next statement, so its snapshot follows
//! the locks), delivers each key's rows one after the other (keys
//! concurrently), flushes, and marks the rows. Rounds run when a commit
//! with messages is notified, every [`POLL`] otherwise, and at once again
//! while more is waiting.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgListener, PgRow};

use super::{CHANNEL, LOCK_SPACE, Outbox, database};
use crate::codec::{Codec, Json};
use crate::delivery::{self, Kind, Outcome};
use crate::error::Result;
use crate::instance::{InFlight, Instance};
use crate::transport::{Encoded, intern_subject};

/// How often a relay looks without being woken (a retry's pause ending, a
/// notification lost while the listener reconnected).
const POLL: Duration = Duration::from_secs(1);

/// The most rows one round reads...
const BATCH: i64 = 512;

/// ... and the most payload bytes (beyond its first row).
const BATCH_BYTES: i64 = 8 << 20;

/// The most buckets one round of a relay takes.
const BUCKETS_PER_ROUND: usize = 16;

/// How often sent rows and old inbox records are deleted (by one instance).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The most rows one prune statement deletes from a table (it runs again
/// while it deletes that many, up to [`PRUNE_ROUNDS`] times a minute).
const PRUNE_LIMIT: i64 = 10_000;

/// At most 1 000 000 rows of each table a minute.
const PRUNE_ROUNDS: usize = 100;

/// Start this instance's relay, if it has an outbox.
pub(crate) fn start(instance: &Arc<Instance>) {
    let Ok(outbox) = instance.state::<Outbox>().cloned() else { return };
    outbox.set_relaying();
    tokio::spawn(run(Arc::downgrade(instance), outbox));
}

async fn run(instance: Weak<Instance>, outbox: Outbox) {
    let listener = tokio::spawn(listen(outbox.clone()));
    let _listener = AbortOnDrop(listener.abort_handle());
    let mut pruned: Option<tokio::time::Instant> = None;
    loop {
        let Some(strong) = instance.upgrade() else { return };
        let clock = strong.clock;
        let more = {
            // Counted as in flight: a shutdown waits for the round.
            let Some(_in_flight) = InFlight::admit(strong.clone()) else { return };
            let more = match round(&strong, &outbox).await {
                Ok(more) => more,
                Err(error) => {
                    crate::logging::warn_limited!("outbox", "relay", %error, "outbox relay: round failed; trying again");
                    false
                }
            };
            if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned = Some(tokio::time::Instant::now());
                if let Err(error) = prune(&strong, &outbox).await {
                    tracing::debug!(%error, "outbox relay: pruning failed");
                }
            }
            more
        };
        drop(strong);
        if !more {
            tokio::select! {
                () = outbox.wake().notified() => {}
                () = clock.sleep(POLL) => {}
            }
        }
    }
}

/// Wake the relay on every `NOTIFY catga_outbox` (sent by commits with
/// messages, on any instance).
async fn listen(outbox: Outbox) {
    loop {
        let mut listener = match PgListener::connect_with(outbox.relay_pool()).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "outbox relay: cannot listen for commits; polling meanwhile");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            tracing::debug!(%error, "outbox relay: LISTEN failed; polling meanwhile");
            tokio::time::sleep(POLL).await;
            continue;
        }
        // recv reconnects by itself after a lost connection.
        loop {
            match listener.recv().await {
                Ok(_) => outbox.wake().notify_one(),
                Err(error) => {
                    tracing::debug!(%error, "outbox relay: listener lost; polling meanwhile");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One round: up to [`BUCKETS_PER_ROUND`] buckets with rows due that no
/// other relay holds (picked at random, so relays woken together mostly
/// take different ones), in one transaction; true if more is waiting
/// (another round at once).
async fn round(instance: &Arc<Instance>, outbox: &Outbox) -> Result<bool> {
    let error = database("relaying the outbox");
    let mut tx = outbox.relay_pool().begin().await.map_err(&error)?;
    // A relay that freezes holding its buckets (its connection alive, idle
    // in the transaction) loses them after this: the server ends its
    // session. Marks need no fsync: one lost in a crash of the server only
    // delivers its row again.
    let idle = (instance.config.request_timeout * 2).max(Duration::from_secs(30));
    // No row is started after a third of it, so the round ends (and
    // commits its marks) well before: a long backlog of one key takes
    // several rounds, never a round the server ends.
    let budget = tokio::time::Instant::now() + idle / 3;
    let idle = idle.as_millis().to_string();
    let (_, _, due, locked): (String, String, i64, Vec<i16>) = sqlx::query_as(
        "WITH due AS MATERIALIZED ( \
           SELECT DISTINCT bucket FROM catga_outbox WHERE sent_at IS NULL AND due_at <= now()), \
         picked AS MATERIALIZED (SELECT bucket FROM due ORDER BY random() LIMIT $2) \
         SELECT set_config('idle_in_transaction_session_timeout', $3, true), \
           set_config('synchronous_commit', 'off', true), (SELECT count(*) FROM due), \
           ARRAY(SELECT bucket FROM picked WHERE pg_try_advisory_xact_lock($1, 1000 + bucket))",
    )
    .bind(LOCK_SPACE)
    .bind(BUCKETS_PER_ROUND as i64)
    .bind(idle)
    .fetch_one(&mut *tx)
    .await
    .map_err(&error)?;
    if locked.is_empty() {
        return Ok(false);
    }
    let (delivered, full) = relay(instance, tx, &locked, budget).await?;
    // Again at once only if this round got somewhere (rows held back by
    // one waiting to be tried again are due but not deliverable).
    Ok(delivered > 0 && (full || due > BUCKETS_PER_ROUND as i64))
}

/// One unsent row.
struct OutboxRow {
    seq: i64,
    key: String,
    kind: String,
    subject: String,
    content_type: Option<String>,
    durable: bool,
    message_id: String,
    correlation_id: String,
    causation_id: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    payload: Vec<u8>,
    attempts: i32,
    /// Since it was written.
    age: Duration,
}

impl OutboxRow {
    fn from_row(row: &PgRow) -> std::result::Result<OutboxRow, sqlx::Error> {
        Ok(OutboxRow {
            seq: row.try_get("seq")?,
            key: row.try_get("key")?,
            kind: row.try_get("kind")?,
            subject: row.try_get("subject")?,
            content_type: row.try_get("content_type")?,
            durable: row.try_get("durable")?,
            message_id: row.try_get("message_id")?,
            correlation_id: row.try_get("correlation_id")?,
            causation_id: row.try_get("causation_id")?,
            traceparent: row.try_get("traceparent")?,
            tracestate: row.try_get("tracestate")?,
            payload: row.try_get("payload")?,
            attempts: row.try_get("attempts")?,
            age: Duration::from_millis(row.try_get::<i64, _>("age_ms")?.max(0) as u64),
        })
    }
}

/// What became of one row.
enum Done {
    /// `key`: the index of its key in the round; `publish`: a core publish,
    /// to be confirmed.
    Sent {
        seq: i64,
        key: usize,
        publish: bool,
    },
    Dropped {
        seq: i64,
        error: String,
    },
    Again {
        seq: i64,
        pause: Duration,
        error: String,
    },
}

/// Deliver what the `locked` buckets hold, in `tx` (holding their locks):
/// how many rows were delivered, and whether they held more than a batch.
async fn relay(
    instance: &Arc<Instance>,
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    locked: &[i16],
    budget: tokio::time::Instant,
) -> Result<(usize, bool)> {
    let error = database("relaying the outbox");
    // In order; the rows of a key held back by a row waiting to be tried
    // again are left for later. At most a batch of rows and of bytes (the
    // first row always).
    let rows = sqlx::query(
        "SELECT * FROM (SELECT seq, key, kind, subject, content_type, durable, message_id, correlation_id, \
           causation_id, traceparent, tracestate, payload, attempts, \
           (EXTRACT(EPOCH FROM (clock_timestamp() - created_at)) * 1000)::bigint AS age_ms, \
           sum(octet_length(payload)) OVER (ORDER BY seq) - octet_length(payload) AS before, \
           count(*) OVER () AS candidates \
           FROM catga_outbox o WHERE bucket = ANY($1) AND sent_at IS NULL AND NOT EXISTS ( \
             SELECT 1 FROM catga_outbox w WHERE w.key = o.key AND w.sent_at IS NULL AND w.attempts > 0 \
             AND w.due_at > now() AND w.seq <= o.seq) \
           ORDER BY seq LIMIT $2) AS r WHERE before < $3 ORDER BY seq",
    )
    .bind(locked)
    .bind(BATCH)
    .bind(BATCH_BYTES)
    .fetch_all(&mut *tx)
    .await
    .map_err(&error)?;
    // Rows left for the next round (over the batch, or its bytes).
    let candidates = rows.first().map_or(Ok(0), |r| r.try_get::<i64, _>("candidates")).map_err(&error)?;
    let more = candidates > rows.len() as i64;
    let rows: Vec<OutboxRow> =
        rows.iter().map(OutboxRow::from_row).collect::<std::result::Result<_, _>>().map_err(&error)?;
    // Each key's rows in order, the keys at once.
    let mut keys: Vec<Vec<OutboxRow>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let at = *index.entry(row.key.clone()).or_insert_with(|| {
            keys.push(Vec::new());
            keys.len() - 1
        });
        keys[at].push(row);
    }
    let mark = instance.transport.mark();
    let delivering = keys.into_iter().enumerate().map(|(key, rows)| deliver_in_order(instance, key, rows, budget));
    let done: Vec<Done> = futures_util::future::join_all(delivering).await.into_iter().flatten().collect();
    // A core NATS publish is in the client's buffer until the server has
    // it: confirmed before its row is marked sent. Unconfirmed, the rows of
    // the keys that had one stay unsent (delivered again, in order); the
    // others are marked.
    let mut unconfirmed = std::collections::HashSet::new();
    if done.iter().any(|d| matches!(d, Done::Sent { publish: true, .. }))
        && let Err(e) = instance.transport.confirm(mark).await
    {
        crate::logging::warn_limited!("outbox", "confirm", error = %e, "outbox relay: publishes not confirmed; delivering them again");
        unconfirmed.extend(done.iter().filter_map(|d| match d {
            Done::Sent { key, publish: true, .. } => Some(*key),
            _ => None,
        }));
    }
    let sent: Vec<i64> = done
        .iter()
        .filter_map(|d| match d {
            Done::Sent { seq, key, .. } if !unconfirmed.contains(key) => Some(*seq),
            _ => None,
        })
        .collect();
    if !sent.is_empty() {
        sqlx::query("UPDATE catga_outbox SET sent_at = clock_timestamp(), attempts = attempts + 1 WHERE seq = ANY($1)")
            .bind(&sent)
            .execute(&mut *tx)
            .await
            .map_err(&error)?;
    }
    for d in &done {
        match d {
            Done::Sent { .. } => {}
            Done::Dropped { seq, error: reason } => {
                sqlx::query(
                    "UPDATE catga_outbox SET sent_at = clock_timestamp(), dropped = true, attempts = attempts + 1, \
                     last_error = $2 WHERE seq = $1",
                )
                .bind(seq)
                .bind(reason)
                .execute(&mut *tx)
                .await
                .map_err(&error)?;
            }
            Done::Again { seq, pause, error: reason } => {
                sqlx::query(
                    "UPDATE catga_outbox SET attempts = attempts + 1, last_error = $2, \
                     due_at = clock_timestamp() + make_interval(secs => $3) WHERE seq = $1",
                )
                .bind(seq)
                .bind(reason)
                .bind(pause.as_secs_f64())
                .execute(&mut *tx)
                .await
                .map_err(&error)?;
            }
        }
    }
    tx.commit().await.map_err(&error)?;
    Ok((sent.len(), more))
}

/// Deliver one key's rows in order, up to the first that must wait, or
/// until the round's budget is spent.
async fn deliver_in_order(
    instance: &Instance,
    key: usize,
    rows: Vec<OutboxRow>,
    budget: tokio::time::Instant,
) -> Vec<Done> {
    let mut done = Vec::with_capacity(rows.len());
    for row in rows {
        if tokio::time::Instant::now() >= budget {
            break;
        }
        let outcome = deliver(instance, key, row).await;
        let again = matches!(outcome, Done::Again { .. });
        done.push(outcome);
        if again {
            break;
        }
    }
    done
}

/// Deliver one row.
async fn deliver(instance: &Instance, key: usize, mut row: OutboxRow) -> Done {
    let metrics = &instance.metrics;
    let seq = row.seq;
    let dropped = |label: &'static str, reason: String| {
        tracing::error!(seq, subject = row.subject, reason, "outbox row cannot be delivered; marked dropped");
        metrics.outbox_relayed(label, "dropped", None);
        Done::Dropped { seq, error: reason }
    };
    let subject = match intern_subject(&row.subject) {
        Ok(subject) => subject,
        Err(reason) => return dropped("(invalid)", format!("subject {:?}: {reason}", row.subject)),
    };
    let (Some(kind), Some(meta)) = (
        Kind::parse(&row.kind),
        delivery::metadata(
            &row.message_id,
            &row.correlation_id,
            row.causation_id.as_deref(),
            row.traceparent.as_deref(),
            row.tracestate.as_deref(),
        ),
    ) else {
        return dropped(subject, "its kind, ids or trace context do not parse".into());
    };
    let content_type = row.content_type.as_deref().unwrap_or(Json::CONTENT_TYPE);
    if !delivery::printable(content_type) {
        return dropped(subject, format!("content type {content_type:?} cannot go on the wire"));
    }
    let payload = std::mem::take(&mut row.payload);
    let message = Encoded { subject, payload, content_type, durable: row.durable };
    match delivery::deliver(instance, kind, message, meta).await {
        Outcome::Delivered => {
            metrics.outbox_relayed(subject, "delivered", Some(row.age));
            Done::Sent { seq, key, publish: kind == Kind::Publish && !row.durable }
        }
        Outcome::Refused(error) => {
            tracing::warn!(seq, subject, %error, "outbox command handled with an error");
            metrics.outbox_relayed(subject, "delivered", Some(row.age));
            Done::Sent { seq, key, publish: false }
        }
        Outcome::Transient(error) => {
            let pause = Duration::from_secs(1u64 << row.attempts.clamp(0, 6) as u32).min(Duration::from_secs(60));
            crate::logging::warn_limited!(
                subject,
                "outbox",
                seq,
                subject,
                %error,
                retry_in = ?pause,
                "outbox row not delivered; trying again (later rows of its key wait)"
            );
            metrics.outbox_relayed(subject, "retried", None);
            Done::Again { seq, pause, error: error.to_string() }
        }
        Outcome::Undeliverable(error) => dropped(subject, error.to_string()),
    }
}

/// Delete rows sent longer ago than the outbox retention and inbox records
/// older than the inbox retention — on one instance at a time.
async fn prune(instance: &Instance, outbox: &Outbox) -> Result<()> {
    let error = database("pruning the outbox and inbox");
    let config = &instance.config;
    let (mut outbox_rows, mut inbox_rows) = (0, 0);
    for _ in 0..PRUNE_ROUNDS {
        // A batch per transaction: deletes commit as they go, the lock is
        // held briefly.
        let mut tx = outbox.relay_pool().begin().await.map_err(&error)?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, 1)")
            .bind(LOCK_SPACE)
            .fetch_one(&mut *tx)
            .await
            .map_err(&error)?;
        if !locked {
            return Ok(());
        }
        let mut deleted = [0; 2];
        let tables = [
            (
                "DELETE FROM catga_outbox WHERE seq IN (SELECT seq FROM catga_outbox \
              WHERE sent_at < now() - make_interval(secs => $1) LIMIT $2)",
                config.outbox_retention,
            ),
            (
                "DELETE FROM catga_inbox WHERE (consumer, message_id) IN (SELECT consumer, message_id \
              FROM catga_inbox WHERE handled_at < now() - make_interval(secs => $1) LIMIT $2)",
                config.inbox_retention,
            ),
        ];
        for ((sql, retention), deleted) in tables.into_iter().zip(&mut deleted) {
            let done = sqlx::query(sql).bind(retention.as_secs_f64()).bind(PRUNE_LIMIT).execute(&mut *tx);
            *deleted = done.await.map_err(&error)?.rows_affected();
        }
        let [sent, handled] = deleted;
        tx.commit().await.map_err(&error)?;
        (outbox_rows, inbox_rows) = (outbox_rows + sent, inbox_rows + handled);
        if sent < PRUNE_LIMIT as u64 && handled < PRUNE_LIMIT as u64 {
            break;
        }
    }
    tracing::debug!(outbox = outbox_rows, inbox = inbox_rows, "outbox relay: pruned");
    Ok(())
}
