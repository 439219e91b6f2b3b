//! One load run: start the client processes, give them a common start,
//! sample CPU and server counters around the measured stretch, fire the
//! scenario's event at its time, collect and merge the reports.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use catga::prelude::*;
use hdrhistogram::Histogram;

use crate::client::{Model, Spec, Target};
use crate::plan::Profile;
use crate::procs::{Bins, Clients, CpuUse, cpu_sample};
use crate::record::{BUCKET_MS, ClientReport, Merged, histogram};
use crate::results::Derived;

/// What the whole run shares.
pub struct Ctx {
    /// The binaries.
    pub bins: Bins,
    /// Sizes and durations.
    pub p: Profile,
    /// For the orchestrator's own clients (readiness, probes).
    pub rt: tokio::runtime::Runtime,
    /// Where clients write their reports.
    pub tmp: PathBuf,
    /// Derived settings.
    pub derived: Derived,
    /// Every open-loop run's pacer lateness.
    pub dispatch: Histogram<u64>,
    /// Every open-loop run's task start lateness.
    pub start: Histogram<u64>,
    /// The pacers' timer slack.
    pub timer_slack_ns: Option<u64>,
    /// Instance warnings by run.
    pub log: BTreeMap<String, Vec<String>>,
    /// Costs measured outside the cost phase (on the Redis Cluster).
    pub extra_costs: Vec<crate::results::OpCost>,
    next_client: usize,
}

impl Ctx {
    /// A context for profile `p`.
    pub fn new(bins: Bins, p: Profile, tmp: PathBuf) -> Result<Ctx, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Ctx {
            bins,
            p,
            rt,
            tmp,
            derived: Derived::default(),
            dispatch: histogram(),
            start: histogram(),
            timer_slack_ns: None,
            log: BTreeMap::new(),
            extra_costs: Vec::new(),
            next_client: 0,
        })
    }

    /// A Catga client of the orchestrator's own (readiness checks, probes).
    pub fn catga_client(&self, nats: &str) -> Result<App, String> {
        self.rt
            .block_on(
                Catga::builder()
                    .nats_url(nats)
                    .service("load-orchestrator")
                    .request_timeout(Duration::from_secs(2))
                    .client_only()
                    .start(),
            )
            .map_err(|e| format!("orchestrator client on {nats}: {e}"))
    }
}

/// One stream of requests: what, how, and through which NATS URL, one
/// client process per model.
pub struct Stream {
    /// What its clients send.
    pub target: Target,
    /// One client process per entry.
    pub models: Vec<Model>,
    /// The NATS URL of each client (cycled).
    pub nats: Vec<String>,
}

impl Stream {
    /// An open-loop stream at `rate`, split over `clients` processes.
    pub fn open(target: Target, rate: f64, clients: usize, nats: &str) -> Stream {
        let clients = clients.max(1);
        Stream {
            target,
            models: vec![Model::Open { rate: rate / clients as f64 }; clients],
            nats: vec![nats.to_owned()],
        }
    }

    /// A closed-loop stream of `concurrency` in flight from one process.
    pub fn closed(target: Target, concurrency: usize, nats: &str) -> Stream {
        Stream { target, models: vec![Model::Closed { concurrency }], nats: vec![nats.to_owned()] }
    }
}

/// A scenario's event: `ms` after the start of the measured stretch, run
/// `fire`, which is given a clock (ms since the start of the schedule) and
/// returns extra marks (label, ms since the start of the schedule).
pub type Event<'a> = (u64, Box<dyn FnOnce(&dyn Fn() -> u64) -> Vec<(String, u64)> + 'a>);

/// A run.
pub struct LoadRun<'a> {
    /// Its streams (each merged on its own, and all together).
    pub streams: Vec<Stream>,
    /// Warm-up, ms.
    pub warmup_ms: u64,
    /// Measured stretch, ms.
    pub duration_ms: u64,
    /// Processes whose CPU is sampled: (role, pid).
    pub pids: Vec<(&'static str, u32)>,
    /// A nats-server monitoring port: its counters are sampled too.
    pub varz: Option<u16>,
    /// The scenario's event.
    pub event: Option<Event<'a>>,
}

/// What a run gave.
pub struct RunOut {
    /// Each stream's merged reports.
    pub streams: Vec<Merged>,
    /// All streams merged.
    pub all: Merged,
    /// CPU used over the measured stretch.
    pub cpu: CpuUse,
    /// The event (label "event") and other marks, ms since the schedule's start.
    pub marks: Vec<(String, u64)>,
    /// NATS server counter deltas over the measured stretch.
    pub nats: Option<NatsCounters>,
    /// The measured stretch: [from, to) ms since the schedule's start.
    pub measured: (u64, u64),
}

impl RunOut {
    /// The measured stretch of all streams.
    pub fn window(&self) -> crate::record::Window {
        self.all.window(self.measured.0, self.measured.1)
    }
}

/// Sleep (in ms steps; this thread only waits) until `t`.
fn sleep_until(t: SystemTime) {
    if let Ok(left) = t.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
}

/// Run `run`: start its clients, wait for them, merge their reports.
pub fn run(ctx: &mut Ctx, run: LoadRun<'_>) -> Result<RunOut, String> {
    let mut specs = Vec::new();
    let mut stream_of = Vec::new();
    for (s, stream) in run.streams.iter().enumerate() {
        for (i, model) in stream.models.iter().enumerate() {
            let id = ctx.next_client;
            ctx.next_client += 1;
            specs.push(Spec {
                id,
                nats: stream.nats[i % stream.nats.len()].clone(),
                target: stream.target,
                model: *model,
                warmup_ms: run.warmup_ms,
                duration_ms: run.duration_ms,
                timeout_ms: ctx.p.timeout_ms,
                retries: ctx.p.retries,
                out: ctx.tmp.join(format!("client-{id}.json")),
            });
            stream_of.push(s);
        }
    }
    let clients = Clients::start(&ctx.bins, specs, Duration::from_millis(200))?;
    let t0 = clients.t0;
    let since_t0 = move || SystemTime::now().duration_since(t0).unwrap_or_default().as_millis() as u64;
    let mut pids = run.pids.clone();
    pids.extend(clients.pids().into_iter().map(|p| ("client", p)));

    let measure_from = t0 + Duration::from_millis(run.warmup_ms);
    let measure_to = measure_from + Duration::from_millis(run.duration_ms);
    sleep_until(measure_from);
    let (cpu0, nats0) = (cpu_sample(&pids), run.varz.and_then(|p| nats_counters(p).ok()));
    let mut marks = Vec::new();
    if let Some((at, fire)) = run.event {
        sleep_until(measure_from + Duration::from_millis(at));
        marks.push(("event".to_owned(), since_t0()));
        marks.extend(fire(&since_t0));
    }
    sleep_until(measure_to);
    let (cpu1, nats1) = (cpu_sample(&pids), run.varz.and_then(|p| nats_counters(p).ok()));
    let reports = clients.finish()?;

    let mut by_stream: Vec<Vec<ClientReport>> = (0..run.streams.len()).map(|_| Vec::new()).collect();
    for (report, s) in reports.iter().zip(&stream_of) {
        by_stream[*s].push(report.clone());
    }
    let all = Merged::of(&reports);
    if run.streams.iter().any(|s| s.models.iter().any(|m| matches!(m, Model::Open { .. }))) {
        ctx.dispatch.add(&all.dispatch).map_err(|e| format!("{e:?}"))?;
        ctx.start.add(&all.start).map_err(|e| format!("{e:?}"))?;
        ctx.timer_slack_ns = ctx.timer_slack_ns.max(all.timer_slack_ns);
    }
    Ok(RunOut {
        streams: by_stream.iter().map(|r| Merged::of(r)).collect(),
        all,
        cpu: cpu0.until(&cpu1),
        marks,
        nats: match (nats0, nats1) {
            (Some(a), Some(b)) => Some(b.minus(&a)),
            _ => None,
        },
        measured: (run.warmup_ms, run.warmup_ms + run.duration_ms),
    })
}

/// From the event, the time to the start of the first 1 s window whose p99
/// (failures counted as slowest) is at most 1.5× the pre-event p99 and
/// stays so for 3 s (every window starting in the next 3 s, in 100 ms
/// steps); `None` when no window before `end_ms` qualifies. Also returns
/// the pre-event p99.
///
/// Requests are placed by their intended send time, and those hurt most by
/// a kill are the ones in flight at that instant — sent just *before* it.
/// So the windows start one 100 ms slice before the slice that holds the
/// event (a recovery found there counts as 0), and the pre-event p99 is
/// taken over what comes before that.
///
/// The pre-event p99 is that of the answered requests (a failure before
/// the event would make any later latency look recovered).
pub fn recovery(m: &Merged, from_ms: u64, event_ms: u64, end_ms: u64) -> (u64, Option<u64>) {
    let first = (event_ms / BUCKET_MS * BUCKET_MS).saturating_sub(BUCKET_MS).max(from_ms);
    let pre = m.window(from_ms, first).q(0.99);
    let threshold = pre as f64 * 1.5;
    let good = |s: u64| m.window(s, s + 1_000).p99_with_failures() as f64 <= threshold;
    let mut s = first;
    while s + 1_000 + 3_000 <= end_ms {
        if (0..=30).all(|j| good(s + j * BUCKET_MS)) {
            return (pre, Some(s.saturating_sub(event_ms)));
        }
        s += BUCKET_MS;
    }
    (pre, None)
}

/// Counters of a nats-server (`/varz`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsCounters {
    /// Messages received from clients.
    pub in_msgs: f64,
    /// Messages sent to clients.
    pub out_msgs: f64,
    /// Bytes received (payloads and headers).
    pub in_bytes: f64,
    /// Bytes sent.
    pub out_bytes: f64,
}

impl NatsCounters {
    /// `self - earlier`.
    pub fn minus(&self, earlier: &NatsCounters) -> NatsCounters {
        NatsCounters {
            in_msgs: self.in_msgs - earlier.in_msgs,
            out_msgs: self.out_msgs - earlier.out_msgs,
            in_bytes: self.in_bytes - earlier.in_bytes,
            out_bytes: self.out_bytes - earlier.out_bytes,
        }
    }
}

/// One HTTP/1.0 GET to 127.0.0.1:`port` (2 s limits); the body.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).ok_or_else(|| "no HTTP body".to_owned())
}

/// The server's message and byte counters.
pub fn nats_counters(monitor_port: u16) -> Result<NatsCounters, String> {
    let v: serde_json::Value = serde_json::from_str(&http_get(monitor_port, "/varz")?).map_err(|e| e.to_string())?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok(NatsCounters {
        in_msgs: f("in_msgs"),
        out_msgs: f("out_msgs"),
        in_bytes: f("in_bytes"),
        out_bytes: f("out_bytes"),
    })
}

/// Counters of a redis-server (`INFO stats` and `INFO commandstats`).
#[derive(Debug, Clone, Default)]
pub struct RedisCounters {
    /// Commands run, scripts' inner commands included.
    pub commands: f64,
    /// Bytes received from clients.
    pub in_bytes: f64,
    /// Bytes sent to clients.
    pub out_bytes: f64,
    /// Calls by command.
    pub calls: BTreeMap<String, f64>,
}

impl RedisCounters {
    /// `self - earlier`.
    pub fn minus(&self, earlier: &RedisCounters) -> RedisCounters {
        let mut calls = self.calls.clone();
        for (k, v) in calls.iter_mut() {
            *v -= earlier.calls.get(k).copied().unwrap_or(0.0);
        }
        calls.retain(|_, v| *v > 0.0);
        RedisCounters {
            commands: self.commands - earlier.commands,
            in_bytes: self.in_bytes - earlier.in_bytes,
            out_bytes: self.out_bytes - earlier.out_bytes,
            calls,
        }
    }
}

/// Read the counters of the redis-server on `port`.
pub fn redis_counters(port: u16) -> Result<RedisCounters, String> {
    let text = catga_suite::redis::command(port, &["INFO", "all"]).map_err(|e| e.to_string())?.text();
    Ok(parse_redis_info(&text))
}

/// The counters in the text of `INFO all`.
pub fn parse_redis_info(text: &str) -> RedisCounters {
    let mut c = RedisCounters::default();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(':') else { continue };
        match k {
            "total_commands_processed" => c.commands = v.parse().unwrap_or(0.0),
            "total_net_input_bytes" => c.in_bytes = v.parse().unwrap_or(0.0),
            "total_net_output_bytes" => c.out_bytes = v.parse().unwrap_or(0.0),
            _ => {
                if let Some(cmd) = k.strip_prefix("cmdstat_") {
                    let calls = v.split(',').find_map(|f| f.strip_prefix("calls=")).and_then(|n| n.parse().ok());
                    c.calls.insert(cmd.to_owned(), calls.unwrap_or(0.0));
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Bucket, Pairs};

    /// A timeline of 100 ms slices with the given p99-ish latency each
    /// (every request of a slice takes that long).
    fn timeline(latencies_us: &[u64]) -> Merged {
        let reports = vec![ClientReport {
            buckets: latencies_us
                .iter()
                .map(|&l| Bucket { sent: 10, ok: 10, done: 10, latency: Pairs(vec![(l, 10)]), ..Bucket::default() })
                .collect(),
            ..ClientReport::default()
        }];
        Merged::of(&reports)
    }

    #[test]
    fn no_disturbance_is_recovered_at_once() {
        let m = timeline(&[1_000; 100]);
        assert_eq!(recovery(&m, 0, 3_000, 10_000), (1_000, Some(0)));
    }

    #[test]
    fn a_slow_second_after_the_event_delays_recovery_until_windows_clear_it() {
        // Event at 3 050 ms; slices 3 000..4 000 are 10x slower.
        let mut l = vec![1_000; 100];
        l[30..40].iter_mut().for_each(|x| *x = 10_000);
        let (pre, rec) = recovery(&timeline(&l), 0, 3_050, 10_000);
        assert_eq!(pre, 1_000);
        // The first window free of the slow second starts at 4 000 ms.
        assert_eq!(rec, Some(950));
    }

    #[test]
    fn requests_sent_just_before_the_event_count_against_recovery_not_before_it() {
        // The slice before the event's is slow (requests in flight at a kill).
        let mut l = vec![1_000; 100];
        l[29] = 10_000;
        let (pre, rec) = recovery(&timeline(&l), 0, 3_000, 10_000);
        assert_eq!(pre, 1_000, "the slow slice is not part of the pre-event p99");
        // Windows from 2 900 ms hold it; the first without it starts at 3 000.
        assert_eq!(rec, Some(0));
        let mut l = vec![1_000; 100];
        l[29..35].iter_mut().for_each(|x| *x = 10_000);
        assert_eq!(recovery(&timeline(&l), 0, 3_000, 10_000).1, Some(500));
    }

    #[test]
    fn failures_count_as_slowest_and_no_window_qualifies_when_it_never_settles() {
        let mut m = timeline(&[1_000; 60]);
        for b in &mut m.buckets[30..] {
            b.failed = 5;
        }
        assert_eq!(recovery(&m, 0, 3_000, 6_000).1, None);
    }
}
