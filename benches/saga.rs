//! A 3-step saga over NATS + Redis against the floor of any durable 3-step
//! workflow, in one run: one nats-server and one redis-server (standalone,
//! started here on free 127.0.0.1 ports), a responder instance with three
//! `#[command]` handlers (charge, reserve, create), and a client instance
//! (`client_only`) that runs `start_saga::<ThreeSteps>` — two compensatable
//! steps and a pivot, each one `ctx.send` of its command — with a fresh
//! saga id each time. Three cases, at 1 and 16 in flight, in ROUNDS
//! interleaved rounds (sends, baseline, saga, sends, ...) of WINDOW each
//! after a warm-up, latencies in an hdrhistogram; the ratio is the median
//! of the rounds' ratios, and beside each figure the CPU time per
//! operation of this process (client and responder), nats-server and
//! redis-server (from /proc), and this process's context switches per
//! operation (`switches_per_op`):
//!
//! - **sends**: the same three commands, `app.send` one after another;
//! - **baseline**: those three sends plus the fewest Redis writes a durable
//!   3-step workflow needs — one `SET` creating its state and one `SET`
//!   after each step (4), made with raw redis-rs on a separate connection,
//!   sequentially in the same iteration;
//! - **saga**: `start_saga` to `Completed`.
//!
//! Run: `cargo bench --bench saga` (about 60 s); `-- count saga 2000` (or
//! `baseline`) runs only that many of one case, for instruction counts. Needs `nats-server` and
//! `redis-server` on PATH. Prints a table, then one JSON line per
//! concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use catga::prelude::*;
use catga::saga::{SagaContext, SagaOutcome, StepError};
use catga_suite::load::{Measured, list, measured, median};
use catga_suite::{NatsServer, RedisServer};

const WINDOW: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 5;

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.saga.charge", reply = u64)]
pub struct Charge {
    order: u64,
    cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.saga.reserve", reply = u64)]
pub struct Reserve {
    order: u64,
    sku: String,
    quantity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.saga.create", reply = u64)]
pub struct Create {
    order: u64,
    payment: u64,
    reservation: u64,
}

/// Replies with a payment id.
#[catga::command]
async fn charge(cmd: Charge) -> Result<u64, HandlerError> {
    Ok(cmd.order + cmd.cents)
}

/// Replies with a reservation id.
#[catga::command]
async fn reserve(cmd: Reserve) -> Result<u64, HandlerError> {
    Ok(cmd.order + u64::from(cmd.quantity) + cmd.sku.len() as u64)
}

/// Replies with the created order's number.
#[catga::command]
async fn create(cmd: Create) -> Result<u64, HandlerError> {
    Ok(cmd.order ^ cmd.payment ^ cmd.reservation)
}

/// The saga's data: the order and what each step got back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    id: u64,
    cents: u64,
    sku: String,
    quantity: u32,
    payment: Option<u64>,
    reservation: Option<u64>,
    created: Option<u64>,
}

impl Order {
    fn new(id: u64) -> Order {
        Order { id, cents: 4_200, sku: "sku-1234".into(), quantity: 2, payment: None, reservation: None, created: None }
    }

    fn charge(&self) -> Charge {
        Charge { order: self.id, cents: self.cents }
    }

    fn reserve(&self) -> Reserve {
        Reserve { order: self.id, sku: self.sku.clone(), quantity: self.quantity }
    }

    fn create(&self) -> Create {
        Create { order: self.id, payment: self.payment.unwrap_or(0), reservation: self.reservation.unwrap_or(0) }
    }
}

struct ThreeSteps;

#[catga::saga(name = "bench-three-steps")]
impl ThreeSteps {
    #[step(compensate = refund)]
    async fn charge(order: &mut Order, ctx: &SagaContext) -> Result<(), StepError> {
        order.payment = Some(ctx.send(order.charge()).await?);
        Ok(())
    }

    #[step(compensate = release)]
    async fn reserve(order: &mut Order, ctx: &SagaContext) -> Result<(), StepError> {
        order.reservation = Some(ctx.send(order.reserve()).await?);
        Ok(())
    }

    #[step(pivot)]
    async fn create(order: &mut Order, ctx: &SagaContext) -> Result<(), StepError> {
        order.created = Some(ctx.send(order.create()).await?);
        Ok(())
    }

    // Every step succeeds here, so the compensations never run.
    async fn refund(_order: &Order, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn release(_order: &Order, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

/// The three commands, one after another, as the saga's steps send them.
async fn three_sends(app: &App, id: u64) -> Order {
    let mut order = Order::new(id);
    order.payment = Some(app.send(order.charge()).await.unwrap());
    order.reservation = Some(app.send(order.reserve()).await.unwrap());
    order.created = Some(app.send(order.create()).await.unwrap());
    order
}

/// One raw `SET` of `value` at `key`.
async fn set(redis: &mut redis::aio::MultiplexedConnection, key: &str, value: &[u8]) {
    let _: () = redis::cmd("SET").arg(key).arg(value).query_async(redis).await.unwrap();
}

/// The baseline's operation `n`: three sends and four raw `SET`s.
async fn baseline_once(client: &App, raw: &mut redis::aio::MultiplexedConnection, prefix: u64, n: u64) {
    let key = format!("raw:{{{prefix}-{n}}}:state");
    let mut order = Order::new(n);
    set(raw, &key, &serde_json::to_vec(&order).unwrap()).await;
    order.payment = Some(client.send(order.charge()).await.unwrap());
    set(raw, &key, &serde_json::to_vec(&order).unwrap()).await;
    order.reservation = Some(client.send(order.reserve()).await.unwrap());
    set(raw, &key, &serde_json::to_vec(&order).unwrap()).await;
    order.created = Some(client.send(order.create()).await.unwrap());
    set(raw, &key, &serde_json::to_vec(&order).unwrap()).await;
}

/// Saga `n`, started and run to its end.
async fn saga_once(client: &App, prefix: u64, n: u64) {
    let id = format!("{prefix}-{n}");
    let outcome = client.start_saga::<ThreeSteps>(&id, Order::new(n)).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
}

/// `count` operations of one case (`saga` or `baseline`), CONCURRENCY (16
/// unless set) at a time, and nothing else: for instruction counts,
/// `valgrind --tool=callgrind <binary> count saga 2000`.
async fn count(client: &App, raw: &redis::aio::MultiplexedConnection, case: &str, count: u64) {
    let concurrency: u64 = std::env::var("CONCURRENCY").ok().and_then(|c| c.parse().ok()).unwrap_or(16);
    let next = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, mut raw, next, case) = (client.clone(), raw.clone(), next.clone(), case.to_owned());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        break;
                    }
                    match case.as_str() {
                        "saga" => saga_once(&client, u64::MAX, n).await,
                        "baseline" => baseline_once(&client, &mut raw, u64::MAX, n).await,
                        other => panic!("count: no case {other:?} (saga or baseline)"),
                    }
                }
            })
        })
        .collect();
    for l in loops {
        l.await.unwrap();
    }
}

/// The shared closed loop, with a number never given before for each
/// request, and the CPU it took (this process: client and responder; the
/// servers given).
async fn measure<F, Fut>(servers: &[u32], concurrency: usize, request: F) -> Measured
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    measured(servers, concurrency, WINDOW, move || request(next.fetch_add(1, Ordering::Relaxed))).await
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start();
    let redis_server = RedisServer::start();
    let (nats_url, redis_url) = (nats.url(), redis_server.url());
    let servers = [nats.pid(), redis_server.pid()];
    rt.block_on(async move {
        let _responder = Catga::builder()
            .service("bench-saga")
            .nats_url(&nats_url)
            .redis_url(&redis_url)
            .handlers_where(|h| h.subject.starts_with("bench.saga."))
            .start()
            .await
            .unwrap();
        let client = Catga::builder()
            .service("bench-saga-client")
            .nats_url(&nats_url)
            .redis_url(&redis_url)
            .client_only()
            .start()
            .await
            .unwrap();
        assert_eq!(client.store().name(), "redis");
        let raw = redis::Client::open(redis_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let args: Vec<String> = std::env::args().collect();
        if let Some(at) = args.iter().position(|a| a == "count") {
            let n = args.get(at + 2).and_then(|n| n.parse().ok()).expect("count <case> <n>");
            count(&client, &raw, &args[at + 1], n).await;
            client.shutdown().await;
            return;
        }
        // Saga ids and baseline keys are unique across cases and rounds.
        let case = Arc::new(AtomicU64::new(0));

        let mut rows = Vec::new();
        let mut lines = Vec::new();
        for concurrency in [1, 16] {
            let (mut sends, mut baseline, mut saga) = (Vec::new(), Vec::new(), Vec::new());
            for round in 1..=ROUNDS {
                eprintln!("in flight {concurrency}, round {round} of {ROUNDS}: three sends, baseline, saga");
                let c = client.clone();
                sends.push(
                    measure(&servers, concurrency, move |n| {
                        let c = c.clone();
                        async move {
                            three_sends(&c, n).await;
                        }
                    })
                    .await,
                );
                let (c, raw) = (client.clone(), raw.clone());
                let prefix = case.fetch_add(1, Ordering::Relaxed);
                baseline.push(
                    measure(&servers, concurrency, move |n| {
                        let (c, mut raw) = (c.clone(), raw.clone());
                        async move {
                            baseline_once(&c, &mut raw, prefix, n).await;
                        }
                    })
                    .await,
                );
                let c = client.clone();
                let prefix = case.fetch_add(1, Ordering::Relaxed);
                saga.push(
                    measure(&servers, concurrency, move |n| {
                        let c = c.clone();
                        async move {
                            saga_once(&c, prefix, n).await;
                        }
                    })
                    .await,
                );
            }
            let ratio = median(saga.iter().zip(&baseline).map(|(s, b)| s.run.rps / b.run.rps).collect());
            let med = |runs: &[Measured], f: &dyn Fn(&Measured) -> f64| median(runs.iter().map(f).collect());
            let rps = |runs: &[Measured]| list(runs.iter().map(|m| m.run.rps));
            for (name, runs) in [("three sends", &sends), ("baseline: sends + 4 SETs", &baseline), ("saga", &saga)] {
                rows.push(format!(
                    "| {concurrency:>9} | {name:<24} | {:>9.0} | {:>6.0} | {:>6.0} | {:>9.1} | {:>6.1} | {:>6.1} |",
                    med(runs, &|m| m.run.rps),
                    med(runs, &|m| m.run.p50_us as f64),
                    med(runs, &|m| m.run.p99_us as f64),
                    med(runs, &|m| m.cpu_us),
                    med(runs, &|m| m.servers_cpu_us[0]),
                    med(runs, &|m| m.servers_cpu_us[1]),
                ));
            }
            rows.push(format!("| {concurrency:>9} | saga / baseline (median of the rounds' ratios): {ratio:.2} |"));
            let cpu = |runs: &[Measured]| {
                format!(
                    "{{\"process\":{:.1},\"nats\":{:.1},\"redis\":{:.1}}}",
                    med(runs, &|m| m.cpu_us),
                    med(runs, &|m| m.servers_cpu_us[0]),
                    med(runs, &|m| m.servers_cpu_us[1])
                )
            };
            lines.push(format!(
                "{{\"bench\":\"saga\",\"concurrency\":{concurrency},\"ratio\":{ratio:.2},\
                 \"saga_per_s\":{},\"baseline_per_s\":{},\"sends_per_s\":{},\
                 \"saga_p50_us\":{:.0},\"saga_p99_us\":{:.0},\"baseline_p50_us\":{:.0},\"baseline_p99_us\":{:.0},\
                 \"sends_p50_us\":{:.0},\"sends_p99_us\":{:.0},\
                 \"cpu_us_per_op\":{{\"saga\":{},\"baseline\":{},\"sends\":{}}},\
                 \"switches_per_op\":{{\"saga\":{:.2},\"baseline\":{:.2},\"sends\":{:.2}}}}}",
                rps(&saga),
                rps(&baseline),
                rps(&sends),
                med(&saga, &|m| m.run.p50_us as f64),
                med(&saga, &|m| m.run.p99_us as f64),
                med(&baseline, &|m| m.run.p50_us as f64),
                med(&baseline, &|m| m.run.p99_us as f64),
                med(&sends, &|m| m.run.p50_us as f64),
                med(&sends, &|m| m.run.p99_us as f64),
                cpu(&saga),
                cpu(&baseline),
                cpu(&sends),
                med(&saga, &|m| m.switches),
                med(&baseline, &|m| m.switches),
                med(&sends, &|m| m.switches),
            ));
        }
        println!("Medians of {ROUNDS} interleaved rounds of {WINDOW:?} each; CPU in µs per operation.");
        println!("| in flight | case                     |     per s | p50 µs | p99 µs | CPU here | nats  | redis  |");
        println!("|-----------|--------------------------|-----------|--------|--------|----------|-------|--------|");
        for row in rows {
            println!("{row}");
        }
        for line in lines {
            println!("{line}");
        }
        client.shutdown().await;
    });
    drop(redis_server);
    drop(nats);
}
