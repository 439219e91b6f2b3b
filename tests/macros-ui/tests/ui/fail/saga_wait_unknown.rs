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

struct UnknownEvent;

#[catga::saga(name = "ui-wait-unknown")]
impl UnknownEvent {
    #[step(wait = NoSuchEvent, key = order, pivot)]
    async fn paid(_: &mut Data, _event: NoSuchEvent, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
