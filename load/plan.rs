//! What a run measures, and how long each part takes: the full run (about
//! 12 minutes on a 2-core machine), `--quick` (about 80 s) and `--tiny`
//! (the test suite's smoke run: every phase and scenario, at the smallest
//! sizes, in well under a minute even from debug builds).

use serde::{Deserialize, Serialize};

/// The phases, in the order they run.
pub const PHASES: [&str; 5] = ["scaling", "latency", "recovery", "sagas", "costs"];

/// The recovery scenarios, in the order they run.
pub const SCENARIOS: [&str; 6] =
    ["kill-1-of-3", "kill-2-of-4", "sigterm-1-of-3", "scale-up", "nats-node-kill", "redis-primary-kill"];

/// Sizes and durations of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// `full`, `quick` or `tiny` (with `+` when a setting was changed).
    pub name: String,
    /// Instance counts of the scaling phase.
    pub scaling_instances: Vec<usize>,
    /// Warm-up and measurement of each scaling run, ms.
    pub scaling_warmup_ms: u64,
    /// Measured stretch of each scaling run, ms.
    pub scaling_ms: u64,
    /// The I/O-bound handler's sleep, ms.
    pub io_sleep_ms: u64,
    /// Handlings per instance (`CATGA_MAX_IN_FLIGHT`) in the scaling and
    /// recovery phases: with `io_sleep_ms`, it sets an instance's capacity.
    pub per_instance_limit: usize,
    /// Closed-loop requests in flight per handling slot: `instances ×
    /// limit × backlog` keeps a queue at every instance although NATS picks
    /// queue members at random.
    pub backlog: usize,
    /// CPU work per CPU-bound request, µs on one core of this machine
    /// (calibrated at the start into rounds of `burn`).
    pub cpu_work_us: u64,
    /// Instance counts of the latency phase.
    pub latency_instances: Vec<usize>,
    /// Offered rates of the latency phase, requests/s.
    pub rates: Vec<u64>,
    /// Warm-up of each latency run, ms.
    pub latency_warmup_ms: u64,
    /// Measured stretch of each latency run, ms.
    pub latency_ms: u64,
    /// The most one client process offers; above it the rate is split
    /// over several clients.
    pub rate_per_client: u64,
    /// Recovery: warm-up, then steady load before the event, ms.
    pub recovery_warmup_ms: u64,
    /// Steady load before the event, ms.
    pub recovery_pre_ms: u64,
    /// Load after the event, ms.
    pub recovery_post_ms: u64,
    /// Load after the Redis primary's kill, ms.
    pub redis_post_ms: u64,
    /// How long the killed Redis primary stays down before it is started
    /// again (as a supervisor would), ms.
    pub redis_down_ms: u64,
    /// Recovery load as a share of the instances' capacity.
    pub recovery_load: f64,
    /// Idempotent commands per second in `redis-primary-kill`.
    pub redis_idem_rate: f64,
    /// Sagas per second in `redis-primary-kill`.
    pub redis_saga_rate: f64,
    /// Instance counts of the saga phase.
    pub saga_instances: Vec<usize>,
    /// Sagas in flight (closed loop) of the saga phase.
    pub saga_in_flight: Vec<usize>,
    /// Warm-up of each saga run, ms.
    pub saga_warmup_ms: u64,
    /// Measured stretch of each saga run, ms.
    pub saga_ms: u64,
    /// Operations per cost probe.
    pub cost_ops: u64,
    /// Sagas kept running during the sweep probe.
    pub cost_live_sagas: u64,
    /// Length of the background-traffic probes, ms.
    pub cost_idle_ms: u64,
    /// Per-attempt request timeout of the clients, ms.
    pub timeout_ms: u64,
    /// Catga's retries after "no responders".
    pub retries: u32,
}

impl Profile {
    /// The full run.
    pub fn full() -> Profile {
        Profile {
            name: "full".into(),
            scaling_instances: vec![1, 2, 3, 5, 10],
            scaling_warmup_ms: 1_000,
            scaling_ms: 5_000,
            io_sleep_ms: 10,
            per_instance_limit: 10,
            backlog: 4,
            cpu_work_us: 200,
            latency_instances: vec![1, 3, 10],
            rates: vec![1_000, 5_000, 10_000, 20_000, 30_000],
            latency_warmup_ms: 1_000,
            latency_ms: 8_000,
            rate_per_client: 15_000,
            recovery_warmup_ms: 1_000,
            recovery_pre_ms: 5_000,
            recovery_post_ms: 10_000,
            redis_post_ms: 15_000,
            redis_down_ms: 3_000,
            recovery_load: 0.4,
            redis_idem_rate: 500.0,
            redis_saga_rate: 50.0,
            saga_instances: vec![1, 3],
            saga_in_flight: vec![1, 16, 64],
            saga_warmup_ms: 1_000,
            saga_ms: 5_000,
            cost_ops: 1_000,
            cost_live_sagas: 200,
            cost_idle_ms: 4_000,
            // Catga's defaults: the recovery figures hold for a user who
            // sets nothing but the server URLs.
            timeout_ms: 5_000,
            retries: 2,
        }
    }

    /// `--quick`: every phase and scenario, fewer points, shorter windows.
    pub fn quick() -> Profile {
        Profile {
            name: "quick".into(),
            scaling_instances: vec![1, 3, 10],
            scaling_warmup_ms: 300,
            scaling_ms: 1_000,
            latency_instances: vec![1, 3],
            rates: vec![1_000, 10_000],
            latency_warmup_ms: 300,
            latency_ms: 1_000,
            recovery_warmup_ms: 200,
            recovery_pre_ms: 1_000,
            recovery_post_ms: 5_000,
            redis_post_ms: 8_000,
            saga_in_flight: vec![1, 16],
            saga_warmup_ms: 300,
            saga_ms: 1_000,
            cost_ops: 200,
            cost_live_sagas: 50,
            cost_idle_ms: 1_000,
            ..Profile::full()
        }
    }

    /// `--tiny`: the smoke test's run.
    pub fn tiny() -> Profile {
        Profile {
            name: "tiny".into(),
            scaling_instances: vec![1, 2],
            scaling_warmup_ms: 200,
            scaling_ms: 500,
            per_instance_limit: 4,
            cpu_work_us: 50,
            latency_instances: vec![1],
            rates: vec![200],
            latency_warmup_ms: 200,
            latency_ms: 500,
            recovery_warmup_ms: 200,
            recovery_pre_ms: 500,
            recovery_post_ms: 1_000,
            redis_post_ms: 1_000,
            redis_down_ms: 300,
            redis_idem_rate: 50.0,
            redis_saga_rate: 10.0,
            saga_instances: vec![1],
            saga_in_flight: vec![1, 4],
            saga_warmup_ms: 200,
            saga_ms: 500,
            cost_ops: 20,
            cost_live_sagas: 5,
            cost_idle_ms: 500,
            timeout_ms: 500,
            ..Profile::quick()
        }
    }
}

impl Profile {
    /// Change one setting, `key=value` with the value in JSON
    /// (`recovery_post_ms=20000`, `rates=[1000,5000]`).
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (key, value) = assignment.split_once('=').ok_or_else(|| format!("--set {assignment:?}: want KEY=VALUE"))?;
        let mut all = serde_json::to_value(&*self).map_err(|e| e.to_string())?;
        let slot = all.get_mut(key).ok_or_else(|| format!("--set: no setting {key:?}"))?;
        *slot = serde_json::from_str(value).map_err(|e| format!("--set {key}: {value:?} is not JSON: {e}"))?;
        let mut changed: Profile = serde_json::from_value(all).map_err(|e| format!("--set {key}: {e}"))?;
        if !changed.name.ends_with('+') {
            changed.name.push('+');
        }
        *self = changed;
        Ok(())
    }
}
