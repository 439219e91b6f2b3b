//! The harness's hold on saga steps ([`Harness::step`](super::Harness::step)).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::future::BoxFuture;
use crate::instance::SagaGate;

/// The harness's hold on saga steps: while holding, each attempt waits for
/// a permit of its saga ([`Harness::step`]).
#[derive(Default)]
pub(super) struct Steps {
    pub(super) holding: AtomicBool,
    /// By `saga/id`: permits granted, attempts let through, and whether an
    /// attempt waits now.
    sagas: Mutex<HashMap<String, Gate>>,
    pub(super) changed: tokio::sync::Notify,
}

#[derive(Default)]
pub(super) struct Gate {
    pub(super) permits: u32,
    pub(super) ran: u64,
    pub(super) waiting: bool,
}

impl Steps {
    pub(super) fn gate<T>(&self, key: &str, f: impl FnOnce(&mut Gate) -> T) -> T {
        let mut sagas = self.sagas.lock().unwrap_or_else(|e| e.into_inner());
        f(sagas.entry(key.to_owned()).or_default())
    }
}

impl SagaGate for Steps {
    fn before<'a>(&'a self, saga: &'static str, id: &'a str, _step: &'static str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let key = format!("{saga}/{id}");
            loop {
                let passed = self.gate(&key, |g| {
                    let pass = !self.holding.load(Ordering::SeqCst) || g.permits > 0;
                    if pass {
                        g.permits = g.permits.saturating_sub(1);
                        g.ran += 1;
                    }
                    g.waiting = !pass;
                    pass
                });
                self.changed.notify_waiters();
                if passed {
                    return;
                }
                // Registered before the look, so a permit given after it wakes us.
                let granted = self.changed.notified();
                if self.gate(&key, |g| g.permits > 0) || !self.holding.load(Ordering::SeqCst) {
                    continue;
                }
                granted.await;
            }
        })
    }
}
