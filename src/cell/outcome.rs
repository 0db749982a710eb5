//! How a task's final outcome reaches its readers: the handle's copy, the
//! subscribers' copies (made unlocked), the callbacks, and the cache's
//! copy, which late subscribers borrow (see the invariants in `super`).

use std::any::Any;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::{Extras, Options, Rare, Settled, TaskCell};
use crate::error::TaskError;
use crate::job::{Answer, Cloner, Forced, Outcome, SubscribeRequest};
use crate::panic::{drop_guarded, guard};
use crate::task::TaskId;

impl<B, T, E, O> TaskCell<B, T, E, O>
where
    O: Options<T, E> + Send + Sync + 'static,
    B: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    pub(super) fn deliver(&self, forced: Option<Forced>, retain: bool) {
        let mut st = self.state.lock();
        // The common case, in one short lock section: the attempt's result
        // is the outcome, and there is nothing to call, copy or drop that
        // could run user code.
        let plain = st.rare.is_none()
            && !std::mem::needs_drop::<B>()
            && self.opts.extras().is_none_or(|x| {
                x.on_failure.is_none()
                    && x.on_complete.is_none()
                    && x.settled.is_none()
                    && x.retention.is_none()
            });
        if plain {
            st.body = None;
            // A cancel, shutdown or replacement overrides the last attempt's
            // result, if there was one (dropped unlocked below).
            let overridden = forced.and_then(|f| st.result.replace(Err(f.error())));
            st.done = true;
            let unread = if st.handle_gone {
                st.result.take()
            } else {
                None
            };
            let waker = st.handle_waker.take();
            drop(st);
            if let Some(old) = overridden {
                drop_guarded(
                    old,
                    "an attempt's result overridden by a cancel or shutdown",
                );
            }
            if let Some(outcome) = unread {
                drop_guarded(outcome, "an unread outcome");
            }
            if let Some(w) = waker {
                w.wake();
            }
            return;
        }
        // What the body captured is released before anyone sees the outcome
        // (a blocking call abandoned at a timeout holds its own reference
        // until it returns). An attempt's result that a cancel or shutdown
        // overrides goes too. Both are user code when dropped: below, with
        // the lock released and under a guard.
        let body = st.body.take();
        let (outcome, overridden) = match (forced, st.result.take()) {
            (Some(f), last) => (Err(f.error()), last),
            (None, Some(r)) => (r, None),
            // Unreachable by construction; never invent a value.
            (None, None) => (Err(TaskError::Shutdown), None),
        };
        // Kept for dependents submitted after the end (`Job::outcome_cause`).
        let final_cause = retain.then(|| outcome.as_ref().err().map(TaskError::cause));
        // An error a cancel or shutdown overrides was an earlier attempt's.
        let overridden = overridden.and_then(|old| st.keep_in_history(old));
        let hooks = self
            .opts
            .extras()
            .filter(|x| x.on_failure.is_some() || x.on_complete.is_some() || x.settled.is_some());
        // The cache keeps a copy of its own unless it already let go of the
        // task (a sweep between the registry's finalize and this delivery).
        let cloner = st.cloner().filter(|_| retain && !st.expired);
        let handle_gone = st.handle_gone;
        let mut handle_copy = Some(outcome);
        let mut cache_copy = None;
        let drops_user_code = (std::mem::needs_drop::<B>() && body.is_some())
            || (std::mem::needs_drop::<Outcome<T, E>>() && overridden.is_some());
        if drops_user_code || hooks.is_some() || cloner.is_some() {
            // Invariant 3: all of this runs unlocked. Nobody else reads the
            // result before `done` is set, so the outcome can be out meanwhile.
            drop(st);
            if let Some(body) = body {
                drop_guarded(body, "a task body");
            }
            if let Some(old) = overridden {
                drop_guarded(
                    old,
                    "an attempt's result overridden by a cancel or shutdown",
                );
            }
            let outcome = handle_copy.as_ref().expect("set above");
            if let Some(x) = hooks {
                self.run_callbacks(x, outcome);
            }
            if let Some(clone) = cloner {
                // A handle that is gone needs no copy: the cache takes the original.
                cache_copy = if handle_gone {
                    handle_copy.take()
                } else {
                    // A `Clone` that panics leaves the cache a note of it:
                    // late readers are answered, with the cause.
                    Some(guard(|| clone(outcome)).unwrap_or_else(|msg| {
                        tracing::error!(task = %self.id(), panic = %msg, "cloning the outcome for the cache panicked");
                        Err(TaskError::Panicked {
                            message: format!("cloning the outcome for the cache panicked: {msg}"),
                        })
                    }))
                };
            }
            st = self.state.lock();
        }
        // Subscribers get copies made unlocked (`Clone` is user code), and
        // joiners' hooks are called unlocked. One that subscribes meanwhile
        // is served by the next round; the round that finds none left marks
        // the task done, under the same lock.
        while let Some(waiting) = st.rare.as_deref_mut().and_then(Waiting::take) {
            drop(st);
            let view = handle_copy
                .as_ref()
                .or(cache_copy.as_ref())
                .expect("the outcome is kept for the handle or the cache");
            waiting.serve(&self.id(), view);
            st = self.state.lock();
        }
        st.done = true;
        let mut stale = None;
        if let Some(copy) = cache_copy {
            if st.expired {
                stale = Some(copy);
            } else {
                let rare = st.rare();
                rare.cached = Some(copy);
                rare.final_cause = final_cause;
            }
        }
        let unread = match handle_copy {
            Some(outcome) if !st.handle_gone => {
                st.result = Some(outcome);
                None
            }
            other => other,
        };
        let waker = st.handle_waker.take();
        drop(st);
        if let Some(outcome) = unread {
            // Nobody will read it: the handle is gone.
            drop_guarded(outcome, "an unread outcome");
        }
        if let Some(copy) = stale {
            drop_guarded(copy, "an expired cached outcome");
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(super) fn expire(&self) {
        let cached = {
            let mut st = self.state.lock();
            // Before `done`, this tells `complete` not to retain the outcome.
            st.expired = true;
            st.rare.as_mut().and_then(|r| r.cached.take())
        };
        if let Some(copy) = cached {
            drop_guarded(copy, "an expired cached outcome");
        }
    }

    pub(super) fn subscribe_or_lend(
        self: Arc<Self>,
        req: &mut dyn Any,
    ) -> Result<(), &'static str> {
        let Some(req) = req.downcast_mut::<SubscribeRequest<T, E>>() else {
            return Err(std::any::type_name::<Result<T, E>>());
        };
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock();
        let done = st.done;
        let rare = st.rare();
        let answer = match rare.cached.take() {
            // The copy is made by the caller, unlocked (invariant 3).
            Some(cached) => {
                rare.lent = true;
                Answer::Lent(cached, self.clone())
            }
            // Still to come, or being copied by another late subscriber,
            // who serves this one too (see `give_back`).
            None if !done || rare.lent => {
                rare.cloner.get_or_insert(req.cloner);
                rare.add_subscriber(tx);
                rare.hooks.extend(req.hook.take());
                Answer::Pending(rx)
            }
            None => Answer::Gone,
        };
        drop(st);
        req.answer = Some(answer);
        Ok(())
    }
    pub(super) fn poll_handle(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome<T, E>>> {
        assert!(
            !self.handle_resolved.load(Relaxed),
            "TaskHandle polled after it resolved"
        );
        let mut st = self.state.lock();
        if !st.done {
            match &st.handle_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.handle_waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        // The handle's own copy: the cache, if any, keeps another.
        let outcome = st.result.take();
        self.handle_resolved.store(true, Relaxed);
        Poll::Ready(outcome)
    }

    pub(super) fn handle_dropped(&self) {
        // A handle that resolved already took (or copied) its outcome: the
        // cell has nothing left to keep for it.
        if self.handle_resolved.load(Relaxed) {
            return;
        }
        let dropped = {
            let mut st = self.state.lock();
            st.handle_gone = true;
            st.handle_waker = None;
            if st.done {
                st.result.take()
            } else {
                None
            }
        };
        if let Some(outcome) = dropped {
            drop_guarded(outcome, "an unread outcome");
        }
    }

    pub(super) fn take_back(&self, outcome: Outcome<T, E>) {
        let mut st = self.state.lock();
        while let Some(waiting) = st.rare.as_deref_mut().and_then(Waiting::take) {
            drop(st);
            waiting.serve(&self.id(), &outcome);
            st = self.state.lock();
        }
        let expired = st.expired;
        let rare = st.rare();
        rare.lent = false;
        if expired {
            drop(st);
            drop_guarded(outcome, "an expired cached outcome");
        } else {
            rare.cached = Some(outcome);
        }
    }

    fn run_callbacks(&self, x: &Extras<T, E>, outcome: &Outcome<T, E>) {
        let id = self.id();
        if let (Err(err), Some(cb)) = (outcome, &x.on_failure) {
            if let Err(msg) = guard(|| cb(&id, err)) {
                tracing::error!(task = %id, panic = %msg, "on_failure callback panicked");
            }
        }
        if let Some(cb) = &x.on_complete {
            if let Err(msg) = guard(|| cb(&id, outcome)) {
                tracing::error!(task = %id, panic = %msg, "on_complete callback panicked");
            }
        }
        if let Some(hook) = &x.settled {
            call_settled(hook, &id, outcome);
        }
    }
}

/// A subscriber's end of its copy of the outcome.
type Subscriber<T, E> = oneshot::Sender<Outcome<T, E>>;

/// The readers waiting for a task's outcome besides its handle, taken out
/// of the cell's lock to be served unlocked: subscribers get copies
/// (`Clone` is user code) and joiners' hooks are called with the outcome.
struct Waiting<T, E> {
    /// Subscribers, and how to copy the outcome for them.
    subscribers: Vec<Subscriber<T, E>>,
    clone: Option<Cloner<T, E>>,
    hooks: Vec<Settled<T, E>>,
}

impl<T, E> Waiting<T, E> {
    /// Takes what waits in `rare`, if anything does. (Subscribers wait
    /// only where a cloner is set: the first one sets it.)
    fn take(rare: &mut Rare<T, E>) -> Option<Self> {
        let clone = rare.cloner.filter(|_| !rare.subscribers.is_empty());
        let subscribers = match clone {
            Some(_) => std::mem::take(&mut rare.subscribers),
            None => Vec::new(),
        };
        let hooks = std::mem::take(&mut rare.hooks);
        (clone.is_some() || !hooks.is_empty()).then_some(Waiting {
            subscribers,
            clone,
            hooks,
        })
    }

    /// Serves them the outcome of task `id`; with no lock held.
    fn serve(self, id: &TaskId, outcome: &Outcome<T, E>) {
        for hook in self.hooks {
            call_settled(&hook, id, outcome);
        }
        if let Some(clone) = self.clone {
            for tx in self.subscribers {
                // A subscriber that gave up is not an error.
                if let Err(copy) = tx.send(copy_for_subscriber(clone, outcome)) {
                    drop_guarded(copy, "an unread copy of an outcome");
                }
            }
        }
    }
}

/// Calls a crate feature's completion hook (`Settled`) with the outcome of
/// task `id`, under a panic guard; with no lock held.
pub(crate) fn call_settled<T, E>(hook: &Settled<T, E>, id: &TaskId, outcome: &Outcome<T, E>) {
    if let Err(msg) = guard(|| hook(id, outcome)) {
        tracing::error!(task = %id, panic = %msg, "a completion hook panicked");
    }
}

/// A subscriber's copy of `outcome`, made with no lock held. A `Clone` that
/// panics costs only that subscriber, whose subscription then resolves as
/// [`TaskError::Panicked`] with a message that says so.
pub(crate) fn copy_for_subscriber<T, E>(
    clone: Cloner<T, E>,
    outcome: &Outcome<T, E>,
) -> Outcome<T, E> {
    guard(|| clone(outcome)).unwrap_or_else(|msg| {
        tracing::error!(panic = %msg, "cloning an outcome for a subscriber panicked");
        Err(TaskError::Panicked {
            message: format!("cloning the outcome for this subscriber panicked: {msg}"),
        })
    })
}
