//! The NATS transport: identical instances with no master.
//!
//! - A command handler is a *queue* subscription on the command's subject,
//!   in the handler's queue group: NATS gives each request to exactly one
//!   member. The reply goes to the request's reply subject, with a status.
//! - A broadcast event handler is a plain subscription; a queued one a
//!   queue subscription.
//! - `send` is a NATS request with a per-attempt timeout, retried with
//!   exponential backoff and full jitter on timeout and "no responders",
//!   reusing the message id (receivers deduplicate with it once
//!   idempotency exists).
//! - Shutdown drains: every subscription is drained (the server stops
//!   routing here, messages already delivered are handled), in-flight
//!   handlings finish, replies and publishes are flushed. One gap is not
//!   ours to close: async-nats 0.51 forgets a draining subscription before
//!   the server has confirmed the UNSUB, so a message in transit at that
//!   instant is dropped by the client; the sender's retry (same message id)
//!   delivers it elsewhere.
//!
//! The wire format is in `docs/WIRE.md`; the service API (`$SRV.*`) in
//! [`super::service`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subject};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::app::{AppInner, InFlight};
use crate::codec::Codec;
use crate::config::Config;
use crate::context::{MessageId, Metadata};
use crate::error::{Error, HandlerError, Result};
use crate::message::{Command, Event};
use crate::registry::{HandlerKind, HandlerRecord};
use crate::transport::durable::{self, DeadLetter, DurableServe, Replies, Settings};
use crate::transport::service::{EndpointStats, Service};

/// Header names of the Catga wire format (see `docs/WIRE.md`).
pub mod headers {
    /// The message id (32 hex digits); retries of one send reuse it.
    pub const MESSAGE_ID: &str = "Catga-Message-Id";
    /// The conversation id (32 hex digits). Catga sends it as the trace id
    /// of `traceparent`; this header, when a sender sets it, takes precedence.
    pub const CORRELATION_ID: &str = "Catga-Correlation-Id";
    /// The id of the message whose handler sent this one.
    pub const CAUSATION_ID: &str = "Catga-Causation-Id";
    /// W3C trace context: trace id = correlation id, parent id = message id.
    pub const TRACEPARENT: &str = "traceparent";
    /// The codec's MIME type; absent means `application/json`.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// On error replies: `error` (a reply without it is a success).
    pub const STATUS: &str = "Catga-Status";
    /// On error replies: the handler's error code (the body is the message).
    pub const ERROR_CODE: &str = "Catga-Error-Code";
    /// On durable commands: the subject the reply goes to (the sender's
    /// reply inbox), since a JetStream message has no reply subject of its own.
    pub const REPLY_TO: &str = "Catga-Reply-To";
    /// On dead letters: the last error's message.
    pub const DLQ_REASON: &str = "Catga-Dlq-Reason";
    /// On dead letters: the last error's code.
    pub const DLQ_CODE: &str = "Catga-Dlq-Code";
    /// On dead letters: the handler that failed (`module::function`).
    pub const DLQ_HANDLER: &str = "Catga-Dlq-Handler";
    /// On dead letters: the subject the message was sent on.
    pub const ORIGINAL_SUBJECT: &str = "Catga-Original-Subject";
    /// On dead letters: how many times it was delivered.
    pub const DELIVERY_COUNT: &str = "Catga-Delivery-Count";
}

/// A connected NATS transport. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Nats {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    /// JetStream, for durable contracts (see [`durable`]): publishing,
    /// whose acknowledgement waits up to the request timeout...
    js: async_nats::jetstream::Context,
    /// ...and managing streams and consumers, which gets at least 5 s
    /// whatever the request timeout (a busy server's API is slower).
    js_admin: async_nats::jetstream::Context,
    durable: Settings,
    /// The reply inbox of durable commands, subscribed on first use.
    replies: tokio::sync::OnceCell<Arc<Replies>>,
    retries: u32,
    max_in_flight: usize,
    retried: AtomicU64,
    /// Tells the subscription tasks to drain.
    drain: watch::Sender<bool>,
    /// The subscription tasks; they end once drained.
    tasks: Mutex<JoinSet<()>>,
    service: Mutex<Option<Arc<Service>>>,
    /// Becomes true when the connection has closed after a client drain.
    closed: watch::Receiver<bool>,
}

impl Nats {
    /// Connect to the configured servers. A server that cannot be reached
    /// at startup is an error naming it; after that, the client reconnects
    /// on its own (with backoff) and resubscribes.
    pub(crate) async fn connect(config: &Config) -> Result<Nats> {
        let url = config.nats_url.as_deref().unwrap_or_default();
        let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let instance = config.instance_id.clone();
        let (closed_tx, closed) = watch::channel(false);
        let options = async_nats::ConnectOptions::new()
            .name(format!("catga:{}:{}", config.service, config.instance_id))
            .ping_interval(config.nats_ping_interval)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            // What a subscription buffers beyond the handlings in flight;
            // past it the client drops messages and reports a slow consumer.
            .subscription_capacity((config.max_in_flight * 4).max(1024))
            .reconnect_delay_callback(|attempt| {
                // Attempt 1, 2, 3, ...: 50 ms, 100 ms, 200 ms, ... capped at
                // 2 s, each scaled by a random 0.5..1 (jitter).
                let base = Duration::from_millis(50).saturating_mul(1 << attempt.saturating_sub(1).min(6) as u32);
                base.min(Duration::from_secs(2)).mul_f64(0.5 + fastrand::f64() / 2.0)
            })
            .event_callback(move |event: async_nats::Event| {
                let instance = instance.clone();
                let closed_tx = closed_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Closed => {
                            tracing::info!(%instance, "nats: connection closed");
                            let _ = closed_tx.send(true);
                        }
                        async_nats::Event::Connected => tracing::info!(%instance, "nats: connected"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!(%instance, "nats: disconnected, reconnecting")
                        }
                        async_nats::Event::SlowConsumer(sid) => tracing::warn!(
                            %instance,
                            sid,
                            "nats: slow consumer, messages dropped by the client; raise max_in_flight or add instances"
                        ),
                        other => tracing::info!(%instance, event = %other, "nats: connection event"),
                    }
                }
            });
        let client = async_nats::connect_with_options(servers.clone(), options).await.map_err(|e| {
            Error::Config(format!(
                "cannot connect to NATS at {url:?}: {e}; check CATGA_NATS_URL and that nats-server is running"
            ))
        })?;
        Ok(Nats {
            inner: Arc::new(Inner {
                js: async_nats::jetstream::ContextBuilder::new().timeout(config.request_timeout).build(client.clone()),
                js_admin: async_nats::jetstream::ContextBuilder::new()
                    .timeout(config.request_timeout.max(Duration::from_secs(5)))
                    .build(client.clone()),
                client,
                durable: Settings::of(config),
                replies: tokio::sync::OnceCell::new(),
                retries: config.send_retries,
                max_in_flight: config.max_in_flight,
                retried: AtomicU64::new(0),
                drain: watch::channel(false).0,
                tasks: Mutex::new(JoinSet::new()),
                service: Mutex::new(None),
                closed,
            }),
        })
    }

    /// Sends that were retried (after a timeout or "no responders").
    pub(crate) fn retries(&self) -> u64 {
        self.inner.retried.load(Ordering::Relaxed)
    }

    /// Subscribe every handler and answer the service API.
    pub(crate) async fn subscribe(&self, app: &Arc<AppInner>, handlers: &[&'static HandlerRecord]) -> Result<()> {
        let config = &app.config;
        let service = Arc::new(Service::new(config, handlers));
        for &record in handlers {
            let client = &self.inner.client;
            if record.durable() {
                let consumer = durable::consumer_for(&self.inner.js_admin, record, config, self.inner.durable).await?;
                let serve = DurableServe {
                    client: client.clone(),
                    js: self.inner.js_admin.clone(),
                    app: Arc::downgrade(app),
                    record,
                    stats: service.endpoint(record),
                    settings: self.inner.durable,
                    consumer,
                };
                let drain = self.inner.drain.subscribe();
                self.tasks().spawn(serve.run(drain));
                continue;
            }
            let subscribed = match record.queue_group(&config.service) {
                Some(queue) => client.queue_subscribe(record.subject, queue.to_owned()).await,
                None => client.subscribe(record.subject).await,
            };
            let subscriber = subscribed
                .map_err(|e| Error::Transport { subject: record.subject, reason: format!("cannot subscribe: {e}") })?;
            let stats = service.endpoint(record);
            let serve = Serve {
                client: self.inner.client.clone(),
                app: Arc::downgrade(app),
                record,
                stats,
                permits: Arc::new(Semaphore::new(self.inner.max_in_flight)),
            };
            let drain = self.inner.drain.subscribe();
            self.tasks().spawn(serve.run(subscriber, drain));
        }
        let answering = service.subscribe(&self.inner.client, self.inner.drain.subscribe()).await?;
        {
            let mut tasks = self.tasks();
            for task in answering {
                tasks.spawn(task);
            }
        }
        *self.inner.service.lock().unwrap_or_else(|e| e.into_inner()) = Some(service);
        self.round_trip().await
    }

    /// Wait until the server has processed everything sent so far (so the
    /// subscriptions are live when `start()` returns): publish to a private
    /// inbox and wait for it to come back — the server handles one
    /// connection's operations in order.
    async fn round_trip(&self) -> Result<()> {
        use futures_util::StreamExt;
        let client = &self.inner.client;
        let failed = |reason: String| Error::Transport { subject: "_INBOX", reason };
        let inbox = client.new_inbox();
        let mut echo = client.subscribe(inbox.clone()).await.map_err(|e| failed(e.to_string()))?;
        client.publish(inbox, "".into()).await.map_err(|e| failed(e.to_string()))?;
        match tokio::time::timeout(Duration::from_secs(10), echo.next()).await {
            Ok(Some(_)) => Ok(()),
            _ => Err(failed("the server did not confirm the subscriptions within 10 s".into())),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drain every subscription and wait (up to `limit`) until each has
    /// handed over its last delivered message.
    pub(crate) async fn drain(&self, limit: Duration) {
        let _ = self.inner.drain.send(true);
        let mut tasks = std::mem::take(&mut *self.tasks());
        if tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!("nats: subscriptions did not drain within {limit:?}");
            tasks.abort_all();
        }
    }

    /// Flush replies and publishes still buffered in the client, then close
    /// the connection cleanly (a process that exits with unread data on
    /// its socket resets the connection, and the kernel may drop the last
    /// replies still queued to send).
    pub(crate) async fn close(&self) {
        let client = &self.inner.client;
        match tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "nats: final flush failed"),
            Err(_) => tracing::warn!("nats: final flush did not finish within 2 s (disconnected?)"),
        }
        if client.drain().await.is_ok() {
            let mut closed = self.inner.closed.clone();
            if tokio::time::timeout(Duration::from_secs(2), drained(&mut closed)).await.is_err() {
                tracing::warn!("nats: connection did not close within 2 s");
            }
        }
    }

    /// Send a command as a NATS request, with retries.
    pub(crate) async fn send<C: Command>(self, command: C, meta: Metadata, timeout: Duration) -> Result<C::Reply> {
        if C::DURABLE {
            return self.send_durable(command, meta, timeout).await;
        }
        let payload = C::Codec::encode(&command).map_err(|e| codec_error::<C>("encode", C::SUBJECT, e.0))?.into();
        let headers = request_headers(&meta, C::Codec::CONTENT_TYPE);
        let mut attempt = 0;
        let started = Instant::now();
        loop {
            let request = async_nats::Request::new()
                .headers(headers.clone())
                .payload(Clone::clone(&payload))
                .timeout(Some(timeout));
            let failure = match self.inner.client.send_request(C::SUBJECT, request).await {
                Ok(reply) => return decode_reply::<C>(&reply),
                Err(e) => e,
            };
            use async_nats::RequestErrorKind as Kind;
            let error = match failure.kind() {
                Kind::NoResponders => Error::NoHandler { subject: C::SUBJECT },
                Kind::TimedOut => Error::Timeout { subject: C::SUBJECT, after: started.elapsed() },
                Kind::MaxPayloadExceeded => {
                    return Err(Error::PayloadTooLarge {
                        subject: C::SUBJECT,
                        size: payload.len(),
                        max: self.inner.client.server_info().max_payload,
                    });
                }
                Kind::InvalidSubject | Kind::Other => {
                    return Err(Error::Transport { subject: C::SUBJECT, reason: failure.to_string() });
                }
            };
            if attempt >= self.inner.retries {
                return Err(error);
            }
            attempt += 1;
            self.inner.retried.fetch_add(1, Ordering::Relaxed);
            let pause = backoff(attempt);
            tracing::debug!(subject = C::SUBJECT, attempt, ?pause, message_id = %meta.message_id, %error, "retrying send");
            tokio::time::sleep(pause).await;
        }
    }

    /// A durable command: stored in its stream (acknowledged by the
    /// server), then the reply awaited on this connection's reply inbox
    /// for up to `timeout`.
    async fn send_durable<C: Command>(self, command: C, meta: Metadata, timeout: Duration) -> Result<C::Reply> {
        let payload = C::Codec::encode(&command).map_err(|e| codec_error::<C>("encode", C::SUBJECT, e.0))?;
        let inner = &self.inner;
        let replies = inner.replies.get_or_try_init(|| Replies::subscribe(&inner.client)).await?;
        let mut waiting = replies.wait();
        // The JetStream deduplication id is this send's own (kept across
        // `publish_stored`'s retries of a lost acknowledgement), not the
        // message id: a caller that sends the same message id again (a
        // retry, a saga step re-run) waits on a new reply token, so its copy
        // must be stored and handled; idempotent handlers dedupe by the
        // message id instead.
        let dedup = format!("{}.{:016x}", meta.message_id, fastrand::u64(..));
        let mut headers = durable::with_msg_id(request_headers(&meta, C::Codec::CONTENT_TYPE), &dedup);
        headers.insert(headers::REPLY_TO, waiting.reply_to.as_str());
        let started = Instant::now();
        durable::publish_stored(&inner.js, C::SUBJECT, headers, payload, inner.retries, &inner.retried).await?;
        match tokio::time::timeout(timeout, &mut waiting.reply).await {
            Ok(Ok(reply)) => decode_reply::<C>(&reply),
            Ok(Err(_)) => Err(Error::Transport {
                subject: C::SUBJECT,
                reason: "the durable reply inbox closed (connection closed?)".into(),
            }),
            Err(_) => Err(Error::Timeout { subject: C::SUBJECT, after: started.elapsed() }),
        }
    }

    /// Every dead letter of `subject` (see [`durable::dead_letters`]).
    pub(crate) async fn dead_letters(&self, subject: &str) -> Result<Vec<DeadLetter>> {
        durable::dead_letters(&self.inner.js_admin, subject).await
    }

    /// Publish a dead letter again and delete it (see [`durable::replay`]).
    pub(crate) async fn replay_dead_letter(&self, sequence: u64) -> Result<()> {
        durable::replay(&self.inner.js_admin, sequence).await
    }

    /// Publish an event; returns once the client has it (a durable event:
    /// once the server has stored it).
    pub(crate) async fn publish<E: Event>(&self, event: E, meta: Metadata) -> Result<()> {
        let payload = E::Codec::encode(&event).map_err(|e| codec_error::<E>("encode", E::SUBJECT, e.0))?;
        let size = payload.len();
        let headers = request_headers(&meta, E::Codec::CONTENT_TYPE);
        if E::DURABLE {
            let inner = &self.inner;
            // An event has no reply to wait for: a retried publish of one
            // message id is stored once.
            let headers = durable::with_msg_id(headers, &meta.message_id.to_string());
            return durable::publish_stored(&inner.js, E::SUBJECT, headers, payload, inner.retries, &inner.retried)
                .await;
        }
        self.inner.client.publish_with_headers(E::SUBJECT, headers, payload.into()).await.map_err(|e| match e.kind() {
            async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                Error::PayloadTooLarge { subject: E::SUBJECT, size, max: self.inner.client.server_info().max_payload }
            }
            _ => Error::Transport { subject: E::SUBJECT, reason: e.to_string() },
        })
    }
}

/// Resolves once shutdown asks the subscriptions to drain.
pub(crate) async fn drained(signal: &mut watch::Receiver<bool>) {
    // An error means the transport is gone: that is a drain too.
    let _ = signal.wait_for(|drain| *drain).await;
}

/// 50 ms × 2^(attempt-1), capped at 1 s, with full jitter.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(50).saturating_mul(1 << (attempt - 1).min(5)).min(Duration::from_secs(1));
    ceiling.mul_f64(fastrand::f64())
}

fn codec_error<T>(action: &'static str, subject: &'static str, reason: String) -> Error {
    Error::Codec { action, type_name: std::any::type_name::<T>(), subject, reason }
}

/// The headers of a request or event: kept to what a receiver needs,
/// because every header costs parsing on the server and both clients.
/// The correlation id travels as the W3C trace id; the content type only
/// when it is not JSON (the default).
fn request_headers(meta: &Metadata, content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::MESSAGE_ID, meta.message_id.to_string());
    h.insert(headers::TRACEPARENT, traceparent(meta));
    if let Some(cause) = meta.causation_id {
        h.insert(headers::CAUSATION_ID, cause.to_string());
    }
    if content_type != crate::codec::Json::CONTENT_TYPE {
        h.insert(headers::CONTENT_TYPE, content_type);
    }
    h
}

/// `00-{trace id = correlation id}-{parent id = low 64 bits of the message id}-01`.
fn traceparent(meta: &Metadata) -> String {
    format!("00-{}-{:016x}-01", meta.correlation_id, meta.message_id.as_u128() as u64)
}

/// The ids of a received message; a message without them (a plain NATS
/// client) starts a conversation.
pub(crate) fn metadata_of(message: &async_nats::Message) -> Metadata {
    let id = |name: &str| -> Option<MessageId> { message.headers.as_ref()?.get(name)?.as_str().parse().ok() };
    let message_id = id(headers::MESSAGE_ID).unwrap_or_default();
    let trace_id = || {
        let tp = message.headers.as_ref()?.get(headers::TRACEPARENT)?.as_str().to_owned();
        tp.split('-').nth(1)?.parse::<MessageId>().ok()
    };
    Metadata {
        message_id,
        correlation_id: id(headers::CORRELATION_ID).or_else(trace_id).unwrap_or(message_id),
        causation_id: id(headers::CAUSATION_ID),
    }
}

fn decode_reply<C: Command>(reply: &async_nats::Message) -> Result<C::Reply> {
    let header = |name: &str| reply.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    if header(headers::STATUS).as_deref() == Some("error") {
        let code = header(headers::ERROR_CODE).unwrap_or_else(|| HandlerError::INTERNAL.to_owned());
        let message = String::from_utf8_lossy(&reply.payload).into_owned();
        return Err(Error::Handler { subject: C::SUBJECT, error: HandlerError::new(code, message) });
    }
    C::Codec::decode(&reply.payload).map_err(|e| codec_error::<C::Reply>("decode", C::SUBJECT, e.0))
}

/// One subscription's loop: receive, admit (bounded), handle, reply.
///
/// It holds the client and a weak reference to the instance, never the
/// transport itself: the transport owns these tasks, and dropping the last
/// `App` handle drops the transport, which aborts them and unsubscribes.
struct Serve {
    client: async_nats::Client,
    app: Weak<AppInner>,
    record: &'static HandlerRecord,
    stats: Arc<EndpointStats>,
    permits: Arc<Semaphore>,
}

impl Serve {
    async fn run(self, mut subscriber: async_nats::Subscriber, mut drain: watch::Receiver<bool>) {
        use futures_util::StreamExt;
        let mut draining = false;
        loop {
            // Back-pressure: take no message until a handling slot is free
            // (meanwhile the client buffers, then reports a slow consumer);
            // a drain request is seen even while every slot is busy.
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit,
                _ = drained(&mut drain), if !draining => {
                    draining = true;
                    if let Err(e) = subscriber.drain().await {
                        tracing::warn!(subject = self.record.subject, error = %e, "nats: drain failed");
                        return;
                    }
                    continue;
                }
            };
            let Ok(permit) = permit else { return };
            let next = tokio::select! {
                message = subscriber.next() => message,
                _ = drained(&mut drain), if !draining => {
                    draining = true;
                    if let Err(e) = subscriber.drain().await {
                        tracing::warn!(subject = self.record.subject, error = %e, "nats: drain failed");
                        return;
                    }
                    continue;
                }
            };
            let Some(message) = next else { return }; // drained (or connection closed)
            let Some(app) = self.app.upgrade() else { return }; // every handle dropped
            // Two counts: the handling's own (it also holds the slot, so an
            // event handler spawned by the pipeline keeps it until it ends),
            // and this one, held until the reply is handed to the client —
            // so a drain never closes between a handler's end and its reply.
            let replying = InFlight::count(app.clone());
            let in_flight = InFlight::count(app).holding(permit);
            let (client, record, stats) = (self.client.clone(), self.record, self.stats.clone());
            tokio::spawn(async move {
                handle(&client, record, stats, in_flight, message).await;
                drop(replying);
            });
        }
    }
}

async fn handle(
    client: &async_nats::Client,
    record: &'static HandlerRecord,
    stats: Arc<EndpointStats>,
    in_flight: InFlight,
    message: async_nats::Message,
) {
    let meta = metadata_of(&message);
    let started = Instant::now();
    let outcome = record.entry.call_raw(&message.payload, record, in_flight, meta).await;
    if record.kind == HandlerKind::Event {
        if let Err(error) = outcome {
            tracing::error!(subject = record.subject, handler = record.name, %error, "event not handled");
        }
        return;
    }
    stats.record(started.elapsed(), outcome.as_ref().err());
    let Some(reply_to) = message.reply else {
        tracing::debug!(subject = record.subject, "command without a reply subject (published, not requested)");
        return;
    };
    send_reply(client, record, reply_to, outcome).await;
}

pub(crate) async fn send_reply(
    client: &async_nats::Client,
    record: &'static HandlerRecord,
    reply_to: Subject,
    outcome: std::result::Result<Vec<u8>, HandlerError>,
) {
    // A reply the server would refuse becomes an error reply, not silence.
    let max = client.server_info().max_payload;
    let outcome = outcome.and_then(|body| {
        if body.len() <= max {
            return Ok(body);
        }
        Err(HandlerError::new(
            "payload_too_large",
            format!("the reply of `{}` is {} bytes, over the server's max_payload of {max}", record.name, body.len()),
        ))
    });
    // A success is the bare payload (no headers to parse); an error carries
    // its status and code in headers and its message as the body.
    let sent = match outcome {
        Ok(body) => client.publish(reply_to.clone(), body.into()).await,
        Err(error) => {
            let mut h = HeaderMap::new();
            h.insert(headers::STATUS, "error");
            // A header value cannot hold a line break.
            h.insert(headers::ERROR_CODE, error.code().replace(['\r', '\n'], " "));
            let mut message = error.message().as_bytes().to_vec();
            message.truncate(max.saturating_sub(256));
            client.publish_with_headers(reply_to.clone(), h, message.into()).await
        }
    };
    if let Err(e) = sent {
        tracing::warn!(reply_to = %reply_to, error = %e, "nats: could not send reply");
    }
}
