//! The shape of `results.json`: every figure a run produced, with the
//! machine, the commit, the date and the settings it ran with.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::Profile;
use crate::procs::CpuUse;

/// The whole of `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// `catga-load`.
    pub tool: &'static str,
    /// The command line that produced it.
    pub command: String,
    /// The profile's name (`full`, `quick`, `tiny`).
    pub profile: String,
    /// The commit of the tree that was built (`git describe --dirty`).
    pub commit: String,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// How long it took, s.
    pub elapsed_s: f64,
    /// Where it ran.
    pub machine: Machine,
    /// The two load models, stated.
    pub load_models: LoadModels,
    /// Sizes and durations.
    pub settings: Profile,
    /// Settings derived at the start of the run.
    pub derived: Derived,
    /// The generator's own timing error, over every open-loop run.
    pub generator: Generator,
    /// Throughput against instance count.
    pub scaling: Vec<ScalingRow>,
    /// Latency at a fixed offered rate, against raw async-nats.
    pub latency: Vec<LatencyRow>,
    /// Failures and scaling events under steady load.
    pub recovery: Vec<RecoveryRow>,
    /// A 3-step saga's throughput and latency.
    pub sagas: Vec<SagaRow>,
    /// Per-operation costs (messages, round trips, bytes, CPU).
    pub costs: Costs,
    /// The goals, each met or not.
    pub goals: Vec<Goal>,
    /// Warnings and errors the instances logged, by run (at most 20 lines each).
    pub instance_log: BTreeMap<String, Vec<String>>,
    /// Phases that failed, and why (empty in a complete run).
    pub errors: Vec<String>,
}

/// The machine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// `nats-server --version`.
    pub nats_server: String,
    /// `redis-server --version`.
    pub redis_server: String,
    /// Load average (1, 5, 15 min) when the run started.
    pub load_before: String,
    /// Load average when it ended.
    pub load_after: String,
}

/// The load models of the run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadModels {
    /// How throughput is measured.
    pub throughput: String,
    /// How latency and recovery are measured.
    pub latency: String,
}

/// Derived at the start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Derived {
    /// Rounds of `burn` per CPU-bound request.
    pub cpu_rounds: u64,
    /// What one CPU-bound request's work took on one core, µs (measured).
    pub cpu_work_us: f64,
    /// One instance's I/O-bound capacity, requests/s (the scaling phase's
    /// 1-instance figure, or the nominal `limit / sleep` without it).
    pub io_capacity_per_instance: f64,
}

/// The generator's timing error, µs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Generator {
    /// Pacer: how late a request was handed to the runtime (p50).
    pub dispatch_p50_us: u64,
    /// p99.
    pub dispatch_p99_us: u64,
    /// p99.9.
    pub dispatch_p999_us: u64,
    /// Largest.
    pub dispatch_max_us: u64,
    /// How late the request's task first ran (p50): includes the above.
    pub start_p50_us: u64,
    /// p99.
    pub start_p99_us: u64,
    /// p99.9.
    pub start_p999_us: u64,
    /// Largest.
    pub start_max_us: u64,
    /// The pacing threads' timer slack, ns.
    pub timer_slack_ns: Option<u64>,
    /// Requests these figures cover.
    pub requests: u64,
}

/// One scaling point.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingRow {
    /// `io` or `cpu`.
    pub handler: &'static str,
    /// Instance processes.
    pub instances: usize,
    /// Requests in flight (closed loop).
    pub in_flight: usize,
    /// Replies per second.
    pub rps: f64,
    /// `rps / (instances × rps at 1 instance)`.
    pub efficiency: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// p99 latency, µs.
    pub p99_us: u64,
    /// Failed requests.
    pub failed: u64,
    /// CPU used meanwhile.
    pub cpu: CpuUse,
    /// NATS messages through the server per request.
    pub nats_msgs_per_request: f64,
}

/// One latency point: Catga and raw async-nats at the same offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    /// Instance (and raw responder) processes.
    pub instances: usize,
    /// Client processes sharing the rate.
    pub clients: usize,
    /// Offered rate, requests/s.
    pub offered_rps: f64,
    /// Catga: replies per second in the measured stretch.
    pub achieved_rps: f64,
    /// Catga latency, µs.
    pub p50_us: u64,
    /// p90.
    pub p90_us: u64,
    /// p99.
    pub p99_us: u64,
    /// p99.9.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Catga: failed requests.
    pub failed: u64,
    /// Raw: replies per second.
    pub raw_achieved_rps: f64,
    /// Raw latency, µs.
    pub raw_p50_us: u64,
    /// p90.
    pub raw_p90_us: u64,
    /// p99.
    pub raw_p99_us: u64,
    /// p99.9.
    pub raw_p999_us: u64,
    /// Largest.
    pub raw_max_us: u64,
    /// Raw: failed requests.
    pub raw_failed: u64,
    /// Catga p99 / raw p99.
    pub p99_ratio: f64,
    /// Catga p99.9 / raw p99.9.
    pub p999_ratio: f64,
    /// The generator's p99 lateness in the Catga run (dispatch / task start), µs.
    pub generator_p99_us: (u64, u64),
    /// The same in the raw run.
    pub raw_generator_p99_us: (u64, u64),
    /// CPU during the Catga run.
    pub cpu: CpuUse,
    /// CPU during the raw run.
    pub raw_cpu: CpuUse,
    /// NATS messages through the server per request (Catga / raw).
    pub nats_msgs_per_request: (f64, f64),
}

/// One recovery scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryRow {
    /// Its name.
    pub scenario: &'static str,
    /// What happened.
    pub event: String,
    /// Instances before and after.
    pub instances: (usize, usize),
    /// Offered rate (all streams), requests/s.
    pub offered_rps: f64,
    /// Requests due from the start of the measured stretch to the end.
    pub requests: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Sends the Catga clients retried.
    pub retries: u64,
    /// The slowest request (answered or failed), ms, from its intended send.
    pub worst_ms: f64,
    /// From the event to the start of the first 1 s window whose p99 is
    /// within 1.5× the pre-event p99 and stays so for 3 s; `None`: not
    /// within the run.
    pub recovered_ms: Option<u64>,
    /// p99 before the event, µs.
    pub pre_p99_us: u64,
    /// p99 over the whole measured stretch, µs.
    pub p99_us: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// For each kind, when its first failed request was due, ms after the
    /// start of the measured stretch (negative: in the warm-up).
    pub errors_first_ms: BTreeMap<String, i64>,
    /// Each load stream, when there are several.
    pub streams: Vec<StreamRow>,
    /// The event's time, ms after the start of the measured stretch, and
    /// any later marks (a restart).
    pub marks: Vec<(String, u64)>,
    /// Per 100 ms: ms after the start of the measured stretch, p99 µs
    /// (failures counted as slowest), max µs, replies per second, failed.
    pub timeline: Vec<(u64, u64, u64, f64, u64)>,
    /// The plot's file name.
    pub plot: String,
}

/// One stream of a scenario with several.
#[derive(Debug, Clone, Serialize)]
pub struct StreamRow {
    /// What it sends.
    pub name: String,
    /// Offered rate.
    pub offered_rps: f64,
    /// Requests.
    pub requests: u64,
    /// Failed.
    pub failed: u64,
    /// Retried sends.
    pub retries: u64,
    /// Slowest, ms.
    pub worst_ms: f64,
    /// Recovery, as for the scenario.
    pub recovered_ms: Option<u64>,
    /// p99 before the event, µs.
    pub pre_p99_us: u64,
}

/// One saga point.
#[derive(Debug, Clone, Serialize)]
pub struct SagaRow {
    /// Instance processes.
    pub instances: usize,
    /// Sagas in flight (closed loop).
    pub in_flight: usize,
    /// Completed sagas per second.
    pub per_s: f64,
    /// Median latency of a whole saga (the client's command to its end), µs.
    pub p50_us: u64,
    /// p99, µs.
    pub p99_us: u64,
    /// Failed.
    pub failed: u64,
    /// Redis commands per saga (scripts' inner commands included).
    pub redis_commands_per_saga: f64,
    /// CPU meanwhile.
    pub cpu: CpuUse,
}

/// Per-operation costs, measured with counters of the servers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Costs {
    /// One operation of each kind: what it cost.
    pub per_op: Vec<OpCost>,
    /// Traffic of instances doing nothing, per instance per second.
    pub background: Vec<Background>,
}

/// What one operation costs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCost {
    /// `command`, `raw_request`, `event`, `idempotent_command`, `saga`, `srv_ping`.
    pub op: String,
    /// Instances subscribed.
    pub instances: usize,
    /// Operations measured.
    pub ops: u64,
    /// NATS messages into the server per operation.
    pub nats_in_msgs: f64,
    /// NATS messages out of the server per operation.
    pub nats_out_msgs: f64,
    /// NATS payload bytes in per operation (headers included).
    pub nats_in_bytes: f64,
    /// NATS payload bytes out per operation.
    pub nats_out_bytes: f64,
    /// Redis requests from clients per operation (round trips: each
    /// script call, WAIT or plain command is one).
    pub redis_round_trips: f64,
    /// Redis commands run per operation, scripts' inner commands included.
    pub redis_commands: f64,
    /// Bytes clients sent to Redis per operation.
    pub redis_in_bytes: f64,
    /// Bytes Redis sent back per operation.
    pub redis_out_bytes: f64,
    /// Redis requests by command (per operation).
    pub redis_by_command: BTreeMap<String, f64>,
    /// CPU time per operation, µs: instances, nats-server, redis-server.
    pub cpu_us: (f64, f64, f64),
}

/// Background traffic of idle (or saga-holding) instances.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Background {
    /// What was running.
    pub what: String,
    /// Instances.
    pub instances: usize,
    /// Sagas running meanwhile (held in a step).
    pub live_sagas: u64,
    /// NATS messages per instance per second (in + out).
    pub nats_msgs_per_instance_s: f64,
    /// Redis requests per instance per second.
    pub redis_round_trips_per_instance_s: f64,
    /// Redis requests by command, per instance per second.
    pub redis_by_command: BTreeMap<String, f64>,
    /// Bytes to and from Redis per instance per second.
    pub redis_bytes_per_instance_s: f64,
}

/// One goal of the issue.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What was asked.
    pub goal: String,
    /// What was measured.
    pub measured: String,
    /// Met or not (`None`: not measured in this run).
    pub met: Option<bool>,
}
