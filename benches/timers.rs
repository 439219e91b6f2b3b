//! Time in sagas and messages, measured on a real `redis-server` (and
//! `nats-server` for delivery):
//!
//! 1. **What a look of the timer sweep costs** with 0, 10 000 and 100 000
//!    parked sagas' wake timers waiting (due in an hour): one look reads the
//!    16 scheduled-message queues and a saga type's 8 wake queues for what
//!    is due — it should cost the same whatever waits. Floor: the same 24
//!    `ZRANGEBYSCORE … LIMIT` reads made with raw redis-rs, concurrently.
//! 2. **Timer precision under load**: 5 000 scheduled events due over 5 s,
//!    delivered by two instances over NATS + Redis: due → handled, p50 /
//!    p99 / max.
//!
//! Run: `cargo bench --bench timers` (about a minute after the build).
//! Needs `redis-server` and `nats-server` on PATH (started here on free
//! ports). One JSON line per case.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use catga::prelude::*;
use catga::schedule::Schedule;
use catga::store::{Key, Store};
use catga_suite::{NatsServer, RedisServer};
use futures_util::StreamExt;
use hdrhistogram::Histogram;

const LOOKS: usize = 200;
const PRECISION_EVENTS: u64 = 5_000;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "bench.timers.due")]
struct Due {
    /// When it was due (epoch ms).
    at: u64,
}

static LATE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[catga::event(queue = "bench-timers")]
async fn due(ev: Due) -> Result<(), HandlerError> {
    let now = epoch_ms();
    LATE.lock().unwrap().push(now.saturating_sub(ev.at));
    Ok(())
}

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The keys one look reads: 16 message queues, one saga type's 8 wake queues.
fn queues() -> Vec<Key> {
    let mut keys: Vec<Key> = (0..16).map(|n| Key::new(format!("timers:{n}"), "q")).collect();
    keys.extend((0..8).map(|n| Key::new(format!("saga-wake:bench-park:{n}"), "q")));
    keys
}

/// Median and p99 of `LOOKS` looks, in µs.
async fn looks(store: &Store, raw: &redis::aio::MultiplexedConnection) -> (u64, u64, u64) {
    let keys = queues();
    let mut catga = Histogram::<u64>::new(3).unwrap();
    let mut floor = Histogram::<u64>::new(3).unwrap();
    for _ in 0..LOOKS {
        let now = epoch_ms();
        let started = Instant::now();
        let reads = keys.iter().map(|k| store.timers_due(k, now + 250, now, 512));
        for read in futures_util::future::join_all(reads).await {
            read.unwrap();
        }
        catga.record(started.elapsed().as_micros() as u64).unwrap();
        let started = Instant::now();
        let reads = keys.iter().map(|k| {
            let mut conn = raw.clone();
            let key = format!("{}:due", k.stored());
            async move {
                let _: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(now + 250)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(512)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        });
        futures_util::future::join_all(reads).await;
        floor.record(started.elapsed().as_micros() as u64).unwrap();
    }
    (catga.value_at_quantile(0.5), catga.value_at_quantile(0.99), floor.value_at_quantile(0.5))
}

/// Park `n` more wake timers (due in an hour) over the 8 wake queues.
async fn park(store: &Store, from: u64, n: u64) {
    let due = epoch_ms() + 3_600_000;
    futures_util::stream::iter(from..from + n)
        .map(|i| {
            let store = store.clone();
            async move {
                let id = format!("parked-{i}");
                let queue = Key::new(format!("saga-wake:bench-park:{}", i % 8), "q");
                store.timer_put(&queue, &id, due, b"", true).await.unwrap();
            }
        })
        .buffer_unordered(128)
        .collect::<Vec<()>>()
        .await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (redis_server, nats_server) = (RedisServer::start(), NatsServer::start());
    let (redis_url, nats_url) = (redis_server.url(), nats_server.url());
    rt.block_on(async move {
        let store = Store::connect(&redis_url).await.unwrap();
        let raw = redis::Client::open(redis_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let mut parked = 0;
        for target in [0, 10_000, 100_000] {
            park(&store, parked, target - parked).await;
            parked = target;
            let (p50, p99, floor) = looks(&store, &raw).await;
            println!(
                "timer sweep look with {parked:>6} parked sagas waiting: p50 {p50} µs, p99 {p99} µs (raw \
                 ZRANGEBYSCORE ×24: {floor} µs, ratio {:.2})",
                floor as f64 / p50.max(1) as f64
            );
            println!(
                "{{\"bench\":\"timers\",\"case\":\"look\",\"parked\":{parked},\"look_p50_us\":{p50},\"look_p99_us\":{p99},\
                 \"floor_p50_us\":{floor},\"ratio\":{:.3}}}",
                floor as f64 / p50.max(1) as f64
            );
        }

        // Precision: two instances deliver and handle 5 000 events due over 5 s.
        let mut apps = Vec::new();
        for i in 0..2 {
            let app = Catga::builder()
                .service("bench-timers")
                .instance_id(format!("bench-timers-{i}"))
                .nats_url(&nats_url)
                .redis_url(&redis_url)
                .handlers_where(|h| h.subject.starts_with("bench.timers."))
                .start()
                .await
                .unwrap();
            apps.push(app);
        }
        let first = epoch_ms() + 3_000;
        let spread = 5_000 / PRECISION_EVENTS.max(1);
        futures_util::stream::iter(0..PRECISION_EVENTS)
            .map(|i| {
                let app = apps[(i % 2) as usize].clone();
                async move {
                    let at = first + i * spread;
                    let when = Schedule::at(UNIX_EPOCH + Duration::from_millis(at));
                    app.schedule_publish(when, Due { at }).await.unwrap();
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
        assert!(epoch_ms() < first, "scheduling took longer than the 3 s head start");
        let limit = Instant::now() + Duration::from_secs(30);
        while (LATE.lock().unwrap().len() as u64) < PRECISION_EVENTS && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let late = LATE.lock().unwrap().clone();
        let mut hist = Histogram::<u64>::new(3).unwrap();
        for l in &late {
            hist.record(*l).unwrap();
        }
        let (p50, p99, max) = (hist.value_at_quantile(0.5), hist.value_at_quantile(0.99), hist.max());
        println!(
            "timer precision: {} of {PRECISION_EVENTS} scheduled events (due over 5 s, 2 instances, NATS + Redis): \
             due → handled p50 {p50} ms, p99 {p99} ms, max {max} ms",
            late.len()
        );
        println!(
            "{{\"bench\":\"timers\",\"case\":\"precision\",\"events\":{PRECISION_EVENTS},\"delivered\":{},\
             \"late_p50_ms\":{p50},\"late_p99_ms\":{p99},\"late_max_ms\":{max}}}",
            late.len()
        );
        for app in apps {
            app.shutdown().await;
        }
    });
}
