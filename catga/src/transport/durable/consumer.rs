//! A durable handler's pull loop, and the handling of one message: keep it
//! alive while it runs, then carry out the [decision](super::decision) —
//! reply and ack, redeliver later, or dead-letter.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, watch};

use crate::clock::Clock;
use crate::error::HandlerError;
use crate::instance::InFlight;
use crate::receiver::Receiver;
use crate::registry::HandlerKind;
use crate::transport::connection::{Connection, drained, send_reply};
use crate::transport::durable::decision::{self, Decision};
use crate::transport::durable::dlq::{self, DLQ_PREFIX};
use crate::transport::durable::topology::{self, Settings};
use crate::transport::envelope::{expired, header, metadata_of, names};
use crate::transport::pulse::{PROGRESS_LIMIT, Pulse, Signal};
use crate::transport::service::EndpointStats;

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// A durable handler's loop: pull as many messages as there are free
/// handling slots, handle each on its own task, acknowledge by outcome.
pub(crate) struct DurableServe {
    client: async_nats::Client,
    js: jetstream::Context,
    clock: Clock,
    receiver: Receiver,
    stats: Arc<EndpointStats>,
    settings: Settings,
    pulse: Arc<Pulse>,
    /// Where handlings run: the program's runtime (the pull loop runs on
    /// the instance's I/O thread).
    runtime: tokio::runtime::Handle,
}

impl DurableServe {
    pub(crate) fn new(
        conn: &Connection,
        settings: Settings,
        receiver: Receiver,
        stats: Arc<EndpointStats>,
        pulse: Arc<Pulse>,
        runtime: tokio::runtime::Handle,
    ) -> DurableServe {
        let (client, js, clock) = (conn.client.clone(), conn.js_admin.clone(), conn.clock);
        DurableServe { client, js, clock, receiver, stats, settings, pulse, runtime }
    }

    /// Pull from `consumer` until drained. A consumer that stops answering
    /// (deleted by an operator, or by the server after its inactivity
    /// threshold) is checked and created again, so the handler does not go
    /// quiet for good.
    pub(crate) async fn run(self, mut consumer: PullConsumer, mut drain: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.max_in_flight));
        let subject = this.receiver.record().subject;
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
                batch = consumer.batch().max_messages(want).expires(PULL_EXPIRES).messages() => batch,
                _ = drained(&mut drain) => return,
            };
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(subject, error = %e, "jetstream: pull request failed; retrying in 1 s");
                    drop(first);
                    tokio::select! {
                        _ = this.clock.sleep(Duration::from_secs(1)) => {}
                        _ = drained(&mut drain) => return,
                    }
                    this.recreate_if_gone(&mut consumer).await;
                    continue;
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
                // The handling's count and the reply's and ack's (see
                // `Receiver::accept`).
                let Some((in_flight, acking)) = this.receiver.accept(permit) else { return };
                // Progress acks from the moment it is taken in, so only a
                // dead instance's messages are redelivered.
                let alive = message.message.reply.clone().map(|ack| {
                    let every = (this.settings.ack_wait / 4).max(Duration::from_millis(10));
                    this.pulse.hold(ack, Signal::Progress, every)
                });
                let this = this.clone();
                this.runtime.clone().spawn(async move {
                    this.handle(message, in_flight).await;
                    drop((alive, acking));
                });
            }
            if failed {
                // Do not spin on a consumer that keeps failing (e.g. one the
                // server deleted): wait a second between pulls.
                tokio::select! {
                    _ = this.clock.sleep(Duration::from_secs(1)) => {}
                    _ = drained(&mut drain) => return,
                }
                this.recreate_if_gone(&mut consumer).await;
            }
        }
    }

    /// After a failed pull: if the server no longer has the consumer,
    /// create it again (with this instance's settings) and go on with it.
    async fn recreate_if_gone(&self, consumer: &mut PullConsumer) {
        use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
        let record = self.receiver.record();
        let gone = match consumer.info().await {
            Ok(_) => false,
            // The stream too: its consumers went with it.
            Err(e) => matches!(e.kind(), Kind::NotFound | Kind::StreamNotFound),
        };
        if !gone {
            return;
        }
        let Some(config) = self.receiver.config() else { return };
        let name = consumer.cached_info().name.clone();
        match topology::consumer_for(&self.js, record, &config, self.settings).await {
            Ok(fresh) => {
                tracing::warn!(
                    subject = record.subject,
                    handler = record.name,
                    consumer = name,
                    "jetstream: the durable consumer was gone (deleted, or removed after inactivity); created it \
                     again — messages published while it was gone reach it only if its delivery policy keeps them"
                );
                *consumer = fresh;
            }
            Err(e) => tracing::warn!(
                subject = record.subject,
                consumer = name,
                error = %e,
                "jetstream: the durable consumer is gone and could not be created again; retrying"
            ),
        }
    }

    async fn handle(&self, message: jetstream::Message, in_flight: InFlight) {
        let record = self.receiver.record();
        let meta = metadata_of(&message.message, self.clock);
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let reply_to = header(&message.message, names::REPLY_TO).map(Subject::from);
        let started = self.clock.now();
        let metrics = in_flight.instance().metrics.clone();
        if delivered > 1 {
            metrics.redelivered(record.labels());
        }
        let refused =
            decision::refuse_before_running(delivered, &self.settings).or_else(|| expired(&meta, record, self.clock));
        let outcome = match refused {
            Some(refused) => {
                metrics.refused(record.labels(), refused.code());
                drop(in_flight);
                Err(refused)
            }
            None => {
                let outcome = record.entry.call_to_end(&message.payload, record, in_flight, meta.clone()).await;
                if started.elapsed() > PROGRESS_LIMIT {
                    tracing::warn!(
                        subject = record.subject,
                        handler = record.name,
                        "durable handling ran over {PROGRESS_LIMIT:?}: progress acks stopped at that point and the \
                         message was redelivered (give the handler a timeout)"
                    );
                }
                outcome
            }
        };
        self.stats.record(started.elapsed(), outcome.as_ref().err());
        let error = match outcome {
            Ok(reply) => {
                // Reply, then ack: a crash in between redelivers the
                // message; the other order could lose the reply.
                self.reply(reply_to, Ok(reply)).await;
                if let Err(e) = message.ack().await {
                    tracing::warn!(subject = record.subject, error = %e, "jetstream: ack failed; the message will be redelivered");
                }
                return;
            }
            Err(error) => error,
        };
        match decision::after_failure(error.code(), delivered, &self.settings) {
            Decision::Later { delay } => {
                // Another copy is still running (or its claim has not lapsed):
                // not a failure of this message; try again later.
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
            Decision::Retry { delay } => {
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
            }
            Decision::DeadLetter => {
                if let Err(e) = dlq::write(&self.js, record, &message, &error, delivered).await {
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
                metrics.dead_lettered(record.labels());
                tracing::error!(
                    subject = record.subject,
                    handler = record.name,
                    message_id = %meta.message_id,
                    delivered,
                    %error,
                    "durable message dead-lettered to {DLQ_PREFIX}{}",
                    record.subject
                );
                self.reply(reply_to, Err(error)).await;
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(subject = record.subject, error = %e, "jetstream: term failed");
                }
            }
        }
    }

    /// A command's reply to its sender's inbox (events have none).
    async fn reply(&self, reply_to: Option<Subject>, outcome: Result<Vec<u8>, HandlerError>) {
        let record = self.receiver.record();
        if let (HandlerKind::Command, Some(to)) = (record.kind, reply_to) {
            send_reply(&self.client, record, to, outcome).await;
        }
    }
}
