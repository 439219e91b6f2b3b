//! W3C trace context across hops: every send, publish and handling is a
//! span of one trace, each the child of the one before it; `tracestate`
//! is passed on; a saga's steps continue the trace of the request that
//! started it, also after a takeover by another instance.
//!
//! In memory (the spans recorded by a tracing layer, so the whole tree is
//! checked), and across real processes (`catga-saga-service` instances over
//! a real nats-server and redis-server, called by a plain NATS client with a
//! `traceparent` of its own and by a Catga client).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::saga::{SagaContext, SagaStatus, StepError};
use catga::store::Key;
use catga::transport::memory::MemoryBus;
use catga::{Metadata, SendOptions, TraceContext};
use catga_suite::{NatsServer, RedisServer, ServiceProcess};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// Another caller span of the same trace (a second request).
const OTHER_CALLER_SPAN: &str = "00f067aa0ba902b8";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

fn caller_traceparent() -> String {
    format!("00-{TRACE}-{CALLER_SPAN}-01")
}

/// Metadata of a message sent as the span `span` of trace `TRACE`, with
/// tracestate `STATE`.
fn sent_as(span: &str) -> Metadata {
    let mut meta = Metadata::root();
    let traceparent = format!("00-{TRACE}-{span}-01");
    meta.trace = TraceContext::parse(&traceparent, Some(STATE)).expect("a valid traceparent");
    // As a receiver over NATS would take it: the trace id is the conversation.
    meta.correlation_id = TRACE.parse().unwrap();
    meta
}

/// Metadata of a message sent as the caller's span.
fn from_caller() -> Metadata {
    sent_as(CALLER_SPAN)
}

// ---------- in memory: the spans form one tree ----------

/// A span's name and fields.
type SpanRecord = (String, HashMap<String, String>);

/// Every span Catga opens: name and fields.
#[derive(Default, Clone)]
struct Spans(Arc<Mutex<Vec<SpanRecord>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Visit(HashMap<String, String>);
        impl tracing::field::Visit for Visit {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.insert(f.name().to_owned(), format!("{v:?}"));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.insert(f.name().to_owned(), v.to_owned());
            }
        }
        let mut v = Visit(HashMap::new());
        attrs.record(&mut v);
        self.0.lock().unwrap().push((attrs.metadata().name().to_owned(), v.0));
    }
}

impl Spans {
    /// The spans of trace `TRACE`: span id → (name, subject or step, parent span id).
    fn tree(&self) -> HashMap<String, (String, String, Option<String>)> {
        let spans = self.0.lock().unwrap();
        let of_trace = spans.iter().filter(|(_, f)| f.get("trace_id").map(String::as_str) == Some(TRACE));
        of_trace
            .map(|(name, f)| {
                let what = f.get("subject").or(f.get("step")).cloned().unwrap_or_default();
                (f["span_id"].clone(), (name.clone(), what, f.get("parent_span_id").cloned()))
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Place {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    tracestate: Option<String>,
    correlation: String,
}

fn place(trace: &TraceContext, correlation: catga::MessageId) -> Place {
    Place {
        trace_id: trace.trace_id().to_string(),
        span_id: trace.span_id().to_string(),
        parent_span_id: trace.parent_span_id().map(|p| p.to_string()),
        tracestate: trace.tracestate().map(str::to_owned),
        correlation: correlation.to_string(),
    }
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.trace.probe", reply = Place)]
struct MemProbe;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "t.trace.traced")]
struct MemTraced {
    by: Place,
}

static EVENTS: Mutex<Vec<(Place, Place)>> = Mutex::new(Vec::new());

#[catga::command(queue = "trace")]
async fn mem_probe(_: MemProbe, ctx: Context) -> Result<Place, HandlerError> {
    let me = place(&ctx.metadata().trace, ctx.metadata().correlation_id);
    ctx.publish(MemTraced { by: me.clone() }).await?;
    Ok(me)
}

#[catga::event(queue = "trace")]
async fn mem_traced(ev: MemTraced, ctx: Context) -> Result<(), HandlerError> {
    EVENTS.lock().unwrap().push((ev.by, place(&ctx.metadata().trace, ctx.metadata().correlation_id)));
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.trace.start_saga", reply = Place)]
struct MemStartSaga {
    id: String,
}

#[catga::command(queue = "trace")]
async fn mem_start_saga(cmd: MemStartSaga, ctx: Context) -> Result<Place, HandlerError> {
    let outcome = ctx.app().start_saga::<MemSaga>(&cmd.id, ()).await?;
    if outcome != catga::saga::SagaOutcome::Completed {
        return Err(HandlerError::new("saga", format!("{outcome:?}")));
    }
    Ok(place(&ctx.metadata().trace, ctx.metadata().correlation_id))
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.trace.effect", reply = Place)]
struct MemEffect;

#[catga::command(queue = "trace")]
async fn mem_effect(_: MemEffect, ctx: Context) -> Result<Place, HandlerError> {
    Ok(place(&ctx.metadata().trace, ctx.metadata().correlation_id))
}

/// (step's place, the place of the handling of its send)
static STEPS: Mutex<Vec<(Place, Place)>> = Mutex::new(Vec::new());

struct MemSaga;

#[catga::saga(name = "t-trace-saga")]
impl MemSaga {
    #[step(pivot)]
    async fn only(_: &mut (), ctx: &SagaContext) -> Result<(), StepError> {
        let effect = ctx.send(MemEffect).await?;
        STEPS.lock().unwrap().push((place(ctx.trace(), catga::MessageId::from_u128(0)), effect));
        Ok(())
    }
}

/// Two instances with the handlers of `t.trace.*` (kept: dropping an
/// instance's every handle unsubscribes it) and a client.
async fn memory_instances() -> (Vec<App>, App) {
    let bus = MemoryBus::new();
    let mut apps = Vec::new();
    for i in 0..2 {
        let app = Catga::builder()
            .service("trace")
            .instance_id(format!("trace-{i}"))
            .memory_bus(bus.clone())
            .handlers_where(|h| h.subject.starts_with("t.trace."))
            .start()
            .await
            .unwrap();
        apps.push(app);
    }
    (apps, Catga::builder().service("client").memory_bus(bus).client_only().start().await.unwrap())
}

/// Follow `span` up to the root: the names and subjects (or steps) met.
fn path(tree: &HashMap<String, (String, String, Option<String>)>, span: &str) -> Vec<String> {
    let mut path = Vec::new();
    let mut at = Some(span.to_owned());
    while let Some(id) = at {
        let Some((name, what, parent)) = tree.get(&id) else {
            panic!("span {id} is not in the trace's tree: {tree:#?}");
        };
        path.push(format!("{name} {what}"));
        at = parent.clone();
        assert!(path.len() < 20, "a cycle: {path:?}");
    }
    path
}

#[test]
fn in_memory_a_command_its_event_and_a_saga_step_form_one_tree() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (probe, started) = rt.block_on(async {
        let (_instances, client) = memory_instances().await;
        let probe = client.send_as(MemProbe, from_caller(), SendOptions::default()).await.unwrap();
        let saga = MemStartSaga { id: format!("s-{}", catga::MessageId::new()) };
        let started = client.send_as(saga, sent_as(OTHER_CALLER_SPAN), SendOptions::default()).await.unwrap();
        // The event's handling runs on a task of its own.
        let deadline = Instant::now() + Duration::from_secs(10);
        while EVENTS.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (probe, started)
    });

    // The handler continues the caller's trace, its parent the caller's span.
    assert_eq!(probe.trace_id, TRACE);
    assert_eq!(probe.parent_span_id.as_deref(), Some(CALLER_SPAN));
    assert_ne!(probe.span_id, CALLER_SPAN);
    assert_eq!(probe.tracestate.as_deref(), Some(STATE));
    assert_eq!(probe.correlation, TRACE, "the correlation id is the trace id");

    // The event's handling continues it through the publish.
    let events = EVENTS.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let (by, event) = &events[0];
    assert_eq!(by, &probe);
    assert_eq!(event.trace_id, TRACE);
    assert_eq!(event.tracestate.as_deref(), Some(STATE));
    assert_eq!(event.correlation, TRACE);

    // The saga's step and its send continue the request that started it.
    let steps = STEPS.lock().unwrap().clone();
    assert_eq!(steps.len(), 1, "{steps:?}");
    let (step, effect) = &steps[0];
    assert_eq!(step.trace_id, TRACE);
    assert_eq!(step.parent_span_id.as_ref(), Some(&started.span_id), "the step's parent is its starter's span");
    assert_eq!(effect.trace_id, TRACE);
    assert_eq!(effect.tracestate.as_deref(), Some(STATE));
    assert_ne!(effect.correlation, TRACE, "a saga's sends keep the saga's own correlation id");

    // And the spans recorded form one tree, hop after hop.
    let tree = spans.tree();
    let up = |span: &str| path(&tree, span);
    assert_eq!(
        up(&event.span_id),
        [
            "catga.handle t.trace.traced",
            "catga.publish t.trace.traced",
            "catga.handle t.trace.probe",
            "catga.send t.trace.probe",
        ],
    );
    assert_eq!(
        up(&effect.span_id),
        [
            "catga.handle t.trace.effect",
            "catga.send t.trace.effect",
            "catga.saga.step only",
            "catga.handle t.trace.start_saga",
            "catga.send t.trace.start_saga",
        ],
    );
    assert_eq!(up(&probe.span_id).last().map(String::as_str), Some("catga.send t.trace.probe"));
    assert_eq!(tree.get(CALLER_SPAN).map(|(_, _, parent)| parent.clone()), Some(None), "the caller's span is the root");
}

// ---------- across processes ----------

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-saga-service");

/// Where a span is, as the service's handlers and steps see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Seen {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    tracestate: Option<String>,
    correlation: String,
    instance: String,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "trace.probe", reply = Seen)]
struct Probe {
    saga: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "trace.report")]
struct TraceReport {
    by: Seen,
    handler: Seen,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "trace.start_saga", reply = Seen)]
struct StartTraced {
    id: String,
    park: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    what: String,
    attempt: u32,
    seen: Seen,
}

fn start(nats: &NatsServer, redis: &RedisServer, id: &str) -> ServiceProcess {
    let (nats, redis) = (nats.url(), redis.url());
    ServiceProcess::started(
        SERVICE,
        &[
            ("CATGA_NATS_URL", &nats),
            ("CATGA_REDIS_URL", &redis),
            ("CATGA_SERVICE", "saga-svc"),
            ("CATGA_INSTANCE_ID", id),
        ],
    )
}

async fn client(nats: &NatsServer, redis: &RedisServer) -> App {
    Catga::builder()
        .service("trace-client")
        .nats_url(nats.url())
        .redis_url(redis.url())
        .request_timeout(Duration::from_secs(5))
        .client_only()
        .start()
        .await
        .unwrap()
}

/// The next message on `sub`, waiting at most 10 s.
async fn next(sub: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 10 s"))
        .unwrap_or_else(|| panic!("the subscription for {what} ended"))
}

fn header<'a>(m: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    Some(m.headers.as_ref()?.get(name)?.as_str())
}

/// The parent id of a `traceparent` (its third field).
fn parent_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(2).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_processes_a_plain_nats_callers_trace_reaches_the_handler_and_its_event() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let _instances = [start(&nats, &redis, "trace-a"), start(&nats, &redis, "trace-b")];
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let mut traced = raw.subscribe("trace.traced").await.unwrap();
    let mut reports = raw.subscribe("trace.report").await.unwrap();
    raw.flush().await.unwrap();

    // A plain NATS request, with only the W3C headers of its caller.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", caller_traceparent());
    headers.insert("tracestate", STATE);
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        raw.request_with_headers("trace.probe", headers, serde_json::to_vec(&Probe { saga: None }).unwrap().into()),
    )
    .await
    .expect("a reply within 10 s")
    .unwrap();
    let handler: Seen = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(handler.trace_id, TRACE, "{handler:?}");
    assert_eq!(handler.parent_span_id.as_deref(), Some(CALLER_SPAN), "the caller's span is the parent");
    assert_ne!(handler.span_id, CALLER_SPAN);
    assert_eq!(handler.tracestate.as_deref(), Some(STATE));
    assert_eq!(handler.correlation, TRACE, "no Catga-Correlation-Id: the trace id is the correlation id");

    // The event it published: the same trace, from a span of its own.
    let event = next(&mut traced, "trace.traced").await;
    let traceparent = header(&event, "traceparent").expect("the event has a traceparent");
    assert!(traceparent.starts_with(&format!("00-{TRACE}-")), "{traceparent}");
    let publish_span = parent_of(traceparent).to_owned();
    assert_ne!(publish_span, handler.span_id, "the publish is a span of its own");
    assert_eq!(header(&event, "tracestate"), Some(STATE));
    assert_eq!(header(&event, "Catga-Correlation-Id"), None, "the trace id is the correlation id");

    // Its handling (on either instance) continues the trace from the publish.
    let report = next(&mut reports, "trace.report").await;
    let report: TraceReport = serde_json::from_slice(&report.payload).unwrap();
    assert_eq!(report.by, handler);
    assert_eq!(report.handler.trace_id, TRACE);
    assert_eq!(report.handler.parent_span_id.as_deref(), Some(publish_span.as_str()));
    assert_eq!(report.handler.tracestate.as_deref(), Some(STATE));
    assert_eq!(report.handler.correlation, TRACE);

    // A Catga caller's span is the parent in the same way.
    let app = client(&nats, &redis).await;
    let meta = from_caller();
    let handler = app.send_as(Probe { saga: None }, meta, SendOptions::default()).await.unwrap();
    assert_eq!(handler.trace_id, TRACE);
    assert_eq!(handler.parent_span_id.as_deref(), Some(CALLER_SPAN));
    assert_eq!(handler.tracestate.as_deref(), Some(STATE));

    // A message with an invalid traceparent starts a new trace, and its
    // tracestate goes with the invalid header.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{}-{CALLER_SPAN}-01", TRACE.to_uppercase()));
    headers.insert("tracestate", STATE);
    let reply =
        raw.request_with_headers("trace.probe", headers, serde_json::to_vec(&Probe { saga: None }).unwrap().into());
    let reply = tokio::time::timeout(Duration::from_secs(10), reply).await.expect("a reply within 10 s").unwrap();
    let fresh: Seen = serde_json::from_slice(&reply.payload).unwrap();
    assert_ne!(fresh.trace_id, TRACE.to_lowercase());
    assert_eq!(fresh.tracestate, None);
    assert_eq!(fresh.trace_id, fresh.correlation, "a new conversation: its trace id is its correlation id");
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.traced", reply = (String, Option<String>, Option<String>), durable)]
struct DurableTraced;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_command_through_jetstream_continues_its_callers_trace() {
    let nats = NatsServer::start_jetstream();
    let url = nats.url();
    let env = [
        ("CATGA_NATS_URL", url.as_str()),
        ("CATGA_SERVICE", "dur"),
        ("CATGA_INSTANCE_ID", "d-1"),
        ("CATGA_TEST_DURABLE", "1"),
    ];
    let _service = ServiceProcess::started(env!("CARGO_BIN_EXE_catga-test-service"), &env);
    let app = Catga::builder().nats_url(url.as_str()).service("tester").client_only().start().await.unwrap();
    let sent = app.send_as(DurableTraced, from_caller(), SendOptions::timeout(Duration::from_secs(10)));
    let (trace_id, parent, state) = sent.await.unwrap();
    assert_eq!(trace_id, TRACE);
    assert_eq!(parent.as_deref(), Some(CALLER_SPAN), "the caller's span is the parent of the durable handling");
    assert_eq!(state.as_deref(), Some(STATE));
    app.shutdown().await;
}

/// The records of saga `id` (steps and the handlings of their sends).
async fn recorded(app: &App, id: &str) -> Vec<Recorded> {
    let members = app.store().set_members(&Key::new(format!("trace:{id}"), "seen")).await.unwrap();
    members.iter().map(|m| serde_json::from_str(m).unwrap()).collect()
}

/// Wait (bounded) until one of `instances` logs a line containing `text`;
/// the index of the instance.
fn who_logged(instances: &mut [ServiceProcess], text: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for (i, instance) in instances.iter_mut().enumerate() {
            if instance.drain_lines().iter().any(|l| l.contains(text)) {
                return i;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no instance logged {text:?} within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sagas_steps_continue_its_starters_trace_after_a_takeover() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let mut instances = vec![start(&nats, &redis, "trace-a"), start(&nats, &redis, "trace-b")];
    let app = client(&nats, &redis).await;
    let id = format!("traced-{}", catga::MessageId::new());
    let starter = app.send_as(StartTraced { id: id.clone(), park: true }, from_caller(), SendOptions::default());
    let starter = starter.await.unwrap();
    assert_eq!(starter.trace_id, TRACE);
    assert_eq!(starter.parent_span_id.as_deref(), Some(CALLER_SPAN));

    // The second step parks on its first attempt; kill its instance there.
    let victim = who_logged(&mut instances, &format!("TRACE PARKED {id}"));
    instances[victim].kill();

    // A survivor takes the saga over and finishes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let info = app.saga_status_by_name("traced-order", &id).await.unwrap().expect("the saga exists");
        if info.status.is_finished() || Instant::now() > deadline {
            break info.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, SagaStatus::Completed);

    let records = recorded(&app, &id).await;
    let find = |what: &str| -> Vec<&Recorded> { records.iter().filter(|r| r.what == what).collect() };
    let (first, parked) = (find("step:first"), find("step:parked"));
    assert_eq!(first.len(), 1, "{records:#?}");
    assert_eq!(parked.len(), 1, "the parked attempt recorded nothing before the kill: {records:#?}");
    let (first, parked) = (first[0], parked[0]);
    assert_eq!(first.seen.instance, starter.instance, "the saga started where it was submitted");
    assert_ne!(parked.seen.instance, starter.instance, "the parked step ran again on the survivor");
    assert_eq!(parked.attempt, 2);
    for step in [first, parked] {
        assert_eq!(step.seen.trace_id, TRACE, "{step:?}");
        assert_eq!(step.seen.parent_span_id.as_ref(), Some(&starter.span_id), "{step:?}: its parent is the starter");
        assert_eq!(step.seen.tracestate.as_deref(), Some(STATE), "{step:?}");
    }
    assert_ne!(first.seen.span_id, parked.seen.span_id, "each step is a span of its own");
    for effect in [find("effect:first"), find("effect:parked")] {
        assert_eq!(effect.len(), 1, "{records:#?}");
        let effect = &effect[0].seen;
        assert_eq!(effect.trace_id, TRACE, "{effect:?}");
        assert_eq!(effect.tracestate.as_deref(), Some(STATE), "{effect:?}");
        assert_ne!(effect.correlation, TRACE, "a saga's sends keep its own correlation id: {effect:?}");
        assert!(
            ![starter.span_id.as_str(), &first.seen.span_id, &parked.seen.span_id, CALLER_SPAN]
                .contains(&effect.span_id.as_str()),
            "{effect:?}"
        );
    }
}
