use catga::prelude::*;
use catga::saga::{SagaContext, StepError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Other {}

struct Missing;

#[catga::saga]
impl Missing {
    // A compensation that does not exist.
    #[step(compensate = refund)]
    async fn charge(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct Shapes;

#[catga::saga]
impl Shapes {
    #[step(compensate = takes_mut)]
    async fn one(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(compensate = not_async)]
    async fn two(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(compensate = wrong_data)]
    async fn three(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    // Compensations read the data; they do not change it.
    async fn takes_mut(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    fn not_async(_: &Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn wrong_data(_: &Other, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct Shared;

#[catga::saga]
impl Shared {
    #[step(compensate = undo)]
    async fn a(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(compensate = undo)]
    async fn b(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn undo(_: &Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
