//! The Redis store: one Redis server, or a Redis Cluster, with the meaning
//! of the [in-memory store](super::memory).
//!
//! **Connections** (`redis/conn.rs`). One URL (`redis://127.0.0.1:6379`) is
//! a standalone server, reached through a connection manager that
//! reconnects by itself. A comma-separated node list is a Redis Cluster,
//! reached through the async cluster client, which follows `MOVED`/`ASK`
//! redirections and picks up a promoted replica after a failover; a cluster
//! client that stops answering altogether (seen after a failover under
//! load) is replaced by a new one. Both are multiplexed: one connection per
//! node serves every concurrent operation. Every operation is bounded
//! (connection timeout 1 s, response timeout 2 s, and an overall limit of
//! [`OP_TIMEOUT`]), so a dead server is an
//! [`Unavailable`](StoreError::Unavailable) error, never a hang.
//!
//! **Layout.** Every key is a Redis hash whose field `k` says what it holds:
//!
//! | `k`     | other fields                 | expiry        | memory store          |
//! |---------|------------------------------|---------------|-----------------------|
//! | `rec`   | `v` version, `d` data        | none          | `Record`              |
//! | `ctr`   | `n` value                    | none          | `Counter`             |
//! | `run`   | `o` owner                    | claim TTL     | `Claimed`             |
//! | `done`  | `r` recorded result          | result TTL    | `Done`                |
//! | `lease` | `o` owner, `t` token         | lease TTL     | `Leased`              |
//! | `fence` | `t` latest token             | none          | `Fence`               |
//! | `beat`  | `n` count, `g` gone (`1`/`0`) | beat TTL (60 s) | `Beat`              |
//!
//! A lease `catga:{scope}:name` keeps its latest token in
//! `catga:{scope}:name:fence`, next to it in the same scope (and so the same
//! Cluster slot). Values are bytes (Lua strings are binary-safe); numbers
//! are written by `HINCRBY` and read back as decimal strings, so they stay
//! exact 64-bit integers (a Lua number is a double).
//!
//! **Atomicity.** Every operation is one Lua script ([`Script`](::redis::Script): `EVALSHA`,
//! with `SCRIPT LOAD` and a retry on `NOSCRIPT`) whose keys are all in one
//! scope, so on a Cluster they hash to one slot. No `WATCH`/`MULTI`: those
//! need a connection of one's own, and these connections are shared. Two
//! operations also change sets of other scopes (`create_leased`'s indexes,
//! `put_fenced_and_release`'s): on one server in the same script, on a
//! Cluster as commands of their own (before the script, or after the write).
//!
//! **Retries.** The cluster client retries an operation whose connection
//! broke or that met a failover; while a dead primary's address refuses
//! connections (or the cluster answers `CLUSTERDOWN`), the store tries
//! again every 100 ms until the replica has taken over (up to 5 s). If a script ran but its answer was lost, the
//! retry runs it again: a claim then finds the caller's own claim and wins
//! again (claims are re-entrant for their owner); a compare-and-set write
//! reports a conflict with its own new version.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use ::redis::{Cmd, FromRedisValue, RedisError, ScriptInvocation, Value};

mod conn;
mod timers;

use self::conn::{CLUSTER_REQUEST_TIMEOUT, Conn, Connection};
use super::lua::{SCRIPTS, expect_arg, millis, number, reply_parts, unexpected};
use super::{Beat, Claim, Created, Expect, Key, Lease, Sets, StoreError, Takeover, Versioned, memory::fence_key};
use crate::error::Error;
use crate::security::RedisTls;

/// The most one store operation may take, retries and reconnection
/// included; past it, the operation fails as unavailable.
pub const OP_TIMEOUT: Duration = Duration::from_secs(6);

/// How long a write waits for its replicas to confirm it (WAIT returns as
/// soon as they do; the limit is generous for a loaded machine).
const REPLICA_WAIT: Duration = Duration::from_secs(1);
/// Between tries while a Cluster node refuses connections (a failover).
const FAILOVER_PAUSE: Duration = Duration::from_millis(100);

/// A store on a Redis server or a Redis Cluster. Cheap to clone; clones
/// share the connections.
#[derive(Clone)]
pub struct RedisStore {
    conn: Arc<Connection>,
    /// The URL or node list, without passwords: for error messages.
    target: String,
    /// Replicas that must confirm a write before it is acknowledged.
    replica_acks: u32,
}

impl RedisStore {
    /// Connect to `url`: one `redis://host:port` URL for a standalone
    /// server, or a comma-separated list of Cluster nodes (any reachable
    /// subset of them; the client discovers the rest). Answers once the
    /// server answered a `PING`. `rediss://` URLs connect over TLS, trusting
    /// the CA of `tls` (else the system's roots) and presenting its client
    /// certificate when one is set.
    pub async fn connect(url: &str, tls: &RedisTls) -> Result<RedisStore, Error> {
        let conn = Connection::open(url, tls).await?;
        // A cluster's shards have replicas; a single server usually has none.
        let replica_acks = u32::from(conn.is_cluster());
        Ok(RedisStore { target: conn.target().to_owned(), conn: Arc::new(conn), replica_acks })
    }

    /// The same server or cluster through connections of its own, made on
    /// the current tokio runtime (the heartbeat's thread), with the same
    /// replica acknowledgements.
    pub(super) async fn reconnect(&self) -> Result<RedisStore, Error> {
        let mut fresh = RedisStore::connect(self.conn.url(), self.conn.tls()).await?;
        fresh.replica_acks = self.replica_acks;
        Ok(fresh)
    }

    /// Whether this is a Redis Cluster (a node list) rather than one server.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Run a prepared script, bounded by [`OP_TIMEOUT`]; failures become
    /// [`StoreError::Unavailable`].
    async fn eval<T: FromRedisValue>(
        &self,
        op: &'static str,
        key: &Key,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(op, key, |mut conn| async move { invocation.invoke_async(&mut conn).await }).await
    }

    /// Run one plain command, bounded like the scripts.
    async fn command<T: FromRedisValue>(&self, op: &'static str, key: &Key, cmd: &Cmd) -> Result<T, StoreError> {
        self.bounded(op, key, |mut conn| async move { cmd.query_async(&mut conn).await }).await
    }

    /// Make a request within [`OP_TIMEOUT`], riding out a Cluster failover.
    /// An operation that wrote then calls [`replicated`](Self::replicated):
    /// one that changed nothing (a conflict, a claim found done, a lease
    /// held by another) needs no confirmation, and must not fail for the
    /// lack of one.
    async fn bounded<T, F, Fut>(&self, op: &'static str, key: &Key, mut request: F) -> Result<T, StoreError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let started = Instant::now();
        let value = loop {
            let left = OP_TIMEOUT.saturating_sub(started.elapsed());
            let answer = tokio::time::timeout(left, request(self.conn.get())).await;
            self.conn.ended(&answer);
            match answer {
                Ok(Ok(value)) => break value,
                // On a Cluster, a refused connection is a primary that died
                // (and CLUSTERDOWN the cluster noticing it): its replica takes
                // over within the node timeout plus an election, and the
                // client's own retries can be spent before that. Neither
                // error ran the request; wait, within the request limit.
                Ok(Err(e))
                    if self.is_cluster()
                        && (e.is_connection_refusal() || e.is_cluster_error())
                        && started.elapsed() + FAILOVER_PAUSE < CLUSTER_REQUEST_TIMEOUT =>
                {
                    tracing::debug!(op, key = %key, error = %e, "Redis Cluster node refused; waiting for a failover");
                    tokio::time::sleep(FAILOVER_PAUSE).await;
                }
                Ok(Err(e)) => return Err(self.unavailable(op, key, &e)),
                Err(_) => {
                    return Err(StoreError::Unavailable {
                        op,
                        key: key.stored(),
                        reason: format!("no answer from Redis at {} within {OP_TIMEOUT:?}", self.target),
                    });
                }
            }
        };
        Ok(value)
    }

    /// After a write: wait (up to [`REPLICA_WAIT`]) until `replica_acks`
    /// replicas have everything written so far to `key`'s primary. Redis
    /// replicates asynchronously, so without this a kill -9 of a primary
    /// right after a write can take an acknowledged write with it.
    ///
    /// A write no replica confirmed is an `Unavailable` error, never an
    /// acknowledgement: its primary may have died with it (the WAIT then
    /// reaches whichever node took over), or the shard has no live replica
    /// (until one is back, its writes are refused). Writes here are
    /// retried by their callers; every write but `incr` is safe to retry.
    async fn replicated(&self, op: &'static str, key: &Key) -> Result<(), StoreError> {
        if self.replica_acks == 0 {
            return Ok(());
        }
        let mut wait = ::redis::cmd("WAIT");
        wait.arg(self.replica_acks).arg(REPLICA_WAIT.as_millis() as u64);
        let confirmed = match self.conn.get() {
            Conn::Cluster(mut conn) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
                    Slot::for_key(key.stored()),
                    SlotAddr::Master,
                )));
                tokio::time::timeout(OP_TIMEOUT, conn.route_command(wait, route)).await
            }
            Conn::Single(mut conn) => tokio::time::timeout(OP_TIMEOUT, wait.query_async(&mut conn)).await,
        };
        self.conn.ended(&confirmed);
        let reason = match confirmed {
            Ok(Ok(Value::Int(n))) if n >= i64::from(self.replica_acks) => return Ok(()),
            Ok(Ok(n)) => format!("{n:?} of {} replicas confirmed it within {REPLICA_WAIT:?}", self.replica_acks),
            Ok(Err(e)) => format!("its primary failed before a replica confirmed it ({e})"),
            Err(_) => format!("no replication confirmation within {OP_TIMEOUT:?}"),
        };
        Err(StoreError::Unavailable {
            op,
            key: key.stored(),
            reason: format!(
                "Redis at {}: the write was sent but {reason}, so it may not survive a failover; it may or may not \
                 have been applied — retry",
                self.target
            ),
        })
    }

    /// `changed`, after confirming it if it is true.
    async fn confirmed(&self, op: &'static str, key: &Key, changed: bool) -> Result<bool, StoreError> {
        if changed {
            self.replicated(op, key).await?;
        }
        Ok(changed)
    }

    /// Require `acks` replicas to confirm every write (see
    /// [`Config::redis_replica_acks`](crate::Config::redis_replica_acks)).
    pub(super) fn set_replica_acks(&mut self, acks: u32) {
        self.replica_acks = acks;
    }

    fn unavailable(&self, op: &'static str, key: &Key, e: &RedisError) -> StoreError {
        StoreError::Unavailable { op, key: key.stored(), reason: format!("Redis at {}: {e}", self.target) }
    }

    pub(super) async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        let mut inv = SCRIPTS.get.prepare_invoke();
        inv.key(key.stored());
        let found: Option<(String, Vec<u8>)> = self.eval("get", key, &inv).await?;
        found.map(|(v, value)| Ok(Versioned { version: number(&v, "get", key)?, value })).transpose()
    }

    pub(super) async fn put(
        &self,
        key: &Key,
        expect: Expect,
        value: &[u8],
        fence: Option<&Lease>,
    ) -> Result<u64, StoreError> {
        self.put_then(key, expect, value, fence, None).await
    }

    /// The last write of `key` under `lease`, then its sets and the lease's
    /// release: one script on one server; on a Cluster (the sets are in
    /// other slots), the write, then `entering` side by side, then `leaving`
    /// and the release side by side. There, what follows the write cannot
    /// undo it: a failure is logged and the version returned (a set left
    /// unchanged is for its readers to repair; a set not entered is not
    /// left either; a lease not released lapses at its TTL).
    pub(super) async fn put_fenced_and_release(
        &self,
        key: &Key,
        expect: Expect,
        value: &[u8],
        lease: &Lease,
        sets: Sets<'_>,
    ) -> Result<u64, StoreError> {
        if !self.is_cluster() {
            return self.put_then(key, expect, value, Some(lease), Some(sets)).await;
        }
        let version = self.put(key, expect, value, Some(lease)).await?;
        let failed = |what: &str, e: StoreError| {
            tracing::warn!(key = %key, error = %e, "store: the last write was made, but {what} failed");
        };
        let not_entered = self.set_each(sets.entering, true).await;
        let entered = not_entered.is_empty();
        not_entered.into_iter().for_each(|e| failed("entering a set", e));
        let left = async {
            match entered {
                true => self.set_each(sets.leaving, false).await,
                false => Vec::new(), // never out of both
            }
        };
        let (not_left, released) = tokio::join!(left, self.release_lease(lease));
        not_left.into_iter().for_each(|e| failed("leaving a set", e));
        if let Err(e) = released {
            failed("releasing the lease", e);
        }
        Ok(version)
    }

    /// Add (or remove) each `(set, member)`, side by side; the errors.
    async fn set_each(&self, pairs: &[(&Key, &str)], add: bool) -> Vec<StoreError> {
        let each = pairs.iter().map(|&(set, member)| async move {
            match add {
                true => self.set_add(set, member).await,
                false => self.set_remove(set, member).await,
            }
        });
        futures_util::future::join_all(each).await.into_iter().filter_map(Result::err).collect()
    }

    async fn put_then(
        &self,
        key: &Key,
        expect: Expect,
        value: &[u8],
        fence: Option<&Lease>,
        then: Option<Sets<'_>>,
    ) -> Result<u64, StoreError> {
        let op = match (fence, &then) {
            (_, Some(_)) => "put_fenced_and_release",
            (Some(_), None) => "put_fenced",
            (None, None) => "put",
        };
        let mut inv = SCRIPTS.put.prepare_invoke();
        inv.key(key.stored()).arg(expect_arg(expect)).arg(value);
        if let Some(lease) = fence {
            inv.key(fence_key(&lease.key).stored()).arg(lease.token);
            if let Some(sets) = then {
                inv.key(lease.key.stored()).arg(&lease.owner).arg(sets.entering.len());
                for (set, member) in sets.entering.iter().chain(sets.leaving) {
                    inv.key(set.stored()).arg(*member);
                }
            }
        }
        let reply: Vec<String> = self.eval(op, key, &inv).await?;
        match reply_parts(&reply) {
            ("ok", Some(v)) => {
                let version = number(v, op, key)?;
                self.replicated(op, key).await?;
                Ok(version)
            }
            ("conflict", found) => Err(StoreError::Conflict {
                key: key.stored(),
                expected: expect,
                found: found.map(|v| number(v, op, key)).transpose()?,
            }),
            ("fenced", Some(current)) => {
                let lease = fence.map(|l| (l.key.stored(), l.token)).unwrap_or_default();
                Err(StoreError::Fenced {
                    key: key.stored(),
                    lease: lease.0,
                    token: lease.1,
                    current: number(current, op, key)?,
                })
            }
            _ => Err(unexpected(op, key, &reply)),
        }
    }

    pub(super) async fn delete(&self, key: &Key, expect: Expect) -> Result<bool, StoreError> {
        let mut inv = SCRIPTS.delete.prepare_invoke();
        inv.key(key.stored()).arg(expect_arg(expect));
        let reply: Vec<String> = self.eval("delete", key, &inv).await?;
        match reply_parts(&reply) {
            ("ok", Some(n)) => self.confirmed("delete", key, n != "0").await,
            ("conflict", found) => Err(StoreError::Conflict {
                key: key.stored(),
                expected: expect,
                found: found.map(|v| number(v, "delete", key)).transpose()?,
            }),
            _ => Err(unexpected("delete", key, &reply)),
        }
    }

    pub(super) async fn incr(&self, key: &Key, by: i64) -> Result<i64, StoreError> {
        // Where the counter stops when `by` would overflow it (the memory
        // store saturates too).
        let bound = if by < 0 { i64::MIN } else { i64::MAX };
        let mut inv = SCRIPTS.incr.prepare_invoke();
        inv.key(key.stored()).arg(by).arg(bound);
        let now: String = self.eval("incr", key, &inv).await?;
        let now = now.parse().map_err(|_| unexpected("incr", key, &[now]))?;
        self.replicated("incr", key).await?;
        Ok(now)
    }

    /// Sets are native Redis sets: SADD, SREM and SMEMBERS are single-key
    /// and atomic, so they need no script.
    pub(super) async fn set_add(&self, key: &Key, member: &str) -> Result<bool, StoreError> {
        let added: i64 = self.command("set_add", key, ::redis::cmd("SADD").arg(key.stored()).arg(member)).await?;
        self.confirmed("set_add", key, added == 1).await
    }

    pub(super) async fn set_remove(&self, key: &Key, member: &str) -> Result<bool, StoreError> {
        let removed: i64 = self.command("set_remove", key, ::redis::cmd("SREM").arg(key.stored()).arg(member)).await?;
        self.confirmed("set_remove", key, removed == 1).await
    }

    pub(super) async fn set_members(&self, key: &Key) -> Result<Vec<String>, StoreError> {
        let mut members: Vec<String> =
            self.command("set_members", key, ::redis::cmd("SMEMBERS").arg(key.stored())).await?;
        members.sort();
        Ok(members)
    }

    pub(super) async fn claim(&self, key: &Key, owner: &str, running_ttl: Duration) -> Result<Claim, StoreError> {
        let mut inv = SCRIPTS.claim.prepare_invoke();
        inv.key(key.stored()).arg(owner).arg(millis(running_ttl));
        let reply: Vec<Vec<u8>> = self.eval("claim", key, &inv).await?;
        self.claimed("claim", key, reply).await
    }

    /// A claim script's reply (`claim.lua`, `take_over_claim.lua`); a won
    /// claim is confirmed by a replica first.
    async fn claimed(&self, op: &'static str, key: &Key, reply: Vec<Vec<u8>>) -> Result<Claim, StoreError> {
        match reply.as_slice() {
            [status, fence] if status == b"won" => {
                self.replicated(op, key).await?;
                Ok(Claim::Won { fence: String::from_utf8_lossy(fence).parse().unwrap_or(1) })
            }
            [status, owner] if status == b"running" => {
                Ok(Claim::Running { owner: String::from_utf8_lossy(owner).into_owned() })
            }
            [status, result] if status == b"done" => Ok(Claim::Done(result.clone())),
            _ => Err(StoreError::Unavailable {
                op,
                key: key.stored(),
                reason: format!("unexpected reply from Redis at {} ({} parts)", self.target, reply.len()),
            }),
        }
    }

    pub(super) async fn complete(
        &self,
        key: &Key,
        owner: &str,
        result: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut inv = SCRIPTS.complete.prepare_invoke();
        inv.key(key.stored()).arg(owner).arg(result).arg(millis(ttl));
        let done = self.eval("complete", key, &inv).await?;
        self.confirmed("complete", key, done).await
    }

    pub(super) async fn release(&self, key: &Key, owner: &str) -> Result<bool, StoreError> {
        let mut inv = SCRIPTS.release.prepare_invoke();
        inv.key(key.stored()).arg(owner);
        let released = self.eval("release", key, &inv).await?;
        self.confirmed("release", key, released).await
    }

    pub(super) async fn take_over_claim(
        &self,
        key: &Key,
        from: &str,
        owner: &str,
        running_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let mut inv = SCRIPTS.take_over_claim.prepare_invoke();
        inv.key(key.stored()).arg(from).arg(owner).arg(millis(running_ttl));
        let reply: Vec<Vec<u8>> = self.eval("take_over_claim", key, &inv).await?;
        self.claimed("take_over_claim", key, reply).await
    }

    pub(super) async fn renew_claim(&self, key: &Key, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut inv = SCRIPTS.renew_claim.prepare_invoke();
        inv.key(key.stored()).arg(owner).arg(millis(ttl));
        let renewed = self.eval("renew_claim", key, &inv).await?;
        self.confirmed("renew_claim", key, renewed).await
    }

    /// Beats are not confirmed by a replica (`WAIT`): the next beat replaces
    /// one a failover lost, and a judge never reads across a failover.
    pub(super) async fn beat(&self, key: &Key, beat: Beat, ttl: Duration) -> Result<(), StoreError> {
        let mut inv = SCRIPTS.beat.prepare_invoke();
        inv.key(key.stored()).arg(beat.count).arg(if beat.gone { "1" } else { "0" }).arg(millis(ttl));
        let _: i64 = self.eval("beat", key, &inv).await?;
        Ok(())
    }

    pub(super) async fn read_beat(&self, key: &Key) -> Result<Option<Beat>, StoreError> {
        let mut inv = SCRIPTS.read_beat.prepare_invoke();
        inv.key(key.stored());
        let found: Option<(String, String)> = self.eval("read_beat", key, &inv).await?;
        found.map(|(n, g)| Ok(Beat { count: number(&n, "read_beat", key)?, gone: g == "1" })).transpose()
    }

    pub(super) async fn take_over_lease(
        &self,
        key: &Key,
        from: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Takeover, StoreError> {
        let mut inv = SCRIPTS.take_over_lease.prepare_invoke();
        inv.key(key.stored()).key(fence_key(key).stored()).arg(from).arg(owner).arg(millis(ttl));
        let reply: Vec<String> = self.eval("take_over_lease", key, &inv).await?;
        match reply_parts(&reply) {
            ("taken", Some(token)) => {
                let token = number(token, "take_over_lease", key)?;
                self.replicated("take_over_lease", key).await?;
                Ok(Takeover::Taken(Lease { key: key.clone(), owner: owner.to_owned(), token }))
            }
            ("held", Some(holder)) => Ok(Takeover::Held { owner: holder.to_owned() }),
            _ => Err(unexpected("take_over_lease", key, &reply)),
        }
    }

    pub(super) async fn acquire_lease(
        &self,
        key: &Key,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let mut inv = SCRIPTS.acquire_lease.prepare_invoke();
        inv.key(key.stored()).key(fence_key(key).stored()).arg(owner).arg(millis(ttl));
        let token: Option<String> = self.eval("acquire_lease", key, &inv).await?;
        let Some(token) = token else { return Ok(None) };
        let token = number(&token, "acquire_lease", key)?;
        self.replicated("acquire_lease", key).await?;
        Ok(Some(Lease { key: key.clone(), owner: owner.to_owned(), token }))
    }

    pub(super) async fn create_leased(
        &self,
        key: &Key,
        value: &[u8],
        lease: &Key,
        owner: &str,
        ttl: Duration,
        indexes: &[(&Key, &str)],
    ) -> Result<Created, StoreError> {
        let mut inv = SCRIPTS.create_leased.prepare_invoke();
        inv.key(key.stored()).key(lease.stored()).key(fence_key(lease).stored());
        inv.arg(value).arg(owner).arg(millis(ttl));
        if self.is_cluster() {
            // The sets hash to other slots: first, side by side.
            if let Some(e) = self.set_each(indexes, true).await.into_iter().next() {
                return Err(e);
            }
        } else {
            // One server: in the same script, before the record.
            for (set, member) in indexes {
                inv.key(set.stored()).arg(*member);
            }
        }
        let reply: Vec<String> = self.eval("create_leased", key, &inv).await?;
        match reply_parts(&reply) {
            ("ok", Some(token)) => {
                let token = number(token, "create_leased", key)?;
                self.replicated("create_leased", key).await?;
                Ok(Created::Written(Lease { key: lease.clone(), owner: owner.to_owned(), token }))
            }
            (outcome @ ("exists" | "held"), None) => {
                if !indexes.is_empty() && !self.is_cluster() {
                    self.replicated("create_leased", key).await?; // the sets were written
                }
                Ok(if outcome == "exists" { Created::Exists } else { Created::Held })
            }
            _ => Err(unexpected("create_leased", key, &reply)),
        }
    }

    pub(super) async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let mut inv = SCRIPTS.renew_lease.prepare_invoke();
        inv.key(lease.key.stored()).arg(&lease.owner).arg(lease.token).arg(millis(ttl));
        let renewed = self.eval("renew_lease", &lease.key, &inv).await?;
        self.confirmed("renew_lease", &lease.key, renewed).await
    }

    pub(super) async fn release_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        let mut inv = SCRIPTS.release_lease.prepare_invoke();
        inv.key(lease.key.stored()).arg(&lease.owner).arg(lease.token);
        let released = self.eval("release_lease", &lease.key, &inv).await?;
        self.confirmed("release_lease", &lease.key, released).await
    }
}
