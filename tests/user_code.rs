//! Every piece of user code runs with no engine lock held and under a panic
//! guard, on every path (issue 8, item 2).
//!
//! Table-driven: a scenario is a (place, path, flavour).
//! - **place**: which piece of user code misbehaves: the body call, the
//!   body's captures' `Drop`, a future dropped mid-attempt, the output
//!   value's `Drop` / `Clone`, the error's `Drop` / `Clone`, `on_failure`,
//!   `on_complete`, `retry_if`, the backoff.
//! - **path**: how the task ends: success, failure, retry (both modes),
//!   timeout (async and blocking), `cancel_task` (async and blocking), a body
//!   cancelling its own id, stop, stop at its timeout, drain, `cancel()`,
//!   dropping the cluster, a dropped handle, a late subscriber of a cached
//!   outcome, a zero retention.
//! - **flavour**: the user code panics, or calls back into the cluster
//!   (`stats`, `subscribe` and `cancel_task` on its own and another id,
//!   `submit`; then `cancel_task` on its own id, `cancel()`, or `stop` from a
//!   spawned task).
//!
//! Each scenario runs on a one-worker cluster, on a `current_thread` runtime
//! (the flavour of `#[tokio::test]`) and again on a multi-thread one, on a
//! thread of its own, watched from
//! the test thread: a deadlock (user code re-entering the cluster under one
//! of its locks) fails the scenario after [`WATCHDOG`] of wall time instead
//! of hanging the runner. Checks, per scenario:
//! - every handle and subscription resolves, to the task's true outcome
//!   (the body's value or error, or what the path decides: timed out,
//!   cancelled, shut down; a `cancel_task` that took effect means
//!   `Cancelled`), and `on_complete` sees that same outcome;
//! - no engine call made by the test (`subscribe`, `cancel_task`, `cancel`,
//!   `stop`, `drain`, dropping the cluster) panics into its caller;
//! - on the paths where the cluster keeps running, the one worker survived:
//!   a later task still runs;
//! - the misbehaving code actually ran (a scenario that never reached its
//!   place would test nothing).
//!
//! One `#[test]` per place runs all its scenarios at once (each on its own
//! thread) and fails with the list of every failing scenario.

mod common;

use std::cell::Cell;
use std::fmt;
use std::future::pending;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{Body, Cluster, RetryMode, TaskBuilder, TaskError, TaskHandle};

use common::{cancel, panic_message, quiet_panics_starting_with, watchdog_result, WatchdogError};

/// Wall time a scenario may take before it counts as a deadlock.
const WATCHDOG: Duration = Duration::from_secs(20);
/// Wall time any single await inside a scenario may take.
const LIMIT: Duration = Duration::from_secs(10);
/// The timeout of the timeout paths (real time: the body never ends by itself).
const TIMEOUT: Duration = Duration::from_millis(20);
const BOOM: &str = "user-code boom";
/// Re-entrant user code subscribes to its own task this many times per
/// scenario at most.
const MAX_SUBSCRIBES: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The body closure and its future's polls.
    Body,
    /// `Drop` of what the body closure captured.
    BodyDrop,
    /// `Drop` of what an attempt's future holds, when it is dropped mid-attempt.
    FutureDrop,
    ValueDrop,
    ValueClone,
    ErrorDrop,
    ErrorClone,
    OnFailure,
    OnComplete,
    RetryIf,
    Backoff,
}

impl Place {
    /// The body's final result is an error (so that the error's code runs
    /// and `on_failure` is called on every path).
    fn err_payload(self) -> bool {
        matches!(
            self,
            Place::ErrorDrop | Place::ErrorClone | Place::OnFailure
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The body returns its result (a value, or an error for error places).
    Return,
    /// Attempt 1 fails; the requeued attempt 2 returns the result.
    RetryRequeue,
    /// Attempt 1 fails; attempt 2 returns the result on the same worker.
    RetryImmediate,
    /// An async body that never ends, with a timeout.
    Timeout,
    /// A blocking body that runs until signalled, then returns its result
    /// (which the timeout overrides).
    BlockingTimeout,
    /// `cancel_task` on an async body that never ends.
    Cancel,
    /// `cancel_task` on a blocking body, which then returns its result.
    BlockingCancel,
    /// The body cancels its own id, then returns its result.
    SelfCancel,
    /// A graceful stop while the body runs; the body then returns.
    Stop,
    /// A blocking body outlives a stop's timeout, then returns its result.
    StopTimeout,
    /// A drain while the body runs; the body then returns.
    Drain,
    /// `cancel()` while an async body runs.
    CancelAll,
    /// The last `Cluster` is dropped while an async body runs.
    DropCluster,
    /// The handle is dropped before the task ends (a subscriber still waits).
    DroppedHandle,
    /// The outcome is cached; a subscriber comes after the end.
    LateSubscriber,
    /// Cached with a zero retention, handle dropped.
    RetentionZero,
}

const PATHS: [Path; 16] = [
    Path::Return,
    Path::RetryRequeue,
    Path::RetryImmediate,
    Path::Timeout,
    Path::BlockingTimeout,
    Path::Cancel,
    Path::BlockingCancel,
    Path::SelfCancel,
    Path::Stop,
    Path::StopTimeout,
    Path::Drain,
    Path::CancelAll,
    Path::DropCluster,
    Path::DroppedHandle,
    Path::LateSubscriber,
    Path::RetentionZero,
];

impl Path {
    fn blocking(self) -> bool {
        matches!(
            self,
            Path::BlockingTimeout | Path::BlockingCancel | Path::StopTimeout
        )
    }

    /// The body waits (for a signal, a cancel, or forever) instead of
    /// returning at once.
    fn waits(self) -> bool {
        matches!(
            self,
            Path::Timeout
                | Path::BlockingTimeout
                | Path::Cancel
                | Path::BlockingCancel
                | Path::Stop
                | Path::StopTimeout
                | Path::Drain
                | Path::CancelAll
                | Path::DropCluster
        )
    }

    /// The cluster still runs after the path (so a later task must run).
    fn keeps_running(self) -> bool {
        !matches!(
            self,
            Path::Stop | Path::StopTimeout | Path::Drain | Path::CancelAll | Path::DropCluster
        )
    }

    fn retries(self) -> bool {
        matches!(self, Path::RetryRequeue | Path::RetryImmediate)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// Panics.
    Panic,
    /// `stats`, `subscribe` own and other id, `cancel_task` of another
    /// task, `submit`.
    Reenter,
    /// As `Reenter`, plus `cancel_task` of its own task.
    ReenterCancelOwn,
    /// As `Reenter`, plus `cancel()`.
    ReenterCancelAll,
    /// As `Reenter`, plus `stop` from a spawned task.
    ReenterStop,
}

const FLAVOURS: [Flavour; 5] = [
    Flavour::Panic,
    Flavour::Reenter,
    Flavour::ReenterCancelOwn,
    Flavour::ReenterCancelAll,
    Flavour::ReenterStop,
];

#[derive(Clone, Copy, PartialEq, Eq)]
struct Scenario {
    place: Place,
    path: Path,
    flavour: Flavour,
    /// The runtime the cluster's workers and the test run on.
    runtime: common::Flavor,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rt = match self.runtime {
            common::Flavor::CurrentThread => "current_thread",
            common::Flavor::MultiThread => "multi_thread",
        };
        write!(
            f,
            "{:?}/{:?}/{:?}/{rt}",
            self.place, self.path, self.flavour
        )
    }
}

/// Whether the user code at `place` runs at all on `path` (a scenario where
/// it does not would test nothing).
fn reaches(place: Place, path: Path) -> bool {
    match place {
        Place::Body | Place::BodyDrop | Place::OnFailure | Place::OnComplete => true,
        // Only a future dropped while it waits.
        Place::FutureDrop => matches!(
            path,
            Path::Timeout | Path::Cancel | Path::CancelAll | Path::DropCluster
        ),
        // Only where the body produced a result.
        Place::ValueDrop | Place::ErrorDrop => !matches!(
            path,
            Path::Timeout | Path::Cancel | Path::CancelAll | Path::DropCluster
        ),
        // Only where a result reaches a subscriber or the cache.
        Place::ValueClone | Place::ErrorClone => matches!(
            path,
            Path::Return
                | Path::RetryRequeue
                | Path::RetryImmediate
                | Path::Stop
                | Path::Drain
                | Path::DroppedHandle
                | Path::LateSubscriber
                | Path::RetentionZero
        ),
        Place::RetryIf | Place::Backoff => path.retries(),
    }
}

fn scenarios(place: Place) -> Vec<Scenario> {
    let mut v = Vec::new();
    for path in PATHS {
        if !reaches(place, path) {
            continue;
        }
        for flavour in FLAVOURS {
            // A panicking body is an ordinary failed attempt (tests/panics.rs).
            if place == Place::Body && flavour == Flavour::Panic {
                continue;
            }
            for runtime in common::Flavor::ALL {
                v.push(Scenario {
                    place,
                    path,
                    flavour,
                    runtime,
                });
            }
        }
    }
    v
}

// ------------------------------------------------------------ user code

thread_local! {
    /// Set while a hook runs on this thread: user code that the hook itself
    /// causes (a clone for its own subscribe, say) does not fire again.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// What every piece of user code of one scenario shares.
struct Ctx {
    sc: Scenario,
    rt: tokio::runtime::Handle,
    /// The cluster, for re-entrant calls; taken out at the end (it would
    /// otherwise keep itself alive through its cached outcomes).
    cluster: Mutex<Option<Cluster>>,
    /// Times the scenario's user code misbehaved.
    fired: AtomicU32,
    /// A `cancel_task` of the main task (by the test or by user code) took effect.
    main_cancelled: AtomicBool,
    bystander_cancelled: AtomicBool,
    /// Attempts of the main task started.
    started: AtomicU32,
    /// Lets a waiting async body (stop, drain) finish.
    go: tokio::sync::Notify,
    /// Handles of the tasks user code submitted.
    submitted: Mutex<Vec<TaskHandle<u32, String>>>,
    /// What `on_complete` saw, per task.
    completed: Mutex<Vec<(String, Fate)>>,
}

const MAIN: &str = "main";
const BYSTANDER: &str = "bystander";

impl Ctx {
    fn cluster(&self) -> Option<Cluster> {
        self.cluster.lock().unwrap().clone()
    }

    /// The user code at `at` runs: misbehaves if it is the scenario's place.
    fn hook(&self, at: Place) {
        if at != self.sc.place || IN_HOOK.with(|f| f.replace(true)) {
            return;
        }
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                IN_HOOK.with(|f| f.set(false));
            }
        }
        let _reset = Reset;
        let fired = self.fired.fetch_add(1, SeqCst);
        if self.sc.flavour == Flavour::Panic {
            // Never a second panic while unwinding (that would abort).
            if !std::thread::panicking() {
                panic!("{BOOM} at {at:?}");
            }
            return;
        }
        let Some(c) = self.cluster() else { return };
        let _ = c.stats();
        // A few times only: a `Clone` that subscribes to its own task asks
        // for another clone, forever (that loop would be the user's own).
        if fired < MAX_SUBSCRIBES {
            drop(c.subscribe::<P, P>(MAIN));
        }
        drop(c.subscribe::<P, P>(BYSTANDER));
        if cancel(&c, BYSTANDER) {
            self.bystander_cancelled.store(true, SeqCst);
        }
        if let Ok(h) = c.task(|_| async { Ok::<u32, String>(7) }).submit() {
            self.submitted.lock().unwrap().push(h);
        }
        match self.sc.flavour {
            Flavour::Panic | Flavour::Reenter => {}
            Flavour::ReenterCancelOwn => {
                if cancel(&c, MAIN) {
                    self.main_cancelled.store(true, SeqCst);
                }
            }
            Flavour::ReenterCancelAll => c.cancel(),
            Flavour::ReenterStop => {
                let c = c.clone();
                // A short stop timeout: a body that never ends is then
                // cancelled, well before the test's own limits.
                self.rt.spawn(async move {
                    let _ = c.stop(Duration::from_millis(200)).await;
                });
            }
        }
    }
}

/// A value or error of the tasks: runs the hook in its `Clone` and `Drop`.
struct P {
    tag: u32,
    err: bool,
    ctx: Arc<Ctx>,
    /// Cleared once the test holds it: the test's own drop is not the engine's.
    armed: bool,
}

impl P {
    fn new(ctx: &Arc<Ctx>, tag: u32, err: bool) -> Self {
        P {
            tag,
            err,
            ctx: ctx.clone(),
            armed: true,
        }
    }
}

impl Clone for P {
    fn clone(&self) -> Self {
        self.ctx.hook(if self.err {
            Place::ErrorClone
        } else {
            Place::ValueClone
        });
        P {
            tag: self.tag,
            err: self.err,
            ctx: self.ctx.clone(),
            armed: true,
        }
    }
}

impl Drop for P {
    fn drop(&mut self) {
        if self.armed {
            self.ctx.hook(if self.err {
                Place::ErrorDrop
            } else {
                Place::ValueDrop
            });
        }
    }
}

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", if self.err { "E" } else { "V" }, self.tag)
    }
}

/// Runs the hook of `place` when dropped (while armed).
struct DropHook {
    place: Place,
    ctx: Arc<Ctx>,
    armed: bool,
}

impl DropHook {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DropHook {
    fn drop(&mut self) {
        if self.armed {
            self.ctx.hook(self.place);
        }
    }
}

/// An outcome, comparable and free of user code.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Value(u32),
    Failed(u32),
    Panicked,
    TimedOut,
    Cancelled,
    Shutdown,
    Other(String),
}

fn fate_of(out: &Result<P, TaskError<P>>) -> Fate {
    match out {
        Ok(v) => Fate::Value(v.tag),
        Err(TaskError::Failed(e)) => Fate::Failed(e.tag),
        Err(TaskError::Panicked { .. }) => Fate::Panicked,
        Err(TaskError::TimedOut { .. }) => Fate::TimedOut,
        Err(TaskError::Cancelled) => Fate::Cancelled,
        Err(TaskError::Shutdown) => Fate::Shutdown,
        Err(e) => Fate::Other(format!("{e:?}")),
    }
}

/// Takes an outcome the test received: disarms it and drops it.
fn receive(mut out: Result<P, TaskError<P>>) -> Fate {
    let fate = fate_of(&out);
    match &mut out {
        Ok(v) | Err(TaskError::Failed(v)) => v.armed = false,
        Err(_) => {}
    }
    fate
}

fn result(ctx: &Arc<Ctx>, tag: u32) -> Result<P, P> {
    if ctx.sc.place.err_payload() {
        Err(P::new(ctx, tag, true))
    } else {
        Ok(P::new(ctx, tag, false))
    }
}

/// Submits the scenario's task `id` (the main task, or a bystander
/// scheduled an hour ahead), with every kind of user code in place.
fn submit(cluster: &Cluster, ctx: &Arc<Ctx>, id: &str) -> TaskHandle<P, P> {
    let path = ctx.sc.path;
    let main = id == MAIN;
    let capture = DropHook {
        place: Place::BodyDrop,
        ctx: ctx.clone(),
        armed: true,
    };
    let cx = ctx.clone();
    if main && path.blocking() {
        let capture = Mutex::new(capture);
        let b = cluster.blocking_task(move |tc| {
            let _keep = &capture;
            cx.hook(Place::Body);
            cx.started.fetch_add(1, SeqCst);
            let t0 = std::time::Instant::now();
            while !tc.is_cancelled() && t0.elapsed() < LIMIT {
                std::thread::sleep(Duration::from_millis(1));
            }
            result(&cx, tc.attempt())
        });
        finish(b.id(id), ctx, main)
    } else {
        let b = cluster.task(move |tc| {
            let _keep = &capture;
            cx.hook(Place::Body);
            let cx = cx.clone();
            let held = DropHook {
                place: Place::FutureDrop,
                ctx: cx.clone(),
                armed: true,
            };
            async move {
                let mut held = held;
                cx.hook(Place::Body);
                cx.started.fetch_add(1, SeqCst);
                let a = tc.attempt();
                match path {
                    Path::RetryRequeue | Path::RetryImmediate if a == 1 => {
                        held.disarm();
                        return Err(P::new(&cx, a, true));
                    }
                    Path::Timeout | Path::Cancel | Path::CancelAll | Path::DropCluster => {
                        pending::<()>().await
                    }
                    // (A zero retention: waits until the test has subscribed.)
                    Path::Stop | Path::Drain | Path::RetentionZero => cx.go.notified().await,
                    Path::SelfCancel => {
                        let c = cx.cluster().expect("the cluster is there");
                        if cancel(&c, MAIN) {
                            cx.main_cancelled.store(true, SeqCst);
                        }
                    }
                    _ => {}
                }
                held.disarm();
                result(&cx, a)
            }
        });
        finish(b.id(id), ctx, main)
    }
}

/// Puts the scenario's callbacks, predicate, backoff and options on a task and submits it.
fn finish<B: Body<P, P>>(
    b: TaskBuilder<'_, B, P, P>,
    ctx: &Arc<Ctx>,
    main: bool,
) -> TaskHandle<P, P> {
    let path = ctx.sc.path;
    let (c1, c2, c3, c4) = (ctx.clone(), ctx.clone(), ctx.clone(), ctx.clone());
    let mut b = b
        .retry_if(move |_: &TaskError<P>| {
            c1.hook(Place::RetryIf);
            true
        })
        .backoff(move |_attempt: u32| {
            c2.hook(Place::Backoff);
            Duration::ZERO
        })
        .on_failure(move |_, _| c3.hook(Place::OnFailure))
        .on_complete(move |id, out| {
            let name = id.as_str().unwrap_or("?").to_string();
            c4.completed.lock().unwrap().push((name, fate_of(out)));
            c4.hook(Place::OnComplete);
        })
        .retention(if path == Path::RetentionZero {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        });
    if main {
        match path {
            Path::RetryRequeue => b = b.retry(1).retry_mode(RetryMode::Requeue),
            Path::RetryImmediate => b = b.retry(1).retry_mode(RetryMode::Immediate),
            Path::Timeout | Path::BlockingTimeout => b = b.timeout(TIMEOUT),
            _ => {}
        }
    } else {
        b = b.delay(Duration::from_secs(3600));
    }
    b.submit().expect("submit to a fresh cluster")
}

// ------------------------------------------------------------ the runner

/// Calls `f`, noting a panic that came out of the engine into its caller.
fn call<R>(fails: &mut Vec<String>, what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            fails.push(format!(
                "{what} panicked into its caller: {}",
                panic_message(&*p)
            ));
            None
        }
    }
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) -> Result<(), String> {
    let t0 = std::time::Instant::now();
    while !cond() {
        if t0.elapsed() > LIMIT {
            return Err(format!("never happened: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Takes the main task down its path (the cluster may be dropped on the way).
async fn drive(
    sc: Scenario,
    ctx: &Arc<Ctx>,
    c: Cluster,
    cluster: &mut Option<Cluster>,
    fails: &mut Vec<String>,
) {
    match sc.path {
        Path::Cancel | Path::BlockingCancel => {
            let took_effect = call(fails, "cancel_task", || cancel(&c, MAIN));
            if took_effect == Some(true) {
                ctx.main_cancelled.store(true, SeqCst);
            }
        }
        Path::Stop | Path::Drain => {
            let c2 = c.clone();
            let drain = sc.path == Path::Drain;
            let stop = tokio::spawn(async move {
                if drain {
                    c2.drain(LIMIT).await
                } else {
                    c2.stop(LIMIT).await
                }
            });
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            ctx.go.notify_one();
            match tokio::time::timeout(LIMIT * 2, stop).await {
                Err(_) => fails.push(format!("{:?} never returned", sc.path)),
                Ok(Err(e)) if e.is_panic() => fails.push(format!(
                    "{:?} panicked into its caller: {}",
                    sc.path,
                    panic_message(&*e.into_panic())
                )),
                Ok(_) => {}
            }
        }
        Path::StopTimeout => {
            let c2 = c.clone();
            let stop = tokio::spawn(async move { c2.stop(TIMEOUT).await });
            match tokio::time::timeout(LIMIT * 2, stop).await {
                Err(_) => fails.push("stop never returned".into()),
                Ok(Err(e)) if e.is_panic() => fails.push(format!(
                    "stop panicked into its caller: {}",
                    panic_message(&*e.into_panic())
                )),
                Ok(_) => {}
            }
        }
        Path::CancelAll => {
            call(fails, "cancel()", || c.cancel());
        }
        Path::RetentionZero => ctx.go.notify_one(),
        Path::DropCluster => {
            drop(c);
            ctx.cluster.lock().unwrap().take();
            let last = cluster.take();
            call(fails, "dropping the cluster", move || drop(last));
        }
        _ => {}
    }
}

/// Awaits `f` (at most [`LIMIT`]), catching a panic that comes out of its polls.
async fn guarded<F: std::future::Future>(what: &str, f: F) -> Result<F::Output, String> {
    let mut f = std::pin::pin!(f);
    let polled = std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(p) => std::task::Poll::Ready(Err(format!(
                "awaiting {what} panicked into its caller: {}",
                panic_message(&*p)
            ))),
        }
    });
    match tokio::time::timeout(LIMIT, polled).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what} never resolved")),
    }
}

async fn outcome<F>(what: &str, f: F) -> Result<Fate, String>
where
    F: std::future::Future<Output = Result<P, TaskError<P>>>,
{
    guarded(what, f).await.map(receive)
}

/// The outcome the main task must have, and the others it may have.
fn expected(ctx: &Ctx) -> (Fate, Vec<Fate>) {
    let sc = ctx.sc;
    let payload = |tag| {
        if sc.place.err_payload() {
            Fate::Failed(tag)
        } else {
            Fate::Value(tag)
        }
    };
    let mut truth = match sc.path {
        Path::Return
        | Path::Stop
        | Path::Drain
        | Path::DroppedHandle
        | Path::LateSubscriber
        | Path::RetentionZero => payload(1),
        Path::RetryRequeue | Path::RetryImmediate => {
            if sc.flavour == Flavour::Panic && matches!(sc.place, Place::RetryIf | Place::Backoff) {
                // A panicking predicate or backoff means no retry.
                Fate::Failed(1)
            } else {
                payload(2)
            }
        }
        Path::Timeout | Path::BlockingTimeout => Fate::TimedOut,
        Path::Cancel | Path::BlockingCancel | Path::SelfCancel => Fate::Cancelled,
        Path::StopTimeout | Path::CancelAll | Path::DropCluster => Fate::Shutdown,
    };
    if ctx.main_cancelled.load(SeqCst) {
        // `cancel_task` took effect: the outcome is `Cancelled`, guaranteed.
        truth = Fate::Cancelled;
    }
    let mut also = Vec::new();
    if matches!(sc.flavour, Flavour::ReenterCancelAll | Flavour::ReenterStop) {
        // User code shut the cluster down, maybe before the outcome was decided.
        also.push(Fate::Shutdown);
    }
    (truth, also)
}

async fn scenario(sc: Scenario) -> Vec<String> {
    let mut fails = Vec::new();
    let ctx = Arc::new(Ctx {
        sc,
        rt: tokio::runtime::Handle::current(),
        cluster: Mutex::new(None),
        fired: AtomicU32::new(0),
        main_cancelled: AtomicBool::new(false),
        bystander_cancelled: AtomicBool::new(false),
        started: AtomicU32::new(0),
        go: tokio::sync::Notify::new(),
        submitted: Mutex::new(Vec::new()),
        completed: Mutex::new(Vec::new()),
    });
    let cluster = Cluster::new(1).unwrap();
    cluster.run().unwrap();
    *ctx.cluster.lock().unwrap() = Some(cluster.clone());
    // Paused until the early subscriber is in: on a multi-thread runtime the
    // worker could otherwise run the main task to its end (and, with zero
    // retention, forget it) before this thread subscribes.
    cluster.pause();
    let bystander = submit(&cluster, &ctx, BYSTANDER);
    let handle = submit(&cluster, &ctx, MAIN);
    let early = call(&mut fails, "subscribe (early)", || {
        cluster.subscribe::<P, P>(MAIN)
    })
    .and_then(|r| {
        r.map_err(|e| fails.push(format!("early subscribe: {e}")))
            .ok()
    });
    cluster.resume();
    let mut handle = Some(handle);
    if matches!(sc.path, Path::DroppedHandle | Path::RetentionZero) {
        drop(handle.take());
    }
    if sc.path.waits() {
        if let Err(e) = wait_for("the main task starts", || ctx.started.load(SeqCst) > 0).await {
            fails.push(e);
        }
    }
    let mut cluster = Some(cluster);
    let c = cluster.clone().unwrap();
    drive(sc, &ctx, c, &mut cluster, &mut fails).await;
    let clone_panics =
        sc.flavour == Flavour::Panic && matches!(sc.place, Place::ValueClone | Place::ErrorClone);
    // Collected first, checked once everything resolved: user code may
    // cancel the task (and so decide its outcome) until then.
    let mut got_all: Vec<(&str, Result<Fate, String>, bool)> = Vec::new();
    let check = |fails: &mut Vec<String>, who: &str, got: Result<Fate, String>, copy: bool| {
        let (truth, also) = expected(&ctx);
        let ok = |got: &Fate| *got == truth || also.contains(got);
        match got {
            Err(e) => fails.push(e),
            // A copy whose `Clone` panicked cannot be the true outcome.
            Ok(Fate::Panicked) if copy && clone_panics => {}
            Ok(got) if ok(&got) => {}
            Ok(got) => fails.push(format!(
                "{who}: got {got:?}, the true outcome is {truth:?}{}",
                if also.is_empty() {
                    String::new()
                } else {
                    format!(" (or {also:?})")
                }
            )),
        }
    };
    if let Some(h) = handle.take() {
        got_all.push(("the handle", outcome("the handle", h).await, true));
    }
    if let Some(s) = early {
        got_all.push((
            "the subscription",
            outcome("the subscription", s).await,
            true,
        ));
    }
    if sc.path == Path::LateSubscriber {
        if let Some(c) = &cluster {
            match call(&mut fails, "subscribe (late)", || c.subscribe::<P, P>(MAIN)) {
                Some(Ok(s)) => {
                    let got = outcome("the late subscription", s).await;
                    got_all.push(("the late subscription", got, true));
                }
                Some(Err(e)) => fails.push(format!("late subscribe: {e}")),
                None => {}
            }
        }
    }
    let seen: Vec<Fate> = ctx
        .completed
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| id == MAIN)
        .map(|(_, f)| f.clone())
        .collect();
    for (who, got, copy) in got_all {
        check(&mut fails, who, got, copy);
    }
    match seen.as_slice() {
        [got] => check(&mut fails, "on_complete", Ok(got.clone()), false),
        other => fails.push(format!("on_complete ran {} times: {other:?}", other.len())),
    }
    // The one worker survived and its slot is free.
    let running = sc.path.keeps_running()
        && !matches!(sc.flavour, Flavour::ReenterCancelAll | Flavour::ReenterStop);
    if let (true, Some(c)) = (running, &cluster) {
        match c.task(|_| async { Ok::<u32, String>(42) }).submit() {
            Ok(h) => match tokio::time::timeout(LIMIT, h).await {
                Ok(Ok(42)) => {}
                Ok(other) => fails.push(format!("a later task: {other:?}")),
                Err(_) => fails.push("a later task never ran: the worker is dead or stuck".into()),
            },
            Err(e) => fails.push(format!("a later submit: {e}")),
        }
    }
    // Everything else resolves too.
    if let Some(c) = &cluster {
        call(&mut fails, "cancel() at the end", || c.cancel());
    }
    match outcome("the bystander", bystander).await {
        Err(e) => fails.push(e),
        Ok(got) => {
            let want = if ctx.bystander_cancelled.load(SeqCst) {
                Fate::Cancelled
            } else {
                Fate::Shutdown
            };
            if got != want {
                fails.push(format!("the bystander: got {got:?}, expected {want:?}"));
            }
        }
    }
    let submitted = std::mem::take(&mut *ctx.submitted.lock().unwrap());
    for h in submitted {
        match tokio::time::timeout(LIMIT, h).await {
            Ok(Ok(7) | Err(TaskError::Shutdown | TaskError::Cancelled)) => {}
            Ok(other) => fails.push(format!("a task user code submitted: {other:?}")),
            Err(_) => fails.push("a task user code submitted never resolved".into()),
        }
    }
    // Wait for the workers to be gone, so that dropping the last clone
    // below releases everything the cluster still holds (cached outcomes).
    ctx.cluster.lock().unwrap().take();
    if let Some(last) = cluster.take() {
        let c = last.clone();
        match guarded(
            "stop at the end",
            tokio::spawn(async move { c.stop(LIMIT).await }),
        )
        .await
        {
            Ok(Err(e)) if e.is_panic() => fails.push(format!(
                "stop at the end panicked into its caller: {}",
                panic_message(&*e.into_panic())
            )),
            Err(e) => fails.push(e),
            Ok(_) => {}
        }
        call(&mut fails, "dropping the cluster", move || drop(last));
    }
    if ctx.fired.load(SeqCst) == 0 {
        fails.push(format!(
            "the user code at {:?} never ran: the scenario tested nothing",
            sc.place
        ));
    }
    fails
}

fn run_place(place: Place) {
    // `USER_CODE_SCENARIO=ValueDrop/Return/Panic` runs only the scenarios
    // whose name contains it, with their panics shown (for debugging).
    let only = std::env::var("USER_CODE_SCENARIO").ok();
    if only.is_none() {
        quiet_panics_starting_with(BOOM);
    }
    let list: Vec<Scenario> = scenarios(place)
        .into_iter()
        .filter(|sc| {
            only.as_ref()
                .is_none_or(|o| format!("{sc:?}").contains(o.as_str()))
        })
        .collect();
    if list.is_empty() {
        assert!(only.is_some(), "no scenarios for {place:?}");
        return;
    }
    // All at once, each on its own thread and runtime, each watched.
    let watched: Vec<_> = list
        .iter()
        .map(|&sc| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let r = watchdog_result(&format!("{sc:?}"), WATCHDOG, move || {
                    let rt = common::runtime(sc.runtime, false);
                    let mut fails = rt.block_on(scenario(sc));
                    call(&mut fails, "dropping the runtime", move || drop(rt));
                    fails
                });
                let _ = tx.send(r);
            });
            (sc, rx)
        })
        .collect();
    let mut failed = Vec::new();
    for (sc, rx) in watched {
        let r = rx.recv().expect("the watcher answers");
        let fails = match r {
            Ok(f) => f,
            Err(WatchdogError::Hung) => {
                vec![format!("no answer within {WATCHDOG:?}: deadlock or hang")]
            }
            Err(WatchdogError::Panicked(p)) => {
                vec![format!("the scenario panicked: {}", panic_message(&*p))]
            }
        };
        if !fails.is_empty() {
            failed.push(format!("{sc:?}: {}", fails.join("; ")));
        }
    }
    let n = list.len();
    assert!(
        failed.is_empty(),
        "{} of {n} scenarios failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("{place:?}: {n} scenarios passed");
}

#[test]
fn body() {
    run_place(Place::Body);
}

#[test]
fn body_capture_drop() {
    run_place(Place::BodyDrop);
}

#[test]
fn future_drop() {
    run_place(Place::FutureDrop);
}

#[test]
fn value_drop() {
    run_place(Place::ValueDrop);
}

#[test]
fn value_clone() {
    run_place(Place::ValueClone);
}

#[test]
fn error_drop() {
    run_place(Place::ErrorDrop);
}

#[test]
fn error_clone() {
    run_place(Place::ErrorClone);
}

#[test]
fn on_failure() {
    run_place(Place::OnFailure);
}

#[test]
fn on_complete() {
    run_place(Place::OnComplete);
}

#[test]
fn retry_if() {
    run_place(Place::RetryIf);
}

#[test]
fn backoff() {
    run_place(Place::Backoff);
}

/// The table itself: every place has scenarios on several paths, and every
/// path and flavour is used.
#[test]
fn the_table_covers_every_place_path_and_flavour() {
    let places = [
        Place::Body,
        Place::BodyDrop,
        Place::FutureDrop,
        Place::ValueDrop,
        Place::ValueClone,
        Place::ErrorDrop,
        Place::ErrorClone,
        Place::OnFailure,
        Place::OnComplete,
        Place::RetryIf,
        Place::Backoff,
    ];
    let all: Vec<Scenario> = places.iter().flat_map(|&p| scenarios(p)).collect();
    for path in PATHS {
        assert!(all.iter().any(|s| s.path == path), "{path:?}");
    }
    for flavour in FLAVOURS {
        assert!(all.iter().any(|s| s.flavour == flavour), "{flavour:?}");
    }
    for place in places {
        assert!(
            scenarios(place).len() >= 2 * FLAVOURS.len() - 1,
            "{place:?}"
        );
    }
    eprintln!("{} scenarios", all.len());
}
