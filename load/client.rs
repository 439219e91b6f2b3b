//! A client process (`catga-load client SPEC`): connects (a Catga client
//! instance, or a raw async-nats client for the baseline), waits for the
//! common start time, runs its load — open loop at a fixed rate, or closed
//! loops — records every request in its 100 ms slice, waits (bounded) for
//! what is still unanswered, and writes a [`ClientReport`] as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use catga::prelude::*;
use hdrhistogram::Histogram;

use crate::contracts::{Blob, Cpu, Idem, Io, RAW_SUBJECT, RunSaga};
use crate::pace;
use crate::record::{BUCKET_MS, Bucket, ClientReport, Pairs, Timing, histogram, record};

/// What a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// `Blob` to the echo handler.
    Echo,
    /// The same 128 bytes to the raw async-nats responders.
    Raw,
    /// `Io`: the handler sleeps this long.
    Io {
        /// Handler sleep, ms.
        sleep_ms: u64,
    },
    /// `Cpu`: the handler burns this many rounds.
    Cpu {
        /// Rounds of `burn`.
        rounds: u64,
    },
    /// An idempotent command (Redis store).
    Idem,
    /// A whole 3-step saga, run by the instance that gets the command.
    Saga,
}

/// How it sends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Requests due at a fixed rate, whatever the answers do.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// `concurrency` loops, each sending its next request when the last
    /// one is answered.
    Closed {
        /// Loops.
        concurrency: usize,
    },
}

/// A client's whole assignment (passed as one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// Index among the run's clients.
    pub id: usize,
    /// NATS URL(s).
    pub nats: String,
    /// What to send.
    pub target: Target,
    /// How.
    pub model: Model,
    /// Warm-up at the start of the schedule (recorded, not summarized).
    pub warmup_ms: u64,
    /// Measured stretch after the warm-up.
    pub duration_ms: u64,
    /// Request timeout: Catga's deadline of a whole send (raw async-nats:
    /// of its one request).
    pub timeout_ms: u64,
    /// Catga's retries after "no responders".
    pub retries: u32,
    /// Where to write the report.
    pub out: PathBuf,
}

impl Spec {
    /// A bound on one request: the deadline, with room for the backoff of
    /// "no responders" retries (at most 1 s each) and a margin.
    fn longest_request(&self) -> Duration {
        let attempts = u64::from(self.retries) + 1;
        Duration::from_millis(attempts * self.timeout_ms + u64::from(self.retries) * 1_000 + 2_000)
    }
}

/// Something that sends one request of the target kind.
#[derive(Clone)]
enum Sender {
    Catga(App),
    Raw(async_nats::Client, bytes::Bytes, Duration),
}

impl Sender {
    async fn send(&self, target: Target, client: usize, n: u64) -> Result<(), String> {
        let app = match self {
            Sender::Raw(client, payload, timeout) => {
                return match tokio::time::timeout(*timeout, client.request(RAW_SUBJECT, payload.clone())).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("raw_{:?}", e.kind()).to_lowercase()),
                    Err(_) => Err("timeout".into()),
                };
            }
            Sender::Catga(app) => app,
        };
        let result = match target {
            Target::Echo | Target::Raw => app.send(Blob::new()).await.map(drop),
            Target::Io { sleep_ms } => app.send(Io { n, sleep_ms }).await.map(drop),
            Target::Cpu { rounds } => app.send(Cpu { n, rounds }).await.map(drop),
            Target::Idem => app.send(Idem { n }).await.map(drop),
            Target::Saga => {
                let id = format!("{}-c{client}-{n}", app.instance_id());
                match app.send(RunSaga { id, hold_ms: 0 }).await {
                    Ok(outcome) if outcome == "completed" => Ok(()),
                    Ok(outcome) => return Err(format!("saga_{}", outcome.split(':').next().unwrap_or("other"))),
                    Err(e) => Err(e),
                }
            }
        };
        result.map_err(|e| kind(&e))
    }
}

/// A short name for an error, for the report's counts.
fn kind(e: &catga::Error) -> String {
    use catga::Error as E;
    match e {
        E::NoHandler { .. } => "no_handler".into(),
        E::Timeout { .. } => "timeout".into(),
        E::Handler { error, .. } => error.code().to_owned(),
        E::Shutdown { .. } => "shutdown".into(),
        E::Transport { .. } => "transport".into(),
        E::Store(_) => "store".into(),
        E::Saga { .. } => "saga".into(),
        E::Codec { .. } => "codec".into(),
        _ => "other".into(),
    }
}

/// The requests' slices, filled by the request tasks.
struct Recorder {
    t0: Instant,
    buckets: Vec<(Bucket, Histogram<u64>)>,
    errors: BTreeMap<String, u64>,
    errors_first_ms: BTreeMap<String, u64>,
    start: Histogram<u64>,
}

impl Recorder {
    fn slice(&mut self, at: Instant) -> &mut (Bucket, Histogram<u64>) {
        let i = (at.saturating_duration_since(self.t0).as_millis() as u64 / BUCKET_MS) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, || (Bucket::default(), histogram()));
        }
        &mut self.buckets[i]
    }

    fn finished(&mut self, due: Instant, started: Instant, end: Instant, outcome: Result<(), String>) {
        record(&mut self.start, started.saturating_duration_since(due));
        let took = end.saturating_duration_since(due);
        match outcome {
            Ok(()) => {
                let (b, h) = self.slice(due);
                b.ok += 1;
                record(h, took);
                self.slice(end).0.done += 1;
            }
            Err(kind) => {
                let (b, _) = self.slice(due);
                b.failed += 1;
                b.worst_failed_us = b.worst_failed_us.max(took.as_micros() as u64);
                let at = due.saturating_duration_since(self.t0).as_millis() as u64;
                let first = self.errors_first_ms.entry(kind.clone()).or_insert(at);
                *first = (*first).min(at);
                *self.errors.entry(kind).or_default() += 1;
            }
        }
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// The Instant corresponding to Unix time `ns` (this machine's clocks).
fn instant_of(ns: u64) -> Instant {
    let (now_i, now_ns) = (Instant::now(), unix_ns(SystemTime::now()));
    if ns >= now_ns { now_i + Duration::from_nanos(ns - now_ns) } else { now_i - Duration::from_nanos(now_ns - ns) }
}

/// This process's CPU time so far, s (user + system, from /proc).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / clock_ticks())
}

/// Clock ticks per second of /proc's times (`USER_HZ`, 100 on Linux).
fn clock_ticks() -> f64 {
    100.0
}

/// Connect, wait until a request gets through (bounded), and say `ready`.
async fn connect(spec: &Spec) -> Result<Sender, String> {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let sender = if spec.target == Target::Raw {
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(timeout))
            .connect(spec.nats.as_str())
            .await
            .map_err(|e| format!("connect to {}: {e}", spec.nats))?;
        let payload = serde_json::to_vec(&Blob::new()).expect("encode").into();
        Sender::Raw(client, payload, timeout)
    } else {
        let app = Catga::builder()
            .nats_url(&spec.nats)
            .service("load-client")
            .instance_id(format!("load-client-{}-{}", spec.id, std::process::id()))
            .request_timeout(timeout)
            .send_retries(spec.retries)
            .client_only()
            .start()
            .await
            .map_err(|e| format!("start the Catga client: {e}"))?;
        Sender::Catga(app)
    };
    // One request through before the schedule (a saga probe would leave a
    // saga behind: probe with the echo, which every instance serves).
    let probe = if spec.target == Target::Raw { Target::Raw } else { Target::Echo };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match sender.send(probe, spec.id, u64::MAX).await {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => return Err(format!("no request got through in 20 s: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(sender)
}

/// The client process: run `spec`, write its report.
pub fn main(spec: Spec) -> Result<(), String> {
    // Before any thread starts, so the runtime and the pacer inherit it.
    let timer_slack_ns = pace::reduce_timer_slack();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let sender = rt.block_on(connect(&spec))?;
    println!("ready");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // The orchestrator answers with the common start time, once every
    // client is ready.
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| format!("read the start time: {e}"))?;
    let t0_unix_ns: u64 = line.trim().parse().map_err(|_| format!("bad start time {line:?}"))?;
    let t0 = instant_of(t0_unix_ns);
    let rec = Arc::new(Mutex::new(Recorder {
        t0,
        buckets: Vec::new(),
        errors: BTreeMap::new(),
        errors_first_ms: BTreeMap::new(),
        start: histogram(),
    }));
    let outstanding = Arc::new(AtomicU64::new(0));
    let schedule = Duration::from_millis(spec.warmup_ms + spec.duration_ms);
    let mut dispatch_h = histogram();
    let mut sent_per_slice: Vec<u64> = Vec::new();
    match spec.model {
        Model::Open { rate } => {
            let count = (rate * schedule.as_secs_f64()).round() as u64;
            let handle = rt.handle().clone();
            pace::wait_until(t0);
            pace::open_loop(t0, rate, count, |n, due, now| {
                record(&mut dispatch_h, now.saturating_duration_since(due));
                let slice = (due.saturating_duration_since(t0).as_millis() as u64 / BUCKET_MS) as usize;
                if sent_per_slice.len() <= slice {
                    sent_per_slice.resize(slice + 1, 0);
                }
                sent_per_slice[slice] += 1;
                let (sender, rec, outstanding) = (sender.clone(), rec.clone(), outstanding.clone());
                let (target, id) = (spec.target, spec.id);
                outstanding.fetch_add(1, Ordering::Relaxed);
                handle.spawn(async move {
                    let started = Instant::now();
                    let outcome = sender.send(target, id, n).await;
                    let end = Instant::now();
                    rec.lock().expect("recorder").finished(due, started, end, outcome);
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                });
            });
        }
        Model::Closed { concurrency } => {
            let end = t0 + schedule;
            let stop = Arc::new(AtomicBool::new(false));
            let next = Arc::new(AtomicU64::new(0));
            let sent = Arc::new(Mutex::new(Vec::<u64>::new()));
            // Bounded in count too: no loop sends more than 100 000.
            let loops: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (sender, rec, stop, next, sent) =
                        (sender.clone(), rec.clone(), stop.clone(), next.clone(), sent.clone());
                    let (target, id) = (spec.target, spec.id);
                    rt.spawn(async move {
                        tokio::time::sleep_until(t0.into()).await;
                        for _ in 0..100_000u32 {
                            let started = Instant::now();
                            if stop.load(Ordering::Relaxed) || started >= end {
                                break;
                            }
                            let slice = (started.saturating_duration_since(t0).as_millis() as u64 / BUCKET_MS) as usize;
                            {
                                let mut sent = sent.lock().expect("sent");
                                if sent.len() <= slice {
                                    sent.resize(slice + 1, 0);
                                }
                                sent[slice] += 1;
                            }
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            let outcome = sender.send(target, id, n).await;
                            rec.lock().expect("recorder").finished(started, started, Instant::now(), outcome);
                        }
                    })
                })
                .collect();
            let bound = end.saturating_duration_since(Instant::now()) + spec.longest_request();
            let all = rt.block_on(async { tokio::time::timeout(bound, futures_util::future::join_all(loops)).await });
            stop.store(true, Ordering::Relaxed);
            if all.is_err() {
                eprintln!("closed loops still running {bound:?} after the start; stopped");
            }
            sent_per_slice = sent.lock().expect("sent").clone();
        }
    }
    // Wait for what is still unanswered, at most as long as one request can take.
    let deadline = Instant::now() + spec.longest_request();
    while outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let unfinished = outstanding.load(Ordering::Relaxed);
    let retries = match &sender {
        Sender::Catga(app) => app.retries(),
        Sender::Raw(..) => 0,
    };
    let mut rec = rec.lock().expect("recorder");
    let len = rec.buckets.len().max(sent_per_slice.len());
    rec.buckets.resize_with(len, || (Bucket::default(), histogram()));
    let buckets: Vec<Bucket> = rec
        .buckets
        .iter()
        .enumerate()
        .map(|(i, (b, h))| {
            let mut b = b.clone();
            b.sent = sent_per_slice.get(i).copied().unwrap_or(0);
            // Unanswered ones count as failed in the slice they were due.
            let unanswered = b.sent.saturating_sub(b.ok + b.failed);
            b.failed += unanswered;
            b.latency = Pairs::of(h);
            b
        })
        .collect();
    let mut errors = std::mem::take(&mut rec.errors);
    let errors_first_ms = std::mem::take(&mut rec.errors_first_ms);
    if unfinished > 0 {
        errors.insert("unanswered".into(), unfinished);
    }
    let report = ClientReport {
        id: spec.id,
        t0_unix_ns,
        buckets,
        errors,
        errors_first_ms,
        retries,
        unfinished,
        timing: Timing {
            dispatch: Pairs::of(&dispatch_h),
            start: Pairs::of(&rec.start),
            timer_slack_ns: if matches!(spec.model, Model::Open { .. }) { timer_slack_ns } else { None },
        },
        cpu_s: cpu_seconds("self").unwrap_or(0.0),
    };
    drop(rec);
    let json = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
    std::fs::write(&spec.out, json).map_err(|e| format!("write {}: {e}", spec.out.display()))?;
    if let Sender::Catga(app) = &sender {
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(5), app.shutdown()).await;
        });
    }
    // Leave the runtime without waiting for tasks that never finished.
    rt.shutdown_timeout(Duration::from_millis(100));
    println!("done");
    Ok(())
}
