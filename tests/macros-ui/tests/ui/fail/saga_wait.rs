use catga::prelude::*;
use catga::saga::{SagaContext, StepError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "ui.paid")]
struct Paid {
    order: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NotAnEvent {
    order: String,
}

struct NoKey;

#[catga::saga(name = "ui-wait-no-key")]
impl NoKey {
    #[step(wait = Paid, pivot)]
    async fn paid(_: &mut Data, _event: Paid, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct MissingField;

#[catga::saga(name = "ui-wait-missing-field")]
impl MissingField {
    #[step(wait = Paid, key = order_id, pivot)]
    async fn paid(_: &mut Data, _event: Paid, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct NotEvent;

#[catga::saga(name = "ui-wait-not-event")]
impl NotEvent {
    #[step(wait = NotAnEvent, key = order, pivot)]
    async fn paid(_: &mut Data, _event: NotAnEvent, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct ByReference;

#[catga::saga(name = "ui-wait-by-ref")]
impl ByReference {
    #[step(wait = Paid, key = order, within = "1m", pivot)]
    async fn paid(_: &mut Data, _event: &Paid, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
