//! The NATS transport: identical instances with no master.
//!
//! - A command handler is a *queue* subscription on the command's subject,
//!   in the handler's queue group: NATS gives each request to exactly one
//!   member. The reply goes to the request's reply subject, with a status.
//! - A broadcast event handler is a plain subscription; a queued one a
//!   queue subscription.
//! - `send` publishes a request on the connection's reply inbox
//!   ([`super::inbox`]) and waits until its deadline, sending it again
//!   while its responder is silent ([`super::request`]); a durable command
//!   goes through JetStream ([`super::durable`]).
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

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::codec::Codec;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::instance::{InFlight, Instance};
use crate::logging::warn_limited;
use crate::message::{Command, Event};
use crate::metadata::Metadata;
use crate::metrics::Metrics;
use crate::receiver::Receiver;
use crate::registry::{HandlerKind, HandlerRecord};
use crate::transport::Encoded;
use crate::transport::connection::{Connection, drained, send_reply, subscription_capacity};
use crate::transport::durable::consumer::DurableServe;
use crate::transport::durable::dlq::{self, DeadLetter, DeadLetterPage};
use crate::transport::durable::sender;
use crate::transport::durable::topology::{self, Settings};
use crate::transport::envelope::{codec_error, decode_reply, expired, metadata_of, request_headers, wants_signals};
use crate::transport::inbox::Inbox;
use crate::transport::io::Io;
use crate::transport::pulse::{self, Beat, Pulse, Signal};
use crate::transport::request;
use crate::transport::service::{EndpointStats, Service};

/// A connected NATS transport. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Nats {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Connection,
    metrics: Arc<Metrics>,
    /// The program's runtime, where handlers run.
    runtime: tokio::runtime::Handle,
    durable: Settings,
    /// The reply inbox of every command sent, subscribed on first use.
    inbox: tokio::sync::OnceCell<Arc<Inbox>>,
    /// Signs of life of the requests and durable messages held here;
    /// started with the first handler (a client holds nothing).
    pulse: std::sync::OnceLock<Arc<Pulse>>,
    liveness: Option<Duration>,
    max_in_flight: usize,
    /// Tells the subscription tasks to drain.
    drain: watch::Sender<bool>,
    /// The subscription tasks; they end once drained.
    tasks: Mutex<JoinSet<()>>,
    service: Mutex<Option<Arc<Service>>>,
    /// The thread the connection, the intake, the inbox and the signals
    /// run on ([`super::io`]); dropped last, it stops them.
    io: Io,
}

impl Nats {
    /// Start the instance's I/O thread and connect there to the configured
    /// servers (see [`Connection::connect`]).
    pub(crate) async fn connect(config: &Config, clock: Clock, metrics: Arc<Metrics>) -> Result<Nats> {
        let io = Io::start("catga-io")?;
        let connecting = {
            let (config, metrics) = (config.clone(), metrics.clone());
            io.spawn(async move { Connection::connect(&config, clock, metrics).await })
        };
        let conn = connecting.await.map_err(|e| Error::Config(format!("the NATS I/O thread failed: {e}")))??;
        Ok(Nats {
            inner: Arc::new(Inner {
                conn,
                metrics,
                runtime: tokio::runtime::Handle::current(),
                durable: Settings::of(config),
                inbox: tokio::sync::OnceCell::new(),
                pulse: std::sync::OnceLock::new(),
                liveness: config.request_liveness,
                max_in_flight: config.max_in_flight,
                drain: watch::channel(false).0,
                tasks: Mutex::new(JoinSet::new()),
                service: Mutex::new(None),
                io,
            }),
        })
    }

    /// The pulse, started on first use.
    fn pulse(&self) -> Arc<Pulse> {
        self.inner.pulse.get_or_init(|| Arc::new(Pulse::start(&self.inner.io, self.inner.conn.client.clone()))).clone()
    }

    /// Whether the connection is up.
    pub(crate) fn connected(&self) -> bool {
        self.inner.conn.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Sends that were retried (after a timeout or "no responders").
    pub(crate) fn retries(&self) -> u64 {
        self.inner.conn.retried.load(Ordering::Relaxed)
    }

    /// Subscribe every handler and answer the service API. A handler's
    /// subscription the server refuses (its user lacks the permission) is
    /// a startup error naming the subject.
    pub(crate) async fn subscribe(&self, instance: &Arc<Instance>, handlers: &[&'static HandlerRecord]) -> Result<()> {
        let mut refusals = self.inner.conn.refused.subscribe();
        let config = &instance.config;
        let service = Arc::new(Service::new(config, handlers, instance.clock));
        for &record in handlers {
            let receiver = Receiver::new(instance, record);
            let stats = service.endpoint(record);
            let drain = self.inner.drain.subscribe();
            if record.durable() {
                let consumer =
                    topology::consumer_for(&self.inner.conn.js_admin, record, config, self.inner.durable).await?;
                let serve = DurableServe::new(
                    &self.inner.conn,
                    self.inner.durable,
                    receiver,
                    stats,
                    self.pulse(),
                    self.inner.runtime.clone(),
                );
                self.spawn(serve.run(consumer, drain));
                continue;
            }
            let client = &self.inner.conn.client;
            let subscribed = match record.queue_group(&config.service) {
                Some(queue) => client.queue_subscribe(record.subject, queue.to_owned()).await,
                None => client.subscribe(record.subject).await,
            };
            let subscriber = subscribed
                .map_err(|e| Error::Transport { subject: record.subject, reason: format!("cannot subscribe: {e}") })?;
            let serve = Serve {
                client: client.clone(),
                runtime: self.inner.runtime.clone(),
                receiver,
                stats,
                permits: Arc::new(Semaphore::new(self.inner.max_in_flight)),
                // Only requests are signalled: an event-only instance needs no pulse.
                pulse: (record.kind == HandlerKind::Command).then(|| self.pulse()),
                buffer: subscription_capacity(self.inner.max_in_flight),
            };
            self.spawn(serve.run(subscriber, drain));
        }
        let answering = service.subscribe(&self.inner.conn.client, self.inner.drain.subscribe()).await?;
        for task in answering {
            self.spawn(task);
        }
        *self.inner.service.lock().unwrap_or_else(|e| e.into_inner()) = Some(service);
        self.round_trip().await?;
        // The server answers a refused subscription with an error before
        // the round trip's echo; the client hands it to the event callback,
        // a task on the I/O thread that was woken before the echo came, so
        // in practice it has run once a second round trip is back (tokio
        // does not promise that order: a refusal seen later is still
        // logged at warn by the callback).
        self.round_trip().await?;
        loop {
            let refusal = match refusals.try_recv() {
                Ok(refusal) => refusal,
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            };
            if !refusal.publish && handlers.iter().any(|h| h.subject == refusal.subject) {
                return Err(Error::Config(format!(
                    "this instance's NATS user may not subscribe to \"{}\" (the server said: {}); grant it \
                     subscribe permission for its handlers' subjects (docs/SECURITY.md)",
                    refusal.subject, refusal.reason
                )));
            }
        }
        Ok(())
    }

    /// Wait until the server has processed everything sent so far (so the
    /// subscriptions are live when `start()` returns): publish to a private
    /// inbox and wait for it to come back — the server handles one
    /// connection's operations in order.
    async fn round_trip(&self) -> Result<()> {
        use futures_util::StreamExt;
        let client = &self.inner.conn.client;
        let failed = |reason: String| Error::Transport { subject: "_INBOX", reason };
        let inbox = client.new_inbox();
        let mut echo = client.subscribe(inbox.clone()).await.map_err(|e| failed(e.to_string()))?;
        client.publish(inbox, "".into()).await.map_err(|e| failed(e.to_string()))?;
        match self.inner.conn.clock.timeout(Duration::from_secs(10), echo.next()).await {
            Ok(Some(_)) => Ok(()),
            _ => Err(failed("the server did not confirm the subscriptions within 10 s".into())),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run a subscription's task on the I/O thread.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks().spawn_on(task, self.inner.io.handle());
    }

    /// Drain every subscription and wait (up to `limit`) until each has
    /// handed over its last delivered message.
    pub(crate) async fn drain(&self, limit: Duration) {
        let _ = self.inner.drain.send(true);
        let mut tasks = std::mem::take(&mut *self.tasks());
        if self.inner.conn.clock.timeout(limit, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!("nats: subscriptions did not drain within {limit:?}");
            tasks.abort_all();
        }
    }

    /// See [`Connection::mark`].
    pub(crate) fn mark(&self) -> u64 {
        self.inner.conn.mark()
    }

    /// See [`Connection::confirm`].
    pub(crate) async fn confirm(&self, mark: u64) -> Result<()> {
        self.inner.conn.confirm(mark).await
    }

    /// After the last handling: flush and close the connection (see
    /// [`Connection::close`]).
    pub(crate) async fn close(&self) {
        self.inner.conn.close().await;
    }

    /// The connection's reply inbox, subscribed on first use.
    async fn inbox(&self) -> Result<&Arc<Inbox>> {
        let conn = &self.inner.conn;
        self.inner
            .inbox
            .get_or_try_init(|| Inbox::subscribe(&conn.client, &self.inner.io, conn.refused.subscribe()))
            .await
    }

    /// Send a command as a NATS request on the reply inbox, until its
    /// deadline (`meta.deadline`): sent again (same message id, same reply
    /// token) when the responder shows no sign of life for the liveness
    /// timeout, and after "no responders" (with backoff, up to
    /// `send_retries` times).
    pub(crate) async fn send<C: Command>(self, command: C, meta: Metadata) -> Result<C::Reply> {
        let payload = C::Codec::encode(&command).map_err(|e| codec_error::<C>("encode", C::SUBJECT, e.0))?;
        let message =
            Encoded { subject: C::SUBJECT, payload, content_type: C::Codec::CONTENT_TYPE, durable: C::DURABLE };
        let reply = self.request(message, meta).await?;
        decode_reply::<C>(&reply)
    }

    /// [`send`](Nats::send) of a command already encoded; the reply message.
    pub(crate) async fn request(self, message: Encoded<'_>, meta: Metadata) -> Result<async_nats::Message> {
        let inbox = self.inbox().await?;
        let conn = &self.inner.conn;
        if message.durable {
            return sender::send(conn, inbox, message, meta).await;
        }
        request::send(conn, inbox, &self.inner.metrics, self.inner.liveness, message, meta).await
    }

    /// Every dead letter of `subject` (see [`dlq::dead_letters`]).
    pub(crate) async fn dead_letters(&self, subject: &str) -> Result<Vec<DeadLetter>> {
        dlq::dead_letters(&self.inner.conn.js_admin, subject).await
    }

    /// A page of the dead letters of `subject` (see [`dlq::page`]).
    pub(crate) async fn dead_letters_page(&self, subject: &str, from: u64, limit: usize) -> Result<DeadLetterPage> {
        dlq::page(&self.inner.conn.js_admin, subject, from, limit).await
    }

    /// Publish a dead letter again and delete it (see [`dlq::replay`]).
    pub(crate) async fn replay_dead_letter(&self, sequence: u64) -> Result<()> {
        dlq::replay(&self.inner.conn.js_admin, sequence).await
    }

    /// Publish an event; returns once the client has it (a durable event:
    /// once the server has stored it).
    pub(crate) async fn publish<E: Event>(&self, event: E, meta: Metadata) -> Result<()> {
        let payload = E::Codec::encode(&event).map_err(|e| codec_error::<E>("encode", E::SUBJECT, e.0))?;
        let message =
            Encoded { subject: E::SUBJECT, payload, content_type: E::Codec::CONTENT_TYPE, durable: E::DURABLE };
        self.publish_encoded(message, meta).await
    }

    /// A plain subscription to `subject` (what a saga outcome's waiter reads).
    pub(crate) async fn watch(&self, subject: &'static str) -> Result<async_nats::Subscriber> {
        let subscriber = self.inner.conn.client.subscribe(subject).await;
        subscriber.map_err(|e| Error::Transport { subject, reason: format!("cannot subscribe: {e}") })
    }

    /// [`publish`](Nats::publish) of an event already encoded.
    pub(crate) async fn publish_encoded(&self, message: Encoded<'_>, meta: Metadata) -> Result<()> {
        let (subject, payload) = (message.subject, message.payload);
        let size = payload.len();
        if message.durable {
            // An event has no reply to wait for: a retried publish of one
            // message id is stored once.
            let id = meta.message_id.to_string();
            let headers = || sender::with_msg_id(request_headers(&meta, message.content_type), &id);
            return sender::publish_stored(&self.inner.conn, subject, headers, payload).await;
        }
        let headers = request_headers(&meta, message.content_type);
        self.inner.conn.client.publish_with_headers(subject, headers, payload.into()).await.map_err(|e| {
            match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    Error::PayloadTooLarge { subject, size, max: self.inner.conn.client.max_payload() }
                }
                _ => Error::Transport { subject, reason: e.to_string() },
            }
        })
    }
}

/// One subscription's loop: receive, hold (signalled), admit (bounded),
/// handle, reply.
///
/// It reads the subscription as fast as messages come (up to `buffer`
/// waiting for a handling slot), so every request it holds is signalled to
/// its sender — a request waiting for a slot shows signs of life too.
///
/// It holds the client and a weak reference to the instance, never the
/// transport itself: the transport owns these tasks, and dropping the last
/// `App` handle drops the transport, which aborts them and unsubscribes.
struct Serve {
    client: async_nats::Client,
    /// Where handlings run: the program's runtime (this loop runs on the
    /// I/O thread).
    runtime: tokio::runtime::Handle,
    receiver: Receiver,
    stats: Arc<EndpointStats>,
    permits: Arc<Semaphore>,
    pulse: Option<Arc<Pulse>>,
    buffer: usize,
}

impl Serve {
    async fn run(self, mut subscriber: async_nats::Subscriber, mut drain: watch::Receiver<bool>) {
        use futures_util::StreamExt;
        let subject = self.receiver.record().subject;
        let mut waiting: VecDeque<(async_nats::Message, Option<Beat>)> = VecDeque::new();
        let (mut draining, mut ended) = (false, false);
        loop {
            if ended && waiting.is_empty() {
                return; // drained (or the connection closed), and all handed over
            }
            tokio::select! {
                biased;
                // A drain request is seen even while every slot is busy.
                _ = drained(&mut drain), if !draining => {
                    draining = true;
                    if let Err(e) = subscriber.drain().await {
                        tracing::warn!(subject, error = %e, "nats: drain failed");
                        return;
                    }
                }
                // Back-pressure: a waiting message starts when a slot is free.
                permit = self.permits.clone().acquire_owned(), if !waiting.is_empty() => {
                    let Ok(permit) = permit else { return };
                    let Some((message, beat)) = waiting.pop_front() else { continue };
                    // The handling's count and the reply's (see `Receiver::accept`).
                    let Some((in_flight, replying)) = self.receiver.accept(permit) else { return }; // every handle dropped
                    let (client, record, stats) = (self.client.clone(), self.receiver.record(), self.stats.clone());
                    self.runtime.spawn(async move {
                        handle(&client, record, stats, in_flight, message).await;
                        drop((replying, beat));
                    });
                }
                // Past `buffer` waiting, the client buffers, then drops
                // messages (a slow consumer): their senders see no signal
                // and send them again elsewhere.
                next = subscriber.next(), if !ended && waiting.len() < self.buffer => match next {
                    Some(message) => {
                        let beat = match (&self.pulse, &message.reply) {
                            (Some(pulse), Some(to)) if wants_signals(&message) => {
                                Some(pulse.hold(to.clone(), Signal::Working, pulse::TICK))
                            }
                            _ => None,
                        };
                        waiting.push_back((message, beat));
                    }
                    None => ended = true,
                },
            }
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
    let clock = in_flight.instance().clock;
    let meta = metadata_of(&message, clock);
    let started = clock.now();
    let outcome = match expired(&meta, record, clock) {
        Some(expired) => {
            in_flight.instance().metrics.refused(record.labels(), expired.code());
            drop(in_flight);
            warn_limited!(
                record.name,
                expired.code(),
                subject = record.subject,
                handler = record.name,
                message_id = %meta.message_id,
                correlation_id = %meta.correlation_id,
                error = expired.message(),
                "message refused"
            );
            Err(expired)
        }
        // To the end for an event too: its delivery is counted with its
        // outcome and processing time (for `$SRV.STATS`).
        None => record.entry.call_to_end(&message.payload, record, in_flight, meta).await,
    };
    stats.record(started.elapsed(), outcome.as_ref().err());
    if record.kind == HandlerKind::Event {
        return; // a failure was logged where it happened (decoding, or the pipeline)
    }
    let Some(reply_to) = message.reply else {
        tracing::debug!(subject = record.subject, "command without a reply subject (published, not requested)");
        return;
    };
    send_reply(client, record, reply_to, outcome).await;
}
