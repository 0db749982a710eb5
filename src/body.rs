//! The kinds of task body: an async closure polled on the worker, or a
//! blocking closure run on tokio's blocking pool.

use std::future::Future;
use std::sync::Arc;

use crate::panic::{catch_unwind, guard};
use crate::task::TaskContext;

mod sealed {
    pub trait Sealed {}
}

/// The kind of a task's body: [`AsyncBody`] or [`BlockingBody`].
///
/// It only appears in [`TaskBuilder`](crate::TaskBuilder)'s type; it is
/// sealed and has nothing to call.
pub trait Body<T, E>: sealed::Sealed + Send + 'static {
    /// Starts an attempt. The future yields `Err(panic message)` if the body panicked.
    #[doc(hidden)]
    fn start(
        &self,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Result<T, E>, String>> + Send + 'static;
}

/// The body of a task made by [`Cluster::task`](crate::Cluster::task): an
/// async closure, polled on the worker that runs the attempt.
pub struct AsyncBody<F>(pub(crate) F);

impl<F> sealed::Sealed for AsyncBody<F> {}

impl<F, Fut, T, E> Body<T, E> for AsyncBody<F>
where
    F: Fn(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    fn start(
        &self,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Result<T, E>, String>> + Send + 'static {
        catch_unwind((self.0)(ctx))
    }
}

/// The body of a task made by [`Cluster::blocking_task`](crate::Cluster::blocking_task):
/// a blocking closure, run on tokio's blocking pool while it holds a worker slot.
/// Shared through an `Arc` because each attempt hands it to another thread.
pub struct BlockingBody<F>(pub(crate) Arc<F>);

impl<F> sealed::Sealed for BlockingBody<F> {}

impl<F, T, E> Body<T, E> for BlockingBody<F>
where
    F: Fn(TaskContext) -> Result<T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn start(
        &self,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Result<T, E>, String>> + Send + 'static {
        let f = Arc::clone(&self.0);
        // Lets `stop` from inside the body know it runs on its own worker.
        let cluster = crate::inside::current_worker();
        let join = tokio::task::spawn_blocking(move || {
            crate::inside::blocking_body(cluster, || guard(|| f(ctx)))
        });
        async move {
            match join.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(crate::panic::message(e.into_panic())),
                Err(_) => Err("the runtime shut down while the blocking body ran".to_owned()),
            }
        }
    }
}

impl<F> std::fmt::Debug for AsyncBody<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncBody")
    }
}

impl<F> std::fmt::Debug for BlockingBody<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockingBody")
    }
}
