//! Recovery: a saga follows its owner's life. Every instance that recovers
//! sagas runs a sweep (every
//! [`Config::saga_sweep_interval`](crate::Config::saga_sweep_interval),
//! 250 ms by default) that:
//! 1. reads the heartbeats of the instances that may own sagas (the set
//!    `catga:{live}:instances`) and judges them ([`crate::liveness`]): dead
//!    when a beat did not change for the liveness timeout (1 s), or at once
//!    when the instance shut down cleanly;
//! 2. for each dead instance, reads the sagas it owned
//!    (`catga:{saga-owner:<instance>}:sagas`) and takes over its share:
//!    sagas are ranked among the live sweepers of their type by rendezvous
//!    hashing; in the first round after the judgement an instance takes
//!    the sagas it ranks first for, two rounds later those it ranks second
//!    for too, and so on — spread out, and nothing waits on a sweeper that
//!    is slow or gone. (Two rounds: the sweepers' rounds are not in step,
//!    so another one may judge the owner dead up to a round later, and
//!    must still find its share there.) Taking over is a compare-and-swap of the lease in
//!    the saga's own slot ("free, or held by that instance: make it mine",
//!    with a new fencing token, so the old runner's writes are refused).
//!    A dead instance that owns nothing more leaves the sets;
//! 3. continues its own sagas that are not running here (a run stopped by
//!    an error, its lease taken back even if it could not be released),
//!    and — once, at start — those its instance id owned before a restart;
//! 4. every lease TTL (and at start), as a last resort, tries the lease of
//!    every saga in the active index whose lease is free (expired), for
//!    sagas no owner's set accounts for (e.g. written by an older build).
//!
//! No saga writes anything for the sweep while it runs: the owner's
//! heartbeat stands for all of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::error::{Error, Result};
use crate::future::BoxFuture;
use crate::instance::Instance;
use crate::liveness::{Judge, beat_key, instance_of, members_key, sagas_owned_key, sweepers_key};
use crate::saga::definition::{SagaDef, SagaEntry, SagaRecord};
use crate::saga::runner::{publish_ended, run};
use crate::saga::status::{SagaOutcome, SagaStatus, State};
use crate::saga::store::{
    UNASSIGNED, encode, index_key, owned_entry, owner, parked_key, parse_owned, state_key, unindex,
};
use crate::store::{Expect, Lease, Takeover, Versioned};

/// After this many rounds (10 s by default) a client's submission with no
/// saga state written is dropped (its client died between the two writes).
const STALE_SUBMISSION_ROUNDS: u64 = 40;

/// Beats a sweep reads at once.
const BEAT_READS: usize = 64;

/// Start this instance's recovery sweep for `sagas`. Call before the
/// instance handles anything: the sagas its id owns now are a previous
/// run's (a restart with the same id), taken over by the first round.
pub(crate) async fn start(instance: &Arc<Instance>, sagas: Vec<&'static SagaRecord>) {
    let inherited = match instance.store.set_members(&sagas_owned_key(instance.instance_id())).await {
        Ok(entries) => entries.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "saga sweep: cannot read the sagas this instance id owned before; the slow sweep will");
            HashSet::new()
        }
    };
    let sweep = Sweep {
        instance: Arc::downgrade(instance),
        sagas,
        judge: Judge::new(instance.config.heartbeat_timeout, instance.config.saga_sweep_interval),
        dead: HashMap::new(),
        round: 0,
        taking: Arc::default(),
        stale: HashSet::new(),
        inherited,
        last_full: None,
        submitted: HashMap::new(),
    };
    tokio::spawn(sweep.run(instance.config.saga_sweep_interval));
}

/// The sweep resumes any saga through its erased entry.
impl<D: Serialize + DeserializeOwned + Send + Sync + 'static> SagaEntry for SagaDef<D> {
    fn resume(&'static self, app: App, id: String, from: String) -> BoxFuture<'static, Result<Option<SagaOutcome>>> {
        Box::pin(async move { resume(self, &app, &id, &from).await })
    }

    fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name).collect()
    }

    fn wake(&'static self, app: App, id: String) -> BoxFuture<'static, Result<bool>> {
        Box::pin(async move { wake(self, &app, &id).await })
    }
}

/// Take saga `id` over if its lease is free or held by instance `from`
/// (judged dead; empty: only a free lease), and run it to its end here.
pub(crate) async fn resume<D>(def: &'static SagaDef<D>, app: &App, id: &str, from: &str) -> Result<Option<SagaOutcome>>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let store = app.store();
    let (state_key, lease_key) = state_key(def.name, id);
    let me = app.instance_id();
    let (mine, entry) = (sagas_owned_key(me), owned_entry(def.name, id));
    let from_other = !from.is_empty() && from != me;
    // Taking a dead owner's saga: into this instance's set first (whoever
    // holds a lease has the saga in their set, so it is never out of all).
    if from_other {
        store.set_add(&mine, &entry).await?;
    }
    // A client's remote start: only a free lease (the client releases its
    // own once the state is written), so the state is there when it is taken.
    let takes_from = if from == UNASSIGNED { "" } else { from };
    let lease = match store.take_over_lease(&lease_key, takes_from, &owner(app), app.config().saga_lease_ttl).await? {
        Takeover::Taken(lease) => lease,
        Takeover::Held { owner } => {
            // Someone else runs it (another survivor took it first): it is
            // in their set, not ours — nor the dead one's.
            if instance_of(&owner) != me {
                store.set_remove(&mine, &entry).await?;
            }
            if from_other && instance_of(&owner) != from {
                store.set_remove(&sagas_owned_key(from), &entry).await?;
            }
            return Ok(None);
        }
    };
    if !from_other {
        store.set_add(&mine, &entry).await?;
    } else if from != UNASSIGNED {
        store.set_remove(&sagas_owned_key(from), &entry).await?;
    }
    let stored = match store.get(&state_key).await {
        Ok(Some(stored)) => stored,
        other => {
            let _ = store.release_lease(&lease).await;
            if matches!(other, Ok(None)) {
                // No such saga (its creation stopped before its first write).
                store.set_remove(&mine, &entry).await?;
            }
            return other.map(|_| None);
        }
    };
    let state: State<D> = match serde_json::from_slice(&stored.value) {
        Ok(state) => state,
        Err(e) => {
            let reason = format!("its stored state does not decode as `{}`: {e}", (def.data_type)());
            let failed = fail_undecodable(app, def.name, id, &stored, &lease, &reason).await;
            let _ = store.release_lease(&lease).await;
            return match failed {
                Ok(()) => Ok(None),
                Err(_) => Err(Error::Saga { saga: def.name.to_owned(), id: id.to_owned(), reason }),
            };
        }
    };
    if from == UNASSIGNED {
        // Held here now, with its state: no longer waiting for a taker.
        store.set_remove(&sagas_owned_key(UNASSIGNED), &entry).await?;
    }
    if state.status.is_finished() {
        let _ = store.release_lease(&lease).await;
        unindex(app, def.name, id, state.status).await?;
        // Its instance may have died before saying so.
        publish_ended(app, def.name, &state).await;
        return Ok(None);
    }
    if from == UNASSIGNED {
        tracing::info!(saga = def.name, id, "saga submitted by a client taken to run here");
        app.instance().metrics.saga_started(def.name);
    } else {
        let from = if from.is_empty() { "(free lease)" } else { from };
        tracing::info!(saga = def.name, id, from, status = ?state.status, step = state.next, "saga taken over");
        app.instance().metrics.taken_over(def.name);
    }
    run(def, app, lease, state, stored.version, false).await
}

/// Wake saga `id`, parked at a waiting step: take its lease (free while it
/// is parked), make it this instance's (its owner set, the running index),
/// and run it on a task of its own. `true` once it runs here — or is
/// unknown or finished: the wake is done. `false` while an instance holds
/// it (it is still being parked, its runner's lease has not lapsed yet, or
/// it runs and is not at a waiting step): the wake is tried again, so a
/// saga being parked right when its event came is not left parked.
pub(crate) async fn wake<D>(def: &'static SagaDef<D>, app: &App, id: &str) -> Result<bool>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let store = app.store();
    let (state_key, lease_key) = state_key(def.name, id);
    let me = app.instance_id();
    let (mine, entry) = (sagas_owned_key(me), owned_entry(def.name, id));
    if app.instance().running_sagas().contains(def.name, id) {
        return Ok(false);
    }
    store.set_add(&mine, &entry).await?;
    let lease = match store.take_over_lease(&lease_key, "", &owner(app), app.config().saga_lease_ttl).await? {
        Takeover::Taken(lease) => lease,
        Takeover::Held { owner } => {
            if instance_of(&owner) != me {
                store.set_remove(&mine, &entry).await?;
            }
            return Ok(false);
        }
    };
    store.set_add(&index_key(def.name), id).await?;
    store.set_remove(&parked_key(def.name), id).await?;
    let Some(stored) = store.get(&state_key).await? else {
        let _ = store.release_lease(&lease).await;
        store.set_remove(&mine, &entry).await?;
        store.set_remove(&index_key(def.name), id).await?;
        return Ok(true);
    };
    let state: State<D> = match serde_json::from_slice(&stored.value) {
        Ok(state) => state,
        Err(e) => {
            let reason = format!("its stored state does not decode as `{}`: {e}", (def.data_type)());
            let failed = fail_undecodable(app, def.name, id, &stored, &lease, &reason).await;
            let _ = store.release_lease(&lease).await;
            return failed.map(|()| true);
        }
    };
    if state.status.is_finished() {
        let _ = store.release_lease(&lease).await;
        return unindex(app, def.name, id, state.status).await.map(|()| true);
    }
    tracing::debug!(saga = def.name, id, "saga woken");
    app.instance().metrics.woken(def.name);
    let (app, id) = (app.clone(), id.to_owned());
    tokio::spawn(async move {
        if let Err(e) = run(def, &app, lease, state, stored.version, false).await {
            tracing::warn!(saga = def.name, id, error = %e, "woken saga stopped; the recovery sweep continues it");
        }
    });
    Ok(true)
}

/// A saga whose stored data this build cannot decode (a client's remote
/// start with data of another shape, a state from an incompatible build):
/// ended `Failed` with the reason, through its JSON, so it is listed for an
/// operator rather than retried every round.
async fn fail_undecodable(
    app: &App,
    saga: &'static str,
    id: &str,
    stored: &Versioned,
    lease: &Lease,
    reason: &str,
) -> Result<()> {
    let mut state: State<serde_json::Value> = serde_json::from_slice(&stored.value).map_err(|e| Error::Saga {
        saga: saga.to_owned(),
        id: id.to_owned(),
        reason: format!("its stored state is not readable: {e}"),
    })?;
    tracing::error!(saga, id, reason, "saga cannot run here; it ends failed");
    state.status = SagaStatus::Failed;
    state.error = Some(reason.to_owned());
    let now = app.instance().clock.epoch_ms();
    (state.updated_at, state.finished_at) = (Some(now), Some(now));
    let (key, _) = state_key(saga, id);
    app.store().put_fenced(&key, Expect::Version(stored.version), &encode(saga, &state)?, lease).await?;
    unindex(app, saga, id, SagaStatus::Failed).await?;
    publish_ended(app, saga, &state).await;
    Ok(())
}

/// One instance's recovery sweep (see the module docs).
struct Sweep {
    instance: Weak<Instance>,
    sagas: Vec<&'static SagaRecord>,
    judge: Judge,
    /// Instances judged dead, with the round they were first judged in.
    dead: HashMap<String, u64>,
    round: u64,
    /// Sagas (owner-set entries) being taken over here now.
    taking: Arc<Mutex<HashSet<String>>>,
    /// This instance's own sagas found not running here last round.
    stale: HashSet<String>,
    /// The sagas this instance id owned when it started.
    inherited: HashSet<String>,
    /// When the active indexes were last read whole.
    last_full: Option<tokio::time::Instant>,
    /// Sagas submitted by clients, with the round they were first seen in.
    submitted: HashMap<String, u64>,
}

impl Sweep {
    async fn run(mut self, every: Duration) {
        loop {
            let Some(clock) = self.instance.upgrade().map(|i| i.clock) else { return };
            clock.sleep(every.mul_f64(0.75 + fastrand::f64() / 2.0)).await;
            let Some(app) = self.instance.upgrade().map(App::from_instance) else { return };
            if app.instance().is_draining() {
                return;
            }
            self.round += 1;
            self.own(&app).await;
            self.dead_owners(&app).await;
            self.unassigned(&app).await;
            let full_every = app.config().saga_lease_ttl;
            if self.last_full.is_none_or(|at| at.elapsed() >= full_every) {
                self.last_full = Some(clock.now());
                self.free_leases(&app).await;
            }
        }
    }

    fn record(&self, name: &str) -> Option<&'static SagaRecord> {
        self.sagas.iter().copied().find(|r| r.name == name)
    }

    /// Take saga `id` over on a task of its own (the sweep goes on), unless
    /// it runs here or is being taken over here already.
    fn take(&self, app: &App, record: &'static SagaRecord, id: &str, from: &str) {
        let entry = owned_entry(record.name, id);
        if app.instance().running_sagas().contains(record.name, id) {
            return;
        }
        if !self.taking.lock().unwrap_or_else(|e| e.into_inner()).insert(entry.clone()) {
            return;
        }
        let (taking, app, id, from, saga) =
            (self.taking.clone(), app.clone(), id.to_owned(), from.to_owned(), record.name);
        tokio::spawn(async move {
            let result = record.entry.resume(app, id.clone(), from).await;
            taking.lock().unwrap_or_else(|e| e.into_inner()).remove(&entry);
            if let Err(e) = result {
                tracing::warn!(saga, id, error = %e, "saga takeover stopped");
            }
        });
    }

    /// This instance's own sagas that are not running here: a run that
    /// stopped on an error is continued once it was seen so two rounds in a
    /// row (a saga being started here is not yet running for a moment); a
    /// previous run's sagas (the same instance id, restarted) at once.
    /// Either way the lease may still be this instance's — a run stopped by
    /// a failing store usually cannot release it either — so it is taken
    /// back from this instance (with a new fencing token) rather than
    /// waited for until it lapses.
    async fn own(&mut self, app: &App) {
        let me = app.instance_id().to_owned();
        let entries = match app.store().set_members(&sagas_owned_key(&me)).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(error = %e, "saga sweep: cannot read this instance's sagas");
                return;
            }
        };
        let mut stale = HashSet::new();
        for entry in entries {
            let Some((name, id)) = parse_owned(&entry) else { continue };
            let Some(record) = self.record(name) else { continue };
            let here = app.instance().running_sagas();
            if here.contains(record.name, id) || here.being_created(record.name, id) {
                continue;
            }
            // A previous run's (at once), or seen stopped last round too.
            if self.inherited.remove(&entry) || self.stale.contains(&entry) {
                self.take(app, record, id, &me);
            } else {
                stale.insert(entry.clone());
            }
        }
        self.inherited.clear();
        self.stale = stale;
    }

    /// Judge the instances that may own sagas; take over this instance's
    /// share of the dead ones' sagas.
    async fn dead_owners(&mut self, app: &App) {
        let store = app.store();
        let me = app.instance_id().to_owned();
        let members = match store.set_members(&members_key()).await {
            Ok(members) => members,
            Err(e) => {
                tracing::debug!(error = %e, "saga sweep: cannot read the instances");
                return;
            }
        };
        let clock = app.instance().clock;
        // Read the beats concurrently (a round costs about one round trip,
        // not one per member): read one by one, a round of many members
        // would outlast the judge's gap between two looks at a member.
        let others: Vec<String> = members.iter().filter(|m| **m != me).cloned().collect();
        let reads: Vec<_> = futures_util::stream::iter(others)
            .map(|member| {
                let store = store.clone();
                async move {
                    let read = store.read_beat(&beat_key(&member)).await;
                    (member, read)
                }
            })
            .buffered(BEAT_READS)
            .collect()
            .await;
        for (member, read) in reads {
            let member = &member;
            if self.judge.look(member, &read, clock.now()) {
                self.dead.entry(member.clone()).or_insert(self.round);
            } else {
                self.dead.remove(member);
            }
        }
        self.dead.retain(|d, _| members.contains(d));
        let mut sweepers: HashMap<&str, Vec<String>> = HashMap::new();
        let dead: Vec<(String, u64)> = self.dead.iter().map(|(d, r)| (d.clone(), *r)).collect();
        for (gone, since) in dead {
            let entries = match store.set_members(&sagas_owned_key(&gone)).await {
                Ok(entries) => entries,
                Err(_) => continue,
            };
            if entries.is_empty() {
                // Nothing left to take over: it leaves the sets.
                tracing::debug!(instance = %gone, "saga sweep: a dead instance owns no saga; it leaves the sets");
                let _ = store.set_remove(&members_key(), &gone).await;
                for record in &self.sagas {
                    let _ = store.set_remove(&sweepers_key(record.name), &gone).await;
                }
                self.dead.remove(&gone);
                self.judge.forget(&gone);
                continue;
            }
            // One more rank every two rounds: more than the skew between
            // two sweepers' judgements of the same death (up to a round).
            let widen = ((self.round - since) / 2) as usize;
            for entry in &entries {
                let Some((name, id)) = parse_owned(entry) else { continue };
                let Some(record) = self.record(name) else { continue };
                if !sweepers.contains_key(record.name) {
                    sweepers.insert(record.name, self.live_sweepers(app, record.name, &me).await);
                }
                if rank(entry, &me, &sweepers[record.name]) <= widen {
                    self.take(app, record, id, &gone);
                }
            }
        }
    }

    /// Sagas a client submitted for an instance that runs their type
    /// (`App::submit_remote_saga`): shared among the live sweepers of the
    /// type by rank, as a dead instance's are — the first-ranked takes it at
    /// its next round, the next ones two rounds later if it is still there.
    async fn unassigned(&mut self, app: &App) {
        let entries = match app.store().set_members(&sagas_owned_key(UNASSIGNED)).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(error = %e, "saga sweep: cannot read the sagas submitted by clients");
                return;
            }
        };
        self.submitted.retain(|entry, _| entries.contains(entry));
        let me = app.instance_id().to_owned();
        let mut sweepers: HashMap<&str, Vec<String>> = HashMap::new();
        for entry in &entries {
            let Some((name, id)) = parse_owned(entry) else { continue };
            // A type this instance does not link is for others.
            let Some(record) = self.record(name) else { continue };
            let since = *self.submitted.entry(entry.clone()).or_insert(self.round);
            if !sweepers.contains_key(record.name) {
                sweepers.insert(record.name, self.live_sweepers(app, record.name, &me).await);
            }
            let age = self.round - since;
            if age > STALE_SUBMISSION_ROUNDS && matches!(app.store().get(&state_key(record.name, id).0).await, Ok(None))
            {
                // Its client died before it wrote the saga: nothing to run.
                let _ = app.store().set_remove(&sagas_owned_key(UNASSIGNED), entry).await;
                continue;
            }
            if rank(entry, &me, &sweepers[record.name]) <= (age / 2) as usize {
                self.take(app, record, id, UNASSIGNED);
            }
        }
    }

    /// The other live instances that recover sagas of type `saga`.
    async fn live_sweepers(&self, app: &App, saga: &str, me: &str) -> Vec<String> {
        let mut live = app.store().set_members(&sweepers_key(saga)).await.unwrap_or_default();
        live.retain(|s| s != me && !self.dead.contains_key(s));
        live
    }

    /// The last resort: every saga in the active indexes whose lease is
    /// free (expired, or released and in nobody's set).
    async fn free_leases(&self, app: &App) {
        for record in &self.sagas {
            match app.store().set_members(&index_key(record.name)).await {
                Ok(ids) => {
                    for id in ids {
                        self.take(app, record, &id, "");
                    }
                }
                Err(e) => tracing::warn!(saga = record.name, error = %e, "saga sweep: cannot read the index"),
            }
        }
    }
}

/// Where `me` ranks among `others` for `entry` (0: first), by rendezvous
/// hashing: every instance computes the same order without talking.
fn rank(entry: &str, me: &str, others: &[String]) -> usize {
    let mine = score(entry, me);
    others.iter().filter(|other| score(entry, other) > mine).count()
}

/// A score of `entry` for `instance`, the same in every process.
fn score(entry: &str, instance: &str) -> u64 {
    crate::hash::stable_hash(&[entry, instance])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_ranks_spread_sagas_over_survivors() {
        let survivors: Vec<String> = (0..3).map(|i| format!("svc-{i}")).collect();
        let mut firsts = [0; 3];
        for n in 0..300 {
            let entry = format!("order:{n}");
            let ranks: Vec<usize> = survivors
                .iter()
                .map(|me| {
                    let others: Vec<String> = survivors.iter().filter(|s| *s != me).cloned().collect();
                    rank(&entry, me, &others)
                })
                .collect();
            let mut sorted = ranks.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2], "one order everyone agrees on");
            firsts[ranks.iter().position(|r| *r == 0).unwrap()] += 1;
        }
        assert!(firsts.iter().all(|n| *n > 60), "spread: {firsts:?}");
    }
}
