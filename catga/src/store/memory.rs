//! The in-memory store: one map behind one lock, with the same meaning as
//! the Redis store — versions, claims, leases and fencing tokens, expiry.
//! Instances in one process share it (see [`MemoryStore::global`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::{Beat, Claim, Created, Due, Expect, Key, Lease, StoreError, Takeover, Versioned};
use crate::clock::Clock;

/// The embedded store. Cheap to clone; clones share the data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<Map>>,
}

#[derive(Default)]
struct Map {
    /// Where expiry reads time (tokio's clock: a paused test controls it).
    clock: Clock,
    entries: HashMap<Key, Entry>,
    /// Writes since the last sweep of expired entries.
    writes: usize,
}

struct Entry {
    value: Value,
    expires: Option<Instant>,
}

enum Value {
    Record(Versioned),
    Counter(i64),
    Set(std::collections::BTreeSet<String>),
    Claimed {
        owner: String,
        fence: u64,
    },
    Done(Vec<u8>),
    Leased {
        owner: String,
        token: u64,
    },
    /// A lease's latest token; never expires, so tokens only grow.
    Fence(u64),
    /// An instance's heartbeat.
    Beat(Beat),
    /// A timer queue.
    Timers(Box<Timers>),
}

/// A timer queue: items waiting by due time, and items taken by a caller
/// until a time (when the taking lapses).
#[derive(Default)]
struct Timers {
    waiting: BTreeSet<(u64, String)>,
    taken: BTreeSet<(u64, String)>,
    /// Each item, and where it is.
    items: HashMap<String, (Vec<u8>, Place)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Place {
    Waiting(u64),
    Taken(u64),
}

impl Timers {
    fn place(&mut self, id: &str, place: Place) {
        let Some((_, at)) = self.items.get_mut(id) else { return };
        match std::mem::replace(at, place) {
            Place::Waiting(t) => self.waiting.remove(&(t, id.to_owned())),
            Place::Taken(t) => self.taken.remove(&(t, id.to_owned())),
        };
        match place {
            Place::Waiting(t) => self.waiting.insert((t, id.to_owned())),
            Place::Taken(t) => self.taken.insert((t, id.to_owned())),
        };
    }

    fn remove(&mut self, id: &str) {
        match self.items.remove(id) {
            Some((_, Place::Waiting(t))) => self.waiting.remove(&(t, id.to_owned())),
            Some((_, Place::Taken(t))) => self.taken.remove(&(t, id.to_owned())),
            None => false,
        };
    }
}

/// Sweep expired entries every this many writes (keeps memory bounded
/// when idempotency records are written and never read again).
const SWEEP_EVERY: usize = 4096;

impl MemoryStore {
    /// The one store of this process that instances share by default.
    pub fn global() -> MemoryStore {
        static GLOBAL: OnceLock<MemoryStore> = OnceLock::new();
        GLOBAL.get_or_init(MemoryStore::default).clone()
    }

    /// A fresh store whose TTLs, claims and leases expire by `clock`.
    pub fn with_clock(clock: Clock) -> MemoryStore {
        MemoryStore { map: Arc::new(Mutex::new(Map { clock, ..Map::default() })) }
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        // No code runs user logic under this lock; a poisoned lock still
        // holds consistent data.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, key: &Key) -> Option<Versioned> {
        match self.lock().live(key) {
            Some(Value::Record(v)) => Some(v.clone()),
            _ => None,
        }
    }

    pub(super) fn put(
        &self,
        key: &Key,
        expect: Expect,
        value: &[u8],
        fence: Option<&Lease>,
    ) -> Result<u64, StoreError> {
        let mut map = self.lock();
        if let Some(lease) = fence {
            let current = map.fence(&lease.key);
            if current != lease.token {
                return Err(StoreError::Fenced {
                    key: key.stored(),
                    lease: lease.key.stored(),
                    token: lease.token,
                    current,
                });
            }
        }
        let found = match map.live(key) {
            Some(Value::Record(v)) => Some(v.version),
            _ => None,
        };
        check(key, expect, found)?;
        let version = found.unwrap_or(0) + 1;
        map.set(key, Value::Record(Versioned { version, value: value.to_vec() }), None);
        Ok(version)
    }

    pub(super) fn delete(&self, key: &Key, expect: Expect) -> Result<bool, StoreError> {
        let mut map = self.lock();
        let found = match map.live(key) {
            Some(Value::Record(v)) => Some(v.version),
            _ => None,
        };
        check(key, expect, found)?;
        Ok(map.entries.remove(key).is_some())
    }

    pub(super) fn incr(&self, key: &Key, by: i64) -> i64 {
        let mut map = self.lock();
        let now = match map.live(key) {
            Some(Value::Counter(n)) => n.saturating_add(by),
            _ => by,
        };
        map.set(key, Value::Counter(now), None);
        now
    }

    pub(super) fn set_add(&self, key: &Key, member: &str) -> bool {
        let mut map = self.lock();
        if let Some(Entry { value: Value::Set(set), .. }) = map.entries.get_mut(key) {
            return set.insert(member.to_owned());
        }
        map.set(key, Value::Set([member.to_owned()].into()), None);
        true
    }

    pub(super) fn set_remove(&self, key: &Key, member: &str) -> bool {
        match self.lock().entries.get_mut(key) {
            Some(Entry { value: Value::Set(set), .. }) => set.remove(member),
            _ => false,
        }
    }

    pub(super) fn set_members(&self, key: &Key) -> Vec<String> {
        match self.lock().live(key) {
            Some(Value::Set(set)) => set.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    pub(super) fn claim(&self, key: &Key, owner: &str, running_ttl: Duration) -> Claim {
        let mut map = self.lock();
        match map.live(key) {
            Some(Value::Claimed { owner: held, .. }) if held != owner => Claim::Running { owner: held.clone() },
            Some(Value::Done(result)) => Claim::Done(result.clone()),
            held => {
                // Claiming again keeps the grant's fence.
                let fence = match held {
                    Some(Value::Claimed { fence, .. }) => *fence,
                    _ => 1,
                };
                map.set(key, Value::Claimed { owner: owner.to_owned(), fence }, Some(running_ttl));
                Claim::Won { fence }
            }
        }
    }

    pub(super) fn complete(&self, key: &Key, owner: &str, result: &[u8], ttl: Duration) -> bool {
        let mut map = self.lock();
        if !matches!(map.live(key), Some(Value::Claimed { owner: o, .. }) if o == owner) {
            return false;
        }
        map.set(key, Value::Done(result.to_vec()), Some(ttl));
        true
    }

    pub(super) fn release(&self, key: &Key, owner: &str) -> bool {
        let mut map = self.lock();
        if !matches!(map.live(key), Some(Value::Claimed { owner: o, .. }) if o == owner) {
            return false;
        }
        map.entries.remove(key);
        true
    }

    pub(super) fn take_over_claim(&self, key: &Key, from: &str, owner: &str, running_ttl: Duration) -> Claim {
        let mut map = self.lock();
        match map.live(key) {
            Some(Value::Claimed { owner: held, .. }) if held != from && held != owner => {
                Claim::Running { owner: held.clone() }
            }
            Some(Value::Done(result)) => Claim::Done(result.clone()),
            held => {
                // A takeover from `from` is the next grant.
                let fence = match held {
                    Some(Value::Claimed { owner: held, fence }) => fence + u64::from(held == from),
                    _ => 1,
                };
                map.set(key, Value::Claimed { owner: owner.to_owned(), fence }, Some(running_ttl));
                Claim::Won { fence }
            }
        }
    }

    pub(super) fn renew_claim(&self, key: &Key, owner: &str, ttl: Duration) -> bool {
        let mut map = self.lock();
        if !matches!(map.live(key), Some(Value::Claimed { owner: o, .. }) if o == owner) {
            return false;
        }
        let fence = match map.live(key) {
            Some(Value::Claimed { fence, .. }) => *fence,
            _ => 1,
        };
        map.set(key, Value::Claimed { owner: owner.to_owned(), fence }, Some(ttl));
        true
    }

    pub(super) fn beat(&self, key: &Key, beat: Beat, ttl: Duration) {
        self.lock().set(key, Value::Beat(beat), Some(ttl));
    }

    pub(super) fn read_beat(&self, key: &Key) -> Option<Beat> {
        match self.lock().live(key) {
            Some(Value::Beat(beat)) => Some(*beat),
            _ => None,
        }
    }

    pub(super) fn take_over_lease(&self, key: &Key, from: &str, owner: &str, ttl: Duration) -> Takeover {
        let mut map = self.lock();
        if let Some(Value::Leased { owner: held, .. }) = map.live(key)
            && !held_by(held, from)
        {
            return Takeover::Held { owner: held.clone() };
        }
        let token = map.fence(key) + 1;
        map.set(&fence_key(key), Value::Fence(token), None);
        map.set(key, Value::Leased { owner: owner.to_owned(), token }, Some(ttl));
        Takeover::Taken(Lease { key: key.clone(), owner: owner.to_owned(), token })
    }

    pub(super) fn acquire_lease(&self, key: &Key, owner: &str, ttl: Duration) -> Option<Lease> {
        let token = self.lock().take_lease(key, owner, ttl)?;
        Some(Lease { key: key.clone(), owner: owner.to_owned(), token })
    }

    pub(super) fn create_leased(&self, key: &Key, value: &[u8], lease: &Key, owner: &str, ttl: Duration) -> Created {
        let mut map = self.lock();
        if matches!(map.live(key), Some(Value::Record(_))) {
            return Created::Exists;
        }
        let Some(token) = map.take_lease(lease, owner, ttl) else { return Created::Held };
        map.set(key, Value::Record(Versioned { version: 1, value: value.to_vec() }), None);
        Created::Written(Lease { key: lease.clone(), owner: owner.to_owned(), token })
    }

    pub(super) fn renew_lease(&self, lease: &Lease, ttl: Duration) -> bool {
        let mut map = self.lock();
        if !map.holds(lease) {
            return false;
        }
        map.set(&lease.key, Value::Leased { owner: lease.owner.clone(), token: lease.token }, Some(ttl));
        true
    }

    pub(super) fn release_lease(&self, lease: &Lease) -> bool {
        let mut map = self.lock();
        if !map.holds(lease) {
            return false;
        }
        map.entries.remove(&lease.key);
        true
    }
}

/// Timer queues (see [`Store::timer_put`](super::Store::timer_put)).
impl MemoryStore {
    fn timers<T>(&self, queue: &Key, f: impl FnOnce(&mut Timers) -> T) -> T {
        let mut map = self.lock();
        if !matches!(map.live(queue), Some(Value::Timers(_))) {
            map.set(queue, Value::Timers(Box::default()), None);
        }
        match map.entries.get_mut(queue) {
            Some(Entry { value: Value::Timers(timers), .. }) => f(timers),
            _ => unreachable!("a timer queue was just made"),
        }
    }

    pub(super) fn timer_put(&self, queue: &Key, id: &str, due: u64, item: &[u8], replace: bool) -> bool {
        self.timers(queue, |t| {
            if t.items.contains_key(id) && !replace {
                return false;
            }
            match t.items.get_mut(id) {
                Some((stored, _)) => {
                    *stored = item.to_vec();
                    t.place(id, Place::Waiting(due));
                }
                None => {
                    t.items.insert(id.to_owned(), (item.to_vec(), Place::Waiting(due)));
                    t.waiting.insert((due, id.to_owned()));
                }
            }
            true
        })
    }

    pub(super) fn timers_due(&self, queue: &Key, upto: u64, now: u64, limit: usize) -> Vec<Due> {
        self.timers(queue, |t| {
            let due = t.waiting.iter().take_while(|(at, _)| *at <= upto).take(limit);
            let lapsed = t.taken.iter().take_while(|(at, _)| *at <= now).take(limit);
            due.chain(lapsed).map(|(at, id)| Due { id: id.clone(), at: *at }).collect()
        })
    }

    pub(super) fn timer_take(&self, queue: &Key, id: &str, seen: u64, until: u64, now: u64) -> Option<Vec<u8>> {
        self.timers(queue, |t| {
            let (item, place) = t.items.get(id)?;
            let listed = matches!(place, Place::Waiting(at) | Place::Taken(at) if *at == seen);
            if seen > now || !listed {
                return None;
            }
            let item = item.clone();
            t.place(id, Place::Taken(until));
            Some(item)
        })
    }

    pub(super) fn timer_end(&self, queue: &Key, id: &str, until: u64, again: Option<u64>) -> bool {
        self.timers(queue, |t| {
            if !matches!(t.items.get(id), Some((_, Place::Taken(at))) if *at == until) {
                return false;
            }
            match again {
                Some(at) => t.place(id, Place::Waiting(at)),
                None => t.remove(id),
            }
            true
        })
    }

    pub(super) fn timer_cancel(&self, queue: &Key, id: &str, now: u64) -> bool {
        self.timers(queue, |t| {
            let cancellable = match t.items.get(id) {
                Some((_, Place::Waiting(_))) => true,
                Some((_, Place::Taken(lapses))) => *lapses <= now,
                None => false,
            };
            if cancellable {
                t.remove(id);
            }
            cancellable
        })
    }
}

impl Map {
    /// The value under `key`, unless it has expired.
    fn live(&mut self, key: &Key) -> Option<&Value> {
        let now = self.clock.now();
        let expired = self.entries.get(key)?.expires.is_some_and(|at| at <= now);
        if expired {
            self.entries.remove(key);
            return None;
        }
        self.entries.get(key).map(|e| &e.value)
    }

    fn set(&mut self, key: &Key, value: Value, ttl: Option<Duration>) {
        self.writes += 1;
        if self.writes >= SWEEP_EVERY {
            self.writes = 0;
            let now = self.clock.now();
            self.entries.retain(|_, e| e.expires.is_none_or(|at| at > now));
        }
        // A TTL too long to represent never expires (no overflow panic).
        let expires = ttl.and_then(|ttl| self.clock.now().checked_add(ttl));
        self.entries.insert(key.clone(), Entry { value, expires });
    }

    /// The latest token granted for the lease `key` (0: never granted).
    fn fence(&mut self, key: &Key) -> u64 {
        match self.live(&fence_key(key)) {
            Some(Value::Fence(token)) => *token,
            _ => 0,
        }
    }

    /// Take lease `key` for `owner` for `ttl`: extended with its token if
    /// `owner` holds it, granted with the next token if free; `None` when
    /// someone else holds it.
    fn take_lease(&mut self, key: &Key, owner: &str, ttl: Duration) -> Option<u64> {
        let token = match self.live(key) {
            Some(Value::Leased { owner: held, token }) if held == owner => *token,
            Some(Value::Leased { .. }) => return None,
            _ => {
                let token = self.fence(key) + 1;
                self.set(&fence_key(key), Value::Fence(token), None);
                token
            }
        };
        self.set(key, Value::Leased { owner: owner.to_owned(), token }, Some(ttl));
        Some(token)
    }

    fn holds(&mut self, lease: &Lease) -> bool {
        matches!(self.live(&lease.key), Some(Value::Leased { owner, token }) if *owner == lease.owner && *token == lease.token)
    }
}

/// Whether a lease owner string names `instance`: `<instance>` or
/// `<instance>#...` (what [`Store::take_over_lease`](super::Store::take_over_lease) matches).
pub(super) fn held_by(owner: &str, instance: &str) -> bool {
    owner.strip_prefix(instance).is_some_and(|rest| rest.is_empty() || rest.starts_with('#'))
}

/// Where a lease's latest token is kept: next to it, in its scope.
pub(super) fn fence_key(lease: &Key) -> Key {
    Key { scope: lease.scope.clone(), name: format!("{}:fence", lease.name) }
}

/// The compare of compare-and-set.
pub(super) fn check(key: &Key, expect: Expect, found: Option<u64>) -> Result<(), StoreError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    };
    if ok { Ok(()) } else { Err(StoreError::Conflict { key: key.stored(), expected: expect, found }) }
}
