//! The store's meaning, checked the same way on every implementation:
//! records with compare-and-set, counters, idempotency claims, leases and
//! fencing tokens, expiry — by one [`contract`] run against the memory store,
//! one `redis-server`, and a Redis Cluster of 3 primaries and 3 replicas.
//! Then what only Redis has: a dead or unreachable server, a killed primary
//! and a manual failover under a steady load (the gaps are printed, not
//! asserted), and idempotent handlers sharing a cluster.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::store::{Beat, Claim, Created, Due, Expect, Key, Sets, Store, StoreError, Takeover, Versioned};
use catga::transport::memory::MemoryBus;
use catga::{Error, Metadata, SendOptions};
use catga_suite::{RedisCluster, RedisServer};

/// Every store must pass this. `tag` keeps runs on one server apart.
pub async fn contract(store: &Store, tag: &str) {
    records(store, tag).await;
    counters(store, tag).await;
    sets(store, tag).await;
    timers(store, tag).await;
    concurrent_takes_have_one_winner(store, tag).await;
    claims(store, tag).await;
    leases(store, tag).await;
    created_under_lease(store, tag).await;
    released_with_the_last_write(store, tag).await;
    takeovers(store, tag).await;
    beats(store, tag).await;
    concurrent_claims_have_one_winner(store, tag).await;
    concurrent_cas_has_one_winner(store, tag).await;
    kinds_replace_each_other(store, tag).await;
}

fn conflict(e: Error) -> StoreError {
    match e {
        Error::Store(e) => e,
        other => panic!("expected a store error, got {other}"),
    }
}

async fn records(store: &Store, tag: &str) {
    let key = Key::new(format!("{tag}-rec"), "state");
    assert_eq!(store.get(&key).await.unwrap(), None);
    let v1 = store.put(&key, Expect::Absent, b"one").await.unwrap();
    assert_eq!(v1, 1);
    let err = conflict(store.put(&key, Expect::Absent, b"again").await.unwrap_err());
    assert!(matches!(err, StoreError::Conflict { found: Some(1), .. }), "{err}");
    assert!(err.to_string().contains("version conflict"), "{err}");
    let err = conflict(store.put(&key, Expect::Version(7), b"stale").await.unwrap_err());
    assert!(matches!(err, StoreError::Conflict { expected: Expect::Version(7), found: Some(1), .. }));
    let v2 = store.put(&key, Expect::Version(v1), b"two").await.unwrap();
    assert_eq!(v2, 2);
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!((got.version, got.value.as_slice()), (2, &b"two"[..]));
    assert_eq!(store.put(&key, Expect::Any, b"three").await.unwrap(), 3);
    // Binary values survive.
    let bytes: Vec<u8> = (0..=255).collect();
    store.put(&key, Expect::Version(3), &bytes).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, bytes);
    // Delete is compare-and-set too.
    assert!(store.delete(&key, Expect::Version(1)).await.is_err());
    assert!(store.delete(&key, Expect::Version(4)).await.unwrap());
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert!(!store.delete(&key, Expect::Any).await.unwrap());
    // A key with braces cannot break the hash tag.
    let odd = Key::new("a{b}c", "n}");
    assert_eq!(odd.stored(), "catga:{a_b_c}:n_");
}

async fn counters(store: &Store, tag: &str) {
    let key = Key::new(format!("{tag}-ctr"), "hits");
    assert_eq!(store.incr(&key, 1).await.unwrap(), 1);
    assert_eq!(store.incr(&key, 5).await.unwrap(), 6);
    assert_eq!(store.incr(&key, -2).await.unwrap(), 4);
}

async fn sets(store: &Store, tag: &str) {
    let key = Key::new(format!("{tag}-set"), "index");
    assert_eq!(store.set_members(&key).await.unwrap(), Vec::<String>::new());
    assert!(store.set_add(&key, "b").await.unwrap());
    assert!(store.set_add(&key, "a").await.unwrap());
    assert!(!store.set_add(&key, "a").await.unwrap(), "already there");
    assert_eq!(store.set_members(&key).await.unwrap(), ["a", "b"]);
    assert!(store.set_remove(&key, "a").await.unwrap());
    assert!(!store.set_remove(&key, "a").await.unwrap());
    assert_eq!(store.set_members(&key).await.unwrap(), ["b"]);
}

async fn timers(store: &Store, tag: &str) {
    let q = Key::new(format!("{tag}-timers"), "q");
    let due = |id: &str, at: u64| Due { id: id.to_owned(), at };
    assert!(store.timers_due(&q, u64::MAX / 4, 0, 10).await.unwrap().is_empty());
    // Scores are epoch milliseconds: exact far past 2^32.
    let t = 1_765_000_000_000;
    assert!(store.timer_put(&q, "b", t + 20, b"item b", false).await.unwrap());
    assert!(store.timer_put(&q, "a", t + 10, b"item a", false).await.unwrap());
    assert!(store.timer_put(&q, "c", t + 30, b"item c", false).await.unwrap());
    assert!(!store.timer_put(&q, "a", t + 99, b"other", false).await.unwrap(), "queued already: unchanged");
    assert_eq!(store.timers_due(&q, t + 5, t, 10).await.unwrap(), []);
    assert_eq!(store.timers_due(&q, t + 20, t, 10).await.unwrap(), [due("a", t + 10), due("b", t + 20)]);
    assert_eq!(store.timers_due(&q, t + 30, t, 1).await.unwrap(), [due("a", t + 10)], "limit, earliest first");
    // Not yet due, or not as listed: not taken.
    assert_eq!(store.timer_take(&q, "a", t + 10, t + 1000, t + 9).await.unwrap(), None);
    assert_eq!(store.timer_take(&q, "a", t + 11, t + 1000, t + 20).await.unwrap(), None);
    assert_eq!(store.timer_take(&q, "a", t + 10, t + 1000, t + 10).await.unwrap().as_deref(), Some(&b"item a"[..]));
    assert_eq!(store.timer_take(&q, "a", t + 10, t + 1000, t + 10).await.unwrap(), None, "taken");
    assert_eq!(store.timers_due(&q, t + 20, t + 20, 10).await.unwrap(), [due("b", t + 20)]);
    assert!(!store.timer_cancel(&q, "a", t + 20).await.unwrap(), "being delivered: not cancelled");
    // The taking lapses: listed again, by when it lapsed; taken by another.
    assert_eq!(store.timers_due(&q, t, t + 1000, 10).await.unwrap(), [due("a", t + 1000)]);
    assert!(store.timer_take(&q, "a", t + 1000, t + 2000, t + 1000).await.unwrap().is_some());
    assert!(!store.timer_end(&q, "a", t + 1000, None).await.unwrap(), "the first taking is over");
    // Due again later; then done.
    assert!(store.timer_end(&q, "a", t + 2000, Some(t + 50)).await.unwrap());
    assert_eq!(store.timers_due(&q, t + 50, t, 10).await.unwrap().last(), Some(&due("a", t + 50)));
    assert!(store.timer_take(&q, "a", t + 50, t + 3000, t + 60).await.unwrap().is_some());
    assert!(store.timer_end(&q, "a", t + 3000, None).await.unwrap());
    assert!(!store.timer_put(&q, "b", t, b"x", false).await.unwrap());
    // Replacing moves it and changes the item.
    assert!(store.timer_put(&q, "b", t + 40, b"item b2", true).await.unwrap());
    assert_eq!(store.timers_due(&q, u64::MAX / 4, t, 10).await.unwrap(), [due("c", t + 30), due("b", t + 40)]);
    assert_eq!(store.timer_take(&q, "b", t + 40, t + 99, t + 40).await.unwrap().as_deref(), Some(&b"item b2"[..]));
    // Cancelling: a waiting item, then nothing of it is left.
    assert!(store.timer_cancel(&q, "c", t).await.unwrap());
    assert!(!store.timer_cancel(&q, "c", t).await.unwrap());
    assert_eq!(store.timer_take(&q, "c", t + 30, t + 99, t + 30).await.unwrap(), None);
    assert!(store.timer_cancel(&q, "b", t + 99).await.unwrap(), "a lapsed taking can be cancelled");
    assert_eq!(store.timers_due(&q, u64::MAX / 4, u64::MAX / 4, 10).await.unwrap(), []);
    assert!(store.timer_put(&q, "a", t, b"again", false).await.unwrap(), "a delivered id can be queued again");
}

async fn concurrent_takes_have_one_winner(store: &Store, tag: &str) {
    let q = Key::new(format!("{tag}-timers-race"), "q");
    store.timer_put(&q, "x", 100, b"x", false).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (store, q) = (store.clone(), q.clone());
            tokio::spawn(async move { store.timer_take(&q, "x", 100, 10_000 + i, 200).await.unwrap().is_some() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap() as usize;
    }
    assert_eq!(won, 1, "exactly one taker of a due item");
}

async fn claims(store: &Store, tag: &str) {
    let key = Key::new(format!("{tag}-idem"), "msg");
    let ttl = Duration::from_secs(30);
    assert_eq!(store.claim(&key, "a", ttl).await.unwrap(), Claim::Won { fence: 1 });
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Running { owner: "a".into() });
    // Only the owner completes or releases.
    assert!(!store.complete(&key, "b", b"x", ttl).await.unwrap());
    assert!(!store.release(&key, "b").await.unwrap());
    assert!(store.complete(&key, "a", b"reply", ttl).await.unwrap());
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Done(b"reply".to_vec()));
    assert!(!store.release(&key, "a").await.unwrap(), "a completed claim is not released");

    // The owner claiming again (a retry whose first answer was lost) wins again.
    let key = Key::new(format!("{tag}-idem"), "retried");
    assert_eq!(store.claim(&key, "a", ttl).await.unwrap(), Claim::Won { fence: 1 });
    assert_eq!(store.claim(&key, "a", ttl).await.unwrap(), Claim::Won { fence: 1 });
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Running { owner: "a".into() });

    // A released claim can be won again.
    let key = Key::new(format!("{tag}-idem"), "failed");
    assert_eq!(store.claim(&key, "a", ttl).await.unwrap(), Claim::Won { fence: 1 });
    assert!(store.release(&key, "a").await.unwrap());
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Won { fence: 1 });

    // A claim whose owner died lapses; the late owner cannot complete it.
    let key = Key::new(format!("{tag}-idem"), "lapsed");
    assert_eq!(store.claim(&key, "a", Duration::from_millis(50)).await.unwrap(), Claim::Won { fence: 1 });
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Won { fence: 1 });
    assert!(!store.complete(&key, "a", b"late", ttl).await.unwrap());

    // A recorded result expires after its TTL.
    let key = Key::new(format!("{tag}-idem"), "expires");
    assert_eq!(store.claim(&key, "a", ttl).await.unwrap(), Claim::Won { fence: 1 });
    assert!(store.complete(&key, "a", b"r", Duration::from_millis(50)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Won { fence: 1 });
}

async fn leases(store: &Store, tag: &str) {
    let scope = format!("{tag}-saga");
    let lease_key = Key::new(&scope, "lease");
    let record = Key::new(&scope, "state");
    let v1 = store.put(&record, Expect::Absent, b"s0").await.unwrap();

    let a = store.acquire_lease(&lease_key, "a", Duration::from_millis(100)).await.unwrap().unwrap();
    assert!(store.acquire_lease(&lease_key, "b", Duration::from_secs(5)).await.unwrap().is_none(), "held by a");
    // Re-acquiring your own lease extends it and keeps the token.
    let again = store.acquire_lease(&lease_key, "a", Duration::from_millis(100)).await.unwrap().unwrap();
    assert_eq!(again.token, a.token);
    assert!(store.renew_lease(&a, Duration::from_millis(100)).await.unwrap());
    let v2 = store.put_fenced(&record, Expect::Version(v1), b"s1 by a", &a).await.unwrap();

    // a stalls past its lease; b takes over with a larger token.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!store.renew_lease(&a, Duration::from_secs(5)).await.unwrap(), "a's lease expired");
    let b = store.acquire_lease(&lease_key, "b", Duration::from_secs(5)).await.unwrap().unwrap();
    assert!(b.token > a.token, "tokens grow: {} then {}", a.token, b.token);
    // a's write, even with the right version, is refused: it was fenced.
    let err = conflict(store.put_fenced(&record, Expect::Version(v2), b"s2 by a", &a).await.unwrap_err());
    assert!(
        matches!(err, StoreError::Fenced { token, current, .. } if token == a.token && current == b.token),
        "{err}"
    );
    assert!(!store.release_lease(&a).await.unwrap(), "a no longer holds it");
    store.put_fenced(&record, Expect::Version(v2), b"s2 by b", &b).await.unwrap();
    assert_eq!(store.get(&record).await.unwrap().unwrap().value, b"s2 by b");

    // Released: anyone may take it, with a new token.
    assert!(store.release_lease(&b).await.unwrap());
    let c = store.acquire_lease(&lease_key, "c", Duration::from_secs(5)).await.unwrap().unwrap();
    assert!(c.token > b.token);
    // A lease fences only records in its own scope.
    let elsewhere = Key::new(format!("{tag}-other"), "state");
    let err = conflict(store.put_fenced(&elsewhere, Expect::Any, b"x", &c).await.unwrap_err());
    assert!(matches!(err, StoreError::ScopeMismatch { .. }), "{err}");
}

/// A record created under a lease in one step: refused while someone else
/// holds the lease, never over an existing record.
async fn created_under_lease(store: &Store, tag: &str) {
    let scope = format!("{tag}-created");
    let (record, lease_key) = (Key::new(&scope, "state"), Key::new(&scope, "lease"));
    let ttl = Duration::from_secs(5);
    // Someone else holds the lease: nothing written.
    let other = store.acquire_lease(&lease_key, "b", ttl).await.unwrap().unwrap();
    // The indexes first, whatever comes next (on a Cluster in other slots).
    let (active, mine) = (Key::new(format!("{tag}-index"), "active"), Key::new(format!("{tag}-owner"), "mine"));
    let indexes = [(&active, "r1"), (&mine, "saga:r1")];
    let created = store.create_leased(&record, b"s0", &lease_key, "a", ttl, &indexes).await.unwrap();
    assert_eq!(created, Created::Held);
    assert!(store.get(&record).await.unwrap().is_none(), "nothing written while held");
    assert_eq!(store.set_members(&active).await.unwrap(), ["r1"], "indexed all the same");
    assert_eq!(store.set_members(&mine).await.unwrap(), ["saga:r1"]);
    assert!(store.release_lease(&other).await.unwrap());
    // Free: the lease (the next token) and the record at version 1.
    let Created::Written(a) = store.create_leased(&record, b"s0", &lease_key, "a", ttl, &indexes).await.unwrap() else {
        panic!("created")
    };
    assert_eq!(store.set_members(&active).await.unwrap(), ["r1"], "once");
    assert!(a.token > other.token, "the next grant: {} then {}", other.token, a.token);
    assert_eq!(store.get(&record).await.unwrap().unwrap(), Versioned { version: 1, value: b"s0".to_vec() });
    // It fences the record's next writes like any lease.
    let v2 = store.put_fenced(&record, Expect::Version(1), b"s1", &a).await.unwrap();
    assert_eq!(v2, 2);
    // Exists: refused, whoever asks, the record and the lease untouched.
    for owner in ["a", "b"] {
        let created = store.create_leased(&record, b"again", &lease_key, owner, ttl, &[]).await.unwrap();
        assert_eq!(created, Created::Exists, "{owner}");
    }
    assert_eq!(store.get(&record).await.unwrap().unwrap().value, b"s1");
    assert!(store.renew_lease(&a, ttl).await.unwrap(), "a still holds it");
    // A record and a lease in two scopes are refused.
    let elsewhere = Key::new(format!("{tag}-created-other"), "state");
    let err = conflict(store.create_leased(&elsewhere, b"x", &lease_key, "a", ttl, &[]).await.unwrap_err());
    assert!(matches!(err, StoreError::ScopeMismatch { .. }), "{err}");
    // Creating again after the record is gone, by the holder: its own lease, kept.
    assert!(store.delete(&record, Expect::Any).await.unwrap());
    let Created::Written(again) = store.create_leased(&record, b"s0", &lease_key, "a", ttl, &[]).await.unwrap() else {
        panic!("created again by the holder")
    };
    assert_eq!(again.token, a.token, "its own lease keeps its token");
}

/// The last write under a lease: written, then the record's sets changed
/// and the lease released; a refused write changes nothing else.
async fn released_with_the_last_write(store: &Store, tag: &str) {
    let scope = format!("{tag}-last");
    let (record, lease_key) = (Key::new(&scope, "state"), Key::new(&scope, "lease"));
    let (active, failed) = (Key::new(format!("{tag}-sets"), "active"), Key::new(format!("{tag}-sets"), "failed"));
    let owned = Key::new(format!("{tag}-owner-sets"), "mine");
    let ttl = Duration::from_secs(30);
    store.set_add(&active, "r1").await.unwrap();
    store.set_add(&owned, "saga:r1").await.unwrap();
    let stale = store.acquire_lease(&lease_key, "a", ttl).await.unwrap().unwrap();
    assert!(store.release_lease(&stale).await.unwrap());
    let held = store.acquire_lease(&lease_key, "b", ttl).await.unwrap().unwrap();
    let sets = Sets { entering: &[(&failed, "r1")], leaving: &[(&active, "r1"), (&owned, "saga:r1")] };
    // A superseded holder's last write is fenced: nothing else changes.
    let err = conflict(store.put_fenced_and_release(&record, Expect::Any, b"end", &stale, sets).await.unwrap_err());
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    // So is one that expects another version.
    let err =
        conflict(store.put_fenced_and_release(&record, Expect::Version(7), b"end", &held, sets).await.unwrap_err());
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(store.set_members(&active).await.unwrap(), ["r1"], "still in its sets");
    assert!(store.set_members(&failed).await.unwrap().is_empty());
    assert!(store.renew_lease(&held, ttl).await.unwrap(), "still held");
    // The holder's: written, moved between its sets, the lease given up.
    assert_eq!(store.put_fenced_and_release(&record, Expect::Absent, b"end", &held, sets).await.unwrap(), 1);
    assert_eq!(store.get(&record).await.unwrap().unwrap().value, b"end");
    assert_eq!(store.set_members(&failed).await.unwrap(), ["r1"]);
    assert!(store.set_members(&active).await.unwrap().is_empty());
    assert!(store.set_members(&owned).await.unwrap().is_empty());
    assert!(!store.renew_lease(&held, ttl).await.unwrap(), "released");
    let next = store.acquire_lease(&lease_key, "c", ttl).await.unwrap().unwrap();
    assert!(next.token > held.token, "the next grant: {} then {}", held.token, next.token);
}

/// Taking over what an instance judged dead held: a claim of exactly that
/// owner, a lease of that instance (or a free one) — compare-and-swap, so
/// a live holder keeps what it holds.
async fn takeovers(store: &Store, tag: &str) {
    let ttl = Duration::from_secs(30);
    let key = Key::new(format!("{tag}-idem"), "taken");
    assert_eq!(store.claim(&key, "a#1", ttl).await.unwrap(), Claim::Won { fence: 1 });
    // Only from exactly the owner judged dead.
    assert_eq!(store.take_over_claim(&key, "x#1", "b#1", ttl).await.unwrap(), Claim::Running { owner: "a#1".into() });
    // The takeover is the next grant: its fencing token is one more.
    assert_eq!(store.take_over_claim(&key, "a#1", "b#1", ttl).await.unwrap(), Claim::Won { fence: 2 });
    assert_eq!(store.take_over_claim(&key, "a#1", "b#1", ttl).await.unwrap(), Claim::Won { fence: 2 }, "re-entrant");
    assert_eq!(store.claim(&key, "b#1", ttl).await.unwrap(), Claim::Won { fence: 2 }, "claiming again keeps it");
    assert_eq!(store.take_over_claim(&key, "a#1", "c#1", ttl).await.unwrap(), Claim::Running { owner: "b#1".into() });
    // The old owner (a frozen instance, resuming) can neither renew nor complete.
    assert!(!store.renew_claim(&key, "a#1", ttl).await.unwrap());
    assert!(!store.complete(&key, "a#1", b"late", ttl).await.unwrap());
    assert!(store.renew_claim(&key, "b#1", ttl).await.unwrap());
    assert!(store.complete(&key, "b#1", b"reply", ttl).await.unwrap());
    assert_eq!(store.take_over_claim(&key, "b#1", "c#1", ttl).await.unwrap(), Claim::Done(b"reply".to_vec()));
    // A renewal never brings a released claim back.
    let key = Key::new(format!("{tag}-idem"), "renewed");
    assert!(!store.renew_claim(&key, "a#1", ttl).await.unwrap());
    assert_eq!(store.claim(&key, "b#1", ttl).await.unwrap(), Claim::Won { fence: 1 });

    let scope = format!("{tag}-taken-saga");
    let (lease_key, record) = (Key::new(&scope, "lease"), Key::new(&scope, "state"));
    let v1 = store.put(&record, Expect::Absent, b"s0").await.unwrap();
    let a = store.acquire_lease(&lease_key, "inst-a#9", ttl).await.unwrap().unwrap();
    // Held by a live instance other than the one named: refused, holder told.
    let held = store.take_over_lease(&lease_key, "inst", "inst-b#1", ttl).await.unwrap();
    assert_eq!(held, Takeover::Held { owner: "inst-a#9".into() }, "a prefix of the id is another instance");
    let Takeover::Taken(b) = store.take_over_lease(&lease_key, "inst-a", "inst-b#1", ttl).await.unwrap() else {
        panic!("inst-a's lease is taken over")
    };
    assert!(b.token > a.token);
    let err = conflict(store.put_fenced(&record, Expect::Version(v1), b"by a", &a).await.unwrap_err());
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    store.put_fenced(&record, Expect::Version(v1), b"by b", &b).await.unwrap();
    // An empty `from` takes only a free lease.
    let held = store.take_over_lease(&lease_key, "", "inst-c#1", ttl).await.unwrap();
    assert_eq!(held, Takeover::Held { owner: "inst-b#1".into() });
    assert!(store.release_lease(&b).await.unwrap());
    let Takeover::Taken(c) = store.take_over_lease(&lease_key, "", "inst-c#1", ttl).await.unwrap() else {
        panic!("a free lease is taken")
    };
    assert!(c.token > b.token);
}

/// Heartbeats: written by their owner, read by judges, expiring.
async fn beats(store: &Store, tag: &str) {
    let key = Key::new(format!("{tag}-live"), "beat");
    assert_eq!(store.read_beat(&key).await.unwrap(), None);
    store.beat(&key, Beat { count: 7, gone: false }, Duration::from_secs(30)).await.unwrap();
    assert_eq!(store.read_beat(&key).await.unwrap(), Some(Beat { count: 7, gone: false }));
    store.beat(&key, Beat { count: u64::MAX, gone: true }, Duration::from_millis(50)).await.unwrap();
    assert_eq!(store.read_beat(&key).await.unwrap(), Some(Beat { count: u64::MAX, gone: true }));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.read_beat(&key).await.unwrap(), None, "expired");
}

/// A key holds one kind of value; a write of another kind replaces it (and
/// its expiry), a read of another kind finds nothing.
async fn kinds_replace_each_other(store: &Store, tag: &str) {
    let key = Key::new(format!("{tag}-kinds"), "k");
    assert_eq!(store.incr(&key, 5).await.unwrap(), 5);
    assert_eq!(store.get(&key).await.unwrap(), None, "a counter is not a record");
    assert_eq!(store.put(&key, Expect::Absent, b"r").await.unwrap(), 1);
    assert_eq!(store.incr(&key, 2).await.unwrap(), 2, "a record is not a counter");
    assert_eq!(store.claim(&key, "a", Duration::from_millis(50)).await.unwrap(), Claim::Won { fence: 1 });
    assert_eq!(store.put(&key, Expect::Absent, b"r").await.unwrap(), 1, "a claim is not a record");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"r", "the claim's expiry went with it");
    assert_eq!(store.incr(&key, i64::MAX).await.unwrap(), i64::MAX);
    assert_eq!(store.incr(&key, 1).await.unwrap(), i64::MAX, "counters saturate");
    assert_eq!(store.incr(&key, i64::MIN).await.unwrap(), -1);
}

async fn concurrent_claims_have_one_winner(store: &Store, tag: &str) {
    let key = Key::new(format!("{tag}-race"), "msg");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.claim(&key, &format!("o{i}"), Duration::from_secs(30)).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Claim::Won { .. }) {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one concurrent claim wins");
}

async fn concurrent_cas_has_one_winner(store: &Store, tag: &str) {
    let key = Key::new(format!("{tag}-race"), "rec");
    let v = store.put(&key, Expect::Absent, b"0").await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.put(&key, Expect::Version(v), format!("{i}").as_bytes()).await.is_ok() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap() as usize;
    }
    assert_eq!(won, 1, "exactly one writer of version {v} wins");
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(&Store::memory(), "mem").await;
}

// ---------- Redis: one server ----------

/// `Error::Store(Unavailable)`'s parts, or a panic naming what came instead.
fn unavailable(e: Error) -> (String, String) {
    match e {
        Error::Store(StoreError::Unavailable { op, key, reason }) => (format!("{op} on {key}"), reason),
        other => panic!("expected an Unavailable store error, got {other}"),
    }
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let server = RedisServer::start();
    let store = Store::connect(&server.url()).await.unwrap();
    assert_eq!(store.name(), "redis");
    contract(&store, "redis").await;
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_a_clear_error() {
    // Port 1: privileged and outside the ephemeral range, so nothing listens
    // there and no connection can land on itself (a just-freed ephemeral port
    // can be taken by another test's server in between).
    let url = "redis://127.0.0.1:1".to_owned();
    let started = Instant::now();
    let err = Store::connect(&url).await.unwrap_err();
    println!("connect to a closed port failed after {:?}: {err}", started.elapsed());
    let (what, reason) = unavailable(err);
    assert_eq!(what, format!("connect on {url}"));
    assert!(reason.contains("check that redis-server runs"), "{reason}");

    // A malformed URL is a configuration error naming it, without its password.
    let err = Store::connect("http://:secret@127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("http://:***@127.0.0.1:1") && !err.to_string().contains("secret"), "{err}");

    // An instance with an unreachable Redis does not start.
    let err = catga::Catga::builder().client_only().redis_url(&url).start().await.unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test]
async fn a_dead_server_is_an_unavailable_error_and_a_restarted_one_is_used_again() {
    let mut server = RedisServer::start();
    let store = Store::connect(&server.url()).await.unwrap();
    let key = Key::new("dead", "rec");
    store.put(&key, Expect::Absent, b"before").await.unwrap();

    // A server that stops answering (SIGSTOP: the connection stays open)
    // is an error after the response timeout, not a hang.
    catga_suite::signal(server.pid(), "STOP");
    let started = Instant::now();
    let (what, reason) = unavailable(store.get(&key).await.unwrap_err());
    println!("get on a stopped server failed after {:?}: {what}: {reason}", started.elapsed());
    catga_suite::signal(server.pid(), "CONT");
    wait_for_store(&store, &key).await;

    server.kill();
    for op in ["get", "put", "claim"] {
        let started = Instant::now();
        let result = match op {
            "get" => store.get(&key).await.map(drop),
            "put" => store.put(&key, Expect::Any, b"x").await.map(drop),
            _ => store.claim(&key, "a", Duration::from_secs(5)).await.map(drop),
        };
        let (what, reason) = unavailable(result.unwrap_err());
        println!("{op} on a dead server failed after {:?}: {what}: {reason}", started.elapsed());
        assert_eq!(what, format!("{op} on {key}"));
        assert!(reason.contains(&server.url()), "the error names the server: {reason}");
    }

    // The connection manager reconnects once the server is back (empty: no persistence).
    server.restart();
    let found = wait_for_store(&store, &key).await;
    assert_eq!(found, None, "a restarted server without persistence is empty");
    store.put(&key, Expect::Absent, b"after").await.unwrap();
}

/// Read `key` until the store answers (20 s at most); what it read.
async fn wait_for_store(store: &Store, key: &Key) -> Option<catga::store::Versioned> {
    let started = Instant::now();
    loop {
        match store.get(key).await {
            Ok(found) => {
                println!("the store answers again after {:?}", started.elapsed());
                return found;
            }
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                println!("no answer yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not answer again within 20 s: {e}"),
        }
    }
}

// ---------- Redis Cluster: 3 primaries, 3 replicas ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_keeps_the_contract_and_rides_through_a_manual_failover() {
    let cluster = RedisCluster::start();
    let store = Store::connect(&cluster.url()).await.unwrap();
    contract(&store, "cluster").await;

    // Everything of one scope is in one slot: the record, the lease and its fence.
    let lease = Key::new("cluster-saga", "lease");
    let slot = cluster.slot_of(&lease.stored());
    for name in ["lease:fence", "state", "idem:x"] {
        assert_eq!(cluster.slot_of(&Key::new("cluster-saga", name).stored()), slot, "{name}");
    }

    // A coordinated failover under load: the replica takes over the slot.
    let scope = "steady-manual";
    let primary = cluster.primary_for_slot(cluster.slot_of(&Key::new(scope, "rec").stored()));
    let replica = cluster.replica_of(primary);
    let seen = steady_loop(&store, scope, move || {
        cluster.failover(replica);
        cluster // keep it running until the loop ends
    })
    .await;
    println!("manual CLUSTER FAILOVER of node {primary} to node {replica}: {seen}");
    seen.assert_resumed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_resumes_after_a_primary_is_killed() {
    let cluster = RedisCluster::start();
    let store = Store::connect(&cluster.url()).await.unwrap();
    let scope = "steady-kill";
    let primary = cluster.primary_for_slot(cluster.slot_of(&Key::new(scope, "rec").stored()));
    let replica = cluster.replica_of(primary);
    let pid = cluster.pid(primary).unwrap();
    let mut cluster = cluster;
    // Its replica takes over; 3 s later the killed node is started again
    // (as its supervisor would) and rejoins as the new primary's replica.
    // Until then the shard has no replica to confirm writes, and the store
    // refuses them rather than acknowledge writes held by one node only.
    let seen = steady_loop(&store, scope, move || {
        cluster.kill(primary);
        std::thread::sleep(Duration::from_secs(3));
        cluster.restart(primary);
        cluster // keep the rest running until the loop ends
    })
    .await;
    println!("kill -9 of primary node {primary} (pid {pid}; replica node {replica}), restarted after 3 s: {seen}");
    seen.assert_resumed();
}

/// What a steady loop of claims and compare-and-set writes saw around a
/// disruption.
struct Steady {
    /// Iterations (one claim and one put each) that succeeded.
    ok: usize,
    /// Iterations that failed (store unavailable).
    errors: usize,
    /// Compare-and-set conflicts: a retried write, or writes lost with the
    /// old primary (Redis replicates asynchronously).
    conflicts: usize,
    first_error: Option<String>,
    /// From the start of the disruption to the first success after it took
    /// effect: after the first failure, or else after the disruption
    /// finished (`None`: no success after it).
    resumed_after: Option<Duration>,
    /// The longest time without a success, from the disruption on.
    gap: Duration,
    /// Acknowledged versions of the record that were gone afterwards.
    lost_versions: u64,
    /// How long the disruption itself took (the kill, or the failover call
    /// and its wait for the promotion).
    disruption: Duration,
}

impl fmt::Display for Steady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok, {} failed, {} conflicts; resumed {:?} after the disruption began; longest gap without a \
             success {:?}; \
             {} acknowledged versions lost; disruption took {:?}; first error: {}",
            self.ok,
            self.errors,
            self.conflicts,
            self.resumed_after,
            self.gap,
            self.lost_versions,
            self.disruption,
            self.first_error.as_deref().unwrap_or("none")
        )
    }
}

impl Steady {
    fn assert_resumed(&self) {
        let resumed = self.resumed_after.unwrap_or_else(|| panic!("operations never resumed: {self}"));
        // Only catches a hang: the figures above are the measurement.
        assert!(resumed < Duration::from_secs(15), "resumed only after {resumed:?}: {self}");
    }
}

/// Claims and compare-and-set writes in `scope`, one after another; after
/// 300 iterations `disrupt` runs (on a blocking thread); the loop goes on
/// until 3000 iterations or 20 s after the disruption, whichever is first.
async fn steady_loop<T: Send + 'static>(
    store: &Store,
    scope: &str,
    disrupt: impl FnOnce() -> T + Send + 'static,
) -> Steady {
    let rec = Key::new(scope, "rec");
    let mut version = store.put(&rec, Expect::Absent, b"0").await.unwrap();
    let mut acked = version;
    let mut seen = Steady {
        ok: 0,
        errors: 0,
        conflicts: 0,
        first_error: None,
        resumed_after: None,
        gap: Duration::ZERO,
        lost_versions: 0,
        disruption: Duration::ZERO,
    };
    let mut disrupt = Some(disrupt);
    let mut errors_before = 0;
    let mut disruption: Option<(Instant, tokio::task::JoinHandle<(T, Duration)>)> = None;
    let mut last_ok = Instant::now();
    let hard_stop = Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        if let Some(disrupt) = disrupt.take_if(|_| i == 300) {
            let began = Instant::now();
            let handle = tokio::task::spawn_blocking(move || {
                let kept = disrupt();
                (kept, began.elapsed())
            });
            disruption = Some((began, handle));
            errors_before = seen.errors;
            last_ok = began;
        }
        if let Some((began, _)) = &disruption
            && (i >= 3000 || began.elapsed() > Duration::from_secs(20))
        {
            break;
        }
        assert!(Instant::now() < hard_stop, "the loop ran past 60 s: {seen}");
        let claim = store.claim(&Key::new(scope, format!("claim-{i}")), "loop", Duration::from_secs(60)).await;
        let put = match claim {
            Ok(Claim::Won { .. }) => store.put(&rec, Expect::Version(version), format!("{i}").as_bytes()).await,
            Ok(other) => panic!("a fresh claim key was {other:?}"),
            Err(e) => Err(e),
        };
        match put {
            Ok(v) => {
                version = v;
                acked = acked.max(v);
                seen.ok += 1;
                if let Some((began, handle)) = &disruption {
                    if seen.errors > errors_before || handle.is_finished() {
                        seen.resumed_after.get_or_insert(began.elapsed());
                    }
                    seen.gap = seen.gap.max(last_ok.elapsed());
                }
                last_ok = Instant::now();
            }
            Err(Error::Store(StoreError::Conflict { found, .. })) => {
                seen.conflicts += 1;
                version = found.unwrap_or(0);
            }
            Err(e) => {
                seen.errors += 1;
                seen.first_error.get_or_insert_with(|| e.to_string());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    if let Some((_, handle)) = disruption {
        let (_kept, took) = handle.await.expect("the disruption panicked");
        seen.disruption = took;
    }
    if let Ok(Some(now)) = store.get(&rec).await {
        seen.lost_versions = acked.saturating_sub(now.version);
    }
    seen
}

// ---------- idempotency on the cluster ----------

static CLUSTER_CHARGES: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.store.cluster.charge", reply = String)]
struct ClusterCharge {
    cents: u64,
}

#[catga::command(idempotent)]
async fn cluster_charge(cmd: ClusterCharge, ctx: Context) -> Result<String, HandlerError> {
    let n = CLUSTER_CHARGES.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok(format!("charged {} by {} (run {n})", cmd.cents, ctx.instance_id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_handler_runs_once_for_a_hundred_copies_across_instances_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let bus = MemoryBus::new();
    let mut apps = Vec::new();
    for i in 0..3 {
        let app = Catga::builder()
            .service("store-idem")
            .instance_id(format!("store-idem-{i}"))
            .memory_bus(bus.clone())
            .redis_url(cluster.url())
            .handlers_where(|h| h.subject == "t.store.cluster.charge")
            .start()
            .await
            .unwrap();
        assert_eq!(app.store().name(), "redis");
        apps.push(app);
    }
    let meta = Metadata::root();
    let sends = (0..100).map(|i| {
        let app = apps[i % 3].clone();
        let meta = meta.clone();
        tokio::spawn(async move { app.send_as(ClusterCharge { cents: 700 }, meta, SendOptions::default()).await })
    });
    let mut replies = Vec::new();
    for s in sends {
        replies.push(s.await.unwrap().unwrap());
    }
    assert_eq!(CLUSTER_CHARGES.load(Ordering::SeqCst), 1, "the handler ran once");
    assert!(replies.iter().all(|r| *r == replies[0]), "every copy got the first reply: {replies:?}");
    // A later copy is answered from the record; a new message id runs again.
    let late = apps[2].send_as(ClusterCharge { cents: 700 }, meta.clone(), SendOptions::default()).await.unwrap();
    assert_eq!(late, replies[0]);
    apps[0].send(ClusterCharge { cents: 700 }).await.unwrap();
    assert_eq!(CLUSTER_CHARGES.load(Ordering::SeqCst), 2);
    for app in apps {
        app.shutdown().await;
    }
}

// ---------- an idempotent command load through a failover ----------

/// Runs of the handler per message id (in this process: the instances share it).
static PAY_RUNS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.store.failover.pay", reply = u64)]
struct Pay {
    n: u64,
}

#[catga::command(idempotent, timeout = "2s")]
async fn pay(cmd: Pay, ctx: Context) -> Result<u64, HandlerError> {
    PAY_RUNS.lock().unwrap().push(ctx.message_id().to_string());
    Ok(cmd.n)
}

/// 300 commands, each sent as two copies (a retry), on 3 instances; `disrupt`
/// runs in the background after the first 100. A send that fails (the store
/// is failing over) is sent again with the same id, bounded in count and
/// time. Every command must end answered, its handler run once.
async fn pay_through(tag: &str, url: &str, disrupt: impl FnOnce() + Send + 'static) {
    let bus = MemoryBus::new();
    let mut apps = Vec::new();
    for i in 0..3 {
        apps.push(
            Catga::builder()
                .service("store-pay")
                .instance_id(format!("store-pay-{}-{i}", tag.replace(|c: char| !c.is_ascii_alphanumeric(), "-")))
                .memory_bus(bus.clone())
                .redis_url(url)
                .handlers_where(|h| h.subject == "t.store.failover.pay")
                .start()
                .await
                .unwrap(),
        );
    }
    let mut disrupt = Some(disrupt);
    let mut disruption = None;
    let (mut failed_sends, mut longest, mut last_ok) = (0, Duration::ZERO, Instant::now());
    let mut ids = Vec::new();
    let hard_stop = Instant::now() + Duration::from_secs(60);
    for n in 0..300u64 {
        if n == 100
            && let Some(disrupt) = disrupt.take()
        {
            disruption = Some(tokio::task::spawn_blocking(disrupt));
            last_ok = Instant::now();
        }
        let meta = Metadata::root();
        ids.push(meta.message_id.to_string());
        for copy in 0..2 {
            loop {
                assert!(Instant::now() < hard_stop, "{tag}: the load ran past 60 s");
                let app = &apps[(n as usize + copy) % 3];
                match app.send_as(Pay { n }, meta.clone(), SendOptions::timeout(Duration::from_secs(5))).await {
                    Ok(reply) => {
                        assert_eq!(reply, n);
                        longest = longest.max(last_ok.elapsed());
                        last_ok = Instant::now();
                        break;
                    }
                    Err(_) => {
                        failed_sends += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    if let Some(d) = disruption {
        d.await.unwrap();
    }
    let runs = PAY_RUNS.lock().unwrap().clone();
    let twice: Vec<_> = ids.iter().filter(|id| runs.iter().filter(|r| r == id).count() > 1).collect();
    println!(
        "{tag}: 300 idempotent commands × 2 copies answered; {failed_sends} sends retried by the caller; longest gap \
         between answers {longest:?}; handlers run twice: {}",
        twice.len()
    );
    assert!(twice.is_empty(), "{tag}: handlers ran twice for {twice:?}");
    for id in &ids {
        assert!(runs.contains(id), "{tag}: {id} never ran");
    }
    for app in apps {
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_command_load_rides_through_a_primary_kill_and_a_manual_failover_running_each_once() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let primary = cluster.primary_for_slot(0);
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    // Kill -9 a primary; its supervisor restarts it 3 s later (it rejoins
    // as the replica of its successor).
    let c = cluster.clone();
    pay_through("kill -9 of a primary", &url, move || {
        c.lock().unwrap().kill(primary);
        std::thread::sleep(Duration::from_secs(3));
        c.lock().unwrap().restart(primary);
    })
    .await;
    cluster.lock().unwrap().wait_until_healthy(Duration::from_secs(30));
    // Hand the slots back with a manual failover of the restarted node.
    let c = cluster.clone();
    pay_through("manual CLUSTER FAILOVER", &url, move || c.lock().unwrap().failover(primary)).await;
}
