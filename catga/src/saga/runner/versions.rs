//! A saga stored under another definition of its type (an older or newer
//! build): go on where what it has left to do is the same, or end it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Run;
use crate::error::Result;
use crate::saga::definition::remap;
use crate::saga::status::SagaStatus;

impl<D: Serialize + DeserializeOwned + Send + Sync + 'static> Run<'_, D> {
    /// A saga stored under another definition of this saga (an older or
    /// newer build): continued here if what it has left to do is the same —
    /// its position moved to the same step of this build's table — or ended
    /// `Failed` naming what changed. Never run on with a step it was not at.
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        let here = self.def.path();
        let state = &mut self.state;
        let untouched = state.status == SagaStatus::Running && state.next == 0 && state.history.is_empty();
        if state.definition.is_none() && state.created_at.is_some() && untouched {
            // Created by a client that does not link the saga (a remote
            // start): it runs under this build's definition and deadline.
            state.definition = Some(here);
            state.step = self.def.steps.first().map(|s| s.name.to_owned());
            if let (None, Some(created), Some(ms)) = (state.deadline_at, state.created_at, self.def.deadline_ms) {
                state.deadline_at = Some(created.saturating_add(ms));
            }
            return Ok(());
        }
        let Some(stored) = &self.state.definition else { return Ok(()) };
        if *stored == here || self.state.status.is_finished() {
            return Ok(());
        }
        let forward = self.state.status == SagaStatus::Running;
        match remap(stored, &here, forward, self.state.next) {
            Ok(next) => {
                tracing::info!(
                    saga = self.def.name,
                    id = %self.state.id,
                    from = self.state.next,
                    to = next,
                    "saga continues under this build's changed definition: what it has left to do is the same"
                );
                self.state.next = next;
                self.state.definition = Some(here);
                Ok(())
            }
            Err(what) => {
                let reason = format!(
                    "definition changed: {what}; it cannot go on under this build — an operator must finish it \
                     (see docs/SAGAS.md, \"Changing a saga\")"
                );
                self.fail_unknown_step(reason).await
            }
        }
    }
}
