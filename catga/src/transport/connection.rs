//! One NATS connection of an instance: the client (reconnecting on its own),
//! JetStream contexts, the send retry policy, and the pieces the core and
//! durable paths share — sending a reply, waiting for a drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Subject;
use tokio::sync::{broadcast, watch};

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, HandlerError, Result};
use crate::metrics::Metrics;
use crate::registry::HandlerRecord;
use crate::transport::{envelope, secure};

/// Between attempts of a send (after a timeout or "no responders"), and of
/// storing a durable message: 50 ms × 2^(n−1), at most 1 s, full jitter.
pub(crate) const SEND_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1)).full_jitter();

/// Between reconnection attempts: 50 ms × 2^(n−1), at most 2 s, jittered.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).half_jitter();

/// A connected client and what every NATS path of the instance shares.
pub(crate) struct Connection {
    pub(crate) client: async_nats::Client,
    pub(crate) clock: Clock,
    /// JetStream, for durable contracts: publishing, whose acknowledgement
    /// waits up to the request timeout...
    pub(crate) js: async_nats::jetstream::Context,
    /// ...and managing streams and consumers, which gets at least 5 s
    /// whatever the request timeout (a busy server's API is slower).
    pub(crate) js_admin: async_nats::jetstream::Context,
    /// Retries of a send or of storing a durable message.
    pub(crate) retries: u32,
    /// Sends retried so far.
    pub(crate) retried: AtomicU64,
    /// Becomes true when the connection has closed after a client drain.
    closed: watch::Receiver<bool>,
    /// Publishes the server refused (permissions violations), for the
    /// reply inbox to end the waits on those subjects.
    pub(crate) refused: broadcast::Sender<Refusal>,
}

/// A publish or subscription the server refused (a permissions
/// violation): which, the subject, and what the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// A publish (else a subscription).
    pub(crate) publish: bool,
    pub(crate) subject: String,
    pub(crate) reason: String,
}

impl Refusal {
    /// Read a server error: `Permissions Violation for Publish to "a.b"`
    /// or `… for Subscription to "a.b"` (the server quotes the subject;
    /// a queue subscription's error goes on with `using queue "q"`);
    /// anything else is no refusal.
    pub(crate) fn of(error: &str) -> Option<Refusal> {
        let lower = error.to_ascii_lowercase();
        let (publish, at) =
            [(true, "permissions violation for publish to "), (false, "permissions violation for subscription to ")]
                .into_iter()
                .find_map(|(publish, text)| Some((publish, lower.find(text)? + text.len())))?;
        let subject = error[at..].trim_start_matches(['"', '\'']).split(['"', '\'', ' ']).next()?;
        (!subject.is_empty()).then(|| Refusal { publish, subject: subject.to_owned(), reason: error.trim().to_owned() })
    }
}

impl Connection {
    /// How many times the connection connected: publishes made after
    /// this mark are confirmed by [`confirm`](Self::confirm).
    pub(crate) fn mark(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    /// Confirm that what this connection published since `mark` reached
    /// the server: a round trip through it (a request nobody answers — the
    /// server's "no responders" comes back after everything sent before
    /// it), on the connection that was up at `mark` (after a reconnect,
    /// what the old one still buffered may be gone). Within 5 s.
    pub(crate) async fn confirm(&self, mark: u64) -> Result<()> {
        let conn = self;
        let failed = |reason: String| Error::Transport { subject: "(confirm)", reason };
        let probe = conn.client.request(format!("{}.catga-confirm", conn.client.new_inbox()), bytes::Bytes::new());
        match conn.clock.timeout(Duration::from_secs(5), probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {}
            Ok(Err(e)) => return Err(failed(format!("the NATS server did not confirm what was published: {e}"))),
            Err(_) => return Err(failed("the NATS server did not confirm what was published within 5 s".into())),
        }
        if self.mark() != mark {
            return Err(failed("the NATS connection was made again meanwhile: what it buffered may be lost".into()));
        }
        Ok(())
    }

    /// Connect to the configured servers. A server that cannot be reached
    /// at startup is an error naming it; after that, the client reconnects
    /// on its own (with backoff) and resubscribes.
    pub(crate) async fn connect(config: &Config, clock: Clock, metrics: Arc<Metrics>) -> Result<Connection> {
        let url = config.nats_url.as_deref().unwrap_or_default();
        let instance = config.instance_id.clone();
        let (closed_tx, closed) = watch::channel(false);
        let (refused_tx, _) = broadcast::channel(64);
        let refused_events = refused_tx.clone();
        let lost = Arc::new(AtomicBool::new(false));
        let on_event = metrics.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("catga:{}:{}", config.service, config.instance_id))
            // Replies come to `_INBOX.<service>.…`: a service's NATS user
            // may be allowed to subscribe to its own replies only.
            .custom_inbox_prefix(format!("_INBOX.{}", config.service))
            .ping_interval(config.nats_ping_interval)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            // What a subscription buffers beyond the handlings in flight;
            // past it the client drops messages and reports a slow consumer.
            .subscription_capacity(subscription_capacity(config.max_in_flight))
            .reconnect_delay_callback(|attempt| RECONNECT.delay(u32::try_from(attempt).unwrap_or(u32::MAX)))
            .event_callback(move |event: async_nats::Event| {
                let instance = instance.clone();
                let closed_tx = closed_tx.clone();
                let (metrics, lost, refused) = (on_event.clone(), lost.clone(), refused_events.clone());
                async move {
                    match event {
                        async_nats::Event::Closed => {
                            tracing::info!(%instance, "nats: connection closed");
                            let _ = closed_tx.send(true);
                        }
                        async_nats::Event::Connected => {
                            metrics.nats_connection(true, lost.swap(false, Ordering::Relaxed));
                            tracing::info!(%instance, "nats: connected")
                        }
                        async_nats::Event::Disconnected => {
                            lost.store(true, Ordering::Relaxed);
                            metrics.nats_connection(false, false);
                            tracing::warn!(%instance, "nats: disconnected, reconnecting")
                        }
                        async_nats::Event::SlowConsumer(sid) => tracing::warn!(
                            %instance,
                            sid,
                            "nats: slow consumer, messages dropped by the client; raise max_in_flight or add instances"
                        ),
                        async_nats::Event::ServerError(async_nats::ServerError::Other(error)) => {
                            match Refusal::of(&error) {
                                Some(refusal) => {
                                    let what = if refusal.publish { "publish" } else { "subscription" };
                                    tracing::warn!(%instance, subject = refusal.subject, error, "nats: {what} not permitted");
                                    let _ = refused.send(refusal);
                                }
                                None => tracing::warn!(%instance, error, "nats: server error"),
                            }
                        }
                        other => tracing::info!(%instance, event = %other, "nats: connection event"),
                    }
                }
            });
        let (options, servers) = secure::apply(options, &config.nats_security, url).await?;
        let client = async_nats::connect_with_options(servers, options).await.map_err(|e| {
            Error::Config(format!(
                "cannot connect to NATS at {}: {e}; check CATGA_NATS_URL and that nats-server is running",
                crate::security::redact_url(url)
            ))
        })?;
        metrics.nats_connection(true, false);
        Ok(Connection {
            js: async_nats::jetstream::ContextBuilder::new().timeout(config.request_timeout).build(client.clone()),
            js_admin: async_nats::jetstream::ContextBuilder::new()
                .timeout(config.request_timeout.max(Duration::from_secs(5)))
                .build(client.clone()),
            client,
            clock,
            retries: config.send_retries,
            retried: AtomicU64::new(0),
            closed,
            refused: refused_tx,
        })
    }

    /// Flush replies and publishes still buffered in the client, then close
    /// the connection cleanly (a process that exits with unread data on
    /// its socket resets the connection, and the kernel may drop the last
    /// replies still queued to send).
    pub(crate) async fn close(&self) {
        let client = &self.client;
        match self.clock.timeout(Duration::from_secs(2), client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "nats: final flush failed"),
            Err(_) => tracing::warn!("nats: final flush did not finish within 2 s (disconnected?)"),
        }
        if client.drain().await.is_ok() {
            let mut closed = self.closed.clone();
            if self.clock.timeout(Duration::from_secs(2), drained(&mut closed)).await.is_err() {
                tracing::warn!("nats: connection did not close within 2 s");
            }
        }
    }
}

/// What a subscription buffers beyond the handlings in flight: 4 × the
/// handling slots, at least 1024 messages.
pub(crate) fn subscription_capacity(max_in_flight: usize) -> usize {
    max_in_flight.saturating_mul(4).max(1024)
}

/// Resolves once shutdown asks the subscriptions to drain.
pub(crate) async fn drained(signal: &mut watch::Receiver<bool>) {
    // An error means the transport is gone: that is a drain too.
    let _ = signal.wait_for(|drain| *drain).await;
}

/// Send the final reply of a handling by `record` to `reply_to`.
pub(crate) async fn send_reply(
    client: &async_nats::Client,
    record: &'static HandlerRecord,
    reply_to: Subject,
    outcome: std::result::Result<Vec<u8>, HandlerError>,
) {
    let (headers, body) = envelope::final_reply(outcome, record.name, client.max_payload());
    let sent = match headers {
        None => client.publish(reply_to.clone(), body).await,
        Some(headers) => client.publish_with_headers(reply_to.clone(), headers, body).await,
    };
    if let Err(e) = sent {
        tracing::warn!(reply_to = %reply_to, error = %e, "nats: could not send reply");
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn a_refused_publish_names_its_subject() {
        let r = Refusal::of("Permissions Violation for Publish to \"orders.create\"").unwrap();
        assert_eq!(r.subject, "orders.create");
        assert_eq!(Refusal::of("permissions violation for publish to 'a.b'").unwrap().subject, "a.b");
        let sub = Refusal::of("Permissions Violation for Subscription to \"x.y\" using queue \"q\"").unwrap();
        assert_eq!((sub.publish, sub.subject.as_str()), (false, "x.y"));
        assert!(r.publish);
        assert_eq!(Refusal::of("Permissions Violation for Publish to \"\""), None);
        assert_eq!(Refusal::of("Maximum Payload Violation"), None);
    }
}
