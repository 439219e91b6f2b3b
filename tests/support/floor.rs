//! The floors the benchmarks measure Catga against: raw async-nats doing
//! the same work by hand — with Catga's headers (`benches/nats.rs`'s
//! metadata floor), or through JetStream (`benches/durable.rs`'s floor) —
//! shared with `benches/instructions.rs`, which counts their instructions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

/// The raw JetStream floor's header naming the reply subject.
const REPLY_TO: &str = "Reply-To";

/// Catga's headers of a core request (`docs/WIRE.md`), built as a sender
/// would for each message: fresh ids as hex, and for a request the
/// liveness flag and the deadline's milliseconds (an event has neither).
pub fn meta_headers(n: u64, request: bool) -> async_nats::HeaderMap {
    use catga::transport::headers;
    let mut h = async_nats::HeaderMap::new();
    let id = u128::from(n) << 64 | u128::from(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    h.insert(headers::MESSAGE_ID, format!("{id:032x}"));
    h.insert(headers::TRACEPARENT, format!("00-{:032x}-{:016x}-01", id.rotate_left(7), n | 1));
    if request {
        h.insert(headers::LIVENESS, "1");
        h.insert(headers::DEADLINE_IN, 30_000u64.to_string());
    }
    h
}

/// A responder's read of them: each header looked up once.
pub fn read_meta(m: &async_nats::Message) -> usize {
    use catga::transport::headers;
    let Some(h) = &m.headers else { return 0 };
    [headers::MESSAGE_ID, headers::TRACEPARENT, headers::LIVENESS, headers::DEADLINE_IN]
        .into_iter()
        .filter_map(|name| h.get(name))
        .map(|v| v.as_str().len())
        .sum()
}

/// The raw floor's sender: one wildcard reply inbox shared by every
/// request, a token per request (what Catga's reply inbox does, and what
/// async-nats's own `request` does).
pub struct RawSender {
    js: jetstream::Context,
    prefix: String,
    next: AtomicU64,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<async_nats::Message>>>>,
}

impl RawSender {
    pub async fn start(client: async_nats::Client) -> Arc<RawSender> {
        let prefix = client.new_inbox();
        let mut replies = crate::subscribed(&client, &format!("{prefix}.*")).await;
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<async_nats::Message>>>> = Arc::default();
        tokio::spawn({
            let waiting = waiting.clone();
            async move {
                while let Some(reply) = replies.next().await {
                    let token = reply.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok());
                    let slot = token.and_then(|t| waiting.lock().unwrap().remove(&t));
                    if let Some(slot) = slot {
                        let _ = slot.send(reply);
                    }
                }
            }
        });
        Arc::new(RawSender { js: jetstream::new(client), prefix, next: AtomicU64::new(0), waiting })
    }

    pub async fn send<T: Serialize + DeserializeOwned>(&self, subject: &str, value: &T) {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(token, tx);
        // The reply subject is unique, so it is the deduplication id too.
        let reply_to = format!("{}.{token}", self.prefix);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", reply_to.as_str());
        headers.insert(REPLY_TO, reply_to);
        let body = serde_json::to_vec(value).unwrap();
        let stored = self.js.publish_with_headers(subject.to_owned(), headers, body.into()).await.unwrap();
        stored.await.expect("stored");
        let reply = rx.await.expect("answered");
        let _: T = serde_json::from_slice(&reply.payload).unwrap();
    }
}

/// The raw floor's responder: a durable pull consumer on a work-queue
/// stream (Catga's settings for a command), handling one message at a
/// time from its message stream: decode, encode, reply, ack.
pub async fn raw_responder<T: Serialize + DeserializeOwned + Send + 'static>(
    client: async_nats::Client,
    stream: &str,
    subject: &str,
) {
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: stream.into(),
            subjects: vec![subject.into()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let value: T = serde_json::from_slice(&message.payload).unwrap();
            let to = message.headers.as_ref().and_then(|h| h.get(REPLY_TO)).map(|v| v.as_str().to_owned());
            if let Some(to) = to {
                client.publish(to, serde_json::to_vec(&value).unwrap().into()).await.unwrap();
            }
            message.ack().await.unwrap();
        }
    });
}
