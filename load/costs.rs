//! What one operation costs, counted by the servers themselves (untimed):
//! NATS messages and bytes (`/varz`), Redis requests (`MONITOR`: every
//! request a client made, and apart from them the commands scripts ran),
//! Redis bytes (`INFO`), and CPU time (/proc) — for a command, a raw
//! request, an event, an idempotent command, a saga, a `$SRV.PING`, and the
//! background traffic of idle instances and of instances holding running
//! sagas. `docs/SCALE.md` works from these.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use catga_suite::{NatsServer, RedisServer};
use futures_util::StreamExt;

use crate::contracts::{Blob, Idem, Noted, RAW_SUBJECT, RunSaga, SubmitSaga};
use crate::phases::say;
use crate::procs::{CpuSample, InstanceEnv, Instances, RawResponders, cpu_sample, wait_reachable};
use crate::results::{Background, Costs, OpCost};
use crate::run::{Ctx, NatsCounters, RedisCounters, nats_counters, parse_redis_info, redis_counters};

/// Requests seen by a Redis `MONITOR`, by (ran inside a script?, command).
type Counts = BTreeMap<(bool, String), u64>;

/// A `MONITOR` connection, read by a thread.
struct Monitor {
    stop: Arc<AtomicBool>,
    /// Its counts, and the bytes the feed itself took.
    thread: std::thread::JoinHandle<(Counts, u64)>,
}

impl Monitor {
    fn start(port: u16) -> Result<Monitor, String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("MONITOR: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
        s.write_all(b"*1\r\n$7\r\nMONITOR\r\n").map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut counts, mut bytes, mut pending) = (BTreeMap::new(), 0u64, Vec::<u8>::new());
            let mut buf = [0u8; 64 * 1024];
            // Bounded: at most 10 minutes of reading.
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(600) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        bytes += n as u64;
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=end).collect();
                            if let Some(key) = parse_monitor_line(&String::from_utf8_lossy(&line)) {
                                *counts.entry(key).or_insert(0) += 1;
                            }
                        }
                    }
                    Err(_) if flag.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            (counts, bytes)
        });
        // Let the server register the monitor before anything is measured.
        std::thread::sleep(Duration::from_millis(50));
        Ok(Monitor { stop, thread })
    }

    /// Stop (after a short quiet time) and return the counts and the bytes
    /// the monitor feed itself took.
    fn stop(self) -> (Counts, u64) {
        std::thread::sleep(Duration::from_millis(150));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// `1700000000.123456 [0 127.0.0.1:5000] "EVALSHA" ...` → (false, "evalsha");
/// `... [0 lua] "hset" ...` → (true, "hset").
fn parse_monitor_line(line: &str) -> Option<(bool, String)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let from_script = line[open..close].ends_with("lua");
    let rest = line[close + 1..].trim_start();
    let cmd = rest.strip_prefix('"')?.split('"').next()?.to_lowercase();
    Some((from_script, cmd))
}

/// Before and after one probe: server counters and CPU.
struct Probe {
    nats: NatsCounters,
    redis: RedisCounters,
    info_bytes: f64,
    cpu: CpuSample,
    monitor: Monitor,
    started: Instant,
}

/// What a probe measured, corrected for the probe's own requests.
struct Measured {
    nats: NatsCounters,
    redis: RedisCounters,
    by_command: Counts,
    cpu_s: (f64, f64, f64),
    seconds: f64,
}

struct Servers<'a> {
    monitor_port: u16,
    redis_port: u16,
    pids: &'a [(&'static str, u32)],
}

impl Servers<'_> {
    fn begin(&self) -> Result<Probe, String> {
        let info = catga_suite::redis::command(self.redis_port, &["INFO", "all"]).map_err(|e| e.to_string())?.text();
        // Its reply as sent: `$<len>\r\n<text>\r\n`.
        let info_bytes = (info.len() + info.len().to_string().len() + 5) as f64;
        Ok(Probe {
            nats: nats_counters(self.monitor_port)?,
            redis: parse_redis_info(&info),
            info_bytes,
            cpu: cpu_sample(self.pids),
            monitor: Monitor::start(self.redis_port)?,
            started: Instant::now(),
        })
    }

    fn end(&self, p: Probe) -> Result<Measured, String> {
        let seconds = p.started.elapsed().as_secs_f64();
        let (by_command, monitor_bytes) = p.monitor.stop();
        let cpu1 = cpu_sample(self.pids);
        let nats = nats_counters(self.monitor_port)?.minus(&p.nats);
        let mut redis = redis_counters(self.redis_port)?.minus(&p.redis);
        // Not the probe's own INFO (its request, 23 bytes, and its reply)
        // and MONITOR (17 bytes, and the feed we read).
        redis.commands -= 2.0;
        redis.in_bytes -= 23.0 + 17.0;
        redis.out_bytes -= p.info_bytes + monitor_bytes as f64;
        for k in ["info", "monitor"] {
            redis.calls.remove(k);
        }
        let mut by_command = by_command;
        by_command.remove(&(false, "info".to_owned()));
        let used = p.cpu.until(&cpu1);
        let wall = p.cpu.secs_until(&cpu1);
        Ok(Measured {
            nats,
            redis,
            by_command,
            cpu_s: (used.instances_cores * wall, used.nats_cores * wall, used.redis_cores * wall),
            seconds,
        })
    }
}

impl Measured {
    /// Per operation, less the background traffic of `idle` over the same time.
    fn per_op(&self, op: &str, instances: usize, ops: u64, idle: Option<&Measured>) -> OpCost {
        let n = ops.max(1) as f64;
        let bg = |f: &dyn Fn(&Measured) -> f64| idle.map(|i| f(i) / i.seconds.max(1e-9) * self.seconds).unwrap_or(0.0);
        let client_requests =
            |m: &Measured| m.by_command.iter().filter(|((lua, _), _)| !lua).map(|(_, c)| *c as f64).sum();
        let mut by_command = BTreeMap::new();
        for ((lua, cmd), count) in &self.by_command {
            if !lua {
                let background =
                    bg(&|m: &Measured| m.by_command.get(&(false, cmd.clone())).copied().unwrap_or(0) as f64);
                let v = ((*count as f64 - background) / n).max(0.0);
                if v >= 0.005 {
                    by_command.insert(cmd.clone(), v);
                }
            }
        }
        let per = |v: f64, b: f64| ((v - b) / n).max(0.0);
        OpCost {
            op: op.to_owned(),
            instances,
            ops,
            nats_in_msgs: per(self.nats.in_msgs, bg(&|m| m.nats.in_msgs)),
            nats_out_msgs: per(self.nats.out_msgs, bg(&|m| m.nats.out_msgs)),
            nats_in_bytes: per(self.nats.in_bytes, bg(&|m| m.nats.in_bytes)),
            nats_out_bytes: per(self.nats.out_bytes, bg(&|m| m.nats.out_bytes)),
            redis_round_trips: per(client_requests(self), bg(&client_requests)),
            redis_commands: per(self.redis.commands, bg(&|m| m.redis.commands)),
            redis_in_bytes: per(self.redis.in_bytes, bg(&|m| m.redis.in_bytes)),
            redis_out_bytes: per(self.redis.out_bytes, bg(&|m| m.redis.out_bytes)),
            redis_by_command: by_command,
            cpu_us: (self.cpu_s.0 / n * 1e6, self.cpu_s.1 / n * 1e6, self.cpu_s.2 / n * 1e6),
        }
    }

    /// Per instance per second.
    fn background(&self, what: &str, instances: usize, live_sagas: u64) -> Background {
        let per = self.seconds.max(1e-9) * instances.max(1) as f64;
        let mut by_command = BTreeMap::new();
        let mut trips = 0.0;
        for ((lua, cmd), count) in &self.by_command {
            if !lua {
                trips += *count as f64;
                by_command.insert(cmd.clone(), *count as f64 / per);
            }
        }
        Background {
            what: what.to_owned(),
            instances,
            live_sagas,
            nats_msgs_per_instance_s: (self.nats.in_msgs + self.nats.out_msgs) / per,
            redis_round_trips_per_instance_s: trips / per,
            redis_by_command: by_command,
            redis_bytes_per_instance_s: (self.redis.in_bytes + self.redis.out_bytes) / per,
        }
    }
}

/// Every probe, on one nats-server, one redis-server and 3 instances.
pub fn costs(ctx: &mut Ctx, out: &mut Costs) -> Result<(), String> {
    let nats = NatsServer::start_monitored();
    let redis = RedisServer::start();
    let url = nats.url();
    let n = 3;
    let hold_ms = ctx.p.cost_idle_ms + 4_000;
    let env = InstanceEnv {
        nats: vec![url.clone()],
        redis: Some(redis.url()),
        // Sagas held in a step for the sweep probe must not time out.
        request_timeout_ms: Some(hold_ms + 10_000),
        ..InstanceEnv::default()
    };
    let mut inst = Instances::start(&ctx.bins, "cost", n, &env);
    let app = ctx.catga_client(&url)?;
    ctx.rt.block_on(wait_reachable(&app, &inst.ids()))?;
    let raw_responder = RawResponders::start(&ctx.bins, &url, 1)?;
    let raw = ctx.rt.block_on(async_nats::connect(url.as_str())).map_err(|e| format!("raw client: {e}"))?;
    let mut pids: Vec<(&'static str, u32)> = inst.pids().into_iter().map(|p| ("instance", p)).collect();
    pids.extend(raw_responder.pids().into_iter().map(|p| ("instance", p)));
    pids.push(("nats", nats.pid()));
    pids.push(("redis", redis.pid()));
    let servers =
        Servers { monitor_port: nats.monitor_port().expect("monitored"), redis_port: redis.port, pids: &pids };
    let ops = ctx.p.cost_ops;
    let idle_window = Duration::from_millis(ctx.p.cost_idle_ms);

    say("costs: idle instances");
    let p = servers.begin()?;
    std::thread::sleep(idle_window);
    let idle = servers.end(p)?;
    out.background.push(idle.background("idle", n, 0));

    say(format!("costs: {ops} commands"));
    let p = servers.begin()?;
    ctx.rt.block_on(async {
        for _ in 0..ops {
            app.send(Blob::new()).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })?;
    out.per_op.push(servers.end(p)?.per_op("command", n, ops, Some(&idle)));

    say(format!("costs: {ops} raw requests"));
    let payload: bytes::Bytes = serde_json::to_vec(&Blob::new()).expect("encode").into();
    let p = servers.begin()?;
    ctx.rt.block_on(async {
        for _ in 0..ops {
            raw.request(RAW_SUBJECT, payload.clone()).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })?;
    out.per_op.push(servers.end(p)?.per_op("raw_request", 1, ops, Some(&idle)));

    say(format!("costs: {ops} events to {n} broadcast subscribers"));
    let p = servers.begin()?;
    ctx.rt.block_on(async {
        for i in 0..ops {
            app.publish(Noted { n: i }).await.map_err(|e| e.to_string())?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<(), String>(())
    })?;
    out.per_op.push(servers.end(p)?.per_op("event", n, ops, Some(&idle)));

    say(format!("costs: {ops} idempotent commands"));
    let p = servers.begin()?;
    ctx.rt.block_on(async {
        for i in 0..ops {
            app.send(Idem { n: i }).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })?;
    out.per_op.push(servers.end(p)?.per_op("idempotent_command", n, ops, Some(&idle)));

    let saga_ops = (ops / 5).max(10);
    say(format!("costs: {saga_ops} sagas"));
    let p = servers.begin()?;
    ctx.rt.block_on(async {
        for i in 0..saga_ops {
            let outcome = app.send(RunSaga { id: format!("cost-{i}"), hold_ms: 0 }).await.map_err(|e| e.to_string())?;
            if outcome != "completed" {
                return Err(format!("saga cost-{i}: {outcome}"));
            }
        }
        Ok::<(), String>(())
    })?;
    let mut saga = servers.end(p)?.per_op("saga", n, saga_ops, Some(&idle));
    // The client's own command to start the saga is not the saga's cost.
    saga.op = "saga (3 steps, incl. the client's RunSaga request)".into();
    out.per_op.push(saga);

    let pings = (ops / 40).clamp(3, 10);
    say(format!("costs: {pings} $SRV.PING requests"));
    let p = servers.begin()?;
    let replies = ctx.rt.block_on(async {
        let mut replies = 0u64;
        for _ in 0..pings {
            let inbox = raw.new_inbox();
            let mut sub = raw.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
            raw.publish_with_reply("$SRV.PING", inbox, bytes::Bytes::new()).await.map_err(|e| e.to_string())?;
            let until = tokio::time::Instant::now() + Duration::from_millis(250);
            while let Ok(Some(_)) = tokio::time::timeout_at(until, sub.next()).await {
                replies += 1;
            }
        }
        Ok::<u64, String>(replies)
    })?;
    let mut srv = servers.end(p)?.per_op("srv_ping", n, pings, Some(&idle));
    srv.op = format!("srv_ping ({:.1} replies each)", replies as f64 / pings as f64);
    out.per_op.push(srv);

    let live = ctx.p.cost_live_sagas;
    say(format!("costs: {n} instances holding {live} running sagas"));
    ctx.rt.block_on(async {
        let submits: Vec<_> = (0..live).map(|i| app.send(SubmitSaga { id: format!("held-{i}"), hold_ms })).collect();
        for r in futures_util::future::join_all(submits).await {
            r.map_err(|e| format!("submit a held saga: {e}"))?;
        }
        Ok::<(), String>(())
    })?;
    // Until every one is stored and running its held step.
    std::thread::sleep(idle_window.min(Duration::from_millis(1_500)));
    let p = servers.begin()?;
    std::thread::sleep(idle_window);
    out.background.push(servers.end(p)?.background("holding running sagas", n, live));

    ctx.log.insert("costs".into(), inst.warnings(20));
    ctx.rt.block_on(app.shutdown());
    Ok(())
}

/// What an idempotent command and a saga cost on a Redis Cluster (3
/// primaries + 3 replicas, the store of the instances `app` reaches):
/// requests from clients by command, summed over the primaries at `ports`
/// (`INFO commandstats`; scripts' inner commands are hash commands, not
/// counted here), so each write's `WAIT` for a replica shows.
pub fn on_cluster(ctx: &Ctx, app: &catga::App, ports: &[u16], ops: u64) -> Result<Vec<OpCost>, String> {
    const FROM_CLIENTS: [&str; 7] = ["evalsha", "eval", "script", "wait", "sadd", "srem", "smembers"];
    let counts = || -> Result<BTreeMap<String, f64>, String> {
        let mut sum = BTreeMap::new();
        for port in ports {
            for (cmd, calls) in redis_counters(*port)?.calls {
                if FROM_CLIENTS.contains(&cmd.as_str()) {
                    *sum.entry(cmd).or_insert(0.0) += calls;
                }
            }
        }
        Ok(sum)
    };
    let per_op = |op: &str, n: u64, before: BTreeMap<String, f64>, after: BTreeMap<String, f64>| {
        let by: BTreeMap<String, f64> = after
            .iter()
            .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)) / n as f64))
            .filter(|(_, v)| *v >= 0.005)
            .collect();
        OpCost {
            op: op.to_owned(),
            instances: 3,
            ops: n,
            redis_round_trips: by.values().sum(),
            redis_by_command: by,
            ..OpCost::default()
        }
    };
    let before = counts()?;
    ctx.rt.block_on(async {
        for i in 0..ops {
            app.send(Idem { n: 1_000_000 + i }).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    })?;
    let after = counts()?;
    let idem = per_op("idempotent_command (Redis Cluster)", ops, before, after.clone());
    let sagas = (ops / 5).max(10);
    ctx.rt.block_on(async {
        for i in 0..sagas {
            let outcome =
                app.send(RunSaga { id: format!("cluster-cost-{i}"), hold_ms: 0 }).await.map_err(|e| e.to_string())?;
            if outcome != "completed" {
                return Err(format!("saga cluster-cost-{i}: {outcome}"));
            }
        }
        Ok::<(), String>(())
    })?;
    let saga = per_op("saga (Redis Cluster)", sagas, after, counts()?);
    Ok(vec![idem, saga])
}

#[cfg(test)]
mod tests {
    use super::parse_monitor_line;

    #[test]
    fn monitor_lines_say_who_ran_what() {
        let client = r#"1700000000.123456 [0 127.0.0.1:50312] "EVALSHA" "abc" "1" "catga:{x}:y""#;
        let script = r#"1700000000.123457 [0 lua] "hset" "catga:{x}:y" "k" "rec""#;
        assert_eq!(parse_monitor_line(client), Some((false, "evalsha".to_owned())));
        assert_eq!(parse_monitor_line(script), Some((true, "hset".to_owned())));
        assert_eq!(parse_monitor_line("+OK\r\n"), None);
    }
}
