//! Helpers shared by the integration tests.
//!
//! Every `tests/*.rs` file is a test binary of its own and pulls this module
//! in with `mod common;` (Cargo does not build `tests/common/mod.rs` as a
//! test binary by itself).

// Each test binary compiles its own copy of this module and uses only some of
// its helpers; without this, every binary would warn about the ones it skips.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use corral::{Cluster, TaskError, TaskHandle};

/// One millisecond.
pub const MS: Duration = Duration::from_millis(1);
/// One second.
pub const SEC: Duration = Duration::from_secs(1);
/// One hour: far enough away that nothing due in an hour happens during a test.
pub const HOUR: Duration = Duration::from_secs(3600);

/// Sets its flag (with `SeqCst`) when dropped: proves that a task's body,
/// future or output was dropped (released).
pub struct DropFlag(pub Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Yields to the other tasks of the test runtime until `cond` holds, at most
/// 10 000 times; then panics with "condition never reached: {what}".
///
/// Never advances the clock, so on tokio's paused clock it proves that
/// `cond` came about without any time passing.
pub async fn yield_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never reached: {what}");
}

/// Awaits the handle `h` for at most `limit`; panics with
/// "{what}: the handle never resolved (lost outcome)" if it takes longer.
///
/// Turns a lost outcome into a failure with a message instead of a hang.
/// Under tokio's paused clock `limit` is virtual time.
pub async fn resolve<T, E>(
    limit: Duration,
    what: &str,
    h: TaskHandle<T, E>,
) -> Result<T, TaskError<E>> {
    tokio::time::timeout(limit, h)
        .await
        .unwrap_or_else(|_| panic!("{what}: the handle never resolved (lost outcome)"))
}

/// A list that task bodies and callbacks append to, shared with the test.
pub type Log<T> = Arc<Mutex<Vec<T>>>;

/// A new, empty [`Log`].
pub fn log<T>() -> Log<T> {
    Arc::new(Mutex::new(Vec::new()))
}

/// A copy of everything in `log` so far.
pub fn snapshot<T: Clone>(log: &Log<T>) -> Vec<T> {
    log.lock().unwrap().clone()
}

/// Keeps panics that a test raises on purpose out of the test output.
///
/// The first call in a test binary installs a panic hook that drops every
/// panic whose message (a `String` or `&str` payload) starts with one of the
/// prefixes given so far; every other panic (test failures included) still
/// reaches the hook that was in place before. Further calls only add their
/// prefix, so this may be called from every test (or test case) that needs it.
pub fn quiet_panics_starting_with(prefix: &'static str) {
    static PREFIXES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    static HOOK: Once = Once::new();

    {
        let mut prefixes = PREFIXES.lock().unwrap_or_else(PoisonError::into_inner);
        if !prefixes.contains(&prefix) {
            prefixes.push(prefix);
        }
    }
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            let expected = PREFIXES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|p| msg.starts_with(p));
            if !expected {
                default(info);
            }
        }));
    });
}

/// Cancels the task `id` and tells whether the cancel took effect (the task
/// was pending or running and its outcome is now `Cancelled`).
///
/// Every new call of `Cluster::cancel_task` in the tests goes through here,
/// so that a change of its return type is a one-line change.
pub fn cancel(c: &Cluster, id: impl corral::TaskRef) -> bool {
    c.cancel_task(id).took_effect()
}

/// The flavour of a tokio runtime a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// One thread: the flavour of `#[tokio::test]`.
    CurrentThread,
    /// Two worker threads.
    MultiThread,
}

impl Flavor {
    /// Both flavours.
    pub const ALL: [Flavor; 2] = [Flavor::CurrentThread, Flavor::MultiThread];
}

/// A runtime of `flavor` with time and I/O enabled; on tokio's paused clock
/// if `paused` (which needs `CurrentThread`).
pub fn runtime(flavor: Flavor, paused: bool) -> tokio::runtime::Runtime {
    let mut b = match flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    b.enable_all();
    if paused {
        b.start_paused(true);
    }
    b.build().expect("build a runtime")
}

/// Runs `f` on a thread of its own and waits at most `limit` (wall clock)
/// for it. A deadlock or hang in `f` becomes a failure naming `what`
/// instead of a test runner that never returns (the stuck thread is
/// abandoned). A panic in `f` is passed on as it is.
pub fn watchdog<R: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    match watchdog_result(what, limit, f) {
        Ok(r) => r,
        Err(WatchdogError::Panicked(payload)) => std::panic::resume_unwind(payload),
        Err(WatchdogError::Hung) => {
            panic!("{what}: no answer within {limit:?} of wall time (deadlock or hang)")
        }
    }
}

/// Why [`watchdog_result`] got no value.
pub enum WatchdogError {
    /// No answer within the limit.
    Hung,
    /// `f` panicked with this payload.
    Panicked(Box<dyn std::any::Any + Send>),
}

/// Like [`watchdog`], but returns what went wrong instead of panicking.
pub fn watchdog_result<R: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, WatchdogError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("watched: {what}"))
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .expect("spawn a watched thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(payload)) => Err(WatchdogError::Panicked(payload)),
        Err(_) => Err(WatchdogError::Hung),
    }
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "<non-string panic payload>".to_string())
}

// ------------------------------------------------------------------ races

/// A barrier for `n` threads that spins (the racers leave it within
/// nanoseconds of each other) and fails loudly instead of waiting forever.
pub struct SpinBarrier {
    n: usize,
    arrived: std::sync::atomic::AtomicUsize,
}

impl SpinBarrier {
    /// A barrier for `n` racers.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(SpinBarrier {
            n,
            arrived: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Arrives and spins until all `n` have arrived (20 s at most).
    pub fn wait(&self) {
        self.arrived.fetch_add(1, SeqCst);
        let start = std::time::Instant::now();
        let mut spins = 0u32;
        while self.arrived.load(SeqCst) < self.n {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "spin barrier: a racer never arrived (task never started?)"
                );
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Busy-waits `n` spin-loop hints (a few nanoseconds each).
pub fn spin(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// A small deterministic PRNG (xorshift64*), so every run sweeps the same
/// spread of offsets.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as u32 % n.max(1)
    }
}

/// Counts how each iteration of a race came out, and fails loudly if a side
/// of the race was never (or too rarely) seen: a race test whose race did
/// not happen tested nothing.
#[derive(Debug)]
pub struct RaceTally {
    name: &'static str,
    sides: Vec<(&'static str, usize)>,
    iterations: usize,
}

impl RaceTally {
    /// A tally for the race `name` whose iterations come out as one of `sides`.
    pub fn new(name: &'static str, sides: &[&'static str]) -> Self {
        RaceTally {
            name,
            sides: sides.iter().map(|s| (*s, 0)).collect(),
            iterations: 0,
        }
    }

    /// One iteration came out as `side`.
    pub fn saw(&mut self, side: &'static str) {
        self.iterations += 1;
        match self.sides.iter_mut().find(|(s, _)| *s == side) {
            Some((_, n)) => *n += 1,
            None => panic!("{}: unknown side {side}", self.name),
        }
    }

    /// How often `side` was seen.
    pub fn count(&self, side: &str) -> usize {
        self.sides
            .iter()
            .find(|(s, _)| *s == side)
            .map_or(0, |(_, n)| *n)
    }

    /// Prints the tally and fails unless every side was seen at least
    /// `min_each` times.
    pub fn assert_each_seen(&self, min_each: usize) {
        eprintln!(
            "{}: {:?} in {} iterations",
            self.name, self.sides, self.iterations
        );
        for (side, n) in &self.sides {
            assert!(
                *n >= min_each,
                "{}: the race did not happen: side {side:?} seen {n} times (at least {min_each} needed) \
                 in {} iterations: {:?}",
                self.name,
                self.iterations,
                self.sides
            );
        }
    }
}

/// The skeleton of a race test: iteration numbers, a deterministic random
/// source for the racers' offsets, and a tally of how each iteration came
/// out. It runs at least `min` iterations, then goes on until every side of
/// the race was seen `each` times (at most `max` iterations), so a loaded
/// machine that skews the timing gets more tries instead of a vacuous pass;
/// [`Race::finish`] fails loudly if a side was still missing.
pub struct Race {
    tally: RaceTally,
    rng: Rng,
    next: usize,
    min: usize,
    max: usize,
    each: usize,
}

impl Race {
    /// A race `name` whose iterations come out as one of `sides`.
    pub fn new(
        name: &'static str,
        sides: &[&'static str],
        seed: u64,
        min: usize,
        max: usize,
        each: usize,
    ) -> Self {
        Race {
            tally: RaceTally::new(name, sides),
            rng: Rng::new(seed),
            next: 0,
            min,
            max,
            each,
        }
    }

    /// The next iteration's number, or `None` when the race has run enough.
    pub fn next(&mut self) -> Option<usize> {
        let enough = self.next >= self.min && self.tally.sides.iter().all(|(_, n)| *n >= self.each);
        if enough || self.next >= self.max {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    /// A random number in `0..n` (for a racer's offset).
    pub fn below(&mut self, n: u32) -> u32 {
        self.rng.below(n)
    }

    /// The current iteration came out as `side`.
    pub fn saw(&mut self, side: &'static str) {
        self.tally.saw(side);
    }

    /// Iterations run so far.
    pub fn iterations(&self) -> usize {
        self.next
    }

    /// How often `side` was seen.
    pub fn count(&self, side: &str) -> usize {
        self.tally.count(side)
    }

    /// Fails unless every side was seen `each` times.
    pub fn finish(self) {
        self.tally.assert_each_seen(self.each);
    }
}

/// Starts a racer thread: it waits at `bar` with the others, spins `offset`
/// spin-loop hints, then runs `f`.
pub fn racer<R: Send + 'static>(
    bar: &Arc<SpinBarrier>,
    offset: u32,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let bar = bar.clone();
    std::thread::spawn(move || {
        bar.wait();
        spin(offset);
        f()
    })
}

/// Joins a racer thread without blocking the runtime (on a
/// `current_thread` runtime the workers must go on running meanwhile).
pub async fn join<R>(t: std::thread::JoinHandle<R>) -> R {
    let t0 = std::time::Instant::now();
    let mut polls = 0u32;
    while !t.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "a racer thread never finished"
        );
        // A few quick turns, then 1 ms naps: the racer needs the CPU more
        // than this loop does.
        polls += 1;
        if polls < 16 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(MS).await;
        }
    }
    t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs `test` on a fresh runtime of `flavor` (real clock).
pub fn on<F: std::future::Future>(flavor: Flavor, test: impl FnOnce() -> F) -> F::Output {
    runtime(flavor, false).block_on(test())
}
