//! Shared helpers for Catga's integration tests, examples and benchmarks
//! (the root package exists to hold `examples/`, `tests/` and `benches/`).
//!
//! Real servers and real processes: [`NatsServer`] starts `nats-server` on
//! free 127.0.0.1 ports (one server or a cluster); [`RedisServer`] and
//! [`RedisCluster`] start `redis-server` the same way (see [`redis`]);
//! [`ServiceProcess`] starts the `catga-test-service` binary as a separate
//! OS process. All are stopped by the pid this code started — never by
//! name — when dropped.

pub mod floor;
pub mod load;
pub mod postgres;
pub mod redis;

pub use postgres::PgDatabase;
pub use redis::{RedisCluster, RedisServer};

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Log to stderr (no colours) at `RUST_LOG`, `info` by default: what the
/// test service binaries do, so tests can read their log lines.
pub fn log_to_stderr() {
    // With the `otel` feature and an `OTEL_EXPORTER_OTLP_ENDPOINT`, spans
    // are exported too (tests/otel.rs); `Catga::run` flushes them at the end.
    #[cfg(feature = "otel")]
    if let Ok(Some(otel)) = catga::otel::layer_from_env::<tracing_subscriber::Registry>() {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let filter = tracing_subscriber::EnvFilter::new(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false);
        tracing_subscriber::registry().with(otel).with(filter).with(fmt).init();
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
}

/// Subscribe `client` to `subject` and wait until the server has the
/// subscription, so what another connection publishes from now on reaches
/// it: async-nats's `flush` only writes the SUB out, so a publisher on
/// another connection can still race it. The server handles a
/// connection's operations in order, so a message to a private inbox of
/// this connection coming back means the SUB before it was processed.
pub async fn subscribed(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    use futures_util::StreamExt;
    let subscriber = client.subscribe(subject.to_owned()).await.expect("subscribed");
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.expect("subscribed to an inbox");
    client.publish(inbox, bytes::Bytes::new()).await.expect("published");
    let back = tokio::time::timeout(Duration::from_secs(10), echo.next()).await;
    assert!(matches!(back, Ok(Some(_))), "the server did not confirm the subscription to {subject} within 10 s");
    subscriber
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Kill -9 a process this code started (by its own handle, never by name)
/// and reap it; nothing if it was already stopped.
pub fn stop(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Send a signal (`TERM`, `INT`, `KILL`, `STOP`, `CONT`) to a pid we started.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// One `nats-server` process on 127.0.0.1.
pub struct NatsServer {
    child: Option<Child>,
    /// The client port.
    pub port: u16,
    /// JetStream's store directory, removed on drop.
    store: Option<std::path::PathBuf>,
    /// The HTTP monitoring port (`/varz`), when started with one.
    monitor: Option<u16>,
}

impl NatsServer {
    /// A single server on a free port.
    pub fn start() -> NatsServer {
        Self::spawn(free_port(), &[])
    }

    /// A single server on a free port with its HTTP monitoring endpoint
    /// (`/varz`: message and byte counters) on another free port.
    pub fn start_monitored() -> NatsServer {
        let monitor = free_port();
        let mut server = Self::spawn(free_port(), &["-m", &monitor.to_string()]);
        server.monitor = Some(monitor);
        server
    }

    /// The HTTP monitoring port, for a server started with one.
    pub fn monitor_port(&self) -> Option<u16> {
        self.monitor
    }

    /// A single server with JetStream enabled (`-js`), storing in a fresh
    /// temporary directory that is removed when the server is dropped.
    pub fn start_jetstream() -> NatsServer {
        let store = temp_dir("catga-js");
        let mut server = Self::spawn(free_port(), &["-js", "-sd", store.to_str().expect("utf-8 temp path")]);
        server.store = Some(store);
        server
    }

    /// A single server on a free port with these extra arguments (e.g.
    /// `--user`, `--pass`, `--auth`, or `-c` and a configuration file).
    pub fn with_args(extra: &[&str]) -> NatsServer {
        Self::spawn(free_port(), extra)
    }

    /// A cluster of `n` servers routed to each other. Returns once every
    /// client port listens; the routes may still be forming, so a test waits
    /// for traffic to cross before relying on it.
    pub fn cluster(n: usize) -> Vec<NatsServer> {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = cluster_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let servers: Vec<NatsServer> = cluster_ports
            .iter()
            .map(|cp| {
                let cluster = format!("nats://127.0.0.1:{cp}");
                Self::spawn(free_port(), &["--cluster_name", "catga-test", "--cluster", &cluster, "--routes", &routes])
            })
            .collect();
        servers
    }

    fn spawn(port: u16, extra: &[&str]) -> NatsServer {
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (is it installed? ./scripts/test.sh installs it)");
        let listening = wait_for_port(port, Duration::from_secs(10));
        // Our child must be the one listening (not another test's server
        // that took the port between `free_port` and the start).
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server on port {port} exited at start ({status}); was the port taken?");
        }
        let server = NatsServer { child: Some(child), port, store: None, monitor: None };
        assert!(listening, "nats-server did not listen on {port} within 10 s");
        server
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Kill -9 the server and reap it.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(store) = self.store.take() {
            let _ = std::fs::remove_dir_all(store);
        }
    }
}

/// `GET path` from 127.0.0.1:`port` over HTTP/1.0 (one request, the
/// connection closed by the server): the status code and the body. Enough
/// for the tests' few reads of a Catga `/metrics` and Prometheus' API.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// One `prometheus` server (Debian package `prometheus`) on a free
/// 127.0.0.1 port, scraping `targets` every second; its data in a fresh
/// temporary directory, removed on drop.
pub struct Prometheus {
    child: Option<Child>,
    /// The web and API port.
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    pub fn scraping(targets: &[std::net::SocketAddr]) -> Prometheus {
        let dir = temp_dir("catga-prometheus");
        let targets = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: catga\n    static_configs:\n      - targets: [{targets}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (is it installed? ./scripts/test.sh installs it)");
        let mut server = Prometheus { child: Some(child), port, dir };
        let listening = wait_for_port(port, Duration::from_secs(30));
        if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
            panic!("prometheus on port {port} exited at start ({status}); was the port taken?");
        }
        assert!(listening, "prometheus did not listen on {port} within 30 s");
        server
    }

    /// The value of an instant PromQL query's first sample, if it has one.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}")).ok()?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh, empty directory under the system temp dir (the caller removes it).
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// The `catga-test-service` binary, run as a separate OS process with the
/// given `CATGA_*` environment; its stderr log lines are collected.
pub struct ServiceProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ServiceProcess {
    /// Start the service (`binary` is `env!("CARGO_BIN_EXE_catga-test-service")`).
    pub fn start(binary: &str, env: &[(&str, &str)]) -> ServiceProcess {
        let mut cmd = Command::new(binary);
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
        ServiceProcess { child, lines, seen: Vec::new() }
    }

    /// Start the service and wait until it serves.
    pub fn started(binary: &str, env: &[(&str, &str)]) -> ServiceProcess {
        let mut service = Self::start(binary, env);
        service.wait_for("catga instance started");
        service
    }

    /// Wait (up to 20 s) for a log line containing `text`.
    pub fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
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

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by pid (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Every log line collected so far (by `wait_for` and `drain_lines`).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Log lines seen so far (collected by `wait_for` and `drain_lines`).
    pub fn drain_lines(&mut self) -> Vec<String> {
        let fresh: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(fresh.iter().cloned());
        fresh
    }

    /// Kill -9 and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait (up to 20 s) for the process to exit; its exit code.
    pub fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("process {} did not exit within 20 s", self.child.id());
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}
