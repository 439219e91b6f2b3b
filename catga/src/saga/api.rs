//! The [`App`] methods for sagas: start, submit, query, list.

use std::time::Duration;

use crate::app::App;
use crate::error::{Error, Result};
use crate::saga::definition::{Saga, SagaContract, SagaDef};
use crate::saga::runner::run;
use crate::saga::status::{SagaEnded, SagaInfo, SagaOutcome, SagaStatus, ended_subject};
use crate::saga::store::{self, Holder, New};
use crate::transport::intern_subject;

/// How one start of a saga differs from its definition's defaults.
///
/// ```
/// use std::time::Duration;
/// use catga::saga::SagaOptions;
///
/// // This order gives up (and compensates) if it has not completed in 30 minutes.
/// let options = SagaOptions::default().deadline(Duration::from_secs(30 * 60));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SagaOptions {
    /// Overrides `#[saga(deadline = "..")]` for this saga.
    pub deadline: Option<Duration>,
}

impl SagaOptions {
    /// Give this saga a deadline, counted from its start: once it passes,
    /// a saga still running forward stops (the step running is cut short,
    /// unless it is the pivot),
    /// compensates its completed steps and ends `Compensated` — or ends
    /// `Failed` if it is past its pivot. It is checked by whichever instance
    /// runs the saga, so it holds across takeovers; a finished saga is not
    /// affected.
    pub fn deadline(mut self, after: Duration) -> SagaOptions {
        self.deadline = Some(after);
        self
    }
}

impl App {
    /// Start saga `id` of type `S` with `data`, run it here, and return its
    /// outcome. Idempotent on the id: if saga `id` exists, nothing starts;
    /// its outcome is returned (awaited while another instance runs it, up
    /// to [`Config::saga_wait`](crate::Config::saga_wait)). A saga that
    /// parks at a waiting step is awaited the same way, up to `saga_wait`:
    /// for long waits, [`submit_saga`](App::submit_saga) and
    /// [`saga_outcome`](App::saga_outcome). See [`crate::saga`](mod@crate::saga).
    pub async fn start_saga<S: Saga>(&self, id: &str, data: S::Data) -> Result<SagaOutcome> {
        self.start_saga_with::<S>(id, data, SagaOptions::default()).await
    }

    /// [`start_saga`](App::start_saga) with [`SagaOptions`] for this start
    /// (e.g. its own deadline).
    pub async fn start_saga_with<S: Saga>(&self, id: &str, data: S::Data, options: SagaOptions) -> Result<SagaOutcome> {
        self.instance().check_open()?;
        start::<S>(self, id, data, options).await
    }

    /// Create saga `id` of type `S` durably and run it in the background
    /// here; returns once its first state is in the store, so losing this
    /// instance afterwards loses nothing (the recovery sweep continues it).
    /// `Ok(false)` if saga `id` exists already: nothing new starts.
    pub async fn submit_saga<S: Saga>(&self, id: &str, data: S::Data) -> Result<bool> {
        self.submit_saga_with::<S>(id, data, SagaOptions::default()).await
    }

    /// [`submit_saga`](App::submit_saga) with [`SagaOptions`] for this start.
    pub async fn submit_saga_with<S: Saga>(&self, id: &str, data: S::Data, options: SagaOptions) -> Result<bool> {
        self.instance().check_open()?;
        submit::<S>(self, id, data, options).await
    }

    /// Start saga `id` of the type contract `C` names on an instance that
    /// runs that saga — this program need not link it (a client, another
    /// service). Returns once the saga is in the store (`Ok(false)` if saga
    /// `id` exists already: nothing new starts); an instance that runs the
    /// type takes it at its next sweep (within
    /// [`Config::saga_sweep_interval`](crate::Config::saga_sweep_interval))
    /// and runs it with its own definition (and its deadline, unless
    /// `options` gives one). Wait for the outcome with
    /// [`saga_outcome`](App::saga_outcome).
    pub async fn submit_remote_saga<C: SagaContract>(&self, id: &str, data: C::Data) -> Result<bool> {
        self.submit_remote_saga_with::<C>(id, data, SagaOptions::default()).await
    }

    /// [`submit_remote_saga`](App::submit_remote_saga) with [`SagaOptions`].
    pub async fn submit_remote_saga_with<C: SagaContract>(
        &self,
        id: &str,
        data: C::Data,
        options: SagaOptions,
    ) -> Result<bool> {
        self.instance().check_open()?;
        check_name(C::NAME, id)?;
        let new = New { saga: C::NAME, first_step: None, definition: None, deadline: options.deadline, data };
        let Some((lease, state, _)) = store::create(self, id, new, Holder::Unassigned).await? else { return Ok(false) };
        // Free at once: the instance that takes it over need not wait.
        let _ = self.store().release_lease(&lease).await;
        tracing::debug!(saga = C::NAME, id = state.id, "saga submitted for an instance that runs it");
        Ok(true)
    }

    /// Wait until saga `id` of the named type finishes (started here or
    /// anywhere) and return its outcome: at once if it has, else as soon as
    /// the instance that finishes it publishes the fact
    /// ([`SagaEnded`] on `catga.saga.<name>.ended`
    /// — no polling; the store is read again every 5 s in case that message
    /// was lost with its instance). An error after `timeout`, or if no such
    /// saga exists.
    pub async fn saga_outcome(&self, saga: &str, id: &str, timeout: Duration) -> Result<SagaOutcome> {
        self.instance().check_open()?;
        let failed = |reason: String| Error::Saga { saga: saga.to_owned(), id: id.to_owned(), reason };
        let subject = intern_subject(&ended_subject(saga)).map_err(|e| failed(format!("{e}: {saga:?}")))?;
        // Watch first, then read: an end between the two is not missed.
        let mut ended = self.instance().transport.watch(subject).await?;
        let clock = self.instance().clock;
        let deadline = clock.now().checked_add(timeout).unwrap_or_else(|| clock.now() + FOREVER);
        loop {
            match store::status(saga, self, id).await? {
                None => return Err(failed("no such saga (it was never started, or its state was deleted)".into())),
                Some(info) => {
                    if let Some(outcome) = info.outcome() {
                        return Ok(outcome);
                    }
                }
            }
            let wake = deadline.min(clock.now() + OUTCOME_RECHECK);
            loop {
                tokio::select! {
                    payload = ended.next() => match payload {
                        Some(payload) => {
                            if serde_json::from_slice::<SagaEnded>(&payload).is_ok_and(|e| e.id == id) {
                                break;
                            }
                        }
                        None => return Err(failed("the transport closed while waiting for its outcome".into())),
                    },
                    _ = tokio::time::sleep_until(wake) => break,
                }
            }
            if clock.now() >= deadline {
                return Err(failed(format!("it did not finish within {timeout:?}; query it with saga_status")));
            }
        }
    }

    /// Where saga `id` of type `S` is, if it exists.
    pub async fn saga_status<S: Saga>(&self, id: &str) -> Result<Option<SagaInfo>> {
        store::status(S::definition().name, self, id).await
    }

    /// [`saga_status`](App::saga_status) by the saga's name, for an
    /// operator tool or a client that does not link the saga's type.
    pub async fn saga_status_by_name(&self, saga: &str, id: &str) -> Result<Option<SagaInfo>> {
        store::status(saga, self, id).await
    }

    /// The names of every saga type that an instance using this store has
    /// linked (each instance records its own at start), sorted: what an
    /// operator's tool lists with [`sagas_by_name`](App::sagas_by_name).
    pub async fn saga_names(&self) -> Result<Vec<String>> {
        store::names(self).await
    }

    /// [`sagas`](App::sagas) by the saga's name, for an operator tool or a
    /// client that does not link the saga's type.
    pub async fn sagas_by_name(&self, saga: &str, keep: impl Fn(SagaStatus) -> bool) -> Result<Vec<SagaInfo>> {
        store::list(saga, self, keep).await
    }

    /// The sagas of type `S` still known to the recovery index whose
    /// status `keep` accepts — running, compensating, or failed (finished
    /// sagas leave the index; query those by id).
    ///
    /// ```
    /// # use catga::saga::{Saga, SagaStatus};
    /// # async fn f<S: Saga>(app: &catga::App) -> catga::Result<()> {
    /// let stuck = app.sagas::<S>(|s| s == SagaStatus::Failed).await?;
    /// # Ok(()) }
    /// ```
    pub async fn sagas<S: Saga>(&self, keep: impl Fn(SagaStatus) -> bool) -> Result<Vec<SagaInfo>> {
        store::list(S::definition().name, self, keep).await
    }
}

/// Start saga `id` of type `S` with `data` and run it here to its end; a
/// saga with this id that exists already is not started again: its outcome
/// is awaited instead.
/// What a saga of this build's definition starts with.
fn new<D>(def: &'static SagaDef<D>, data: D, options: SagaOptions) -> New<D> {
    New {
        saga: def.name,
        first_step: def.steps.first().map(|s| s.name),
        definition: Some(def.path()),
        deadline: options.deadline.or(def.deadline_ms.map(Duration::from_millis)),
        data,
    }
}

async fn start<S: Saga>(app: &App, id: &str, data: S::Data, options: SagaOptions) -> Result<SagaOutcome> {
    let def = S::definition();
    // Being created here: the sweep must not take its lease back meanwhile
    // (it is this instance's already) — until its run has started.
    let creating = app.instance().running_sagas().creating(def.name, id);
    let Some((lease, state, version)) = store::create(app, id, new(def, data, options), Holder::Here).await? else {
        // It exists: its outcome, once whoever runs it finishes it.
        drop(creating);
        return app.saga_outcome(def.name, id, app.config().saga_wait).await;
    };
    app.instance().metrics.saga_started(def.name);
    // The run is a task of its own: a started saga reaches its outcome
    // whatever its caller does (a caller that times out or is cancelled
    // drops only this wait, not the saga).
    let runner = app.clone();
    let running = tokio::spawn(async move { run(def, &runner, lease, state, version, true).await });
    drop(creating);
    let ran = running.await.unwrap_or_else(|e| {
        Err(Error::Saga {
            saga: def.name.to_owned(),
            id: id.to_owned(),
            reason: format!("its run stopped ({e}); the recovery sweep continues it"),
        })
    })?;
    match ran {
        Some(outcome) => Ok(outcome),
        // Parked at a waiting step: it ends wherever its event wakes it.
        None => app.saga_outcome(def.name, id, app.config().saga_wait).await,
    }
}

/// Create saga `id` durably and run it in the background; returns once its
/// state is in the store (`true`), or at once if it exists (`false`).
async fn submit<S: Saga>(app: &App, id: &str, data: S::Data, options: SagaOptions) -> Result<bool> {
    let def = S::definition();
    // As in `start`: being created here until its run has started.
    let _creating = app.instance().running_sagas().creating(def.name, id);
    let Some((lease, state, version)) = store::create(app, id, new(def, data, options), Holder::Here).await? else {
        return Ok(false);
    };
    app.instance().metrics.saga_started(def.name);
    let app = app.clone();
    tokio::spawn(async move {
        let id = state.id.clone();
        if let Err(e) = run(def, &app, lease, state, version, true).await {
            tracing::warn!(saga = def.name, id, error = %e, "saga stopped; the recovery sweep continues it");
        }
    });
    Ok(true)
}

/// What an unbounded wait for an outcome waits.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How often a wait for an outcome reads the store anyway (the message
/// saying a saga ended is lost if its instance dies right after storing it).
const OUTCOME_RECHECK: Duration = Duration::from_secs(5);

/// A saga name as `#[saga(name = "..")]` accepts it, and an id.
fn check_name(saga: &str, id: &str) -> Result<()> {
    let ok = !saga.is_empty()
        && saga.len() <= 100
        && saga.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(Error::Saga {
            saga: saga.to_owned(),
            id: id.to_owned(),
            reason: "a saga name is 1 to 100 letters, digits, '-', '_' or '.' (SagaContract::NAME)".into(),
        });
    }
    Ok(())
}
