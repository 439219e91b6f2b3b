// `durable` on both contract kinds, next to the other keys.
use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.durable.charge", reply = u64, durable, validate)]
struct Charge {
    cents: u64,
}

impl Validate for Charge {
    fn validate(&self) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(durable, subject = "ui.durable.charged")]
struct Charged;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "ui.durable.noted")]
struct Noted;

#[catga::command]
async fn charge(c: Charge) -> Result<u64, HandlerError> {
    Ok(c.cents)
}

const _: () = assert!(<Charge as catga::Message>::DURABLE);
const _: () = assert!(<Charged as catga::Message>::DURABLE);
const _: () = assert!(!<Noted as catga::Message>::DURABLE);

fn main() {}
