//! Real `redis-server` processes for the store tests and benchmarks: one
//! server ([`RedisServer`]) or a Redis Cluster of 3 primaries and 3 replicas
//! ([`RedisCluster`]), on free 127.0.0.1 ports, each in a fresh temporary
//! directory, stopped by the pid this code started when dropped.
//!
//! The harness talks to the servers with a few lines of RESP over a
//! `std::net::TcpStream` (no client library), and uses `redis-cli` only to
//! create the cluster. Every wait is bounded and panics with what it saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = std::env::temp_dir().join(format!("catga-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One reply of a Redis server, as far as the harness needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `+PONG`.
    Status(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$n` bulk string (lossy UTF-8); `None` for a nil bulk.
    Bulk(Option<String>),
    /// `*n` array.
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a status or bulk reply ("" otherwise).
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) | Reply::Bulk(Some(s)) => s.clone(),
            Reply::Int(n) => n.to_string(),
            _ => String::new(),
        }
    }
}

/// Send one command to 127.0.0.1:`port` and read its reply (2 s limits).
pub fn command(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    stream.write_all(&out)?;
    read_reply(&mut BufReader::new(stream))
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad(line))?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad(line))?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad(line))?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(r)?);
            }
            Reply::Array(items)
        }
        _ => return Err(bad(line)),
    })
}

/// Poll `check` every 50 ms until it returns `Ok`, or panic after `within`
/// with the last thing it saw.
fn wait_until<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => panic!("{what}: not within {within:?}; last seen: {seen}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Start `redis-server` with `args` in `dir`, its output in `dir/redis.log`.
fn spawn_server(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join("redis.log")).expect("create redis.log");
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .args(["--dir", dir.to_str().expect("utf-8 temp dir")])
        .args(extra)
        .stdout(Stdio::from(log.try_clone().expect("log handle")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start redis-server (is it installed? ./scripts/test.sh installs it)")
}

/// redis-server's TLS arguments: this certificate, key and CA, and whether
/// clients must present a certificate (`--tls-auth-clients`). The TLS
/// port is the caller's.
pub fn tls_args(cert: &str, key: &str, ca: &str, verify_clients: bool) -> Vec<String> {
    let verify = if verify_clients { "yes" } else { "no" };
    ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", verify]
        .map(str::to_owned)
        .to_vec()
}

/// Wait (10 s) until our child answers PING on `port` (a server that wants
/// a password answering `NOAUTH` counts as up).
fn wait_for_ping(child: &mut Child, port: u16, dir: &Path) {
    if let Err(log) = answered_ping(child, port, dir) {
        panic!("redis-server on port {port} exited at start; log:\n{log}");
    }
}

/// Wait (10 s) until our child answers PING on `port`; its log if it exited
/// first.
fn answered_ping(child: &mut Child, port: u16, dir: &Path) -> Result<(), String> {
    wait_until(&format!("redis-server on port {port} answering PING"), Duration::from_secs(10), || {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            return Ok(Err(format!("({status})\n{log}")));
        }
        match command(port, &["PING"]) {
            Ok(Reply::Status(s)) if s == "PONG" => Ok(Ok(())),
            Ok(Reply::Error(e)) if e.starts_with("NOAUTH") => Ok(Ok(())),
            other => Err(format!("{other:?}")),
        }
    })
}

/// Start a server on ports `pick` chooses (free a moment ago) until it
/// answers PING: another process may take a free port before the server
/// binds it (a client's outgoing connection gets one from the same range),
/// so a server that could not bind is started again on fresh ports (up to
/// five times).
fn start_on_free_ports<P: Copy>(
    dir: &Path,
    mut pick: impl FnMut() -> P,
    start: impl Fn(P) -> (Child, u16),
) -> (Child, P) {
    let mut last = String::new();
    for _ in 0..5 {
        let ports = pick();
        let (mut child, port) = start(ports);
        match answered_ping(&mut child, port, dir) {
            Ok(()) => return (child, ports),
            Err(log) if log.contains("Address already in use") => last = log,
            Err(log) => panic!("redis-server on port {port} exited at start; log:\n{log}"),
        }
    }
    panic!("redis-server found its ports taken five times; last log:\n{last}");
}

/// One `redis-server` on a free 127.0.0.1 port, without persistence.
pub struct RedisServer {
    child: Option<Child>,
    /// The port.
    pub port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Start a server and wait until it answers PING.
    pub fn start() -> RedisServer {
        let dir = TempDir::new("redis");
        let (child, port) = start_on_free_ports(&dir.0, free_port, |port| (spawn_server(&dir.0, port, &[]), port));
        RedisServer { child: Some(child), port, dir }
    }

    /// A server with these extra configuration arguments (e.g.
    /// `--requirepass`, `--user`, `--tls-port`), on a free plain port that
    /// answers PING (or NOAUTH) when it is up.
    pub fn with_args(extra: &[&str]) -> RedisServer {
        let dir = TempDir::new("redis");
        let (child, port) = start_on_free_ports(&dir.0, free_port, |port| (spawn_server(&dir.0, port, extra), port));
        RedisServer { child: Some(child), port, dir }
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Kill -9 the server and reap it.
    pub fn kill(&mut self) {
        crate::stop(&mut self.child);
    }

    /// Start the server again on the same port (after [`kill`](Self::kill)),
    /// empty, and wait until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = spawn_server(&self.dir.0, self.port, &[]);
        wait_for_ping(&mut child, self.port, &self.dir.0);
        self.child = Some(child);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node's role, as the cluster reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves slots.
    Primary,
    /// Replicates a primary.
    Replica,
}

/// What the cluster says about one of its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's index in [`RedisCluster`] (0..6).
    pub index: usize,
    /// Its client port.
    pub port: u16,
    /// Its cluster node id.
    pub id: String,
    /// Primary or replica.
    pub role: Role,
    /// The primary it replicates (its node id), for a replica.
    pub primary_id: Option<String>,
    /// Marked failed (`fail` or `fail?`) by the node asked.
    pub failed: bool,
    /// Slot ranges it serves (inclusive), for a primary.
    pub slots: Vec<(u16, u16)>,
}

struct Node {
    child: Option<Child>,
    port: u16,
    bus: u16,
    dir: TempDir,
    /// Its TLS client port, in a cluster started with TLS.
    tls: Option<u16>,
}

/// Start one cluster node in `dir` (its `nodes.conf` lives there, so a
/// restarted node rejoins with its identity) and wait for its PING.
fn spawn_node(dir: &TempDir, port: u16, bus: u16, extra: &[String]) -> Child {
    let mut child = spawn_node_unchecked(dir, port, bus, extra);
    wait_for_ping(&mut child, port, &dir.0);
    child
}

/// Start one cluster node in `dir`, without waiting for it.
fn spawn_node_unchecked(dir: &TempDir, port: u16, bus: u16, extra: &[String]) -> Child {
    let conf = dir.0.join("nodes.conf");
    let bus = bus.to_string();
    let mut args = vec![
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        conf.to_str().expect("utf-8 temp dir"),
        "--cluster-node-timeout",
        "1000",
        "--cluster-port",
        &bus,
    ];
    args.extend(extra.iter().map(String::as_str));
    spawn_server(&dir.0, port, &args)
}

/// A Redis Cluster of 3 primaries and 3 replicas on 127.0.0.1.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Configuration arguments every node gets.
    extra: Vec<String>,
}

impl RedisCluster {
    /// Start 6 nodes, join them with `redis-cli --cluster create
    /// --cluster-replicas 1`, and wait until every node says
    /// `cluster_state:ok` and every replica is in sync.
    pub fn start() -> RedisCluster {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with these configuration arguments on every
    /// node (e.g. ACL users: the harness itself speaks as the `default`
    /// user, which must keep the cluster and replication commands).
    pub fn start_with(extra: &[&str]) -> RedisCluster {
        Self::start_nodes(extra.iter().map(|a| (*a).to_owned()).collect(), false)
    }

    /// A cluster whose nodes also speak TLS (a TLS client port each, the
    /// cluster bus and replication over TLS) with this server certificate,
    /// key and CA; the harness keeps using the plain ports. Redis hands
    /// TLS clients the TLS ports in its slot map.
    pub fn start_tls(cert: &str, key: &str, ca: &str) -> RedisCluster {
        let mut args = tls_args(cert, key, ca, false);
        args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(str::to_owned));
        Self::start_nodes(args, true)
    }

    fn start_nodes(extra: Vec<String>, tls: bool) -> RedisCluster {
        let mut nodes = Vec::new();
        for i in 0..6 {
            let dir = TempDir::new(&format!("redis-cluster-{i}"));
            let pick = || (free_port(), free_port(), tls.then(free_port));
            let (child, (port, bus, tls_port)) = start_on_free_ports(&dir.0, pick, |(port, bus, tls_port)| {
                let mut args = extra.clone();
                if let Some(p) = tls_port {
                    args.extend(["--tls-port".to_owned(), p.to_string()]);
                }
                // A new node (a start that could not bind may have left one).
                let _ = std::fs::remove_file(dir.0.join("nodes.conf"));
                (spawn_node_unchecked(&dir, port, bus, &args), port)
            });
            nodes.push(Node { child: Some(child), port, bus, dir, tls: tls_port });
        }
        let cluster = RedisCluster { nodes, extra };
        cluster.create();
        cluster.wait_until_healthy(Duration::from_secs(30));
        cluster
    }

    /// `rediss://127.0.0.1:<tls port>,...`, for a cluster started with TLS.
    pub fn tls_url(&self) -> String {
        self.nodes.iter().filter_map(|n| n.tls).map(|p| format!("rediss://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    fn create(&self) {
        let addrs: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut child = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run redis-cli (Debian package redis-tools; ./scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for redis-cli") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli --cluster create did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            let mut out = String::new();
            let mut err = String::new();
            let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
            let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            panic!("redis-cli --cluster create failed ({status}):\n{out}\n{err}");
        }
    }

    /// Every running node says `cluster_state:ok`, sees all running nodes,
    /// and every running replica's link to its primary is up.
    pub fn wait_until_healthy(&self, within: Duration) {
        wait_until("a healthy Redis Cluster", within, || {
            for (i, node) in self.nodes.iter().enumerate() {
                if node.child.is_none() {
                    continue;
                }
                let info = command(node.port, &["CLUSTER", "INFO"]).map_err(|e| format!("node {i}: {e}"))?.text();
                if !info.contains("cluster_state:ok") {
                    return Err(format!("node {i} (port {}): {info}", node.port));
                }
                let replication =
                    command(node.port, &["INFO", "replication"]).map_err(|e| format!("node {i}: {e}"))?.text();
                if replication.contains("role:slave") && !replication.contains("master_link_status:up") {
                    return Err(format!("node {i} (port {}) replica not in sync: {replication}", node.port));
                }
            }
            let nodes = self.nodes_info();
            let primaries = nodes.iter().filter(|n| n.role == Role::Primary && !n.failed).count();
            if primaries != 3 {
                return Err(format!("{primaries} live primaries: {nodes:?}"));
            }
            Ok(())
        })
    }

    /// The node list: `redis://127.0.0.1:p1,...` (all six nodes).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Node `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Node `i`'s pid (`None` once killed).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Kill -9 node `i` (by the pid we started) and reap it.
    pub fn kill(&mut self, i: usize) {
        crate::stop(&mut self.nodes[i].child);
    }

    /// Start a killed node again on its ports, with its `nodes.conf`: it
    /// rejoins (a killed primary comes back as a replica of its successor).
    pub fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.child.is_none() {
            let mut args = self.extra.clone();
            if let Some(p) = node.tls {
                args.extend(["--tls-port".to_owned(), p.to_string()]);
            }
            node.child = Some(spawn_node(&node.dir, node.port, node.bus, &args));
        }
    }

    /// What a running node says about every node (from `CLUSTER NODES`).
    pub fn nodes_info(&self) -> Vec<NodeInfo> {
        let text = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| command(n.port, &["CLUSTER", "NODES"]).ok().map(|r| r.text()))
            .expect("no running node answers CLUSTER NODES");
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                continue;
            }
            // id ip:port@cport flags primary ping pong epoch link slots...
            let port: u16 = f[1]
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let Some(index) = self.nodes.iter().position(|n| n.port == port) else { continue };
            let flags: Vec<&str> = f[2].split(',').collect();
            let role = if flags.contains(&"master") { Role::Primary } else { Role::Replica };
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            out.push(NodeInfo {
                index,
                port,
                id: f[0].to_owned(),
                role,
                primary_id: (f[3] != "-").then(|| f[3].to_owned()),
                failed: flags.iter().any(|f| f.starts_with("fail")),
                slots,
            });
        }
        out.sort_by_key(|n| n.index);
        out
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.nodes.iter().find(|n| n.child.is_some()).expect("a running node").port;
        match command(port, &["CLUSTER", "KEYSLOT", key]) {
            Ok(Reply::Int(n)) => n as u16,
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        }
    }

    /// The index of the live primary serving `slot`.
    pub fn primary_for_slot(&self, slot: u16) -> usize {
        let nodes = self.nodes_info();
        nodes
            .iter()
            .find(|n| n.role == Role::Primary && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|n| n.index)
            .unwrap_or_else(|| panic!("no live primary serves slot {slot}: {nodes:?}"))
    }

    /// The index of a replica of primary `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let nodes = self.nodes_info();
        let id = &nodes.iter().find(|n| n.index == primary).expect("primary known").id;
        nodes
            .iter()
            .find(|n| {
                n.role == Role::Replica && n.primary_id.as_ref() == Some(id) && self.nodes[n.index].child.is_some()
            })
            .map(|n| n.index)
            .unwrap_or_else(|| panic!("no running replica of node {primary}: {nodes:?}"))
    }

    /// Run `CLUSTER FAILOVER` on replica `replica` and wait (15 s) until it
    /// reports itself a primary.
    pub fn failover(&self, replica: usize) {
        let port = self.nodes[replica].port;
        match command(port, &["CLUSTER", "FAILOVER"]) {
            Ok(Reply::Status(s)) if s == "OK" => {}
            other => panic!("CLUSTER FAILOVER on node {replica}: {other:?}"),
        }
        wait_until(&format!("node {replica} promoted by CLUSTER FAILOVER"), Duration::from_secs(15), || {
            let r = command(port, &["INFO", "replication"]).map_err(|e| e.to_string())?.text();
            if r.contains("role:master") { Ok(()) } else { Err(r) }
        });
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
