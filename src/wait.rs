//! Waiting for a task's outcome by id from outside the pool, even before
//! the task is submitted: [`Cluster::watch`] and its future, [`Watch`].
//! Also the waits inside a body that free the worker while they wait
//! (`TaskContext::wait_for` and `wait`; the mechanism is `crate::park`).

use std::any::type_name;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::cell::copy_for_subscriber;
use crate::cluster::Cluster;
use crate::engine::{PendingWatch, Phase};
use crate::error::{DependencyCause, DependencyError, TaskError, WaitError};
use crate::job::{Answer, Job, Outcome, SubscribeRequest};
use crate::panic::drop_guarded;
use crate::shared::Shared;
use crate::task::TaskId;

type Attached<T, E> = Result<oneshot::Receiver<Outcome<T, E>>, WaitError>;

/// A watch's typed end, kept by the engine until its task is submitted.
struct WatchTx<T, E> {
    id: TaskId,
    tx: oneshot::Sender<Attached<T, E>>,
}

impl<T, E> PendingWatch for WatchTx<T, E>
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    fn attach(self: Box<Self>, job: Arc<dyn Job>) -> Box<dyn Send> {
        let mut req = SubscribeRequest::<T, E> {
            cloner: <Outcome<T, E> as Clone>::clone,
            answer: None,
            hook: None,
        };
        let attached = match job.subscribe(&mut req) {
            Err(found) => Err(WaitError::TypeMismatch {
                id: self.id,
                expected: type_name::<Result<T, E>>(),
                found,
            }),
            // A task just admitted has not finished: its outcome is to come.
            Ok(()) => match req.answer {
                Some(Answer::Pending(rx)) => Ok(rx),
                _ => Err(WaitError::ShutDown(self.id)),
            },
        };
        // Sent after the engine's lock is released (`SendLater`): the
        // watch may be awaited by a parked attempt, whose wake takes the lock.
        Box::new(SendLater(Some((self.tx, attached))))
    }
}

/// Sends its value when dropped: put in the engine's trash, which
/// `Shared::unlock` drops after unlocking.
struct SendLater<T>(Option<(oneshot::Sender<T>, T)>);

impl<T> Drop for SendLater<T> {
    fn drop(&mut self) {
        if let Some((tx, v)) = self.0.take() {
            // A watch dropped meanwhile is not an error; what comes back
            // holds no user value.
            let _ = tx.send(v);
        }
    }
}

enum State<T, E> {
    /// Subscribed: the outcome is to come.
    Subscribed(oneshot::Receiver<Outcome<T, E>>),
    /// Registered by name: the subscription comes when the task does.
    Registered(oneshot::Receiver<Attached<T, E>>),
    /// Answered at once (an error, or an outcome copied from the cache).
    Ready(Option<Result<Outcome<T, E>, WaitError>>),
}

/// The future of [`Cluster::watch`]: resolves to the task's outcome, or to
/// a [`WaitError`] (timed out, wrong types, cluster shut down first).
///
/// Dropping it before it resolves forgets its registration at once: a
/// watch for an id that never comes leaves nothing behind.
#[must_use = "a watch does nothing unless awaited"]
pub struct Watch<T, E> {
    id: TaskId,
    state: State<T, E>,
    deadline: Option<Instant>,
    timeout: Duration,
    /// Made at the first poll (a `Sleep` needs a runtime).
    sleep: Option<Pin<Box<Sleep>>>,
    /// The engine's key of a registration still waiting for its task.
    registered: Option<(Weak<Shared>, Arc<str>, u64)>,
}

impl<T, E> Watch<T, E> {
    /// The id watched.
    pub fn id(&self) -> TaskId {
        self.id.clone()
    }

    fn unregister(&mut self) {
        if let Some((shared, name, key)) = self.registered.take() {
            if let Some(shared) = shared.upgrade() {
                let w = shared.locked(|core| core.unwatch(&name, key));
                drop(w);
            }
        }
    }
}

impl<T, E> Drop for Watch<T, E> {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl<T, E> Unpin for Watch<T, E> {}

impl<T, E> Future for Watch<T, E> {
    type Output = Result<Outcome<T, E>, WaitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Ready(r) => {
                    return Poll::Ready(
                        r.take()
                            .unwrap_or(Err(WaitError::ShutDown(this.id.clone()))),
                    )
                }
                State::Subscribed(rx) => {
                    if let Poll::Ready(r) = Pin::new(rx).poll(cx) {
                        return Poll::Ready(Ok(r.unwrap_or_else(|_| Err(TaskError::Shutdown))));
                    }
                    break;
                }
                State::Registered(rx) => match Pin::new(rx).poll(cx) {
                    Poll::Ready(r) => {
                        // The engine let go of the registration.
                        this.registered = None;
                        this.state = match r {
                            Ok(Ok(sub)) => State::Subscribed(sub),
                            Ok(Err(e)) => State::Ready(Some(Err(e))),
                            Err(_) => State::Ready(Some(Err(WaitError::ShutDown(this.id.clone())))),
                        };
                    }
                    Poll::Pending => break,
                },
            }
        }
        let Some(deadline) = this.deadline else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.unregister();
            this.state = State::Ready(None);
            return Poll::Ready(Err(WaitError::TimedOut {
                id: this.id.clone(),
                timeout: this.timeout,
            }));
        }
        Poll::Pending
    }
}

impl<T, E> fmt::Debug for Watch<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("id", &self.id)
            .field("registered", &self.registered.is_some())
            .finish()
    }
}

impl Cluster {
    /// Waits, for at most `timeout`, for the outcome of the task `id`, which
    /// may not even be submitted yet: pending, running or cached, it is
    /// subscribed to at once (as [`subscribe`](Self::subscribe)); unknown,
    /// the watch waits for a task with this id to be submitted, and then for
    /// its outcome. The timeout covers both waits.
    ///
    /// Dropping the watch forgets it at once, so a watch for an id that
    /// never comes costs nothing after it times out or is dropped
    /// ([`ClusterStats::watchers`](crate::ClusterStats::watchers) counts
    /// those still waiting). A task that finished uncached before the watch
    /// began is unknown, so the watch waits for the next task with that id.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, WaitError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// // Nobody has submitted "report" yet.
    /// let watch = cluster.watch::<u32, String>("report", Duration::from_secs(5));
    /// let c = cluster.clone();
    /// tokio::spawn(async move {
    ///     c.task(|_| async { Ok::<u32, String>(7) }).id("report").submit().unwrap();
    /// });
    /// assert_eq!(watch.await, Ok(Ok(7)));
    ///
    /// let never = cluster.watch::<u32, String>("never", Duration::from_millis(10));
    /// assert!(matches!(never.await, Err(WaitError::TimedOut { .. })));
    /// assert_eq!(cluster.stats().watchers, 0); // nothing left behind
    /// # }
    /// ```
    ///
    /// The watch resolves with [`WaitError::TypeMismatch`] if the task's
    /// types are not `T, E`, [`WaitError::ShutDown`] if the cluster stops
    /// taking tasks before one with this id comes, and
    /// [`WaitError::UnknownGenerated`] at once for an unknown generated id
    /// (no task can ever take it). A `timeout` too large for an instant
    /// means no timeout.
    pub fn watch<T, E>(&self, id: impl Into<TaskId>, timeout: Duration) -> Watch<T, E>
    where
        T: Clone + Send + 'static,
        E: Clone + Send + 'static,
    {
        let id = id.into();
        let cloner = <Outcome<T, E> as Clone>::clone;
        let mut req = SubscribeRequest::<T, E> {
            cloner,
            answer: None,
            hook: None,
        };
        let shared = self.shared();
        enum Found<T, E> {
            Task(Result<(), &'static str>),
            Registered(oneshot::Receiver<Attached<T, E>>, Arc<str>, u64),
            Refused(WaitError),
        }
        let found = shared.locked(|core| {
            if let Some(r) = core.subscribe(&id, &mut req) {
                if !matches!(req.answer, Some(Answer::Gone)) {
                    return Found::Task(r);
                }
            }
            let Some(name) = id.name() else {
                return Found::Refused(WaitError::UnknownGenerated(id.clone()));
            };
            if !matches!(core.phase, Phase::Idle | Phase::Running) {
                return Found::Refused(WaitError::ShutDown(id.clone()));
            }
            let (tx, rx) = oneshot::channel();
            let key = core.watch(
                name.clone(),
                Box::new(WatchTx::<T, E> { id: id.clone(), tx }),
            );
            Found::Registered(rx, name.clone(), key)
        });
        let mut registered = None;
        let state = match found {
            Found::Task(Err(found)) => State::Ready(Some(Err(WaitError::TypeMismatch {
                id: id.clone(),
                expected: type_name::<Result<T, E>>(),
                found,
            }))),
            Found::Task(Ok(())) => match req.answer {
                Some(Answer::Pending(rx)) => State::Subscribed(rx),
                Some(Answer::Lent(cached, cell)) => {
                    // Copied here, with no lock held: `Clone` is user code.
                    let copy = copy_for_subscriber(cloner, &cached);
                    cell.give_back(cached);
                    drop_guarded(cell, "a finished task");
                    State::Ready(Some(Ok(copy)))
                }
                _ => State::Ready(Some(Err(WaitError::ShutDown(id.clone())))),
            },
            Found::Registered(rx, name, key) => {
                registered = Some((Arc::downgrade(shared), name, key));
                State::Registered(rx)
            }
            Found::Refused(e) => State::Ready(Some(Err(e))),
        };
        Watch {
            id,
            state,
            deadline: Instant::now().checked_add(timeout),
            timeout,
            sleep: None,
            registered,
        }
    }
}

/// Awaits `F`, asking the worker to park the attempt whenever it is
/// pending (`crate::park`): the worker is free while it waits.
struct ParkWhilePending<F>(F);

impl<F: Future + Unpin> Future for ParkWhilePending<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = Pin::new(&mut self.0).poll(cx);
        if r.is_pending() {
            crate::park::request();
        }
        r
    }
}

/// A wait edge (for the cycle check), removed when the wait ends.
struct WaitEdge {
    shared: Weak<Shared>,
    waiter: u64,
    target: u64,
}

impl Drop for WaitEdge {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.locked(|core| core.unwait(self.waiter, self.target));
        }
    }
}

fn failed<T, E>(id: &TaskId, cause: DependencyCause) -> Outcome<T, E> {
    Err(DependencyError::new(id.clone(), cause).into())
}

/// [`TaskContext::wait_for`](crate::TaskContext::wait_for).
pub(crate) async fn wait_for<T, E>(waiter: u64, waiter_id: &TaskId, id: TaskId) -> Outcome<T, E>
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    if id == *waiter_id {
        return failed(&id, DependencyCause::Cycle);
    }
    let Some(shared) = crate::inside::current_cluster() else {
        return failed(&id, DependencyCause::NotInBody);
    };
    let cloner = <Outcome<T, E> as Clone>::clone;
    let mut req = SubscribeRequest::<T, E> {
        cloner,
        answer: None,
        hook: None,
    };
    let found = shared.locked(|core| {
        let target = core.add_wait(waiter, &id)?;
        match core.subscribe(&id, &mut req) {
            Some(Err(found)) => {
                core.unwait(waiter, target);
                tracing::warn!(
                    task = %id,
                    expected = type_name::<Result<T, E>>(),
                    found,
                    "TaskContext::wait_for asked for the wrong types"
                );
                Err(DependencyCause::TypeMismatch)
            }
            _ => Ok(target),
        }
    });
    let target = match found {
        Ok(t) => t,
        Err(cause) => return failed(&id, cause),
    };
    let edge = WaitEdge {
        shared: Arc::downgrade(&shared),
        waiter,
        target,
    };
    drop(shared);
    let rx = match req.answer {
        Some(Answer::Pending(rx)) => rx,
        Some(Answer::Lent(cached, cell)) => {
            // Finished and cached: copied here, with no lock held.
            let copy = copy_for_subscriber(cloner, &cached);
            cell.give_back(cached);
            drop_guarded(cell, "a finished task");
            return copy;
        }
        _ => return failed(&id, DependencyCause::Unknown),
    };
    let out = ParkWhilePending(rx).await;
    drop(edge);
    out.unwrap_or_else(|_| Err(TaskError::Shutdown))
}

/// [`TaskContext::wait`](crate::TaskContext::wait).
pub(crate) async fn wait_handle<T, E>(
    waiter: u64,
    handle: crate::handle::TaskHandle<T, E>,
) -> Outcome<T, E> {
    let id = handle.id();
    let Some(shared) = crate::inside::current_cluster() else {
        // Not in a body: nothing to free, an ordinary await.
        return handle.await;
    };
    let edge = match shared.locked(|core| core.add_wait(waiter, &id)) {
        Ok(target) => Some(WaitEdge {
            shared: Arc::downgrade(&shared),
            waiter,
            target,
        }),
        Err(DependencyCause::Cycle) => return failed(&id, DependencyCause::Cycle),
        // Finished already (or of another cluster): it resolves by itself.
        Err(_) => None,
    };
    drop(shared);
    let out = ParkWhilePending(handle).await;
    drop(edge);
    out
}
