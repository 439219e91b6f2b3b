//! What idempotency costs with the Redis store: an idempotent command
//! (`#[command(idempotent)]`: a claim script before the handler, a complete
//! script after it) against the same plain command (`#[command]`, which
//! never touches the store), both on the in-memory transport with one real
//! `redis-server` as the store; and, as the floor, the same two round trips
//! made with raw redis-rs (`SET key owner NX PX` then `SET key reply PX`).
//! Sequential (1 in flight) and 16 in flight, 2 s per case.
//!
//! Run: `cargo bench --bench store` (about 15 s). Needs `redis-server` on
//! PATH (started here on a free 127.0.0.1 port). Ends with one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use catga::prelude::*;
use catga::transport::memory::MemoryBus;
use catga_suite::RedisServer;
use catga_suite::load::closed_loop;

const WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.store.plain", reply = u64)]
pub struct Plain {
    n: u64,
}

#[catga::command]
async fn plain(cmd: Plain) -> Result<u64, HandlerError> {
    Ok(cmd.n + 1)
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.store.idem", reply = u64)]
pub struct Idem {
    n: u64,
}

#[catga::command(idempotent)]
async fn idem(cmd: Idem) -> Result<u64, HandlerError> {
    Ok(cmd.n + 1)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = RedisServer::start();
    let url = server.url();
    rt.block_on(async move {
        let app = Catga::builder()
            .service("bench-store")
            .memory_bus(MemoryBus::new())
            .redis_url(&url)
            .handlers_where(|h| h.subject.starts_with("bench.store."))
            .start()
            .await
            .unwrap();
        assert_eq!(app.store().name(), "redis");
        let client = redis::Client::open(url.as_str()).unwrap();
        let raw = client.get_multiplexed_async_connection().await.unwrap();
        let keys = Arc::new(AtomicU64::new(0));

        let mut cases = Vec::new();
        for concurrency in [1, 16] {
            eprintln!("in flight {concurrency}: plain");
            let plain_run = {
                let app = app.clone();
                closed_loop(concurrency, WINDOW, move || {
                    let app = app.clone();
                    async move {
                        app.send(Plain { n: 1 }).await.unwrap();
                    }
                })
                .await
            };
            eprintln!("in flight {concurrency}: idempotent");
            let idem_run = {
                let app = app.clone();
                closed_loop(concurrency, WINDOW, move || {
                    let app = app.clone();
                    async move {
                        app.send(Idem { n: 1 }).await.unwrap(); // a fresh message id each time
                    }
                })
                .await
            };
            eprintln!("in flight {concurrency}: raw SET NX + SET");
            let raw_run = {
                let (raw, keys) = (raw.clone(), keys.clone());
                closed_loop(concurrency, WINDOW, move || {
                    let (mut raw, keys) = (raw.clone(), keys.clone());
                    async move {
                        let key = format!("raw:{{{}}}:idem", keys.fetch_add(1, Ordering::Relaxed));
                        let claimed: Option<String> = redis::cmd("SET")
                            .arg(&key)
                            .arg("owner")
                            .arg("NX")
                            .arg("PX")
                            .arg(61_000)
                            .query_async(&mut raw)
                            .await
                            .unwrap();
                        assert!(claimed.is_some());
                        let _: () = redis::cmd("SET")
                            .arg(&key)
                            .arg("2")
                            .arg("PX")
                            .arg(86_400_000)
                            .query_async(&mut raw)
                            .await
                            .unwrap();
                    }
                })
                .await
            };
            cases.push(format!(
                "\"in_flight_{concurrency}\":{{\"plain\":{},\"idempotent\":{},\"raw_set_nx_set\":{},\
                 \"idempotent_vs_plain_rps\":{:.3},\"idempotent_vs_raw_rps\":{:.3}}}",
                plain_run.json(),
                idem_run.json(),
                raw_run.json(),
                idem_run.rps / plain_run.rps,
                idem_run.rps / raw_run.rps,
            ));
        }
        println!("{{\"bench\":\"store\",\"store\":\"redis\",\"window_s\":{},{}}}", WINDOW.as_secs(), cases.join(","));
        app.shutdown().await;
    });
    drop(server);
}
