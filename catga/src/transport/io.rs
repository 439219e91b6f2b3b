//! The instance's I/O thread: a thread of its own with a single-threaded
//! tokio runtime, where everything that moves a NATS message in or out of
//! the instance runs — the connection itself (async-nats's connection
//! task), the intake of every subscription, the reply inbox, the liveness
//! signals and the service API. Handlers run on the program's runtime.
//!
//! Why a thread of its own: a handler that keeps a worker of the program's
//! runtime busy (CPU-bound work, a blocking call) must not stop the
//! instance from answering, taking in requests and signalling that it holds
//! them. On tokio's multi-threaded runtime it would: a task woken by a task
//! that then blocks its worker waits in that worker's "LIFO slot", which no
//! other worker takes from (tokio-rs/tokio#4941). A handler that publishes
//! and then computes for 3 s would leave the connection's task there — no
//! reply, request or signal for 3 s, and every sender re-sending. A wake
//! that comes from another runtime is queued on this one instead.
//!
//! The thread stops when the [`Io`] is dropped; tasks still on it are
//! dropped with its runtime.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// The I/O thread of one instance; stops when dropped.
pub(crate) struct Io {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl Io {
    /// Start the thread, named `name` (`catga-io` and the instance id,
    /// cut to what Linux shows).
    pub(crate) fn start(name: &str) -> Result<Io> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (handed, handle) = std::sync::mpsc::sync_channel(1);
        let failed = |e: std::io::Error| Error::Config(format!("cannot start the NATS I/O thread: {e}"));
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(handed.send(Err(e))),
                };
                let _ = handed.send(Ok(runtime.handle().clone()));
                // Until the `Io` is dropped (or forgotten: then its sender
                // is dropped with it, which ends this too).
                let _ = runtime.block_on(stopped);
            })
            .map_err(failed)?;
        let handle = handle
            .recv()
            .map_err(|_| Error::Config("the NATS I/O thread ended before it started".into()))?
            .map_err(failed)?;
        Ok(Io { handle, stop: Some(stop) })
    }

    /// Run `task` on the I/O thread.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// The I/O thread's runtime.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The reason for the thread: a task on it runs when woken even if the
    /// task that woke it then blocks its worker (which, on the same
    /// multi-threaded runtime, would strand it in the worker's LIFO slot).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_on_the_io_thread_runs_while_the_worker_that_woke_it_is_blocked() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let io = Io::start("catga-io-test").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let ran = Arc::new(AtomicBool::new(false));
        io.spawn({
            let ran = ran.clone();
            async move {
                if rx.recv().await.is_some() {
                    ran.store(true, Ordering::SeqCst);
                }
            }
        });
        // Wake it, then block this worker until it has run (or 10 s).
        let ran_while_blocked = tokio::spawn(async move {
            tx.send(()).unwrap();
            let give_up = Instant::now() + Duration::from_secs(10);
            while !ran.load(Ordering::SeqCst) && Instant::now() < give_up {
                std::hint::spin_loop();
            }
            ran.load(Ordering::SeqCst)
        })
        .await
        .unwrap();
        assert!(ran_while_blocked, "the I/O task waited for the worker that woke it");
    }

    #[test]
    fn dropping_it_stops_the_thread_and_its_tasks() {
        let io = Io::start("catga-io-test").unwrap();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        struct Dropped(std::sync::mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let dropped = Dropped(done_tx);
        io.spawn(async move {
            let _dropped = dropped;
            std::future::pending::<()>().await;
        });
        drop(io);
        done.recv_timeout(Duration::from_secs(5)).expect("the pending task was dropped with the runtime");
    }
}
