//! [`Tx`]: a transaction of the outbox — the program's queries, and the
//! messages written, committed together.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use serde::Serialize;
use sqlx::postgres::{PgConnection, Postgres};

use super::{BUCKETS, CHANNEL, KEY_LOCK_SPACE, Outbox, Parent, database};
use crate::codec::{Codec, Json};
use crate::delivery::Kind;
use crate::error::{Error, Result};
use crate::hash::stable_hash;
use crate::message::{Command, Event};
use crate::metadata::Metadata;
use crate::transport::envelope::codec_error;

/// A transaction of the outbox: the program's queries run in it
/// (`&mut *tx` is a `&mut PgConnection`), and the messages it writes
/// ([`publish`](Tx::publish), [`send`](Tx::send)) become rows of the outbox
/// when it commits, with the rest. Dropped without
/// [`commit`](Tx::commit), it rolls back. `R`: the reply recorded in the
/// inbox.
#[must_use = "a transaction rolls back unless it commits"]
pub struct Tx<R = ()> {
    tx: sqlx::Transaction<'static, Postgres>,
    outbox: Outbox,
    parent: Parent,
    inbox: Option<(String, String)>,
    key: Option<String>,
    written: Vec<Written>,
    reply: PhantomData<fn(&R)>,
}

/// A message written, inserted at commit.
struct Written {
    key: String,
    kind: Kind,
    subject: &'static str,
    content_type: &'static str,
    durable: bool,
    meta: Metadata,
    payload: Vec<u8>,
}

impl<R> Tx<R> {
    pub(super) fn new(
        outbox: Outbox,
        tx: sqlx::Transaction<'static, Postgres>,
        parent: Parent,
        inbox: Option<(String, String)>,
    ) -> Tx<R> {
        Tx { tx, outbox, parent, inbox, key: None, written: Vec::new(), reply: PhantomData }
    }

    /// The messages written from now on are delivered in order with the
    /// other messages of `key` (an aggregate's id: `order:42`), one at a
    /// time, in commit order. Without a key, a transaction's messages are
    /// in order among themselves only.
    pub fn key(&mut self, key: impl Into<String>) -> &mut Self {
        self.key = Some(key.into());
        self
    }

    /// Publish `event` if and when the transaction commits.
    pub fn publish<E: Event>(&mut self, event: E) -> Result<()> {
        let payload = E::Codec::encode(&event).map_err(|e| codec_error::<E>("encode", E::SUBJECT, e.0))?;
        self.write(Kind::Publish, E::SUBJECT, E::Codec::CONTENT_TYPE, E::DURABLE, payload);
        Ok(())
    }

    /// Send `command` if and when the transaction commits (its reply is
    /// not kept; see the [module](crate::outbox) docs).
    pub fn send<C: Command>(&mut self, command: C) -> Result<()> {
        let payload = C::Codec::encode(&command).map_err(|e| codec_error::<C>("encode", C::SUBJECT, e.0))?;
        self.write(Kind::Send, C::SUBJECT, C::Codec::CONTENT_TYPE, C::DURABLE, payload);
        Ok(())
    }

    fn write(
        &mut self,
        kind: Kind,
        subject: &'static str,
        content_type: &'static str,
        durable: bool,
        payload: Vec<u8>,
    ) {
        let meta = match &self.parent {
            Parent::Message(parent) => parent.child(),
            Parent::Root(Some(trace)) => Metadata::root().in_trace(trace),
            Parent::Root(None) => Metadata::root(),
        };
        // Without a key, the transaction's own: its first message's id.
        let key = self.key.get_or_insert_with(|| format!("tx:{}", meta.message_id)).clone();
        self.written.push(Written { key, kind, subject, content_type, durable, meta, payload });
    }

    /// Commit, recording `reply` in the inbox (for [`Begin::Done`](super::Begin::Done) of the
    /// copies); the messages written go out.
    pub async fn commit_with(mut self, reply: &R) -> Result<()>
    where
        R: Serialize,
    {
        let reply = match &self.inbox {
            Some(_) => Some(serde_json::to_vec(reply).map_err(|e| Error::Database {
                what: "recording the reply in the inbox",
                reason: format!("the reply ({}) does not serialize: {e}", std::any::type_name::<R>()),
            })?),
            None => None,
        };
        if reply.is_some() || !self.written.is_empty() {
            self.last_statement(reply).await?;
        }
        self.tx.commit().await.map_err(database("committing"))?;
        if !self.written.is_empty() {
            self.outbox.wake().notify_one();
        }
        Ok(())
    }

    /// Roll back: nothing written happened, the inbox does not record the
    /// message (a copy handles it again).
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(database("rolling back"))
    }

    /// The sqlx transaction (for what `&mut *tx` does not reach).
    pub fn transaction(&mut self) -> &mut sqlx::Transaction<'static, Postgres> {
        &mut self.tx
    }

    /// The statement before the commit, in one round trip: the reply goes
    /// in the inbox, the messages written into the outbox, and — from a
    /// client, which has no relay of its own to wake — the relays are
    /// notified (delivered when, and only if, this commits).
    ///
    /// Each row takes its key's lock just before its sequence number (keys
    /// in hash order: two transactions never wait for each other's) and
    /// holds it to the commit: of two transactions writing one key, the one
    /// that commits first has the lower numbers, so sequence order is
    /// commit order for every key.
    async fn last_statement(&mut self, reply: Option<Vec<u8>>) -> Result<()> {
        let w = &self.written;
        let text = |f: fn(&Written) -> String| w.iter().map(f).collect::<Vec<String>>();
        let optional = |f: fn(&Written) -> Option<String>| w.iter().map(f).collect::<Vec<Option<String>>>();
        let (consumer, message_id) = self.inbox.clone().unzip();
        sqlx::query(
            "WITH reply AS ( \
               UPDATE catga_inbox SET reply = $13 WHERE consumer = $14 AND message_id = $15 RETURNING 1 \
             ), written AS ( \
               INSERT INTO catga_outbox (key, bucket, kind, subject, content_type, durable, message_id, \
                 correlation_id, causation_id, traceparent, tracestate, payload) \
               SELECT m.key, m.bucket, m.kind, m.subject, m.content_type, m.durable, m.message_id, \
                 m.correlation_id, m.causation_id, m.traceparent, m.tracestate, m.payload \
               FROM (SELECT * FROM unnest($1::text[], $2::int2[], $3::text[], $4::text[], $5::text[], \
                 $6::bool[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[]) \
                 WITH ORDINALITY AS u(key, bucket, kind, subject, content_type, durable, message_id, \
                 correlation_id, causation_id, traceparent, tracestate, payload, n) \
                 ORDER BY hashtext(u.key), u.n OFFSET 0) AS m \
               CROSS JOIN LATERAL (SELECT pg_advisory_xact_lock($16, hashtext(m.key))) AS l \
               RETURNING 1 \
             ) \
             SELECT (SELECT count(*) FROM reply), (SELECT count(*) FROM written), \
               (SELECT pg_notify($17, '') WHERE $18 AND cardinality($1::text[]) > 0)",
        )
        .bind(text(|w| w.key.clone()))
        .bind(w.iter().map(|w| (stable_hash(&[&w.key]) % BUCKETS) as i16).collect::<Vec<i16>>())
        .bind(text(|w| w.kind.as_str().to_owned()))
        .bind(text(|w| w.subject.to_owned()))
        .bind(optional(|w| (w.content_type != Json::CONTENT_TYPE).then(|| w.content_type.to_owned())))
        .bind(w.iter().map(|w| w.durable).collect::<Vec<bool>>())
        .bind(text(|w| w.meta.message_id.to_string()))
        .bind(text(|w| w.meta.correlation_id.to_string()))
        .bind(optional(|w| w.meta.causation_id.map(|id| id.to_string())))
        .bind(text(|w| w.meta.trace.traceparent()))
        .bind(optional(|w| w.meta.trace.tracestate().map(str::to_owned)))
        .bind(w.iter().map(|w| w.payload.clone()).collect::<Vec<Vec<u8>>>())
        .bind(reply)
        .bind(consumer)
        .bind(message_id)
        .bind(KEY_LOCK_SPACE)
        .bind(CHANNEL)
        .bind(!self.outbox.is_relaying())
        .execute(&mut *self.tx)
        .await
        .map_err(database("writing the reply and the messages (outbox)"))?;
        Ok(())
    }
}

impl Tx<()> {
    /// Commit; the messages written go out (the inbox records no reply).
    pub async fn commit(self) -> Result<()> {
        self.commit_with(&()).await
    }
}

impl<R> std::fmt::Debug for Tx<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("inbox", &self.inbox)
            .field("key", &self.key)
            .field("written", &self.written.len())
            .finish()
    }
}

impl<R> Deref for Tx<R> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl<R> DerefMut for Tx<R> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
