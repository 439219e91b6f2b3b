//! Request-reply and publish over one real nats-server: Catga against raw
//! async-nats, same server, same 128-byte payload, one responder each, at
//! 1, 16 and 128 requests in flight. The load generator is this file.
//!
//! Run: `cargo bench --bench nats` (about 20 s). Needs `nats-server` on PATH
//! (started here on a free 127.0.0.1 port). Ends with one JSON line per
//! concurrency and one for publishing.

use std::time::{Duration, Instant};

use catga::prelude::*;
use catga_suite::NatsServer;
use catga_suite::load::closed_loop;
use futures_util::StreamExt;

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
                closed_loop(concurrency, WINDOW, move || {
                    let (raw, payload) = (raw.clone(), payload.clone());
                    async move {
                        raw.request("bench.raw", payload).await.unwrap();
                    }
                })
                .await
            };
            let catga_run = {
                let catga = catga.clone();
                closed_loop(concurrency, WINDOW, move || {
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
