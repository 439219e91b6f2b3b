use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.ping", reply = (), retries = 3)]
struct Ping;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "ui.pinged", reply = ())]
struct Pinged;

#[catga::command(queu = "workers")]
async fn ping(_: Ping) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
