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

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use catga::prelude::*;
use catga::transport::memory::MemoryBus;

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
            other => panic!("`{other}`: say `send` or `publish`"),
        }
        app.shutdown().await;
    });
}
