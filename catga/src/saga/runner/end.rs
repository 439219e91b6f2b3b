//! The end of a run: the lease given up, a finished saga out of the
//! indexes and its end announced; and the lease's renewal while it runs.

use crate::app::App;
use crate::codec::{Codec, Json};
use crate::metadata::Metadata;
use crate::saga::status::{SagaEnded, State, ended_subject};
use crate::saga::store::unindex;
use crate::store::Lease;
use crate::transport::{Encoded, intern_subject};

/// After a run (finished, handed over, or stopped by an error) the lease is
/// released: the next sweep may continue it at once (a lost lease: no-op).
/// A saga that finished in this run left the indexes and gave its lease up
/// with its last write (`released`); one found finished leaves them now,
/// beside the release (a sweep that takes the released lease of a finished
/// saga finds it finished and unindexes it too). Then a finished saga says
/// that it ended: whoever hears it finds it out of the indexes.
pub(super) async fn finish<D>(
    app: &App,
    saga: &'static str,
    state: &State<D>,
    lease: &Lease,
    finished: bool,
    released: bool,
) {
    if released {
        return publish_ended(app, saga, state).await;
    }
    let release = app.store().release_lease(lease);
    if !finished {
        let _ = release.await;
        return;
    }
    let ended = async {
        if let Err(e) = unindex(app, saga, &state.id, state.status).await {
            tracing::warn!(error = %e, "saga finished but could not leave the sweep index; the next sweep retries");
        }
        publish_ended(app, saga, state).await;
    };
    let ((), _) = tokio::join!(ended, release);
}

/// Tell whoever waits ([`App::saga_outcome`], event handlers) that a saga
/// ended: [`SagaEnded`] on its type's subject, fire and forget (a lost one
/// is made up for by the waiters' reads of the store).
pub(crate) async fn publish_ended<D>(app: &App, saga: &'static str, state: &State<D>) {
    let Ok(subject) = intern_subject(&ended_subject(saga)) else { return };
    let ended =
        SagaEnded { saga: saga.to_owned(), id: state.id.clone(), status: state.status, error: state.error.clone() };
    let Ok(payload) = serde_json::to_vec(&ended) else { return };
    let message = Encoded { subject, payload, content_type: Json::CONTENT_TYPE, durable: false };
    let mut meta = Metadata::root();
    if let Some(origin) = state.trace_origin() {
        meta = meta.in_trace(&origin);
    }
    if let Err(e) = app.instance().publish_encoded(message, meta).await {
        tracing::debug!(saga, id = state.id, error = %e, "could not publish that the saga ended");
    }
}

/// Renews a lease every third of its TTL until stopped. A lost lease is
/// only logged here: the next fenced write fails and stops the run.
pub(super) struct Renewer(tokio::task::JoinHandle<()>);

impl Renewer {
    pub(super) fn start(app: &App, lease: Lease) -> Renewer {
        let (store, ttl, clock) = (app.store().clone(), app.config().saga_lease_ttl, app.instance().clock);
        Renewer(tokio::spawn(async move {
            loop {
                clock.sleep(ttl / 3).await;
                match store.renew_lease(&lease, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(lease = %lease.key, "saga lease lost; another instance may have taken over");
                        return;
                    }
                    Err(e) => tracing::warn!(lease = %lease.key, error = %e, "saga lease renewal failed; retrying"),
                }
            }
        }))
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}
