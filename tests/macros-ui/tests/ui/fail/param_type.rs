use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.ping", reply = ())]
struct Ping;

#[catga::command]
async fn ping(_: Ping, ctx: String) -> Result<(), HandlerError> {
    let _ = ctx;
    Ok(())
}

fn main() {}
