//! The harness's middleware: injects the faults a test asked for and
//! records every handling.

use std::sync::Arc;
use std::time::Duration;

use super::{Handled, Log};
use crate::error::HandlerError;
use crate::future::BoxFuture;
use crate::middleware::{Handling, Middleware, Next};

/// What an injected fault does to a handling.
#[derive(Clone)]
pub(super) enum Fault {
    /// Fail with this error; the handler does not run.
    Fail(HandlerError),
    /// Wait this long, then run the handler.
    Delay(Duration),
    /// Panic where the handler would run (the pipeline catches it).
    Panic,
}

/// The harness's middleware: injects failures, records every handling.
pub(super) struct Recorder(pub(super) Arc<Log>);

impl Middleware for Recorder {
    fn handle<'a>(&'a self, handling: &'a Handling<'a>, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let record = handling.record;
            let injected = {
                let mut faults = self.0.faults.lock().unwrap_or_else(|e| e.into_inner());
                match faults.get_mut(record.subject) {
                    Some((left, error)) if *left > 0 => {
                        *left -= 1;
                        Some(error.clone())
                    }
                    _ => None,
                }
            };
            let outcome = match injected {
                Some(Fault::Fail(error)) => Err(error),
                Some(Fault::Delay(by)) => {
                    tokio::time::sleep(by).await;
                    next.run().await
                }
                Some(Fault::Panic) => {
                    // Recorded first: the panic unwinds past this stage.
                    let error = HandlerError::new(HandlerError::PANIC, "panic_next");
                    self.0.handlings.lock().unwrap_or_else(|e| e.into_inner()).push(Handled {
                        handler: record.name,
                        subject: record.subject,
                        message_id: handling.metadata.message_id,
                        error: Some(error),
                    });
                    panic!("the test harness made `{}` panic (panic_next)", record.name)
                }
                None => next.run().await,
            };
            let handled = Handled {
                handler: record.name,
                subject: record.subject,
                message_id: handling.metadata.message_id,
                error: outcome.as_ref().err().cloned(),
            };
            self.0.handlings.lock().unwrap_or_else(|e| e.into_inner()).push(handled);
            self.0.changed.notify_waiters();
            outcome
        })
    }
}
