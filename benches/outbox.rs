//! The transactional outbox against the unsafe way it replaces, in one run:
//! one nats-server (started here), a fresh database on the machine's
//! PostgreSQL (or one started here; see `catga_suite::postgres`), a
//! responder instance with two `#[command]` handlers and a `client_only`
//! sender.
//!
//! - **handler throughput**: each request adds to one of 1 000 accounts
//!   (`UPDATE .. RETURNING`) and publishes the new balance —
//!   *outbox*: `Outbox::begin` (the inbox row), the update,
//!   `tx.publish`, `commit_with(balance)`; *baseline*: `pool.begin()`, the
//!   update, `commit`, then `ctx.publish` (a crash between the two loses
//!   the event; a copy of the request changes the balance twice). At 1
//!   and 16 in flight, 2 s windows, interleaved (baseline, outbox) ×
//!   ROUNDS; the ratio is the median of the rounds'.
//! - **relay latency**: commit returned → the event arrives at a plain
//!   NATS subscriber, for 2 000 events committed 400 a second (one at a
//!   time) and 2 000 committed as fast as 16 writers go; the floor is the
//!   same commit followed by a direct `publish`.
//!
//! Run: `cargo bench --bench outbox` (about 40 s). Prints a table, then one
//! JSON line per case.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catga::outbox::Begin;
use catga::prelude::*;
use catga_suite::load::{Run, closed_loop, median};
use catga_suite::{NatsServer, PgDatabase};
use futures_util::StreamExt;
use hdrhistogram::Histogram;

const WINDOW: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;
const ACCOUNTS: u64 = 1_000;
const EVENTS: u64 = 2_000;

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.outbox.deposit", reply = i64)]
pub struct DepositOutbox {
    account: u64,
    amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.outbox.deposit-direct", reply = i64)]
pub struct DepositDirect {
    account: u64,
    amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "bench.outbox.deposited")]
pub struct Deposited {
    account: u64,
    balance: i64,
    /// Which event of a latency run (0: a handler's).
    n: u64,
}

const UPDATE: &str = "UPDATE bench_accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance";

#[catga::command]
async fn deposit_outbox(cmd: DepositOutbox, ctx: Context) -> Result<i64, HandlerError> {
    let mut tx = match ctx.outbox()?.begin(&ctx).await? {
        Begin::New(tx) => tx,
        Begin::Done(balance) => return Ok(balance),
    };
    let (balance,): (i64,) =
        sqlx::query_as(UPDATE).bind(cmd.account as i64).bind(cmd.amount).fetch_one(&mut *tx).await?;
    tx.key(format!("account:{}", cmd.account)).publish(Deposited { account: cmd.account, balance, n: 0 })?;
    tx.commit_with(&balance).await?;
    Ok(balance)
}

#[catga::command]
async fn deposit_direct(cmd: DepositDirect, ctx: Context) -> Result<i64, HandlerError> {
    let mut tx = ctx.outbox()?.pool().begin().await?;
    let (balance,): (i64,) =
        sqlx::query_as(UPDATE).bind(cmd.account as i64).bind(cmd.amount).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    ctx.publish(Deposited { account: cmd.account, balance, n: 0 }).await?;
    Ok(balance)
}

/// When each latency-run event arrived at a plain subscriber.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<HashMap<u64, Instant>>>);

impl Arrivals {
    async fn subscribe(url: &str) -> Arrivals {
        let client = async_nats::connect(url).await.unwrap();
        let mut sub = client.subscribe("bench.outbox.deposited").await.unwrap();
        client.flush().await.unwrap();
        let arrivals = Arrivals::default();
        let into = arrivals.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(message) = sub.next().await {
                let at = Instant::now();
                let event: Deposited = serde_json::from_slice(&message.payload).unwrap();
                if event.n > 0 {
                    into.0.lock().unwrap().insert(event.n, at);
                }
            }
        });
        arrivals
    }

    async fn wait_for(&self, ns: &[u64]) -> HashMap<u64, Instant> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let seen = self.0.lock().unwrap();
                if ns.iter().all(|n| seen.contains_key(n)) {
                    return ns.iter().map(|n| (*n, seen[n])).collect();
                }
            }
            assert!(Instant::now() < deadline, "events missing after 60 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// (p50, p99, max) of commit → arrival, µs.
fn lags(committed: &HashMap<u64, Instant>, arrived: &HashMap<u64, Instant>) -> (u64, u64, u64) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for (n, at) in committed {
        h.record(arrived[n].saturating_duration_since(*at).as_micros().max(1) as u64).unwrap();
    }
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
}

/// Commit `EVENTS` events from `writers` concurrent writers (each paced to
/// `per_s / writers` a second when `per_s` is set): through the outbox, or
/// committed then published directly. When each commit returned.
async fn commit_events(app: &App, first: u64, writers: u64, per_s: Option<u64>, outbox: bool) -> HashMap<u64, Instant> {
    let committed = Arc::new(Mutex::new(HashMap::new()));
    let per_writer = EVENTS / writers;
    let tasks = (0..writers).map(|w| {
        let (app, committed) = (app.clone(), committed.clone());
        async move {
            let started = Instant::now();
            for i in 0..per_writer {
                if let Some(per_s) = per_s {
                    let at = started + Duration::from_secs_f64(i as f64 * writers as f64 / per_s as f64);
                    tokio::time::sleep_until(at.into()).await;
                }
                let n = first + w * per_writer + i;
                let event = Deposited { account: n % ACCOUNTS, balance: 0, n };
                let store = app.outbox().unwrap();
                if outbox {
                    let mut tx = store.transaction(&app).await.unwrap();
                    tx.key(format!("account:{}", n % ACCOUNTS)).publish(event).unwrap();
                    tx.commit().await.unwrap();
                    committed.lock().unwrap().insert(n, Instant::now());
                } else {
                    let mut tx = store.pool().begin().await.unwrap();
                    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
                    tx.commit().await.unwrap();
                    committed.lock().unwrap().insert(n, Instant::now());
                    app.publish(event).await.unwrap();
                }
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    Arc::try_unwrap(committed).ok().unwrap().into_inner().unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start();
    let db = PgDatabase::create();
    db.sql("CREATE TABLE bench_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)");
    db.sql(&format!("INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(0, {}) g", ACCOUNTS - 1));
    let (nats_url, pg_url) = (nats.url(), db.url());
    rt.block_on(async move {
        let responder = Catga::builder()
            .service("bench-outbox")
            .nats_url(&nats_url)
            .postgres_url(&pg_url)
            .handlers_where(|h| h.subject.starts_with("bench.outbox."))
            .start()
            .await
            .unwrap();
        let client = Catga::builder()
            .service("bench-outbox-client")
            .nats_url(&nats_url)
            .postgres_url(&pg_url)
            .client_only()
            .start()
            .await
            .unwrap();
        let next = Arc::new(AtomicU64::new(0));
        let request = |outbox: bool| {
            let (client, next) = (client.clone(), next.clone());
            move || {
                let (client, n) = (client.clone(), next.fetch_add(1, Ordering::Relaxed));
                async move {
                    let account = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % ACCOUNTS;
                    if outbox {
                        client.send(DepositOutbox { account, amount: 1 }).await.unwrap();
                    } else {
                        client.send(DepositDirect { account, amount: 1 }).await.unwrap();
                    }
                }
            }
        };
        let mut rows = Vec::new();
        let mut lines = Vec::new();
        for concurrency in [1, 16] {
            let (mut base_runs, mut outbox_runs, mut ratios): (Vec<Run>, Vec<Run>, Vec<f64>) = Default::default();
            for round in 0..ROUNDS {
                eprintln!("in flight {concurrency}, round {}: baseline, outbox", round + 1);
                let base = closed_loop(concurrency, WINDOW, request(false)).await;
                let outbox = closed_loop(concurrency, WINDOW, request(true)).await;
                ratios.push(outbox.rps / base.rps);
                base_runs.push(base);
                outbox_runs.push(outbox);
            }
            let pick = |runs: &[Run]| {
                let rps = median(runs.iter().map(|r| r.rps).collect());
                *runs.iter().find(|r| r.rps == rps).unwrap()
            };
            let (base, outbox, ratio) = (pick(&base_runs), pick(&outbox_runs), median(ratios));
            for (name, run) in [("baseline: tx, then publish", base), ("outbox + inbox", outbox)] {
                rows.push(format!(
                    "| {concurrency:>9} | {name:<26} | {:>7.0} | {:>6} | {:>6} |",
                    run.rps, run.p50_us, run.p99_us
                ));
            }
            lines.push(format!(
                "{{\"case\":\"handler\",\"concurrency\":{concurrency},\"outbox_per_s\":{:.0},\"baseline_per_s\":{:.0},\
                 \"ratio\":{ratio:.2},\"outbox_p50_us\":{},\"outbox_p99_us\":{},\"baseline_p50_us\":{},\
                 \"baseline_p99_us\":{},\"rounds\":{ROUNDS}}}",
                outbox.rps, base.rps, outbox.p50_us, outbox.p99_us, base.p50_us, base.p99_us
            ));
        }
        let arrivals = Arrivals::subscribe(&nats_url).await;
        let mut first = 1;
        for (name, writers, per_s) in [("paced 400/s", 1, Some(400)), ("16 writers, unpaced", 16, None)] {
            let mut figures = Vec::new();
            for outbox in [false, true] {
                eprintln!("relay latency, {name}, {}", if outbox { "outbox" } else { "direct publish" });
                let started = Instant::now();
                let committed = commit_events(&client, first, writers, per_s, outbox).await;
                let ns: Vec<u64> = committed.keys().copied().collect();
                let arrived = arrivals.wait_for(&ns).await;
                let rate = ns.len() as f64 / started.elapsed().as_secs_f64();
                first += EVENTS;
                figures.push((lags(&committed, &arrived), rate));
            }
            let [((fp50, fp99, fmax), frate), ((p50, p99, max), rate)] = figures[..] else { unreachable!() };
            rows.push(format!(
                "| relay {name:<20} | commit → arrival p50 {p50} µs, p99 {p99} µs, max {max} µs ({rate:.0}/s) | direct publish: p50 {fp50} µs, p99 {fp99} µs, max {fmax} µs ({frate:.0}/s) |"
            ));
            lines.push(format!(
                "{{\"case\":\"relay\",\"load\":\"{name}\",\"events\":{EVENTS},\"p50_us\":{p50},\"p99_us\":{p99},\"max_us\":{max},\
                 \"per_s\":{rate:.0},\"floor_p50_us\":{fp50},\"floor_p99_us\":{fp99},\"floor_max_us\":{fmax},\"floor_per_s\":{frate:.0}}}"
            ));
        }
        println!("| in flight | case                       |   per s | p50 µs | p99 µs |");
        println!("|-----------|----------------------------|---------|--------|--------|");
        for row in rows {
            println!("{row}");
        }
        for line in lines {
            println!("{line}");
        }
        client.shutdown().await;
        responder.shutdown().await;
    });
    drop(db);
    drop(nats);
}
