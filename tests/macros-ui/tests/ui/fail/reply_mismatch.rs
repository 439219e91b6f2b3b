use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "orders.create", reply = u64)]
struct CreateOrder;

#[catga::command]
async fn create(_: CreateOrder) -> Result<String, HandlerError> {
    Ok(String::new())
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "orders.created")]
struct OrderCreated;

#[catga::event]
async fn created(_: OrderCreated) -> Result<u32, HandlerError> {
    Ok(1)
}

fn main() {}
