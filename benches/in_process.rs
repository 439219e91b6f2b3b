//! In-process cost of Catga's `send` and `publish` against a direct `.await`
//! of the same handler function, in one run, with heap allocations per op.
//!
//! Run: `cargo bench --bench in_process` (about 40 s). Prints criterion's
//! report, then one JSON line with ns/op, the ratios and allocations per op.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use catga::prelude::*;
use catga::transport::memory::MemoryBus;
use criterion::Criterion;

/// Counts heap allocations. Hand-written (a dozen lines) because the crates
/// that do this are either unmaintained (stats_alloc) or a full profiler
/// whose overhead would distort the timings (dhat).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

/// Publish `n` events and wait until all were handled: the cost of
/// delivering an event (spawn + handling), not only of handing it over.
async fn publish_and_drain(app: &App, n: u64) {
    let target = HANDLED.load(Ordering::Relaxed) + n as usize;
    for i in 0..n {
        app.publish(Added { n: i }).await.unwrap();
    }
    while HANDLED.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

async fn spawn_and_drain(n: u64) {
    let target = HANDLED.load(Ordering::Relaxed) + n as usize;
    for i in 0..n {
        tokio::spawn(added(Added { n: i }));
    }
    while HANDLED.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

fn allocations_per_op(rt: &tokio::runtime::Runtime, ops: u64, run: impl AsyncFn(u64)) -> f64 {
    rt.block_on(run(1_000)); // warm up lazily allocated state
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    rt.block_on(run(ops));
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / ops as f64
}

fn mean_ns(dir: &Path, id: &str) -> f64 {
    let path = dir.join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["mean"]["point_estimate"].as_f64().unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let app =
        rt.block_on(async { Catga::builder().service("bench").memory_bus(MemoryBus::new()).start().await.unwrap() });
    let out = std::env::temp_dir().join(format!("catga-bench-{}", std::process::id()));
    let mut c = Criterion::default()
        .output_directory(&out)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();

    let mut g = c.benchmark_group("in_process");
    g.bench_function("direct_await", |b| {
        b.to_async(&rt).iter(|| async { black_box(add(black_box(Add { a: 1, b: 2 })).await.unwrap()) })
    });
    g.bench_function("catga_send", |b| {
        b.to_async(&rt).iter(|| async { black_box(app.send(black_box(Add { a: 1, b: 2 })).await.unwrap()) })
    });
    g.bench_function("direct_await_event", |b| {
        b.to_async(&rt).iter(|| async { added(black_box(Added { n: 1 })).await.unwrap() })
    });
    g.bench_function("tokio_spawn_event", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let t = std::time::Instant::now();
            spawn_and_drain(iters).await;
            t.elapsed()
        })
    });
    g.bench_function("catga_publish", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let app = app.clone();
            async move {
                let t = std::time::Instant::now();
                publish_and_drain(&app, iters).await;
                t.elapsed()
            }
        })
    });
    g.finish();

    let ops = 100_000;
    let alloc_direct = allocations_per_op(&rt, ops, async |n| {
        for _ in 0..n {
            black_box(add(Add { a: 1, b: 2 }).await.unwrap());
        }
    });
    let alloc_send = allocations_per_op(&rt, ops, async |n| {
        for _ in 0..n {
            black_box(app.send(Add { a: 1, b: 2 }).await.unwrap());
        }
    });
    let alloc_publish = allocations_per_op(&rt, ops, async |n| publish_and_drain(&app, n).await);

    let dir = out.join("in_process");
    let (direct, send) = (mean_ns(&dir, "direct_await"), mean_ns(&dir, "catga_send"));
    let (direct_ev, spawn_ev, publish) =
        (mean_ns(&dir, "direct_await_event"), mean_ns(&dir, "tokio_spawn_event"), mean_ns(&dir, "catga_publish"));
    println!(
        "{{\"direct_ns\":{direct:.1},\"send_ns\":{send:.1},\"send_ratio\":{:.2},\"send_allocs\":{alloc_send:.2},\
         \"direct_allocs\":{alloc_direct:.2},\"direct_event_ns\":{direct_ev:.1},\"spawn_event_ns\":{spawn_ev:.1},\
         \"publish_ns\":{publish:.1},\"publish_ratio_vs_direct\":{:.2},\"publish_ratio_vs_spawn\":{:.2},\"publish_allocs\":{alloc_publish:.2}}}",
        send / direct,
        publish / direct_ev,
        publish / spawn_ev,
    );
    let _ = std::fs::remove_dir_all(&out);
}
