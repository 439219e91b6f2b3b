//! Metrics of one instance, in the Prometheus text format: every name
//! starts with `catga_`. [`App::metrics_text`](crate::App::metrics_text)
//! renders them; with `CATGA_HTTP_ADDR` set
//! ([`Config::http_addr`](crate::Config::http_addr)), `GET /metrics` serves
//! them.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `catga_handlings_total` | `handler`, `subject` | handlings that ended (refused ones included) |
//! | `catga_handling_errors_total` | `handler`, `subject`, `code` | handlings that failed, by error code |
//! | `catga_handling_duration_seconds` | `handler`, `subject` | histogram of handlings' durations |
//! | `catga_handlings_in_flight` | `handler`, `subject` | handlings running now |
//! | `catga_events_delivered_total` | `handler`, `subject` | event deliveries to a handler |
//! | `catga_sends_total` | `subject` | commands sent |
//! | `catga_send_retries_total` | `subject`, `reason` | publishes again: `no_responders`, or `silent` (the responder showed no sign of life: a liveness re-send) |
//! | `catga_send_failures_total` | `subject`, `code` | sends that failed, by code (`timeout`, `no_handler`, a handler's code…) |
//! | `catga_send_duration_seconds` | `subject` | histogram of sends' durations, every attempt included |
//! | `catga_events_published_total` | `subject` | events published |
//! | `catga_sagas_started_total` | `saga` | sagas started here (or, submitted by a client, taken to run here) |
//! | `catga_sagas_ended_total` | `saga`, `status` | runs that ended here: `completed`, `compensated`, `failed` |
//! | `catga_saga_step_duration_seconds` | `saga`, `step`, `direction` | histogram of step attempts' durations |
//! | `catga_saga_takeovers_total` | `saga` | sagas taken over here from a dead or stopped instance |
//! | `catga_sagas_parked_total` | `saga` | times a saga parked here at a waiting step |
//! | `catga_sagas_woken_total` | `saga` | parked sagas woken here (their event came, or their time) |
//! | `catga_messages_scheduled_total` | `subject` | messages scheduled here (`schedule_send`, `schedule_publish`) |
//! | `catga_scheduled_deliveries_total` | `subject`, `outcome` | scheduled messages handled here: `delivered`, `retried` (a transient failure; due again later), `dropped` (never deliverable; logged) |
//! | `catga_scheduled_lateness_seconds` | | histogram of due → delivered for scheduled messages delivered here |
//! | `catga_outbox_relayed_total` | `subject`, `outcome` | outbox rows this instance's relay handled: `delivered`, `retried` (a transient failure; tried again after a pause), `dropped` (never deliverable; logged, kept with its error) |
//! | `catga_outbox_lag_seconds` | | histogram of commit → published for outbox rows published here |
//! | `catga_durable_redeliveries_total` | `handler`, `subject` | durable messages delivered more than once |
//! | `catga_dead_letters_total` | `handler`, `subject` | durable messages dead-lettered |
//! | `catga_nats_connected` | | 1 while the NATS connection is up (0: down, or no NATS configured) |
//! | `catga_nats_reconnects_total` | | connections made again after a loss |
//! | `catga_store_up` | | 1 if the store answered the last probe (each `/metrics` or `/readyz` request) |
//!
//! Labels stay bounded: handlers, subjects, sagas and steps are fixed at
//! compile time; an error code is Catga's own or one of the codes named in
//! [`Config::metric_error_codes`](crate::Config::metric_error_codes), and
//! `other` for any other.
//!
//! Recording costs a few atomic adds and, per handling or send, one lookup
//! in a read-locked map (`docs/BENCHMARKS.md` measures it).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{Error, HandlerError};

/// The content type of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Catga's own error codes: always a label value of their own.
const BUILT_IN: &[&str] = &[
    HandlerError::INTERNAL,
    HandlerError::PANIC,
    HandlerError::INVALID,
    HandlerError::HANDLER_TIMEOUT,
    HandlerError::NO_HANDLER,
    HandlerError::TIMEOUT,
    HandlerError::CODEC,
    HandlerError::SHUTDOWN,
    HandlerError::TRANSPORT,
    HandlerError::PAYLOAD_TOO_LARGE,
    HandlerError::STORE,
    HandlerError::SAGA,
    HandlerError::CONFIG,
    HandlerError::IN_PROGRESS,
    HandlerError::NOT_FINISHED,
    HandlerError::DEADLINE,
    HandlerError::PERMISSION_DENIED,
];

/// The labels of one handler's metrics (`HandlerRecord::labels`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandlerLabels {
    pub(crate) handler: &'static str,
    pub(crate) subject: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerErrorLabels {
    handler: &'static str,
    subject: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    subject: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SendErrorLabels {
    subject: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduledLabels {
    subject: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SagaLabels {
    saga: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SagaEndLabels {
    saga: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    saga: &'static str,
    step: &'static str,
    direction: &'static str,
}

type Seconds = fn() -> Histogram;

/// 0.5 ms to ~16 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Why a send published again.
#[derive(Clone, Copy)]
pub(crate) enum Retry {
    /// The server said no instance is subscribed.
    NoResponders,
    /// The responder showed no sign of life for the liveness timeout.
    Silent,
}

/// The metrics of one instance.
pub(crate) struct Metrics {
    registry: Registry,
    codes: Arc<[String]>,
    /// Each handler's and each send subject's metrics, looked up in their
    /// families once: a handling or send then costs a lookup by address
    /// here instead of hashing its label strings several times.
    handlers: RwLock<HashMap<(usize, usize), Arc<HandlerSet>, rustc_hash::FxBuildHasher>>,
    subjects: RwLock<HashMap<usize, Arc<SendSet>, rustc_hash::FxBuildHasher>>,
    handlings: Family<HandlerLabels, Counter>,
    handling_errors: Family<HandlerErrorLabels, Counter>,
    handling_seconds: Family<HandlerLabels, Histogram, Seconds>,
    in_flight: Family<HandlerLabels, Gauge>,
    events_delivered: Family<HandlerLabels, Counter>,
    sends: Family<SubjectLabels, Counter>,
    send_retries: Family<RetryLabels, Counter>,
    send_failures: Family<SendErrorLabels, Counter>,
    send_seconds: Family<SubjectLabels, Histogram, Seconds>,
    events_published: Family<SubjectLabels, Counter>,
    sagas_started: Family<SagaLabels, Counter>,
    sagas_ended: Family<SagaEndLabels, Counter>,
    step_seconds: Family<StepLabels, Histogram, Seconds>,
    takeovers: Family<SagaLabels, Counter>,
    parked: Family<SagaLabels, Counter>,
    woken: Family<SagaLabels, Counter>,
    scheduled: Family<SubjectLabels, Counter>,
    scheduled_deliveries: Family<ScheduledLabels, Counter>,
    scheduled_lateness: Histogram,
    outbox_relayed: Family<ScheduledLabels, Counter>,
    outbox_lag: Histogram,
    redeliveries: Family<HandlerLabels, Counter>,
    dead_letters: Family<HandlerLabels, Counter>,
    nats_connected: Gauge,
    nats_reconnects: Counter,
    store_up: Gauge,
}

impl Metrics {
    /// Every metric registered, none recorded yet; `codes`: the user error
    /// codes that get a label value of their own.
    pub(crate) fn new(codes: &[String]) -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("catga"),
            codes: codes.into(),
            handlers: RwLock::default(),
            subjects: RwLock::default(),
            handlings: Family::default(),
            handling_errors: Family::default(),
            handling_seconds: Family::new_with_constructor(seconds),
            in_flight: Family::default(),
            events_delivered: Family::default(),
            sends: Family::default(),
            send_retries: Family::default(),
            send_failures: Family::default(),
            send_seconds: Family::new_with_constructor(seconds),
            events_published: Family::default(),
            sagas_started: Family::default(),
            sagas_ended: Family::default(),
            step_seconds: Family::new_with_constructor(seconds),
            takeovers: Family::default(),
            parked: Family::default(),
            woken: Family::default(),
            scheduled: Family::default(),
            scheduled_deliveries: Family::default(),
            scheduled_lateness: seconds(),
            outbox_relayed: Family::default(),
            outbox_lag: seconds(),
            redeliveries: Family::default(),
            dead_letters: Family::default(),
            nats_connected: Gauge::default(),
            nats_reconnects: Counter::default(),
            store_up: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("handlings", "Handlings that ended, refused ones included", m.handlings.clone());
        r.register("handling_errors", "Handlings that failed, by error code", m.handling_errors.clone());
        r.register("handling_duration_seconds", "Durations of handlings", m.handling_seconds.clone());
        r.register("handlings_in_flight", "Handlings running now", m.in_flight.clone());
        r.register("events_delivered", "Event deliveries to a handler", m.events_delivered.clone());
        r.register("sends", "Commands sent", m.sends.clone());
        r.register("send_retries", "Publishes again of a send, by reason", m.send_retries.clone());
        r.register("send_failures", "Sends that failed, by error code", m.send_failures.clone());
        r.register("send_duration_seconds", "Durations of sends, every attempt included", m.send_seconds.clone());
        r.register("events_published", "Events published", m.events_published.clone());
        r.register("sagas_started", "Sagas started here", m.sagas_started.clone());
        r.register("sagas_ended", "Saga runs that ended here, by status", m.sagas_ended.clone());
        r.register("saga_step_duration_seconds", "Durations of saga step attempts", m.step_seconds.clone());
        r.register("saga_takeovers", "Sagas taken over here", m.takeovers.clone());
        r.register("sagas_parked", "Times a saga parked here at a waiting step", m.parked.clone());
        r.register("sagas_woken", "Parked sagas woken here", m.woken.clone());
        r.register("messages_scheduled", "Messages scheduled here", m.scheduled.clone());
        r.register(
            "scheduled_deliveries",
            "Scheduled messages handled here, by outcome",
            m.scheduled_deliveries.clone(),
        );
        r.register(
            "scheduled_lateness_seconds",
            "Due to delivered, of scheduled messages",
            m.scheduled_lateness.clone(),
        );
        r.register("outbox_relayed", "Outbox rows relayed here, by outcome", m.outbox_relayed.clone());
        r.register("outbox_lag_seconds", "Written to published, of outbox rows", m.outbox_lag.clone());
        r.register("durable_redeliveries", "Durable messages delivered more than once", m.redeliveries.clone());
        r.register("dead_letters", "Durable messages dead-lettered", m.dead_letters.clone());
        r.register("nats_connected", "1 while the NATS connection is up", m.nats_connected.clone());
        r.register("nats_reconnects", "NATS connections made again after a loss", m.nats_reconnects.clone());
        r.register("store_up", "1 if the store answered the last probe", m.store_up.clone());
        m
    }

    /// Every metric, in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// A code as a label value: Catga's own, a configured one, or `other`.
    fn code(&self, code: &str) -> String {
        bounded(&self.codes, code)
    }

    /// A handling of the handler `labels` names started: counted in flight
    /// until the guard drops; [`HandlingGauge::ended`] records its outcome.
    pub(crate) fn handling(&self, labels: HandlerLabels) -> HandlingGauge {
        let key = (labels.handler.as_ptr() as usize, labels.subject.as_ptr() as usize);
        let cached = self.handlers.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let set = cached.unwrap_or_else(|| {
            let set = Arc::new(HandlerSet {
                labels,
                handlings: self.handlings.get_or_create_owned(&labels),
                seconds: self.handling_seconds.get_or_create_owned(&labels),
                in_flight: self.in_flight.get_or_create_owned(&labels),
                errors: self.handling_errors.clone(),
                codes: self.codes.clone(),
            });
            self.handlers.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(set).clone()
        });
        set.in_flight.inc();
        HandlingGauge(set)
    }

    /// A message for a handler refused before its handler (undecodable, past
    /// its deadline): a handling that failed at once.
    pub(crate) fn refused(&self, labels: HandlerLabels, code: &str) {
        self.handlings.get_or_create(&labels).inc();
        self.refused_with(labels, code);
    }

    fn refused_with(&self, labels: HandlerLabels, code: &str) {
        let HandlerLabels { handler, subject } = labels;
        self.handling_errors.get_or_create(&HandlerErrorLabels { handler, subject, code: self.code(code) }).inc();
    }

    /// An event was delivered to a handler.
    pub(crate) fn delivered(&self, labels: HandlerLabels) {
        self.events_delivered.get_or_create(&labels).inc();
    }

    /// A command was sent to `subject`: its metrics, to record its end by.
    pub(crate) fn sent(&self, subject: &'static str) -> Arc<SendSet> {
        let key = subject.as_ptr() as usize;
        let cached = self.subjects.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let set = cached.unwrap_or_else(|| {
            let labels = SubjectLabels { subject };
            let set = Arc::new(SendSet {
                subject,
                sends: self.sends.get_or_create_owned(&labels),
                seconds: self.send_seconds.get_or_create_owned(&labels),
                failures: self.send_failures.clone(),
                codes: self.codes.clone(),
            });
            self.subjects.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(set).clone()
        });
        set.sends.inc();
        set
    }

    /// A send to `subject` published again.
    pub(crate) fn retried(&self, subject: &'static str, why: Retry) {
        let reason = match why {
            Retry::NoResponders => "no_responders",
            Retry::Silent => "silent",
        };
        self.send_retries.get_or_create(&RetryLabels { subject, reason }).inc();
    }

    /// An event was published on `subject`.
    pub(crate) fn published(&self, subject: &'static str) {
        self.events_published.get_or_create(&SubjectLabels { subject }).inc();
    }

    /// A saga was started here.
    pub(crate) fn saga_started(&self, saga: &'static str) {
        self.sagas_started.get_or_create(&SagaLabels { saga }).inc();
    }

    /// A saga's run ended here with `status` (`completed`, `compensated`, `failed`).
    pub(crate) fn saga_ended(&self, saga: &'static str, status: &'static str) {
        self.sagas_ended.get_or_create(&SagaEndLabels { saga, status }).inc();
    }

    /// One attempt of a saga step took `took`.
    pub(crate) fn step(&self, saga: &'static str, step: &'static str, direction: &'static str, took: Duration) {
        self.step_seconds.get_or_create(&StepLabels { saga, step, direction }).observe(took.as_secs_f64());
    }

    /// A saga was taken over here.
    pub(crate) fn taken_over(&self, saga: &'static str) {
        self.takeovers.get_or_create(&SagaLabels { saga }).inc();
    }

    /// A saga parked here at a waiting step.
    pub(crate) fn parked(&self, saga: &'static str) {
        self.parked.get_or_create(&SagaLabels { saga }).inc();
    }

    /// A parked saga was woken here.
    pub(crate) fn woken(&self, saga: &'static str) {
        self.woken.get_or_create(&SagaLabels { saga }).inc();
    }

    /// A message was scheduled here.
    pub(crate) fn scheduled(&self, subject: &'static str) {
        self.scheduled.get_or_create(&SubjectLabels { subject }).inc();
    }

    /// A scheduled message was handled here: `delivered` (`late` after its
    /// due time), `retried` or `dropped`.
    pub(crate) fn scheduled_delivery(&self, subject: &'static str, outcome: &'static str, late: Option<Duration>) {
        self.scheduled_deliveries.get_or_create(&ScheduledLabels { subject, outcome }).inc();
        if let Some(late) = late {
            self.scheduled_lateness.observe(late.as_secs_f64());
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    /// The relay handled an outbox row: `delivered` (`lag` after it was
    /// written), `retried` or `dropped`.
    pub(crate) fn outbox_relayed(&self, subject: &'static str, outcome: &'static str, lag: Option<Duration>) {
        self.outbox_relayed.get_or_create(&ScheduledLabels { subject, outcome }).inc();
        if let Some(lag) = lag {
            self.outbox_lag.observe(lag.as_secs_f64());
        }
    }

    /// A durable message for a handler came again.
    pub(crate) fn redelivered(&self, labels: HandlerLabels) {
        self.redeliveries.get_or_create(&labels).inc();
    }

    /// A durable message for a handler was dead-lettered.
    pub(crate) fn dead_lettered(&self, labels: HandlerLabels) {
        self.dead_letters.get_or_create(&labels).inc();
    }

    /// The store answered a probe (or not).
    pub(crate) fn store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// The NATS connection came up (`again`: after a loss) or went down.
    pub(crate) fn nats_connection(&self, up: bool, again: bool) {
        self.nats_connected.set(i64::from(up));
        if up && again {
            self.nats_reconnects.inc();
        }
    }
}

/// A code as a label value: Catga's own, one of `codes`, or `other`.
fn bounded(codes: &[String], code: &str) -> String {
    if BUILT_IN.contains(&code) || codes.iter().any(|c| c == code) { code.to_owned() } else { "other".to_owned() }
}

/// One handler's metrics.
pub(crate) struct HandlerSet {
    labels: HandlerLabels,
    handlings: Counter,
    seconds: Histogram,
    in_flight: Gauge,
    errors: Family<HandlerErrorLabels, Counter>,
    codes: Arc<[String]>,
}

/// Counts one handling in flight until dropped.
pub(crate) struct HandlingGauge(Arc<HandlerSet>);

impl HandlingGauge {
    /// The handling ended after `took`.
    pub(crate) fn ended(&self, took: Duration, error: Option<&HandlerError>) {
        let set = &self.0;
        set.handlings.inc();
        set.seconds.observe(took.as_secs_f64());
        if let Some(error) = error {
            let HandlerLabels { handler, subject } = set.labels;
            let code = bounded(&set.codes, error.code());
            set.errors.get_or_create(&HandlerErrorLabels { handler, subject, code }).inc();
        }
    }
}

impl Drop for HandlingGauge {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// One send subject's metrics.
pub(crate) struct SendSet {
    subject: &'static str,
    sends: Counter,
    seconds: Histogram,
    failures: Family<SendErrorLabels, Counter>,
    codes: Arc<[String]>,
}

impl SendSet {
    /// A send ended after `took`.
    pub(crate) fn ended(&self, took: Duration, error: Option<&Error>) {
        self.seconds.observe(took.as_secs_f64());
        if let Some(error) = error {
            let code = bounded(&self.codes, error_code(error));
            self.failures.get_or_create(&SendErrorLabels { subject: self.subject, code }).inc();
        }
    }
}

/// The code of a failed send: the handler's, or what failed.
fn error_code(error: &Error) -> &str {
    match error {
        Error::Handler { error, .. } => error.code(),
        other => other.failure_code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_outside_the_configured_set_are_other() {
        let m = Metrics::new(&["out_of_stock".to_owned()]);
        assert_eq!(m.code("timeout"), "timeout");
        assert_eq!(m.code("out_of_stock"), "out_of_stock");
        assert_eq!(m.code("customer-4711-blocked"), "other");
    }

    #[test]
    fn the_text_names_every_metric_with_the_prefix() {
        let m = Metrics::new(&[]);
        m.sent("orders.place");
        m.retried("orders.place", Retry::Silent);
        m.nats_connection(true, false);
        let text = m.render();
        assert!(text.contains("catga_sends_total{subject=\"orders.place\"} 1"), "{text}");
        assert!(text.contains("catga_send_retries_total{subject=\"orders.place\",reason=\"silent\"} 1"), "{text}");
        assert!(text.contains("catga_nats_connected 1"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(line.starts_with("catga_"), "{line}");
        }
    }
}
