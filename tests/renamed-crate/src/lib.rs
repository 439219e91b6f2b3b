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

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "current_thread")]
    async fn works_under_another_name() {
        let app = cg::Catga::builder().start().await.unwrap();
        assert_eq!(app.send(super::Ping).await.unwrap(), "pong");
        assert_eq!(app.handlers().len(), 2);
        app.shutdown().await;
    }
}
