//! Durable (JetStream) command round trip through Catga against its floor,
//! raw async-nats JetStream doing the same legs (publish with a
//! deduplication id and the reply subject in a header, wait for the
//! PubAck; a durable pull consumer takes it, decodes and encodes the same
//! struct, publishes the reply and acks; the sender's reply arrives on a
//! shared wildcard inbox), and against Catga's core request-reply. One
//! `nats-server -js` (started here on a free 127.0.0.1 port, storing in a
//! temp dir), the same 128-byte payload, at 1 and 16 sends in flight.
//!
//! Protocol: ROUNDS interleaved rounds of (Catga durable, raw JetStream,
//! Catga core), each a closed loop of WINDOW after a warm-up; the ratios
//! are the medians of the rounds' ratios. Beside each figure, the CPU time
//! per request of this process (both ends) and of nats-server (from /proc),
//! and this process's context switches per request (`switches_per_req`).
//!
//! Run: `cargo bench --bench durable` (about 50 s). Needs `nats-server` on
//! PATH. Ends with one JSON line per concurrency: `ratio` (durable /
//! raw JetStream), `ratio_core` (durable / core), absolute figures.

use std::time::Duration;

use catga::prelude::*;
use catga_suite::NatsServer;
use catga_suite::floor::{RawSender, raw_responder};
use catga_suite::load::{Measured, list, measured, median};

const WINDOW: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 5;
const RAW_SUBJECT: &str = "bench.raw.durable";

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

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start_jetstream();
    let (url, servers) = (nats.url(), [nats.pid()]);
    rt.block_on(async move {
        let server = Catga::builder()
            .nats_url(&url)
            .service("bench")
            .handlers_where(|h| h.subject.starts_with("bench."))
            .start()
            .await
            .unwrap();
        let client = Catga::builder().nats_url(&url).service("bench-client").client_only().start().await.unwrap();
        raw_responder::<Durable>(async_nats::connect(&url).await.unwrap(), "BENCH_RAW_DURABLE", RAW_SUBJECT).await;
        let raw = RawSender::start(async_nats::connect(&url).await.unwrap()).await;
        for concurrency in [1, 16] {
            let (mut durable_runs, mut raw_runs, mut core_runs) =
                (Vec::<Measured>::new(), Vec::<Measured>::new(), Vec::<Measured>::new());
            for _ in 0..ROUNDS {
                let c = client.clone();
                durable_runs.push(
                    measured(&servers, concurrency, WINDOW, move || {
                        let c = c.clone();
                        async move {
                            c.send(Durable { data: data() }).await.unwrap();
                        }
                    })
                    .await,
                );
                let r = raw.clone();
                raw_runs.push(
                    measured(&servers, concurrency, WINDOW, move || {
                        let r = r.clone();
                        async move { r.send(RAW_SUBJECT, &Durable { data: data() }).await }
                    })
                    .await,
                );
                let c = client.clone();
                core_runs.push(
                    measured(&servers, concurrency, WINDOW, move || {
                        let c = c.clone();
                        async move {
                            c.send(Core { data: data() }).await.unwrap();
                        }
                    })
                    .await,
                );
            }
            let ratio = |floor: &[Measured]| {
                median(durable_runs.iter().zip(floor).map(|(d, f)| d.run.rps / f.run.rps).collect())
            };
            let med = |runs: &[Measured], f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
            let rps = |runs: &[Measured]| list(runs.iter().map(|m| m.run.rps));
            println!(
                "{{\"bench\":\"durable\",\"concurrency\":{concurrency},\"ratio\":{:.2},\"ratio_core\":{:.2},\
                 \"durable_rps\":{},\"raw_js_rps\":{},\"core_rps\":{},\
                 \"durable_p50_us\":{:.0},\"raw_js_p50_us\":{:.0},\"core_p50_us\":{:.0},\
                 \"durable_p99_us\":{:.0},\"raw_js_p99_us\":{:.0},\"core_p99_us\":{:.0},\
                 \"cpu_us_per_req\":{{\"durable\":{:.1},\"raw_js\":{:.1},\"core\":{:.1}}},\
                 \"server_cpu_us_per_req\":{{\"durable\":{:.1},\"raw_js\":{:.1},\"core\":{:.1}}},\
                 \"switches_per_req\":{{\"durable\":{:.2},\"raw_js\":{:.2},\"core\":{:.2}}}}}",
                ratio(&raw_runs),
                ratio(&core_runs),
                rps(&durable_runs),
                rps(&raw_runs),
                rps(&core_runs),
                med(&durable_runs, |m| m.run.p50_us as f64),
                med(&raw_runs, |m| m.run.p50_us as f64),
                med(&core_runs, |m| m.run.p50_us as f64),
                med(&durable_runs, |m| m.run.p99_us as f64),
                med(&raw_runs, |m| m.run.p99_us as f64),
                med(&core_runs, |m| m.run.p99_us as f64),
                med(&durable_runs, |m| m.cpu_us),
                med(&raw_runs, |m| m.cpu_us),
                med(&core_runs, |m| m.cpu_us),
                med(&durable_runs, |m| m.servers_cpu_us[0]),
                med(&raw_runs, |m| m.servers_cpu_us[0]),
                med(&core_runs, |m| m.servers_cpu_us[0]),
                med(&durable_runs, |m| m.switches),
                med(&raw_runs, |m| m.switches),
                med(&core_runs, |m| m.switches),
            );
        }
        client.shutdown().await;
        server.shutdown().await;
    });
}
