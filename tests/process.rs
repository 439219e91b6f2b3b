//! `Catga::run()` as a real OS process: configuration from the environment,
//! handlers logged at startup, graceful stop on SIGTERM, and a clear exit
//! on bad configuration. Processes are stopped by the pid the test started.

use std::time::Duration;

use catga::prelude::*;
use catga_suite::{NatsServer, ServiceProcess};

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-test-service");

struct Service;

impl Service {
    fn start(env: &[(&str, &str)]) -> ServiceProcess {
        ServiceProcess::start(SERVICE, env)
    }
}

#[test]
fn run_reads_the_environment_logs_handlers_and_stops_gracefully_on_sigterm() {
    let mut svc = Service::start(&[("CATGA_SERVICE", "svc"), ("CATGA_INSTANCE_ID", "svc-7")]);
    let found = svc.wait_for("subject=\"svc.whoami\"");
    assert!(found.contains("subject=\"svc.whoami\"") || found.contains("subject=svc.whoami"), "{found}");
    assert!(found.contains("handler=catga_test_service::whoami"), "{found}");
    assert!(found.contains("message_type=\"catga_test_service::WhoAmI\""), "{found}");
    let started = svc.wait_for("catga instance started");
    assert!(started.contains("svc-7") && started.contains("handlers=10"), "{started}");
    svc.signal("TERM");
    svc.wait_for("signal received, shutting down");
    svc.wait_for("catga instance stopped");
    assert_eq!(svc.exit_code(), Some(0));
}

#[test]
fn ctrl_c_stops_it_too() {
    let mut svc = Service::start(&[("CATGA_SERVICE", "svc")]);
    svc.wait_for("catga instance started");
    svc.signal("INT");
    svc.wait_for("catga instance stopped");
    assert_eq!(svc.exit_code(), Some(0));
}

#[test]
fn a_bad_setting_is_a_clear_startup_error() {
    let mut svc = Service::start(&[("CATGA_GRACE_PERIOD_MS", "soon")]);
    let line = svc.wait_for("CATGA_GRACE_PERIOD_MS");
    assert!(line.contains("\"soon\" is not a whole number of milliseconds"), "{line}");
    assert_eq!(svc.exit_code(), Some(2));
}

#[test]
fn a_service_name_that_cannot_be_a_queue_group_is_refused() {
    let mut svc = Service::start(&[("CATGA_SERVICE", "my service")]);
    let line = svc.wait_for("service name");
    assert!(line.contains("\"my service\""), "{line}");
    assert_eq!(svc.exit_code(), Some(2));
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.fail", reply = ())]
struct Fail {
    code: String,
}

/// The lines of `svc` seen within `within` that contain every one of `texts`.
fn lines_with(svc: &mut ServiceProcess, within: Duration, texts: &[&str]) -> Vec<String> {
    std::thread::sleep(within);
    svc.drain_lines();
    svc.seen().iter().filter(|l| texts.iter().all(|t| l.contains(t))).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_installs_a_default_subscriber_and_failures_are_warnings_rate_limited_with_a_count() {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut svc = Service::start(&[
        ("CATGA_TEST_DEFAULT_LOGS", "1"),
        ("CATGA_NATS_URL", &url),
        ("CATGA_SERVICE", "svc"),
        ("CATGA_INSTANCE_ID", "logs-1"),
    ]);
    // The program installed no subscriber: `run()` did, so the handlers
    // found are there.
    svc.wait_for("subject=\"svc.whoami\"");
    svc.wait_for("catga instance started");
    let client = Catga::builder().nats_url(&url).service("tester").client_only().start().await.unwrap();
    for _ in 0..30 {
        let err = client.send(Fail { code: "out_of_stock".into() }).await.unwrap_err();
        assert_eq!(err.code(), Some("out_of_stock"));
    }
    let warned = lines_with(&mut svc, Duration::from_millis(300), &["WARN", "handling failed", "out_of_stock"]);
    assert!(!warned.is_empty(), "a failing handling is a warning where it ran: {:?}", svc.seen());
    assert!(warned.len() < 30, "30 failures in a burst are rate-limited: {warned:?}");
    let first = &warned[0];
    for field in ["handler=\"fail\"", "subject=\"svc.fail\"", "message_id=", "correlation_id=", "code=\"out_of_stock\""]
    {
        assert!(first.contains(field), "{field} missing from {first}");
    }
    // After the window, the next one says how many were not logged.
    std::thread::sleep(Duration::from_millis(1100));
    client.send(Fail { code: "out_of_stock".into() }).await.unwrap_err();
    let counted = lines_with(&mut svc, Duration::from_millis(300), &["handling failed", "suppressed="]);
    let suppressed: u64 = counted
        .iter()
        .filter_map(|l| l.split("suppressed=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(suppressed as usize + warned.len(), 30, "every failure of the burst is logged or counted: {counted:?}");
    client.shutdown().await;
    svc.signal("TERM");
    svc.wait_for("catga instance stopped");
}

#[test]
fn catga_log_format_json_writes_one_json_object_per_line() {
    let mut svc = Service::start(&[
        ("CATGA_TEST_DEFAULT_LOGS", "1"),
        ("CATGA_LOG_FORMAT", "json"),
        ("CATGA_SERVICE", "svc"),
        ("CATGA_INSTANCE_ID", "logs-json"),
    ]);
    let started = svc.wait_for("catga instance started");
    let line: serde_json::Value = serde_json::from_str(&started).unwrap_or_else(|e| panic!("{e}: {started}"));
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["instance"], "logs-json", "{line}");
    svc.signal("TERM");
    assert_eq!(svc.exit_code(), Some(0));
}
