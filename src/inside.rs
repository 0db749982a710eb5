//! Knowing whether the caller is a task body of a given cluster, so that
//! `stop` and `drain` called from a body do not wait for their own worker.
//!
//! A cluster is named by the address of its shared state (stable while any
//! of its workers lives). An async body is polled by its worker, whose whole
//! future runs in a task-local scope naming the cluster; a blocking body runs
//! on another thread, which carries the same name in a thread-local while
//! the body runs.

use std::cell::Cell;
use std::future::Future;
use std::sync::{Arc, Weak};

use crate::shared::Shared;

tokio::task_local! {
    /// Set for the whole future of each worker: its cluster, which names it
    /// (by address, see [`key`]) and which waits inside a body
    /// (`crate::wait`) talk to. One word, as the scope swaps it in and out
    /// at every poll of the worker.
    static WORKER_OF: Weak<Shared>;
}

thread_local! {
    /// Set while a blocking body runs on this thread (0: none).
    static BLOCKING_BODY_OF: Cell<usize> = const { Cell::new(0) };
}

/// The name of the cluster whose state is `shared`.
pub(crate) fn key(shared: &Arc<Shared>) -> usize {
    Arc::as_ptr(shared) as usize
}

/// Runs a worker's future with its cluster's name in scope.
pub(crate) fn worker<F: Future>(shared: &Arc<Shared>, fut: F) -> impl Future<Output = F::Output> {
    WORKER_OF.scope(Arc::downgrade(shared), fut)
}

/// The cluster whose worker is polling the caller, if any: read where a
/// blocking body is started, to hand the name on to its thread.
pub(crate) fn current_worker() -> Option<usize> {
    WORKER_OF.try_with(|w| Weak::as_ptr(w) as usize).ok()
}

/// The cluster whose worker is polling the caller, if any (and alive).
pub(crate) fn current_cluster() -> Option<Arc<Shared>> {
    WORKER_OF.try_with(Weak::upgrade).ok().flatten()
}

/// Runs a blocking body with its cluster's name (from [`current_worker`]) set.
pub(crate) fn blocking_body<R>(key: Option<usize>, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            BLOCKING_BODY_OF.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(BLOCKING_BODY_OF.with(|c| c.replace(key.unwrap_or(0))));
    f()
}

/// `true` if the caller runs inside a task body (or on a worker) of the
/// cluster named `key`.
pub(crate) fn is_inside(key: usize) -> bool {
    current_worker() == Some(key) || BLOCKING_BODY_OF.with(Cell::get) == key
}
