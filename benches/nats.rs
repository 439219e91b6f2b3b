//! Request-reply and publish over one real nats-server, Catga beside two
//! floors measured in the same run: raw async-nats moving the same 128
//! bytes (the limit), and raw async-nats doing the same typed work —
//! serde_json encode and decode of the same struct on both sides (what
//! Catga could at best be). At 1, 16 and 128 requests in flight. Beside
//! them, raw + serde carrying Catga's request headers (message id,
//! `traceparent`, liveness, deadline: built per request, read by the
//! responder): what the metadata alone costs with async-nats's header map,
//! so the gap splits into the wire format's price and Catga's own work
//! (`ratio_meta`; not a target, a diagnosis).
//!
//! Protocol: for each concurrency, ROUNDS interleaved rounds of
//! (Catga, raw, raw+serde, raw+serde+headers), each a closed loop of WINDOW after a warm-up;
//! the ratios are the median of the rounds' ratios. Beside each figure,
//! the CPU time per request of this process (client and responder; from
//! /proc/self/stat) and of the nats-server process, and this process's
//! context switches per request (`switches_per_req`: a thread going to
//! sleep or handing its core over — what a hand-off between threads
//! costs, and what an instruction count does not show).
//!
//! Publishing: PUBLISHED events as fast as possible until a subscriber of
//! this process has received every one (the same end point for all three:
//! Catga publishes, raw publishes of pre-encoded bytes, raw publishes that
//! encode the event with serde_json each time, and those with an event's
//! headers — message id and `traceparent`), interleaved likewise.
//!
//! Run: `cargo bench --bench nats` (about 80 s). Needs `nats-server` on
//! PATH (started here on a free 127.0.0.1 port). Ends with one JSON line
//! per concurrency and one for publishing. `cargo bench --bench nats --
//! logs 2>/dev/null` runs with the log subscriber `Catga::run()` installs
//! (the default configuration; every line carries `"logs":true`).

use std::time::{Duration, Instant};

use catga::prelude::*;
use catga_suite::NatsServer;
use catga_suite::load::{self, Measured, list, median};
use futures_util::StreamExt;

const WINDOW: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 5;
const PUBLISHED: u32 = 100_000;

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

async fn measured<F, Fut>(server: u32, concurrency: usize, request: F) -> Measured
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    load::measured(&[server], concurrency, WINDOW, request).await
}

fn main() {
    let logs = std::env::args().any(|a| a == "logs");
    if logs {
        // Catga's own lines go to standard error.
        assert!(catga::__private::install_default_logs(catga::LogFormat::Plain), "no other subscriber");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start_monitored();
    let (url, server) = (nats.url(), nats.pid());
    let monitor = nats.monitor_port().expect("started with monitoring");
    rt.block_on(async move {
        // Raw responders: queue subscribers that echo the bytes, and that
        // decode the request and encode the reply as a typed handler would.
        let raw_server = async_nats::connect(&url).await.unwrap();
        for (subject, typed) in [("bench.raw", false), ("bench.raw.serde", true), ("bench.raw.meta", true)] {
            let mut subscription = raw_server.queue_subscribe(subject, "bench".into()).await.unwrap();
            let responder = raw_server.clone();
            tokio::spawn(async move {
                while let Some(m) = subscription.next().await {
                    std::hint::black_box(catga_suite::floor::read_meta(&m));
                    let Some(reply) = m.reply else { continue };
                    let body = match typed {
                        true => {
                            let blob: Blob = serde_json::from_slice(&m.payload).unwrap();
                            serde_json::to_vec(&blob).unwrap().into()
                        }
                        false => m.payload,
                    };
                    responder.publish(reply, body).await.unwrap();
                }
            });
        }
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
        for concurrency in [1usize, 16, 128] {
            let (mut catga_runs, mut raw_runs, mut serde_runs, mut meta_runs) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let c = catga.clone();
                catga_runs.push(
                    measured(server, concurrency, move || {
                        let c = c.clone();
                        async move {
                            c.send(blob()).await.unwrap();
                        }
                    })
                    .await,
                );
                let (r, p) = (raw.clone(), payload.clone());
                raw_runs.push(
                    measured(server, concurrency, move || {
                        let (r, p) = (r.clone(), p.clone());
                        async move {
                            r.request("bench.raw", p).await.unwrap();
                        }
                    })
                    .await,
                );
                let r = raw.clone();
                serde_runs.push(
                    measured(server, concurrency, move || {
                        let r = r.clone();
                        async move {
                            let body = serde_json::to_vec(&blob()).unwrap();
                            let reply = r.request("bench.raw.serde", body.into()).await.unwrap();
                            let _: Blob = serde_json::from_slice(&reply.payload).unwrap();
                        }
                    })
                    .await,
                );
                let (r, n) = (raw.clone(), std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)));
                meta_runs.push(
                    measured(server, concurrency, move || {
                        let (r, n) = (r.clone(), n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                        async move {
                            let body = serde_json::to_vec(&blob()).unwrap();
                            let request = async_nats::Request::new().payload(body.into()).headers(catga_suite::floor::meta_headers(n, true));
                            let reply = r.send_request("bench.raw.meta", request).await.unwrap();
                            let _: Blob = serde_json::from_slice(&reply.payload).unwrap();
                        }
                    })
                    .await,
                );
            }
            let rps = |runs: &[Measured]| runs.iter().map(|m| m.run.rps).collect::<Vec<_>>();
            let ratio = median(catga_runs.iter().zip(&raw_runs).map(|(c, r)| c.run.rps / r.run.rps).collect());
            let ratio_serde = median(catga_runs.iter().zip(&serde_runs).map(|(c, r)| c.run.rps / r.run.rps).collect());
            let ratio_meta = median(catga_runs.iter().zip(&meta_runs).map(|(c, r)| c.run.rps / r.run.rps).collect());
            let med = |runs: &[Measured], f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
            lines.push(format!(
                "{{\"bench\":\"nats\",\"logs\":{logs},\"concurrency\":{concurrency},\"ratio\":{ratio:.2},\"ratio_serde\":{ratio_serde:.2},\"ratio_meta\":{ratio_meta:.2},\
                 \"catga_rps\":{},\"raw_rps\":{},\"raw_serde_rps\":{},\"raw_meta_rps\":{},\"raw_meta_p50_us\":{:.0},\
                 \"raw_meta_cpu_us_per_req\":{:.1},\"raw_meta_server_cpu_us_per_req\":{:.1},\
                 \"catga_p50_us\":{:.0},\"raw_p50_us\":{:.0},\"raw_serde_p50_us\":{:.0},\
                 \"catga_p99_us\":{:.0},\"raw_p99_us\":{:.0},\"raw_serde_p99_us\":{:.0},\
                 \"catga_cpu_us_per_req\":{:.1},\"raw_cpu_us_per_req\":{:.1},\"raw_serde_cpu_us_per_req\":{:.1},\
                 \"server_cpu_us_per_req\":{{\"catga\":{:.1},\"raw\":{:.1},\"raw_serde\":{:.1}}},\
                 \"switches_per_req\":{{\"catga\":{:.2},\"raw_serde\":{:.2},\"raw_meta\":{:.2}}}}}",
                list(rps(&catga_runs).into_iter()),
                list(rps(&raw_runs).into_iter()),
                list(rps(&serde_runs).into_iter()),
                list(rps(&meta_runs).into_iter()),
                med(&meta_runs, |m| m.run.p50_us as f64),
                med(&meta_runs, |m| m.cpu_us),
                med(&meta_runs, |m| m.servers_cpu_us[0]),
                med(&catga_runs, |m| m.run.p50_us as f64),
                med(&raw_runs, |m| m.run.p50_us as f64),
                med(&serde_runs, |m| m.run.p50_us as f64),
                med(&catga_runs, |m| m.run.p99_us as f64),
                med(&raw_runs, |m| m.run.p99_us as f64),
                med(&serde_runs, |m| m.run.p99_us as f64),
                med(&catga_runs, |m| m.cpu_us),
                med(&raw_runs, |m| m.cpu_us),
                med(&serde_runs, |m| m.cpu_us),
                med(&catga_runs, |m| m.servers_cpu_us[0]),
                med(&raw_runs, |m| m.servers_cpu_us[0]),
                med(&serde_runs, |m| m.servers_cpu_us[0]),
                med(&catga_runs, |m| m.switches),
                med(&serde_runs, |m| m.switches),
                med(&meta_runs, |m| m.switches),
            ));
            println!("{}", lines.last().unwrap());
        }

        // Publishing, to the same end point for all three: a subscriber of
        // this process that has received every event.
        // Room for every event: a full subscription buffer would drop them.
        let receiver = async_nats::ConnectOptions::new()
            .subscription_capacity(2 * PUBLISHED as usize)
            .connect(&url)
            .await
            .unwrap();
        let event = Noted { data: "x".repeat(117) };
        let event_bytes: bytes::Bytes = serde_json::to_vec(&event).unwrap().into();
        let (mut catga_rates, mut raw_rates, mut serde_rates, mut meta_rates) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            for kind in 0..4 {
                let subject = if kind == 0 { "bench.event" } else { "bench.raw.event" };
                let mut sub = catga_suite::subscribed(&receiver, subject).await;
                let t = Instant::now();
                let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
                let received = tokio::spawn({
                    let count = count.clone();
                    async move {
                        let mut n = 0;
                        while n < PUBLISHED && sub.next().await.is_some() {
                            n += 1;
                            count.store(n, std::sync::atomic::Ordering::Relaxed);
                        }
                        n
                    }
                });
                for n in 0..PUBLISHED {
                    let encoded = || serde_json::to_vec(&event).unwrap().into();
                    match kind {
                        0 => catga.publish(event.clone()).await.unwrap(),
                        1 => raw.publish("bench.raw.event", event_bytes.clone()).await.unwrap(),
                        2 => raw.publish("bench.raw.event", encoded()).await.unwrap(),
                        _ => {
                            let headers = catga_suite::floor::meta_headers(u64::from(n), false);
                            raw.publish_with_headers("bench.raw.event", headers, encoded()).await.unwrap()
                        }
                    }
                }
                let Ok(got) = tokio::time::timeout(Duration::from_secs(60), received).await else {
                    let (got, who) =
                        (count.load(std::sync::atomic::Ordering::Relaxed), ["catga", "raw", "raw+serde", "raw+meta"][kind]);
                    // The server's count of clients it dropped messages for.
                    let varz = catga_suite::http_get(monitor, "/varz").map(|(_, body)| body).unwrap_or_default();
                    let counters: Vec<&str> = varz
                        .lines()
                        .map(str::trim)
                        .filter(|l| ["\"slow_consumers\"", "\"in_msgs\"", "\"out_msgs\""].iter().any(|k| l.starts_with(k)))
                        .collect();
                    panic!("{who}: {got} of {PUBLISHED} events arrived within 60 s; the server's {}", counters.join(" "));
                };
                let got = got.unwrap();
                assert_eq!(got, PUBLISHED, "every event arrives (no slow-consumer drop on loopback)");
                let rate = f64::from(PUBLISHED) / t.elapsed().as_secs_f64();
                [&mut catga_rates, &mut raw_rates, &mut serde_rates, &mut meta_rates][kind].push(rate);
            }
        }
        let ratio = median(catga_rates.iter().zip(&raw_rates).map(|(c, r)| c / r).collect());
        let ratio_serde = median(catga_rates.iter().zip(&serde_rates).map(|(c, r)| c / r).collect());
        let ratio_meta = median(catga_rates.iter().zip(&meta_rates).map(|(c, r)| c / r).collect());
        lines.push(format!(
            "{{\"bench\":\"nats\",\"logs\":{logs},\"publish\":true,\"ratio\":{ratio:.2},\"ratio_serde\":{ratio_serde:.2},\
             \"ratio_meta\":{ratio_meta:.2},\"catga_per_s\":{},\"raw_per_s\":{},\"raw_serde_per_s\":{},\"raw_meta_per_s\":{}}}",
            list(catga_rates.into_iter()),
            list(raw_rates.into_iter()),
            list(serde_rates.into_iter()),
            list(meta_rates.into_iter())
        ));
        println!("{}", lines.last().unwrap());
        catga.shutdown().await;
    });
}
