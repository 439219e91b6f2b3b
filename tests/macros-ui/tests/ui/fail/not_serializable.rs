use catga::prelude::*;

#[derive(Debug, Command)]
#[catga(subject = "ui.ping", reply = ())]
struct Ping;

fn main() {}
