use catga::prelude::*;
use std::rc::Rc;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.ping", reply = ())]
struct Ping;

#[catga::command]
async fn ping(_: Ping, ctx: Context) -> Result<(), HandlerError> {
    let local = Rc::new(1);
    ctx.send(Ping).await?;
    drop(local);
    Ok(())
}

fn main() {}
