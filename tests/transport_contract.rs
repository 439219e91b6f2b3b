//! The transport contract: what a command, an event, an error, a timeout, a
//! bad payload and a drain mean, checked the same way on every transport —
//! one set of contract functions, each run against the in-memory bus (its
//! own `MemoryBus` per test) and against a real `nats-server` (its own
//! server per test, started on a free port), the way `tests/store.rs` runs
//! one store contract on every store.
//!
//! Instances are in-process `App`s. Each case has its own subjects
//! (`contract.<case>.*`) and its instances subscribe only those handlers
//! (`handlers_where`). Handlings are counted through a per-test [`Probe`]
//! given to every instance with `with_state`. Every wait is bounded in count
//! and time; no duration is asserted.
//!
//! Where the transports differ by design the contract says so: memory picks
//! queue members round robin (exact shares), NATS at random (every member
//! gets some); memory stops routing to a draining instance at once, NATS
//! once the server has processed the drain's UNSUB.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::transport::memory::MemoryBus;
use catga::{Builder, Error};
use catga_suite::NatsServer;

// ---------- the fixture: one transport ----------

enum Net {
    Memory(MemoryBus),
    Nats(NatsServer),
}

/// One transport to run a contract case on.
struct Fixture {
    net: Net,
}

impl Fixture {
    fn memory() -> Fixture {
        Fixture { net: Net::Memory(MemoryBus::new()) }
    }

    fn nats() -> Fixture {
        Fixture { net: Net::Nats(NatsServer::start()) }
    }

    fn name(&self) -> &'static str {
        match self.net {
            Net::Memory(_) => "memory",
            Net::Nats(_) => "nats",
        }
    }

    fn is_memory(&self) -> bool {
        matches!(self.net, Net::Memory(_))
    }

    /// The server's URL, for plain (non-Catga) NATS clients.
    fn nats_url(&self) -> Option<String> {
        match &self.net {
            Net::Memory(_) => None,
            Net::Nats(server) => Some(server.url()),
        }
    }

    /// A builder on this transport. The long grace period keeps a held
    /// handling from being abandoned while a drain case inspects it.
    fn builder(&self) -> Builder {
        let builder = Catga::builder().grace_period(Duration::from_secs(60));
        match &self.net {
            Net::Memory(bus) => builder.memory_bus(bus.clone()),
            Net::Nats(server) => builder.nats_url(server.url()),
        }
    }

    /// `n` instances of `service` (ids `<service>-<i>`) serving the handlers
    /// whose subject starts with `prefix`, all sharing `probe`.
    async fn instances(&self, n: usize, service: &str, prefix: &'static str, probe: &Probe) -> Vec<App> {
        let mut apps = Vec::new();
        for i in 0..n {
            let app = self
                .builder()
                .service(service)
                .instance_id(format!("{service}-{i}"))
                .handlers_where(move |h| h.subject.starts_with(prefix))
                .with_state(probe.clone())
                .start()
                .await
                .unwrap_or_else(|e| panic!("[{}] start {service}-{i}: {e}", self.name()));
            assert!(!app.handlers().is_empty(), "[{}] no handler under {prefix}", self.name());
            apps.push(app);
        }
        apps
    }

    /// A client that only sends and publishes.
    async fn client(&self) -> App {
        self.client_from(self.builder()).await
    }

    async fn client_from(&self, builder: Builder) -> App {
        builder
            .service("contract-client")
            .client_only()
            .start()
            .await
            .unwrap_or_else(|e| panic!("[{}] start the client: {e}", self.name()))
    }
}

/// Shut every instance down gracefully; none may abandon a handling.
async fn stop_all(t: &Fixture, apps: &[App]) {
    for app in apps {
        let report = app.shutdown().await;
        assert_eq!(report.abandoned, 0, "[{}] {} abandoned handlings", t.name(), app.instance_id());
    }
}

// ---------- the probe: what the handlers saw ----------

/// Longest a held handler waits for the test to release it.
const HOLD_CAP: Duration = Duration::from_secs(60);
/// Longest a test waits for deliveries it expects.
const DELIVERY_WAIT: Duration = Duration::from_secs(15);

/// Shared by every instance of one test (through `with_state`): a log of
/// handlings (instance, case, n) and a gate that held handlers wait on.
#[derive(Clone)]
struct Probe(Arc<ProbeInner>);

struct ProbeInner {
    log: Mutex<Vec<(String, &'static str, u64)>>,
    gate: tokio::sync::Semaphore,
}

impl Default for Probe {
    fn default() -> Self {
        Probe(Arc::new(ProbeInner { log: Mutex::new(Vec::new()), gate: tokio::sync::Semaphore::new(0) }))
    }
}

impl Probe {
    fn record(&self, ctx: &Context, what: &'static str, n: u64) {
        self.0.log.lock().unwrap().push((ctx.instance_id().to_owned(), what, n));
    }

    /// Handlings of `what`.
    fn count(&self, what: &str) -> usize {
        self.0.log.lock().unwrap().iter().filter(|(_, w, _)| *w == what).count()
    }

    /// The instances that handled message `n` of `what`, in order.
    fn handlers_of(&self, what: &str, n: u64) -> Vec<String> {
        self.0.log.lock().unwrap().iter().filter(|(_, w, m)| *w == what && *m == n).map(|(i, ..)| i.clone()).collect()
    }

    /// Handlings of `what` per instance.
    fn by_instance(&self, what: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (instance, w, _) in self.0.log.lock().unwrap().iter() {
            if *w == what {
                *counts.entry(instance.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Wait (bounded) until `what` was handled at least `total` times.
    async fn wait_for(&self, what: &str, total: usize) -> bool {
        let deadline = Instant::now() + DELIVERY_WAIT;
        while self.count(what) < total {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Wait for the test to open the gate once (bounded by [`HOLD_CAP`]).
    async fn hold(&self) -> Result<(), HandlerError> {
        match tokio::time::timeout(HOLD_CAP, self.0.gate.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                Ok(())
            }
            _ => Err(HandlerError::new("gate_closed", "the test never released this handling")),
        }
    }

    /// Let `n` held handlings (present or future) go on.
    fn release(&self, n: usize) {
        self.0.gate.add_permits(n);
    }
}

// ---------- 1. exactly one handler per command per queue group ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "contract.once.work", reply = String)]
struct OnceWork {
    n: u64,
}

#[catga::command(queue = "contract-once")]
async fn once_work(cmd: OnceWork, ctx: Context) -> Result<String, HandlerError> {
    ctx.state::<Probe>()?.record(&ctx, "once", cmd.n);
    Ok(ctx.instance_id().to_owned())
}

async fn one_handler_per_command(t: &Fixture) {
    const K: u64 = 60;
    let probe = Probe::default();
    let apps = t.instances(3, "once", "contract.once.", &probe).await;
    let client = t.client().await;
    let replies = futures_util::future::join_all((0..K).map(|n| client.send(OnceWork { n }))).await;
    for (n, reply) in (0..K).zip(replies) {
        let by = reply.unwrap_or_else(|e| panic!("[{}] command {n}: {e}", t.name()));
        assert_eq!(
            probe.handlers_of("once", n),
            std::slice::from_ref(&by),
            "[{}] command {n}: handled once, by {by}",
            t.name()
        );
    }
    stop_all(t, &apps).await;
    assert_eq!(probe.count("once"), K as usize, "[{}] {:?}", t.name(), probe.by_instance("once"));
}

// ---------- 2. load spread over the members ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "contract.spread.work", reply = String)]
struct SpreadWork {
    n: u64,
}

#[catga::command(queue = "contract-spread")]
async fn spread_work(cmd: SpreadWork, ctx: Context) -> Result<String, HandlerError> {
    ctx.state::<Probe>()?.record(&ctx, "spread", cmd.n);
    Ok(ctx.instance_id().to_owned())
}

async fn load_spreads_over_the_members(t: &Fixture) {
    const MEMBERS: usize = 3;
    const K: u64 = 60;
    let probe = Probe::default();
    let apps = t.instances(MEMBERS, "spread", "contract.spread.", &probe).await;
    let client = t.client().await;
    let mut replied: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..K {
        let by = client.send(SpreadWork { n }).await.unwrap_or_else(|e| panic!("[{}] command {n}: {e}", t.name()));
        *replied.entry(by).or_default() += 1;
    }
    stop_all(t, &apps).await;
    let handled = probe.by_instance("spread");
    assert_eq!(handled, replied, "[{}] the replies name the instances that handled", t.name());
    assert_eq!(handled.values().sum::<usize>(), K as usize, "[{}] {handled:?}", t.name());
    assert_eq!(handled.len(), MEMBERS, "[{}] every member got a share: {handled:?}", t.name());
    if t.is_memory() {
        // Round robin: equal shares, ±1.
        let share = K as usize / MEMBERS;
        assert!(handled.values().all(|&c| c.abs_diff(share) <= 1), "[memory] round robin: {handled:?}");
    }
    // Over NATS the server picks a member at random: a share > 0 each is
    // all that is promised (checked above).
}

// ---------- 3. broadcast event fan-out ----------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "contract.fanout.happened")]
struct FanoutHappened {
    n: u64,
}

#[catga::event]
async fn fanout_seen(ev: FanoutHappened, ctx: Context) -> Result<(), HandlerError> {
    ctx.state::<Probe>()?.record(&ctx, "fanout", ev.n);
    Ok(())
}

async fn broadcast_reaches_every_instance(t: &Fixture) {
    const INSTANCES: usize = 3;
    const EVENTS: u64 = 20;
    let probe = Probe::default();
    let apps = t.instances(INSTANCES, "fanout", "contract.fanout.", &probe).await;
    let client = t.client().await;
    for n in 0..EVENTS {
        client.publish(FanoutHappened { n }).await.unwrap_or_else(|e| panic!("[{}] publish {n}: {e}", t.name()));
    }
    let arrived = probe.wait_for("fanout", INSTANCES * EVENTS as usize).await;
    stop_all(t, &apps).await;
    assert!(arrived, "[{}] only {} deliveries: {:?}", t.name(), probe.count("fanout"), probe.by_instance("fanout"));
    for n in 0..EVENTS {
        let mut seen = probe.handlers_of("fanout", n);
        seen.sort();
        let every: Vec<String> = apps.iter().map(|a| a.instance_id().to_owned()).collect();
        assert_eq!(seen, every, "[{}] event {n}: every instance once", t.name());
    }
}

// ---------- 4. one member per event queue group ----------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "contract.evq.happened")]
struct QueuedHappened {
    n: u64,
}

#[catga::event(queue = "contract-evq-mailer")]
async fn evq_mailer(ev: QueuedHappened, ctx: Context) -> Result<(), HandlerError> {
    ctx.state::<Probe>()?.record(&ctx, "evq-mailer", ev.n);
    Ok(())
}

#[catga::event(queue = "contract-evq-billing")]
async fn evq_billing(ev: QueuedHappened, ctx: Context) -> Result<(), HandlerError> {
    ctx.state::<Probe>()?.record(&ctx, "evq-billing", ev.n);
    Ok(())
}

async fn one_member_per_event_queue_group(t: &Fixture) {
    const INSTANCES: usize = 3;
    const EVENTS: u64 = 30;
    let probe = Probe::default();
    let apps = t.instances(INSTANCES, "evq", "contract.evq.", &probe).await;
    let client = t.client().await;
    for n in 0..EVENTS {
        client.publish(QueuedHappened { n }).await.unwrap_or_else(|e| panic!("[{}] publish {n}: {e}", t.name()));
    }
    let mailed = probe.wait_for("evq-mailer", EVENTS as usize).await;
    let billed = probe.wait_for("evq-billing", EVENTS as usize).await;
    stop_all(t, &apps).await;
    for (group, arrived) in [("evq-mailer", mailed), ("evq-billing", billed)] {
        assert!(arrived, "[{}] {group}: only {} of {EVENTS}", t.name(), probe.count(group));
        for n in 0..EVENTS {
            let seen = probe.handlers_of(group, n);
            assert_eq!(seen.len(), 1, "[{}] event {n}: once in group {group}, saw {seen:?}", t.name());
        }
        assert_eq!(probe.count(group), EVENTS as usize, "[{}] {group}", t.name());
        if t.is_memory() {
            let shares = probe.by_instance(group);
            let share = EVENTS as usize / INSTANCES;
            assert!(
                shares.len() == INSTANCES && shares.values().all(|&c| c.abs_diff(share) <= 1),
                "[memory] {group} round robin: {shares:?}"
            );
        }
    }
}

// ---------- 5. no handler ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "contract.none.nobody", reply = ())]
struct Nobody;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "contract.none.unheard")]
struct Unheard;

async fn no_handler_is_an_error(t: &Fixture) {
    // Another case's instance runs: serving something else is not serving this.
    let probe = Probe::default();
    let _other = t.instances(1, "none", "contract.once.", &probe).await;
    let client = t.client().await;
    let err = client.send(Nobody).await.unwrap_err();
    assert!(matches!(err, Error::NoHandler { subject: "contract.none.nobody" }), "[{}] {err}", t.name());
    assert!(err.to_string().contains("contract.none.nobody"), "[{}] {err}", t.name());
    assert_eq!(err.code(), None, "[{}] not a handler's error", t.name());
    // An event nobody subscribes to is not an error.
    client.publish(Unheard).await.unwrap_or_else(|e| panic!("[{}] publish: {e}", t.name()));
}

// ---------- 6. typed errors ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "contract.err.refuse", reply = u32)]
struct Refuse {
    code: String,
    message: String,
}

#[catga::command(queue = "contract-err")]
async fn refuse(cmd: Refuse, ctx: Context) -> Result<u32, HandlerError> {
    ctx.state::<Probe>()?.record(&ctx, "refuse", 0);
    match cmd.code.as_str() {
        "" => Ok(7),
        "panic" => panic!("{}", cmd.message),
        _ => Err(HandlerError::new(cmd.code, cmd.message)),
    }
}

async fn handler_errors_reach_the_caller_typed(t: &Fixture) {
    let probe = Probe::default();
    let apps = t.instances(2, "err", "contract.err.", &probe).await;
    let client = t.client().await;
    let refuse = |code: &str, message: &str| Refuse { code: code.into(), message: message.into() };

    assert_eq!(client.send(refuse("", "")).await.unwrap(), 7, "[{}] success", t.name());
    for (code, message) in [
        ("out_of_stock", "only 3 left"),
        ("not_found", "no order \"42\": ünïcödé, tabs\tand {braces}"),
        ("empty_message", ""),
    ] {
        let err = client.send(refuse(code, message)).await.unwrap_err();
        match &err {
            Error::Handler { subject, error } => {
                assert_eq!(*subject, "contract.err.refuse", "[{}]", t.name());
                assert_eq!((error.code(), error.message()), (code, message), "[{}]", t.name());
            }
            other => panic!("[{}] expected Error::Handler for {code}, got {other:?}", t.name()),
        }
        assert_eq!(err.code(), Some(code), "[{}]", t.name());
    }

    // A panic is an error reply too, with Catga's code.
    let err = client.send(refuse("panic", "boom in the contract")).await.unwrap_err();
    assert_eq!(err.code(), Some(HandlerError::PANIC), "[{}] {err}", t.name());
    assert!(err.to_string().contains("boom in the contract"), "[{}] {err}", t.name());
    assert_eq!(client.send(refuse("", "")).await.unwrap(), 7, "[{}] still serving after a panic", t.name());
    stop_all(t, &apps).await;
    assert_eq!(probe.count("refuse"), 6, "[{}] one handling per send", t.name());
}

// ---------- 7. caller timeouts ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "contract.slow.nap", reply = u64)]
struct Nap {
    n: u64,
}

/// Held until the test releases it: slower than any caller timeout here.
#[catga::command(queue = "contract-slow")]
async fn nap(cmd: Nap, ctx: Context) -> Result<u64, HandlerError> {
    let probe = ctx.state::<Probe>()?;
    probe.record(&ctx, "nap", cmd.n);
    probe.hold().await?;
    Ok(cmd.n)
}

async fn a_slow_handler_times_the_caller_out(t: &Fixture) {
    let probe = Probe::default();
    let apps = t.instances(1, "slow", "contract.slow.", &probe).await;
    // One attempt per send (over NATS the default retries each timeout).
    let client = t.client_from(t.builder().send_retries(0)).await;

    let err = client.send_with(Nap { n: 1 }, SendOptions::timeout(Duration::from_millis(200))).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { subject: "contract.slow.nap", .. }), "[{}] {err}", t.name());
    assert_eq!(err.code(), None, "[{}] the caller's timeout, not the handler's error", t.name());
    assert!(probe.wait_for("nap", 1).await, "[{}] the timed-out command reached the handler", t.name());
    probe.release(1); // lets the timed-out handling end (over NATS it still runs)

    // The instance still serves.
    probe.release(1);
    assert_eq!(
        client.send_with(Nap { n: 2 }, SendOptions::timeout(Duration::from_secs(10))).await.unwrap(),
        2,
        "[{}] served after a timeout",
        t.name()
    );
    stop_all(t, &apps).await;
    assert_eq!(probe.handlers_of("nap", 1).len(), 1, "[{}] one attempt, one handling", t.name());
    assert_eq!(client.retries(), 0, "[{}]", t.name());
}

// ---------- 8. bad payloads ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "contract.bad.echo", reply = String)]
struct Echo {
    text: String,
}

#[catga::command(queue = "contract-bad")]
async fn echo(cmd: Echo, ctx: Context) -> Result<String, HandlerError> {
    ctx.state::<Probe>()?.record(&ctx, "echo", 0);
    Ok(cmd.text)
}

mod stale {
    use catga::prelude::*;

    /// A stale copy of `Echo`'s contract: same subject, `text` of another type.
    #[derive(Debug, Serialize, Deserialize, Command)]
    #[catga(subject = "contract.bad.echo", reply = String)]
    pub struct EchoNumber {
        pub text: u64,
    }

    /// A copy whose field was renamed.
    #[derive(Debug, Serialize, Deserialize, Command)]
    #[catga(subject = "contract.bad.echo", reply = String)]
    pub struct EchoWords {
        pub words: String,
    }
}

async fn a_bad_payload_gets_an_invalid_reply_and_the_instance_keeps_serving(t: &Fixture) {
    let probe = Probe::default();
    let apps = t.instances(1, "bad", "contract.bad.", &probe).await;
    let client = t.client().await;
    assert_eq!(client.send(Echo { text: "hi".into() }).await.unwrap(), "hi", "[{}]", t.name());

    // Copies of the contract that no longer match: they cross the codec (in
    // memory too, as another Rust type) and fail to decode on the instance.
    let errs = [
        client.send(stale::EchoNumber { text: 5 }).await.unwrap_err(),
        client.send(stale::EchoWords { words: "hi".into() }).await.unwrap_err(),
    ];
    for err in &errs {
        assert!(matches!(err, Error::Handler { subject: "contract.bad.echo", .. }), "[{}] {err}", t.name());
        assert_eq!(err.code(), Some(HandlerError::INVALID), "[{}] {err}", t.name());
        let text = err.to_string();
        assert!(text.contains("malformed payload for \"contract.bad.echo\""), "[{}] {text}", t.name());
    }
    assert!(errs[1].to_string().contains("missing field `text`"), "[{}] {}", t.name(), errs[1]);

    // Over NATS, bytes that are not JSON at all, from a plain client.
    let mut raw_bad = 0;
    if let Some(url) = t.nats_url() {
        let raw = async_nats::connect(url).await.unwrap();
        let header =
            |m: &async_nats::Message, h: &str| m.headers.as_ref().and_then(|x| x.get(h)).map(|v| v.as_str().to_owned());
        for body in [&b"{oops"[..], &b"\xff\xfe"[..], &b""[..]] {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                raw.request("contract.bad.echo", bytes::Bytes::copy_from_slice(body)),
            )
            .await
            .expect("a reply within 10 s")
            .unwrap();
            assert_eq!(header(&reply, "Catga-Status").as_deref(), Some("error"), "[nats] {body:?}");
            assert_eq!(header(&reply, "Catga-Error-Code").as_deref(), Some("invalid"), "[nats] {body:?}");
            let text = String::from_utf8_lossy(&reply.payload);
            assert!(text.contains("malformed payload for \"contract.bad.echo\""), "[nats] {text}");
            raw_bad += 1;
        }
    }

    assert_eq!(
        client.send(Echo { text: "still here".into() }).await.unwrap(),
        "still here",
        "[{}] the instance keeps serving",
        t.name()
    );
    stop_all(t, &apps).await;
    assert_eq!(probe.count("echo"), 2, "[{}] the handler never ran on a bad payload ({raw_bad} raw)", t.name());
    assert_eq!(apps[0].in_flight(), 0, "[{}] nothing left counted in flight", t.name());
}

// ---------- 9. drain ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "contract.drain.work", reply = String)]
struct DrainWork {
    n: u64,
    /// The instance on which this handling waits for the gate.
    hold_on: Option<String>,
}

#[catga::command(queue = "contract-drain")]
async fn drain_work(cmd: DrainWork, ctx: Context) -> Result<String, HandlerError> {
    let probe = ctx.state::<Probe>()?;
    probe.record(&ctx, "drain", cmd.n);
    if cmd.hold_on.as_deref() == Some(ctx.instance_id()) {
        probe.hold().await?;
    }
    Ok(ctx.instance_id().to_owned())
}

async fn a_draining_instance_finishes_in_flight_work_and_its_peer_takes_new_work(t: &Fixture) {
    let probe = Probe::default();
    let apps = t.instances(2, "drain", "contract.drain.", &probe).await;
    let (stopping, peer) = (apps[0].instance_id().to_owned(), apps[1].instance_id().to_owned());
    // A short attempt timeout: a send lost in the drain (below) is retried soon.
    let client = t.client_from(t.builder().request_timeout(Duration::from_secs(1))).await;
    let work = |n: u64, hold: bool| DrainWork { n, hold_on: hold.then(|| stopping.clone()) };

    // A handling in flight on the instance about to stop: send until one
    // lands there (round robin in memory, random over NATS; bounded).
    let mut held = None;
    for n in 0..40 {
        let send = tokio::spawn({
            let (client, cmd) = (client.clone(), work(n, true));
            async move { client.send_with(cmd, SendOptions::timeout(HOLD_CAP)).await }
        });
        let deadline = Instant::now() + DELIVERY_WAIT;
        let landed_on_stopping = loop {
            if probe.handlers_of("drain", n).contains(&stopping) {
                break true;
            }
            if send.is_finished() {
                break false;
            }
            assert!(Instant::now() < deadline, "[{}] command {n} was never handled", t.name());
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        if landed_on_stopping {
            held = Some(send);
            break;
        }
        assert_eq!(send.await.unwrap().unwrap(), peer, "[{}] command {n}", t.name());
    }
    let held = held.unwrap_or_else(|| panic!("[{}] no command reached {stopping} in 40 sends", t.name()));
    assert!(apps[0].in_flight() > 0, "[{}] the held handling is counted", t.name());

    // Begin the shutdown (its first poll marks the instance draining), then
    // let it run on its own task.
    let mut shutdown = Box::pin({
        let app = apps[0].clone();
        async move { app.shutdown().await }
    });
    assert!(
        futures_util::FutureExt::now_or_never(&mut shutdown).is_none(),
        "[{}] shutdown waits for the held handling",
        t.name()
    );
    let shutdown = tokio::spawn(shutdown);

    // New sends go to the peer: at once in memory; over NATS once the
    // server has processed the drain (a send delivered to the draining
    // instance before that is still handled there). None fails. Bounded.
    const STREAK: usize = 10;
    let (mut streak, mut during, mut to_stopping) = (0, 0u64, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while streak < STREAK {
        assert!(during < 200 && Instant::now() < deadline, "[{}] the drain never diverted new sends", t.name());
        let by = client
            .send(work(1000 + during, false))
            .await
            .unwrap_or_else(|e| panic!("[{}] send {during} during the drain: {e}", t.name()));
        during += 1;
        if by == peer {
            streak += 1;
        } else {
            assert!(!t.is_memory(), "[memory] send {during} during the drain went to {by}");
            to_stopping += 1;
            streak = 0;
        }
    }
    assert!(!shutdown.is_finished(), "[{}] the drain waits for the held handling", t.name());

    // The held handling finishes while its instance drains; its reply arrives.
    probe.release(1);
    let reply = tokio::time::timeout(DELIVERY_WAIT, held).await.expect("the held reply within 15 s").unwrap();
    assert_eq!(reply.unwrap_or_else(|e| panic!("[{}] the in-flight send: {e}", t.name())), stopping);
    let report = tokio::time::timeout(DELIVERY_WAIT, shutdown).await.expect("shutdown within 15 s").unwrap();
    assert_eq!(report.abandoned, 0, "[{}]", t.name());

    // After the drain: every send goes to the peer; the stopped one refuses to send.
    for n in 0..10 {
        assert_eq!(client.send(work(2000 + n, false)).await.unwrap(), peer, "[{}] after the drain", t.name());
    }
    assert!(matches!(apps[0].send(work(3000, false)).await, Err(Error::Shutdown { .. })), "[{}]", t.name());
    // Over NATS a send in transit when async-nats drops the draining
    // subscription is lost by that client and retried (same message id) after
    // the request timeout; see `tests/nats.rs`. Reported, not asserted.
    println!(
        "[{}] drain: {during} sends during it, {to_stopping} still reached the draining instance, {} retried",
        t.name(),
        client.retries()
    );
    stop_all(t, &apps[1..]).await;
}

// ---------- one test per (case, transport) ----------

macro_rules! transport_contract {
    ($($case:ident),+ $(,)?) => {
        /// The contract on the in-memory bus (a fresh `MemoryBus` per test).
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Fixture::memory()).await;
                }
            )+
        }

        /// The contract over a real `nats-server` (one per test).
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&super::Fixture::nats()).await;
                }
            )+
        }
    };
}

transport_contract!(
    one_handler_per_command,
    load_spreads_over_the_members,
    broadcast_reaches_every_instance,
    one_member_per_event_queue_group,
    no_handler_is_an_error,
    handler_errors_reach_the_caller_typed,
    a_slow_handler_times_the_caller_out,
    a_bad_payload_gets_an_invalid_reply_and_the_instance_keeps_serving,
    a_draining_instance_finishes_in_flight_work_and_its_peer_takes_new_work,
);
