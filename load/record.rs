//! What a client records and hands to the orchestrator: per 100 ms of the
//! schedule, how many requests were due, answered and failed, how many
//! replies arrived, and an HDR histogram of the answered ones' latencies.
//! Shared by the client (which fills it) and the orchestrator (which merges
//! the clients' reports and computes percentiles, windows and recovery).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The timeline's resolution.
pub const BUCKET_MS: u64 = 100;

/// 1 µs to 60 s at 3 significant digits (0.1% resolution).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Record `d` in µs (at least 1, at most the histogram's bound).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().clamp(1, 60_000_000) as u64);
}

/// A histogram as `(value µs, count)` pairs of its non-empty bins.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pairs(pub Vec<(u64, u64)>);

impl Pairs {
    /// The non-empty bins of `h`.
    pub fn of(h: &Histogram<u64>) -> Pairs {
        Pairs(h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect())
    }

    /// Add these bins to `h`.
    pub fn add_to(&self, h: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            h.saturating_record_n(value, count);
        }
    }
}

/// One 100 ms slice of a client's schedule (by the requests' intended send
/// time, except `done`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// Requests due in this slice (intended send time).
    pub sent: u64,
    /// Of those, answered successfully.
    pub ok: u64,
    /// Of those, failed (an error, or no answer by the end).
    pub failed: u64,
    /// Successful replies that arrived during this slice (throughput).
    pub done: u64,
    /// Latencies of the answered requests due in this slice, µs, from
    /// their intended send time.
    pub latency: Pairs,
    /// The longest a failed request of this slice took to fail, µs.
    pub worst_failed_us: u64,
}

/// The generator's own timing, µs: how late, after its intended time, the
/// pacer handed a request to the runtime, and how late its task first ran.
/// Both are inside the latencies it reports (they count from the intended
/// time), so they bound the error the generator adds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timing {
    /// Pacer: dispatch time − intended time.
    pub dispatch: Pairs,
    /// Task: first poll − intended time.
    pub start: Pairs,
    /// The pacing thread's timer slack after the client set it, ns.
    pub timer_slack_ns: Option<u64>,
}

/// What one client process reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientReport {
    /// The client's index in its run.
    pub id: usize,
    /// The schedule's start (its buckets count from it), Unix ns.
    pub t0_unix_ns: u64,
    /// Slices of 100 ms from t0: warm-up, measurement, then the drain.
    pub buckets: Vec<Bucket>,
    /// Errors by kind (`timeout`, `no_handler`, a handler's code, ...).
    pub errors: BTreeMap<String, u64>,
    /// For each kind, the intended send time of its first request, ms from t0.
    pub errors_first_ms: BTreeMap<String, u64>,
    /// Sends the Catga client retried after a timeout or "no responders".
    pub retries: u64,
    /// Requests still unanswered when the client stopped waiting (also
    /// counted in their bucket's `failed`).
    pub unfinished: u64,
    /// The generator's own timing (open loop only).
    pub timing: Timing,
    /// CPU time the client process used over the whole run, s.
    pub cpu_s: f64,
}

/// A merge of the clients of one run, and what is computed from it.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Slices of 100 ms from the common t0.
    pub buckets: Vec<Bucket>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// For each kind, when (ms from t0) its first failed request was due.
    pub errors_first_ms: BTreeMap<String, u64>,
    /// Retries, all clients.
    pub retries: u64,
    /// Unanswered at the end, all clients.
    pub unfinished: u64,
    /// Pacer lateness and task start lateness, all clients.
    pub dispatch: Histogram<u64>,
    /// Task start lateness.
    pub start: Histogram<u64>,
    /// Timer slack of the pacers (the largest).
    pub timer_slack_ns: Option<u64>,
    /// Client CPU, s.
    pub client_cpu_s: f64,
}

impl Merged {
    /// Merge reports that share one t0.
    pub fn of(reports: &[ClientReport]) -> Merged {
        let len = reports.iter().map(|r| r.buckets.len()).max().unwrap_or(0);
        let mut m = Merged {
            buckets: vec![Bucket::default(); len],
            errors: BTreeMap::new(),
            errors_first_ms: BTreeMap::new(),
            retries: 0,
            unfinished: 0,
            dispatch: histogram(),
            start: histogram(),
            timer_slack_ns: None,
            client_cpu_s: 0.0,
        };
        for r in reports {
            for (i, b) in r.buckets.iter().enumerate() {
                let into = &mut m.buckets[i];
                into.sent += b.sent;
                into.ok += b.ok;
                into.failed += b.failed;
                into.done += b.done;
                into.worst_failed_us = into.worst_failed_us.max(b.worst_failed_us);
                let mut h = histogram();
                into.latency.add_to(&mut h);
                b.latency.add_to(&mut h);
                into.latency = Pairs::of(&h);
            }
            for (k, n) in &r.errors {
                *m.errors.entry(k.clone()).or_default() += n;
            }
            for (k, t) in &r.errors_first_ms {
                let first = m.errors_first_ms.entry(k.clone()).or_insert(*t);
                *first = (*first).min(*t);
            }
            m.retries += r.retries;
            m.unfinished += r.unfinished;
            r.timing.dispatch.add_to(&mut m.dispatch);
            r.timing.start.add_to(&mut m.start);
            m.timer_slack_ns = m.timer_slack_ns.max(r.timing.timer_slack_ns);
            m.client_cpu_s += r.cpu_s;
        }
        m
    }

    /// The buckets covering `[from_ms, to_ms)`.
    fn range(&self, from_ms: u64, to_ms: u64) -> &[Bucket] {
        let a = ((from_ms / BUCKET_MS) as usize).min(self.buckets.len());
        let b = (to_ms.div_ceil(BUCKET_MS) as usize).clamp(a, self.buckets.len());
        &self.buckets[a..b]
    }

    /// Totals over `[from_ms, to_ms)` of the schedule.
    pub fn window(&self, from_ms: u64, to_ms: u64) -> Window {
        let mut w = Window {
            sent: 0,
            ok: 0,
            failed: 0,
            done: 0,
            latency: histogram(),
            worst_failed_us: 0,
            seconds: (to_ms.saturating_sub(from_ms)) as f64 / 1000.0,
        };
        for b in self.range(from_ms, to_ms) {
            w.sent += b.sent;
            w.ok += b.ok;
            w.failed += b.failed;
            w.done += b.done;
            w.worst_failed_us = w.worst_failed_us.max(b.worst_failed_us);
            b.latency.add_to(&mut w.latency);
        }
        w
    }
}

/// Totals over a stretch of the schedule.
#[derive(Debug, Clone)]
pub struct Window {
    /// Due in it.
    pub sent: u64,
    /// Answered.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Replies received in it.
    pub done: u64,
    /// Answered requests' latencies.
    pub latency: Histogram<u64>,
    /// Longest failure.
    pub worst_failed_us: u64,
    /// Its length.
    pub seconds: f64,
}

impl Window {
    /// A latency quantile of the answered requests, µs.
    pub fn q(&self, quantile: f64) -> u64 {
        if self.latency.is_empty() { 0 } else { self.latency.value_at_quantile(quantile) }
    }

    /// The p99 with every failed request counted as slower than any answer
    /// (what a user waiting on them saw), µs.
    pub fn p99_with_failures(&self) -> u64 {
        let mut h = self.latency.clone();
        if self.failed > 0 {
            h.saturating_record_n(60_000_000, self.failed);
        }
        if h.is_empty() { 0 } else { h.value_at_quantile(0.99) }
    }

    /// The slowest answer or failure, µs.
    pub fn worst_us(&self) -> u64 {
        self.latency.max().max(self.worst_failed_us)
    }

    /// Replies per second in it.
    pub fn done_per_s(&self) -> f64 {
        self.done as f64 / self.seconds.max(1e-9)
    }
}

/// A quantile of a histogram, 0 when empty.
pub fn quantile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() { 0 } else { h.value_at_quantile(q) }
}
