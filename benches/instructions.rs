//! A fixed number of in-process sends, then of publishes — for instruction
//! counts under callgrind, which do not move with the machine's noise
//! (`docs/BENCHMARKS.md`, "The cost of metrics"):
//!
//! ```sh
//! cargo bench --bench instructions --no-run     # prints the binary's path
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null <binary> send 100000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null <binary> send 200000
//! ```
//!
//! The difference of the two totals ("Collected"), divided by 100 000, is
//! one operation's instructions without the start-up's. Same command,
//! handler and event as `benches/in_process.rs`; one instance on a private
//! memory bus, a current-thread runtime, no tracing subscriber — or, with a
//! third argument `logs`, the subscriber `Catga::run()` installs by default
//! (tracing-subscriber's formatter at `info`; `RUST_LOG` unset).
//!
//! Over a real nats-server (started here; both ends in this process, a
//! two-worker runtime; the server's own work is not counted): `nats` (a
//! Catga `send` to an `echo` handler, `CONCURRENCY` at a time, 1 by
//! default) against `raw` (async-nats with serde_json of the same struct on
//! both sides; `raw-meta`: that and Catga's headers of a request, built by
//! the sender and read by the responder, as `benches/nats.rs`'s metadata
//! floor; `durable`: the same through JetStream, on a server with
//! JetStream, against `raw-durable`, `benches/durable.rs`'s floor), and
//! `nats-publish` against `raw-publish` (to a raw
//! subscriber that receives them all). Use a few thousand operations:
//! callgrind runs the program ~50 times slower.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use catga::prelude::*;
use catga::transport::memory::MemoryBus;
use futures_util::StreamExt;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "bench.add", reply = u64)]
pub struct Add {
    a: u64,
    b: u64,
}

#[catga::command(queue = "bench")]
async fn add(cmd: Add) -> Result<u64, HandlerError> {
    Ok(cmd.a + cmd.b)
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "bench.added")]
pub struct Added {
    n: u64,
}

/// The NATS modes' command: JSON of it is 128 bytes, as in `benches/nats.rs`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.echo", reply = Blob)]
pub struct Blob {
    data: String,
}

#[catga::command(queue = "bench")]
async fn echo(blob: Blob) -> Result<Blob, HandlerError> {
    Ok(blob)
}

/// The `durable` mode's command: the same struct, delivered through JetStream.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.durable.echo", reply = DurableBlob, durable)]
pub struct DurableBlob {
    data: String,
}

#[catga::command(queue = "bench")]
async fn durable_echo(blob: DurableBlob) -> Result<DurableBlob, HandlerError> {
    Ok(blob)
}

fn blob() -> Blob {
    Blob { data: "x".repeat(117) }
}

/// `n` requests over a real nats-server, `concurrency` at a time, from one
/// connection to a responder on another, both in this process: Catga's
/// `send` to an `echo` handler (`nats`), or raw async-nats with serde_json
/// of the same struct on both sides (`raw`, the floor).
async fn over_nats(mode: &str, n: u64, concurrency: u64) {
    let raw = mode == "raw" || mode == "raw-meta";
    let meta = mode == "raw-meta";
    let nats = match mode {
        "durable" | "raw-durable" => catga_suite::NatsServer::start_jetstream(),
        _ => catga_suite::NatsServer::start(),
    };
    let url = nats.url();
    let request: std::sync::Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync> = if mode
        == "raw-durable"
    {
        let subject = "bench.raw.durable";
        let responder = async_nats::connect(&url).await.expect("connected");
        catga_suite::floor::raw_responder::<DurableBlob>(responder, "BENCH_RAW_DURABLE", subject).await;
        let sender = catga_suite::floor::RawSender::start(async_nats::connect(&url).await.expect("connected")).await;
        std::sync::Arc::new(move || {
            let sender = sender.clone();
            Box::pin(async move { sender.send(subject, &DurableBlob { data: blob().data }).await })
        })
    } else if raw {
        let responder = async_nats::connect(&url).await.expect("connected");
        let mut requests = responder.queue_subscribe("bench.raw", "bench".into()).await.expect("subscribed");
        tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                black_box(catga_suite::floor::read_meta(&m));
                let blob: Blob = serde_json::from_slice(&m.payload).expect("a blob");
                let body = serde_json::to_vec(&blob).expect("encoded");
                responder.publish(m.reply.expect("a request"), body.into()).await.expect("replied");
            }
        });
        let client = async_nats::connect(&url).await.expect("connected");
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        std::sync::Arc::new(move || {
            let client = client.clone();
            let n = sent.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                let body = serde_json::to_vec(&blob()).expect("encoded");
                let mut request = async_nats::Request::new().payload(body.into());
                if meta {
                    request = request.headers(catga_suite::floor::meta_headers(n, true));
                }
                let reply = client.send_request("bench.raw", request).await.expect("answered");
                black_box(serde_json::from_slice::<Blob>(&reply.payload).expect("a blob"));
            })
        })
    } else {
        let subject = if mode == "durable" { "bench.durable.echo" } else { "bench.echo" };
        let server = Catga::builder()
            .nats_url(&url)
            .service("bench")
            .handlers_where(move |h| h.subject == subject)
            .start()
            .await
            .expect("started");
        std::mem::forget(server); // lives as long as the process
        let client =
            Catga::builder().nats_url(&url).service("bench-client").client_only().start().await.expect("started");
        let durable = mode == "durable";
        std::sync::Arc::new(move || {
            let client = client.clone();
            Box::pin(async move {
                if durable {
                    black_box(client.send(DurableBlob { data: blob().data }).await.expect("answered"));
                } else {
                    black_box(client.send(blob()).await.expect("answered"));
                }
            })
        })
    };
    let callers: Vec<_> = (0..concurrency)
        .map(|c| {
            let request = request.clone();
            tokio::spawn(async move {
                for _ in (c..n).step_by(concurrency as usize) {
                    request().await;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("ran");
    }
}

/// `n` events published over a real nats-server to a raw subscriber of
/// this process, until it has them all: Catga's `publish` (`nats-publish`)
/// or raw async-nats publishing serde_json of the same event
/// (`raw-publish`, the floor).
async fn publish_over_nats(raw: bool, n: u64) {
    use std::sync::atomic::AtomicU64;
    let nats = catga_suite::NatsServer::start();
    let url = nats.url();
    let receiver = async_nats::connect(&url).await.expect("connected");
    let mut events = catga_suite::subscribed(&receiver, "bench.noted").await;
    let got = std::sync::Arc::new(AtomicU64::new(0));
    tokio::spawn({
        let got = got.clone();
        async move {
            while events.next().await.is_some() {
                got.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // In batches of 100, each received before the next goes out: under
    // callgrind the receiver is slow, and the server would drop events
    // for a slow consumer.
    let caught_up = |sent: u64| {
        let got = got.clone();
        async move {
            while got.load(Ordering::Relaxed) < sent {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    };
    let event = Noted { data: "x".repeat(117) };
    if raw {
        let client = async_nats::connect(&url).await.expect("connected");
        for i in 1..=n {
            let body = serde_json::to_vec(&event).expect("encoded");
            client.publish("bench.noted", body.into()).await.expect("published");
            if i % 100 == 0 || i == n {
                caught_up(i).await;
            }
        }
    } else {
        let app = Catga::builder().nats_url(&url).service("bench-client").client_only().start().await.expect("started");
        for i in 1..=n {
            app.publish(event.clone()).await.expect("published");
            if i % 100 == 0 || i == n {
                caught_up(i).await;
            }
        }
        std::mem::forget(app);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "bench.noted")]
pub struct Noted {
    data: String,
}

static HANDLED: AtomicUsize = AtomicUsize::new(0);

#[catga::event(queue = "bench")]
async fn added(ev: Added) -> Result<(), HandlerError> {
    black_box(ev.n);
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let what = args.next().unwrap_or_else(|| "send".into());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    if args.next().as_deref() == Some("logs") {
        // Its lines go to standard error: run with `2>/dev/null`.
        assert!(catga::__private::install_default_logs(catga::LogFormat::Plain), "no other subscriber");
    }
    if what == "nats-publish" || what == "raw-publish" {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
        return runtime.block_on(publish_over_nats(what == "raw-publish", n));
    }
    if matches!(what.as_str(), "nats" | "raw" | "raw-meta" | "durable" | "raw-durable") {
        let concurrency: u64 = std::env::var("CONCURRENCY").ok().and_then(|c| c.parse().ok()).unwrap_or(1);
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
        return runtime.block_on(over_nats(&what, n, concurrency.max(1)));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let app = Catga::builder().service("bench").memory_bus(MemoryBus::new()).start().await.expect("started");
        match what.as_str() {
            "send" => {
                for i in 0..n {
                    black_box(app.send(Add { a: i, b: 1 }).await.expect("answered"));
                }
            }
            "publish" => {
                for i in 0..n {
                    app.publish(Added { n: i }).await.expect("published");
                    while HANDLED.load(Ordering::Relaxed) < (i + 1) as usize {
                        tokio::task::yield_now().await;
                    }
                }
            }
            other => {
                panic!("`{other}`: say `send`, `publish`, `nats`, `raw`, `raw-meta`, `durable`, `raw-durable`, `nats-publish` or `raw-publish`")
            }
        }
        app.shutdown().await;
    });
}
