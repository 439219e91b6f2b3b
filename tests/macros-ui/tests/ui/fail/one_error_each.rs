use catga::prelude::*;

// Each handler here has one mistake, and gets one error for it: nothing
// from the registration, nothing pointing into catga.

#[derive(Debug, Serialize, Deserialize)]
struct NotACommand;

// With `subject` too.
#[catga::command(subject = "ui.one.none")]
async fn no_contract(_: NotACommand) -> Result<(), HandlerError> {
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.one.ping", reply = u64)]
struct Ping;

type Answer<T> = std::result::Result<T, HandlerError>;

// The wrong `Ok` type, read through an alias.
#[catga::command]
async fn through_alias(_: Ping) -> Answer<String> {
    Ok(String::new())
}

// An error type that is not a `HandlerError`.
#[catga::command]
async fn wrong_error(_: Ping) -> Result<u64, String> {
    Ok(1)
}

// Not a `Result` at all.
#[catga::command]
async fn not_a_result(_: Ping) -> u64 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "ui.one.pinged")]
struct Pinged;

type Count = u8;

// An event's `Ok` type that is not `()` under another name.
#[catga::event]
async fn counted(_: Pinged) -> Result<Count, HandlerError> {
    Ok(0)
}

// The context by reference.
#[catga::event]
async fn borrowed(_: Pinged, _: &Context) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
