//! The measuring phases: scaling (closed loop), latency against raw
//! async-nats (open loop), recovery under steady open-loop load, and
//! sagas (closed loop). Each starts its own servers and instances and
//! stops them (by pid, on drop) before the next.

use std::time::{Duration, Instant};

use catga_suite::{NatsServer, RedisCluster, RedisServer};

use crate::client::Target;
use crate::contracts::burn;
use crate::plan::SCENARIOS;
use crate::procs::{InstanceEnv, Instances, RawResponders, wait_reachable};
use crate::record::{BUCKET_MS, Merged, quantile};
use crate::results::{LatencyRow, RecoveryRow, SagaRow, ScalingRow, StreamRow};
use crate::run::{Ctx, LoadRun, RunOut, Stream, recovery, redis_counters, run};

/// Progress, on stderr, with the seconds since the first message.
pub fn say(msg: impl AsRef<str>) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let since = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[catga-load {since:6.1}s] {}", msg.as_ref());
}

/// Rounds of `burn` for the profile's CPU work, and what they take on
/// one core here (µs), measured on this thread.
pub fn calibrate_cpu(ctx: &mut Ctx) {
    let t = Instant::now();
    let mut x = 0;
    for i in 0..200 {
        x ^= burn(i, 10);
    }
    std::hint::black_box(x);
    let per_round_us = t.elapsed().as_secs_f64() * 1e6 / 2_000.0;
    let rounds = ((ctx.p.cpu_work_us as f64 / per_round_us).round() as u64).max(1);
    let t = Instant::now();
    for i in 0..50 {
        x ^= burn(i, rounds);
    }
    std::hint::black_box(x);
    ctx.derived.cpu_rounds = rounds;
    ctx.derived.cpu_work_us = t.elapsed().as_secs_f64() * 1e6 / 50.0;
    ctx.derived.io_capacity_per_instance = ctx.p.per_instance_limit as f64 * 1_000.0 / (ctx.p.io_sleep_ms as f64 + 0.5);
}

fn pids_of(nats: &[u32], instances: &[u32]) -> Vec<(&'static str, u32)> {
    nats.iter().map(|p| ("nats", *p)).chain(instances.iter().map(|p| ("instance", *p))).collect()
}

/// NATS messages (in + out of the server) per request over the measured
/// stretch (the counters cover it; in a steady state about as many
/// requests ran in it as were due in it).
fn msgs_per_request(out: &RunOut) -> f64 {
    let sent = out.window().sent.max(1) as f64;
    out.nats.map(|n| (n.in_msgs + n.out_msgs) / sent).unwrap_or(0.0)
}

/// Throughput against instance count, closed loop with a backlog at every
/// instance, for the I/O-bound and the CPU-bound handler.
pub fn scaling(ctx: &mut Ctx, rows: &mut Vec<ScalingRow>) -> Result<(), String> {
    let nats = NatsServer::start_monitored();
    let url = nats.url();
    let limit = ctx.p.per_instance_limit;
    let handlers =
        [("io", Target::Io { sleep_ms: ctx.p.io_sleep_ms }), ("cpu", Target::Cpu { rounds: ctx.derived.cpu_rounds })];
    for (handler, target) in handlers {
        for n in ctx.p.scaling_instances.clone() {
            let in_flight = n * limit * ctx.p.backlog;
            say(format!("scaling: {handler} handler, {n} instance(s), {in_flight} in flight"));
            let env = InstanceEnv { nats: vec![url.clone()], max_in_flight: Some(limit), ..InstanceEnv::default() };
            let mut inst = Instances::start(&ctx.bins, &format!("scale-{handler}-{n}"), n, &env);
            let probe = ctx.catga_client(&url)?;
            ctx.rt.block_on(wait_reachable(&probe, &inst.ids()))?;
            ctx.rt.block_on(probe.shutdown());
            let out = run(
                ctx,
                LoadRun {
                    streams: vec![Stream::closed(target, in_flight, &url)],
                    warmup_ms: ctx.p.scaling_warmup_ms,
                    duration_ms: ctx.p.scaling_ms,
                    pids: pids_of(&[nats.pid()], &inst.pids()),
                    varz: nats.monitor_port(),
                    event: None,
                },
            )?;
            let w = out.window();
            rows.push(ScalingRow {
                handler,
                instances: n,
                in_flight,
                rps: w.done_per_s(),
                efficiency: 0.0,
                p50_us: w.q(0.5),
                p99_us: w.q(0.99),
                failed: w.failed,
                cpu: out.cpu.clone(),
                nats_msgs_per_request: msgs_per_request(&out),
            });
            ctx.log.insert(format!("scaling {handler} x{n}"), inst.warnings(20));
        }
    }
    for handler in ["io", "cpu"] {
        let one = rows.iter().find(|r| r.handler == handler && r.instances == 1).map(|r| r.rps);
        for r in rows.iter_mut().filter(|r| r.handler == handler) {
            r.efficiency = one.map(|one| r.rps / (r.instances as f64 * one)).unwrap_or(0.0);
        }
    }
    if let Some(one) = rows.iter().find(|r| r.handler == "io" && r.instances == 1) {
        ctx.derived.io_capacity_per_instance = one.rps;
    }
    Ok(())
}

/// Latency at fixed offered rates, Catga echo against raw async-nats echo
/// with as many responder processes, in the same run (alternating which
/// goes first).
pub fn latency(ctx: &mut Ctx, rows: &mut Vec<LatencyRow>) -> Result<(), String> {
    let nats = NatsServer::start_monitored();
    let url = nats.url();
    for n in ctx.p.latency_instances.clone() {
        let env = InstanceEnv { nats: vec![url.clone()], ..InstanceEnv::default() };
        let mut inst = Instances::start(&ctx.bins, &format!("lat-{n}"), n, &env);
        let raw = RawResponders::start(&ctx.bins, &url, n)?;
        let probe = ctx.catga_client(&url)?;
        ctx.rt.block_on(wait_reachable(&probe, &inst.ids()))?;
        ctx.rt.block_on(probe.shutdown());
        for (k, rate) in ctx.p.rates.clone().into_iter().enumerate() {
            let clients = rate.div_ceil(ctx.p.rate_per_client) as usize;
            let mut one = |target: Target, pids: Vec<(&'static str, u32)>| {
                say(format!("latency: {n} instance(s), {rate}/s offered, {target:?}, {clients} client(s)"));
                run(
                    ctx,
                    LoadRun {
                        streams: vec![Stream::open(target, rate as f64, clients, &url)],
                        warmup_ms: ctx.p.latency_warmup_ms,
                        duration_ms: ctx.p.latency_ms,
                        pids,
                        varz: nats.monitor_port(),
                        event: None,
                    },
                )
            };
            let (catga_pids, raw_pids) = (pids_of(&[nats.pid()], &inst.pids()), pids_of(&[nats.pid()], &raw.pids()));
            let (c, r) = if k % 2 == 0 {
                let c = one(Target::Echo, catga_pids)?;
                (c, one(Target::Raw, raw_pids)?)
            } else {
                let r = one(Target::Raw, raw_pids)?;
                (one(Target::Echo, catga_pids)?, r)
            };
            let (cw, rw) = (c.window(), r.window());
            let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            rows.push(LatencyRow {
                instances: n,
                clients,
                offered_rps: rate as f64,
                achieved_rps: cw.done_per_s(),
                p50_us: cw.q(0.5),
                p90_us: cw.q(0.9),
                p99_us: cw.q(0.99),
                p999_us: cw.q(0.999),
                max_us: cw.latency.max(),
                failed: cw.failed,
                raw_achieved_rps: rw.done_per_s(),
                raw_p50_us: rw.q(0.5),
                raw_p90_us: rw.q(0.9),
                raw_p99_us: rw.q(0.99),
                raw_p999_us: rw.q(0.999),
                raw_max_us: rw.latency.max(),
                raw_failed: rw.failed,
                p99_ratio: ratio(cw.q(0.99), rw.q(0.99)),
                p999_ratio: ratio(cw.q(0.999), rw.q(0.999)),
                generator_p99_us: (quantile(&c.all.dispatch, 0.99), quantile(&c.all.start, 0.99)),
                raw_generator_p99_us: (quantile(&r.all.dispatch, 0.99), quantile(&r.all.start, 0.99)),
                cpu: c.cpu.clone(),
                raw_cpu: r.cpu.clone(),
                nats_msgs_per_request: (msgs_per_request(&c), msgs_per_request(&r)),
            });
        }
        ctx.log.insert(format!("latency x{n}"), inst.warnings(20));
    }
    Ok(())
}

/// The figures of one recovery scenario from its run.
fn recovery_row(
    scenario: &'static str,
    event: String,
    instances: (usize, usize),
    offered_rps: f64,
    out: &RunOut,
    names: &[&str],
) -> RecoveryRow {
    let (from, to) = out.measured;
    let event_ms = out.marks.iter().find(|(l, _)| l == "event").map(|m| m.1).unwrap_or(from);
    let w = out.window();
    let (pre, mut recovered) = recovery(&out.all, from, event_ms, to);
    let mut streams = Vec::new();
    if out.streams.len() > 1 {
        recovered = Some(0);
        for (m, name) in out.streams.iter().zip(names) {
            let sw = m.window(from, to);
            let (spre, srec) = recovery(m, from, event_ms, to);
            recovered = match (recovered, srec) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            streams.push(StreamRow {
                name: (*name).to_owned(),
                offered_rps: sw.sent as f64 / sw.seconds.max(1e-9),
                requests: sw.sent,
                failed: sw.failed,
                retries: m.retries,
                worst_ms: sw.worst_us() as f64 / 1000.0,
                recovered_ms: srec,
                pre_p99_us: spre,
            });
        }
    }
    let timeline = timeline(&out.all, from, to);
    RecoveryRow {
        scenario,
        event,
        instances,
        offered_rps,
        requests: w.sent,
        failed: w.failed,
        retries: out.all.retries,
        worst_ms: w.worst_us() as f64 / 1000.0,
        recovered_ms: recovered,
        pre_p99_us: pre,
        p99_us: w.p99_with_failures(),
        errors: out.all.errors.clone(),
        errors_first_ms: out.all.errors_first_ms.iter().map(|(k, t)| (k.clone(), *t as i64 - from as i64)).collect(),
        streams,
        marks: out.marks.iter().map(|(l, t)| (l.clone(), t.saturating_sub(from))).collect(),
        timeline,
        plot: format!("recovery-{scenario}.svg"),
    }
}

/// Per 100 ms of `[from, to)`: (ms from `from`, p99 with failures, max,
/// replies per second, failed).
fn timeline(m: &Merged, from: u64, to: u64) -> Vec<(u64, u64, u64, f64, u64)> {
    (from / BUCKET_MS..to / BUCKET_MS)
        .map(|i| {
            let s = i * BUCKET_MS;
            let w = m.window(s, s + BUCKET_MS);
            (s - from, w.p99_with_failures(), w.worst_us(), w.done as f64 * (1000 / BUCKET_MS) as f64, w.failed)
        })
        .collect()
}

/// Every recovery scenario (or those in `only`), under steady open-loop
/// load of the I/O-bound handler at `recovery_load` of the instances'
/// capacity (the Redis one: idempotent commands and sagas).
pub fn recovery_all(ctx: &mut Ctx, only: &[String], rows: &mut Vec<RecoveryRow>) -> Result<(), String> {
    let wanted = |scenario: &str| only.is_empty() || only.iter().any(|s| s == scenario);
    // The Redis Cluster takes seconds to form, mostly waiting: start it now,
    // beside the other scenarios (idle until its own).
    let mut cluster = wanted("redis-primary-kill").then(|| std::thread::spawn(RedisCluster::start));
    for scenario in SCENARIOS {
        if !wanted(scenario) {
            continue;
        }
        say(format!("recovery: {scenario}"));
        let row = match scenario {
            "nats-node-kill" => nats_node_kill(ctx)?,
            "redis-primary-kill" => {
                let formed = cluster.take().expect("started above").join();
                redis_primary_kill(ctx, formed.map_err(|_| "the Redis Cluster did not form".to_owned())?)?
            }
            _ => instance_scenario(ctx, scenario)?,
        };
        rows.push(row);
    }
    Ok(())
}

/// Kill, SIGTERM and scale-up: instances on one nats-server.
fn instance_scenario(ctx: &mut Ctx, scenario: &'static str) -> Result<RecoveryRow, String> {
    let cap = ctx.derived.io_capacity_per_instance;
    let load = ctx.p.recovery_load;
    let (start, after, rate) = match scenario {
        "kill-1-of-3" => (3, 2, 3.0 * cap * load),
        "kill-2-of-4" => (4, 2, 4.0 * cap * load),
        "sigterm-1-of-3" => (3, 2, 3.0 * cap * load),
        // Two instances carry the load of three at `load`; a third joins.
        "scale-up" => (2, 3, 3.0 * cap * load),
        other => return Err(format!("unknown scenario {other}")),
    };
    let nats = NatsServer::start_monitored();
    let url = nats.url();
    let env = InstanceEnv {
        nats: vec![url.clone()],
        max_in_flight: Some(ctx.p.per_instance_limit),
        ..InstanceEnv::default()
    };
    let mut inst = Instances::start(&ctx.bins, scenario, start, &env);
    let probe = ctx.catga_client(&url)?;
    ctx.rt.block_on(wait_reachable(&probe, &inst.ids()))?;
    ctx.rt.block_on(probe.shutdown());
    let pids = pids_of(&[nats.pid()], &inst.pids());
    let post = ctx.p.recovery_post_ms;
    let description = match scenario {
        "kill-1-of-3" => "kill -9 of 1 of 3 instances".to_owned(),
        "kill-2-of-4" => "kill -9 of 2 of 4 instances at once".to_owned(),
        "sigterm-1-of-3" => "SIGTERM to 1 of 3 instances (graceful drain)".to_owned(),
        _ => "a third instance starts beside 2".to_owned(),
    };
    let inst_ref = &mut inst;
    let fire = Box::new(move |now: &dyn Fn() -> u64| -> Vec<(String, u64)> {
        let mut marks = Vec::new();
        match scenario {
            "kill-1-of-3" => inst_ref.kill(0),
            "kill-2-of-4" => {
                inst_ref.kill(0);
                inst_ref.kill(1);
            }
            "sigterm-1-of-3" => {
                let started = Instant::now();
                inst_ref.terminate(0);
                while !inst_ref.exited(0) && started.elapsed() < Duration::from_millis(post) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if inst_ref.exited(0) {
                    marks.push(("exited".to_owned(), now()));
                }
            }
            _ => {
                let i = inst_ref.spawn();
                inst_ref.wait_started(i);
                marks.push(("serving".to_owned(), now()));
            }
        }
        marks
    });
    let out = run(
        ctx,
        LoadRun {
            streams: vec![Stream::open(Target::Io { sleep_ms: ctx.p.io_sleep_ms }, rate, 1, &url)],
            warmup_ms: ctx.p.recovery_warmup_ms,
            duration_ms: ctx.p.recovery_pre_ms + post,
            pids,
            varz: nats.monitor_port(),
            event: Some((ctx.p.recovery_pre_ms, fire)),
        },
    )?;
    let mut description = description;
    if scenario == "sigterm-1-of-3" {
        description.push_str(&format!("; its exit code {:?}", inst.wait_exit(0)));
    }
    ctx.log.insert(format!("recovery {scenario}"), inst.warnings(20));
    Ok(recovery_row(scenario, description, (start, after), rate, &out, &[]))
}

/// A 3-node NATS cluster, instance i on node i; two clients, one on the
/// node that is killed and one on another; node 0 is killed.
fn nats_node_kill(ctx: &mut Ctx) -> Result<RecoveryRow, String> {
    let scenario = "nats-node-kill";
    let rate = 3.0 * ctx.derived.io_capacity_per_instance * ctx.p.recovery_load;
    let mut nodes = NatsServer::cluster(3);
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let env =
        InstanceEnv { nats: urls.clone(), max_in_flight: Some(ctx.p.per_instance_limit), ..InstanceEnv::default() };
    let mut inst = Instances::start(&ctx.bins, scenario, 3, &env);
    // Routes: every instance reachable through node 0 and through node 1.
    for url in &urls[..2] {
        let probe = ctx.catga_client(url)?;
        ctx.rt.block_on(wait_reachable(&probe, &inst.ids()))?;
        ctx.rt.block_on(probe.shutdown());
    }
    let node_pids: Vec<u32> = nodes.iter().map(NatsServer::pid).collect();
    let pids = pids_of(&node_pids, &inst.pids());
    let victim = &mut nodes[0];
    let fire = Box::new(move |_: &dyn Fn() -> u64| -> Vec<(String, u64)> {
        victim.kill();
        Vec::new()
    });
    let target = Target::Io { sleep_ms: ctx.p.io_sleep_ms };
    let mut stream = Stream::open(target, rate, 2, &urls[0]);
    stream.nats = vec![urls[0].clone(), urls[1].clone()];
    let out = run(
        ctx,
        LoadRun {
            streams: vec![stream],
            warmup_ms: ctx.p.recovery_warmup_ms,
            duration_ms: ctx.p.recovery_pre_ms + ctx.p.recovery_post_ms,
            pids,
            varz: None,
            event: Some((ctx.p.recovery_pre_ms, fire)),
        },
    )?;
    ctx.log.insert(format!("recovery {scenario}"), inst.warnings(20));
    let description = "kill -9 of node 0 of a 3-node NATS cluster: instance 0 and one of the two clients were \
                       connected to it (each process was given only its own node's URL and learns the others \
                       from the cluster)"
        .to_owned();
    Ok(recovery_row(scenario, description, (3, 3), rate, &out, &[]))
}

/// A Redis Cluster (3 primaries + 3 replicas) as the store of 3
/// instances; idempotent commands and sagas; the primary of the saga
/// index's slot (which every saga touches) is killed, and started again
/// after `redis_down_ms`, as a supervisor would.
fn redis_primary_kill(ctx: &mut Ctx, mut cluster: RedisCluster) -> Result<RecoveryRow, String> {
    let scenario = "redis-primary-kill";
    let nats = NatsServer::start_monitored();
    let url = nats.url();
    let env = InstanceEnv { nats: vec![url.clone()], redis: Some(cluster.url()), ..InstanceEnv::default() };
    let mut inst = Instances::start(&ctx.bins, scenario, 3, &env);
    let probe = ctx.catga_client(&url)?;
    ctx.rt.block_on(wait_reachable(&probe, &inst.ids()))?;
    // Untimed, before the load: what the store's operations cost on a Cluster.
    // The primaries only: a replica counts the writes it replays too.
    let ports: Vec<u16> =
        cluster.nodes_info().iter().filter(|n| n.role == catga_suite::redis::Role::Primary).map(|n| n.port).collect();
    let cluster_costs = crate::costs::on_cluster(ctx, &probe, &ports, ctx.p.cost_ops)?;
    ctx.extra_costs.extend(cluster_costs);
    ctx.rt.block_on(probe.shutdown());
    let victim = cluster.primary_for_slot(cluster.slot_of("catga:{saga-index:load-order}:active"));
    let mut pids = pids_of(&[nats.pid()], &inst.pids());
    pids.extend((0..6).filter_map(|i| cluster.pid(i)).map(|p| ("redis", p)));
    let down = Duration::from_millis(ctx.p.redis_down_ms);
    let cluster_ref = &mut cluster;
    let fire = Box::new(move |now: &dyn Fn() -> u64| -> Vec<(String, u64)> {
        cluster_ref.kill(victim);
        std::thread::sleep(down);
        cluster_ref.restart(victim);
        vec![("restarted".to_owned(), now())]
    });
    let (idem_rate, saga_rate) = (ctx.p.redis_idem_rate, ctx.p.redis_saga_rate);
    let out = run(
        ctx,
        LoadRun {
            streams: vec![
                Stream::open(Target::Idem, idem_rate, 1, &url),
                Stream::open(Target::Saga, saga_rate, 1, &url),
            ],
            warmup_ms: ctx.p.recovery_warmup_ms,
            duration_ms: ctx.p.recovery_pre_ms + ctx.p.redis_post_ms,
            pids,
            varz: nats.monitor_port(),
            event: Some((ctx.p.recovery_pre_ms, fire)),
        },
    )?;
    ctx.log.insert(format!("recovery {scenario}"), inst.warnings(20));
    let description = format!(
        "kill -9 of the Redis Cluster primary that holds the saga index (node {victim}), started again after {} ms",
        ctx.p.redis_down_ms
    );
    Ok(recovery_row(scenario, description, (3, 3), idem_rate + saga_rate, &out, &["idempotent commands", "sagas"]))
}

/// A 3-step saga's throughput and latency, closed loop, on one Redis.
pub fn sagas(ctx: &mut Ctx, rows: &mut Vec<SagaRow>) -> Result<(), String> {
    let nats = NatsServer::start_monitored();
    let redis = RedisServer::start();
    let url = nats.url();
    for n in ctx.p.saga_instances.clone() {
        let env = InstanceEnv { nats: vec![url.clone()], redis: Some(redis.url()), ..InstanceEnv::default() };
        let mut inst = Instances::start(&ctx.bins, &format!("saga-{n}"), n, &env);
        let probe = ctx.catga_client(&url)?;
        ctx.rt.block_on(wait_reachable(&probe, &inst.ids()))?;
        ctx.rt.block_on(probe.shutdown());
        for k in ctx.p.saga_in_flight.clone() {
            say(format!("sagas: {n} instance(s), {k} in flight"));
            let before = redis_counters(redis.port)?;
            let mut pids = pids_of(&[nats.pid()], &inst.pids());
            pids.push(("redis", redis.pid()));
            let out = run(
                ctx,
                LoadRun {
                    streams: vec![Stream::closed(Target::Saga, k, &url)],
                    warmup_ms: ctx.p.saga_warmup_ms,
                    duration_ms: ctx.p.saga_ms,
                    pids,
                    varz: nats.monitor_port(),
                    event: None,
                },
            )?;
            let delta = redis_counters(redis.port)?.minus(&before);
            let sagas: u64 = out.all.buckets.iter().map(|b| b.ok + b.failed).sum();
            let w = out.window();
            rows.push(SagaRow {
                instances: n,
                in_flight: k,
                per_s: w.done_per_s(),
                p50_us: w.q(0.5),
                p99_us: w.q(0.99),
                failed: w.failed,
                redis_commands_per_saga: delta.commands / sagas.max(1) as f64,
                cpu: out.cpu.clone(),
            });
        }
        ctx.log.insert(format!("sagas x{n}"), inst.warnings(20));
    }
    Ok(())
}
