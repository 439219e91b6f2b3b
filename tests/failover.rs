//! Failover with the default configuration (only the server URL is set):
//! real `nats-server` and `catga-test-service` processes, killed, stopped,
//! frozen under load. A caller learns within the liveness timeout that its
//! responder died and sends again elsewhere; a live responder's requests
//! are never sent twice; a send's deadline bounds every attempt.
//!
//! Latency bounds here are behaviour, not speed: each says that no caller
//! waited out a request timeout (5 s by default), which is what happened
//! before responders signalled their requests. Every loop is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::{Error, SendOptions};
use catga_suite::{NatsServer, ServiceProcess};

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-test-service");

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.work", reply = (String, u64))]
struct Work {
    n: u64,
    sleep_ms: u64,
}

/// Idempotent (50 ms): answers (who charged, how often this message id ran).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.charge", reply = (String, i64))]
struct Charge {
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.spin", reply = u64)]
struct Spin {
    ms: u64,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.whoami", reply = String)]
struct WhoAmI;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.budget", reply = Option<u64>)]
struct Budget;

/// An instance with the default configuration: the server URL and its names.
fn instance(nats: &str, id: &str) -> ServiceProcess {
    instance_with(nats, id, &[])
}

/// An instance with the default configuration and `extra` variables.
fn instance_with(nats: &str, id: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    let mut env = vec![("CATGA_NATS_URL", nats), ("CATGA_SERVICE", "svc"), ("CATGA_INSTANCE_ID", id)];
    env.extend_from_slice(extra);
    ServiceProcess::started(SERVICE, &env)
}

/// A client with the default configuration.
async fn client(nats: &str) -> App {
    Catga::builder().nats_url(nats).service("tester").client_only().start().await.unwrap()
}

/// What a load of sends came to: each answer's value (e.g. how often its
/// handler ran), the failures, the slowest send.
struct Outcome {
    answers: Vec<i64>,
    failed: Vec<String>,
    worst: Duration,
}

/// `callers` callers each sending `each` commands in a row with `send`;
/// `event` runs once `at` have been answered. Bounded: 60 s for the load.
async fn under_load<F>(
    client: &App,
    callers: usize,
    each: usize,
    at: usize,
    event: impl FnOnce() + Send + 'static,
    send: fn(App, u64) -> F,
) -> Outcome
where
    F: std::future::Future<Output = catga::Result<i64>> + Send + 'static,
{
    let answered = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (client, answered) = (client.clone(), answered.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..each {
                    let started = Instant::now();
                    let outcome = send(client.clone(), (c * each + i) as u64).await;
                    answered.fetch_add(1, Ordering::SeqCst);
                    outcomes.push((started.elapsed(), outcome.map_err(|e| e.to_string())));
                }
                outcomes
            })
        })
        .collect();
    let bound = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < at && Instant::now() < bound {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    event();
    let mut outcome = Outcome { answers: Vec::new(), failed: Vec::new(), worst: Duration::ZERO };
    for task in tasks {
        let results = tokio::time::timeout(Duration::from_secs(60), task).await.expect("the load is bounded").unwrap();
        for (took, result) in results {
            outcome.worst = outcome.worst.max(took);
            match result {
                Ok(value) => outcome.answers.push(value),
                Err(e) => outcome.failed.push(e),
            }
        }
    }
    outcome
}

impl Outcome {
    fn answered(&self) -> usize {
        self.answers.len() + self.failed.len()
    }
}

/// `SIGSTOP` process `pid`, and `SIGCONT` it 3 s later (as a long pause
/// or an overloaded host looks).
fn freeze_for_3_s(pid: u32) -> impl FnOnce() + Send + 'static {
    move || {
        catga_suite::signal(pid, "STOP");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            catga_suite::signal(pid, "CONT");
        });
    }
}

/// A 20 ms command; its value is unused.
async fn work(client: App, n: u64) -> catga::Result<i64> {
    client.send(Work { n, sleep_ms: 20 }).await.map(|_| 0)
}

/// The idempotent command; its value is how often its handler ran.
async fn charge(client: App, _: u64) -> catga::Result<i64> {
    client.send(Charge { cents: 1 }).await.map(|(_, runs)| runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_of_three_under_load_fails_nothing_and_no_caller_waits_a_timeout() {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut instances: Vec<ServiceProcess> = (0..3).map(|i| instance(&url, &format!("kill-{i}"))).collect();
    let client = client(&url).await;
    let mut victim = instances.remove(0);
    let outcome = under_load(&client, 8, 40, 80, move || victim.kill(), work).await;
    println!(
        "kill -9 of 1 of 3, 8 in flight, 20 ms handler, defaults: {} answered, {} failed, worst {:?}, {} re-sends",
        outcome.answered(),
        outcome.failed.len(),
        outcome.worst,
        client.retries()
    );
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(outcome.answered(), 320);
    // Goal: handler time + 1 s. Before liveness signals: a request timeout (5 s).
    assert!(outcome.worst < Duration::from_millis(2500), "a caller waited {:?}", outcome.worst);
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_of_three_under_load_with_an_idempotent_handler_fails_nothing_and_reruns_only_what_died() {
    // The dead instance's claims: a re-sent copy finds one, judges its owner
    // dead by its heartbeat and runs the handling (the first
    // symptom: these failed after 15 s, waiting on 60 s claims).
    let nats = NatsServer::start();
    let redis = catga_suite::RedisServer::start();
    let (url, redis_url) = (nats.url(), redis.url());
    let mut instances: Vec<ServiceProcess> =
        (0..3).map(|i| instance_with(&url, &format!("idem-{i}"), &[("CATGA_REDIS_URL", &redis_url)])).collect();
    let client = client(&url).await;
    let mut victim = instances.remove(0);
    let outcome = under_load(&client, 8, 30, 80, move || victim.kill(), charge).await;
    let reruns = outcome.answers.iter().filter(|runs| **runs > 1).count();
    println!(
        "kill -9 of 1 of 3, 8 in flight, 50 ms idempotent handler, defaults: {} answered, {} failed, worst {:?}, \
         {reruns} run again, {} re-sends",
        outcome.answered(),
        outcome.failed.len(),
        outcome.worst,
        client.retries()
    );
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(outcome.answered(), 240);
    // Only a handling the dead instance had started (its effect done, its
    // reply not recorded) runs again: at most the 8 in flight.
    assert!(reruns <= 8, "{reruns} handlings ran twice");
    // Detection (≤ 0.5 s) + the claim's takeover (≈ 1 s), not 15 s.
    assert!(outcome.worst < Duration::from_secs(3), "a caller waited {:?}", outcome.worst);
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_one_of_three_under_load_fails_nothing_and_no_caller_waits_a_timeout() {
    let nats = NatsServer::start();
    let url = nats.url();
    let instances: Vec<ServiceProcess> = (0..3).map(|i| instance(&url, &format!("term-{i}"))).collect();
    let client = client(&url).await;
    let pid = instances[0].pid();
    let outcome = under_load(&client, 8, 40, 80, move || catga_suite::signal(pid, "TERM"), work).await;
    println!(
        "SIGTERM of 1 of 3, 8 in flight, 20 ms handler, defaults: {} answered, {} failed, worst {:?}, {} re-sends",
        outcome.answered(),
        outcome.failed.len(),
        outcome.worst,
        client.retries()
    );
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert!(outcome.worst < Duration::from_millis(2500), "a caller waited {:?}", outcome.worst);
    client.shutdown().await;
    drop(instances);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_frozen_for_3_s_under_load_fails_nothing_and_its_callers_go_elsewhere() {
    let nats = NatsServer::start();
    let url = nats.url();
    let instances: Vec<ServiceProcess> = (0..3).map(|i| instance(&url, &format!("stop-{i}"))).collect();
    let client = client(&url).await;
    let pid = instances[0].pid();
    let outcome = under_load(&client, 8, 60, 80, freeze_for_3_s(pid), work).await;
    println!(
        "SIGSTOP 3 s of 1 of 3, 8 in flight, 20 ms handler, defaults: {} answered, {} failed, worst {:?}, {} re-sends",
        outcome.answered(),
        outcome.failed.len(),
        outcome.worst,
        client.retries()
    );
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    // Each caller got exactly one answer per send (the frozen instance's
    // late replies go to tokens nobody waits on). A re-send lands on the
    // frozen instance again with chance 1/3 (NATS picks a queue member at
    // random), each time costing one liveness timeout: the worst case is a
    // few of those (≈ 1.5–2 s), never the 5 s deadline.
    assert_eq!(outcome.answered(), 480);
    assert!(outcome.worst < Duration::from_secs(4), "a caller waited {:?}", outcome.worst);
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_frozen_under_idempotent_load_has_its_claims_taken_over_and_its_late_replies_not_recorded() {
    let nats = NatsServer::start();
    let redis = catga_suite::RedisServer::start();
    let (url, redis_url) = (nats.url(), redis.url());
    let mut instances: Vec<ServiceProcess> =
        (0..3).map(|i| instance_with(&url, &format!("frozen-{i}"), &[("CATGA_REDIS_URL", &redis_url)])).collect();
    let client = client(&url).await;
    let pid = instances[0].pid();
    let outcome = under_load(&client, 8, 40, 80, freeze_for_3_s(pid), charge).await;
    let reruns = outcome.answers.iter().filter(|runs| **runs > 1).count();
    println!(
        "SIGSTOP 3 s of 1 of 3, 50 ms idempotent handler, defaults: {} answered, {} failed, worst {:?}, {reruns} run \
         again by a copy, {} re-sends",
        outcome.answered(),
        outcome.failed.len(),
        outcome.worst,
        client.retries()
    );
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(outcome.answered(), 320, "each caller gets exactly one answer per send");
    // Only handlings the frozen instance had started run again (by a copy
    // that took their claims over): at most the 8 in flight.
    assert!(reruns <= 8, "{reruns} handlings ran twice");
    if reruns > 0 {
        // Resumed, the frozen instance finds its claims taken: its late
        // outcomes are not recorded (the copy's reply is the one kept).
        std::thread::sleep(Duration::from_secs(1));
        instances[0].drain_lines();
        let refused = instances[0].seen().iter().filter(|l| l.contains("claim was taken over")).count();
        assert!(refused > 0, "the resumed instance recorded nothing over its copies: {:?}", instances[0].seen());
    }
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_instance_dies_mid_handling_is_sent_again_and_answered_elsewhere() {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut first = instance(&url, "dies");
    let client = client(&url).await;
    let sent = Instant::now();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.send(Work { n: 1, sleep_ms: 1500 }).await }
    });
    // The request is held (and signalled) by the only instance; a second
    // one joins, then the first is killed mid-handling.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = instance(&url, "survives");
    let killed = Instant::now();
    first.kill();
    let (by, _) = tokio::time::timeout(Duration::from_secs(10), call).await.expect("bounded").unwrap().unwrap();
    let after_kill = killed.elapsed();
    println!(
        "1.5 s handler killed {:?} after the send: answered by {by} {after_kill:?} after the kill ({} re-send)",
        killed - sent,
        client.retries()
    );
    assert_eq!(by, "survives");
    assert_eq!(client.retries(), 1, "sent again exactly once");
    // Detection (≤ 0.5 s) + the handler's 1.5 s, not a request timeout.
    assert!(after_kill < Duration::from_millis(3500), "{after_kill:?}");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_publishes_then_blocks_its_worker_does_not_stop_the_instance() {
    // The spin handler publishes an event, then computes for 3 s without
    // yielding. The publish wakes the connection's task on the worker the
    // handler then blocks; the instance keeps sending, taking in requests
    // and answering them on its other worker all the same.
    use futures_util::StreamExt;
    let nats = NatsServer::start();
    let url = nats.url();
    let _instance = instance(&url, "busy");
    let client = client(&url).await;
    let watcher = async_nats::connect(&url).await.unwrap();
    let mut events = catga_suite::subscribed(&watcher, "svc.pong").await;
    let spin = tokio::spawn({
        let client = client.clone();
        async move { client.send(Spin { ms: 3000 }).await }
    });
    tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("bounded").expect("the event");
    assert!(!spin.is_finished(), "the event went out only once the handler was done");
    let who = tokio::time::timeout(Duration::from_secs(10), client.send(WhoAmI)).await.expect("bounded").unwrap();
    assert_eq!(who, "busy");
    assert!(!spin.is_finished(), "another request was answered only once the handler was done");
    spin.await.unwrap().expect("the spin is answered");
    assert_eq!(client.retries(), 0, "a live responder's request was sent again");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_behind_a_saturated_and_hogged_instance_are_never_sent_twice() {
    // 128 requests in flight at an instance with 32 handling slots: most of
    // them wait for a slot, some for seconds, while a CPU-bound handler
    // keeps one of the runtime's workers busy. None is sent again.
    let nats = NatsServer::start();
    let url = nats.url();
    let _instance = ServiceProcess::started(
        SERVICE,
        &[
            ("CATGA_NATS_URL", &url),
            ("CATGA_SERVICE", "svc"),
            ("CATGA_INSTANCE_ID", "busy"),
            ("CATGA_MAX_IN_FLIGHT", "32"),
        ],
    );
    let client = Catga::builder()
        .nats_url(&url)
        .service("tester")
        .request_timeout(Duration::from_secs(30))
        .client_only()
        .start()
        .await
        .unwrap();
    let hog = tokio::spawn({
        let client = client.clone();
        async move { client.send(Spin { ms: 3000 }).await }
    });
    // 6 s in the suite; `CATGA_TEST_SOAK_SECS=60` runs the 60 s soak whose
    // count docs/BENCHMARKS.md reports.
    let soak = std::env::var("CATGA_TEST_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6u64).min(600);
    let stop = Instant::now() + Duration::from_secs(soak);
    let callers: Vec<_> = (0..127u64)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut done = 0;
                while Instant::now() < stop && done < 20_000 {
                    let sleep_ms = if c % 8 == 0 { 2000 } else { 50 };
                    client.send(Work { n: c, sleep_ms }).await.expect("answered");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut answered = 0;
    for caller in callers {
        answered += tokio::time::timeout(Duration::from_secs(soak + 60), caller).await.expect("bounded").unwrap();
    }
    hog.await.unwrap().expect("the hog is answered");
    println!(
        "saturated (128 in flight, 32 slots) for {soak} s, hogged for 3 s: {answered} answered, {} re-sends",
        client.retries()
    );
    assert!(answered > 127);
    assert_eq!(client.retries(), 0, "a live responder's request was sent again");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_deadline_bounds_every_attempt_and_the_handler_sees_what_is_left() {
    let nats = NatsServer::start();
    let url = nats.url();
    let _instance = instance(&url, "deadline");
    let client = client(&url).await;

    // Shorter than the handler: one timeout at the deadline, not three attempts' worth.
    let started = Instant::now();
    let err = client
        .send_with(Work { n: 1, sleep_ms: 2000 }, SendOptions::timeout(Duration::from_millis(500)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(took < Duration::from_millis(1400), "a 500 ms deadline returned after {took:?}");
    assert_eq!(client.retries(), 0, "a live, slow responder is not sent the request again");

    // The handler sees the caller's deadline, less the time in transit.
    let left = client.send_with(Budget, SendOptions::timeout(Duration::from_millis(3000))).await.unwrap();
    let left = left.expect("a Catga sender always sends its deadline");
    assert!(left <= 3000 && left > 2000, "the handler saw {left} ms left");
    let left = client.send(Budget).await.unwrap().expect("the default deadline");
    assert!(left <= 5000 && left > 4000, "the default deadline is the request timeout: {left} ms left");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passed_is_not_handled() {
    let nats = NatsServer::start();
    let url = nats.url();
    let _instance = instance(&url, "expired");
    let raw = async_nats::connect(&url).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(catga::transport::headers::DEADLINE_IN, "0");
    let reply =
        raw.request_with_headers("svc.budget", headers, "null".into()).await.expect("an error reply, not silence");
    let header = |name: &str| reply.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    assert_eq!(header(catga::transport::headers::STATUS).as_deref(), Some("error"));
    assert_eq!(header(catga::transport::headers::ERROR_CODE).as_deref(), Some(HandlerError::DEADLINE));
    assert_eq!(header(catga::transport::headers::SERVICE_ERROR_CODE).as_deref(), Some("504"));
    let body = String::from_utf8_lossy(&reply.payload);
    assert!(body.contains("deadline") && body.contains("not handled"), "{body}");

    // A plain NATS request (no Catga headers) has no deadline and gets one reply.
    let reply = raw.request("svc.budget", "null".into()).await.unwrap();
    assert_eq!(&reply.payload[..], b"null");
}
