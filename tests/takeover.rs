//! What a dead instance held is taken over in about a second, and what a
//! live one holds never is — across real processes (`catga-saga-service`
//! instances over a real nats-server and redis-server), with the default
//! configuration (only the server URLs are set):
//! - an idempotent handling whose instance is killed (`kill -9`) mid-way is
//!   run by a copy elsewhere once the owner is judged dead by its heartbeat;
//! - a live owner's long handling is never run by a copy;
//! - the sagas of a killed instance are taken over within about 1.5 s,
//!   spread over the survivors, and finish with each effect applied once;
//! - a saga's deadline holds across a kill -9 of the instance running it:
//!   it fires once, on the survivor that took the saga over.
//!
//! Figures are printed (`--no-capture`); the asserted bounds are generous.
//! Every loop is bounded in count and time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::saga::SagaStatus;
use catga::store::Key;
use catga::{Metadata, SendOptions};
use catga_suite::{NatsServer, RedisServer, ServiceProcess};

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-saga-service");

// The service's contracts, as a client copies them.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "saga.hold", reply = String)]
struct Hold {
    ms: u64,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "saga.start_slow", reply = ())]
struct StartSlow {
    id: String,
    slow_ms: u64,
    finish_ms: u64,
    deadline_ms: Option<u64>,
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
        .service("takeover-client")
        .nats_url(nats.url())
        .redis_url(redis.url())
        .client_only()
        .start()
        .await
        .unwrap()
}

/// Wait (bounded) until one of `instances` logs a line containing `text`;
/// its index and when it was seen.
fn first_line(instances: &mut [ServiceProcess], text: &str, within: Duration) -> (usize, Instant, String) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for (i, instance) in instances.iter_mut().enumerate() {
            if let Some(line) = instance.drain_lines().into_iter().find(|l| l.contains(text)) {
                return (i, Instant::now(), line);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no instance logged {text:?} within {within:?}");
}

/// A counter of `hold:<id>` (0 if never written).
async fn counted(app: &App, id: &str, what: &str) -> i64 {
    app.store().incr(&Key::new(format!("hold:{id}"), what), 0).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_handling_whose_instance_is_killed_runs_elsewhere_within_about_a_second_and_is_recorded_once() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let mut instances: Vec<ServiceProcess> =
        (0..3).map(|i| start(&nats, &redis, &format!("killed-hold-{i}"))).collect();
    let app = client(&nats, &redis).await;
    let meta = Metadata::root();
    let id = meta.message_id.to_string();
    let first = {
        let app = app.clone();
        let meta = meta.clone();
        tokio::spawn(async move { app.send_as(Hold { ms: 3000 }, meta, SendOptions::default()).await })
    };
    let (victim, _, _) = first_line(&mut instances, &format!("HOLD START {id}"), Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    instances[victim].kill();
    let killed = Instant::now();
    // A copy (the caller's retry) sent after the kill, with the same id.
    let copy = {
        let app = app.clone();
        let meta = meta.clone();
        tokio::spawn(async move { app.send_as(Hold { ms: 3000 }, meta, SendOptions::default()).await })
    };
    let (runner, seen, _) = first_line(&mut instances, &format!("HOLD START {id}"), Duration::from_secs(10));
    let took_over = seen - killed;
    assert_ne!(runner, victim);
    let (first, copy) = (first.await.unwrap(), copy.await.unwrap());
    println!(
        "kill -9 mid-handling: the copy ran the handler on {} {took_over:?} after the kill; first caller: {first:?}; \
         copy: {copy:?}",
        instances[runner].pid()
    );
    let (first, copy) = (first.unwrap(), copy.unwrap());
    assert_eq!(first, copy, "both callers get the one recorded reply");
    assert!(first.contains(&format!("killed-hold-{runner}")), "{first}");
    assert!(took_over <= Duration::from_secs(3), "taken over {took_over:?} after the kill (about 1 s expected)");
    assert_eq!(counted(&app, &id, "starts").await, 2, "started on the victim, then once elsewhere");
    assert_eq!(counted(&app, &id, "ends").await, 1, "finished once");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_owners_long_handling_is_never_run_by_a_copy() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let mut instances: Vec<ServiceProcess> = (0..3).map(|i| start(&nats, &redis, &format!("live-hold-{i}"))).collect();
    let app = client(&nats, &redis).await;
    let meta = Metadata::root();
    let id = meta.message_id.to_string();
    let first = {
        let app = app.clone();
        let meta = meta.clone();
        tokio::spawn(async move { app.send_as(Hold { ms: 4000 }, meta, SendOptions::default()).await })
    };
    first_line(&mut instances, &format!("HOLD START {id}"), Duration::from_secs(10));
    // Copies while the owner runs it: each waits for the reply (or, past
    // its limit, is told it is in progress) — none runs it.
    let mut copies = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let app = app.clone();
        let meta = meta.clone();
        copies.push(tokio::spawn(async move { app.send_as(Hold { ms: 4000 }, meta, SendOptions::default()).await }));
    }
    let first = first.await.unwrap().unwrap();
    for copy in copies {
        match copy.await.unwrap() {
            Ok(reply) => assert_eq!(reply, first),
            Err(e) => assert_eq!(e.code(), Some(catga::idempotency::IN_PROGRESS), "{e}"),
        }
    }
    assert_eq!(counted(&app, &id, "starts").await, 1, "the live owner's handling was never run again");
    assert_eq!(counted(&app, &id, "ends").await, 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_sagas_of_a_killed_instance_are_taken_over_within_about_a_second_by_several_survivors() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    // All 30 start on the victim: it is alone when they are submitted.
    let mut victim = start(&nats, &redis, "slow-victim");
    let app = client(&nats, &redis).await;
    let ids: Vec<String> = (0..30).map(|n| format!("slow-{n}")).collect();
    for id in &ids {
        app.send(StartSlow { id: id.clone(), slow_ms: 8000, finish_ms: 0, deadline_ms: None }).await.unwrap();
    }
    let submitted = Instant::now();
    let mut survivors: Vec<ServiceProcess> =
        (0..2).map(|i| start(&nats, &redis, &format!("slow-survivor-{i}"))).collect();
    // Let the survivors sweep a few rounds, then kill the victim mid-step.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(submitted.elapsed() < Duration::from_secs(7), "the victim is still in its 8 s step");
    victim.kill();
    let killed = Instant::now();
    let mut taken: BTreeMap<usize, Vec<Duration>> = BTreeMap::new();
    let deadline = killed + Duration::from_secs(10);
    while taken.values().map(Vec::len).sum::<usize>() < ids.len() && Instant::now() < deadline {
        for (i, survivor) in survivors.iter_mut().enumerate() {
            let lines = survivor.drain_lines();
            let n = lines.iter().filter(|l| l.contains("saga taken over") && l.contains("slow-victim")).count();
            taken.entry(i).or_default().extend(std::iter::repeat_n(killed.elapsed(), n));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let all: Vec<Duration> = taken.values().flatten().copied().collect();
    let (first, last) = (all.iter().min().copied(), all.iter().max().copied());
    let spread: Vec<usize> = taken.values().map(Vec::len).collect();
    println!(
        "30 sagas, victim killed mid-step: kill-to-takeover first {first:?}, last {last:?}; takeovers per survivor \
         {spread:?}"
    );
    assert_eq!(all.len(), ids.len(), "every saga was taken over: {spread:?}");
    assert!(last.unwrap() <= Duration::from_secs(3), "taken over {last:?} after the kill (about 1.5 s expected)");
    assert!(spread.iter().all(|n| *n > 0), "spread over both survivors: {spread:?}");

    // Each finishes, its effects applied once.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        let info = loop {
            let info = app.saga_status_by_name("slow-order", id).await.unwrap().unwrap();
            if info.status.is_finished() {
                break info;
            }
            assert!(Instant::now() < deadline, "{id} did not finish: {info:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(info.status, SagaStatus::Completed, "{id}: {info:?}");
        for what in ["work:forward", "finish:forward"] {
            let applied = app.store().set_members(&Key::new(format!("ledger:{id}"), what)).await.unwrap();
            assert_eq!(applied.len(), 1, "{id}: {what} applied {applied:?}");
        }
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sagas_deadline_fires_once_on_the_survivor_after_a_kill_9_of_the_instance_running_it() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let mut victim = start(&nats, &redis, "deadline-victim");
    let app = client(&nats, &redis).await;
    // `work` takes 20 s. Deadlines of 3.5 s pass after the survivors took
    // the sagas over (they cut `work` short); those of 1.2 s pass while the
    // sagas have no live instance.
    let cases: Vec<(String, u64)> =
        (0..6).map(|n| (format!("late-{n}"), if n % 2 == 0 { 3_500 } else { 1_200 })).collect();
    for (id, deadline_ms) in &cases {
        let start = StartSlow { id: id.clone(), slow_ms: 20_000, finish_ms: 0, deadline_ms: Some(*deadline_ms) };
        app.send(start).await.unwrap();
    }
    let submitted = Instant::now();
    let _survivors: Vec<ServiceProcess> =
        (0..2).map(|i| start(&nats, &redis, &format!("deadline-survivor-{i}"))).collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    victim.kill();
    let limit = Instant::now() + Duration::from_secs(30);
    for (id, deadline_ms) in &cases {
        let info = loop {
            let info = app.saga_status_by_name("slow-order", id).await.unwrap().unwrap();
            if info.status.is_finished() {
                break info;
            }
            assert!(Instant::now() < limit, "{id} did not finish: {info:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let late = info.finished.unwrap().duration_since(info.deadline.unwrap()).unwrap_or_default();
        println!("{id} (deadline {deadline_ms} ms): compensated {late:?} after its deadline");
        assert_eq!(info.status, SagaStatus::Compensated, "{id}: {info:?}");
        assert_eq!(info.error.as_deref(), Some("the saga's deadline passed during step `work`"), "{id}");
        // The cut step is not compensated; nothing after it ran.
        for (what, times) in [("work:forward", 0), ("work:compensate", 0), ("finish:forward", 0)] {
            let applied = app.store().set_members(&Key::new(format!("ledger:{id}"), what)).await.unwrap();
            assert_eq!(applied.len(), times, "{id}: {what} applied {applied:?}");
        }
        // Fired by a survivor: the victim was dead by then, or it was cut
        // short there and its write refused after the takeover.
        assert!(late < Duration::from_secs(5), "{id}: {late:?} late");
    }
    assert!(submitted.elapsed() < Duration::from_secs(20), "no saga waited for its 20 s step");
    app.shutdown().await;
}

/// The `slow-order` saga as a client that does not link it knows it.
struct SlowContract;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slow {
    slow_ms: u64,
    finish_ms: u64,
}

impl catga::saga::SagaContract for SlowContract {
    const NAME: &'static str = "slow-order";
    type Data = Slow;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_a_client_submits_run_on_the_services_instances_and_their_outcomes_reach_it_across_a_kill_9() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let mut instances: Vec<ServiceProcess> = (0..3).map(|i| start(&nats, &redis, &format!("remote-{i}"))).collect();
    let app = client(&nats, &redis).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the instances sweep
    let ids: Vec<String> = (0..12).map(|n| format!("remote-{n}")).collect();
    let started = Instant::now();
    for id in &ids {
        assert!(app.submit_remote_saga::<SlowContract>(id, Slow { slow_ms: 1500, finish_ms: 0 }).await.unwrap());
    }
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let (app, id) = (app.clone(), id.clone());
            tokio::spawn(async move { app.saga_outcome("slow-order", &id, Duration::from_secs(30)).await })
        })
        .collect();
    // Kill the instance running the first of them, mid-step.
    let (victim, _, _) = first_line(&mut instances, "submitted by a client taken to run here", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    instances[victim].kill();
    for (id, wait) in ids.iter().zip(waits) {
        let outcome = wait.await.unwrap().unwrap();
        assert_eq!(outcome, catga::saga::SagaOutcome::Completed, "{id}");
        for what in ["work:forward", "finish:forward"] {
            let applied = app.store().set_members(&Key::new(format!("ledger:{id}"), what)).await.unwrap();
            assert_eq!(applied.len(), 1, "{id}: {what} applied {applied:?}");
        }
    }
    println!("12 sagas submitted by a client, one runner killed: every outcome heard after {:?}", started.elapsed());
    app.shutdown().await;
}

/// The `waiting-order` saga as a client knows it, and the event it waits for.
struct WaitingContract;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Waiting {
    by: Option<String>,
}

impl catga::saga::SagaContract for WaitingContract {
    const NAME: &'static str = "waiting-order";
    type Data = Waiting;
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "saga.paid")]
struct Paid {
    order: String,
    by: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sagas_outlive_a_kill_9_and_resume_with_their_event_or_compensate_when_their_wait_ends_once() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let mut instances: Vec<ServiceProcess> = (0..3).map(|i| start(&nats, &redis, &format!("park-{i}"))).collect();
    let app = client(&nats, &redis).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the instances sweep
    let ids: Vec<String> = (0..10).map(|n| format!("park-{n}")).collect();
    for id in &ids {
        assert!(app.submit_remote_saga::<WaitingContract>(id, Waiting::default()).await.unwrap());
    }
    // All park: none is held by an instance.
    let parked = Key::new("saga-index:waiting-order", "parked");
    let limit = Instant::now() + Duration::from_secs(10);
    while app.store().set_members(&parked).await.unwrap().len() < ids.len() {
        assert!(Instant::now() < limit, "parked: {:?}", app.store().set_members(&parked).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let parked_at = Instant::now();
    // The instance that parked the first of them dies; the events come.
    let (victim, _, _) = first_line(&mut instances, "submitted by a client taken to run here", Duration::from_secs(1));
    instances[victim].kill();
    for id in &ids[..8] {
        app.publish(Paid { order: id.clone(), by: format!("card of {id}") }).await.unwrap();
    }
    for (n, id) in ids.iter().enumerate() {
        let outcome = app.saga_outcome("waiting-order", id, Duration::from_secs(30)).await.unwrap();
        let expected: &[(&str, usize)] = if n < 8 {
            assert_eq!(outcome, catga::saga::SagaOutcome::Completed, "{id}");
            &[("reserve:forward", 1), ("paid:forward", 1), ("ship:forward", 1), ("reserve:compensate", 0)]
        } else {
            // No payment: its 4 s wait ended, on a survivor.
            let catga::saga::SagaOutcome::Compensated { error } = &outcome else { panic!("{id}: {outcome:?}") };
            assert!(error.contains("no `Paid` with order = park-"), "{error}");
            &[("reserve:forward", 1), ("paid:forward", 0), ("ship:forward", 0), ("reserve:compensate", 1)]
        };
        for (what, times) in expected {
            let applied = app.store().set_members(&Key::new(format!("ledger:{id}"), *what)).await.unwrap();
            assert_eq!(applied.len(), *times, "{id}: {what} applied {applied:?}");
        }
    }
    println!(
        "10 parked sagas, the instance that parked them killed: 8 resumed by their events, 2 compensated when their \
         wait ended, all within {:?} of parking",
        parked_at.elapsed()
    );
    assert!(app.store().set_members(&parked).await.unwrap().is_empty(), "none left parked");
    app.shutdown().await;
}
