//! Catga used under the name `cg`: contracts and handlers with `crate = cg`.
#![deny(warnings)]

use cg::{Command, Context, Event, HandlerError};
use serde::{Deserialize, Serialize};

/// A command.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(crate = cg, subject = "renamed.ping", reply = String)]
pub struct Ping;

/// An event.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(crate = cg, subject = "renamed.pinged")]
pub struct Pinged;

/// Answers pings.
#[cg::command(crate = cg, queue = "renamed")]
pub async fn ping(_: Ping, ctx: Context) -> Result<String, HandlerError> {
    ctx.publish(Pinged).await?;
    Ok("pong".into())
}

/// Hears pings.
#[cg::event(crate = cg)]
pub async fn pinged(_: Pinged) -> Result<(), HandlerError> {
    Ok(())
}

/// Saga data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Visits {
    /// Steps run.
    pub n: u32,
}

/// A saga under the renamed crate.
pub struct Visit;

#[cg::saga(crate = cg, name = "renamed-visit")]
impl Visit {
    #[step(compensate = unvisit)]
    async fn visit(data: &mut Visits, ctx: &cg::saga::SagaContext) -> Result<(), cg::saga::StepError> {
        ctx.send(Ping).await?;
        data.n += 1;
        Ok(())
    }

    async fn unvisit(_: &Visits, _: &cg::saga::SagaContext) -> Result<(), cg::saga::StepError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "current_thread")]
    async fn works_under_another_name() {
        let app = cg::Catga::builder().start().await.unwrap();
        assert_eq!(app.send(super::Ping).await.unwrap(), "pong");
        assert_eq!(app.handlers().len(), 2);
        let outcome = app.start_saga::<super::Visit>("v-1", super::Visits { n: 0 }).await.unwrap();
        assert_eq!(outcome, cg::saga::SagaOutcome::Completed);
        app.shutdown().await;
    }
}
