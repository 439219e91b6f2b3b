use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.ping", reply = ())]
struct Ping;

#[catga::command]
fn ping(_: Ping) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
