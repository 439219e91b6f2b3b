use catga::prelude::*;
use catga::saga::{SagaContext, StepError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Other {}

struct WrongData;

// Every step and compensation works on the saga's one data type.
#[catga::saga(data = Data)]
impl WrongData {
    #[step(compensate = undo)]
    async fn one(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(pivot)]
    async fn two(_: &mut Other, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn undo(_: &Other, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct Twice;

#[catga::saga]
impl Twice {
    #[step]
    async fn again(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step]
    async fn again(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
