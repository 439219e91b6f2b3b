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

/// Catga's header names, made at compile time (as Catga makes them), so
/// the floor pays for the map and the values, not for validating names.
mod names {
    use async_nats::HeaderName;
    use catga::transport::headers;
    pub const MESSAGE_ID: HeaderName = HeaderName::from_static(headers::MESSAGE_ID);
    pub const TRACEPARENT: HeaderName = HeaderName::from_static(headers::TRACEPARENT);
    pub const LIVENESS: HeaderName = HeaderName::from_static(headers::LIVENESS);
    pub const DEADLINE_IN: HeaderName = HeaderName::from_static(headers::DEADLINE_IN);
}

/// `value`'s low `digits` hex digits appended to `out`, without `format!`.
fn push_hex(out: &mut String, value: u128, digits: u32) {
    for i in (0..digits).rev() {
        out.push(char::from(b"0123456789abcdef"[(value >> (4 * i)) as usize & 0xf]));
    }
}

/// Catga's headers of a core request (`docs/WIRE.md`), built for each
/// message as Catga builds them — compile-time names, ids written as hex
/// into strings of the right size — so that what this floor adds to raw +
/// serde is the price of the headers themselves: fresh ids, and for a
/// request the liveness flag and the deadline's milliseconds (an event has
/// neither).
pub fn meta_headers(n: u64, request: bool) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    let id = u128::from(n) << 64 | u128::from(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut message_id = String::with_capacity(32);
    push_hex(&mut message_id, id, 32);
    h.insert(names::MESSAGE_ID, message_id);
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    push_hex(&mut traceparent, id.rotate_left(7), 32);
    traceparent.push('-');
    push_hex(&mut traceparent, u128::from(n | 1), 16);
    traceparent.push_str("-01");
    h.insert(names::TRACEPARENT, traceparent);
    if request {
        h.insert(names::LIVENESS, "1");
        h.insert(names::DEADLINE_IN, "30000");
    }
    h
}

/// A responder's read of them: each header looked up once.
pub fn read_meta(m: &async_nats::Message) -> usize {
    let Some(h) = &m.headers else { return 0 };
    [names::MESSAGE_ID, names::TRACEPARENT, names::LIVENESS, names::DEADLINE_IN]
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
