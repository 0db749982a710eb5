//! A concurrent soak on the real multi-thread runtime, and again on a
//! `current_thread` one: producers submit tens
//! of thousands of tasks (values, failures with retries in both modes,
//! panics, cached outcomes, user ids from a shared pool, scheduled starts)
//! while other tasks cancel random ids, subscribe late to random ids and
//! re-submit pool ids; a graceful stop lands in the middle.
//!
//! Every submit is numbered (`g`) and every body returns or fails with
//! `(g, attempt)`, so each outcome can be checked against what that exact
//! submission must produce. Invariants:
//! - every accepted submit's handle resolves (awaited once each, under a
//!   timeout), `on_complete` runs exactly once for it and never for a
//!   refused one, and a refused submit never runs its body;
//! - accepted + duplicate + shutting-down refusals == submit calls, and the
//!   outcome counts add up to the accepted ones;
//! - every value / error is the right one for its task and attempt;
//! - the outcome is `Cancelled` iff a `cancel_task` of that task returned true;
//! - every subscription resolves to the outcome of the handle of the task it found;
//! - at the end nothing is queued or running, and once the cache retention
//!   has passed nothing is held.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

use corral::{
    Cluster, FixedBackoff, RetryMode, SubmitError, SubscribeError, Subscription, TaskContext,
    TaskError, TaskHandle, TaskId,
};

use common::{cancel, quiet_panics_starting_with, Flavor};

const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 10_000;
const RESUBMITTERS: usize = 2;
const PER_RESUBMITTER: usize = 1_500;
const PRIMARY: usize = PRODUCERS * PER_PRODUCER;
/// Every submit call, numbered `0..TOTAL`.
const TOTAL: usize = PRIMARY + RESUBMITTERS * PER_RESUBMITTER;
/// The graceful stop starts once this many submit calls were made.
const STOP_AFTER: usize = TOTAL / 2;
/// User ids shared by producers and re-submitters: `pool-0` .. `pool-63`.
const POOL: usize = 64;
const RETENTION: Duration = Duration::from_millis(30);
/// Turns a hang into a failure with a message.
const LIMIT: Duration = Duration::from_secs(60);

/// `(submission number, attempt)`: both the value and the error of every task.
type Val = (usize, u32);
type Out = Result<Val, TaskError<Val>>;

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = mix(self.0);
        (self.0 % n as u64) as usize
    }
}

/// What submission `g` is: derived from `g` alone.
#[derive(Debug, Clone, Copy)]
struct Spec {
    /// Attempts 1..=fails fail (return an error, or panic).
    fails: u32,
    retries: u32,
    mode: RetryMode,
    backoff: Duration,
    panics: bool,
    /// 0: not cached; 1: `cacheable` (cluster retention); 2: `retention`.
    cache: u8,
    /// A user id from the pool.
    pool: Option<usize>,
    delay: Option<Duration>,
    yields: bool,
}

fn spec(g: usize) -> Spec {
    let h = mix(g as u64 ^ 0xC0FF_EE00);
    let fails = if h.is_multiple_of(3) {
        1 + ((h >> 4) % 3) as u32
    } else {
        0
    };
    let retries = if fails > 0 && (h >> 8).is_multiple_of(4) {
        fails - 1 // runs out of retries
    } else {
        fails + ((h >> 10) % 2) as u32
    };
    Spec {
        fails,
        retries,
        mode: if (h >> 12).is_multiple_of(2) {
            RetryMode::Requeue
        } else {
            RetryMode::Immediate
        },
        backoff: if (h >> 13).is_multiple_of(8) {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        },
        panics: (h >> 16).is_multiple_of(8),
        cache: match (h >> 20) % 16 {
            0 => 1,
            1 => 2,
            _ => 0,
        },
        pool: (h >> 24)
            .is_multiple_of(10)
            .then_some(((h >> 28) as usize) % POOL),
        delay: (h >> 36)
            .is_multiple_of(16)
            .then(|| Duration::from_millis(1 + (h >> 40) % 4)),
        yields: (h >> 44).is_multiple_of(4),
    }
}

fn pool_name(n: usize) -> String {
    format!("pool-{n}")
}

const K_VALUE: u8 = 1;
const K_FAILED: u8 = 2;
const K_PANICKED: u8 = 3;
const K_TIMED_OUT: u8 = 4;
const K_CANCELLED: u8 = 5;
const K_SHUTDOWN: u8 = 6;

fn kind(out: &Out) -> u8 {
    match out {
        Ok(_) => K_VALUE,
        Err(TaskError::Failed(_)) => K_FAILED,
        Err(TaskError::Panicked { .. }) => K_PANICKED,
        Err(TaskError::TimedOut { .. }) => K_TIMED_OUT,
        Err(TaskError::Cancelled) => K_CANCELLED,
        Err(TaskError::Shutdown) => K_SHUTDOWN,
        Err(_) => 0,
    }
}

fn table<T>(f: impl Fn() -> T) -> Vec<T> {
    (0..TOTAL).map(|_| f()).collect()
}

struct State {
    /// Which run (runtime flavour) this state belongs to.
    run: usize,
    cluster: Cluster,
    /// Body invocations per submission.
    runs: Vec<AtomicU32>,
    /// `on_complete` calls per submission, and the kind it saw.
    completions: Vec<AtomicU32>,
    completion_kind: Vec<AtomicU8>,
    accepted: Vec<AtomicBool>,
    /// A `cancel_task` of this submission returned true.
    cancel_true: Vec<AtomicBool>,
    /// The latest accepted submission of each pool id. Submits, cancels and
    /// subscribes by pool id hold its lock, so they know which submission
    /// the id named at that moment.
    pool: Vec<Mutex<Option<usize>>>,
    /// Generated ids of accepted submissions.
    generated: Mutex<Vec<(TaskId, usize)>>,
    submit_calls: AtomicUsize,
    refused_duplicate: AtomicUsize,
    refused_shutdown: AtomicUsize,
    submitters_done: AtomicUsize,
}

impl State {
    fn submitting(&self) -> bool {
        self.submitters_done.load(SeqCst) < PRODUCERS + RESUBMITTERS
    }

    /// Submits number `g` (under `pool` if given, else as its spec says).
    fn submit(&self, g: usize, pool: Option<usize>) -> Result<TaskHandle<Val, Val>, SubmitError> {
        let sp = spec(g);
        let pool = pool.or(sp.pool);
        let run = self.run;
        let body = move |ctx: TaskContext| {
            state(run).runs[g].fetch_add(1, SeqCst);
            async move {
                let a = ctx.attempt();
                if sp.yields {
                    tokio::task::yield_now().await;
                }
                if a <= sp.fails {
                    if sp.panics {
                        panic!("stress-panic {g}/{a}");
                    }
                    Err((g, a))
                } else {
                    Ok((g, a))
                }
            }
        };
        let mut b = self
            .cluster
            .task(body)
            .retry(sp.retries)
            .retry_mode(sp.mode)
            .backoff(FixedBackoff::new(sp.backoff))
            .on_complete(move |_, out: &Out| {
                let st = state(run);
                st.completion_kind[g].store(kind(out), SeqCst);
                st.completions[g].fetch_add(1, SeqCst);
            });
        if let Some(d) = sp.delay {
            b = b.delay(d);
        }
        b = match sp.cache {
            1 => b.cacheable(true),
            2 => b.retention(RETENTION),
            _ => b,
        };
        let r = match pool {
            Some(n) => {
                let mut latest = self.pool[n].lock().unwrap();
                let r = b.id(pool_name(n)).submit();
                if r.is_ok() {
                    *latest = Some(g);
                }
                r
            }
            None => b.submit(),
        };
        self.submit_calls.fetch_add(1, SeqCst);
        match &r {
            Ok(h) => {
                self.accepted[g].store(true, SeqCst);
                if pool.is_none() {
                    assert!(h.id().is_generated());
                    self.generated.lock().unwrap().push((h.id().clone(), g));
                }
            }
            Err(SubmitError::DuplicateId(id)) => {
                let n = pool.expect("DuplicateId for a generated id");
                assert_eq!(id, &TaskId::from(pool_name(n)));
                self.refused_duplicate.fetch_add(1, SeqCst);
            }
            Err(SubmitError::ShuttingDown) => {
                self.refused_shutdown.fetch_add(1, SeqCst);
            }
            Err(e) => panic!("submit {g}: unexpected error {e:?}"),
        }
        r
    }
}

/// The state is global to this test binary (one test), so that bodies and
/// callbacks reach it without capturing an `Arc` each.
static STATES: [std::sync::OnceLock<State>; 2] =
    [std::sync::OnceLock::new(), std::sync::OnceLock::new()];

fn state(run: usize) -> &'static State {
    STATES[run].get().expect("state initialised")
}

/// Submits numbers `range`, then awaits every accepted handle once.
async fn submitter(
    run: usize,
    range: std::ops::Range<usize>,
    resubmit_seed: Option<u64>,
) -> Vec<(usize, Out)> {
    let st = state(run);
    let mut rng = resubmit_seed.map(Rng);
    let mut handles = Vec::new();
    let mut refused_at = None;
    for (k, g) in range.enumerate() {
        // Re-submitters reuse pool ids (finished ones are replaced; pending
        // ones are DuplicateId).
        let pool = rng.as_mut().map(|r| r.below(POOL));
        let r = st.submit(g, pool);
        if let Some(first) = refused_at {
            assert!(
                matches!(r, Err(SubmitError::ShuttingDown)),
                "submit {g} was not refused though submit {first} was refused as ShuttingDown: {:?}",
                r.as_ref().map(|h| h.id().clone())
            );
        }
        match r {
            Ok(h) => handles.push((g, h)),
            Err(SubmitError::ShuttingDown) => refused_at = refused_at.or(Some(g)),
            Err(_) => {}
        }
        if rng.is_some() || k % 4 == 0 {
            tokio::task::yield_now().await;
        }
        // Back-pressure, so that most tasks run before the stop instead of
        // piling up in the queue (bounded: a stuck queue is caught later).
        if k % 64 == 0 {
            for _ in 0..200 {
                if st.cluster.stats().queued < 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    st.submitters_done.fetch_add(1, SeqCst);
    let mut outcomes = Vec::with_capacity(handles.len());
    for (g, h) in handles {
        let out = tokio::time::timeout(LIMIT, h)
            .await
            .unwrap_or_else(|_| panic!("submission {g} ({:?}): handle never resolved", spec(g)));
        outcomes.push((g, out));
    }
    outcomes
}

/// Helpers act a few times per millisecond, not as fast as they can, so
/// that they hit a fair share of the tasks rather than nearly all of them.
async fn pace(ops: usize) {
    if ops.is_multiple_of(4) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    } else {
        tokio::task::yield_now().await;
    }
}

async fn canceller(run: usize, seed: u64) -> (usize, usize) {
    let st = state(run);
    let mut rng = Rng(seed);
    let (mut tried, mut found) = (0, 0);
    while st.submitting() {
        tried += 1;
        if rng.below(2) == 0 {
            let picked = {
                let ids = st.generated.lock().unwrap();
                (!ids.is_empty()).then(|| ids[rng.below(ids.len())].clone())
            };
            if let Some((id, g)) = picked {
                if cancel(&st.cluster, id) {
                    st.cancel_true[g].store(true, SeqCst);
                    found += 1;
                }
            }
        } else {
            let n = rng.below(POOL);
            let latest = st.pool[n].lock().unwrap();
            if cancel(&st.cluster, pool_name(n)) {
                let g = latest.unwrap_or_else(|| {
                    panic!("cancel_task({}) found a task never accepted", pool_name(n))
                });
                st.cancel_true[g].store(true, SeqCst);
                found += 1;
            }
        }
        pace(tried).await;
    }
    (tried, found)
}

async fn late_subscriber(run: usize, seed: u64) -> (Vec<(usize, Subscription<Val, Val>)>, usize) {
    let st = state(run);
    let mut rng = Rng(seed);
    let mut subs = Vec::new();
    let mut unknown = 0;
    while st.submitting() {
        let (r, g) = if rng.below(2) == 0 {
            let picked = {
                let ids = st.generated.lock().unwrap();
                (!ids.is_empty()).then(|| ids[rng.below(ids.len())].clone())
            };
            let Some((id, g)) = picked else {
                tokio::task::yield_now().await;
                continue;
            };
            (st.cluster.subscribe::<Val, Val>(id), Some(g))
        } else {
            let n = rng.below(POOL);
            let latest = st.pool[n].lock().unwrap();
            (st.cluster.subscribe::<Val, Val>(pool_name(n)), *latest)
        };
        match r {
            Ok(s) => {
                let g = g.unwrap_or_else(|| {
                    panic!("subscribe to {} found a task never accepted", s.id())
                });
                subs.push((g, s));
            }
            Err(SubscribeError::UnknownId(_)) => unknown += 1,
            Err(e) => panic!("unexpected subscribe error {e:?}"),
        }
        pace(subs.len() + unknown).await;
    }
    (subs, unknown)
}

#[test]
fn concurrent_soak_with_stop_in_the_middle_multi_thread() {
    common::on(Flavor::MultiThread, || soak(0));
}

/// The same soak with the workers, producers and helpers all on one thread
/// (the flavour of `#[tokio::test]`).
#[test]
fn concurrent_soak_with_stop_in_the_middle_current_thread() {
    common::on(Flavor::CurrentThread, || soak(1));
}

async fn soak(run: usize) {
    quiet_panics_starting_with("stress-panic");
    let cluster = Cluster::builder()
        .workers(4)
        .retention(RETENTION)
        .build()
        .unwrap();
    let st = State {
        run,
        cluster: cluster.clone(),
        runs: table(|| AtomicU32::new(0)),
        completions: table(|| AtomicU32::new(0)),
        completion_kind: table(|| AtomicU8::new(0)),
        accepted: table(|| AtomicBool::new(false)),
        cancel_true: table(|| AtomicBool::new(false)),
        pool: (0..POOL).map(|_| Mutex::new(None)).collect(),
        generated: Mutex::new(Vec::new()),
        submit_calls: AtomicUsize::new(0),
        refused_duplicate: AtomicUsize::new(0),
        refused_shutdown: AtomicUsize::new(0),
        submitters_done: AtomicUsize::new(0),
    };
    assert!(STATES[run].set(st).is_ok(), "one soak per run");
    let st = state(run);

    let mut submitters = Vec::new();
    for p in 0..PRODUCERS {
        let range = p * PER_PRODUCER..(p + 1) * PER_PRODUCER;
        submitters.push(tokio::spawn(submitter(run, range, None)));
    }
    for r in 0..RESUBMITTERS {
        let start = PRIMARY + r * PER_RESUBMITTER;
        submitters.push(tokio::spawn(submitter(
            run,
            start..start + PER_RESUBMITTER,
            Some(100 + r as u64),
        )));
    }
    let cancellers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(canceller(run, 200 + i)))
        .collect();
    let subscribers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(late_subscriber(run, 300 + i)))
        .collect();
    let c = cluster.clone();
    let stopper = tokio::spawn(async move {
        while state(run).submit_calls.load(SeqCst) < STOP_AFTER {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::timeout(LIMIT, c.stop(LIMIT)).await
    });

    // Every handle, awaited once by its submitter.
    let mut outcomes: Vec<Option<Out>> = (0..TOTAL).map(|_| None).collect();
    for s in submitters {
        for (g, out) in s.await.expect("submitter panicked") {
            assert!(outcomes[g].is_none(), "submission {g} resolved twice");
            outcomes[g] = Some(out);
        }
    }
    let stopped = stopper.await.expect("stopper panicked");
    assert_eq!(stopped, Ok(Ok(())), "graceful stop of short tasks");
    let (mut cancel_tries, mut cancel_found) = (0, 0);
    for c in cancellers {
        let (t, f) = c.await.expect("canceller panicked");
        cancel_tries += t;
        cancel_found += f;
    }
    let mut subs = Vec::new();
    let mut unknown = 0;
    for s in subscribers {
        let (v, u) = s.await.expect("subscriber panicked");
        subs.extend(v);
        unknown += u;
    }

    // Submit accounting: every call accepted or refused for a stated reason.
    let accepted = (0..TOTAL).filter(|&g| st.accepted[g].load(SeqCst)).count();
    let dup = st.refused_duplicate.load(SeqCst);
    let shut = st.refused_shutdown.load(SeqCst);
    assert_eq!(st.submit_calls.load(SeqCst), TOTAL);
    assert_eq!(
        accepted + dup + shut,
        TOTAL,
        "every submit accepted or refused"
    );
    assert!(
        shut > 0,
        "the stop in the middle must refuse the later submits"
    );

    // Outcomes: one per accepted submit, each the right one.
    let (mut ok, mut failed, mut panicked, mut cancelled, mut shutdown) = (0, 0, 0, 0, 0);
    for (g, out) in outcomes.iter().enumerate() {
        let sp = spec(g);
        let runs = st.runs[g].load(SeqCst);
        let completions = st.completions[g].load(SeqCst);
        let Some(out) = out else {
            assert!(
                !st.accepted[g].load(SeqCst),
                "submission {g}: accepted but never awaited"
            );
            assert_eq!(runs, 0, "submission {g}: refused but its body ran");
            assert_eq!(
                completions, 0,
                "submission {g}: refused but on_complete ran"
            );
            continue;
        };
        let what = format!("submission {g} {sp:?} (body ran {runs} times)");
        assert!(st.accepted[g].load(SeqCst), "{what}");
        assert_eq!(completions, 1, "{what}: on_complete must run exactly once");
        assert_eq!(
            st.completion_kind[g].load(SeqCst),
            kind(out),
            "{what}: on_complete saw another outcome than the handle: {out:?}"
        );
        assert!(runs <= sp.retries + 1, "{what}: too many attempts");
        let was_cancelled = st.cancel_true[g].load(SeqCst);
        assert_eq!(
            was_cancelled,
            out == &Err(TaskError::Cancelled),
            "{what}: outcome {out:?}, but cancel_task returned true for it: {was_cancelled}"
        );
        match out {
            Ok((v, a)) => {
                assert_eq!(*v, g, "{what}: another task's value");
                assert!(
                    sp.fails <= sp.retries,
                    "{what}: value without enough retries"
                );
                assert_eq!(*a, sp.fails + 1, "{what}: value from the wrong attempt");
                assert_eq!(runs, *a, "{what}");
                ok += 1;
            }
            Err(TaskError::Failed((v, a))) => {
                assert_eq!(*v, g, "{what}: another task's error");
                assert!(
                    !sp.panics && sp.fails > sp.retries,
                    "{what}: failed: {out:?}"
                );
                assert_eq!(*a, sp.retries + 1, "{what}: not the last attempt's error");
                assert_eq!(runs, *a, "{what}");
                failed += 1;
            }
            Err(TaskError::Panicked { message }) => {
                assert!(
                    sp.panics && sp.fails > sp.retries,
                    "{what}: panicked: {out:?}"
                );
                assert_eq!(
                    message,
                    &format!("stress-panic {g}/{}", sp.retries + 1),
                    "{what}"
                );
                panicked += 1;
            }
            Err(TaskError::Cancelled) => cancelled += 1,
            Err(TaskError::Shutdown) => shutdown += 1,
            Err(e) => panic!("{what}: unexpected outcome {e:?}"),
        }
    }
    assert_eq!(
        ok + failed + panicked + cancelled + shutdown,
        accepted,
        "one outcome per accepted submit"
    );
    assert!(
        ok > 0 && shutdown > 0,
        "the run did work before and after the stop"
    );

    // Subscriptions: the same outcome as the handle of the task they found.
    let n_subs = subs.len();
    for (g, s) in subs {
        let id = s.id().clone();
        let got = tokio::time::timeout(LIMIT, s)
            .await
            .unwrap_or_else(|_| panic!("subscription to {id} (submission {g}) never resolved"));
        assert_eq!(
            Some(&got),
            outcomes[g].as_ref(),
            "subscription to {id} (submission {g}) differs from its handle"
        );
    }
    eprintln!(
        "stress: {TOTAL} submits: {accepted} accepted, {dup} duplicate, {shut} refused by the stop; \
         outcomes: {ok} values, {failed} failed, {panicked} panicked, {cancelled} cancelled, \
         {shutdown} shut down; cancels: {cancel_found}/{cancel_tries} found; \
         subscriptions: {n_subs} (+{unknown} unknown)"
    );

    // Nothing queued or running once every handle resolved and stop returned.
    let s = cluster.stats();
    assert_eq!((s.queued, s.running), (0, 0), "{s:?}");

    // Once the retention has passed, nothing is held (cached outcomes purged).
    tokio::time::sleep(RETENTION * 3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut s = cluster.stats();
    while s.held != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        s = cluster.stats();
    }
    assert_eq!(
        s,
        corral::ClusterStats::default(),
        "after everything settled and the cache retention ({RETENTION:?}) passed, \
         the cluster still holds task state"
    );
}
