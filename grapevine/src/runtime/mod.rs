//! The runtimes a driver runs on: a tokio task, or a busy-poll thread.
//! Both call the same runtime-agnostic turns of [`crate::driver`]; they
//! differ only in how they wait.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use grapevine_core::state::State;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{Instrument as _, Span};

use crate::driver::publisher::{DriverTx, PublisherShared};
use crate::driver::subscriber::{Outputs, SubscriberShared};
use crate::driver::Driver;

mod busy_poll;
mod tokio_task;

/// Buffers of the batch a subscriber's driver receives into between the
/// snapshot datagrams of a batch (see `driver::subscriber::handle_batch`).
const MORE_BUFFERS: usize = 4;

/// A running driver, as its handle holds it.
pub(crate) enum Running {
    /// A tokio task.
    Task(JoinHandle<()>),
    /// A busy-poll thread: told to stop through a flag, reports its end.
    Thread(oneshot::Receiver<()>),
}

impl Running {
    /// Waits until the driver has stopped (after it was told to).
    pub(crate) async fn join(self) {
        match self {
            Running::Task(task) => {
                let _ = task.await;
            }
            Running::Thread(done) => {
                let _ = done.await;
            }
        }
    }

    /// Stops a tokio task at once; a thread is stopped by its flag.
    pub(crate) fn abort(&self) {
        if let Running::Task(task) = self {
            task.abort();
        }
    }
}

/// Starts a publisher's driver, which sends through `tx`; its log lines
/// are in `span`.
pub(crate) fn spawn_publisher<S: State + Send + 'static>(
    driver: Driver,
    shared: &Arc<PublisherShared<S>>,
    tx: DriverTx,
    span: Span,
) -> std::io::Result<Running> {
    let shared = Arc::clone(shared);
    // Moved into the task or thread, so dropped with it even if it never
    // ran.
    let gone = Gone(Arc::clone(&shared));
    match driver {
        Driver::Tokio => Ok(Running::Task(tokio::spawn(
            async move {
                let _gone = gone;
                tokio_task::publisher(shared, tx).await;
            }
            .instrument(span),
        ))),
        Driver::BusyPoll => spawn_thread("grapevine-pub", move || {
            let _gone = gone;
            span.in_scope(|| busy_poll::publisher(&shared, tx));
        }),
    }
}

/// Held by a publisher's driver: however the driver ends (returns, is
/// aborted, panics, or its runtime drops it), the handle learns of it.
struct Gone<S: State>(Arc<PublisherShared<S>>);

impl<S: State> Drop for Gone<S> {
    fn drop(&mut self) {
        self.0.driver_stopped();
    }
}

/// Starts a subscriber's driver, which owns `out` (see [`Outputs`]).
/// Its log lines are in `span`.
pub(crate) fn spawn_subscriber<S: State + Send + 'static>(
    driver: Driver,
    shared: &Arc<SubscriberShared<S>>,
    out: Outputs,
    span: Span,
) -> std::io::Result<Running> {
    let shared = Arc::clone(shared);
    match driver {
        Driver::Tokio => Ok(Running::Task(tokio::spawn(
            tokio_task::subscriber(shared, out).instrument(span),
        ))),
        Driver::BusyPoll => spawn_thread("grapevine-sub", move || {
            span.in_scope(|| busy_poll::subscriber(&shared, &out));
        }),
    }
}

fn spawn_thread(name: &str, run: impl FnOnce() + Send + 'static) -> std::io::Result<Running> {
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            run();
            let _ = done_tx.send(());
        })?;
    Ok(Running::Thread(done_rx))
}

/// Whether a stop flag is raised.
fn stopped(flag: &AtomicBool) -> bool {
    flag.load(std::sync::atomic::Ordering::Acquire)
}
