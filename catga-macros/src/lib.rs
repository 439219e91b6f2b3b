//! Procedural macros of [Catga](https://docs.rs/catga). Use them through the
//! `catga` crate (`catga::command`, `catga::event`, `catga::Command`,
//! `catga::Event`); the generated code refers to `::catga` (or the path
//! given with `crate = ...`).
//!
//! Layout: [`attr`] parses arguments, [`subject`] holds the NATS subject
//! rules, [`contract`] derives message contracts, [`handler`] expands
//! handler attributes, [`saga`] checks and expands `#[saga]`. Set `CATGA_MACROS_DEBUG=1` while building to print
//! every expansion to stderr.

mod attr;
mod contract;
mod handler;
mod saga;
mod subject;

use proc_macro::TokenStream;

/// Declare a command contract: `#[catga(subject = "...", reply = Type)]`,
/// optionally `codec = Type`, `validate`, `durable`, `crate = path`.
#[proc_macro_derive(Command, attributes(catga))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    contract::expand(contract::Kind::Command, input.into()).into()
}

/// Declare an event contract: `#[catga(subject = "...")]`, optionally
/// `codec = Type`, `validate`, `durable`, `crate = path`.
#[proc_macro_derive(Event, attributes(catga))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    contract::expand(contract::Kind::Event, input.into()).into()
}

/// Register an `async fn` as the handler of a command type.
///
/// Keys: `subject` (optional; must equal the type's), `queue` (default: the
/// service name), `timeout` (e.g. `"5s"`), `crate` (path of a renamed
/// `catga` dependency).
#[proc_macro_attribute]
pub fn command(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(handler::Kind::Command, args.into(), item.into()).into()
}

/// Register an `async fn` as a handler of an event type: broadcast (every
/// instance) by default, or once per queue group with `queue = "..."`.
/// Other keys as for [`macro@command`].
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(handler::Kind::Event, args.into(), item.into()).into()
}

/// Declare a saga on the `impl` block that holds all its steps and
/// compensations.
///
/// `#[saga(name = "...", data = Type)]` (both optional: the name defaults to
/// the type's, the data type to the first step's `&mut Data`). Steps are
/// marked `#[step(compensate = f)]` (compensatable), `#[step(pivot)]`, or
/// `#[step]` (retriable); keys `retry = n` and `timeout = "5s"` apply to any
/// step. Steps are `async fn step(data: &mut Data, ctx: &SagaContext) ->
/// Result<(), StepError>`, compensations `async fn undo(data: &Data, ctx:
/// &SagaContext) -> Result<(), StepError>`.
#[proc_macro_attribute]
pub fn saga(args: TokenStream, item: TokenStream) -> TokenStream {
    saga::expand(args.into(), item.into()).into()
}

/// Print an expansion when `CATGA_MACROS_DEBUG` is set.
fn debug_print(what: &str, tokens: &proc_macro2::TokenStream) {
    if std::env::var_os("CATGA_MACROS_DEBUG").is_some() {
        eprintln!("--- catga {what} expansion ---\n{tokens}");
    }
}
