//! Scheduled messages: delivered at their time, once, by whichever instance
//! is up — in memory (the same semantics, instances of one process), and
//! across real processes over nats-server and redis-server: every instance
//! killed (`kill -9`) before the messages fall due and new ones started; a
//! Redis Cluster; a durable command through JetStream. Every wait is bounded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use catga::prelude::*;
use catga::schedule::Schedule;
use catga::store::{Key, Store};
use catga::transport::memory::MemoryBus;
use catga_suite::{NatsServer, RedisCluster, RedisServer, ServiceProcess};

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-test-service");

/// What the in-process handlers received: (tag, n, when).
static SEEN: Mutex<Vec<(String, u64, SystemTime)>> = Mutex::new(Vec::new());

fn seen(tag: &str) -> Vec<(u64, SystemTime)> {
    SEEN.lock().unwrap().iter().filter(|(t, _, _)| t == tag).map(|(_, n, at)| (*n, *at)).collect()
}

/// Wait (bounded) until `tag` was seen `n` times; what was seen.
async fn seen_at_least(tag: &str, n: usize, within: Duration) -> Vec<(u64, SystemTime)> {
    let deadline = Instant::now() + within;
    loop {
        let got = seen(tag);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "t.sched.reminder")]
struct Reminder {
    tag: String,
    n: u64,
}

#[catga::event(queue = "reminders")]
async fn on_reminder(ev: Reminder) -> Result<(), HandlerError> {
    SEEN.lock().unwrap().push((ev.tag, ev.n, SystemTime::now()));
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.sched.ping", reply = ())]
struct Ping {
    tag: String,
    n: u64,
}

#[catga::command(queue = "pings")]
async fn ping(cmd: Ping) -> Result<(), HandlerError> {
    SEEN.lock().unwrap().push((cmd.tag, cmd.n, SystemTime::now()));
    Ok(())
}

async fn instance(bus: &MemoryBus, store: &Store, name: &str, handlers: bool) -> App {
    let builder = Catga::builder().service("sched").instance_id(name).memory_bus(bus.clone()).store(store.clone());
    let builder = if handlers {
        builder.handlers_where(|h| h.subject.starts_with("t.sched."))
    } else {
        builder.handlers_where(|_| false)
    };
    builder.start().await.unwrap()
}

#[tokio::test]
async fn scheduled_events_are_published_at_their_time_once_across_three_instances() {
    let (bus, store) = (MemoryBus::new(), Store::memory());
    let mut apps = Vec::new();
    for i in 0..3 {
        apps.push(instance(&bus, &store, &format!("sched-{i}"), true).await);
    }
    let mut due = BTreeMap::new();
    for n in 0..20 {
        let when = Schedule::after(Duration::from_millis(200 + 20 * n));
        let scheduled = apps[0].schedule_publish(when, Reminder { tag: "three".into(), n }).await.unwrap();
        assert!(scheduled.new);
        due.insert(n, scheduled.due);
    }
    let got = seen_at_least("three", 20, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // nothing more comes
    let got_now = seen("three");
    assert_eq!(got_now.len(), 20, "each once (one queue group): {got:?}");
    for (n, at) in got_now {
        assert!(at >= due[&n], "{n} delivered {:?} early", due[&n].duration_since(at).unwrap_or_default());
    }
    // Counted: scheduled where scheduled, delivered wherever delivered.
    let count = |app: &App, line: &str| -> u64 {
        let text = app.metrics_text();
        text.lines().find(|l| l.starts_with(line)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    };
    assert_eq!(count(&apps[0], "catga_messages_scheduled_total{subject=\"t.sched.reminder\"}"), 20);
    let delivered = "catga_scheduled_deliveries_total{subject=\"t.sched.reminder\",outcome=\"delivered\"}";
    assert_eq!(apps.iter().map(|a| count(a, delivered)).sum::<u64>(), 20);
    assert_eq!(apps.iter().map(|a| count(a, "catga_scheduled_lateness_seconds_count")).sum::<u64>(), 20);
    for app in apps {
        assert_eq!(app.shutdown().await.abandoned, 0);
    }
}

#[tokio::test]
async fn a_scheduled_command_waits_for_a_handler_that_is_not_up_yet() {
    let (bus, store) = (MemoryBus::new(), Store::memory());
    let scheduler = instance(&bus, &store, "only-schedules", false).await;
    scheduler
        .schedule_send(Schedule::after(Duration::from_millis(50)), Ping { tag: "later".into(), n: 1 })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(seen("later").is_empty(), "no handler yet");
    let handler = instance(&bus, &store, "handles", true).await;
    let got = seen_at_least("later", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "delivered once the handler is up (retried on no_handler)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen("later").len(), 1, "and once");
    handler.shutdown().await;
    scheduler.shutdown().await;
}

#[tokio::test]
async fn a_named_schedule_is_kept_once_and_a_cancelled_one_is_never_delivered() {
    let (bus, store) = (MemoryBus::new(), Store::memory());
    let app = instance(&bus, &store, "named", true).await;
    let later = Schedule::after(Duration::from_millis(400)).id("reminder:o-1");
    let first = app.schedule_publish(later.clone(), Reminder { tag: "named".into(), n: 1 }).await.unwrap();
    assert_eq!((first.id.as_str(), first.new), ("reminder:o-1", true));
    let again = app.schedule_publish(later, Reminder { tag: "named".into(), n: 99 }).await.unwrap();
    assert!(!again.new, "the waiting one is kept");
    assert!(app.cancel_scheduled("reminder:o-1").await.unwrap());
    assert!(!app.cancel_scheduled("reminder:o-1").await.unwrap(), "gone");
    let soon = Schedule::after(Duration::from_millis(50)).id("reminder:o-2");
    app.schedule_publish(soon, Reminder { tag: "named".into(), n: 2 }).await.unwrap();
    let got = seen_at_least("named", 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(seen("named").iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2], "{got:?}");
    assert!(!app.cancel_scheduled("reminder:o-2").await.unwrap(), "delivered: nothing to cancel");
    let bad = app.schedule_publish(Schedule::after(Duration::ZERO).id(""), Reminder { tag: "x".into(), n: 0 });
    assert!(bad.await.unwrap_err().to_string().contains("1 to 200 characters"));
    app.shutdown().await;
}

// ---------- across processes ----------

// The test service's contracts, as a client copies them.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.tick", reply = ())]
struct Tick {
    tag: String,
    n: u64,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.work", reply = (String, u64), durable)]
struct DurableWork {
    n: u64,
    sleep_ms: u64,
}

fn service(nats: &NatsServer, redis: &str, id: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    let nats = nats.url();
    let mut env = vec![
        ("CATGA_NATS_URL", nats.as_str()),
        ("CATGA_REDIS_URL", redis),
        ("CATGA_SERVICE", "svc"),
        ("CATGA_INSTANCE_ID", id),
    ];
    env.extend_from_slice(extra);
    ServiceProcess::started(SERVICE, &env)
}

async fn client(nats: &NatsServer, redis: &str) -> App {
    Catga::builder().service("scheduler").nats_url(nats.url()).redis_url(redis).client_only().start().await.unwrap()
}

/// The ticks of `tag` the service counted: n → (runs, first run at epoch ms).
async fn ticks(app: &App, tag: &str, n: u64) -> BTreeMap<u64, (i64, u64)> {
    let scope = format!("tick:{tag}");
    let mut out = BTreeMap::new();
    for i in 0..n {
        let runs = app.store().incr(&Key::new(&scope, i.to_string()), 0).await.unwrap();
        if runs > 0 {
            let at = app.store().get(&Key::new(&scope, format!("{i}:at"))).await.unwrap().unwrap();
            out.insert(i, (runs, String::from_utf8(at.value).unwrap().parse().unwrap()));
        }
    }
    out
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_commands_outlive_a_kill_9_of_every_instance_and_are_delivered_once_after_a_restart() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let mut first: Vec<ServiceProcess> =
        (0..2).map(|i| service(&nats, &redis.url(), &format!("tick-a{i}"), &[])).collect();
    let app = client(&nats, &redis.url()).await;
    let mut due = BTreeMap::new();
    for n in 0..30 {
        let when = Schedule::after(Duration::from_millis(1500 + 50 * n));
        let scheduled = app.schedule_send(when, Tick { tag: "restart".into(), n }).await.unwrap();
        due.insert(n, epoch_ms(scheduled.due));
    }
    // Every instance dies before anything is due; nothing is delivered
    // while none runs.
    for p in &mut first {
        p.kill();
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(ticks(&app, "restart", 30).await.is_empty(), "no instance ran");
    let restarted = Instant::now();
    let _second: Vec<ServiceProcess> =
        (0..2).map(|i| service(&nats, &redis.url(), &format!("tick-b{i}"), &[])).collect();
    let mut got = BTreeMap::new();
    while got.len() < 30 && restarted.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = ticks(&app, "restart", 30).await;
    }
    let after = restarted.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = ticks(&app, "restart", 30).await;
    println!(
        "30 scheduled commands, every instance killed before they were due: all delivered {after:?} after the restart"
    );
    assert_eq!(got.len(), 30, "every one delivered: {got:?}");
    for (n, (runs, at)) in &got {
        assert_eq!(*runs, 1, "{n} delivered once");
        assert!(*at >= due[n], "{n} not before it was due");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_commands_are_delivered_at_their_time_once_by_running_instances() {
    let (nats, redis) = (NatsServer::start(), RedisServer::start());
    let _services: Vec<ServiceProcess> =
        (0..3).map(|i| service(&nats, &redis.url(), &format!("tick-live{i}"), &[])).collect();
    let app = client(&nats, &redis.url()).await;
    let mut due = BTreeMap::new();
    for n in 0..40 {
        let when = Schedule::after(Duration::from_millis(300 + 25 * n));
        due.insert(n, epoch_ms(app.schedule_send(when, Tick { tag: "live".into(), n }).await.unwrap().due));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = BTreeMap::new();
    while got.len() < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = ticks(&app, "live", 40).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = ticks(&app, "live", 40).await;
    let late: Vec<u64> = got.iter().map(|(n, (_, at))| at.saturating_sub(due[n])).collect();
    let (mut sorted, len) = (late.clone(), late.len().max(1));
    sorted.sort();
    println!(
        "40 scheduled commands over 3 instances: due → handled p50 {} ms, max {} ms",
        sorted.get(len / 2).copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default()
    );
    assert_eq!(got.len(), 40, "{got:?}");
    for (n, (runs, at)) in &got {
        assert_eq!(*runs, 1, "{n} delivered once");
        assert!(*at >= due[n], "{n} not before it was due");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_scheduled_events_are_delivered_once() {
    let (nats, cluster) = (NatsServer::start(), RedisCluster::start());
    let mut apps = Vec::new();
    for i in 0..3 {
        let app = Catga::builder()
            .service("sched")
            .instance_id(format!("cluster-sched-{i}"))
            .nats_url(nats.url())
            .redis_url(cluster.url())
            .handlers_where(|h| h.subject.starts_with("t.sched."))
            .start()
            .await
            .unwrap();
        apps.push(app);
    }
    // Ids spread over all 16 timer queues, and so over the cluster's shards.
    for n in 0..48 {
        let when = Schedule::after(Duration::from_millis(300 + 10 * n)).id(format!("cluster-{n}"));
        apps[(n % 3) as usize].schedule_publish(when, Reminder { tag: "cluster".into(), n }).await.unwrap();
    }
    let got = seen_at_least("cluster", 48, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ns: Vec<u64> = seen("cluster").iter().map(|(n, _)| *n).collect();
    ns.sort();
    assert_eq!(ns, (0..48).collect::<Vec<_>>(), "each once: {got:?}");
    for app in apps {
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_durable_command_is_stored_in_jetstream_and_handled_once() {
    let (nats, redis) = (NatsServer::start_jetstream(), RedisServer::start());
    let ledger = catga_suite::temp_dir("catga-sched-ledger");
    let path = ledger.join("ledger").to_string_lossy().into_owned();
    let extra = [("CATGA_TEST_DURABLE", "1"), ("CATGA_TEST_LEDGER", path.as_str()), ("CATGA_SERVICE", "dur")];
    let _services: Vec<ServiceProcess> =
        (0..2).map(|i| service(&nats, &redis.url(), &format!("dur-sched-{i}"), &extra)).collect();
    let app = client(&nats, &redis.url()).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let when = Schedule::after(Duration::from_millis(300));
        ids.push(app.schedule_send(when, DurableWork { n, sleep_ms: 0 }).await.unwrap().id);
    }
    let read =
        || -> Vec<String> { std::fs::read_to_string(&path).unwrap_or_default().lines().map(str::to_owned).collect() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while read().len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = read();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    let mut sorted_lines = lines.clone();
    sorted_lines.sort();
    assert_eq!(sorted_lines, sorted_ids, "each handled once, with its scheduled message id");
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(&ledger);
}
