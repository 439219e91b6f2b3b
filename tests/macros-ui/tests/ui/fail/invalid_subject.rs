use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "orders..create", reply = ())]
struct EmptyToken;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "orders create", reply = ())]
struct Space;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "orders.*")]
struct Wildcard;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "orders.>.x")]
struct FullWildcardNotLast;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ok.subject", reply = ())]
struct Fine;

#[catga::command(subject = "ok.", queue = "has space")]
async fn fine(_: Fine) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
