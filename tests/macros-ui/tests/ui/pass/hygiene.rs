// Expansions must survive a hostile user namespace and `deny(warnings)`.
#![deny(warnings)]
#![allow(dead_code)]

use catga::prelude::*;

// Shadow what naive expansions would name unqualified.
type Result<T> = std::result::Result<T, HandlerError>;
struct Ok;
struct Some;
struct None;
struct Box;
mod core {}
mod std_ {}

/// A command using every contract key.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.hygiene.do", reply = Vec<u8>, codec = catga::Json, validate)]
pub struct Do {
    n: u8,
}

impl Validate for Do {
    fn validate(&self) -> Result<()> {
        std::result::Result::Ok(())
    }
}

/// An event.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "ui.hygiene.done")]
pub struct Done;

/// Uses the shadowed `Result` alias: no `Result<T, E>` to read the Ok type
/// from, rustc still checks it.
#[catga::command(subject = "ui.hygiene.do", queue = "hygiene", timeout = "2s")]
async fn r#do(cmd: Do, ctx: Context) -> Result<Vec<u8>> {
    ctx.publish(Done).await?;
    std::result::Result::Ok(vec![cmd.n])
}

#[catga::event]
async fn done(_: Done) -> std::result::Result<(), HandlerError> {
    std::result::Result::Ok(())
}

#[catga::event(queue = "hygiene")]
async fn done_once(_: Done, _ctx: catga::Context) -> Result<()> {
    std::result::Result::Ok(())
}

/// Handlers named like the expansion's own bindings.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "ui.hygiene.{braces}", reply = ())]
pub struct Braces;

#[catga::command(subject = "ui.hygiene.{braces}")]
async fn delivery(_: Braces, context: Context) -> Result<()> {
    let _ = context;
    std::result::Result::Ok(())
}

#[catga::event]
async fn message(_: Done) -> Result<()> {
    std::result::Result::Ok(())
}

/// A saga with every step kind and key, its data named like generated items.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Data {
    n: u32,
}

pub struct Flow;

#[catga::saga(name = "ui.hygiene-flow", data = Data)]
impl Flow {
    #[step(compensate = undo_first, retry = 2, timeout = "5s")]
    async fn first(data: &mut Data, _ctx: &catga::saga::SagaContext) -> Result<()> {
        data.n += 1;
        std::result::Result::Ok(())
    }

    #[step(pivot)]
    async fn pivot(_data: &mut Data, ctx: &catga::saga::SagaContext) -> Result<()> {
        ctx.send(Braces).await?;
        std::result::Result::Ok(())
    }

    #[step]
    async fn last(_data: &mut Data, _ctx: &catga::saga::SagaContext) -> std::result::Result<(), std::io::Error> {
        std::result::Result::Ok(())
    }

    async fn undo_first(_data: &Data, _ctx: &catga::saga::SagaContext) -> Result<()> {
        std::result::Result::Ok(())
    }

    /// Other functions may live in the block too.
    pub fn helper() -> u32 {
        7
    }
}

fn main() {}
