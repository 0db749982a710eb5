//! Workers and the timekeeper: the cluster's long-lived tokio tasks.
//!
//! A worker loops: claim the best due task, run its attempt (timeout,
//! cancel, panic capture), decide about a retry, settle. Settling a task and
//! claiming the next take one lock acquisition. Bodies run inline on the
//! worker, so a task costs no tokio task of its own.
//!
//! An async attempt that waits for another task (`TaskContext::wait_for`)
//! is parked instead (`crate::park`): the worker claims other work, and a
//! worker resumes the attempt once its wait is over (`run_parked`).
//!
//! The timekeeper sleeps until the earliest scheduled start or cache expiry,
//! promotes due tasks (waking idle workers) and sweeps expired outcomes. It
//! is the only timer for pending tasks, however many there are.

use std::future::{pending, poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use crate::builder::RetryMode;
use crate::cache::release;
use crate::clock::{duration_ticks, Clock, NEVER};
use crate::engine::{Claim, Next, Plan};
use crate::job::{AttemptBox, AttemptStatus, Forced, Job};
use crate::limit::slowed_down;
use crate::park::{self, ParkEnd, ParkSlot, Parked};
use crate::progress::stalled;
use crate::shared::Shared;
use crate::signal::{CancelReason, WorkerWake};

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => pending().await,
    }
}

/// Sleeps for `delay` on the cluster's clock; forever if it ends beyond the
/// clock's range ([`NEVER`]), so that an immediate retry and a requeued one
/// agree on what "never" is. tokio caps a single sleep (at about two years),
/// so a long one is slept in pieces.
async fn sleep_ticks(clock: &Clock, delay: Duration) {
    let until = clock.now().saturating_add(duration_ticks(delay));
    if until == NEVER {
        return pending().await;
    }
    while clock.now() < until {
        match clock.instant(until) {
            Some(at) => sleep_until(at).await,
            None => return pending().await,
        }
    }
}

/// Claims (and immediate retries) a worker may run without giving the
/// runtime a turn. Bodies that finish on their first poll never return
/// control to tokio, so without this an endless chain of them (a task
/// retried at once forever, a body that submits its successor) would starve
/// everything else on a `current_thread` runtime, the user's own
/// `cancel_task` included. One yield per this many attempts costs nothing
/// measurable (W1, `bench/README.md#w1-throughput`) and bounds the starvation to a fraction of a millisecond.
const ATTEMPTS_PER_TURN: u32 = 1024;

/// Counts attempts since the worker last gave the runtime a turn.
#[derive(Default)]
struct Turns(u32);

impl Turns {
    /// Counts an attempt; `true` when it is time to yield.
    #[inline]
    fn tick(&mut self) -> bool {
        self.0 += 1;
        if self.0 < ATTEMPTS_PER_TURN {
            return false;
        }
        self.0 = 0;
        true
    }

    /// The worker waited (idle or yielded): others had their turn.
    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Notices that the runtime dropped a worker or the timekeeper (it shut
/// down under a live cluster): nothing would run the cluster's tasks any
/// more, so it is shut down as by [`Cluster::cancel`](crate::Cluster::cancel):
/// pending handles resolve `Shutdown`, submits are refused, and running
/// attempts (a blocking body polling `is_cancelled`) are signalled.
///
/// It is made when the task's future is made, not when it is first polled:
/// a runtime may drop a future it never polled (a `current_thread` runtime
/// dropped right after `build`), and an `async fn`'s locals do not exist
/// until then.
struct Presence {
    shared: Arc<Shared>,
    left: bool,
}

impl Presence {
    fn new(shared: Arc<Shared>) -> Self {
        Presence {
            shared,
            left: false,
        }
    }

    /// The loop ends as planned.
    fn leave(mut self) {
        self.left = true;
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        if !self.left {
            self.shared.cancel_all();
        }
    }
}

/// Resolves when the task is cancelled or shut down (not on a timeout).
async fn interrupted(job: &dyn Job, wake: &WorkerWake) -> Forced {
    poll_fn(|cx| job.signal().poll_final(cx, wake)).await
}

/// An attempt to park, with its deadline (boxed: the plain path moves
/// `ClaimEnd`s, and this keeps them small).
type ToPark = Box<(AttemptBox, Option<Instant>)>;

/// How the attempts of one claim ended.
struct ClaimEnd {
    /// The attempt asked to park (`crate::park`): it is here, and `plan`
    /// means nothing.
    park: Option<ToPark>,
    plan: Plan,
    /// A blocking body still running after a timeout or cancel: the worker
    /// keeps its slot until it returns.
    leftover: Option<AttemptBox>,
    /// Attempts started so far.
    attempts: u32,
}

/// Settles the claim as shut down if the worker is dropped before it settled
/// it (the runtime shutting down mid-attempt, or while a blocking attempt
/// finishes), so no handle waits forever.
struct ClaimGuard<'a> {
    shared: &'a Shared,
    claim: Option<Claim>,
    /// The worker's box, where the claim's attempts run: an attempt cut
    /// short by the drop goes (guarded) before the claim is settled, as an
    /// interrupted one does.
    attempt: &'a mut AttemptBox,
}

impl<'a> ClaimGuard<'a> {
    #[inline]
    fn new(shared: &'a Shared, claim: Claim, attempt: &'a mut AttemptBox) -> Self {
        ClaimGuard {
            shared,
            claim: Some(claim),
            attempt,
        }
    }

    fn claim(&mut self) -> &mut Claim {
        self.claim.as_mut().expect("claim is present until taken")
    }

    /// The claim and the worker's box, for `run_claim`.
    #[inline]
    fn run(&mut self) -> (&Claim, &mut AttemptBox) {
        let claim = self.claim.as_ref().expect("claim is present until taken");
        (claim, self.attempt)
    }

    // Always inlined (with `drop`), so that the drop after a take folds
    // away: this is once per task.
    #[inline(always)]
    fn take(mut self) -> Claim {
        self.claim.take().expect("claim is present until taken")
    }

    #[cold]
    #[inline(never)]
    fn shut_down(&mut self, claim: Claim) {
        self.attempt.take().discard("an interrupted attempt");
        // A blocking body still running learns it, through its signal.
        claim.job.raise(CancelReason::Shutdown);
        settle_now(self.shared, claim, Plan::Final(Some(Forced::Shutdown)));
    }
}

impl Drop for ClaimGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            self.shut_down(claim);
        }
    }
}

fn settle_now(shared: &Shared, claim: Claim, plan: Plan) {
    let now = plan.now(&shared.clock);
    let mut core = shared.lock();
    let d = core.settle(claim, plan, now);
    shared.unlock(core);
    if let Some(d) = d {
        d.deliver();
    }
}

/// Worker `index`, as the future to spawn (see [`Presence`]).
pub(crate) fn worker(shared: Arc<Shared>, index: u16) -> impl Future<Output = ()> + Send {
    let presence = Presence::new(shared.clone());
    async move {
        run_worker(shared, index).await;
        presence.leave();
    }
}

/// The timekeeper, as the future to spawn (see [`Presence`]).
pub(crate) fn timekeeper(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let presence = Presence::new(shared.clone());
    async move {
        run_timekeeper(shared).await;
        presence.leave();
    }
}

async fn run_worker(shared: Arc<Shared>, index: u16) {
    let wake = &shared.wakes[usize::from(index)];
    let mut done: Option<(Claim, Plan)> = None;
    let mut turns = Turns::default();
    // Where this worker's attempts run (see `AttemptBox`).
    let mut attempt_box = AttemptBox::empty();
    loop {
        let (delivery, next, woke) = {
            let now = done.as_ref().and_then(|(_, p)| p.now(&shared.clock));
            let mut core = shared.lock();
            let delivery = done.take().and_then(|(c, p)| core.settle(c, p, now));
            // An idle result has put this worker in the idle set, under the
            // lock: any later due task picks it (see `crate::idle`).
            let next = core.claim(index);
            let woke = shared.unlock(core);
            (delivery, next, woke)
        };
        if let Some(d) = delivery {
            d.deliver();
        }
        match next {
            Next::Run(claim) => {
                let mut guard = ClaimGuard::new(&shared, claim, &mut attempt_box);
                // A worker woken from this thread waits in the thread's LIFO
                // slot, which other threads cannot steal from, and a busy
                // worker never waits, so it would never give way: the cluster
                // would run on one thread (`bench/README.md#w8-retries`; measured: W8 at 0.4M/s instead of
                // 0.9M/s in half the runs). So a worker that woke another
                // yields at once (after arming its guard: the runtime may
                // drop it here): it moves to the run queue, where an idle
                // thread takes it. (Yielding every 128 tasks through tokio's
                // coop budget instead fixed fewer runs and cost 12% on W1
                // with one worker.)
                if woke {
                    tokio::task::yield_now().await;
                    turns.reset();
                }
                let (claim, attempt) = guard.run();
                let end = run_claim(&shared, wake, claim, &mut turns, attempt).await;
                guard.claim().attempts = end.attempts;
                if let Some(to_park) = end.park {
                    // The attempt waits for another task: park it and go
                    // back to claiming (`crate::park`).
                    let (attempt, deadline) = *to_park;
                    let parked = Box::new(Parked::new(guard.take(), attempt, deadline));
                    let slot = ParkSlot::new(&shared);
                    run_parked(
                        &shared,
                        wake,
                        slot,
                        parked,
                        &mut turns,
                        &mut done,
                        &mut attempt_box,
                    )
                    .await;
                    continue;
                }
                // The guard keeps the claim until it is settled or handed
                // to the next settle.
                match (end.leftover, end.plan) {
                    (None, plan) => done = Some((guard.take(), plan)),
                    // A requeued task must not start again while its old
                    // blocking attempt still runs; a cancel meanwhile ends it.
                    (Some(mut leftover), plan @ Plan::Requeue(_)) => {
                        let job = guard.claim().job.clone();
                        tokio::select! {
                            _ = &mut leftover => done = Some((guard.take(), plan)),
                            forced = interrupted(job.as_ref(), wake) => {
                                settle_now(&shared, guard.take(), Plan::Final(Some(forced)));
                                leftover.await;
                            }
                        }
                    }
                    // A final outcome goes out at once; the slot is kept until
                    // the blocking body returns.
                    (Some(leftover), plan) => {
                        settle_now(&shared, guard.take(), plan);
                        leftover.await;
                    }
                }
            }
            Next::Resume(slot) => {
                // Only the worker that popped the slot from the ready list
                // takes its attempt, so it is there.
                if let Some(parked) = slot.take() {
                    run_parked(
                        &shared,
                        wake,
                        slot,
                        parked,
                        &mut turns,
                        &mut done,
                        &mut attempt_box,
                    )
                    .await;
                }
            }
            // Woken for work or by `Shared::close`; the next claim tells which.
            Next::Idle => {
                poll_fn(|cx| wake.poll_work(cx)).await;
                turns.reset();
            }
            Next::Exit => return,
            Next::ExitAll => {
                shared.close();
                return;
            }
        }
    }
}

/// Runs attempts of a claimed task until it succeeds, fails for good, is
/// interrupted, or is to be requeued. The attempts run in `attempt`, the
/// worker's box; one that does not finish leaves it (see `AttemptBox`).
async fn run_claim(
    shared: &Shared,
    wake: &WorkerWake,
    claim: &Claim,
    turns: &mut Turns,
    attempt: &mut AttemptBox,
) -> ClaimEnd {
    let job = &claim.job;
    let policy = job.policy();
    let mut attempts = claim.attempts;
    let finish = |plan, leftover, attempts| ClaimEnd {
        park: None,
        plan,
        leftover,
        attempts,
    };
    loop {
        if turns.tick() {
            tokio::task::yield_now().await;
        }
        // A cancel that already landed spares the body a run (best effort:
        // the outcome is `Cancelled` either way, see engine invariant 3).
        if let Some(forced) = job.signal().final_forced() {
            return finish(Plan::Final(Some(forced)), None, attempts);
        }
        attempts = attempts.saturating_add(1);
        let deadline = policy.timeout().and_then(|t| Instant::now().checked_add(t));
        job.clone().start_attempt(attempts, deadline, attempt);
        enum End {
            Done(AttemptStatus),
            Interrupted(Forced),
            TimedOut,
            /// Pending, and it asked to be parked (`crate::park`).
            Park,
            Stalled(Duration),
        }
        // Most short bodies finish on their first poll: try that before
        // arming the cancel and timeout branches.
        let first = poll_fn(|cx| Poll::Ready(Pin::new(&mut *attempt).poll(cx))).await;
        let end = match first {
            Poll::Ready(status) => End::Done(status),
            // Blocking bodies never park (they hold their worker).
            Poll::Pending if !policy.blocking && park::take_request() => End::Park,
            Poll::Pending => {
                // Read only here: an attempt done on its first poll cannot stall.
                let stall = job.stall_timeout();
                let started = Instant::now();
                tokio::select! {
                    biased;
                    status = poll_fn(|cx| match Pin::new(&mut *attempt).poll(cx) {
                        Poll::Ready(s) => Poll::Ready(Some(s)),
                        Poll::Pending if !policy.blocking && park::take_request() => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    }) => status.map_or(End::Park, End::Done),
                    forced = interrupted(job.as_ref(), wake) => End::Interrupted(forced),
                    _ = sleep_until_opt(deadline) => End::TimedOut,
                    _ = stalled(job.as_ref(), stall, started) => End::Stalled(stall.unwrap_or_default()),
                }
            }
        };
        // An unfinished attempt leaves the worker's box: an async one is
        // dropped here; a blocking one is waited for.
        let leftover = |attempt: &mut AttemptBox| {
            let unfinished = attempt.take();
            if policy.blocking {
                Some(unfinished)
            } else {
                unfinished.discard("an interrupted attempt");
                None
            }
        };
        let leftover = match end {
            End::Park => {
                return ClaimEnd {
                    park: Some(Box::new((attempt.take(), deadline))),
                    plan: Plan::Final(None),
                    leftover: None,
                    attempts,
                }
            }
            End::Done(AttemptStatus::Succeeded) => {
                return finish(Plan::Final(None), None, attempts)
            }
            End::Done(AttemptStatus::Failed) => None,
            End::Interrupted(forced) => {
                return finish(Plan::Final(Some(forced)), leftover(attempt), attempts)
            }
            End::TimedOut => {
                job.raise(CancelReason::TimedOut);
                job.record_timeout(policy.timeout().unwrap_or_default());
                leftover(attempt)
            }
            // As a timeout: a failed attempt, retried as the task says.
            End::Stalled(limit) => {
                job.raise(CancelReason::Stalled);
                job.record_stall(limit);
                leftover(attempt)
            }
        };
        // The attempt failed; its error is stored in the cell.
        if let Some(plan) = slowed_down(shared, job.as_ref()) {
            // Not spent: the budget is as before this attempt.
            return finish(plan, leftover, attempts - 1);
        }
        let retries_used = attempts - 1;
        if retries_used >= policy.retries {
            return finish(Plan::Final(None), leftover, attempts);
        }
        let Some(delay) = job.retry_delay(retries_used) else {
            return finish(Plan::Final(None), leftover, attempts);
        };
        match policy.mode {
            RetryMode::Requeue => return finish(Plan::Requeue(delay), leftover, attempts),
            RetryMode::Immediate => {
                if let Some(mut l) = leftover {
                    tokio::select! {
                        _ = &mut l => {}
                        forced = interrupted(job.as_ref(), wake) => return finish(Plan::Final(Some(forced)), Some(l), attempts),
                        _ = shared.stopping.cancelled() => return finish(Plan::Final(Some(Forced::Shutdown)), Some(l), attempts),
                    }
                }
                tokio::select! {
                    biased;
                    forced = interrupted(job.as_ref(), wake) => return finish(Plan::Final(Some(forced)), None, attempts),
                    _ = shared.stopping.cancelled() => return finish(Plan::Final(Some(Forced::Shutdown)), None, attempts),
                    _ = before_immediate_retry(shared, job.as_ref(), delay) => {}
                }
            }
        }
    }
}

/// What an `Immediate` retry waits for on its worker before its next
/// attempt: its delay, then the end of a pause of the cluster or of its key
/// (which hold the next attempt, and the worker, until resumed), whether
/// the failed attempt ran straight through or was parked.
async fn before_immediate_retry(shared: &Shared, job: &dyn Job, delay: Duration) {
    sleep_ticks(&shared.clock, delay).await;
    shared.flow.until_resumed().await;
    crate::keys::until_key_resumed(shared, job).await;
}

/// Drives a parked attempt (`crate::park`) held by this worker: polls it
/// once with its slot's waker; if it is still waiting it stays in the slot
/// (no longer running) and the worker moves on; if it ended, the worker
/// finishes its claim (later attempts included, which may park again) and
/// hands it to the next settle through `done`.
async fn run_parked(
    shared: &Arc<Shared>,
    wake: &WorkerWake,
    mut slot: Arc<ParkSlot>,
    mut parked: Box<Parked>,
    turns: &mut Turns,
    done: &mut Option<(Claim, Plan)>,
    attempt_box: &mut AttemptBox,
) {
    loop {
        let waker = Waker::from(slot.clone());
        let polled = parked.poll_end(&mut Context::from_waker(&waker));
        let Poll::Ready(end) = polled else {
            let mut core = shared.lock();
            core.park();
            shared.unlock(core);
            slot.put(parked);
            return;
        };
        let Parked { claim, attempt, .. } = *parked;
        let mut guard = ClaimGuard::new(shared, claim, attempt_box);
        let (claim, attempt_box) = guard.run();
        let end = resume_claim(shared, wake, claim, turns, end, attempt, attempt_box).await;
        guard.claim().attempts = end.attempts;
        match end.park {
            Some(to_park) => {
                let (attempt, deadline) = *to_park;
                parked = Box::new(Parked::new(guard.take(), attempt, deadline));
                slot = ParkSlot::new(shared);
            }
            None => {
                // Async attempts leave nothing running behind them.
                *done = Some((guard.take(), end.plan));
                return;
            }
        }
    }
}

/// `run_claim` for a claim whose parked attempt ended as `end`: decides
/// about it as `run_claim` decides about an attempt, then runs any
/// immediate retry (in `attempt_box`, the worker's box).
async fn resume_claim(
    shared: &Shared,
    wake: &WorkerWake,
    claim: &Claim,
    turns: &mut Turns,
    end: ParkEnd,
    attempt: AttemptBox,
    attempt_box: &mut AttemptBox,
) -> ClaimEnd {
    let job = &claim.job;
    let policy = job.policy();
    let attempts = claim.attempts;
    let finish = |plan| ClaimEnd {
        park: None,
        plan,
        leftover: None,
        attempts,
    };
    match end {
        ParkEnd::Done(AttemptStatus::Succeeded) => {
            attempt.discard("a finished attempt");
            return finish(Plan::Final(None));
        }
        ParkEnd::Done(AttemptStatus::Failed) => attempt.discard("a finished attempt"),
        ParkEnd::Interrupted(forced) => {
            attempt.discard("an interrupted attempt");
            return finish(Plan::Final(Some(forced)));
        }
        ParkEnd::TimedOut => {
            job.raise(CancelReason::TimedOut);
            job.record_timeout(policy.timeout().unwrap_or_default());
            attempt.discard("an interrupted attempt");
        }
    }
    if let Some(plan) = slowed_down(shared, job.as_ref()) {
        // Not spent (see `run_claim`).
        return ClaimEnd {
            park: None,
            plan,
            leftover: None,
            attempts: attempts.saturating_sub(1),
        };
    }
    let retries_used = attempts.saturating_sub(1);
    if retries_used >= policy.retries {
        return finish(Plan::Final(None));
    }
    let Some(delay) = job.retry_delay(retries_used) else {
        return finish(Plan::Final(None));
    };
    match policy.mode {
        RetryMode::Requeue => finish(Plan::Requeue(delay)),
        RetryMode::Immediate => {
            tokio::select! {
                biased;
                forced = interrupted(job.as_ref(), wake) => return finish(Plan::Final(Some(forced))),
                _ = shared.stopping.cancelled() => return finish(Plan::Final(Some(Forced::Shutdown))),
                _ = before_immediate_retry(shared, job.as_ref(), delay) => {}
            }
            Box::pin(run_claim(shared, wake, claim, turns, attempt_box)).await
        }
    }
}

async fn run_timekeeper(shared: Arc<Shared>) {
    let parent = shared.parent.clone();
    loop {
        let (deadline, expired) = {
            let mut core = shared.lock();
            core.promote();
            let resumed = shared.resume_if_due(&mut core);
            let resumed = core.resume_keys_due() | resumed;
            let expired = core.sweep();
            let next = core.arm_timer();
            shared.unlock(core);
            if resumed {
                shared.flow.wake_resumed();
            }
            (next.and_then(|t| shared.clock.instant(t)), expired)
        };
        release(expired);
        tokio::select! {
            biased;
            _ = shared.closing.cancelled() => return,
            _ = async { match &parent { Some(p) => p.cancelled().await, None => pending().await } } => {
                shared.cancel_all();
                return;
            }
            _ = shared.timer.notified() => {}
            _ = sleep_until_opt(deadline) => {}
        }
    }
}
