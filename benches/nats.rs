//! Request-reply and publish over one real nats-server: Catga against raw
//! async-nats, same server, same 128-byte payload, one responder each, at
//! 1, 16 and 128 requests in flight. The load generator is this file.
//!
//! Run: `cargo bench --bench nats` (about 20 s). Needs `nats-server` on PATH
//! (started here on a free 127.0.0.1 port). Ends with one JSON line per
//! concurrency and one for publishing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga_suite::NatsServer;
use futures_util::StreamExt;
use hdrhistogram::Histogram;

const WINDOW: Duration = Duration::from_secs(2);

/// JSON of this is exactly 128 bytes: `{"data":"` + 117 x + `"}`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.echo", reply = Blob)]
pub struct Blob {
    data: String,
}

#[catga::command(queue = "bench")]
async fn echo(blob: Blob) -> Result<Blob, HandlerError> {
    Ok(blob)
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "bench.event")]
pub struct Noted {
    data: String,
}

fn blob() -> Blob {
    let b = Blob { data: "x".repeat(117) };
    assert_eq!(serde_json::to_vec(&b).unwrap().len(), 128);
    b
}

struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `concurrency` loops sending back to back for `WINDOW`.
async fn measure<F, Fut>(concurrency: usize, request: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    // Warm up.
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
    let secs = started.elapsed().as_secs_f64();
    Run {
        rps: all.len() as f64 / secs,
        p50_us: all.value_at_quantile(0.5) as f64,
        p99_us: all.value_at_quantile(0.99) as f64,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start();
    let url = nats.url();
    rt.block_on(async move {
        // Raw responder: a queue subscriber that echoes.
        let raw_server = async_nats::connect(&url).await.unwrap();
        let mut subscription = raw_server.queue_subscribe("bench.raw", "bench".into()).await.unwrap();
        let responder = raw_server.clone();
        tokio::spawn(async move {
            while let Some(m) = subscription.next().await {
                if let Some(reply) = m.reply {
                    responder.publish(reply, m.payload).await.unwrap();
                }
            }
        });
        // Catga responder: one instance with the `echo` handler.
        let _server = Catga::builder()
            .nats_url(&url)
            .service("bench")
            .handlers_where(|h| h.subject == "bench.echo")
            .start()
            .await
            .unwrap();

        let raw = async_nats::connect(&url).await.unwrap();
        let catga = Catga::builder().nats_url(&url).service("bench-client").client_only().start().await.unwrap();
        let payload: bytes::Bytes = serde_json::to_vec(&blob()).unwrap().into();

        let mut lines = Vec::new();
        for concurrency in [1, 16, 128] {
            let raw_run = {
                let (raw, payload) = (raw.clone(), payload.clone());
                measure(concurrency, move || {
                    let (raw, payload) = (raw.clone(), payload.clone());
                    async move {
                        raw.request("bench.raw", payload).await.unwrap();
                    }
                })
                .await
            };
            let catga_run = {
                let catga = catga.clone();
                measure(concurrency, move || {
                    let catga = catga.clone();
                    async move {
                        catga.send(blob()).await.unwrap();
                    }
                })
                .await
            };
            lines.push(format!(
                "{{\"concurrency\":{concurrency},\"catga_rps\":{:.0},\"raw_rps\":{:.0},\"ratio\":{:.2},\
                 \"catga_p50_us\":{},\"catga_p99_us\":{},\"raw_p50_us\":{},\"raw_p99_us\":{}}}",
                catga_run.rps,
                raw_run.rps,
                catga_run.rps / raw_run.rps,
                catga_run.p50_us,
                catga_run.p99_us,
                raw_run.p50_us,
                raw_run.p99_us
            ));
        }

        // Publishing: N events as fast as possible, then a flush.
        let n = 200_000u32;
        let event = Noted { data: "x".repeat(117) };
        let event_bytes: bytes::Bytes = serde_json::to_vec(&event).unwrap().into();
        let t = Instant::now();
        for _ in 0..n {
            raw.publish("bench.raw.event", event_bytes.clone()).await.unwrap();
        }
        raw.flush().await.unwrap();
        let raw_rate = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..n {
            catga.publish(event.clone()).await.unwrap();
        }
        catga.shutdown().await; // flushes
        let catga_rate = n as f64 / t.elapsed().as_secs_f64();
        lines.push(format!(
            "{{\"publish\":true,\"catga_per_s\":{catga_rate:.0},\"raw_per_s\":{raw_rate:.0},\"ratio\":{:.2}}}",
            catga_rate / raw_rate
        ));
        for line in lines {
            println!("{line}");
        }
    });
}
