//! The NATS transport against real `nats-server` processes (started here on
//! free 127.0.0.1 ports) and real service processes (`catga-test-service`),
//! so kills are real. Every load loop is bounded in count and time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::{Error, SendOptions};
use catga_suite::{NatsServer, ServiceProcess};

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-test-service");

// The service's contracts, as a client service would copy them.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.whoami", reply = String)]
struct WhoAmI;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.work", reply = (String, u64))]
struct Work {
    n: u64,
    sleep_ms: u64,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.fail", reply = ())]
struct Fail {
    code: String,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.echo", reply = String)]
struct Echo {
    text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "svc.ping")]
struct Ping {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "svc.pong")]
struct Pong {
    n: u64,
    from: String,
    correlation: String,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.charge", reply = (String, i64))]
struct Charge {
    cents: u64,
}

static PONGS: Mutex<Vec<Pong>> = Mutex::new(Vec::new());

#[catga::event]
async fn on_pong(ev: Pong) -> Result<(), HandlerError> {
    PONGS.lock().unwrap().push(ev);
    Ok(())
}

fn service(nats: &str, id: &str) -> ServiceProcess {
    ServiceProcess::started(SERVICE, &[("CATGA_NATS_URL", nats), ("CATGA_SERVICE", "svc"), ("CATGA_INSTANCE_ID", id)])
}

async fn client(nats: &str) -> App {
    Catga::builder()
        .nats_url(nats)
        .service("tester")
        .request_timeout(Duration::from_secs(1))
        .client_only()
        .start()
        .await
        .unwrap()
}

/// What a load run saw.
#[derive(Debug, Default)]
struct Load {
    by_instance: HashMap<String, usize>,
    failures: Vec<String>,
    worst: Duration,
}

/// `count` commands, one every `every`, each taking `sleep_ms` in the
/// handler; `during(i)` runs after the i-th was started.
async fn steady_load(client: &App, count: u64, every: Duration, sleep_ms: u64, mut during: impl FnMut(u64)) -> Load {
    let mut tick = tokio::time::interval(every);
    let mut sends = Vec::new();
    for n in 0..count {
        tick.tick().await;
        let client = client.clone();
        sends.push(tokio::spawn(async move {
            let started = Instant::now();
            let reply = client.send_with(Work { n, sleep_ms }, SendOptions::timeout(Duration::from_secs(1))).await;
            (reply, started.elapsed())
        }));
        during(n);
    }
    let mut load = Load::default();
    for send in sends {
        let (reply, took) = tokio::time::timeout(Duration::from_secs(30), send).await.expect("bounded").unwrap();
        load.worst = load.worst.max(took);
        match reply {
            Ok((instance, _)) => *load.by_instance.entry(instance).or_default() += 1,
            Err(e) => load.failures.push(e.to_string()),
        }
    }
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_events_cross_processes_with_typed_replies_and_errors() {
    let nats = NatsServer::start();
    let _svc = service(&nats.url(), "svc-a");
    let app = Catga::builder()
        .nats_url(nats.url())
        .service("tester")
        .handlers_where(|h| h.subject == "svc.pong")
        .start()
        .await
        .unwrap();

    assert_eq!(app.send(WhoAmI).await.unwrap(), "svc-a");
    assert_eq!(app.send(Work { n: 7, sleep_ms: 0 }).await.unwrap(), ("svc-a".to_owned(), 7));

    let err = app.send(Fail { code: "out_of_stock".into() }).await.unwrap_err();
    let handler = err.handler_error().expect("the handler's error");
    assert_eq!((handler.code(), handler.message()), ("out_of_stock", "failed on purpose"));

    // An event to the service; its handler publishes one back, correlated.
    let meta = catga::Metadata::root();
    app.publish_as(Ping { n: 42 }, meta.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while PONGS.lock().unwrap().iter().all(|p| p.n != 42) {
        assert!(Instant::now() < deadline, "no pong within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pong = PONGS.lock().unwrap().iter().find(|p| p.n == 42).cloned().unwrap();
    assert_eq!(pong.from, "svc-a");
    assert_eq!(pong.correlation, meta.correlation_id.to_string(), "the correlation id crossed both hops");

    // Nobody serves this subject: NoHandler, promptly (retries included).
    #[derive(Debug, Serialize, Deserialize, Command)]
    #[catga(subject = "svc.nobody", reply = ())]
    struct Nobody;
    let started = Instant::now();
    assert!(matches!(app.send(Nobody).await, Err(Error::NoHandler { subject: "svc.nobody" })));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_spreads_across_three_instances() {
    let nats = NatsServer::start();
    let _svcs: Vec<_> = ["svc-1", "svc-2", "svc-3"].iter().map(|id| service(&nats.url(), id)).collect();
    let client = client(&nats.url()).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for batch in 0..100u64 {
        let sends: Vec<_> = (0..30).map(|i| client.send(Work { n: batch * 30 + i, sleep_ms: 0 })).collect();
        for reply in futures_util::future::join_all(sends).await {
            *counts.entry(reply.unwrap().0).or_default() += 1;
        }
    }
    println!("3000 commands over 3 instances: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 3000);
    assert_eq!(counts.len(), 3);
    for (instance, n) in &counts {
        assert!((600..=1350).contains(n), "{instance} handled {n} of 3000 (want 20%..45%)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_instance_under_load_loses_no_command_with_retries() {
    let nats = NatsServer::start();
    let mut svcs: Vec<_> = ["k-1", "k-2", "k-3"].iter().map(|id| service(&nats.url(), id)).collect();
    let client = client(&nats.url()).await;
    let mut victim = Some(svcs.remove(0));
    let load = steady_load(&client, 1000, Duration::from_millis(2), 20, |n| {
        if n == 400 {
            victim.take().unwrap().kill();
        }
    })
    .await;
    println!(
        "kill -9 under load: {:?}, failures {}, retries {}, worst latency {:?}",
        load.by_instance,
        load.failures.len(),
        client.retries(),
        load.worst
    );
    assert!(load.failures.is_empty(), "{:?}", load.failures);
    assert_eq!(load.by_instance.values().sum::<usize>(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_one_instance_under_load_drains_with_no_failure_and_no_retry() {
    let nats = NatsServer::start();
    let mut svcs: Vec<_> = ["t-1", "t-2", "t-3"].iter().map(|id| service(&nats.url(), id)).collect();
    let client = client(&nats.url()).await;
    let victim = svcs[0].pid();
    let load = steady_load(&client, 1000, Duration::from_millis(2), 20, |n| {
        if n == 400 {
            catga_suite::signal(victim, "TERM");
        }
    })
    .await;
    println!(
        "SIGTERM under load: {:?}, failures {}, retries {}, worst latency {:?}",
        load.by_instance,
        load.failures.len(),
        client.retries(),
        load.worst
    );
    assert!(load.failures.is_empty(), "{:?}", load.failures);
    // Drain stops the server routing here and handles what was delivered.
    // async-nats 0.51 removes a draining subscription before the server has
    // confirmed the UNSUB (no PING/PONG fence), so a request in transit at
    // that instant can be dropped by the client; the caller's retry covers
    // it. Usually 0; never more than a few.
    assert!(
        client.retries() <= 3,
        "{} retries: the drain lost more than the async-nats window explains",
        client.retries()
    );
    assert_eq!(svcs[0].exit_code(), Some(0));
    svcs[0].wait_for("catga instance stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_started_mid_load_takes_work_with_no_configuration() {
    let nats = NatsServer::start();
    let _first = service(&nats.url(), "n-1");
    let client = client(&nats.url()).await;
    let mut late = None;
    let url = nats.url();
    let load = steady_load(&client, 600, Duration::from_millis(3), 5, |n| {
        if n == 100 {
            // Same binary, same environment but its id: nothing else to set.
            late = Some(ServiceProcess::start(
                SERVICE,
                &[("CATGA_NATS_URL", &url), ("CATGA_SERVICE", "svc"), ("CATGA_INSTANCE_ID", "n-2")],
            ));
        }
    })
    .await;
    println!("new instance mid-load: {:?}", load.by_instance);
    assert!(load.failures.is_empty(), "{:?}", load.failures);
    assert!(load.by_instance.get("n-2").copied().unwrap_or(0) > 20, "{:?}", load.by_instance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_reply_and_the_instance_keeps_serving() {
    let nats = NatsServer::start();
    let _svc = service(&nats.url(), "bad-1");
    let raw = async_nats::connect(nats.url()).await.unwrap();

    // A plain NATS client (not Catga) can call a command with JSON.
    let reply = raw.request("svc.echo", r#"{"text":"hi"}"#.into()).await.unwrap();
    assert_eq!(&reply.payload[..], br#""hi""#);
    let status =
        |m: &async_nats::Message, h: &str| m.headers.as_ref().and_then(|x| x.get(h)).map(|v| v.as_str().to_owned());
    assert_eq!(status(&reply, "Catga-Status"), None, "a success is the bare payload");

    // Malformed, then wrongly typed payloads: an error reply naming the problem.
    for body in [&b"{oops"[..], &br#"{"text": 5}"#[..]] {
        let reply = raw.request("svc.echo", body.to_vec().into()).await.unwrap();
        assert_eq!(status(&reply, "Catga-Status").as_deref(), Some("error"));
        assert_eq!(status(&reply, "Catga-Error-Code").as_deref(), Some("invalid"));
        let text = String::from_utf8_lossy(&reply.payload);
        assert!(text.contains("malformed payload for \"svc.echo\""), "{text}");
        // What a NATS service-API client (nats micro) reads as an error.
        assert_eq!(status(&reply, "Nats-Service-Error-Code").as_deref(), Some("400"));
        let said = status(&reply, "Nats-Service-Error").unwrap_or_default();
        assert!(said.contains("malformed payload for \"svc.echo\""), "{said}");
    }

    // A handler's own error code is a 500 to service-API clients.
    let reply = raw.request("svc.fail", r#"{"code":"out_of_stock"}"#.into()).await.unwrap();
    assert_eq!(status(&reply, "Catga-Error-Code").as_deref(), Some("out_of_stock"));
    assert_eq!(status(&reply, "Nats-Service-Error-Code").as_deref(), Some("500"));
    assert!(status(&reply, "Nats-Service-Error").is_some());

    // An error code with a line break (not valid in a header) still arrives.
    let client = client(&nats.url()).await;
    let err = client.send(Fail { code: "bad\ncode".into() }).await.unwrap_err();
    assert_eq!(err.code(), Some("bad code"), "{err}");

    // Oversized: refused on the sender with a clear error.
    let err = client.send(Echo { text: "x".repeat(2 * 1024 * 1024) }).await.unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { subject: "svc.echo", .. }), "{err}");
    assert!(err.to_string().contains("max_payload"), "{err}");

    // Still serving.
    assert_eq!(client.send(Echo { text: "still here".into() }).await.unwrap(), "still here");
}

/// All replies to a plain NATS request within `window` (several instances answer).
async fn gather(raw: &async_nats::Client, subject: &str, window: Duration) -> Vec<serde_json::Value> {
    use futures_util::StreamExt;
    let inbox = raw.new_inbox();
    let mut replies = raw.subscribe(inbox.clone()).await.unwrap();
    raw.publish_with_reply(subject.to_owned(), inbox, "".into()).await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if m.status.is_some() {
            continue; // e.g. 503 "no responders" when nobody answers
        }
        out.push(serde_json::from_slice(&m.payload).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_through_plain_srv_requests_lists_every_instance_and_its_endpoints() {
    let nats = NatsServer::start();
    let _svcs: Vec<_> = ["d-1", "d-2"].iter().map(|id| service(&nats.url(), id)).collect();
    let raw = async_nats::connect(nats.url()).await.unwrap();

    let pings = gather(&raw, "$SRV.PING", Duration::from_millis(500)).await;
    let mut ids: Vec<_> = pings.iter().filter(|p| p["name"] == "svc").map(|p| p["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["d-1", "d-2"], "{pings:?}");
    assert!(pings.iter().all(|p| p["type"] == "io.nats.micro.v1.ping_response"));

    let infos = gather(&raw, "$SRV.INFO.svc", Duration::from_millis(500)).await;
    assert_eq!(infos.len(), 2);
    for info in &infos {
        let endpoints = info["endpoints"].as_array().unwrap();
        let whoami = endpoints.iter().find(|e| e["subject"] == "svc.whoami").expect("endpoint");
        assert_eq!(whoami["queue_group"], "svc");
        // Short type names, not Rust paths such as `alloc::string::String`.
        assert_eq!(whoami["metadata"]["message_type"], "WhoAmI", "{whoami}");
        assert_eq!(whoami["metadata"]["reply_type"], "String", "{whoami}");
        assert_eq!(whoami["metadata"]["kind"], "command");
        let kind = |k: &str| endpoints.iter().filter(|e| e["metadata"]["kind"] == k).count();
        assert_eq!(kind("command"), 9, "one endpoint per command handler: {endpoints:?}");
        // Event handlers are listed too; a broadcast one has no queue group.
        assert_eq!(kind("event"), 1, "{endpoints:?}");
        let ping = endpoints.iter().find(|e| e["subject"] == "svc.ping").expect("the event handler");
        assert!(ping.get("queue_group").is_none(), "{ping}");
        assert_eq!(ping["metadata"]["message_type"], "Ping");
    }

    // Stats count requests per instance; the per-id subject answers alone.
    let client = client(&nats.url()).await;
    for _ in 0..10 {
        client.send(WhoAmI).await.unwrap();
    }
    let stats = gather(&raw, "$SRV.STATS.svc.d-1", Duration::from_millis(300)).await;
    assert_eq!(stats.len(), 1);
    let others = gather(&raw, "$SRV.STATS.svc.d-2", Duration::from_millis(300)).await;
    assert_eq!(others.len(), 1, "{others:?}");
    let served = |s: &serde_json::Value| {
        s["endpoints"].as_array().unwrap().iter().find(|e| e["subject"] == "svc.whoami").unwrap()["num_requests"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(served(&stats[0]) + served(&others[0]), 10);

    // Event deliveries are counted too: a broadcast reaches both instances.
    for n in 0..4 {
        client.publish(Ping { n }).await.unwrap();
    }
    let delivered = |s: &serde_json::Value| {
        s["endpoints"].as_array().unwrap().iter().find(|e| e["subject"] == "svc.ping").unwrap()["num_requests"]
            .as_u64()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = gather(&raw, "$SRV.STATS.svc", Duration::from_millis(300)).await;
        let counts: Vec<u64> = all.iter().map(delivered).collect();
        if counts == [4, 4] || Instant::now() > deadline {
            assert_eq!(counts, [4, 4], "each instance counts its 4 deliveries: {all:?}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_an_instance_whose_node_dies_reconnects_and_serves_again() {
    let mut nodes = NatsServer::cluster(3);
    // Wait for the routes: a request through node 3 reaches a responder on node 1.
    let a = service(&nodes[0].url(), "c-a");
    let b = service(&nodes[1].url(), "c-b");
    let client = client(&nodes[2].url()).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "cluster did not route to both instances: {seen:?}");
        if let Ok(id) = client.send(WhoAmI).await {
            seen.insert(id);
        }
    }

    nodes[0].kill();
    let killed = Instant::now();
    // Commands keep succeeding (c-b, then c-a again once it reconnected).
    let mut back = None;
    let mut failures = 0;
    while back.is_none() {
        assert!(killed.elapsed() < Duration::from_secs(20), "c-a did not come back within 20 s");
        match client.send(WhoAmI).await {
            Ok(id) if id == "c-a" => back = Some(killed.elapsed()),
            Ok(_) => {}
            Err(_) => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("node kill: c-a served again after {:?}; {failures} sends failed meanwhile", back.unwrap());
    assert_eq!(failures, 0, "the other instance served while c-a reconnected");
    drop((a, b));
}

// ---------- back-pressure: bounded handlings per handler ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "bp.slow", reply = ())]
struct Slow;

static CONCURRENT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[catga::command(queue = "bp")]
async fn slow(_: Slow) -> Result<(), HandlerError> {
    use std::sync::atomic::Ordering::SeqCst;
    let now = CONCURRENT.fetch_add(1, SeqCst) + 1;
    PEAK.fetch_max(now, SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    CONCURRENT.fetch_sub(1, SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlings_per_handler_are_bounded_and_the_rest_wait() {
    let nats = NatsServer::start();
    let server = Catga::builder()
        .nats_url(nats.url())
        .service("bp")
        .max_in_flight(4)
        .handlers_where(|h| h.subject == "bp.slow")
        .start()
        .await
        .unwrap();
    let client = client(&nats.url()).await;
    let sends: Vec<_> = (0..60).map(|_| client.send_with(Slow, SendOptions::timeout(Duration::from_secs(5)))).collect();
    let replies = futures_util::future::join_all(sends).await;
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    let peak = PEAK.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=4).contains(&peak), "at most 4 handlings at once, saw {peak}");
    assert_eq!(client.retries(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_of_a_nats_instance_unsubscribes_it() {
    let nats = NatsServer::start();
    let server = Catga::builder()
        .nats_url(nats.url())
        .service("gone")
        .handlers_where(|h| h.subject == "bp.slow")
        .start()
        .await
        .unwrap();
    let client = client(&nats.url()).await;
    client.send(Slow).await.unwrap();
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.send_with(Slow, SendOptions::timeout(Duration::from_millis(500))).await {
            Err(Error::NoHandler { .. }) => break,
            other => assert!(Instant::now() < deadline, "still served 5 s after the drop: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let raw = async_nats::connect(nats.url()).await.unwrap();
    assert!(gather(&raw, "$SRV.PING.gone", Duration::from_millis(300)).await.is_empty(), "no $SRV answers either");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_copies_of_one_command_across_three_processes_run_the_handler_once() {
    let nats = NatsServer::start();
    let redis = catga_suite::redis::RedisServer::start();
    let (nats_url, redis_url) = (nats.url(), redis.url());
    let _instances: Vec<ServiceProcess> = (0..3)
        .map(|i| {
            let id = format!("idem-{i}");
            ServiceProcess::started(
                SERVICE,
                &[
                    ("CATGA_NATS_URL", nats_url.as_str()),
                    ("CATGA_REDIS_URL", redis_url.as_str()),
                    ("CATGA_SERVICE", "svc"),
                    ("CATGA_INSTANCE_ID", id.as_str()),
                ],
            )
        })
        .collect();
    let client = client(&nats_url).await;
    // One message id, 100 concurrent copies: NATS spreads them over the
    // three processes; the store lets exactly one run the handler.
    let meta = catga::Metadata::root();
    let copies: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            let meta = meta.clone();
            tokio::spawn(async move { client.send_as(Charge { cents: 500 }, meta, SendOptions::default()).await })
        })
        .collect();
    let mut replies = Vec::new();
    for copy in copies {
        replies.push(copy.await.unwrap().unwrap());
    }
    assert!(replies.iter().all(|r| *r == replies[0]), "every copy got the first reply: {replies:?}");
    assert_eq!(replies[0].1, 1, "the handler's own count of its runs");
    let store = catga::store::Store::connect(&redis_url).await.unwrap();
    let runs = store.incr(&catga::store::Key::new(meta.message_id.to_string(), "runs"), 0).await.unwrap();
    assert_eq!(runs, 1, "the handler ran once across the three processes");
    client.shutdown().await;
}
