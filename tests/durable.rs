//! Durable delivery over NATS JetStream against a real `nats-server -js`
//! (started here on a free 127.0.0.1 port, storing in a temp dir) and real
//! service processes (`catga-test-service` with `CATGA_TEST_DURABLE`), so
//! kills are real. Handlers record their effects in a ledger file; every
//! wait is bounded in count and time. Timings are printed, not asserted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::{Error, Metadata, SendOptions};
use catga_suite::{NatsServer, ServiceProcess};

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-test-service");

// The service's durable contracts, as a client service would copy them.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.work", reply = (String, u64), durable)]
struct DurableWork {
    n: u64,
    sleep_ms: u64,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.charge", reply = (String, u64), durable)]
struct DurableCharge {
    n: u64,
    sleep_ms: u64,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.flaky", reply = String, durable)]
struct Flaky {
    ok: bool,
    code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "dur.noted", durable)]
struct Noted {
    n: u64,
}

/// A ledger file in a fresh temp dir (removed on drop).
struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger { dir: catga_suite::temp_dir("catga-ledger") }
    }

    fn path(&self) -> String {
        self.dir.join("ledger").to_string_lossy().into_owned()
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.path()).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Wait (up to `within`) until the ledger has at least `n` lines.
    fn wait_for_lines(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.lines();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn service(nats: &str, id: &str, ledger: &Ledger, extra: &[(&str, &str)]) -> ServiceProcess {
    let ledger = ledger.path();
    let mut env = vec![
        ("CATGA_NATS_URL", nats),
        ("CATGA_SERVICE", "dur"),
        ("CATGA_INSTANCE_ID", id),
        ("CATGA_TEST_DURABLE", "1"),
        ("CATGA_TEST_LEDGER", ledger.as_str()),
    ];
    env.extend_from_slice(extra);
    ServiceProcess::started(SERVICE, &env)
}

async fn client(nats: &str, timeout: Duration) -> App {
    Catga::builder().nats_url(nats).service("tester").request_timeout(timeout).client_only().start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_command_between_processes_returns_typed_replies_and_errors() {
    let nats = NatsServer::start_jetstream();
    let ledger = Ledger::new();
    let _svc = service(&nats.url(), "d-1", &ledger, &[("CATGA_MAX_DELIVER", "2"), ("CATGA_ACK_WAIT_MS", "1000")]);
    let client = client(&nats.url(), Duration::from_secs(10)).await;

    assert_eq!(client.send(DurableWork { n: 7, sleep_ms: 0 }).await.unwrap(), ("d-1".to_owned(), 7));
    assert_eq!(client.send(Flaky { ok: true, code: String::new() }).await.unwrap(), "fine");

    let started = Instant::now();
    let err = client.send(Flaky { ok: false, code: "out_of_stock".into() }).await.unwrap_err();
    let handler = err.handler_error().unwrap_or_else(|| panic!("a handler error, got {err}"));
    assert_eq!((handler.code(), handler.message()), ("out_of_stock", "failed on purpose"));
    println!("durable error reply after 2 deliveries: {:?}", started.elapsed());

    // The effect of the first command was recorded once, under its id.
    assert_eq!(ledger.lines().len(), 1, "{:?}", ledger.lines());

    // The same message id sent again (a caller's retry, a saga step re-run)
    // is stored and answered again — not swallowed by JetStream's duplicate
    // window while the caller waits on a new reply token.
    let meta = catga::Metadata::root();
    for _ in 0..2 {
        let reply =
            client.send_as(DurableWork { n: 8, sleep_ms: 0 }, meta.clone(), SendOptions::default()).await.unwrap();
        assert_eq!(reply, ("d-1".to_owned(), 8));
    }
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_handling_redelivers_to_another_instance_and_each_effect_is_recorded_once() {
    let nats = NatsServer::start_jetstream();
    let ledger = Ledger::new();
    // Four handlings per instance, so the batch spreads over all three; a
    // short ack_wait so the killed instance's messages come back soon.
    let settings = [("CATGA_MAX_IN_FLIGHT", "4"), ("CATGA_ACK_WAIT_MS", "2000")];
    let mut svcs: Vec<_> =
        ["k-1", "k-2", "k-3"].iter().map(|id| service(&nats.url(), id, &ledger, &settings)).collect();
    // The request timeout must exceed ack_wait to outlive a crashed handler.
    let client = client(&nats.url(), Duration::from_secs(30)).await;

    let started = Instant::now();
    let mut sends = Vec::new();
    let mut ids = Vec::new();
    for n in 0..20u64 {
        let meta = Metadata::root();
        ids.push(meta.message_id.to_string());
        let client = client.clone();
        let meta = meta.clone();
        sends.push(tokio::spawn(async move {
            let options = SendOptions::timeout(Duration::from_secs(30));
            client.send_as(DurableWork { n, sleep_ms: 1500 }, meta, options).await
        }));
    }
    // Mid-handling: every instance is asleep in four handlers.
    tokio::time::sleep(Duration::from_millis(700)).await;
    svcs[0].kill();
    let killed = started.elapsed();

    let mut by_instance: HashMap<String, usize> = HashMap::new();
    for send in sends {
        let reply = tokio::time::timeout(Duration::from_secs(40), send).await.expect("bounded").unwrap();
        let (instance, _) = reply.unwrap_or_else(|e| panic!("a durable command was lost: {e}"));
        *by_instance.entry(instance).or_default() += 1;
    }
    println!("kill -9 of k-1 at {killed:?}: replies by instance {by_instance:?}, all in {:?}", started.elapsed());
    assert_eq!(by_instance.values().sum::<usize>(), 20);
    assert!(!by_instance.contains_key("k-1"), "k-1 died before any handler finished: {by_instance:?}");

    let lines = ledger.wait_for_lines(20, Duration::from_secs(5));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for line in &lines {
        *counts.entry(line.as_str()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(counts.get(id.as_str()), Some(&1), "message {id} recorded {:?} times", counts.get(id.as_str()));
    }
    assert_eq!(lines.len(), 20, "{lines:?}");
    drop(svcs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_handling_finishes_and_acknowledges_what_it_started() {
    let nats = NatsServer::start_jetstream();
    let ledger = Ledger::new();
    // ack_wait far above the test's length: a message this instance pulled
    // but dropped would only come back after it, and fail the test.
    let settings = [("CATGA_MAX_IN_FLIGHT", "4"), ("CATGA_ACK_WAIT_MS", "60000")];
    let mut svcs: Vec<_> = ["t-1", "t-2"].iter().map(|id| service(&nats.url(), id, &ledger, &settings)).collect();
    let client = client(&nats.url(), Duration::from_secs(30)).await;

    let started = Instant::now();
    let sends: Vec<_> = (0..16u64)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.send(DurableWork { n, sleep_ms: 1000 }).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    svcs[0].signal("TERM");

    let mut by_instance: HashMap<String, usize> = HashMap::new();
    for send in sends {
        let reply = tokio::time::timeout(Duration::from_secs(40), send).await.expect("bounded").unwrap();
        *by_instance.entry(reply.unwrap().0).or_default() += 1;
    }
    println!("SIGTERM of t-1 mid-batch: replies by instance {by_instance:?}, all in {:?}", started.elapsed());
    assert!(by_instance.get("t-1").copied().unwrap_or(0) > 0, "t-1 finished what it had started: {by_instance:?}");
    assert_eq!(svcs[0].exit_code(), Some(0));
    let lines = ledger.wait_for_lines(16, Duration::from_secs(5));
    let distinct: std::collections::HashSet<_> = lines.iter().collect();
    assert_eq!((lines.len(), distinct.len()), (16, 16), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_after_max_deliver_and_replay_works() {
    let nats = NatsServer::start_jetstream();
    let ledger = Ledger::new();
    let _svc = service(&nats.url(), "p-1", &ledger, &[("CATGA_MAX_DELIVER", "3"), ("CATGA_ACK_WAIT_MS", "1000")]);
    let client = client(&nats.url(), Duration::from_secs(10)).await;

    let meta = Metadata::root();
    let poison = {
        let client = client.clone();
        let meta = meta.clone();
        tokio::spawn(async move {
            let options = SendOptions::default();
            client.send_as(Flaky { ok: false, code: "poison".into() }, meta, options).await
        })
    };
    // Others keep being served meanwhile.
    for _ in 0..10 {
        assert_eq!(client.send(Flaky { ok: true, code: String::new() }).await.unwrap(), "fine");
    }
    let err = tokio::time::timeout(Duration::from_secs(15), poison).await.expect("bounded").unwrap().unwrap_err();
    assert_eq!(err.code(), Some("poison"), "{err}");

    let letters = client.dead_letters("dur.flaky").await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.subject, "dur.flaky");
    assert_eq!(letter.message_id, Some(meta.message_id));
    assert_eq!((letter.code.as_str(), letter.reason.as_str()), ("poison", "failed on purpose"));
    assert_eq!(letter.deliveries, 3);
    assert!(letter.handler.ends_with("::flaky"), "{}", letter.handler);
    let payload: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(payload["code"], "poison");
    assert!(client.dead_letters("dur.work").await.unwrap().is_empty());

    // The cause is fixed; replay: handled under its original message id,
    // and gone from the dead-letter stream.
    std::fs::write(format!("{}.heal", ledger.path()), b"").unwrap();
    client.replay_dead_letter(letter.sequence).await.unwrap();
    let lines = ledger.wait_for_lines(1, Duration::from_secs(10));
    assert_eq!(lines, [format!("healed {}", meta.message_id)]);
    assert!(client.dead_letters("dur.flaky").await.unwrap().is_empty());
    let again = client.replay_dead_letter(letter.sequence).await.unwrap_err();
    assert!(again.to_string().contains(&format!("replaying dead letter {}", letter.sequence)), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_event_published_while_no_subscriber_runs_reaches_each_queue_group_once() {
    let nats = NatsServer::start_jetstream();
    let ledger = Ledger::new();
    // A first instance creates the stream and the groups' consumers, and stops.
    let mut first = service(&nats.url(), "e-1", &ledger, &[]);
    first.signal("TERM");
    assert_eq!(first.exit_code(), Some(0));

    let client = client(&nats.url(), Duration::from_secs(5)).await;
    for n in 0..5 {
        client.publish(Noted { n }).await.unwrap(); // stored: nobody runs
    }
    assert!(ledger.lines().is_empty());

    let started = Instant::now();
    let _svcs: Vec<_> = ["e-2", "e-3"].iter().map(|id| service(&nats.url(), id, &ledger, &[])).collect();
    let lines = ledger.wait_for_lines(10, Duration::from_secs(20));
    println!("5 stored events x 2 groups delivered {:?} after the instances started", started.elapsed());
    // Nothing more arrives (no second delivery to the other instance).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = if ledger.lines().len() > lines.len() { ledger.lines() } else { lines };
    let mut per: HashMap<(String, String), usize> = HashMap::new();
    for line in &lines {
        let mut parts = line.split(' ');
        let (group, n) = (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned());
        *per.entry((group, n)).or_default() += 1;
    }
    for group in ["dur-audit", "dur-billing"] {
        for n in 0..5 {
            assert_eq!(per.get(&(group.to_owned(), n.to_string())), Some(&1), "{group} {n}: {lines:?}");
        }
    }
    assert_eq!(lines.len(), 10, "{lines:?}");
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.nobody", reply = (), durable)]
struct Nobody;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "dur.nobody.happened", durable)]
struct NobodyHappened;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_message_without_a_stream_is_no_handler_promptly() {
    let nats = NatsServer::start_jetstream();
    let client = client(&nats.url(), Duration::from_secs(30)).await;
    let started = Instant::now();
    let sent = client.send(Nobody).await;
    assert!(matches!(sent, Err(Error::NoHandler { subject: "dur.nobody" })), "{sent:?}");
    let published = client.publish(NobodyHappened).await;
    assert!(matches!(published, Err(Error::NoHandler { subject: "dur.nobody.happened" })), "{published:?}");
    println!("NoHandler for a durable send and publish without a stream: {:?} for both", started.elapsed());
    assert_eq!(client.retries(), 0, "no stream is not retried");
}

#[catga::command(queue = "local")]
async fn nobody(_: Nobody) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_handler_on_a_server_without_jetstream_is_a_clear_startup_error() {
    let nats = NatsServer::start(); // no -js
    let started = Catga::builder()
        .nats_url(nats.url())
        .service("local")
        .handlers_where(|h| h.subject == "dur.nobody")
        .start()
        .await;
    let err = started.expect_err("JetStream is off");
    let text = err.to_string();
    assert!(text.contains("CATGA_dur_nobody") && text.contains("nats-server -js"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_delivery_in_memory_is_the_same_as_without() {
    // In memory, `durable` changes nothing: same reply, no dead letters.
    let bus = catga::transport::memory::MemoryBus::new();
    let app = Catga::builder()
        .memory_bus(bus)
        .service("local")
        .handlers_where(|h| h.subject == "dur.nobody")
        .start()
        .await
        .unwrap();
    app.send(Nobody).await.unwrap();
    assert!(matches!(app.dead_letters("dur.nobody").await, Err(Error::Config(_))));
    app.shutdown().await;
}

// ---------- a broadcast durable event handler: every instance, once ----------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "dur.bcast", durable)]
struct Broadcasted {
    n: u64,
}

static BROADCASTS: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

#[catga::event]
async fn on_broadcast(ev: Broadcasted, ctx: Context) -> Result<(), HandlerError> {
    BROADCASTS.lock().unwrap().push((ctx.instance_id().to_owned(), ev.n));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_durable_event_reaches_every_running_instance_once() {
    let nats = NatsServer::start_jetstream();
    let mut apps = Vec::new();
    for id in ["b-1", "b-2"] {
        let app = Catga::builder()
            .nats_url(nats.url())
            .service("bcast")
            .instance_id(id)
            .handlers_where(|h| h.subject == "dur.bcast")
            .start()
            .await
            .unwrap();
        apps.push(app);
    }
    for n in 0..5 {
        apps[0].publish(Broadcasted { n }).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while BROADCASTS.lock().unwrap().len() < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more arrives
    let mut seen = BROADCASTS.lock().unwrap().clone();
    seen.sort();
    let expected: Vec<_> = ["b-1", "b-2"].iter().flat_map(|id| (0..5).map(move |n| (id.to_string(), n))).collect();
    assert_eq!(seen, expected);
    for app in apps {
        app.shutdown().await;
    }
}

// ---------- a durable event whose handler fails, and a malformed one ----------

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "dur.failing", durable)]
struct Failing {
    n: u64,
}

static FAILING_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[catga::event(queue = "failing")]
async fn on_failing(_: Failing) -> Result<(), HandlerError> {
    FAILING_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Err(HandlerError::new("ledger_down", "cannot record\nthe event"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_durable_event_and_a_malformed_one_are_dead_lettered() {
    let nats = NatsServer::start_jetstream();
    let app = Catga::builder()
        .nats_url(nats.url())
        .service("failing")
        .max_deliver(2)
        .ack_wait(Duration::from_secs(1))
        .handlers_where(|h| h.subject == "dur.failing")
        .start()
        .await
        .unwrap();
    app.publish(Failing { n: 1 }).await.unwrap();
    // A plain NATS client publishes garbage into the stream: no retry helps.
    let raw = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    raw.publish("dur.failing", "{oops".into()).await.unwrap().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let letters = loop {
        let letters = app.dead_letters("dur.failing").await.unwrap();
        if letters.len() >= 2 || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 2, "{letters:?}");
    let failed = letters.iter().find(|l| l.code == "ledger_down").expect("the handler's failure");
    assert_eq!((failed.reason.as_str(), failed.deliveries), ("cannot record the event", 2));
    assert!(failed.handler.ends_with("::on_failing"), "{}", failed.handler);
    let malformed = letters.iter().find(|l| l.code == "invalid").expect("the malformed event");
    assert_eq!((malformed.deliveries, malformed.payload.as_slice()), (1, &b"{oops"[..]));
    assert!(malformed.reason.contains("malformed payload for \"dur.failing\""), "{}", malformed.reason);
    assert_eq!(FAILING_CALLS.load(std::sync::atomic::Ordering::SeqCst), 2, "the malformed one never reached it");
    app.shutdown().await;
}

// ---------- a publish whose acknowledgement is late is retried and stored once ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_publish_retried_after_a_lost_ack_is_stored_once() {
    let nats = NatsServer::start_jetstream();
    let ledger = Ledger::new();
    // An instance creates the stream and its groups' consumers, then stops:
    // what is published now stays in the stream, countable.
    let mut first = service(&nats.url(), "r-1", &ledger, &[]);
    first.signal("TERM");
    assert_eq!(first.exit_code(), Some(0));
    let client = Catga::builder()
        .nats_url(nats.url())
        .service("tester")
        .request_timeout(Duration::from_millis(300))
        .send_retries(8)
        .client_only()
        .start()
        .await
        .unwrap();

    // The server freezes: the first attempt's acknowledgement times out.
    catga_suite::signal(nats.pid(), "STOP");
    let publish = {
        let client = client.clone();
        tokio::spawn(async move { client.publish(Noted { n: 42 }).await })
    };
    // The server stays stopped until the first attempt's acknowledgement
    // timed out and the client tried again (however slowly this machine
    // runs the publish), then resumes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.retries() == 0 {
        assert!(std::time::Instant::now() < deadline, "the frozen server never made an attempt time out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    catga_suite::signal(nats.pid(), "CONT");
    let published = tokio::time::timeout(Duration::from_secs(20), publish).await.expect("bounded").unwrap();
    published.unwrap();
    println!("publish retried {} times while the server was stopped", client.retries());

    let raw = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = raw.get_stream("CATGA_dur_noted").await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(stored, 1, "every attempt carried the same Nats-Msg-Id: stored once");
}

// ---------- dead letters come in pages ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_page_by_page() {
    let nats = NatsServer::start_jetstream();
    let app = Catga::builder()
        .nats_url(nats.url())
        .service("failing")
        .handlers_where(|h| h.subject == "dur.failing")
        .start()
        .await
        .unwrap();
    // Five malformed events: each is dead-lettered at once (`invalid`).
    let raw = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    for n in 0..5 {
        raw.publish("dur.failing", format!("{{oops {n}").into()).await.unwrap().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.dead_letters("dur.failing").await.unwrap().len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = app.dead_letters("dur.failing").await.unwrap();
    assert_eq!(all.len(), 5, "{all:?}");

    let (mut pages, mut from, mut seen) = (Vec::new(), 0, Vec::new());
    for _ in 0..10 {
        let page = app.dead_letters_page("dur.failing", from, 2).await.unwrap();
        pages.push(page.letters.len());
        seen.extend(page.letters.iter().map(|l| l.sequence));
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(pages, [2, 2, 1], "pages of at most 2, then the end");
    assert_eq!(seen, all.iter().map(|l| l.sequence).collect::<Vec<_>>(), "every letter once, oldest first");
    let past = app.dead_letters_page("dur.failing", seen[4] + 1, 2).await.unwrap();
    assert!(past.letters.is_empty() && past.next.is_none(), "{past:?}");
    assert!(app.dead_letters_page("dur.nobody", 0, 10).await.unwrap().letters.is_empty());
    app.shutdown().await;
}

// ---------- a durable consumer deleted under a running handler ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_durable_consumer_is_created_again_and_delivery_resumes() {
    use futures_util::StreamExt;
    let nats = NatsServer::start_jetstream();
    let app = Catga::builder()
        .nats_url(nats.url())
        .service("bcast")
        .instance_id("recreated")
        .handlers_where(|h| h.subject == "dur.bcast")
        .start()
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream(catga::transport::stream_name("dur.bcast")).await.unwrap();
    let consumers = || async {
        let names: Vec<String> = stream.consumer_names().filter_map(|n| async { n.ok() }).collect().await;
        names
    };
    let before = consumers().await;
    assert_eq!(before.len(), 1, "the broadcast handler's consumer: {before:?}");
    // An operator (or the server, after its inactivity threshold) removes it.
    stream.delete_consumer(&before[0]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumers().await.is_empty() {
        assert!(Instant::now() < deadline, "the consumer was not created again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.publish(Broadcasted { n: 42 }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !BROADCASTS.lock().unwrap().iter().any(|(_, n)| *n == 42) {
        assert!(Instant::now() < deadline, "delivery did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_settings_a_durable_command_whose_instance_dies_is_handled_elsewhere_and_its_caller_answered() {
    // Defaults only (ack_wait 1.5 s, request timeout 5 s): the one instance
    // running the command is killed mid-handling once a second one runs.
    let nats = NatsServer::start_jetstream();
    let ledger = Ledger::new();
    let mut first = service(&nats.url(), "dies", &ledger, &[]);
    let client =
        Catga::builder().nats_url(nats.url()).service("tester").client_only().start().await.expect("a default client");
    let meta = Metadata::root();
    let call = tokio::spawn({
        let client = client.clone();
        let meta = meta.clone();
        async move { client.send_as(DurableWork { n: 1, sleep_ms: 1000 }, meta, SendOptions::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = service(&nats.url(), "takes-over", &ledger, &[]);
    let killed = Instant::now();
    first.kill();
    let reply = tokio::time::timeout(Duration::from_secs(20), call).await.expect("bounded").unwrap();
    let after_kill = killed.elapsed();
    let (by, n) = reply.unwrap_or_else(|e| panic!("the caller, within its default deadline, got no reply: {e}"));
    println!("durable 1 s handler killed mid-way: answered by {by} {after_kill:?} after the kill (ack_wait 1.5 s)");
    assert_eq!((by.as_str(), n), ("takes-over", 1));
    // Redelivery after ack_wait (1.5 s) + the 1 s handler: not 30 s.
    assert!(after_kill < Duration::from_millis(4000), "{after_kill:?}");
    let lines = ledger.wait_for_lines(1, Duration::from_secs(2));
    assert_eq!(lines, vec![meta.message_id.to_string()], "the effect happened once");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_settings_a_durable_idempotent_command_whose_instance_dies_runs_once_elsewhere() {
    // The redelivered copy finds the dead instance's claim, judges it dead
    // by its heartbeat and runs the handler: once, with the next fence.
    let nats = NatsServer::start_jetstream();
    let redis = catga_suite::RedisServer::start();
    let ledger = Ledger::new();
    let store = [("CATGA_REDIS_URL", redis.url())];
    let store: Vec<(&str, &str)> = store.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut first = service(&nats.url(), "dies", &ledger, &store);
    let client =
        Catga::builder().nats_url(nats.url()).service("tester").client_only().start().await.expect("a default client");
    let meta = Metadata::root();
    let call = tokio::spawn({
        let client = client.clone();
        let meta = meta.clone();
        async move { client.send_as(DurableCharge { n: 2, sleep_ms: 500 }, meta, SendOptions::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = service(&nats.url(), "takes-over", &ledger, &store);
    let killed = Instant::now();
    first.kill();
    let reply = tokio::time::timeout(Duration::from_secs(20), call).await.expect("bounded").unwrap();
    let after_kill = killed.elapsed();
    let (by, n) = reply.unwrap_or_else(|e| panic!("the caller, within its default deadline, got no reply: {e}"));
    println!("durable idempotent 0.5 s handler killed mid-way: answered by {by} {after_kill:?} after the kill");
    assert_eq!((by.as_str(), n), ("takes-over", 2));
    let lines = ledger.wait_for_lines(1, Duration::from_secs(2));
    // Once, by the copy that took the claim over (the second grant).
    assert_eq!(lines, vec![format!("charged {} fence 2", meta.message_id)]);
    client.shutdown().await;
}
