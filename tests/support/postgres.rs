//! PostgreSQL for the outbox tests: a fresh database per test on the
//! machine's server (`CATGA_TEST_POSTGRES_URL`, else 127.0.0.1:5432 when it
//! answers), or on a server this code starts — `initdb` into a temp dir and
//! `postgres` on a free 127.0.0.1 port, stopped by its pid — where the
//! machine has none running (or `CATGA_TEST_POSTGRES=own`). The database
//! is dropped with the value.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{free_port, stop, temp_dir, wait_for_port};

/// The server every database of this test process lives on.
struct Server {
    /// `postgres://user@host:port` (no database).
    base: String,
    /// A server this process started (stopped at exit by its pid).
    _own: Option<OwnServer>,
}

struct OwnServer {
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server, shared by the databases alive (a server started here stops
/// when the last of them is dropped).
fn server() -> Arc<Server> {
    static SERVER: Mutex<Weak<Server>> = Mutex::new(Weak::new());
    let mut shared = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(if let Ok(url) = std::env::var("CATGA_TEST_POSTGRES_URL") {
        Server { base: url.trim_end_matches('/').to_owned(), _own: None }
    } else {
        let machine = "postgres://postgres@127.0.0.1:5432".to_owned();
        // CATGA_TEST_POSTGRES=own: start one even where the machine has one.
        let own = std::env::var("CATGA_TEST_POSTGRES").is_ok_and(|v| v == "own");
        match if own { Err(String::new()) } else { psql(&machine, "postgres", "SELECT 1") } {
            Ok(_) => Server { base: machine, _own: None },
            Err(_) => start_own(),
        }
    });
    *shared = Arc::downgrade(&server);
    server
}

/// `initdb` and `postgres` from the Debian package (as the `postgres` user
/// when run as root: the server refuses root), on a free port.
fn start_own() -> Server {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin")).filter(|b| b.join("initdb").exists()).max()
        })
        .expect(
            "no PostgreSQL server answers on 127.0.0.1:5432 and none is installed to start: install PostgreSQL \
             (Debian: apt-get install postgresql) or set CATGA_TEST_POSTGRES_URL",
        );
    let dir = temp_dir("catga-pg");
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let as_user = |program: &std::path::Path| {
        let mut cmd = if root {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    };
    if root {
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
    }
    let data = dir.join("data");
    let status = as_user(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .status()
        .expect("run initdb");
    assert!(status.success(), "initdb into {} failed", data.display());
    let port = free_port();
    let child = as_user(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"])
        .arg(&dir)
        .spawn()
        .expect("start postgres");
    let own = OwnServer { child: Some(child), dir };
    assert!(wait_for_port(port, Duration::from_secs(20)), "postgres did not listen on {port}");
    let base = format!("postgres://postgres@127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while psql(&base, "postgres", "SELECT 1").is_err() {
        assert!(Instant::now() < deadline, "postgres on {port} does not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { base, _own: Some(own) }
}

/// Run `sql` with psql; its output (unaligned, tuples only).
pub fn psql(base: &str, database: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(format!("{base}/{database}"))
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A fresh, empty database, dropped (connections and all) with this value.
pub struct PgDatabase {
    name: String,
    server: Arc<Server>,
}

impl PgDatabase {
    /// A new database on the test server.
    pub fn create() -> PgDatabase {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("catga_test_{}_{n}_{:x}", std::process::id(), fastrand_u32());
        let server = server();
        psql(&server.base, "postgres", &format!("CREATE DATABASE {name}")).expect("create a test database");
        PgDatabase { name, server }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server.base, self.name)
    }

    /// Run `sql` in it; its output.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.server.base, &self.name, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(&self.server.base, "postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn fastrand_u32() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    nanos.subsec_nanos() ^ (nanos.as_secs() as u32).rotate_left(16)
}
