use catga::prelude::*;
use catga::saga::{SagaContext, StepError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {}

struct Keys;

#[catga::saga(name = "has space", durable, deadline = "1w")]
impl Keys {
    #[step(retry = "many", compensate = undo, undo_with = x)]
    async fn one(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(pivot, timeout = "soon")]
    fn two(_: &mut Data) -> Result<(), StepError> {
        Ok(())
    }

    async fn undo(_: &Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
