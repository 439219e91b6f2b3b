use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "orders.create", reply = ())]
struct CreateOrder;

#[catga::command(subject = "orders.cancel")]
async fn create(_: CreateOrder) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
