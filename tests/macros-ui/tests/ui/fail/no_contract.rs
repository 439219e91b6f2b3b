use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
struct NotACommand;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NotAnEvent;

#[catga::command]
async fn handle(_: NotACommand) -> Result<(), HandlerError> {
    Ok(())
}

#[catga::event]
async fn hear(_: NotAnEvent) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
