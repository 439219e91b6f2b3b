//! Recovery: every instance sweeps the saga index and takes over the sagas
//! whose lease expired (their instance died or stalled), continuing them
//! forward or compensating.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::error::{Error, Result};
use crate::future::BoxFuture;
use crate::instance::Instance;
use crate::saga::definition::{SagaDef, SagaEntry, SagaRecord};
use crate::saga::runner::run;
use crate::saga::status::{SagaOutcome, State};
use crate::saga::store::{index_key, owner, state_key, unindex};

/// Start this instance's recovery sweep for `sagas`, every
/// [`Config::saga_sweep_interval`](crate::Config::saga_sweep_interval).
pub(crate) fn start(instance: &Arc<Instance>, sagas: Vec<&'static SagaRecord>) {
    tokio::spawn(sweep(Arc::downgrade(instance), sagas, instance.config.saga_sweep_interval));
}

/// The sweep resumes any saga through its erased entry.
impl<D: Serialize + DeserializeOwned + Send + Sync + 'static> SagaEntry for SagaDef<D> {
    fn resume(&'static self, app: App, id: String) -> BoxFuture<'static, Result<Option<SagaOutcome>>> {
        Box::pin(async move { resume(self, &app, &id).await })
    }

    fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name).collect()
    }
}

/// Take over saga `id` if its lease is free, and run it to its end here.
pub(crate) async fn resume<D>(def: &'static SagaDef<D>, app: &App, id: &str) -> Result<Option<SagaOutcome>>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let store = app.store();
    let (state_key, lease_key) = state_key(def.name, id);
    // The lease first: for a saga another instance is running, that one
    // refused request is all a sweep costs.
    let Some(lease) = store.acquire_lease(&lease_key, &owner(app), app.config().saga_lease_ttl).await? else {
        return Ok(None);
    };
    let stored = match store.get(&state_key).await {
        Ok(Some(stored)) => stored,
        other => {
            let _ = store.release_lease(&lease).await;
            return other.map(|_| None);
        }
    };
    let state: State<D> = match serde_json::from_slice(&stored.value) {
        Ok(state) => state,
        Err(e) => {
            let _ = store.release_lease(&lease).await;
            return Err(Error::Saga {
                saga: def.name.to_owned(),
                id: id.to_owned(),
                reason: format!("its stored state does not decode as `{}`: {e}", (def.data_type)()),
            });
        }
    };
    if state.status.is_finished() {
        let _ = store.release_lease(&lease).await;
        unindex(app, def.name, id, state.status).await?;
        return Ok(None);
    }
    tracing::info!(saga = def.name, id, status = ?state.status, step = state.next, "saga taken over");
    run(def, app, lease, state, stored.version, false).await.map(Some)
}

/// The recovery sweep of one instance: every interval, look at the indexed
/// sagas of every registered type and take over those whose lease expired.
async fn sweep(instance: Weak<Instance>, sagas: Vec<&'static SagaRecord>, every: Duration) {
    loop {
        let Some(clock) = instance.upgrade().map(|i| i.clock) else { return };
        clock.sleep(every.mul_f64(0.75 + fastrand::f64() / 2.0)).await;
        let Some(app) = instance.upgrade().map(App::from_instance) else { return };
        if app.instance().is_draining() {
            return;
        }
        for record in &sagas {
            let ids = match app.store().set_members(&index_key(record.name)).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(saga = record.name, error = %e, "saga sweep: cannot read the index");
                    continue;
                }
            };
            for id in ids {
                if app.instance().running_sagas().contains(record.name, &id) {
                    continue;
                }
                let (entry, app, saga) = (record.entry, app.clone(), record.name);
                // Each takeover runs on its own task; the sweep goes on.
                tokio::spawn(async move {
                    if let Err(e) = entry.resume(app, id.clone()).await {
                        tracing::warn!(saga, id, error = %e, "saga takeover stopped");
                    }
                });
            }
        }
    }
}
