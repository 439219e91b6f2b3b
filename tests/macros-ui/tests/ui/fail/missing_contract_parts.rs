use catga::prelude::*;

#[derive(Debug, Serialize, Deserialize, Command)]
struct NoAttribute;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.ping")]
struct NoReply;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(codec = catga::Json)]
struct NoSubject;

fn main() {}
