use catga::prelude::*;

const SUBJECT: &str = "ui.ping";

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = SUBJECT, reply = ())]
struct Ping;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.pong", reply = ())]
struct Pong;

#[catga::command(queue = 42, timeout = "soon", idempotent = "yes")]
async fn pong(_: Pong) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
