//! Where a saga lives in the store, and the operations on it that are not
//! running it: creating it, reading its status, listing.
//!
//! Layout (every key in the saga's own scope, so one Cluster slot):
//! - `catga:{saga:<name>:<id>}:state` — the [`State`] as JSON, versioned;
//! - `catga:{saga:<name>:<id>}:lease` — the lease of the instance running it;
//! - `catga:{saga-owner:<instance id>}:sagas` — a set of the sagas
//!   (`<name>:<id>`) an instance runs: added before it takes the lease,
//!   removed when the saga finishes (or another instance takes it over).
//!   When the instance is judged dead by its heartbeat
//!   ([`crate::liveness`]) the survivors read this set and take its sagas
//!   over; nobody reads every saga to find them;
//! - `catga:{saga-index:<name>}:active` — a set of the ids that may still
//!   need running (for [`App::sagas`], and a slow last-resort sweep every
//!   lease TTL for sagas no owner's set accounts for);
//! - `catga:{saga-index:<name>}:failed` — a set of the ids that ended
//!   `Failed` (kept for an operator);
//! - `catga:{saga-names}:all` — the names of every saga type an instance
//!   has linked (added once per start), so an operator's tool can list
//!   sagas without linking their types.

use serde::Serialize;

use crate::app::App;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::liveness::sagas_owned_key;
use crate::saga::definition::sagas;
use crate::saga::status::{SagaInfo, SagaStatus, State, from_epoch_ms};
use crate::store::{Created, Expect, Key, Lease, StoreError};
use std::time::Duration;

pub(crate) fn state_key(saga: &str, id: &str) -> (Key, Key) {
    let scope = format!("saga:{saga}:{id}");
    (Key::new(&scope, "state"), Key::new(scope, "lease"))
}

/// The sagas that may still need running (swept by every instance).
pub(crate) fn index_key(saga: &str) -> Key {
    Key::new(format!("saga-index:{saga}"), "active")
}

/// The sagas parked at a waiting step: no instance holds them; their wake
/// timer (an event's arrival, or their time) brings them back.
pub(crate) fn parked_key(saga: &str) -> Key {
    Key::new(format!("saga-index:{saga}"), "parked")
}

/// How many wake-timer queues each saga type has (spread over a Redis
/// Cluster's slots).
pub(crate) const WAKE_QUEUES: u64 = 8;

/// The wake-timer queue of saga `id` of type `saga`: read by the timer
/// sweep of every instance that runs the type.
pub(crate) fn wake_queue(saga: &str, id: &str) -> Key {
    wake_queue_n(saga, crate::hash::stable_hash(&[id]) % WAKE_QUEUES)
}

pub(crate) fn wake_queue_n(saga: &str, n: u64) -> Key {
    Key::new(format!("saga-wake:{saga}:{n}"), "q")
}

/// Where the event a waiting step of saga `id` waits for is recorded (in the
/// saga's own scope): the first one that arrived, as its codec wrote it.
pub(crate) fn event_key(saga: &str, id: &str, step: &str) -> Key {
    Key::new(format!("saga:{saga}:{id}"), format!("event:{step}"))
}

/// Record `event` (as its codec wrote it) for waiting step `step` of saga
/// `id` of type `saga`, and wake the saga: what the handler `#[saga]`
/// generates for a waiting step does with each event. Only for a saga that
/// exists and has not finished; the first event recorded for a step is the
/// one it gets.
pub(crate) async fn record_event(app: &App, saga: &'static str, step: &str, id: &str, event: &[u8]) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Status {
        status: SagaStatus,
    }
    let store = app.store();
    let (state_key, _) = state_key(saga, id);
    let Some(stored) = store.get(&state_key).await? else {
        tracing::debug!(saga, id, step, "event for no such saga; ignored");
        return Ok(());
    };
    match serde_json::from_slice::<Status>(&stored.value) {
        Ok(Status { status }) if !status.is_finished() => {}
        _ => return Ok(()),
    }
    match store.put(&event_key(saga, id, step), Expect::Absent, event).await {
        Ok(_) | Err(Error::Store(StoreError::Conflict { .. })) => {}
        Err(e) => return Err(e),
    }
    // Now: whoever has it parked wakes it; a saga not parked (running, or
    // not at this step yet) finds the event when it gets there.
    store.timer_put(&wake_queue(saga, id), id, app.instance().clock.epoch_ms(), b"", true).await?;
    Ok(())
}

/// The sagas that ended `Failed`: kept for an operator, not swept.
fn failed_key(saga: &str) -> Key {
    Key::new(format!("saga-index:{saga}"), "failed")
}

/// The names of every saga type some instance linked.
fn names_key() -> Key {
    Key::new("saga-names", "all")
}

/// Record the names of the saga types this instance links (at start).
pub(crate) async fn register_names(store: &crate::store::Store, names: impl Iterator<Item = &str>) -> Result<()> {
    for name in names {
        store.set_add(&names_key(), name).await?;
    }
    Ok(())
}

/// Every saga type name some instance linked, sorted.
pub(crate) async fn names(app: &App) -> Result<Vec<String>> {
    let mut names = app.store().set_members(&names_key()).await?;
    names.sort();
    Ok(names)
}

/// How a saga is named in its owner's set: `<saga name>:<id>` (saga names
/// have no `:`).
pub(crate) fn owned_entry(saga: &str, id: &str) -> String {
    format!("{saga}:{id}")
}

/// The saga name and id of an owner's set member.
pub(crate) fn parse_owned(entry: &str) -> Option<(&str, &str)> {
    entry.split_once(':')
}

/// The sets a finished saga moves between: out of the active and parked
/// indexes and this instance's own set; a failed one into the failed index
/// first, so it is never out of both.
pub(crate) struct Leaving {
    id: String,
    entry: String,
    failed: Option<Key>,
    out: [Key; 3],
}

impl Leaving {
    pub(crate) fn of(app: &App, saga: &str, id: &str, status: SagaStatus) -> Leaving {
        Leaving {
            id: id.to_owned(),
            entry: owned_entry(saga, id),
            failed: (status == SagaStatus::Failed).then(|| failed_key(saga)),
            out: [index_key(saga), parked_key(saga), sagas_owned_key(app.instance_id())],
        }
    }

    /// The set entered (a failed saga's) and those left, as (set, member).
    pub(crate) fn pairs(&self) -> (Option<Member<'_>>, [Member<'_>; 3]) {
        let [index, parked, owned] = &self.out;
        let entering = self.failed.as_ref().map(|failed| (failed, self.id.as_str()));
        (entering, [(index, self.id.as_str()), (parked, self.id.as_str()), (owned, self.entry.as_str())])
    }
}

/// A set and a member of it.
type Member<'a> = (&'a Key, &'a str);

/// Move a finished saga out of the indexes (see [`Leaving`]), when its
/// last write did not (a run that found it finished).
pub(crate) async fn unindex(app: &App, saga: &str, id: &str, status: SagaStatus) -> Result<()> {
    let store = app.store();
    let leaving = Leaving::of(app, saga, id, status);
    let (entering, out) = leaving.pairs();
    if let Some((set, member)) = entering {
        store.set_add(set, member).await?;
    }
    // Three independent removals, in one round trip's time.
    let [(a, x), (b, y), (c, z)] = out;
    let (a, b, c) = tokio::join!(store.set_remove(a, x), store.set_remove(b, y), store.set_remove(c, z));
    a.and(b).and(c)?;
    Ok(())
}

/// Between tries of `create` to take a lease that another instance holds
/// while the saga's state is not written yet.
const CREATE_RETRY: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));

/// The owner under which a client's remote start leaves a saga for an
/// instance that runs its type ([`App::submit_remote_saga`]): every sweeper
/// of the type reads this owner's set every round and takes its share at
/// once.
pub(crate) const UNASSIGNED: &str = "~unassigned";

/// Who creates a saga: this instance, which runs it now, or a client that
/// leaves it to an instance of its type ([`UNASSIGNED`]).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Holder {
    Here,
    Unassigned,
}

/// A saga to create: what its first state holds.
pub(crate) struct New<D> {
    pub(crate) saga: &'static str,
    /// Its first step (unknown to a client that does not link it).
    pub(crate) first_step: Option<&'static str>,
    /// Its definition's path (unknown to such a client).
    pub(crate) definition: Option<Vec<String>>,
    /// Its deadline, from its start.
    pub(crate) deadline: Option<Duration>,
    pub(crate) data: D,
}

/// Write a new saga's first state under a fresh lease; `None` if saga `id`
/// exists. A lease held by someone else while no state is written means the
/// saga is being created elsewhere right now, or its creator died between
/// the two writes (the lease then lives until a survivor takes the dead
/// instance's sagas over and finds nothing to run, about the liveness
/// timeout later), or a sweep is looking at it: it waits (up to three
/// liveness timeouts) for the state to appear or the lease to be free.
pub(crate) async fn create<D: Serialize>(
    app: &App,
    id: &str,
    new: New<D>,
    holder: Holder,
) -> Result<Option<(Lease, State<D>, u64)>> {
    let saga = new.saga;
    check_id(saga, id)?;
    let store = app.store();
    let (state_key, lease_key) = state_key(saga, id);
    // Index first: the sweep finds every saga that may exist (a stale
    // entry is dropped by the sweep when it finds the saga finished).
    // In the holder's set before the lease: whoever holds a saga's lease
    // has it in their set, so the survivors of an owner that dies find it.
    // (If another instance has it, this entry is dropped by this
    // instance's sweep — or, on a client, by the survivors once it stops;
    // an unassigned one by the sweeper that looks at it.)
    let (set, me) = match holder {
        Holder::Here => (sagas_owned_key(app.instance_id()), owner(app)),
        Holder::Unassigned => (sagas_owned_key(UNASSIGNED), format!("{UNASSIGNED}#{:08x}", fastrand::u32(..))),
    };
    // Both indexes with the record, before it (see `Store::create_leased`).
    let (index, entry) = (index_key(saga), owned_entry(saga, id));
    let indexes = [(&index, id), (&set, entry.as_str())];
    let clock = app.instance().clock;
    let origin = app.trace_origin();
    let now = clock.epoch_ms();
    let state = State {
        saga: saga.to_owned(),
        id: id.to_owned(),
        status: SagaStatus::Running,
        next: 0,
        // The first step's first attempt, recorded with the saga itself —
        // by the instance that runs it now (an unassigned one's runner
        // records it).
        attempts: u32::from(holder == Holder::Here),
        failures: 0,
        transient: 0,
        last_error: None,
        step: new.first_step.map(str::to_owned),
        data: new.data,
        traceparent: Some(origin.traceparent()),
        tracestate: origin.tracestate().map(str::to_owned),
        history: Vec::new(),
        error: None,
        created_at: Some(now),
        updated_at: Some(now),
        finished_at: None,
        deadline_at: new.deadline.map(|d| now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
        definition: new.definition,
        wait_until: None,
    };
    let encoded = encode(saga, &state)?;
    // The lease and the first state in one step (no read first: an
    // existing saga is refused there).
    let (started, limit) = (clock.now(), app.config().heartbeat_timeout * 3);
    let mut tries = 0;
    loop {
        match store.create_leased(&state_key, &encoded, &lease_key, &me, app.config().saga_lease_ttl, &indexes).await? {
            Created::Written(lease) => return Ok(Some((lease, state, 1))),
            Created::Exists => return Ok(None),
            Created::Held if started.elapsed() >= limit => {
                return Err(Error::Saga {
                    saga: saga.to_owned(),
                    id: id.to_owned(),
                    reason: format!(
                        "another instance holds its lease but wrote no state within {limit:?} (it is being created \
                         there, or its creator died and a survivor has not freed it yet); try again"
                    ),
                });
            }
            Created::Held => {
                tries += 1;
                clock.sleep(CREATE_RETRY.delay(tries)).await;
            }
        }
    }
}

fn check_id(saga: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 200 || id.contains(['{', '}']) {
        return Err(Error::Saga {
            saga: saga.to_owned(),
            id: id.to_owned(),
            reason: "a saga id is 1 to 200 characters without `{` or `}`".into(),
        });
    }
    Ok(())
}

pub(crate) fn owner(app: &App) -> String {
    format!("{}#{:08x}", app.instance_id(), fastrand::u32(..))
}

/// A state as JSON. Into a buffer of 1 KiB to start: a small saga's state
/// is most of that, and `to_vec`'s 128 bytes grew (and copied) it three
/// times on every write.
pub(crate) fn encode<D: Serialize>(saga: &'static str, state: &State<D>) -> Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(1024);
    serde_json::to_writer(&mut buffer, state).map(|()| buffer).map_err(|e| Error::Saga {
        saga: saga.to_owned(),
        id: state.id.clone(),
        reason: format!("its data does not serialize as JSON: {e}"),
    })
}

/// The status of saga `id` of the named saga type, if it exists.
pub(crate) async fn status(saga: &str, app: &App, id: &str) -> Result<Option<SagaInfo>> {
    let (state_key, _) = state_key(saga, id);
    let Some(stored) = app.store().get(&state_key).await? else { return Ok(None) };
    let state: State<serde_json::Value> = serde_json::from_slice(&stored.value).map_err(|e| Error::Saga {
        saga: saga.to_owned(),
        id: id.to_owned(),
        reason: format!("its stored state is not readable: {e}"),
    })?;
    // The step as persisted; from the linked definition for a state
    // written before the name was kept.
    let linked = || {
        let steps = sagas().into_iter().find(|s| s.name == saga).map(|s| s.entry.step_names()).unwrap_or_default();
        let at = match state.status {
            SagaStatus::Running => Some(state.next),
            _ => state.next.checked_sub(1),
        };
        at.and_then(|i| steps.get(i)).map(|s| (*s).to_owned())
    };
    let current = match state.status {
        SagaStatus::Running | SagaStatus::Compensating => state.step.clone().or_else(linked),
        _ => None,
    };
    Ok(Some(SagaInfo {
        saga: state.saga,
        id: state.id,
        status: state.status,
        current_step: current,
        history: state.history,
        error: state.error,
        data: state.data,
        version: stored.version,
        created: state.created_at.map(from_epoch_ms),
        updated: state.updated_at.map(from_epoch_ms),
        finished: state.finished_at.map(from_epoch_ms),
        deadline: state.deadline_at.map(from_epoch_ms),
        waiting: state.wait_until.is_some() && state.status == SagaStatus::Running,
        waiting_until: state.wait_until.filter(|until| *until != u64::MAX).map(from_epoch_ms),
    }))
}

/// Every saga of the named type that is running (parked at a waiting step
/// too), compensating or failed (finished sagas leave the indexes) and that
/// `keep` accepts.
pub(crate) async fn list(saga: &str, app: &App, keep: impl Fn(SagaStatus) -> bool) -> Result<Vec<SagaInfo>> {
    let mut out = Vec::new();
    let mut ids = app.store().set_members(&index_key(saga)).await?;
    ids.extend(app.store().set_members(&parked_key(saga)).await?);
    ids.extend(app.store().set_members(&failed_key(saga)).await?);
    ids.sort();
    ids.dedup();
    for id in ids {
        if let Some(info) = status(saga, app, &id).await?
            && keep(info.status)
        {
            out.push(info);
        }
    }
    Ok(out)
}
