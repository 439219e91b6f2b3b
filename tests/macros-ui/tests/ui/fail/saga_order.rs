use catga::prelude::*;
use catga::saga::{SagaContext, StepError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {}

struct NoUndoBeforePivot;

#[catga::saga]
impl NoUndoBeforePivot {
    #[step]
    async fn notify(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(pivot)]
    async fn create(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct UndoAfterPivot;

#[catga::saga]
impl UndoAfterPivot {
    #[step(pivot)]
    async fn create(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(compensate = refund)]
    async fn charge(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn refund(_: &Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct TwoPivots;

#[catga::saga]
impl TwoPivots {
    #[step(pivot)]
    async fn first(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(pivot)]
    async fn second(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

struct NoSteps;

#[catga::saga(data = Data)]
impl NoSteps {
    async fn helper(_: &Data) {}
}

fn main() {}
