//! The store's meaning, checked the same way on every implementation:
//! records with compare-and-set, counters, idempotency claims, leases and
//! fencing tokens, expiry.

use std::time::Duration;

use catga::Error;
use catga::store::{Claim, Expect, Key, Store, StoreError};

/// Every store must pass this. `tag` keeps runs on one server apart.
pub async fn contract(store: &Store, tag: &str) {
    records(store, tag).await;
    counters(store, tag).await;
    sets(store, tag).await;
    claims(store, tag).await;
    leases(store, tag).await;
    concurrent_claims_have_one_winner(store, tag).await;
    concurrent_cas_has_one_winner(store, tag).await;
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

async fn claims(store: &Store, tag: &str) {
    let key = Key::new(format!("{tag}-idem"), "msg");
    let ttl = Duration::from_secs(30);
    assert_eq!(store.claim(&key, "a", ttl).await.unwrap(), Claim::Won);
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Running { owner: "a".into() });
    // Only the owner completes or releases.
    assert!(!store.complete(&key, "b", b"x", ttl).await.unwrap());
    assert!(!store.release(&key, "b").await.unwrap());
    assert!(store.complete(&key, "a", b"reply", ttl).await.unwrap());
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Done(b"reply".to_vec()));
    assert!(!store.release(&key, "a").await.unwrap(), "a completed claim is not released");

    // A released claim can be won again.
    let key = Key::new(format!("{tag}-idem"), "failed");
    assert_eq!(store.claim(&key, "a", ttl).await.unwrap(), Claim::Won);
    assert!(store.release(&key, "a").await.unwrap());
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Won);

    // A claim whose owner died lapses; the late owner cannot complete it.
    let key = Key::new(format!("{tag}-idem"), "lapsed");
    assert_eq!(store.claim(&key, "a", Duration::from_millis(50)).await.unwrap(), Claim::Won);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Won);
    assert!(!store.complete(&key, "a", b"late", ttl).await.unwrap());

    // A recorded result expires after its TTL.
    let key = Key::new(format!("{tag}-idem"), "expires");
    assert_eq!(store.claim(&key, "a", ttl).await.unwrap(), Claim::Won);
    assert!(store.complete(&key, "a", b"r", Duration::from_millis(50)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.claim(&key, "b", ttl).await.unwrap(), Claim::Won);
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
        if t.await.unwrap() == Claim::Won {
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
