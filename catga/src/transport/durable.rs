//! Durable delivery over NATS JetStream, for `#[catga(durable)]` contracts.
//!
//! Core NATS is at-most-once: a message in flight when an instance dies is
//! gone. A durable message is instead published into a JetStream stream and
//! the sender returns (or starts waiting for the reply) only once the
//! server has *stored* it; handlers pull it from a consumer and it is
//! redelivered until a handler succeeds — at-least-once.
//!
//! - **Streams** (created by every instance with a durable handler, at
//!   startup, idempotently): one per durable subject, named by
//!   [`stream_name`], file storage. Commands: work-queue retention (a
//!   message is deleted once acknowledged; exactly one consumer, the
//!   handler's queue group). Events: limits retention with a maximum age
//!   ([`Config::event_max_age`](crate::Config::event_max_age)), one
//!   consumer per queue group.
//! - **Consumers**: pull, explicit ack, `ack_wait`, `max_deliver`. An
//!   instance pulls only as many messages as it has free handling slots
//!   (`max_in_flight` per handler), so that is the per-instance bound;
//!   the consumer's `max_ack_pending` is left at the server's default
//!   (1000), a ceiling for the whole group — setting it to one instance's
//!   `max_in_flight` would cap every instance of the group together at
//!   what one may run. A queue group's consumer is
//!   durable, named after the group; it receives what was published since
//!   it was first created. A broadcast event handler gets a consumer per
//!   instance that the server removes once the instance is gone.
//! - **Handling**: success → the reply (commands), *then* the ack, so a
//!   crash in between redelivers instead of losing the reply. An error →
//!   a delayed negative ack (redelivery with backoff), except on the last
//!   delivery or for an `invalid` message (retrying cannot help): then the
//!   message is copied to the dead-letter stream [`DLQ_STREAM`] with the
//!   reason, the error reply is sent, and the message is terminated. A
//!   long handling tells the server it is alive every `ack_wait / 3`.
//! - **Replies** to a durable command go to a per-connection inbox named in
//!   the `Catga-Reply-To` header (one wildcard subscription).
//!
//! The wire format is in `docs/WIRE.md` ("Durable delivery").

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, Subject};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, oneshot, watch};

use crate::app::{AppInner, InFlight};
use crate::config::Config;
use crate::context::MessageId;
use crate::error::{Error, HandlerError, Result};
use crate::registry::{HandlerKind, HandlerRecord};
use crate::transport::nats::{drained, headers, metadata_of, send_reply};
use crate::transport::service::EndpointStats;

/// The dead-letter stream: every durable message whose last delivery
/// failed, on `catga.dlq.<original subject>`.
pub const DLQ_STREAM: &str = "CATGA_DLQ";
/// Subjects of the dead-letter stream: this prefix + the original subject.
pub const DLQ_PREFIX: &str = "catga.dlq.";

/// JetStream's deduplication header: the Catga message id, so a retried
/// publish is stored once.
const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// How long a running durable handling is kept alive with progress acks;
/// past it, it is taken as hung and the message is redelivered.
const PROGRESS_LIMIT: Duration = Duration::from_secs(600);

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// How long a broadcast handler's per-instance consumer outlives its
/// instance (the server deletes it after this long without a pull).
const BROADCAST_INACTIVE: Duration = Duration::from_secs(60);

/// A stream or consumer name for `text` (a subject or queue group):
/// `prefix` + `text` with `.` replaced by `_`, e.g. `orders.create` →
/// `CATGA_orders_create`. When `text` has anything but letters, digits,
/// `-` and `.`, those characters become `-` and 8 hex digits of a hash of
/// the original are appended (`orders.re_try` → `CATGA_orders_re-try_9c3e…`),
/// so two subjects never share a stream by accident. JetStream names may
/// not contain `.`, `*`, `>`, whitespace or path separators; these never do.
pub fn stream_name(subject: &str) -> String {
    name("CATGA_", subject)
}

fn name(prefix: &str, text: &str) -> String {
    let plain = text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let mut out = String::with_capacity(prefix.len() + text.len() + 9);
    out.push_str(prefix);
    out.extend(text.chars().map(|c| match c {
        '.' => '_',
        c if c.is_ascii_alphanumeric() || c == '-' => c,
        _ => '-',
    }));
    if !plain {
        // FNV-1a: stable across builds and platforms (std's hasher is not).
        let hash = text.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
        out.push_str(&format!("_{hash:08x}"));
    }
    out
}

/// The durable settings of one instance.
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    ack_wait: Duration,
    max_deliver: u32,
    event_max_age: Duration,
    max_in_flight: usize,
}

impl Settings {
    pub(crate) fn of(config: &Config) -> Settings {
        Settings {
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver.max(1),
            event_max_age: config.event_max_age,
            max_in_flight: config.max_in_flight.max(1),
        }
    }

    /// Delay before redelivering after the `delivered`-th attempt failed:
    /// 100 ms × 2^(delivered−1), at most `ack_wait`.
    /// Deliveries after which a message that never finished (crashed,
    /// handed back, `in_progress`) is dead-lettered without running again.
    fn unfinished_limit(&self) -> i64 {
        i64::from(self.max_deliver).saturating_mul(3)
    }

    fn nak_delay(&self, delivered: i64) -> Duration {
        let exponent = (delivered.max(1) - 1).min(16) as u32;
        Duration::from_millis(100).saturating_mul(1 << exponent).min(self.ack_wait)
    }
}

fn js_error(subject: &'static str, what: impl std::fmt::Display) -> Error {
    Error::Transport { subject, reason: what.to_string() }
}

/// Create or update the stream and consumer of a durable handler, and the
/// dead-letter stream. Safe to run from every instance at once.
pub(crate) async fn consumer_for(
    js: &jetstream::Context,
    record: &'static HandlerRecord,
    config: &Config,
    settings: Settings,
) -> Result<PullConsumer> {
    let subject = record.subject;
    let stream = stream_name(subject);
    let command = record.kind == HandlerKind::Command;
    let stream_config = jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subject.to_owned()],
        retention: if command { RetentionPolicy::WorkQueue } else { RetentionPolicy::Limits },
        max_age: if command { Duration::ZERO } else { settings.event_max_age },
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        ..Default::default()
    };
    let jetstream_hint = "is JetStream enabled on the server (`nats-server -js`)?";
    js.create_or_update_stream(stream_config).await.map_err(|e| {
        js_error(subject, format!("cannot create or update the JetStream stream {stream}: {e}; {jetstream_hint}"))
    })?;
    ensure_dead_letter_stream(js).await?;
    let base = pull::Config {
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        // Unlimited on the server: the limit is counted here, so a message
        // whose last delivery did not finish (its instance died, a shutdown
        // handed it back, its dead-lettering failed) comes back to be
        // dead-lettered instead of staying in the stream unseen.
        max_deliver: -1,
        ..Default::default()
    };
    let consumer_config = match record.queue_group(&config.service) {
        Some(group) => pull::Config {
            durable_name: Some(name("", group)),
            description: Some(format!("catga queue group \"{group}\" on \"{subject}\"")),
            deliver_policy: if command { DeliverPolicy::All } else { DeliverPolicy::New },
            ..base
        },
        None => pull::Config {
            // The module too: two broadcast handlers with one function
            // name (in two modules) must not share a consumer.
            name: Some(name("", &format!("{}-{}-{}", config.instance_id, record.module, record.name))),
            description: Some(format!("catga broadcast handler `{}` of instance {}", record.name, config.instance_id)),
            deliver_policy: DeliverPolicy::New,
            inactive_threshold: BROADCAST_INACTIVE,
            ..base
        },
    };
    let consumer_name = consumer_config.durable_name.clone().or(consumer_config.name.clone()).unwrap_or_default();
    let consumer = js.create_consumer_on_stream(consumer_config, &stream).await.map_err(|e| {
        let hint = if command {
            "; a durable command's stream takes one consumer: every handler of it must use the same queue group"
        } else {
            ""
        };
        js_error(subject, format!("cannot create the JetStream consumer {consumer_name} on stream {stream}: {e}{hint}"))
    })?;
    tracing::info!(subject, stream, consumer = consumer_name, handler = record.name, "durable consumer ready");
    Ok(consumer)
}

async fn ensure_dead_letter_stream(js: &jetstream::Context) -> Result<()> {
    let config = jetstream::stream::Config {
        name: DLQ_STREAM.to_owned(),
        subjects: vec![format!("{DLQ_PREFIX}>")],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map(drop)
        .map_err(|e| js_error("catga.dlq", format!("cannot create or update the dead-letter stream {DLQ_STREAM}: {e}")))
}

/// Publish into JetStream and wait for the server to have stored it,
/// retrying a lost acknowledgement with the same `Nats-Msg-Id` (stored
/// once). No stream for the subject → [`Error::NoHandler`] at once.
pub(crate) async fn publish_stored(
    js: &jetstream::Context,
    subject: &'static str,
    headers: HeaderMap,
    payload: Vec<u8>,
    retries: u32,
    retried: &AtomicU64,
) -> Result<()> {
    use async_nats::jetstream::context::PublishErrorKind as Kind;
    let payload: bytes::Bytes = payload.into();
    let started = Instant::now();
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
        tokio::time::sleep(super::nats::backoff(attempt)).await;
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

/// A durable handler's loop: pull as many messages as there are free
/// handling slots, handle each on its own task, acknowledge by outcome.
pub(crate) struct DurableServe {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) app: Weak<AppInner>,
    pub(crate) record: &'static HandlerRecord,
    pub(crate) stats: Arc<EndpointStats>,
    pub(crate) settings: Settings,
    pub(crate) consumer: PullConsumer,
}

impl DurableServe {
    pub(crate) async fn run(self, mut drain: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.max_in_flight));
        let subject = this.record.subject;
        loop {
            // Back-pressure: pull nothing until a slot is free, then ask for
            // as many messages as there are free slots.
            let first = tokio::select! {
                permit = permits.clone().acquire_owned() => permit,
                _ = drained(&mut drain) => return,
            };
            let Ok(first) = first else { return };
            let want = 1 + permits.available_permits();
            let batch = tokio::select! {
                batch = this.consumer.batch().max_messages(want).expires(PULL_EXPIRES).messages() => batch,
                _ = drained(&mut drain) => return,
            };
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(subject, error = %e, "jetstream: pull request failed; retrying in 1 s");
                    drop(first);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = drained(&mut drain) => return,
                    }
                }
            };
            let mut slot = Some(first);
            let mut failed = false;
            loop {
                let next = tokio::select! {
                    next = batch.next() => next,
                    _ = drained(&mut drain) => {
                        // Stop pulling. What already arrived but was not
                        // started goes back at once for another instance;
                        // what the server sends after this is redelivered
                        // after ack_wait.
                        while let Some(Some(Ok(message))) = batch.next().now_or_never() {
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                        }
                        return;
                    }
                };
                let message = match next {
                    None => break, // the batch is complete or expired: pull again
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::warn!(subject, error = %e, "jetstream: pull ended with an error; pulling again in 1 s");
                        failed = true;
                        break;
                    }
                };
                let permit = match slot.take() {
                    Some(permit) => permit,
                    // Asked for no more than were free, so this is immediate.
                    None => match permits.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                };
                let Some(app) = this.app.upgrade() else { return };
                // As in the core loop: the handling's own count (holding
                // the slot) and one held until the reply and ack are sent.
                let acking = InFlight::count(app.clone());
                let in_flight = InFlight::count(app).holding(permit);
                let this = this.clone();
                tokio::spawn(async move {
                    this.handle(message, in_flight).await;
                    drop(acking);
                });
            }
            if failed {
                // Do not spin on a consumer that keeps failing (e.g. one the
                // server deleted): wait a second between pulls.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = drained(&mut drain) => return,
                }
            }
        }
    }

    async fn handle(&self, message: jetstream::Message, in_flight: InFlight) {
        let record = self.record;
        let meta = metadata_of(&message.message);
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let reply_to = header(&message.message, headers::REPLY_TO).map(Subject::from);
        let started = Instant::now();
        let outcome = if delivered > self.settings.unfinished_limit() {
            // Delivered many times, never finished (e.g. it crashes every
            // instance that runs it): stop here, without running it again.
            drop(in_flight);
            Err(HandlerError::new(
                "not_finished",
                format!("{} deliveries did not finish (the instances handling it died or shut down)", delivered - 1),
            ))
        } else {
            let handling = record.entry.call_to_end(&message.payload, record, in_flight, meta);
            self.keep_alive(&message, handling).await
        };
        if record.kind == HandlerKind::Command {
            self.stats.record(started.elapsed(), outcome.as_ref().err());
        }
        let error = match outcome {
            Ok(reply) => {
                // Reply, then ack: a crash in between redelivers the
                // message; the other order could lose the reply.
                if let (HandlerKind::Command, Some(to)) = (record.kind, reply_to) {
                    send_reply(&self.client, record, to, Ok(reply)).await;
                }
                if let Err(e) = message.ack().await {
                    tracing::warn!(subject = record.subject, error = %e, "jetstream: ack failed; the message will be redelivered");
                }
                return;
            }
            Err(error) => error,
        };
        if error.code() == crate::idempotency::IN_PROGRESS {
            // Another copy is still running (or its claim has not lapsed):
            // not a failure of this message; try again later.
            let _ = message.ack_with(AckKind::Nak(Some(self.settings.ack_wait))).await;
            return;
        }
        let last = delivered >= self.settings.max_deliver as i64
            || error.code() == HandlerError::INVALID
            || error.code() == "not_finished";
        if !last {
            let delay = self.settings.nak_delay(delivered);
            tracing::warn!(
                subject = record.subject,
                handler = record.name,
                message_id = %meta.message_id,
                delivered,
                max_deliver = self.settings.max_deliver,
                ?delay,
                %error,
                "durable handling failed; redelivering"
            );
            if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(subject = record.subject, error = %e, "jetstream: nak failed; redelivered after ack_wait");
            }
            return;
        }
        if let Err(e) = self.dead_letter(&message, &error, delivered).await {
            // Not stored in the DLQ: leave it unacknowledged rather than drop it.
            tracing::error!(
                subject = record.subject,
                message_id = %meta.message_id,
                error = %e,
                "could not dead-letter a failed durable message; it will be delivered again and dead-lettered then"
            );
            let _ = message.ack_with(AckKind::Nak(Some(self.settings.ack_wait))).await;
            return;
        }
        tracing::error!(
            subject = record.subject,
            handler = record.name,
            message_id = %meta.message_id,
            delivered,
            %error,
            "durable message dead-lettered to {DLQ_PREFIX}{}",
            record.subject
        );
        if let (HandlerKind::Command, Some(to)) = (record.kind, reply_to) {
            send_reply(&self.client, record, to, Err(error)).await;
        }
        if let Err(e) = message.ack_with(AckKind::Term).await {
            tracing::warn!(subject = record.subject, error = %e, "jetstream: term failed");
        }
    }

    /// Await the handling, telling the server every `ack_wait / 3` that it
    /// is still in progress (so a long handler is not redelivered).
    async fn keep_alive<T>(&self, message: &jetstream::Message, handling: impl std::future::Future<Output = T>) -> T {
        let period = (self.settings.ack_wait / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handling = std::pin::pin!(handling);
        let started = tokio::time::Instant::now();
        let mut alive = true;
        loop {
            tokio::select! {
                outcome = &mut handling => return outcome,
                _ = tick.tick(), if alive => {
                    if started.elapsed() > PROGRESS_LIMIT {
                        // A handler this slow is taken as hung: let the
                        // server redeliver the message after ack_wait.
                        alive = false;
                        tracing::warn!(
                            subject = self.record.subject,
                            handler = self.record.name,
                            "durable handling still running after {PROGRESS_LIMIT:?}; no more progress acks, the \
                             message will be redelivered (give the handler a timeout)"
                        );
                        continue;
                    }
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(subject = self.record.subject, error = %e, "jetstream: progress ack failed");
                    }
                }
            }
        }
    }

    /// Copy the message, with why it failed, to `catga.dlq.<subject>`;
    /// returns once the server stored it.
    async fn dead_letter(&self, message: &jetstream::Message, error: &HandlerError, delivered: i64) -> Result<()> {
        let record = self.record;
        let mut h = message.headers.clone().unwrap_or_default();
        let clean = |s: &str| {
            let mut s = s.replace(['\r', '\n'], " ");
            truncate(&mut s, 1024);
            s
        };
        h.insert(headers::DLQ_REASON, clean(error.message()));
        h.insert(headers::DLQ_CODE, clean(error.code()));
        h.insert(headers::DLQ_HANDLER, format!("{}::{}", record.module, record.name));
        h.insert(headers::ORIGINAL_SUBJECT, record.subject);
        h.insert(headers::DELIVERY_COUNT, delivered.to_string());
        // A fresh deduplication id: the original's would make the dead-letter
        // stream drop a second letter of the same message (another queue
        // group's, another instance's) as a duplicate.
        h.insert(NATS_MSG_ID, MessageId::new().to_string());
        let subject = format!("{DLQ_PREFIX}{}", record.subject);
        let failed = |e: &dyn std::fmt::Display| js_error(record.subject, format!("dead-lettering to {subject}: {e}"));
        let ack =
            self.js.publish_with_headers(subject.clone(), h, message.payload.clone()).await.map_err(|e| failed(&e))?;
        ack.await.map(drop).map_err(|e| failed(&e))
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn header(message: &async_nats::Message, name: &str) -> Option<String> {
    Some(message.headers.as_ref()?.get(name)?.as_str().to_owned())
}

/// A message in the dead-letter stream, as [`App::dead_letters`](crate::App::dead_letters) lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its sequence in the `CATGA_DLQ` stream (what
    /// [`App::replay_dead_letter`](crate::App::replay_dead_letter) takes).
    pub sequence: u64,
    /// The subject it was sent on.
    pub subject: String,
    /// Its Catga message id.
    pub message_id: Option<MessageId>,
    /// The last error's message.
    pub reason: String,
    /// The last error's code.
    pub code: String,
    /// The handler that failed (`module::function`).
    pub handler: String,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// The payload, as it was sent.
    pub payload: Vec<u8>,
}

async fn dead_letter_stream(js: &jetstream::Context) -> Result<Option<jetstream::stream::Stream>> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    match js.get_stream(DLQ_STREAM).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.code() == 404) => Ok(None),
        Err(e) => Err(js_error("catga.dlq", format!("cannot read the dead-letter stream {DLQ_STREAM}: {e}"))),
    }
}

/// Every dead letter of `subject`, oldest first.
pub(crate) async fn dead_letters(js: &jetstream::Context, subject: &str) -> Result<Vec<DeadLetter>> {
    let Some(stream) = dead_letter_stream(js).await? else { return Ok(Vec::new()) };
    let failed = |e: &dyn std::fmt::Display| js_error("catga.dlq", format!("listing dead letters of {subject:?}: {e}"));
    // A short-lived consumer that reads the subject's letters without
    // acknowledging anything; the server removes it after 30 s idle.
    let mut consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: format!("{DLQ_PREFIX}{subject}"),
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let total = consumer.info().await.map_err(|e| failed(&e))?.num_pending as usize;
    let mut letters = Vec::with_capacity(total);
    while letters.len() < total {
        let want = (total - letters.len()).min(256);
        let mut batch = consumer
            .batch()
            .max_messages(want)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| failed(&e))?;
        let before = letters.len();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| failed(&e))?;
            let sequence = message.info().map(|i| i.stream_sequence).map_err(|e| failed(&e))?;
            let get = |name: &str| header(&message.message, name).unwrap_or_default();
            letters.push(DeadLetter {
                sequence,
                subject: header(&message.message, headers::ORIGINAL_SUBJECT)
                    .unwrap_or_else(|| message.subject.trim_start_matches(DLQ_PREFIX).to_owned()),
                message_id: get(headers::MESSAGE_ID).parse().ok(),
                reason: get(headers::DLQ_REASON),
                code: get(headers::DLQ_CODE),
                handler: get(headers::DLQ_HANDLER),
                deliveries: get(headers::DELIVERY_COUNT).parse().unwrap_or(0),
                payload: message.payload.to_vec(),
            });
        }
        if letters.len() == before {
            break; // deleted meanwhile
        }
    }
    let name = consumer.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    Ok(letters)
}

/// Publish dead letter `sequence` again to its original subject, with its
/// original Catga headers and a fresh `Nats-Msg-Id` (so JetStream's
/// duplicate window does not swallow it), then delete it from the DLQ.
pub(crate) async fn replay(js: &jetstream::Context, sequence: u64) -> Result<()> {
    let failed = |e: &dyn std::fmt::Display| js_error("catga.dlq", format!("replaying dead letter {sequence}: {e}"));
    let Some(stream) = dead_letter_stream(js).await? else {
        return Err(failed(&format!("there is no {DLQ_STREAM} stream (nothing was ever dead-lettered)")));
    };
    let letter = stream.get_raw_message(sequence).await.map_err(|e| failed(&e))?;
    let subject = letter
        .headers
        .get(headers::ORIGINAL_SUBJECT)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| letter.subject.trim_start_matches(DLQ_PREFIX).to_owned());
    let dropped = [
        headers::DLQ_REASON,
        headers::DLQ_CODE,
        headers::DLQ_HANDLER,
        headers::ORIGINAL_SUBJECT,
        headers::DELIVERY_COUNT,
        headers::REPLY_TO, // the caller stopped waiting long ago
        NATS_MSG_ID,
    ];
    let mut h = HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        if dropped.iter().any(|d| d.eq_ignore_ascii_case(name.as_ref())) {
            continue;
        }
        for value in values {
            h.append(name.clone(), value.clone());
        }
    }
    h.insert(NATS_MSG_ID, MessageId::new().to_string());
    let ack = js.publish_with_headers(subject.clone(), h, letter.payload).await.map_err(|e| failed(&e))?;
    ack.await.map_err(|e| failed(&format!("{subject}: {e}")))?;
    stream.delete_message(sequence).await.map_err(|e| failed(&e))?;
    Ok(())
}

/// Add the JetStream deduplication id to a durable message's headers.
pub(crate) fn with_msg_id(mut h: HeaderMap, id: &str) -> HeaderMap {
    h.insert(NATS_MSG_ID, id);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_deterministic_valid_and_distinct() {
        assert_eq!(stream_name("orders.create"), "CATGA_orders_create");
        assert_eq!(stream_name("a-b.c"), "CATGA_a-b_c");
        let (a, b) = (stream_name("a.b_c"), stream_name("a_b.c"));
        assert_ne!(a, b);
        assert!(a.starts_with("CATGA_a_b-c_"), "{a}");
        assert_ne!(stream_name("a_b"), stream_name("a.b"));
        for n in [a, b, stream_name("x.ü.$y")] {
            assert!(n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{n}");
        }
        assert_eq!(name("", "svc"), "svc");
    }

    #[test]
    fn nak_delay_grows_and_is_capped_by_ack_wait() {
        let s = Settings {
            ack_wait: Duration::from_secs(1),
            max_deliver: 5,
            event_max_age: Duration::ZERO,
            max_in_flight: 1,
        };
        assert_eq!(s.nak_delay(1), Duration::from_millis(100));
        assert_eq!(s.nak_delay(2), Duration::from_millis(200));
        assert_eq!(s.nak_delay(9), Duration::from_secs(1));
    }
}
