//! The processes a run starts besides the servers: N instances of the bench
//! service, N raw async-nats responders, and the client processes; and the
//! CPU each used (from /proc). Each is stopped by the pid this code started
//! (its `Child` handle), never by name, and every wait is bounded.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use catga::prelude::*;
use catga_suite::ServiceProcess;

use crate::client::{Spec, cpu_seconds};
use crate::contracts::WhoAmI;
use crate::record::ClientReport;

/// The binaries a run uses: this one (for `client` and `raw-responder`)
/// and the bench service beside it.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `catga-load`.
    pub me: PathBuf,
    /// `catga-load-service`.
    pub service: PathBuf,
}

impl Bins {
    /// This executable and `catga-load-service` in its directory.
    pub fn find() -> Result<Bins, String> {
        let me = std::env::current_exe().map_err(|e| format!("where is this executable? {e}"))?;
        let service = me.with_file_name(format!("catga-load-service{}", std::env::consts::EXE_SUFFIX));
        if !service.exists() {
            return Err(format!(
                "{} is missing: build both binaries (cargo build --release --bin catga-load --bin catga-load-service)",
                service.display()
            ));
        }
        Ok(Bins { me, service })
    }
}

/// How instances are configured (`CATGA_*`).
#[derive(Debug, Clone, Default)]
pub struct InstanceEnv {
    /// NATS URL(s) of each instance, by index (cycled).
    pub nats: Vec<String>,
    /// The store, if Redis.
    pub redis: Option<String>,
    /// Handlings per handler (`CATGA_MAX_IN_FLIGHT`).
    pub max_in_flight: Option<usize>,
    /// The instances' own request timeout (their saga steps' sends).
    pub request_timeout_ms: Option<u64>,
}

/// A set of bench service instances, each its own process.
pub struct Instances {
    /// The processes, by index (`None` once stopped).
    pub procs: Vec<Option<ServiceProcess>>,
    env: InstanceEnv,
    bins: Bins,
    tag: String,
    /// Every log line read so far, by instance.
    logs: Vec<Vec<String>>,
    /// How many of them `warnings` has looked at.
    reported: Vec<usize>,
}

impl Instances {
    /// Start `n` instances (`<tag>-0` ..) and wait until each says it serves.
    pub fn start(bins: &Bins, tag: &str, n: usize, env: &InstanceEnv) -> Instances {
        let mut set = Instances {
            procs: Vec::new(),
            env: env.clone(),
            bins: bins.clone(),
            tag: tag.to_owned(),
            logs: Vec::new(),
            reported: Vec::new(),
        };
        let started: Vec<usize> = (0..n).map(|_| set.spawn()).collect();
        for i in started {
            set.wait_started(i);
        }
        set
    }

    /// Start one more instance (not waiting for it); its index.
    pub fn spawn(&mut self) -> usize {
        let i = self.procs.len();
        let id = format!("{}-{i}", self.tag);
        let nats = self.env.nats[i % self.env.nats.len()].clone();
        let mut env: Vec<(&str, String)> =
            vec![("CATGA_NATS_URL", nats), ("CATGA_SERVICE", "load".into()), ("CATGA_INSTANCE_ID", id)];
        if let Some(redis) = &self.env.redis {
            env.push(("CATGA_REDIS_URL", redis.clone()));
        }
        if let Some(limit) = self.env.max_in_flight {
            env.push(("CATGA_MAX_IN_FLIGHT", limit.to_string()));
        }
        if let Some(ms) = self.env.request_timeout_ms {
            env.push(("CATGA_REQUEST_TIMEOUT_MS", ms.to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let service = self.bins.service.to_str().expect("utf-8 path");
        self.procs.push(Some(ServiceProcess::start(service, &env)));
        self.logs.push(Vec::new());
        self.reported.push(0);
        i
    }

    /// Read what every running instance logged since the last call.
    fn read_logs(&mut self) {
        for (p, log) in self.procs.iter_mut().zip(&mut self.logs) {
            if let Some(p) = p.as_mut() {
                log.extend(p.drain_lines());
            }
        }
    }

    /// Wait (20 s at most) until instance `i` logs that it serves.
    pub fn wait_started(&mut self, i: usize) {
        if let Some(p) = self.procs[i].as_mut() {
            p.wait_for("catga instance started");
        }
    }

    /// The ids of the running instances.
    pub fn ids(&self) -> Vec<String> {
        (0..self.procs.len()).filter(|i| self.procs[*i].is_some()).map(|i| format!("{}-{i}", self.tag)).collect()
    }

    /// The pids of the running instances.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().flatten().map(ServiceProcess::pid).collect()
    }

    /// `kill -9` instance `i` (by its handle) and reap it.
    pub fn kill(&mut self, i: usize) {
        self.read_logs();
        if let Some(mut p) = self.procs[i].take() {
            p.kill();
        }
    }

    /// `SIGTERM` to instance `i`: it drains and exits by itself.
    pub fn terminate(&mut self, i: usize) {
        if let Some(p) = self.procs[i].as_ref() {
            p.signal("TERM");
        }
    }

    /// The warnings and errors the running instances logged since the last
    /// call (at most `limit`, with how many more there were).
    pub fn warnings(&mut self, limit: usize) -> Vec<String> {
        let (mut out, mut more) = (Vec::new(), 0);
        self.read_logs();
        for (i, log) in self.logs.iter().enumerate() {
            for line in &log[self.reported[i]..] {
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    if out.len() < limit {
                        out.push(format!("{}-{i}: {line}", self.tag));
                    } else {
                        more += 1;
                    }
                }
            }
        }
        self.reported = self.logs.iter().map(Vec::len).collect();
        if more > 0 {
            out.push(format!("... and {more} more"));
        }
        out
    }

    /// With `CATGA_LOAD_LOGS=DIR` set, write every instance's log lines
    /// read so far to `DIR/<tag>-<i>.log` (for diagnosis).
    fn keep_logs(&mut self) {
        let Some(dir) = std::env::var_os("CATGA_LOAD_LOGS") else { return };
        self.read_logs();
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for (i, log) in self.logs.iter().enumerate() {
            let _ = std::fs::write(dir.join(format!("{}-{i}.log", self.tag)), log.join("\n") + "\n");
        }
    }

    /// Whether instance `i` has exited (or was stopped).
    pub fn exited(&mut self, i: usize) -> bool {
        self.procs[i].as_mut().is_none_or(ServiceProcess::exited)
    }

    /// Wait (bounded) until instance `i` has exited; its exit code.
    pub fn wait_exit(&mut self, i: usize) -> Option<i32> {
        self.read_logs();
        let code = self.procs[i].as_mut().and_then(ServiceProcess::exit_code);
        self.procs[i] = None;
        code
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        self.keep_logs();
    }
}

/// Wait until a request to `WhoAmI` has been answered by every one of `ids`
/// (the queue group picks members at random), at most 20 s.
pub async fn wait_reachable(client: &App, ids: &[String]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ids.iter().all(|id| seen.contains(id)) {
        if Instant::now() >= deadline {
            return Err(format!("instances not all reachable within 20 s: saw {seen:?} of {ids:?}"));
        }
        let sends: Vec<_> = (0..ids.len() * 4).map(|_| client.send(WhoAmI)).collect();
        for id in futures_util::future::join_all(sends).await.into_iter().flatten() {
            seen.insert(id);
        }
    }
    Ok(())
}

/// One process with a line-oriented stdout, its lines read by a thread.
struct Piped {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Piped {
    fn spawn(mut cmd: Command, what: String) -> Result<Piped, String> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("start {what}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Piped { child, stdin, lines, what })
    }

    /// Wait up to `within` for a line equal to `text`.
    fn wait_line(&mut self, text: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim() == text => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    return Err(format!("{} did not say {text:?} within {within:?} (exit: {status:?})", self.what));
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Raw async-nats echo responders (`catga-load raw-responder`), one
/// process each, queue-subscribed to the raw subject.
pub struct RawResponders {
    procs: Vec<Piped>,
}

impl RawResponders {
    /// Start `n` and wait until each has subscribed.
    pub fn start(bins: &Bins, nats: &str, n: usize) -> Result<RawResponders, String> {
        let mut procs = Vec::new();
        for i in 0..n {
            let mut cmd = Command::new(&bins.me);
            cmd.arg("raw-responder").arg(nats);
            procs.push(Piped::spawn(cmd, format!("raw responder {i}"))?);
        }
        for p in &mut procs {
            p.wait_line("ready", Duration::from_secs(20))?;
        }
        Ok(RawResponders { procs })
    }

    /// Their pids.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Piped::pid).collect()
    }
}

/// Unix time in ns.
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// Started client processes, connected and waiting for their start time.
pub struct Clients {
    procs: Vec<Piped>,
    specs: Vec<Spec>,
    /// The common start of their schedules.
    pub t0: SystemTime,
}

impl Clients {
    /// Start a client process per spec, wait (20 s) until each is
    /// connected and has had one request answered, then give them all the
    /// same start time, `lead` from now.
    pub fn start(bins: &Bins, specs: Vec<Spec>, lead: Duration) -> Result<Clients, String> {
        let mut procs = Vec::new();
        for spec in &specs {
            let mut cmd = Command::new(&bins.me);
            cmd.arg("client").arg(serde_json::to_string(spec).map_err(|e| e.to_string())?);
            procs.push(Piped::spawn(cmd, format!("client {}", spec.id))?);
        }
        for p in &mut procs {
            p.wait_line("ready", Duration::from_secs(25))?;
        }
        let t0 = SystemTime::now() + lead;
        for p in &mut procs {
            let stdin = p.stdin.as_mut().expect("piped stdin");
            writeln!(stdin, "{}", unix_ns(t0)).map_err(|e| format!("tell {} its start: {e}", p.what))?;
            stdin.flush().map_err(|e| e.to_string())?;
        }
        Ok(Clients { procs, specs, t0 })
    }

    /// Their pids.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Piped::pid).collect()
    }

    /// Wait (bounded by their schedule and longest request, plus 30 s)
    /// until every client has written its report; the reports.
    pub fn finish(mut self) -> Result<Vec<ClientReport>, String> {
        let longest = self
            .specs
            .iter()
            .map(|s| {
                s.warmup_ms + s.duration_ms + (u64::from(s.retries) + 1) * s.timeout_ms + u64::from(s.retries) * 1000
            })
            .max()
            .unwrap_or(0);
        let until_end = self.t0.duration_since(SystemTime::now()).unwrap_or_default();
        let within = until_end + Duration::from_millis(longest) + Duration::from_secs(30);
        let mut reports = Vec::new();
        for (p, spec) in self.procs.iter_mut().zip(&self.specs) {
            p.wait_line("done", within)?;
            reports.push(read_report(&spec.out)?);
        }
        Ok(reports)
    }
}

fn read_report(path: &Path) -> Result<ClientReport, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let _ = std::fs::remove_file(path);
    serde_json::from_slice(&bytes).map_err(|e| format!("parse {}: {e}", path.display()))
}

/// CPU time of labelled processes and of the whole machine, sampled at
/// two moments.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    procs: Vec<(String, f64)>,
    busy: f64,
    total: f64,
}

/// What ran on the CPUs between two samples: cores used by each role.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// The machine's CPUs busy (all processes), %.
    pub machine_busy_pct: f64,
    /// Cores used by nats-server(s).
    pub nats_cores: f64,
    /// Cores used by the instances (or raw responders).
    pub instances_cores: f64,
    /// Cores used by the client processes.
    pub clients_cores: f64,
    /// Cores used by redis-server(s).
    pub redis_cores: f64,
}

/// The machine's busy and total CPU time so far (jiffies), from /proc/stat.
fn machine_jiffies() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// Sample the CPU time of `procs` (role, pid) and of the machine.
pub fn cpu_sample(procs: &[(&str, u32)]) -> CpuSample {
    let (busy, total) = machine_jiffies();
    CpuSample {
        at: Instant::now(),
        procs: procs
            .iter()
            .map(|(role, pid)| (role.to_string(), cpu_seconds(&pid.to_string()).unwrap_or(0.0)))
            .collect(),
        busy,
        total,
    }
}

impl CpuSample {
    /// Wall time from `self` to `later`, s.
    pub fn secs_until(&self, later: &CpuSample) -> f64 {
        later.at.duration_since(self.at).as_secs_f64()
    }

    /// Cores used by each role since `self`, from `later`.
    pub fn until(&self, later: &CpuSample) -> CpuUse {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-6);
        let mut u = CpuUse {
            machine_busy_pct: 100.0 * (later.busy - self.busy) / (later.total - self.total).max(1.0),
            ..CpuUse::default()
        };
        for ((role, before), (_, after)) in self.procs.iter().zip(&later.procs) {
            let cores = (after - before).max(0.0) / secs;
            match role.as_str() {
                "nats" => u.nats_cores += cores,
                "instance" => u.instances_cores += cores,
                "client" => u.clients_cores += cores,
                "redis" => u.redis_cores += cores,
                _ => {}
            }
        }
        u
    }
}
