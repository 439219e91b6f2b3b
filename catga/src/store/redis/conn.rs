//! The connection behind a [`RedisStore`](super::RedisStore): one server
//! through a [`ConnectionManager`] (it reconnects by itself), or a Redis
//! Cluster through the async cluster client (it follows `MOVED`/`ASK` and
//! picks up a promoted replica) — and, for a Cluster, a new client when the
//! one in use stops answering.
//!
//! **A stalled Cluster client is replaced.** The async cluster client runs
//! every request of a process through one task of its own. After a primary
//! was killed under load, that task has been seen (redis 1.8.1 and 1.8.2)
//! to stop answering for good: every request, on every shard, times out,
//! while a new client to the same nodes works at once. An instance in that
//! state keeps its heartbeat (written on a connection of its own) but can
//! do nothing else: its sagas stop and every message it takes fails. So
//! when a request times out and no request of any kind was answered for
//! [`STALLED_AFTER`], a new client is connected to the node list and takes
//! the old one's place (one attempt at a time, at most one per
//! [`STALLED_AFTER`]); the old one and its task go when their last request
//! ends. Errors are answers: a cluster that is down refuses connections or
//! says `CLUSTERDOWN`, and that is not a stalled client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use arc_swap::ArcSwap;
use tokio::time::error::Elapsed;

use crate::error::Error;
use crate::security::RedisTls;
use crate::store::StoreError;

/// The most [`Connection::open`] waits for the server (or the cluster's
/// slot map) to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One TCP connection attempt to one node.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// One answer from one node. A script does a handful of hash operations on
/// one key, so two seconds means the node is gone, not busy.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A Cluster request including its redirections and retries: long enough to
/// ride through a replica's promotion (cluster-node-timeout plus election).
pub(super) const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A Cluster client that answered nothing for this long while a request
/// timed out is replaced (longer than one node's response timeout, so one
/// slow node among answering ones never counts).
const STALLED_AFTER: Duration = Duration::from_secs(3);

/// The two kinds of connection behind one code path: both are multiplexed
/// and cheap to clone, and both run the same scripts.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A store's connection, shared by the store's clones: the client in use,
/// and what it takes to replace it.
pub(super) struct Connection {
    current: ArcSwap<Conn>,
    cluster: bool,
    /// The URL or node list, without passwords: for messages.
    target: String,
    /// The URL as given (passwords included), to connect again; never logged.
    url: Arc<str>,
    /// Its TLS files, for `rediss://`.
    tls: RedisTls,
    /// Time is counted in milliseconds from here.
    origin: Instant,
    /// When a request was last answered (with a value or an error).
    answered_ms: AtomicU64,
    /// When the client was last replaced, or a replacement last tried.
    replaced_ms: AtomicU64,
    replacing: AtomicBool,
}

impl Connection {
    /// Connect to `url` (see [`RedisStore::connect`](super::RedisStore::connect)).
    pub(super) async fn open(url: &str, tls: &RedisTls) -> Result<Connection, Error> {
        let target = crate::security::redact_url(url);
        let conn = connect(url, tls, &target).await?;
        Ok(Connection {
            cluster: matches!(conn, Conn::Cluster(_)),
            current: ArcSwap::from_pointee(conn),
            target,
            url: url.into(),
            tls: tls.clone(),
            origin: Instant::now(),
            answered_ms: AtomicU64::new(0),
            replaced_ms: AtomicU64::new(0),
            replacing: AtomicBool::new(false),
        })
    }

    /// The client to make a request on.
    pub(super) fn get(&self) -> Conn {
        Conn::clone(&self.current.load())
    }

    pub(super) fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub(super) fn target(&self) -> &str {
        &self.target
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn tls(&self) -> &RedisTls {
        &self.tls
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Note how a request ended: a value or an error is an answer; a
    /// timeout may mean the client stalled.
    pub(super) fn ended<T>(self: &Arc<Self>, answer: &Result<Result<T, RedisError>, Elapsed>) {
        let timed_out = match answer {
            Ok(Ok(_)) => false,
            Ok(Err(e)) => e.is_timeout(),
            Err(_) => true,
        };
        if !timed_out {
            self.answered_ms.store(self.now_ms(), Ordering::Relaxed);
            return;
        }
        let now = self.now_ms();
        let silent = now.saturating_sub(self.answered_ms.load(Ordering::Relaxed));
        let since_replaced = now.saturating_sub(self.replaced_ms.load(Ordering::Relaxed));
        if !stalled(self.cluster, silent, since_replaced) || self.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            match connect(&this.url, &this.tls, &this.target).await {
                Ok(fresh) => {
                    this.current.store(Arc::new(fresh));
                    this.answered_ms.store(this.now_ms(), Ordering::Relaxed);
                    tracing::warn!(
                        cluster = %this.target,
                        silent_ms = silent,
                        "the Redis Cluster client answered nothing while requests timed out; replaced it with a new one"
                    );
                }
                Err(e) => tracing::warn!(
                    cluster = %this.target,
                    silent_ms = silent,
                    error = %e,
                    "the Redis Cluster client answers nothing, and a new one could not connect; trying again"
                ),
            }
            this.replaced_ms.store(this.now_ms(), Ordering::Relaxed);
            this.replacing.store(false, Ordering::Release);
        });
    }
}

/// Whether a client that answered nothing for `silent_ms`, last replaced
/// `since_replaced_ms` ago, is to be replaced now.
fn stalled(cluster: bool, silent_ms: u64, since_replaced_ms: u64) -> bool {
    let after = STALLED_AFTER.as_millis() as u64;
    cluster && silent_ms >= after && since_replaced_ms >= after
}

/// A new client for `url`, once it answered a `PING`.
async fn connect(url: &str, tls: &RedisTls, target: &str) -> Result<Conn, Error> {
    tls.validate(Some(url))?;
    let certificates = certificates(url, tls)?;
    let nodes: Vec<&str> = url.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    let unreachable = |what: String| {
        Error::Store(StoreError::Unavailable {
            op: "connect",
            key: target.to_owned(),
            reason: format!(
                "{what}; check that redis-server runs and listens there, that the URL is right \
                 (redis://host:port, or a comma-separated node list for a Redis Cluster), and that no \
                 firewall is in the way"
            ),
        })
    };
    let conn = match nodes.as_slice() {
        [] => return Err(Error::Config("the Redis URL is empty; set redis://host:port or unset it".into())),
        [one] => {
            let client = match certificates {
                Some(certificates) => ::redis::Client::build_with_tls(*one, certificates),
                None => ::redis::Client::open(*one),
            };
            let client = client.map_err(|e| {
                Error::Config(format!("Redis URL {target} is not valid ({e}); expected redis://host:port"))
            })?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(3)
                .set_max_delay(Duration::from_secs(1));
            match tokio::time::timeout(CONNECT_TIMEOUT, ConnectionManager::new_with_config(client, config)).await {
                Ok(Ok(c)) => Conn::Single(c),
                Ok(Err(e)) => return Err(unreachable(format!("could not connect: {e}"))),
                Err(_) => return Err(unreachable(format!("no connection within {CONNECT_TIMEOUT:?}"))),
            }
        }
        many => {
            let mut builder = ClusterClientBuilder::new(many.to_vec());
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            let client = builder
                .connection_timeout(CONNECTION_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .overall_response_timeout(Some(CLUSTER_REQUEST_TIMEOUT))
                .retries(10)
                .min_retry_wait(20)
                .max_retry_wait(500)
                .build()
                .map_err(|e| {
                    Error::Config(format!(
                        "Redis Cluster node list {target} is not valid ({e}); expected \
                         redis://host1:port1,redis://host2:port2,..."
                    ))
                })?;
            match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection()).await {
                Ok(Ok(c)) => Conn::Cluster(c),
                Ok(Err(e)) => return Err(unreachable(format!("could not connect to the cluster: {e}"))),
                Err(_) => return Err(unreachable(format!("no cluster slot map within {CONNECT_TIMEOUT:?}"))),
            }
        }
    };
    let mut probe = conn.clone();
    match tokio::time::timeout(CONNECT_TIMEOUT, ::redis::cmd("PING").query_async::<String>(&mut probe)).await {
        Ok(Ok(_)) => Ok(conn),
        Ok(Err(e)) => Err(unreachable(format!("PING failed: {e}"))),
        Err(_) => Err(unreachable(format!("no answer to PING within {CONNECT_TIMEOUT:?}"))),
    }
}

/// The TLS files of `tls` for a `rediss://` URL (`None` for `redis://`),
/// read now so a missing file is an error naming its variable. Redis's
/// client builds its rustls configuration on the process's default crypto
/// provider: `ring` is installed as that default here (unless the program
/// installed one), so the choice is explicit and the same as NATS's.
fn certificates(url: &str, tls: &RedisTls) -> Result<Option<::redis::TlsCertificates>, Error> {
    if !url.trim_start().starts_with("rediss://") {
        return Ok(None);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |var: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::Config(format!("{var}={path:?}: cannot read it: {e}")))
    };
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(::redis::ClientTlsConfig {
            client_cert: read("CATGA_REDIS_TLS_CERT", cert)?,
            client_key: read("CATGA_REDIS_TLS_KEY", key)?,
        }),
        _ => None,
    };
    let root_cert = tls.ca.as_deref().map(|ca| read("CATGA_REDIS_TLS_CA", ca)).transpose()?;
    Ok(Some(::redis::TlsCertificates { client_tls, root_cert }))
}

#[cfg(test)]
mod tests {
    use super::stalled;

    #[test]
    fn only_a_cluster_client_silent_past_the_limit_and_not_just_replaced_is_replaced() {
        assert!(stalled(true, 3_000, 3_000));
        assert!(stalled(true, 60_000, 10_000));
        assert!(!stalled(true, 2_999, 60_000), "an answer within the limit");
        assert!(!stalled(true, 60_000, 1_000), "replaced a moment ago");
        assert!(!stalled(false, 60_000, 60_000), "a single server's manager reconnects by itself");
    }
}
