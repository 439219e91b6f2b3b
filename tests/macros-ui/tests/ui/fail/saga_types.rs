use catga::prelude::*;
use catga::saga::{SagaContext, StepError};
use std::rc::Rc;

// Saga data must persist: no Serialize here.
#[derive(Debug, Clone)]
struct Unsaved {}

struct NotSerializable;

#[catga::saga]
impl NotSerializable {
    #[step]
    async fn one(_: &mut Unsaved, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {}

struct NotSend;

#[catga::saga]
impl NotSend {
    // Holds an Rc across an await: the step's future is not Send.
    #[step]
    async fn one(_: &mut Data, ctx: &SagaContext) -> Result<(), StepError> {
        let local = Rc::new(1);
        ctx.publish(Seen).await?;
        drop(local);
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "ui.saga.seen")]
struct Seen;

fn main() {}
