//! The load generator the benchmarks share: `concurrency` closed loops
//! issue requests back to back for a fixed window, after a warm-up, and
//! record every latency in an HDR histogram.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What one closed-loop run measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Completed requests per second, over the whole window.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
}

impl Run {
    /// `{"rps":..,"p50_us":..,"p99_us":..}`.
    pub fn json(&self) -> String {
        format!("{{\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{}}}", self.rps, self.p50_us, self.p99_us)
    }
}

/// 200 warm-up requests, then `concurrency` loops for `window`. Every 64
/// requests a loop yields, so requests that never wait (an in-memory send)
/// still let the timer and the other loops run.
pub async fn closed_loop<F, Fut>(concurrency: usize, window: Duration, request: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
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
                let mut h = histogram();
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    request().await;
                    h.record(t.elapsed().as_micros().max(1) as u64).expect("latency within bounds");
                    n = n.wrapping_add(1);
                    if n.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                h
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = histogram();
    for l in loops {
        all.add(l.await.expect("a load loop panicked")).expect("same bounds");
    }
    Run {
        rps: all.len() as f64 / started.elapsed().as_secs_f64(),
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
    }
}

/// CPU time (user + system) of a process so far, from /proc (Linux; 10 ms
/// ticks, so a figure per request is meaningful over a whole window; zero
/// where /proc is not there).
pub fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end in ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15: 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Context switches of this process's threads so far (voluntary and not,
/// summed over /proc/self/task; zero where /proc is not there): each is a
/// thread that went to sleep or was put off its core. Threads that have
/// ended are not counted, so compare figures of a process whose threads
/// live through the measurement (a runtime's workers).
pub fn switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            let counts = status.lines().filter_map(|l| l.split_once("ctxt_switches:"));
            counts.filter_map(|(_, n)| n.trim().parse::<u64>().ok()).sum::<u64>()
        })
        .sum()
}

/// One closed-loop run with the CPU it took per request, in µs: this
/// process's, and each of the servers' it was given.
#[derive(Debug, Clone)]
pub struct Measured {
    pub run: Run,
    pub cpu_us: f64,
    /// This process's threads' context switches per request ([`switches`]):
    /// the hand-offs between threads a request costs.
    pub switches: f64,
    /// In the order of `servers` given to [`measured`].
    pub servers_cpu_us: Vec<f64>,
}

/// [`closed_loop`], with the CPU time this process and the processes
/// `servers` spent on it, per request.
pub async fn measured<F, Fut>(servers: &[u32], concurrency: usize, window: Duration, request: F) -> Measured
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let me = std::process::id();
    let before: Vec<Duration> = std::iter::once(me).chain(servers.iter().copied()).map(cpu).collect();
    let switched = switches();
    let started = Instant::now();
    let run = closed_loop(concurrency, window, request).await;
    let requests = (run.rps * started.elapsed().as_secs_f64()).max(1.0);
    let switches = switches().saturating_sub(switched) as f64 / requests;
    let mut per = std::iter::once(me)
        .chain(servers.iter().copied())
        .zip(before)
        .map(|(pid, before)| cpu(pid).saturating_sub(before).as_secs_f64() * 1e6 / requests);
    let cpu_us = per.next().unwrap_or_default();
    Measured { run, cpu_us, switches, servers_cpu_us: per.collect() }
}

/// 1 µs to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// The median of the rounds' figures (the upper one of an even count):
/// what the benchmarks report of their interleaved rounds.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Figures as a JSON list of whole numbers, `[1,2,3]`.
pub fn list(values: impl Iterator<Item = f64>) -> String {
    format!("[{}]", values.map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(","))
}
