use catga::prelude::*;
use catga::saga::{SagaContext, StepError};

// A value of the wrong form is one error at the value; the keys after it are
// still read (the invalid subject is reported too), and nothing says the
// key is missing.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(reply = "Pong", subject = "ui wrong")]
struct Ping;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(codec = "json", crate = "catga", subject = "ui.wrong.pinged", retries = 1)]
struct Pinged;

// The contract's mistakes are not reported again where the types are used.
#[catga::command]
async fn ping(_: Ping) -> Result<String, HandlerError> {
    Ok(String::new())
}

#[catga::event]
async fn pinged(_: Pinged) -> Result<(), HandlerError> {
    Ok(())
}

#[catga::command(crate = "catga", queue = "has space")]
async fn pong(_: Ping) -> Result<String, HandlerError> {
    Ok(String::new())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {}

struct Flow;

#[catga::saga(data = "Data", name = "has space")]
impl Flow {
    // Still compensatable: no false "comes before the pivot" error.
    #[step(compensate = "undo", retry = -1)]
    async fn one(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(pivot = true, timeout = 5)]
    async fn two(_: &mut Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn undo(_: &Data, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

fn main() {}
