//! A waiting step (`#[step(wait = E, key = f)]`): the event if it was
//! recorded, the end of the wait, or parking the saga until its wake timer.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Attempted, Run};
use crate::error::Result;
use crate::liveness::sagas_owned_key;
use crate::saga::definition::{Step, Wait};
use crate::saga::store::{event_key, index_key, owned_entry, parked_key, wake_queue};

/// The longest a parked saga sleeps before it looks again for itself.
const PARKED_RECHECK_MS: u64 = 60 * 60 * 1000;

/// Where a waiting step is.
pub(super) enum Waited {
    /// Its event (as its codec wrote it).
    Arrived(Vec<u8>),
    /// Not yet: the saga parked.
    NotYet,
    /// Its wait or the saga's deadline is over.
    Over(Attempted),
}

/// `Event` of `my_crate::events::Event`.
fn short_type(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

impl<D: Serialize + DeserializeOwned + Send + Sync + 'static> Run<'_, D> {
    /// At a waiting step: the event, if it has been recorded; else whether
    /// the wait (or the saga's deadline) is over, or the saga parks.
    pub(super) async fn waited(&mut self, step: &'static Step<D>, wait: &'static Wait<D>) -> Result<Waited> {
        let store = self.app.store();
        let (saga, id) = (self.def.name, self.state.id.clone());
        if let Some(event) = store.get(&event_key(saga, &id, step.name)).await? {
            return Ok(Waited::Arrived(event.value));
        }
        let now = self.app.instance().clock.epoch_ms();
        if self.state.deadline_at.is_some_and(|at| at <= now) {
            return Ok(Waited::Over(Attempted::DeadlinePassed));
        }
        let until =
            *self.state.wait_until.get_or_insert_with(|| wait.within_ms.map_or(u64::MAX, |ms| now.saturating_add(ms)));
        if until <= now {
            let within = wait.within_ms.map(Duration::from_millis).unwrap_or_default();
            let error =
                format!("no `{}` with {} = {id} arrived within {within:?}", short_type((wait.event)()), wait.key);
            return Ok(Waited::Over(Attempted::GaveUp(error)));
        }
        self.park(step, until).await?;
        Ok(Waited::NotYet)
    }

    /// Park the saga at a waiting step: recorded, its wake timer set (at the
    /// end of its wait or its deadline), out of the running indexes. No
    /// instance holds it or looks at it until the timer fires — or the
    /// event's recorder moves the timer to now.
    async fn park(&mut self, step: &'static Step<D>, until: u64) -> Result<()> {
        let (store, saga, id) = (self.app.store(), self.def.name, self.state.id.clone());
        self.state.attempts = 0;
        self.attempt_recorded = false;
        self.persist().await?;
        // At the end of its wait or its deadline — and within the hour
        // anyway, should a wake have been lost with an instance that died
        // between recording the event and moving the timer.
        let recheck = self.app.instance().clock.epoch_ms().saturating_add(PARKED_RECHECK_MS);
        let due = self.state.deadline_at.map_or(until, |deadline| deadline.min(until)).min(recheck);
        let queue = wake_queue(saga, &id);
        store.timer_put(&queue, &id, due, b"", true).await?;
        // Recorded while the timer was being set (whose wake it replaced)?
        if store.get(&event_key(saga, &id, step.name)).await?.is_some() {
            store.timer_put(&queue, &id, self.app.instance().clock.epoch_ms(), b"", true).await?;
        }
        store.set_add(&parked_key(saga), &id).await?;
        store.set_remove(&index_key(saga), &id).await?;
        store.set_remove(&sagas_owned_key(self.app.instance_id()), &owned_entry(saga, &id)).await?;
        tracing::debug!(saga, id, step = step.name, due, "saga parked until its event or its time");
        self.app.instance().metrics.parked(saga);
        Ok(())
    }
}
