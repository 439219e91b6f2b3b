//! The [`App`] methods for sagas: start, submit, query, list.

use std::time::Duration;

use crate::app::App;
use crate::error::{Error, Result};
use crate::saga::definition::Saga;
use crate::saga::runner::run;
use crate::saga::status::{SagaInfo, SagaOutcome, SagaStatus};
use crate::saga::store;

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
    /// a saga still running forward stops (the step running is cut short),
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
    /// to [`Config::saga_wait`](crate::Config::saga_wait)). See [`crate::saga`](mod@crate::saga).
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
async fn start<S: Saga>(app: &App, id: &str, data: S::Data, options: SagaOptions) -> Result<SagaOutcome> {
    let def = S::definition();
    let Some((lease, state, version)) = store::create(def, app, id, data, options.deadline).await? else {
        return store::wait_for_outcome(def.name, app, id).await;
    };
    app.instance().metrics.saga_started(def.name);
    // The run is a task of its own: a started saga reaches its outcome
    // whatever its caller does (a caller that times out or is cancelled
    // drops only this wait, not the saga).
    let runner = app.clone();
    let running = tokio::spawn(async move { run(def, &runner, lease, state, version, true).await });
    running.await.unwrap_or_else(|e| {
        Err(Error::Saga {
            saga: def.name.to_owned(),
            id: id.to_owned(),
            reason: format!("its run stopped ({e}); the recovery sweep continues it"),
        })
    })
}

/// Create saga `id` durably and run it in the background; returns once its
/// state is in the store (`true`), or at once if it exists (`false`).
async fn submit<S: Saga>(app: &App, id: &str, data: S::Data, options: SagaOptions) -> Result<bool> {
    let def = S::definition();
    let Some((lease, state, version)) = store::create(def, app, id, data, options.deadline).await? else {
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
