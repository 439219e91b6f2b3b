//! `Catga::run()` as a real OS process: configuration from the environment,
//! handlers logged at startup, graceful stop on SIGTERM, and a clear exit
//! on bad configuration. Processes are stopped by the pid the test started.

use catga_suite::ServiceProcess;

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
    assert!(started.contains("svc-7") && started.contains("handlers=8"), "{started}");
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
