use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.ping", subject = "ui.pong", reply = ())]
struct Ping;

#[catga::command(queue = "a", queue = "b")]
async fn ping(_: Ping) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
