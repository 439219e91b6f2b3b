use catga::prelude::*;

// `durable` is a bare flag; a value is refused, whatever it is.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.durable.capture", reply = (), durable = true)]
struct Capture;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "ui.durable.captured", durable, durable)]
struct Captured;

fn main() {}
