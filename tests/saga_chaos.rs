//! Sagas under crashes, across real processes: three `catga-saga-service`
//! instances over a real nats-server, state in a real Redis (one server,
//! then a Redis Cluster of 3 primaries + 3 replicas). Each saga plans a
//! SIGKILL of the instance running it at one step boundary; dead instances
//! are replaced. Every saga must end as planned — `Completed`,
//! `Compensated`, or `Failed` with its cause when a compensation is made to
//! fail — and the effects ledger must show every step and compensation
//! applied exactly once. Loops are bounded in count and time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::saga::SagaStatus;
use catga::store::Key;
use catga_suite::redis::{RedisCluster, RedisServer};
use catga_suite::{NatsServer, ServiceProcess};

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-saga-service");

// The service's contracts, as a client copies them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Crash {
    step: String,
    point: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Plan {
    crash: Option<Crash>,
    fail_step: Option<String>,
    fail_undo: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "saga.start", reply = ())]
struct StartOrder {
    id: String,
    plan: Plan,
}

const STEPS: [&str; 4] = ["charge", "reserve", "create", "notify"];

/// How long the sagas of a matrix may take, all together.
const RUN_BOUND: Duration = Duration::from_secs(150);

/// One saga of the matrix: its id, plan, and the ledger it must end with.
struct Case {
    id: String,
    plan: Plan,
    expect: SagaStatus,
    ledger: Vec<String>,
}

/// Every step boundary, forward and compensating, `per_point` sagas each.
fn matrix(tag: &str, per_point: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    let forward: Vec<String> = STEPS.iter().map(|s| format!("{s}:forward")).collect();
    for step in STEPS {
        for point in ["start", "after_effect"] {
            for n in 0..per_point {
                cases.push(Case {
                    id: format!("{tag}-{step}-{point}-{n}"),
                    plan: Plan { crash: Some(Crash { step: step.into(), point: point.into() }), ..Plan::default() },
                    expect: SagaStatus::Completed,
                    ledger: forward.clone(),
                });
            }
        }
    }
    // `create` fails: `reserve` then `charge` are compensated; crash in the
    // middle of compensating each of them.
    let compensated: Vec<String> =
        ["charge:forward", "reserve:forward", "reserve:compensate", "charge:compensate"].map(String::from).to_vec();
    for step in ["reserve", "charge"] {
        for point in ["undo_start", "undo_after_effect"] {
            for n in 0..per_point {
                cases.push(Case {
                    id: format!("{tag}-undo-{step}-{point}-{n}"),
                    plan: Plan {
                        crash: Some(Crash { step: step.into(), point: point.into() }),
                        fail_step: Some("create".into()),
                        fail_undo: None,
                    },
                    expect: SagaStatus::Compensated,
                    ledger: compensated.clone(),
                });
            }
        }
    }
    // `create` fails and so does `charge`'s compensation: the saga ends
    // `Failed` with the cause, after `reserve` was compensated; a crash in
    // the middle of compensating `reserve` on the way.
    cases.push(Case {
        id: format!("{tag}-failed"),
        plan: Plan {
            crash: Some(Crash { step: "reserve".into(), point: "undo_after_effect".into() }),
            fail_step: Some("create".into()),
            fail_undo: Some("charge".into()),
        },
        expect: SagaStatus::Failed,
        ledger: ["charge:forward", "reserve:forward", "reserve:compensate"].map(String::from).to_vec(),
    });
    cases
}

fn env<'a>(nats: &'a str, redis: &'a str, id: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CATGA_NATS_URL", nats),
        ("CATGA_REDIS_URL", redis),
        ("CATGA_SERVICE", "saga-svc"),
        ("CATGA_INSTANCE_ID", id),
        // A dead runner's sagas, and a dead effect handler's idempotency
        // claim, are taken over once it is judged dead by its heartbeat
        // (about 1 s, by default); a copy waits up to the request timeout
        // for a claim, then the step retries (transient errors do not use
        // up its retries).
        ("CATGA_HANDLER_TIMEOUT_MS", "1000"),
        ("CATGA_REQUEST_TIMEOUT_MS", "2000"),
        ("CATGA_SEND_RETRIES", "3"),
        ("CATGA_GRACE_PERIOD_MS", "2000"),
        // Every planned crash also kills the other sagas running on that
        // instance, so one saga may be cut off many times here.
        ("CATGA_SAGA_CRASH_RERUNS", "50"),
        // The test of a failing compensation: give up on it quickly.
        ("CATGA_SAGA_COMPENSATION_RETRIES", "2"),
    ]
}

/// Run the matrix; `during` runs every round once the sagas are all
/// submitted, with the time since then.
async fn run_matrix(tag: &str, redis_url: &str, per_point: usize, mut during: impl FnMut(Duration)) {
    let nats = NatsServer::start();
    let nats_url = nats.url();
    let mut started = 0;
    let spawn = |started: &mut usize| {
        *started += 1;
        let id = format!("{tag}-svc-{started}");
        ServiceProcess::started(SERVICE, &env(&nats_url, redis_url, &id))
    };
    let mut instances: Vec<ServiceProcess> = (0..3).map(|_| spawn(&mut started)).collect();
    let client = Catga::builder()
        .service("saga-client")
        .nats_url(nats.url())
        .redis_url(redis_url)
        .request_timeout(Duration::from_secs(2))
        .send_retries(5)
        .client_only()
        .start()
        .await
        .unwrap();

    let cases = matrix(tag, per_point);
    let mut all_submitted: Option<Instant> = None;
    // Submit, replace dead instances (bounded), and poll until every saga
    // has finished. Submitting is retried: instances die while it goes on,
    // and a submit is idempotent on the saga id.
    // Most runs end within 25 s. The bound also covers the last resort: a
    // saga no owner's set accounts for is found once its lease lapses (the
    // lease TTL, 60 s by default) — seen about once in six loaded runs on
    // the Cluster, cause not yet pinned down (see docs/ARCHITECTURE.md,
    // recovery).
    let deadline = Instant::now() + RUN_BOUND;
    let began = Instant::now();
    let mut kills = 0;
    let mut submitted = 0;
    let mut finished_at = BTreeMap::new();
    // Every instance's log lines, the dead ones' included, for a failure.
    let mut logs: Vec<String> = Vec::new();
    while finished_at.len() < cases.len() {
        if Instant::now() >= deadline {
            stuck(&client, &cases, &finished_at, &mut instances, &mut logs).await;
        }
        for (n, slot) in instances.iter_mut().enumerate() {
            logs.extend(slot.drain_lines().into_iter().map(|l| format!("[{n}] {l}")));
            if slot.exited() {
                kills += 1;
                assert!(started < 60, "too many instances died");
                *slot = spawn(&mut started);
            }
        }
        while let Some(case) = cases.get(submitted) {
            let start = StartOrder { id: case.id.clone(), plan: case.plan.clone() };
            if client.send(start).await.is_err() {
                break; // its instance died under it: retry on the next round
            }
            submitted += 1;
        }
        if submitted == cases.len() {
            during(all_submitted.get_or_insert_with(Instant::now).elapsed());
        }
        for case in &cases[..submitted] {
            if finished_at.contains_key(&case.id) {
                continue;
            }
            // The store may be failing over: read again on the next round.
            if let Ok(Some(info)) = client.saga_status_by_name("chaos-order", &case.id).await
                && info.status.is_finished()
            {
                finished_at.insert(case.id.clone(), began.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slowest = finished_at.values().max().copied().unwrap_or_default();
    println!(
        "{tag}: {} sagas, {kills} instances killed (SIGKILL), all finished within {slowest:?} of the first submission",
        cases.len()
    );

    for case in &cases {
        let info = client.saga_status_by_name("chaos-order", &case.id).await.unwrap().unwrap();
        assert_eq!(info.status, case.expect, "{}: {info:?}", case.id);
        if case.expect == SagaStatus::Failed {
            let error = info.error.as_deref().unwrap_or_default();
            assert!(error.contains("compensation `refund` of step `charge` failed"), "{}: {error}", case.id);
            assert!(error.contains("step `create` failed"), "the cause is kept: {error}");
        }
        let mut applied = Vec::new();
        for step in STEPS {
            for direction in ["forward", "compensate"] {
                let what = format!("{step}:{direction}");
                let ids = client.store().set_members(&Key::new(format!("ledger:{}", case.id), &what)).await.unwrap();
                assert!(ids.len() <= 1, "{}: {what} applied {} times: {ids:?}", case.id, ids.len());
                if ids.len() == 1 {
                    applied.push(what);
                }
            }
        }
        let mut expected = case.ledger.clone();
        expected.sort();
        applied.sort();
        assert_eq!(applied, expected, "{}: effects applied", case.id);
    }
    assert!(kills > 0, "the planned crashes happened");
    client.shutdown().await;
}

/// Fail, showing where each unfinished saga is and the instances' last log
/// lines that name it.
async fn stuck(
    client: &App,
    cases: &[Case],
    finished_at: &BTreeMap<String, Duration>,
    instances: &mut [ServiceProcess],
    logs: &mut Vec<String>,
) -> ! {
    for (n, slot) in instances.iter_mut().enumerate() {
        logs.extend(slot.drain_lines().into_iter().map(|l| format!("[{n}] {l}")));
    }
    let file = std::env::temp_dir().join(format!("saga-chaos-{}.log", std::process::id()));
    let _ = std::fs::write(&file, logs.join("\n"));
    let mut report = String::new();
    for case in cases.iter().filter(|c| !finished_at.contains_key(&c.id)) {
        let info = client.saga_status_by_name("chaos-order", &case.id).await;
        report.push_str(&format!("\n{}: {info:?}\n", case.id));
        let named: Vec<&String> = logs.iter().filter(|l| l.contains(&case.id)).collect();
        for line in &named[named.len().saturating_sub(12)..] {
            report.push_str(&format!("    {line}\n"));
        }
    }
    let warnings: Vec<&String> = logs.iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    report.push_str("\nlast warnings and errors:\n");
    for line in &warnings[warnings.len().saturating_sub(40)..] {
        report.push_str(&format!("    {line}\n"));
    }
    panic!(
        "sagas still running after {RUN_BOUND:?}: {} of {} finished (every instance's log: {}){report}",
        finished_at.len(),
        cases.len(),
        file.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saga_survives_a_kill_9_at_every_step_boundary_with_each_effect_applied_once() {
    let redis = RedisServer::start();
    run_matrix("single", &redis.url(), 2, |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_with_a_primary_killed_mid_run_no_saga_is_stuck_or_lost() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let victim = cluster.primary_for_slot(cluster.slot_of("catga:{saga-index:chaos-order}:active"));
    // Kill -9 the primary of the saga index's shard as the sagas run; its
    // replica takes over. Its supervisor brings it back 3 s later (as a
    // replica): until then that shard refuses writes no replica confirmed.
    run_matrix("cluster", &url, 1, |since| {
        if since < Duration::from_secs(3) {
            cluster.kill(victim);
        } else {
            cluster.restart(victim);
        }
    })
    .await;
}
