//! What JetStream holds for durable handlers: stream and consumer names,
//! the instance's durable settings, and creating (or updating) a handler's
//! stream, consumer and the dead-letter stream.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Result;
use crate::registry::{HandlerKind, HandlerRecord};
use crate::transport::durable::dlq::{DLQ_PREFIX, DLQ_STREAM};
use crate::transport::durable::js_error;

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

pub(crate) fn name(prefix: &str, text: &str) -> String {
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
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: u32,
    pub(crate) event_max_age: Duration,
    pub(crate) max_in_flight: usize,
}

impl Settings {
    pub(crate) fn of(config: &Config) -> Settings {
        Settings {
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            event_max_age: config.event_max_age,
            max_in_flight: config.max_in_flight,
        }
    }

    /// Deliveries after which a message that never finished (crashed,
    /// handed back, `in_progress`) is dead-lettered without running again.
    pub(crate) fn unfinished_limit(&self) -> i64 {
        i64::from(self.max_deliver).saturating_mul(3)
    }

    /// Delay before redelivering after the `delivered`-th attempt failed:
    /// 100 ms × 2^(delivered−1), at most `ack_wait`.
    pub(crate) fn nak_delay(&self, delivered: i64) -> Duration {
        let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        Backoff::new(Duration::from_millis(100), self.ack_wait).delay(attempt)
    }
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
