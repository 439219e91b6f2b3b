//! Durable (JetStream) command round trip against core NATS request-reply,
//! both through Catga: one `nats-server -js` (started here on a free
//! 127.0.0.1 port, storing in a temp dir), the same 128-byte payload, one
//! responder instance with both handlers, at 1 and 16 sends in flight.
//!
//! Run: `cargo bench --bench durable` (about 12 s). Needs `nats-server` on
//! PATH. Ends with one JSON line: absolute figures and durable/core ratios.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga_suite::NatsServer;
use hdrhistogram::Histogram;

const WINDOW: Duration = Duration::from_secs(2);

/// JSON of this is exactly 128 bytes: `{"data":"` + 117 x + `"}`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.core.echo", reply = Core)]
pub struct Core {
    data: String,
}

/// The same, delivered through JetStream.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.durable.echo", reply = Durable, durable)]
pub struct Durable {
    data: String,
}

#[catga::command(queue = "bench")]
async fn core_echo(blob: Core) -> Result<Core, HandlerError> {
    Ok(blob)
}

#[catga::command(queue = "bench")]
async fn durable_echo(blob: Durable) -> Result<Durable, HandlerError> {
    Ok(blob)
}

fn data() -> String {
    let data = "x".repeat(117);
    assert_eq!(serde_json::to_vec(&Core { data: data.clone() }).unwrap().len(), 128);
    data
}

struct Run {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

/// `concurrency` loops sending back to back for `WINDOW`, after a warm-up.
async fn measure<F, Fut>(concurrency: usize, request: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for _ in 0..200 {
        request().await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let loops: Vec<_> = (0..concurrency)
        .map(|_| {
            let (request, stop) = (request.clone(), stop.clone());
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    request().await;
                    h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                }
                h
            })
        })
        .collect();
    tokio::time::sleep(WINDOW).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for l in loops {
        all.add(l.await.unwrap()).unwrap();
    }
    Run {
        rps: all.len() as f64 / started.elapsed().as_secs_f64(),
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start_jetstream();
    let url = nats.url();
    rt.block_on(async move {
        let server = Catga::builder()
            .nats_url(&url)
            .service("bench")
            .handlers_where(|h| h.subject.starts_with("bench."))
            .start()
            .await
            .unwrap();
        let client = Catga::builder().nats_url(&url).service("bench-client").client_only().start().await.unwrap();
        let mut fields = Vec::new();
        for concurrency in [1, 16] {
            let core = {
                let client = client.clone();
                measure(concurrency, move || {
                    let client = client.clone();
                    async move {
                        client.send(Core { data: data() }).await.unwrap();
                    }
                })
                .await
            };
            let durable = {
                let client = client.clone();
                measure(concurrency, move || {
                    let client = client.clone();
                    async move {
                        client.send(Durable { data: data() }).await.unwrap();
                    }
                })
                .await
            };
            let c = concurrency;
            fields.push(format!(
                "\"c{c}_durable_rps\":{:.0},\"c{c}_core_rps\":{:.0},\"c{c}_ratio\":{:.3},\
                 \"c{c}_durable_p50_us\":{},\"c{c}_durable_p99_us\":{},\"c{c}_core_p50_us\":{},\"c{c}_core_p99_us\":{}",
                durable.rps,
                core.rps,
                durable.rps / core.rps,
                durable.p50_us,
                durable.p99_us,
                core.p50_us,
                core.p99_us
            ));
        }
        client.shutdown().await;
        server.shutdown().await;
        println!("{{{}}}", fields.join(","));
    });
}
