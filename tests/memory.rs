//! The in-memory transport's distributed semantics, end to end through the
//! macros. Each test runs its instances on its own `MemoryBus` and
//! subscribes only its own handlers (subjects `t.<test>.*`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catga::middleware::{Handling, Middleware, Next};
use catga::prelude::*;
use catga::transport::memory::MemoryBus;
use catga::{BoxFuture, Error, MessageId};

/// Start `n` instances of `service` on a fresh bus with the handlers whose
/// subject starts with `prefix`.
async fn instances(n: usize, service: &str, prefix: &'static str) -> (MemoryBus, Vec<App>) {
    let bus = MemoryBus::new();
    let mut apps = Vec::new();
    for i in 0..n {
        let app = Catga::builder()
            .service(service)
            .instance_id(format!("{service}-{i}"))
            .memory_bus(bus.clone())
            .handlers_where(move |h| h.subject.starts_with(prefix))
            .start()
            .await
            .unwrap();
        apps.push(app);
    }
    (bus, apps)
}

async fn client(bus: &MemoryBus) -> App {
    Catga::builder().service("client").memory_bus(bus.clone()).client_only().start().await.unwrap()
}

// ---------- round robin and replies ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.rr.who", reply = String)]
struct Who;

#[catga::command(queue = "rr")]
async fn who(_: Who, ctx: Context) -> Result<String, HandlerError> {
    Ok(ctx.instance_id().to_owned())
}

#[tokio::test]
async fn a_command_goes_to_exactly_one_instance_round_robin() {
    let (bus, apps) = instances(3, "rr", "t.rr.").await;
    let client = client(&bus).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *counts.entry(client.send(Who).await.unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&c| c == 100), "round robin is exact in memory: {counts:?}");

    // A stopped instance gets nothing more; the others share its load.
    apps[0].shutdown().await;
    for _ in 0..10 {
        assert_ne!(client.send(Who).await.unwrap(), "rr-0");
    }
}

#[tokio::test]
async fn dropping_every_handle_unsubscribes_the_instance() {
    let (bus, mut apps) = instances(2, "rrdrop", "t.rr.").await;
    let client = client(&bus).await;
    let gone = apps.remove(0);
    let gone_id = gone.instance_id().to_owned();
    drop(gone);
    for _ in 0..6 {
        assert_ne!(client.send(Who).await.unwrap(), gone_id);
    }
}

#[tokio::test]
async fn send_with_no_handler_fails_at_once() {
    let bus = MemoryBus::new();
    let client = client(&bus).await;
    let started = std::time::Instant::now();
    let err = client.send(Who).await.unwrap_err();
    assert!(matches!(err, Error::NoHandler { subject: "t.rr.who" }), "{err}");
    assert!(err.to_string().contains("t.rr.who"));
    // Not the 5 s default timeout: "at once" (generous bound for slow CI).
    assert!(started.elapsed() < Duration::from_secs(1));
}

// ---------- events ----------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "t.ev.happened")]
struct Happened {
    n: u32,
}

static SEEN: Mutex<Vec<(&'static str, String, u32)>> = Mutex::new(Vec::new());

#[catga::event]
async fn on_happened_broadcast(ev: Happened, ctx: Context) -> Result<(), HandlerError> {
    SEEN.lock().unwrap().push(("broadcast", ctx.instance_id().to_owned(), ev.n));
    Ok(())
}

#[catga::event(queue = "mailer")]
async fn on_happened_mailer(ev: Happened, ctx: Context) -> Result<(), HandlerError> {
    SEEN.lock().unwrap().push(("mailer", ctx.instance_id().to_owned(), ev.n));
    Ok(())
}

#[catga::event(queue = "billing")]
async fn on_happened_billing(ev: Happened) -> Result<(), HandlerError> {
    SEEN.lock().unwrap().push(("billing", String::new(), ev.n));
    Ok(())
}

#[tokio::test]
async fn an_event_reaches_every_broadcast_subscriber_and_one_member_per_queue_group() {
    let (bus, apps) = instances(3, "ev", "t.ev.").await;
    let client = client(&bus).await;
    for n in 0..30 {
        client.publish(Happened { n }).await.unwrap();
    }
    for app in &apps {
        assert_eq!(app.shutdown().await.abandoned, 0);
    }
    let seen = SEEN.lock().unwrap().clone();
    for n in 0..30 {
        let of = |kind| seen.iter().filter(|(k, _, m)| *k == kind && *m == n).collect::<Vec<_>>();
        let broadcast = of("broadcast");
        assert_eq!(broadcast.len(), 3, "event {n}: every instance once: {broadcast:?}");
        assert_eq!(of("mailer").len(), 1, "event {n}: one mailer");
        assert_eq!(of("billing").len(), 1, "event {n}: one billing");
    }
    // Queue members share the work.
    let mailers: std::collections::HashSet<_> =
        seen.iter().filter(|(k, ..)| *k == "mailer").map(|(_, i, _)| i).collect();
    assert_eq!(mailers.len(), 3);
}

#[tokio::test]
async fn publishing_with_no_subscriber_is_not_an_error() {
    let bus = MemoryBus::new();
    client(&bus).await.publish(Happened { n: 1 }).await.unwrap();
}

// ---------- errors, panics, timeouts, validation ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.err.do", reply = u32, validate)]
struct Do {
    what: String,
}

impl Validate for Do {
    fn validate(&self) -> Result<(), HandlerError> {
        if self.what.is_empty() { Err(HandlerError::invalid("`what` must not be empty")) } else { Ok(()) }
    }
}

/// A plain std error, to show `?` converts any error.
#[derive(Debug)]
struct Oops;

impl std::fmt::Display for Oops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("disk on fire")
    }
}
impl std::error::Error for Oops {}

#[catga::command(queue = "err", timeout = "100ms")]
async fn do_it(cmd: Do) -> Result<u32, HandlerError> {
    match cmd.what.as_str() {
        "ok" => Ok(1),
        "refuse" => Err(HandlerError::new("refused", "not today")),
        "std" => Err(Oops)?,
        "panic" => panic!("boom at {}", cmd.what),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(2)
        }
        "wait" => {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Ok(3)
        }
        other => Err(HandlerError::new("unknown", other.to_owned())),
    }
}

fn what(s: &str) -> Do {
    Do { what: s.into() }
}

#[tokio::test]
async fn handler_errors_reach_the_caller_typed() {
    let (bus, _apps) = instances(1, "err", "t.err.").await;
    let client = client(&bus).await;
    assert_eq!(client.send(what("ok")).await.unwrap(), 1);

    let err = client.send(what("refuse")).await.unwrap_err();
    let he = err.handler_error().expect("a handler error");
    assert_eq!((he.code(), he.message()), ("refused", "not today"));

    let err = client.send(what("std")).await.unwrap_err();
    assert_eq!(err.code(), Some(HandlerError::INTERNAL));
    assert!(err.to_string().contains("disk on fire"), "{err}");

    let err = client.send(what("")).await.unwrap_err();
    assert_eq!(err.code(), Some(HandlerError::INVALID));
    assert!(err.to_string().contains("`what` must not be empty"));
}

#[tokio::test]
async fn a_panicking_handler_becomes_an_error_reply_and_the_instance_keeps_serving() {
    let (bus, apps) = instances(1, "panic", "t.err.").await;
    let client = client(&bus).await;
    let err = client.send(what("panic")).await.unwrap_err();
    assert_eq!(err.code(), Some(HandlerError::PANIC));
    assert!(err.to_string().contains("boom at panic"), "{err}");
    assert!(err.to_string().contains("do_it"), "names the handler: {err}");
    assert_eq!(client.send(what("ok")).await.unwrap(), 1);
    assert_eq!(apps[0].in_flight(), 0, "the panicked handling is no longer counted");
}

#[tokio::test]
async fn handler_timeout_from_the_attribute_and_caller_timeouts() {
    let (bus, _apps) = instances(1, "timeouts", "t.err.").await;
    let client = Catga::builder()
        .memory_bus(bus.clone())
        .client_only()
        .request_timeout(Duration::from_millis(30))
        .start()
        .await
        .unwrap();

    // Default caller timeout (30 ms) is shorter than the handler (60 ms).
    let err = client.send(what("wait")).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { subject: "t.err.do", after } if after == Duration::from_millis(30)),
        "{err}"
    );

    // A per-call timeout overrides the default.
    assert_eq!(client.send_with(what("wait"), SendOptions::timeout(Duration::from_secs(2))).await.unwrap(), 3);

    // The handler's own limit (100 ms) fires before the caller's (2 s).
    let err = client.send_with(what("slow"), SendOptions::timeout(Duration::from_secs(2))).await.unwrap_err();
    assert_eq!(err.code(), Some(HandlerError::HANDLER_TIMEOUT), "{err}");
}

// ---------- ids and correlation ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.ids.outer", reply = (Ids, Ids))]
struct Outer;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.ids.inner", reply = Ids)]
struct Inner;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Ids {
    message: u128,
    correlation: u128,
    causation: Option<u128>,
}

fn ids(ctx: &Context) -> Ids {
    let m = ctx.metadata();
    Ids {
        message: m.message_id.as_u128(),
        correlation: m.correlation_id.as_u128(),
        causation: m.causation_id.map(MessageId::as_u128),
    }
}

#[catga::command(queue = "ids")]
async fn outer(_: Outer, ctx: Context) -> Result<(Ids, Ids), HandlerError> {
    let inner = ctx.send(Inner).await?;
    Ok((ids(&ctx), inner))
}

#[catga::command(queue = "ids")]
async fn inner(_: Inner, ctx: Context) -> Result<Ids, HandlerError> {
    Ok(ids(&ctx))
}

#[tokio::test]
async fn sends_from_a_handler_keep_the_correlation_id_and_name_their_cause() {
    let (bus, _apps) = instances(2, "ids", "t.ids.").await;
    let client = client(&bus).await;
    let (outer, inner) = client.send(Outer).await.unwrap();
    assert_eq!(outer.correlation, outer.message, "a root message correlates to itself");
    assert_eq!(outer.causation, None);
    assert_eq!(inner.correlation, outer.correlation);
    assert_eq!(inner.causation, Some(outer.message));
    assert_ne!(inner.message, outer.message);
}

// ---------- tracing span per handling ----------

#[derive(Default, Clone)]
struct SpanFields(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanFields {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Visit(String);
        impl tracing::field::Visit for Visit {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", f.name(), v));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.push_str(&format!("{}={} ", f.name(), v));
            }
        }
        let mut v = Visit(format!("{}: ", attrs.metadata().name()));
        attrs.record(&mut v);
        self.0.lock().unwrap().push(v.0);
    }
}

#[test]
fn each_handling_runs_in_a_span_with_subject_handler_and_ids() {
    use tracing_subscriber::layer::SubscriberExt;
    let fields = SpanFields::default();
    let subscriber = tracing_subscriber::registry().with(fields.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (outer, _) = rt.block_on(async {
        let (bus, _apps) = instances(1, "spans", "t.ids.").await;
        client(&bus).await.send(Outer).await.unwrap()
    });
    let spans = fields.0.lock().unwrap().clone();
    let handle: Vec<_> = spans.iter().filter(|s| s.starts_with("catga.handle")).collect();
    assert_eq!(handle.len(), 2, "{spans:?}");
    let outer_span = handle.iter().find(|s| s.contains("subject=t.ids.outer")).expect("outer span");
    assert!(outer_span.contains("handler=outer"), "{outer_span}");
    assert!(outer_span.contains(&format!("message_id={}", MessageId::from_u128(outer.message))), "{outer_span}");
    assert!(outer_span.contains(&format!("correlation_id={}", MessageId::from_u128(outer.correlation))));
    let inner_span = handle.iter().find(|s| s.contains("subject=t.ids.inner")).expect("inner span");
    assert!(inner_span.contains(&format!("causation_id={}", MessageId::from_u128(outer.message))), "{inner_span}");
}

// ---------- graceful shutdown ----------

#[tokio::test]
async fn shutdown_stops_new_work_and_waits_for_in_flight_handlings() {
    let (bus, apps) = instances(1, "grace", "t.err.").await;
    let client = client(&bus).await;
    let app = apps[0].clone();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.send_with(what("wait"), SendOptions::timeout(Duration::from_secs(2))).await }
    });
    while app.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let report = app.shutdown().await;
    assert_eq!(report.abandoned, 0);
    assert_eq!(in_flight.await.unwrap().unwrap(), 3, "the in-flight command finished");
    assert!(matches!(client.send(what("ok")).await, Err(Error::NoHandler { .. })));
    assert!(matches!(app.send(what("ok")).await, Err(Error::Shutdown { .. })));
    assert_eq!(app.shutdown().await.abandoned, 0, "shutdown is idempotent");
}

#[tokio::test]
async fn shutdown_reports_handlings_still_running_after_the_grace_period() {
    let bus = MemoryBus::new();
    let app = Catga::builder()
        .memory_bus(bus.clone())
        .grace_period(Duration::from_millis(20))
        .handlers_where(|h| h.subject.starts_with("t.err."))
        .start()
        .await
        .unwrap();
    let client = client(&bus).await;
    let slow =
        tokio::spawn(async move { client.send_with(what("slow"), SendOptions::timeout(Duration::from_secs(2))).await });
    while app.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(app.shutdown().await.abandoned, 1);
    slow.abort();
}

// ---------- middleware ----------

#[derive(Default)]
struct Audit {
    log: Mutex<Vec<String>>,
}

struct Shared(Arc<Audit>);

impl Middleware for Shared {
    fn handle<'a>(&'a self, h: &'a Handling<'a>, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if h.record.name == "do_it" && h.instance_id.ends_with("deny") {
                return Err(HandlerError::new("forbidden", "this instance refuses"));
            }
            let outcome = next.run().await;
            self.0.log.lock().unwrap().push(format!(
                "{} {}",
                h.record.name,
                if outcome.is_ok() { "ok" } else { "err" }
            ));
            outcome
        })
    }
}

#[tokio::test]
async fn middleware_wraps_every_handling_and_can_refuse() {
    let audit = Arc::new(Audit::default());
    let bus = MemoryBus::new();
    let _app = Catga::builder()
        .memory_bus(bus.clone())
        .middleware(Shared(audit.clone()))
        .handlers_where(|h| h.subject.starts_with("t.err."))
        .start()
        .await
        .unwrap();
    let client = client(&bus).await;
    assert_eq!(client.send(what("ok")).await.unwrap(), 1);
    assert_eq!(client.send(what("refuse")).await.unwrap_err().code(), Some("refused"));
    assert_eq!(client.send(what("panic")).await.unwrap_err().code(), Some(HandlerError::PANIC));
    assert_eq!(*audit.log.lock().unwrap(), ["do_it ok", "do_it err", "do_it err"]);

    let bus = MemoryBus::new();
    let _deny = Catga::builder()
        .memory_bus(bus.clone())
        .instance_id("x-deny")
        .middleware(Shared(audit.clone()))
        .handlers_where(|h| h.subject.starts_with("t.err."))
        .start()
        .await
        .unwrap();
    let err = crate::client(&bus).await.send(what("ok")).await.unwrap_err();
    assert_eq!(err.code(), Some("forbidden"));
}

// ---------- two copies of one contract ----------

mod client_copy {
    use catga::prelude::*;

    /// The client's own copy of `Do`'s contract: another Rust type, same
    /// subject and shape. It travels through the codec, as over NATS.
    #[derive(Debug, Serialize, Deserialize, Command)]
    #[catga(subject = "t.err.do", reply = u64)]
    pub struct DoCopy {
        pub what: String,
    }

    /// A stale copy whose shape no longer matches.
    #[derive(Debug, Serialize, Deserialize, Command)]
    #[catga(subject = "t.err.do", reply = u64)]
    pub struct DoStale {
        pub verb: u8,
    }
}

#[tokio::test]
async fn a_copy_of_a_contract_goes_through_the_codec_and_a_mismatch_is_a_clear_error() {
    let (bus, apps) = instances(1, "copy", "t.err.").await;
    let client = client(&bus).await;
    assert_eq!(client.send(client_copy::DoCopy { what: "ok".into() }).await.unwrap(), 1u64);
    let err = client.send(client_copy::DoCopy { what: "refuse".into() }).await.unwrap_err();
    assert_eq!(err.code(), Some("refused"));

    let err = client.send(client_copy::DoStale { verb: 7 }).await.unwrap_err();
    assert_eq!(err.code(), Some(HandlerError::INVALID), "{err}");
    let text = err.to_string();
    assert!(text.contains("malformed payload for \"t.err.do\"") && text.contains("missing field `what`"), "{text}");
    assert_eq!(client.send(what("ok")).await.unwrap(), 1, "the instance keeps serving");
    drop(apps);
}

// ---------- registry checks ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.dup.cmd", reply = ())]
struct DupCmd;

#[catga::command]
async fn dup_first(_: DupCmd) -> Result<(), HandlerError> {
    Ok(())
}

#[catga::command]
async fn dup_second(_: DupCmd) -> Result<(), HandlerError> {
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "t.dupev.ev")]
struct DupEv;

#[catga::event(queue = "same")]
async fn dup_ev_first(_: DupEv) -> Result<(), HandlerError> {
    Ok(())
}

#[catga::event(queue = "same")]
async fn dup_ev_second(_: DupEv) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test]
async fn start_refuses_two_command_handlers_for_one_subject_naming_both() {
    let err = Catga::builder()
        .memory_bus(MemoryBus::new())
        .handlers_where(|h| h.subject == "t.dup.cmd")
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::DuplicateHandler { .. }), "{text}");
    assert!(text.contains("\"t.dup.cmd\""), "{text}");
    assert!(text.contains("tests/memory.rs:") && text.contains("dup_first") && text.contains("dup_second"), "{text}");
}

#[tokio::test]
async fn start_refuses_two_event_handlers_in_one_queue_group() {
    let err = Catga::builder()
        .memory_bus(MemoryBus::new())
        .handlers_where(|h| h.subject == "t.dupev.ev")
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("queue group \"same\"") && text.contains("dup_ev_first") && text.contains("dup_ev_second"),
        "{text}"
    );
}

#[test]
fn the_registry_lists_every_handler_sorted_with_its_location() {
    let all = catga::registry::handlers();
    let who = all.iter().find(|h| h.name == "who").expect("registered");
    assert_eq!(who.subject, "t.rr.who");
    assert_eq!(who.queue, Some("rr"));
    assert_eq!(who.message_type(), "memory::Who");
    assert_eq!(who.reply_type(), "alloc::string::String");
    assert!(who.file.ends_with("memory.rs"));
    let line = std::fs::read_to_string(who.file).unwrap().lines().nth(who.line as usize - 1).unwrap().to_owned();
    assert!(line.contains("fn who"), "line {} is {line:?}", who.line);
    let keys: Vec<_> = all.iter().map(|h| (h.kind, h.subject, h.queue, h.name)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    let do_it = all.iter().find(|h| h.name == "do_it").unwrap();
    assert_eq!(do_it.timeout_ms, Some(100));
    assert_eq!(
        catga::registry::handlers().iter().filter(|h| h.subject == "t.dup.cmd").count(),
        2,
        "both duplicates are registered; start() refuses them"
    );
}

#[tokio::test]
async fn a_dead_server_is_a_clear_startup_error() {
    // A loopback port with nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let err = Catga::builder().nats_url(format!("nats://127.0.0.1:{port}")).client_only().start().await.unwrap_err();
    assert!(matches!(err, Error::Config(_)));
    assert!(err.to_string().contains("cannot connect to NATS") && err.to_string().contains(&port.to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "fails, does not hang");

    let err = Catga::builder().redis_url("redis://127.0.0.1:1").client_only().start().await.unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err}");
    assert!(
        err.to_string().contains("redis://127.0.0.1:1") && err.to_string().contains("check that redis-server runs"),
        "{err}"
    );
}

// ---------- review fixes: panics outside the handler, codes, decode errors ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.pv.check", reply = u8, validate)]
struct Checked {
    explode: bool,
}

impl Validate for Checked {
    fn validate(&self) -> Result<(), HandlerError> {
        assert!(!self.explode, "validator exploded");
        Ok(())
    }
}

#[catga::command]
async fn checked(_: Checked) -> Result<u8, HandlerError> {
    Ok(7)
}

struct Exploding;

impl Middleware for Exploding {
    fn handle<'a>(&'a self, h: &'a Handling<'a>, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            assert!(h.metadata.causation_id.is_some(), "middleware exploded");
            next.run().await
        })
    }
}

#[tokio::test]
async fn panics_in_a_validation_hook_or_a_middleware_become_panic_replies() {
    let (bus, _apps) = instances(1, "pv", "t.pv.").await;
    let client = client(&bus).await;
    let err = client.send(Checked { explode: true }).await.unwrap_err();
    assert_eq!(err.code(), Some(HandlerError::PANIC));
    assert!(err.to_string().contains("validator exploded"), "{err}");
    assert_eq!(client.send(Checked { explode: false }).await.unwrap(), 7);

    let bus = MemoryBus::new();
    let _app = Catga::builder()
        .memory_bus(bus.clone())
        .middleware(Exploding)
        .handlers_where(|h| h.subject.starts_with("t.pv."))
        .start()
        .await
        .unwrap();
    let client = crate::client(&bus).await;
    let err = client.send(Checked { explode: false }).await.unwrap_err();
    assert_eq!(err.code(), Some(HandlerError::PANIC));
    assert!(err.to_string().contains("middleware exploded"), "{err}");
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.prop.front", reply = u32)]
struct Front {
    what: String,
}

#[catga::command]
async fn front(cmd: Front, ctx: Context) -> Result<u32, HandlerError> {
    // `?` passes the downstream handler's error on unchanged.
    ctx.send(what(&cmd.what)).await.map_err(Into::into)
}

#[tokio::test]
async fn a_downstream_error_keeps_its_code_through_question_mark() {
    let bus = MemoryBus::new();
    let _app = Catga::builder()
        .memory_bus(bus.clone())
        .handlers_where(|h| h.subject.starts_with("t.prop.") || h.subject.starts_with("t.err."))
        .start()
        .await
        .unwrap();
    let client = client(&bus).await;
    assert_eq!(client.send(Front { what: "ok".into() }).await.unwrap(), 1);
    let err = client.send(Front { what: "refuse".into() }).await.unwrap_err();
    assert_eq!(err.handler_error().map(|e| (e.code(), e.message())), Some(("refused", "not today")));
}

#[tokio::test]
async fn framework_errors_inside_a_handler_get_their_own_codes() {
    let bus = MemoryBus::new();
    // `front` without `do_it`: its downstream send finds no handler.
    let _app = Catga::builder()
        .memory_bus(bus.clone())
        .handlers_where(|h| h.subject.starts_with("t.prop."))
        .start()
        .await
        .unwrap();
    let err = client(&bus).await.send(Front { what: "ok".into() }).await.unwrap_err();
    assert_eq!(err.code(), Some("no_handler"), "{err}");
}

mod stale_reply {
    use catga::prelude::*;

    /// A client copy of `Do` that expects the wrong reply type.
    #[derive(Debug, Serialize, Deserialize, Command)]
    #[catga(subject = "t.err.do", reply = String)]
    pub struct DoWantsText {
        pub what: String,
    }
}

#[tokio::test]
async fn a_reply_that_does_not_decode_is_a_codec_error_not_the_handlers() {
    let (bus, _apps) = instances(1, "stale", "t.err.").await;
    let err = client(&bus).await.send(stale_reply::DoWantsText { what: "ok".into() }).await.unwrap_err();
    assert!(matches!(err, Error::Codec { action: "decode", subject: "t.err.do", .. }), "{err}");
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.dupq.cmd", reply = ())]
struct DupQueues;

#[catga::command(queue = "a")]
async fn dup_queue_a(_: DupQueues) -> Result<(), HandlerError> {
    Ok(())
}

#[catga::command(queue = "b")]
async fn dup_queue_b(_: DupQueues) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test]
async fn two_command_handlers_in_different_queue_groups_are_still_duplicates() {
    let err = Catga::builder()
        .memory_bus(MemoryBus::new())
        .handlers_where(|h| h.subject == "t.dupq.cmd")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateHandler { .. }), "{err}");
}

#[tokio::test]
async fn missing_state_is_an_error_naming_the_type() {
    let app = Catga::builder().memory_bus(MemoryBus::new()).client_only().with_state(5u8).start().await.unwrap();
    assert_eq!(*app.state::<u8>().unwrap(), 5);
    let err = app.state::<String>().unwrap_err();
    assert!(err.message().contains("alloc::string::String") && err.message().contains("with_state"), "{err}");
}

#[tokio::test]
async fn a_draining_instance_takes_no_new_handling_and_its_peer_does() {
    let (bus, apps) = instances(2, "drain", "t.rr.").await;
    let client = client(&bus).await;
    let stopping = apps[0].clone();
    let report = tokio::spawn(async move { stopping.shutdown().await });
    tokio::task::yield_now().await; // the shutdown has begun: drain-0 is draining
    for _ in 0..20 {
        assert_eq!(client.send(Who).await.unwrap(), "drain-1");
    }
    assert_eq!(report.await.unwrap().abandoned, 0);
}

// ---------- settings ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.settings.echo", reply = u32)]
struct SettingsEcho(u32);

#[catga::command(idempotent)]
async fn settings_echo(cmd: SettingsEcho) -> Result<u32, HandlerError> {
    Ok(cmd.0)
}

#[tokio::test]
async fn a_setting_is_refused_the_same_way_however_it_was_set() {
    let start = |b: catga::Builder| async move {
        b.memory_bus(MemoryBus::new()).handlers_where(|h| h.subject.starts_with("t.settings.")).start().await
    };
    // A zero limit through `configure`, a builder method or the environment:
    // one check, one message naming the setting and its variable.
    let through_configure = start(Catga::builder().configure(|c| c.max_in_flight = 0)).await.unwrap_err();
    let through_method = start(Catga::builder().max_in_flight(0)).await.unwrap_err();
    let through_env = catga::Config::from_lookup(|k| (k == "CATGA_MAX_IN_FLIGHT").then(|| "0".into())).unwrap_err();
    for err in [&through_configure, &through_method, &through_env] {
        let err = err.to_string();
        assert!(err.contains("max_in_flight is 0") && err.contains("CATGA_MAX_IN_FLIGHT"), "{err}");
    }
    let zero_ack_wait = start(Catga::builder().configure(|c| c.ack_wait = Duration::ZERO)).await.unwrap_err();
    assert!(zero_ack_wait.to_string().contains("ack_wait is zero"), "{zero_ack_wait}");
    // The NATS service API requires a semver version.
    for bad in ["1.2", "v1.0.0", "latest"] {
        let err = start(Catga::builder().version(bad)).await.unwrap_err().to_string();
        assert!(err.contains("is not semver") && err.contains(bad), "{err}");
    }
    let err = catga::Config::from_lookup(|k| (k == "CATGA_SERVICE_VERSION").then(|| "1.2".into())).unwrap_err();
    assert!(err.to_string().contains("CATGA_SERVICE_VERSION"), "{err}");
    let ok = start(Catga::builder().version("2.0.0-rc.1+build.5")).await.unwrap();
    ok.shutdown().await;
}

#[tokio::test]
async fn an_unbounded_handler_timeout_does_not_overflow() {
    let app = Catga::builder()
        .memory_bus(MemoryBus::new())
        .handler_timeout(Duration::MAX)
        .handlers_where(|h| h.subject.starts_with("t.settings."))
        .start()
        .await
        .unwrap();
    assert_eq!(app.send(SettingsEcho(7)).await.unwrap(), 7);
    assert_eq!(app.send_with(SettingsEcho(8), SendOptions::timeout(Duration::MAX)).await.unwrap(), 8);
    app.shutdown().await;
}
