//! `Catga::run()` as a real OS process: configuration from the environment,
//! handlers logged at startup, graceful stop on SIGTERM, and a clear exit
//! on bad configuration. Processes are stopped by the pid the test started.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-test-service");

/// A started service; killed on drop if the test did not stop it.
struct Service {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Service {
    fn start(env: &[(&str, &str)]) -> Service {
        let mut cmd = Command::new(SERVICE);
        cmd.env_clear().env("RUST_LOG", "info").stderr(Stdio::piped()).stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start catga-test-service");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Service { child, lines, seen: Vec::new() }
    }

    /// Wait (bounded) for a log line containing `text`.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no log line with {text:?} within 20 s; saw:\n{}", self.seen.join("\n"));
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Wait (bounded) for the process to exit.
    fn exit_code(&mut self) -> Option<i32> {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process {} did not exit within 10 s", self.child.id());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn run_reads_the_environment_logs_handlers_and_stops_gracefully_on_sigterm() {
    let mut svc = Service::start(&[("CATGA_SERVICE", "svc"), ("CATGA_INSTANCE_ID", "svc-7")]);
    let found = svc.wait_for("handler found");
    assert!(found.contains("subject=\"svc.whoami\"") || found.contains("subject=svc.whoami"), "{found}");
    assert!(found.contains("handler=catga_test_service::whoami"), "{found}");
    assert!(found.contains("message_type=\"catga_test_service::WhoAmI\""), "{found}");
    let started = svc.wait_for("catga instance started");
    assert!(started.contains("svc-7") && started.contains("handlers=1"), "{started}");
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
