//! The load generator's smoke run: `catga-load --quick --tiny` (every
//! phase and recovery scenario at the smallest sizes, real servers and
//! processes) from the binaries cargo built for this suite, and a check
//! that what it wrote is well formed and complete. No figure is judged
//! here — a smoke run on a busy machine measures nothing — only that every
//! table the issue asks for is there, with values of the right kind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_catga-load");
// Built beside it for this suite; `catga-load` starts it from there.
const SERVICE: &str = env!("CARGO_BIN_EXE_catga-load-service");

fn run_tiny(out: &Path) {
    assert!(Path::new(SERVICE).exists(), "{SERVICE} is missing");
    let mut child = Command::new(LOAD)
        .args(["--quick", "--tiny", "--out"])
        .arg(out)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start catga-load");
    // Bounded: the run stops by itself; this only keeps a hang from
    // outliving the test.
    let deadline = Instant::now() + Duration::from_secs(110);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for catga-load") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("catga-load --tiny did not finish within 110 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "catga-load --tiny failed: {status}");
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

fn array<'a>(results: &'a Value, key: &str) -> &'a Vec<Value> {
    results[key].as_array().unwrap_or_else(|| panic!("results.json has no array {key:?}"))
}

#[test]
fn the_tiny_run_writes_complete_well_formed_results_and_plots() {
    let out = catga_suite::temp_dir("catga-load-smoke");
    run_tiny(&out);
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json written");
    let r: Value = serde_json::from_str(&text).expect("results.json is JSON");

    assert_eq!(r["profile"], "tiny");
    for key in ["commit", "date", "command"] {
        assert!(!r[key].as_str().unwrap_or("").is_empty(), "{key} is empty");
    }
    assert!(num(&r["machine"], "cpus") >= 1.0);
    assert!(!r["machine"]["cpu"].as_str().unwrap_or("").is_empty());
    assert!(r["errors"].as_array().expect("errors").is_empty(), "phases failed: {}", r["errors"]);
    for model in ["throughput", "latency"] {
        assert!(r["load_models"][model].as_str().is_some_and(|s| s.len() > 20), "load model {model} stated");
    }
    let g = &r["generator"];
    assert!(num(g, "requests") > 0.0, "the generator's timing error covers the open-loop requests");
    for key in ["dispatch_p50_us", "dispatch_p99_us", "dispatch_max_us", "start_p99_us"] {
        num(g, key);
    }

    // Scaling: both handlers at every instance count of the tiny profile.
    let scaling = array(&r, "scaling");
    for handler in ["io", "cpu"] {
        for n in [1.0, 2.0] {
            let row = scaling
                .iter()
                .find(|s| s["handler"] == handler && num(s, "instances") == n)
                .unwrap_or_else(|| panic!("no scaling row for {handler} x{n}"));
            assert!(num(row, "rps") > 0.0, "{row}");
            assert!(num(row, "efficiency") > 0.0, "{row}");
            num(row, "p99_us");
        }
    }

    let latency = array(&r, "latency");
    assert_eq!(latency.len(), 1, "one instance count x one rate");
    let l = &latency[0];
    assert_eq!((num(l, "instances"), num(l, "offered_rps")), (1.0, 200.0));
    for key in ["achieved_rps", "p50_us", "p99_us", "p999_us", "max_us", "raw_p50_us", "raw_p99_us", "raw_p999_us"] {
        assert!(num(l, key) > 0.0, "latency {key} in {l}");
    }
    assert!(num(l, "p50_us") <= num(l, "p99_us") && num(l, "p99_us") <= num(l, "p999_us"));

    let recovery = array(&r, "recovery");
    let names: Vec<&str> = recovery.iter().map(|s| s["scenario"].as_str().expect("scenario")).collect();
    assert_eq!(
        names,
        ["kill-1-of-3", "kill-2-of-4", "sigterm-1-of-3", "scale-up", "nats-node-kill", "redis-primary-kill"]
    );
    for s in recovery {
        let requests = num(s, "requests");
        assert!(requests > 0.0, "{}: no requests", s["scenario"]);
        assert!(num(s, "failed") <= requests);
        num(s, "retries");
        assert!(num(s, "worst_ms") > 0.0);
        assert!(s["recovered_ms"].is_null() || s["recovered_ms"].is_u64(), "recovered_ms: {}", s["recovered_ms"]);
        assert!(!s["timeline"].as_array().expect("timeline").is_empty());
        let plot = out.join(s["plot"].as_str().expect("plot"));
        assert!(std::fs::read_to_string(&plot).expect("plot written").starts_with("<svg"), "{}", plot.display());
    }
    let redis = recovery.iter().find(|s| s["scenario"] == "redis-primary-kill").expect("redis scenario");
    assert_eq!(redis["streams"].as_array().expect("streams").len(), 2, "idempotent commands and sagas");

    let sagas = array(&r, "sagas");
    let in_flight: Vec<f64> = sagas.iter().map(|s| num(s, "in_flight")).collect();
    assert_eq!(in_flight, [1.0, 4.0]);
    for s in sagas {
        assert!(num(s, "per_s") > 0.0 && num(s, "p50_us") > 0.0 && num(s, "p99_us") > 0.0, "{s}");
        assert_eq!(num(s, "instances"), 1.0);
    }

    let ops: Vec<&str> =
        r["costs"]["per_op"].as_array().expect("costs").iter().map(|c| c["op"].as_str().expect("op")).collect();
    for op in ["command", "raw_request", "event", "idempotent_command"] {
        assert!(ops.contains(&op), "cost of {op}: {ops:?}");
    }
    assert!(ops.iter().any(|o| o.starts_with("saga")) && ops.iter().any(|o| o.starts_with("srv_ping")), "{ops:?}");
    assert_eq!(r["costs"]["background"].as_array().expect("background").len(), 2);
    let goals = array(&r, "goals");
    assert!(goals.len() >= 3 + 6, "a goal per scaling, latency and recovery check: {goals:?}");

    for plot in ["scaling.svg", "latency.svg", "sagas.svg"] {
        assert!(std::fs::read_to_string(out.join(plot)).expect(plot).starts_with("<svg"), "{plot}");
    }
    let md = std::fs::read_to_string(out.join("RESULTS.md")).expect("RESULTS.md written");
    for section in ["## Goals", "## Scaling", "## Latency", "## Recovery", "## Sagas", "## Per-operation costs"] {
        assert!(md.contains(section), "RESULTS.md lacks {section}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
