use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.ping", reply = ())]
struct Ping;

#[catga::command]
async fn none() -> Result<(), HandlerError> {
    Ok(())
}

#[catga::command]
async fn three(_: Ping, _: Context, _: u32) -> Result<(), HandlerError> {
    Ok(())
}

#[catga::event]
async fn no_result(_: Ping) {}

fn main() {}
