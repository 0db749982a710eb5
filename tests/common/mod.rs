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

use corral::{TaskError, TaskHandle};

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
