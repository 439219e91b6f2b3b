//! Sending durably: a message is stored in its stream (the server
//! acknowledges it) with retries of a lost acknowledgement, and a durable
//! command's reply comes back on the connection's reply inbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::message::Command;
use crate::metadata::Metadata;
use crate::transport::connection::{Connection, SEND_RETRY};
use crate::transport::durable::js_error;
use crate::transport::envelope::{codec_error, decode_reply, headers, request_headers};

/// JetStream's deduplication header: the Catga message id, so a retried
/// publish is stored once.
pub(crate) const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// A durable command: stored in its stream (acknowledged by the
/// server), then the reply awaited on this connection's reply inbox
/// for up to `timeout`.
pub(crate) async fn send<C: Command>(
    inner: &Connection,
    replies: &Arc<Replies>,
    command: C,
    meta: Metadata,
    timeout: Duration,
) -> Result<C::Reply> {
    let payload = C::Codec::encode(&command).map_err(|e| codec_error::<C>("encode", C::SUBJECT, e.0))?;
    let mut waiting = replies.wait();
    // The JetStream deduplication id is this send's own (kept across
    // `publish_stored`'s retries of a lost acknowledgement), not the
    // message id: a caller that sends the same message id again (a
    // retry, a saga step re-run) waits on a new reply token, so its copy
    // must be stored and handled; idempotent handlers dedupe by the
    // message id instead.
    let dedup = format!("{}.{:016x}", meta.message_id, fastrand::u64(..));
    let mut headers = with_msg_id(request_headers(&meta, C::Codec::CONTENT_TYPE), &dedup);
    headers.insert(headers::REPLY_TO, waiting.reply_to.as_str());
    let started = inner.clock.now();
    publish_stored(inner, C::SUBJECT, headers, payload).await?;
    match inner.clock.timeout(timeout, &mut waiting.reply).await {
        Ok(Ok(reply)) => decode_reply::<C>(&reply),
        Ok(Err(_)) => Err(Error::Transport {
            subject: C::SUBJECT,
            reason: "the durable reply inbox closed (connection closed?)".into(),
        }),
        Err(_) => Err(Error::Timeout { subject: C::SUBJECT, after: started.elapsed() }),
    }
}

/// Publish into JetStream and wait for the server to have stored it,
/// retrying a lost acknowledgement with the same `Nats-Msg-Id` (stored
/// once). No stream for the subject → [`Error::NoHandler`] at once.
pub(crate) async fn publish_stored(
    inner: &Connection,
    subject: &'static str,
    headers: HeaderMap,
    payload: Vec<u8>,
) -> Result<()> {
    use async_nats::jetstream::context::PublishErrorKind as Kind;
    let (js, retries, retried) = (&inner.js, inner.retries, &inner.retried);
    let payload: bytes::Bytes = payload.into();
    let started = inner.clock.now();
    let mut attempt = 0;
    loop {
        let stored = match js.publish_with_headers(subject, headers.clone(), payload.clone()).await {
            Ok(ack) => ack.await.map(drop),
            Err(e) => Err(e),
        };
        let failure = match stored {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let error = match failure.kind() {
            Kind::StreamNotFound => return Err(Error::NoHandler { subject }),
            Kind::MaxPayloadExceeded => {
                return Err(Error::PayloadTooLarge {
                    subject,
                    size: payload.len(),
                    max: js.client().server_info().max_payload,
                });
            }
            Kind::TimedOut => Error::Timeout { subject, after: started.elapsed() },
            _ => return Err(js_error(subject, format!("JetStream did not store the message: {failure}"))),
        };
        if attempt >= retries {
            return Err(error);
        }
        attempt += 1;
        retried.fetch_add(1, Ordering::Relaxed);
        inner.clock.sleep(SEND_RETRY.delay(attempt)).await;
    }
}

/// The reply inbox of one connection: one subscription to `<inbox>.*`;
/// each durable send waits on its own token.
pub(crate) struct Replies {
    prefix: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<async_nats::Message>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A registered wait for one reply; dropping it forgets the token.
pub(crate) struct Waiting {
    replies: Arc<Replies>,
    token: u64,
    pub(crate) reply_to: String,
    pub(crate) reply: oneshot::Receiver<async_nats::Message>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.replies.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.token);
    }
}

impl Replies {
    pub(crate) async fn subscribe(client: &async_nats::Client) -> Result<Arc<Replies>> {
        let prefix = client.new_inbox();
        let mut subscriber = client
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(|e| js_error("_INBOX", format!("cannot subscribe to the durable reply inbox: {e}")))?;
        Ok(Arc::new_cyclic(|weak: &Weak<Replies>| {
            let weak = weak.clone();
            let task = tokio::spawn(async move {
                while let Some(message) = subscriber.next().await {
                    let Some(replies) = weak.upgrade() else { return };
                    let token = message.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok());
                    let waiter =
                        token.and_then(|t| replies.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&t));
                    match waiter {
                        Some(waiter) => drop(waiter.send(message)),
                        None => tracing::debug!(subject = %message.subject, "durable reply for nobody (timed out?)"),
                    }
                }
            });
            Replies { prefix, next: AtomicU64::new(0), waiting: Mutex::new(HashMap::new()), task }
        }))
    }

    pub(crate) fn wait(self: &Arc<Self>) -> Waiting {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, reply) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(token, tx);
        Waiting { replies: self.clone(), token, reply_to: format!("{}.{token}", self.prefix), reply }
    }
}

/// Add the JetStream deduplication id to a durable message's headers.
pub(crate) fn with_msg_id(mut h: HeaderMap, id: &str) -> HeaderMap {
    h.insert(NATS_MSG_ID, id);
    h
}
