//! The timer sweep: how scheduled messages ([`crate::schedule`]) are
//! delivered at their time by whichever instance is up, and how sagas
//! parked at a waiting step are woken (their event came, or their time).
//! A saga type's wake queues (`catga:{saga-wake:<name>:<n>}:q`, 8 per type)
//! are read only by the instances that run that type.
//!
//! Timer items live in [`QUEUES`] timer queues in the store
//! (`catga:{timers:<n>}:q`, by a stable hash of the item's id, so on a Redis
//! Cluster they spread over slots). Every instance but a client looks at
//! all of them every [`Config::timer_interval`](crate::Config::timer_interval)
//! — concurrently, so a look costs about one round trip — for the items due
//! before its next look and the takings that lapsed. It waits for each until
//! its due time, then tries to take it in the store (one instance wins),
//! delivers it, and ends the taking: done, or due again after a pause. An
//! instance that dies while delivering lets its taking lapse after
//! [`TAKING`]; an instance's next look then finds the item again.
//!
//! A look reads what is due (the queues are sorted by due time), not what
//! is waiting: a million messages due next week cost nothing today.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::app::App;
use crate::hash::stable_hash;
use crate::instance::{InFlight, Instance};
use crate::saga::SagaRecord;
use crate::saga::store::{WAKE_QUEUES, wake_queue_n};
use crate::schedule::{self, Next};
use crate::store::{Due, Key};

/// How many timer queues there are (a Redis Cluster spreads them over its
/// shards; one look reads them all at once).
pub(crate) const QUEUES: u64 = 16;

/// How long a taker has to deliver an item before another may (at least;
/// longer with a request timeout over 25 s).
pub(crate) const TAKING: Duration = Duration::from_secs(30);

/// Before a wake is tried again whose saga an instance still holds.
const HELD_RETRY: Duration = Duration::from_secs(1);

/// The most items one look at one queue lists.
const LOOK_LIMIT: usize = 512;

/// The most deliveries one instance makes at once.
const DELIVERING: usize = 64;

/// The timer queue of item `id`.
pub(crate) fn queue_of(id: &str) -> Key {
    queue(stable_hash(&[id]) % QUEUES)
}

fn queue(n: u64) -> Key {
    Key::new(format!("timers:{n}"), "q")
}

/// What a queue holds: scheduled messages, or the wake timers of one saga
/// type's parked sagas.
#[derive(Clone, Copy)]
enum Family {
    Messages,
    Wakes(&'static SagaRecord),
}

/// Start this instance's timer sweep: scheduled messages, and the wake
/// timers of the saga types in `sagas` (those it runs).
pub(crate) fn start(instance: &Arc<Instance>, sagas: &[&'static SagaRecord]) {
    let mut queues: Vec<(Key, Family)> = (0..QUEUES).map(|n| (queue(n), Family::Messages)).collect();
    for &record in sagas {
        queues.extend((0..WAKE_QUEUES).map(|n| (wake_queue_n(record.name, n), Family::Wakes(record))));
    }
    let sweep = Sweep {
        instance: Arc::downgrade(instance),
        queues,
        waiting: Arc::default(),
        delivering: Arc::new(Semaphore::new(DELIVERING)),
    };
    tokio::spawn(sweep.run(instance.config.timer_interval));
}

struct Sweep {
    instance: Weak<Instance>,
    queues: Vec<(Key, Family)>,
    /// The items a task here waits for or delivers now.
    waiting: Arc<Mutex<HashSet<String>>>,
    delivering: Arc<Semaphore>,
}

impl Sweep {
    async fn run(self, every: Duration) {
        loop {
            let Some(clock) = self.instance.upgrade().map(|i| i.clock) else { return };
            clock.sleep(every.mul_f64(0.75 + fastrand::f64() / 2.0)).await;
            let Some(app) = self.instance.upgrade().map(App::from_instance) else { return };
            if app.instance().is_draining() {
                return;
            }
            self.look(&app, every).await;
        }
    }

    /// Read every queue for what is due before the next look (the look
    /// after this one comes at most 1.25 intervals later) and wait for each.
    async fn look(&self, app: &App, every: Duration) {
        let (store, clock) = (app.store(), app.instance().clock);
        let now = clock.epoch_ms();
        let upto = now + u64::try_from(every.mul_f64(1.25).as_millis()).unwrap_or(u64::MAX / 4);
        let reads = self.queues.iter().map(|(queue, _)| store.timers_due(queue, upto, now, LOOK_LIMIT));
        let looks = futures_util::future::join_all(reads).await;
        for ((queue, family), due) in self.queues.iter().zip(looks) {
            let family = *family;
            match due {
                Ok(items) => items.into_iter().for_each(|due| self.deliver_at(app, queue, family, due)),
                Err(e) => tracing::debug!(queue = %queue, error = %e, "timer sweep: cannot read the queue"),
            }
        }
    }

    /// At `due.at`, take the item and deliver it (unless a task here does).
    fn deliver_at(&self, app: &App, queue: &Key, family: Family, due: Due) {
        let waiting_for = format!("{queue}/{}", due.id);
        if !self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(waiting_for.clone()) {
            return;
        }
        let (waiting, delivering, app, queue) =
            (self.waiting.clone(), self.delivering.clone(), app.clone(), queue.clone());
        tokio::spawn(async move {
            // Forgotten however the task ends (a panic included).
            let _waiting = Forget(waiting, waiting_for);
            let clock = app.instance().clock;
            let wait = due.at.saturating_sub(clock.epoch_ms());
            if wait > 0 {
                clock.sleep(Duration::from_millis(wait)).await;
            }
            if let Ok(_slot) = delivering.acquire().await
                // Counted as in flight: a shutdown waits for the delivery.
                && let Some(_in_flight) = InFlight::admit(app.instance().clone())
            {
                take_and_deliver(&app, &queue, family, &due).await;
            }
        });
    }
}

/// Removes an item from the set of those waited for here when dropped.
struct Forget(Arc<Mutex<HashSet<String>>>, String);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

/// Take the item as listed; deliver it (or wake its saga); end the taking.
async fn take_and_deliver(app: &App, queue: &Key, family: Family, due: &Due) {
    let (store, clock) = (app.store(), app.instance().clock);
    let now = clock.epoch_ms();
    // Long enough for a send to run to its own timeout.
    let taking = TAKING.max(app.config().request_timeout + Duration::from_secs(5));
    let until = now + taking.as_millis() as u64;
    let item = match store.timer_take(queue, &due.id, due.at, until, now).await {
        Ok(Some(item)) => item,
        // Another instance took it first, or it was cancelled.
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(id = due.id, error = %e, "timer sweep: cannot take a due item; the next look retries");
            return;
        }
    };
    let next = match family {
        Family::Messages => schedule::deliver(app, &due.id, &item).await,
        Family::Wakes(record) => match record.entry.wake(app.clone(), due.id.clone()).await {
            Ok(true) => Next::Done,
            // Held by an instance (still parking it, or running it): again.
            Ok(false) => Next::Again(HELD_RETRY),
            Err(e) => {
                tracing::warn!(saga = record.name, id = due.id, error = %e, "cannot wake a parked saga; retrying");
                Next::Again(HELD_RETRY)
            }
        },
    };
    let again = match next {
        Next::Done => None,
        Next::Again(pause) => Some(clock.epoch_ms() + pause.as_millis() as u64),
    };
    match (store.timer_end(queue, &due.id, until, again).await, family) {
        (Ok(true), _) => {}
        // A woken saga parked again, or its event moved its timer, before this.
        (Ok(false), Family::Wakes(_)) => {}
        (Ok(false), Family::Messages) => tracing::warn!(
            id = due.id,
            "a scheduled message took longer than its taking to deliver; another instance may deliver it again"
        ),
        (Err(e), _) => tracing::warn!(
            id = due.id,
            error = %e,
            "a timer was handled but the store did not confirm it; it may be handled again (same message id) once \
             its taking lapses"
        ),
    }
}
