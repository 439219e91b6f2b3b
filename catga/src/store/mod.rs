//! The store: state that every instance of a service shares — idempotency
//! records, versioned records (a saga's state), leases with fencing tokens,
//! counters, sets, and instances' heartbeats ([`crate::liveness`]) with the
//! compare-and-swap takeovers of what a dead instance held
//! ([`Store::take_over_claim`], [`Store::take_over_lease`]).
//!
//! Two implementations with one meaning:
//! - [`memory`]: the embedded default, for instances in one process;
//! - [`redis`]: a Redis server or a Redis Cluster (set
//!   `CATGA_REDIS_URL`, or connect with [`Store::connect`]).
//!
//! Keys are `(scope, name)` pairs ([`Key`]). Everything one operation
//! touches lives in one scope, and on Redis a scope is a hash tag
//! (`catga:{scope}:name`), so every multi-key operation stays in one
//! Cluster slot. Atomic updates are Lua scripts on Redis and one lock in
//! memory; nothing reads, decides, then writes across round trips.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> catga::Result<()> {
//! use std::time::Duration;
//! use catga::store::{Expect, Key, Store};
//!
//! let store = Store::memory();
//! let key = Key::new("order-7", "state");
//! let v1 = store.put(&key, Expect::Absent, b"charged").await?;
//! // A writer holding an old version loses: compare-and-set.
//! assert!(store.put(&key, Expect::Absent, b"again").await.is_err());
//! let v2 = store.put(&key, Expect::Version(v1), b"reserved").await?;
//! assert_eq!(store.get(&key).await?.unwrap().version, v2);
//!
//! // Leases fence writers: a write under a superseded lease is refused.
//! let lease_key = Key::new("order-7", "lease");
//! let a = store.acquire_lease(&lease_key, "instance-a", Duration::from_millis(10)).await?.unwrap();
//! tokio::time::sleep(Duration::from_millis(20)).await; // a stalls; its lease expires
//! let b = store.acquire_lease(&lease_key, "instance-b", Duration::from_secs(5)).await?.unwrap();
//! assert!(b.token > a.token);
//! assert!(store.put_fenced(&key, Expect::Version(v2), b"from a", &a).await.is_err());
//! store.put_fenced(&key, Expect::Version(v2), b"from b", &b).await?;
//! # Ok(()) }
//! ```

mod lua;
pub mod memory;
pub mod redis;
pub(crate) mod types;

use std::fmt;
use std::time::Duration;

use crate::error::Result;
use crate::security::RedisTls;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
pub use self::types::{Beat, Claim, Created, Due, Expect, Key, Lease, Sets, StoreError, Takeover, Versioned};

/// Where an instance keeps shared state. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

/// An enum, not a trait object: the set of stores is closed, and the
/// methods stay plain `async fn`s.
#[derive(Clone)]
enum Backend {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// A fresh in-memory store (shared by whoever clones it).
    pub fn memory() -> Store {
        Store { backend: Backend::Memory(MemoryStore::default()) }
    }

    /// The process-wide in-memory store that instances without a Redis URL
    /// share (like [`MemoryBus::global`](crate::transport::memory::MemoryBus::global)).
    pub fn global_memory() -> Store {
        Store { backend: Backend::Memory(MemoryStore::global()) }
    }

    /// A store on Redis: `url` is one server (`redis://127.0.0.1:6379`) or
    /// a comma-separated list of Redis Cluster nodes. Answers once the server
    /// answered a `PING`; an unreachable server is an
    /// [`Unavailable`](StoreError::Unavailable) error naming the URL (without
    /// its password), a malformed URL a configuration error. See
    /// [`redis`] for the key layout and the timeouts.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Nothing listens on port 1: a clear error, within seconds.
    /// let err = catga::store::Store::connect("redis://127.0.0.1:1").await.unwrap_err();
    /// assert!(err.to_string().contains("redis://127.0.0.1:1"), "{err}");
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, &RedisTls::default()).await
    }

    /// [`connect`](Store::connect) with TLS files for `rediss://` URLs: the
    /// CA that signed the servers' certificates, a client certificate (see
    /// [`RedisTls`]; `Catga::run` reads them from `CATGA_REDIS_TLS_*`).
    pub async fn connect_with(url: &str, tls: &RedisTls) -> Result<Store> {
        Ok(RedisStore::connect(url, tls).await?.into())
    }

    /// Redis: how many replicas must confirm a write before it counts as
    /// done (`WAIT`); see [`Config::redis_replica_acks`](crate::Config::redis_replica_acks).
    /// No effect on the memory store.
    pub fn with_replica_acks(mut self, acks: u32) -> Store {
        if let Backend::Redis(r) = &mut self.backend {
            r.set_replica_acks(acks);
        }
        self
    }

    /// Which store this is: `memory` or `redis`.
    pub fn name(&self) -> &'static str {
        match &self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// Read a record.
    pub async fn get(&self, key: &Key) -> Result<Option<Versioned>> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Redis(r) => Ok(r.get(key).await?),
        }
    }

    /// Write a record if it is as `expect` says; returns the new version.
    pub async fn put(&self, key: &Key, expect: Expect, value: &[u8]) -> Result<u64> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.put(key, expect, value, None)?),
            Backend::Redis(r) => Ok(r.put(key, expect, value, None).await?),
        }
    }

    /// [`put`](Store::put), and only while `lease` is the latest grant of its
    /// lease (its token is current). The lease must be in the key's scope.
    pub async fn put_fenced(&self, key: &Key, expect: Expect, value: &[u8], lease: &Lease) -> Result<u64> {
        same_scope(key, lease)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.put(key, expect, value, Some(lease))?),
            Backend::Redis(r) => Ok(r.put(key, expect, value, Some(lease)).await?),
        }
    }

    /// The last write of `key` under `lease`: [`put_fenced`](Self::put_fenced),
    /// and once it is written, each `(set, member)` of `sets.entering` added,
    /// each of `sets.leaving` removed, and the lease released — what a
    /// finished saga does. A refused write (conflict, fenced) changes nothing
    /// else. On one Redis server one script (one round trip); on a Redis
    /// Cluster, whose sets are in other slots, the write, then the sets
    /// entered, then those left beside the release — there a failure after
    /// the write cannot undo it: it is logged at `warn` and the version
    /// returned (the sets are for their readers to repair, as the saga
    /// sweep does; a set not entered is not left either; a lease not
    /// released lapses at its TTL).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga::Result<()> {
    /// use std::time::Duration;
    /// use catga::store::{Expect, Key, Sets, Store};
    ///
    /// let store = Store::memory();
    /// let (state, lease) = (Key::new("order-7", "state"), Key::new("order-7", "lease"));
    /// let (open, closed) = (Key::new("orders", "open"), Key::new("orders", "closed"));
    /// store.set_add(&open, "order-7").await?;
    /// let held = store.acquire_lease(&lease, "a", Duration::from_secs(30)).await?.unwrap();
    /// let sets = Sets { entering: &[(&closed, "order-7")], leaving: &[(&open, "order-7")] };
    /// store.put_fenced_and_release(&state, Expect::Absent, b"done", &held, sets).await?;
    /// assert!(store.set_members(&open).await?.is_empty());
    /// assert_eq!(store.set_members(&closed).await?, ["order-7"]);
    /// assert!(!store.release_lease(&held).await?, "released already");
    /// # Ok(()) }
    /// ```
    pub async fn put_fenced_and_release(
        &self,
        key: &Key,
        expect: Expect,
        value: &[u8],
        lease: &Lease,
        sets: Sets<'_>,
    ) -> Result<u64> {
        same_scope(key, lease)?;
        match &self.backend {
            Backend::Memory(m) => {
                let version = m.put(key, expect, value, Some(lease))?;
                for (set, member) in sets.entering {
                    m.set_add(set, member);
                }
                for (set, member) in sets.leaving {
                    m.set_remove(set, member);
                }
                m.release_lease(lease);
                Ok(version)
            }
            Backend::Redis(r) => Ok(r.put_fenced_and_release(key, expect, value, lease, sets).await?),
        }
    }

    /// Delete a record if it is as `expect` says; whether there was one.
    pub async fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.delete(key, expect)?),
            Backend::Redis(r) => Ok(r.delete(key, expect).await?),
        }
    }

    /// Add `by` to a counter (created at 0); its new value.
    pub async fn incr(&self, key: &Key, by: i64) -> Result<i64> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.incr(key, by)),
            Backend::Redis(r) => Ok(r.incr(key, by).await?),
        }
    }

    /// Add `member` to the set at `key`; whether it was new. (Sets index
    /// things to find later, e.g. the sagas a recovery sweep looks at.)
    pub async fn set_add(&self, key: &Key, member: &str) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.set_add(key, member)),
            Backend::Redis(r) => Ok(r.set_add(key, member).await?),
        }
    }

    /// Remove `member` from the set at `key`; whether it was there.
    pub async fn set_remove(&self, key: &Key, member: &str) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.set_remove(key, member)),
            Backend::Redis(r) => Ok(r.set_remove(key, member).await?),
        }
    }

    /// The members of the set at `key`, sorted.
    pub async fn set_members(&self, key: &Key) -> Result<Vec<String>> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.set_members(key)),
            Backend::Redis(r) => Ok(r.set_members(key).await?),
        }
    }

    /// Claim the work named by `key` for `owner`, atomically: exactly one
    /// concurrent caller wins. The claim lapses after `running_ttl` (so a
    /// crashed owner does not block the work forever). Claiming again as the
    /// owner of the running claim wins again and restarts its TTL (so a
    /// claim retried after a lost answer is not mistaken for someone else's).
    pub async fn claim(&self, key: &Key, owner: &str, running_ttl: Duration) -> Result<Claim> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.claim(key, owner, running_ttl)),
            Backend::Redis(r) => Ok(r.claim(key, owner, running_ttl).await?),
        }
    }

    /// Record the result of claimed work, kept for `ttl`. False if `owner`
    /// no longer held the claim (it lapsed and someone else took it).
    pub async fn complete(&self, key: &Key, owner: &str, result: &[u8], ttl: Duration) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.complete(key, owner, result, ttl)),
            Backend::Redis(r) => Ok(r.complete(key, owner, result, ttl).await?),
        }
    }

    /// Give up a claim so the work can be claimed again (it failed).
    pub async fn release(&self, key: &Key, owner: &str) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.release(key, owner)),
            Backend::Redis(r) => Ok(r.release(key, owner).await?),
        }
    }

    /// Take over the running claim of `from` (exactly that owner string),
    /// which the caller judged dead: atomically, `from`'s claim becomes
    /// `owner`'s for `running_ttl`. Otherwise the same answers as
    /// [`claim`](Store::claim): the recorded result, someone else's running
    /// claim, or a claim won because there was none (or it was `owner`'s).
    /// The old owner's [`complete`](Store::complete) is then refused.
    pub async fn take_over_claim(&self, key: &Key, from: &str, owner: &str, running_ttl: Duration) -> Result<Claim> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.take_over_claim(key, from, owner, running_ttl)),
            Backend::Redis(r) => Ok(r.take_over_claim(key, from, owner, running_ttl).await?),
        }
    }

    /// Extend `owner`'s running claim to `ttl` from now; false if `owner`
    /// no longer holds it (completed, released, taken over). Never creates
    /// a claim.
    pub async fn renew_claim(&self, key: &Key, owner: &str, ttl: Duration) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.renew_claim(key, owner, ttl)),
            Backend::Redis(r) => Ok(r.renew_claim(key, owner, ttl).await?),
        }
    }

    /// Write a heartbeat: `beat` at `key`, expiring after `ttl` (only to
    /// clean up after an instance that is gone). Not confirmed by replicas:
    /// a beat lost to a failover is replaced by the next one.
    pub async fn beat(&self, key: &Key, beat: Beat, ttl: Duration) -> Result<()> {
        match &self.backend {
            Backend::Memory(m) => {
                m.beat(key, beat, ttl);
                Ok(())
            }
            Backend::Redis(r) => Ok(r.beat(key, beat, ttl).await?),
        }
    }

    /// Read a heartbeat (`None`: there is none, or it expired).
    pub async fn read_beat(&self, key: &Key) -> Result<Option<Beat>> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.read_beat(key)),
            Backend::Redis(r) => Ok(r.read_beat(key).await?),
        }
    }

    /// Take the lease on `key` for `owner` if it is free or held by instance
    /// `from` (an owner named `from` or `from#...`), which the caller judged
    /// dead: atomically, with a new fencing token, so `from`'s fenced writes
    /// are refused from now on.
    pub async fn take_over_lease(&self, key: &Key, from: &str, owner: &str, ttl: Duration) -> Result<Takeover> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.take_over_lease(key, from, owner, ttl)),
            Backend::Redis(r) => Ok(r.take_over_lease(key, from, owner, ttl).await?),
        }
    }

    /// A store on the same data with connections of its own (Redis: a new
    /// connection made on the current tokio runtime; memory: a clone), for
    /// work that must not share the instance's connections or runtime —
    /// the heartbeat.
    pub async fn reconnect(&self) -> Result<Store> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.clone().into()),
            Backend::Redis(r) => Ok(r.reconnect().await?.into()),
        }
    }

    /// Whether this store is in this process's memory.
    pub fn is_memory(&self) -> bool {
        matches!(self.backend, Backend::Memory(_))
    }

    /// Take the lease on `key` for `ttl`, unless someone else holds it.
    /// Taking a lease you already hold extends it and keeps its token.
    pub async fn acquire_lease(&self, key: &Key, owner: &str, ttl: Duration) -> Result<Option<Lease>> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.acquire_lease(key, owner, ttl)),
            Backend::Redis(r) => Ok(r.acquire_lease(key, owner, ttl).await?),
        }
    }

    /// Create the record `key` (at version 1) under the lease `lease`, in
    /// one step: unless the record exists or someone else holds the lease,
    /// takes the lease for `ttl` (or extends it, if `owner` holds it) and
    /// writes `value`. One round trip where [`acquire_lease`](Self::acquire_lease)
    /// then [`put_fenced`](Self::put_fenced) take two; both keys in one scope.
    ///
    /// Before that, each `(set, member)` of `indexes` is added (whatever
    /// the outcome, as [`set_add`](Self::set_add) would): whoever reads
    /// those sets finds every record that may exist. On one Redis server
    /// in the same script (one round trip in all); on a Redis Cluster,
    /// whose sets are in other slots, all at once first, then the record.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga::Result<()> {
    /// use std::time::Duration;
    /// use catga::store::{Created, Key, Store};
    ///
    /// let store = Store::memory();
    /// let (state, lease) = (Key::new("order-7", "state"), Key::new("order-7", "lease"));
    /// let ttl = Duration::from_secs(30);
    /// let index = Key::new("orders", "open");
    /// let indexes = [(&index, "order-7")];
    /// let Created::Written(held) = store.create_leased(&state, b"new", &lease, "a", ttl, &indexes).await? else {
    ///     panic!()
    /// };
    /// assert_eq!(store.get(&state).await?.unwrap().version, 1);
    /// assert_eq!(store.set_members(&index).await?, ["order-7"]);
    /// assert_eq!(store.create_leased(&state, b"again", &lease, "b", ttl, &[]).await?, Created::Exists);
    /// # let _ = held;
    /// # Ok(()) }
    /// ```
    pub async fn create_leased(
        &self,
        key: &Key,
        value: &[u8],
        lease: &Key,
        owner: &str,
        ttl: Duration,
        indexes: &[(&Key, &str)],
    ) -> Result<Created> {
        if key.scope != lease.scope {
            return Err(StoreError::ScopeMismatch { key: key.stored(), lease: lease.stored() }.into());
        }
        match &self.backend {
            Backend::Memory(m) => {
                for (set, member) in indexes {
                    m.set_add(set, member);
                }
                Ok(m.create_leased(key, value, lease, owner, ttl))
            }
            Backend::Redis(r) => Ok(r.create_leased(key, value, lease, owner, ttl, indexes).await?),
        }
    }

    /// Extend a held lease; false if it was lost (expired and taken, or released).
    pub async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.renew_lease(lease, ttl)),
            Backend::Redis(r) => Ok(r.renew_lease(lease, ttl).await?),
        }
    }

    /// Give a lease up; false if it was no longer held.
    pub async fn release_lease(&self, lease: &Lease) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.release_lease(lease)),
            Backend::Redis(r) => Ok(r.release_lease(lease).await?),
        }
    }
}

/// Timer queues: items due at a time (epoch milliseconds, as the caller's
/// [`Clock`](crate::Clock) reads it), each delivered by one caller at a
/// time. A caller lists what is due ([`timers_due`](Store::timers_due)),
/// takes an item until a time ([`timer_take`](Store::timer_take): atomic,
/// one taker wins), and ends its taking — done, or due again later
/// ([`timer_end`](Store::timer_end)). A taker that dies lets its taking
/// lapse, and the item is listed again. A queue lives in one scope (one
/// Cluster slot): spread many items over several queues.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> catga::Result<()> {
/// use catga::store::{Key, Store};
///
/// let store = Store::memory();
/// let queue = Key::new("timers:0", "q");
/// store.timer_put(&queue, "remind-7", 1_000, b"send the reminder", false).await?;
/// assert!(store.timers_due(&queue, 999, 999, 10).await?.is_empty());
/// let due = store.timers_due(&queue, 1_000, 1_000, 10).await?;
/// let item = store.timer_take(&queue, &due[0].id, due[0].at, 31_000, 1_000).await?;
/// assert_eq!(item.as_deref(), Some(&b"send the reminder"[..]));
/// // A second taker finds it taken.
/// assert_eq!(store.timer_take(&queue, "remind-7", due[0].at, 31_000, 1_000).await?, None);
/// assert!(store.timer_end(&queue, "remind-7", 31_000, None).await?); // delivered
/// # Ok(()) }
/// ```
impl Store {
    /// Queue item `id` at `due`; false if `id` is queued already and
    /// `replace` is false (nothing changes). Replacing moves it back to
    /// waiting, with the new item and due time.
    pub async fn timer_put(&self, queue: &Key, id: &str, due: u64, item: &[u8], replace: bool) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.timer_put(queue, id, due, item, replace)),
            Backend::Redis(r) => Ok(r.timer_put(queue, id, due, item, replace).await?),
        }
    }

    /// Up to `limit` items due by `upto`, earliest first, then up to
    /// `limit` items whose taking lapsed by `now`.
    pub async fn timers_due(&self, queue: &Key, upto: u64, now: u64, limit: usize) -> Result<Vec<Due>> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.timers_due(queue, upto, now, limit)),
            Backend::Redis(r) => Ok(r.timers_due(queue, upto, now, limit).await?),
        }
    }

    /// Take item `id` as listed (`seen`: its [`Due::at`]) until `until`, if
    /// it is still as listed and `seen` is not after `now`; the item, or
    /// `None` if another caller took it, or it changed or went.
    pub async fn timer_take(&self, queue: &Key, id: &str, seen: u64, until: u64, now: u64) -> Result<Option<Vec<u8>>> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.timer_take(queue, id, seen, until, now)),
            Backend::Redis(r) => Ok(r.timer_take(queue, id, seen, until, now).await?),
        }
    }

    /// End the taking of `id` that lapses at `until`: the item is deleted
    /// (`again` is `None`) or waits until `again`. False if that taking
    /// is no longer current (it lapsed and another caller took the item).
    pub async fn timer_end(&self, queue: &Key, id: &str, until: u64, again: Option<u64>) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.timer_end(queue, id, until, again)),
            Backend::Redis(r) => Ok(r.timer_end(queue, id, until, again).await?),
        }
    }

    /// Delete item `id` if it is waiting (or its taking lapsed by `now`):
    /// true. False if it is being delivered right now, or is unknown.
    pub async fn timer_cancel(&self, queue: &Key, id: &str, now: u64) -> Result<bool> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.timer_cancel(queue, id, now)),
            Backend::Redis(r) => Ok(r.timer_cancel(queue, id, now).await?),
        }
    }
}

impl From<MemoryStore> for Store {
    fn from(memory: MemoryStore) -> Store {
        Store { backend: Backend::Memory(memory) }
    }
}

impl From<RedisStore> for Store {
    fn from(redis: RedisStore) -> Store {
        Store { backend: Backend::Redis(redis) }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("backend", &self.name()).finish()
    }
}

fn same_scope(key: &Key, lease: &Lease) -> std::result::Result<(), StoreError> {
    if key.scope != lease.key.scope {
        return Err(StoreError::ScopeMismatch { key: key.stored(), lease: lease.key.stored() });
    }
    Ok(())
}
