//! Model-based property test: random sequences of operations run against a
//! one-worker cluster on tokio's paused clock, and against a small reference
//! model that predicts every attempt start (task, attempt, time) and every
//! outcome. The two must agree exactly. Tasks may name the one limiter
//! and the one key (limit 1, which one worker never fills; what the model
//! predicts for it is `pause_key` and `resume_key`: its tasks wait, its
//! due immediate retry is held, and a resume puts them back in place).
//!
//! Timing is made exact by construction:
//! - every engine duration (start offsets, body sleeps, timeouts, backoffs,
//!   retention, stop timeouts, the limiter's interval) is a whole number of
//!   seconds (a limited task's admissions then fall on the offsets of the
//!   claims that charged the limiter), except body
//!   sleeps, which are whole seconds plus 500 ms (so a sleep never ends at
//!   the same instant as its timeout);
//! - the test's operations happen at distinct millisecond offsets 1..=499
//!   within a second, one new offset per operation.
//!
//! So an operation never happens at the same instant as an engine event, and
//! the engine's own coinciding events are ordered by the queue's exact rules.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{
    Cluster, Duplicate, FixedBackoff, Overflow, Rate, RetryMode, SubmitError, Subscription,
    TaskError, TaskHandle, TaskId,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use tokio::time::Instant;

use common::{cancel, quiet_panics_starting_with};

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const SEC: u64 = 1000;
/// The limiter `m`: its interval (ms) and burst.
const LIMIT_T: u64 = 2 * SEC;
const LIMIT_BURST: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    /// Succeeds at once with the task's index.
    Ok,
    /// Fails on the first `k` attempts, then succeeds.
    FailTimes(u32),
    /// Panics on every attempt.
    Panic,
    /// Sleeps `secs` s + 500 ms, then succeeds.
    Sleep(u64),
}

#[derive(Debug, Clone)]
struct Spec {
    name: Option<usize>,
    priority: i32,
    /// Absolute start second, or `None` for "now".
    start_sec: Option<u64>,
    behavior: Behavior,
    timeout_secs: Option<u64>,
    retries: u32,
    backoff_secs: u64,
    immediate: bool,
    retention_secs: Option<u64>,
    /// `on_duplicate(Duplicate::Join)`.
    join: bool,
    /// `dedup_window`, in seconds.
    window_secs: Option<u64>,
    /// `limit("m")`: the one limiter, one task per [`LIMIT_T`] ms with a
    /// burst of two.
    limited: bool,
    /// `key("k")`, the one key, with a limit of 1 (never binding on one
    /// worker: a claimed task holds both); what it changes is `PauseKey`.
    keyed: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Submit(Spec),
    /// Cancel by name, or by the generated id of the n-th submitted task.
    CancelName(usize),
    CancelNth(usize),
    Subscribe(usize),
    /// Move on this many whole seconds (the op itself lands on a fresh ms offset).
    Advance(u64),
    Run,
    Stop(u64),
    CancelAll,
    /// Drops the handle of the n-th submitted task (its outcome is then
    /// only seen by subscribers and `on_complete`).
    DropHandle(usize),
    /// Drops the n-th subscription taken so far, unanswered or not.
    DropSub(usize),
    /// `Cluster::pause` / `Cluster::resume`.
    Pause,
    Resume,
    /// `Cluster::pause_key("k")` / `Cluster::resume_key("k")` (unbounded
    /// runs only: a bounded one skips them, see `check_bounded`).
    PauseKey,
    ResumeKey,
    /// Drops the runtime that runs the workers, the cluster living on: the
    /// case ends there (later operations are ignored); what was pending
    /// must resolve `Shutdown` and submits must be refused.
    DropRuntime,
}

fn behavior() -> impl Strategy<Value = Behavior> {
    prop_oneof![
        3 => Just(Behavior::Ok),
        2 => (1u32..4).prop_map(Behavior::FailTimes),
        1 => Just(Behavior::Panic),
        2 => (0u64..4).prop_map(Behavior::Sleep),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::option::weighted(0.6, 0usize..NAMES.len()),
        0i32..4,
        prop::option::of(0u64..12),
        behavior(),
        prop::option::of(1u64..4),
        0u32..3,
        0u64..3,
        any::<bool>(),
        prop::option::weighted(0.4, prop_oneof![1 => Just(0u64), 2 => 0u64..5]),
        prop::bool::weighted(0.3),
        prop::option::weighted(0.25, 1u64..5),
        // Paired: proptest's tuples stop at twelve.
        (prop::bool::weighted(0.3), prop::bool::weighted(0.3)),
    )
        .prop_map(
            |(
                name,
                priority,
                start_sec,
                behavior,
                timeout_secs,
                retries,
                backoff_secs,
                immediate,
                retention_secs,
                join,
                window_secs,
                (limited, keyed),
            )| Spec {
                name,
                priority,
                start_sec,
                behavior,
                timeout_secs,
                retries,
                backoff_secs,
                immediate,
                retention_secs,
                join,
                window_secs,
                limited,
                keyed,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => spec().prop_map(Op::Submit),
        2 => (0usize..NAMES.len()).prop_map(Op::CancelName),
        1 => (0usize..12).prop_map(Op::CancelNth),
        2 => (0usize..NAMES.len()).prop_map(Op::Subscribe),
        4 => (0u64..4).prop_map(Op::Advance),
        2 => Just(Op::Run),
        1 => (1u64..4).prop_map(Op::Stop),
        1 => Just(Op::CancelAll),
        1 => (0usize..12).prop_map(Op::DropHandle),
        1 => (0usize..8).prop_map(Op::DropSub),
        1 => Just(Op::DropRuntime),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => Just(Op::PauseKey),
        1 => Just(Op::ResumeKey),
    ]
}

// ---------------------------------------------------------------- the model

/// An outcome. Values and errors are what the body returned: task `i`'s
/// attempt `a` returns `Ok(i * 1000 + a)` or `Err("fail i/a")`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Value(usize),
    Failed(String),
    Panicked,
    TimedOut,
    Cancelled,
    Shutdown,
    /// Dropped from a full queue (`Overflow::DropLowest`).
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Queued,
    Running,
    Done,
}

#[derive(Debug)]
struct MTask {
    spec: Spec,
    seq: u64,
    start: u64,
    attempts: u32,
    state: MState,
    outcome: Option<Fate>,
    finished_at: u64,
    /// When a re-submit of the same id replaced the cached outcome.
    replaced_at: Option<u64>,
    /// A submit that joined task `i` (its handle resolves to `i`'s outcome).
    alias: Option<usize>,
}

impl MTask {
    /// A submit that queued nothing: refused, or joined to task `alias`.
    fn placeholder(spec: &Spec, alias: Option<usize>) -> Self {
        MTask {
            spec: spec.clone(),
            seq: u64::MAX,
            start: 0,
            attempts: 0,
            state: MState::Done,
            outcome: None,
            finished_at: 0,
            replaced_at: Some(0),
            alias,
        }
    }

    /// How long the outcome is cached: the retention, at least the window.
    fn kept_secs(&self) -> Option<u64> {
        match (self.spec.retention_secs, self.spec.window_secs) {
            (None, None) => None,
            (r, w) => Some(r.unwrap_or(0).max(w.unwrap_or(0))),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Worker {
    Idle,
    /// Attempt of task `i` ends at `at`; `ok` tells how.
    Running {
        i: usize,
        at: u64,
        end: AttemptEnd,
    },
    /// Task `i` waits in an immediate retry until `at`.
    Waiting {
        i: usize,
        at: u64,
    },
    /// Task `i`'s immediate retry is due, but the cluster (or its key) is
    /// paused: it keeps the worker until the resume.
    Held {
        i: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptEnd {
    Ok,
    Failed,
    Panicked,
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    Stopped,
}

#[derive(Debug)]
struct Model {
    now: u64,
    phase: Phase,
    tasks: Vec<MTask>,
    worker: Worker,
    starts: Vec<(usize, u32, u64)>,
    next_seq: u64,
    paused: bool,
    /// Key "k" is paused.
    key_paused: bool,
    /// The cluster's capacity and policy, if bounded.
    bound: Option<(usize, Overflow)>,
    /// The limiter's theoretical arrival time (GCRA), in ms; `None`: fresh.
    tat: Option<u64>,
}

impl Model {
    fn new(bound: Option<(usize, Overflow)>) -> Self {
        Model {
            now: 0,
            phase: Phase::Idle,
            tasks: Vec::new(),
            worker: Worker::Idle,
            starts: Vec::new(),
            next_seq: 0,
            paused: false,
            key_paused: false,
            bound,
            tat: None,
        }
    }

    /// Pending tasks: queued (due or not, requeued retries included).
    fn pending(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.state == MState::Queued)
            .count()
    }

    /// The queued task a full `DropLowest` queue drops first: lowest
    /// priority, then latest start, then latest submitted.
    fn lowest(&self) -> Option<usize> {
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state == MState::Queued)
            .max_by_key(|(_, t)| (std::cmp::Reverse(t.spec.priority), t.start, t.seq))
            .map(|(i, _)| i)
    }

    fn by_name(&self, name: usize) -> Option<usize> {
        self.tasks
            .iter()
            .rposition(|t| t.spec.name == Some(name) && self.known(t))
    }

    /// Known: pending, running, or finished with a cached outcome whose
    /// retention has not passed (the sweeper removes it on time while the
    /// cluster runs, and every lookup sweeps first otherwise).
    fn known(&self, t: &MTask) -> bool {
        if t.state != MState::Done {
            return true;
        }
        if t.replaced_at.is_some_and(|r| r <= self.now) {
            return false;
        }
        match t.kept_secs() {
            None => false, // forgotten at once
            Some(r) => self.now < t.finished_at + r * SEC,
        }
    }

    /// Whether task `t` holds its id: pending, running, or finished within
    /// its dedup window.
    fn holds(&self, t: &MTask) -> bool {
        self.known(t)
            && (t.state != MState::Done
                || t.spec
                    .window_secs
                    .is_some_and(|w| self.now < t.finished_at + w * SEC))
    }

    fn finish(&mut self, i: usize, out: Fate) {
        let t = &mut self.tasks[i];
        t.state = MState::Done;
        t.outcome = Some(out);
        t.finished_at = self.now;
    }

    /// When the limiter admits a task next (GCRA: `TAT - tau`).
    fn limiter_free_at(&self) -> u64 {
        self.tat
            .map_or(0, |tat| tat.saturating_sub(LIMIT_T * (LIMIT_BURST - 1)))
    }

    /// When task `t`, queued, may start: its start time, and for a limited
    /// task the limiter's next admission.
    /// A task of a paused key may not start: a claim diverts it to its key
    /// (before the limiter sees it), and the resume puts it back in its
    /// place.
    fn eligible_at(&self, t: &MTask) -> u64 {
        if t.spec.keyed && self.key_paused {
            u64::MAX
        } else if t.spec.limited {
            t.start.max(self.limiter_free_at())
        } else {
            t.start
        }
    }

    fn best_due(&self) -> Option<usize> {
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state == MState::Queued && self.eligible_at(t) <= self.now)
            .min_by_key(|(_, t)| (std::cmp::Reverse(t.spec.priority), t.start, t.seq))
            .map(|(i, _)| i)
    }

    fn next_start(&self) -> Option<u64> {
        self.tasks
            .iter()
            .filter(|t| t.state == MState::Queued)
            .map(|t| self.eligible_at(t))
            .min()
    }

    fn start_attempt(&mut self, i: usize) {
        let now = self.now;
        let t = &mut self.tasks[i];
        t.state = MState::Running;
        t.attempts += 1;
        let a = t.attempts;
        self.starts.push((i, a, now));
        let (dur, end) = match t.spec.behavior {
            Behavior::Ok => (0, AttemptEnd::Ok),
            Behavior::FailTimes(k) if a <= k => (0, AttemptEnd::Failed),
            Behavior::FailTimes(_) => (0, AttemptEnd::Ok),
            Behavior::Panic => (0, AttemptEnd::Panicked),
            Behavior::Sleep(s) => (s * SEC + 500, AttemptEnd::Ok),
        };
        let (dur, end) = match t.spec.timeout_secs {
            Some(to) if to * SEC < dur => (to * SEC, AttemptEnd::TimedOut),
            _ => (dur, end),
        };
        self.worker = Worker::Running {
            i,
            at: now + dur,
            end,
        };
    }

    /// The worker is free at `now`: take the best due task, if any.
    fn claim(&mut self) {
        self.worker = Worker::Idle;
        if self.phase != Phase::Running || self.paused {
            return;
        }
        if let Some(i) = self.best_due() {
            if self.tasks[i].spec.limited {
                // Charged when claimed from the queue (an immediate retry
                // keeps its worker and is not).
                self.tat = Some(self.tat.unwrap_or(0).max(self.now) + LIMIT_T);
            }
            self.start_attempt(i);
        }
    }

    fn end_attempt(&mut self, i: usize, end: AttemptEnd) {
        let a = self.tasks[i].attempts;
        let out = match end {
            AttemptEnd::Ok => {
                self.finish(i, Fate::Value(value(i, a)));
                return self.claim();
            }
            AttemptEnd::Failed => Fate::Failed(error(i, a)),
            AttemptEnd::Panicked => Fate::Panicked,
            AttemptEnd::TimedOut => Fate::TimedOut,
        };
        let t = &self.tasks[i];
        if t.attempts > t.spec.retries {
            self.finish(i, out);
            return self.claim();
        }
        if self.phase != Phase::Running {
            // A retry refused by a stop.
            self.finish(i, Fate::Shutdown);
            return self.claim();
        }
        let delay = t.spec.backoff_secs * SEC;
        if t.spec.immediate {
            self.worker = Worker::Waiting {
                i,
                at: self.now + delay,
            };
        } else {
            let t = &mut self.tasks[i];
            t.state = MState::Queued;
            t.start = self.now + delay;
            self.claim();
        }
    }

    /// Runs the engine's events strictly before `until`.
    fn advance_to(&mut self, until: u64) {
        loop {
            match self.worker {
                Worker::Running { i, at, end } if at < until => {
                    self.now = at;
                    self.end_attempt(i, end);
                }
                Worker::Waiting { i, at } if at < until => {
                    self.now = at;
                    if self.held(i) {
                        self.worker = Worker::Held { i };
                    } else {
                        self.start_attempt(i);
                    }
                }
                Worker::Idle if self.phase == Phase::Running && !self.paused => {
                    match self.next_start() {
                        Some(s) if s < until => {
                            self.now = self.now.max(s);
                            self.claim();
                        }
                        _ => break,
                    }
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn shut_down_queued(&mut self) {
        for i in 0..self.tasks.len() {
            if self.tasks[i].state == MState::Queued {
                self.finish(i, Fate::Shutdown);
            }
        }
    }

    /// The workers' runtime is gone: as `cancel_all`.
    fn runtime_gone(&mut self) {
        self.cancel_all();
    }

    fn cancel_all(&mut self) {
        if self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopped;
        self.shut_down_queued();
        match self.worker {
            Worker::Running { i, .. } | Worker::Waiting { i, .. } | Worker::Held { i } => {
                self.finish(i, Fate::Shutdown)
            }
            Worker::Idle => {}
        }
        self.worker = Worker::Idle;
    }

    /// Graceful stop with a timeout; returns the predicted `Ok`/timeout and
    /// leaves `now` at the time `stop` returns.
    fn stop(&mut self, timeout: u64) -> bool {
        if self.phase == Phase::Stopped {
            return true;
        }
        self.phase = Phase::Stopped;
        self.shut_down_queued();
        match self.worker {
            Worker::Waiting { i, .. } | Worker::Held { i } => {
                self.finish(i, Fate::Shutdown);
                self.worker = Worker::Idle;
                true
            }
            Worker::Running { i, at, end } => {
                if at < self.now + timeout {
                    self.now = at;
                    self.end_attempt(i, end);
                    true
                } else {
                    self.now += timeout;
                    self.finish(i, Fate::Shutdown);
                    self.worker = Worker::Idle;
                    false
                }
            }
            Worker::Idle => true,
        }
    }

    fn run(&mut self) {
        self.phase = Phase::Running;
        self.claim();
    }

    /// `pause`: refused once stopped; returns what `Cluster::pause` returns.
    fn pause(&mut self) -> bool {
        if self.phase == Phase::Stopped {
            return false;
        }
        self.paused = true;
        true
    }

    /// `resume`: a held retry starts its next attempt, an idle worker
    /// claims. Returns what `Cluster::resume` returns.
    fn resume(&mut self) -> bool {
        let was = std::mem::take(&mut self.paused);
        if was && self.phase == Phase::Running {
            match self.worker {
                Worker::Held { i } if !self.held(i) => self.start_attempt(i),
                Worker::Idle => self.claim(),
                Worker::Held { .. } | Worker::Running { .. } | Worker::Waiting { .. } => {}
            }
        }
        was
    }

    /// Whether task `i`'s due immediate retry is held: the cluster or its
    /// key is paused.
    fn held(&self, i: usize) -> bool {
        self.paused || (self.tasks[i].spec.keyed && self.key_paused)
    }

    /// `pause_key("k")`: refused once stopped.
    fn pause_key(&mut self) -> bool {
        if self.phase == Phase::Stopped {
            return false;
        }
        self.key_paused = true;
        true
    }

    /// `resume_key("k")`: its held retry goes on, its tasks are due again
    /// (an idle worker claims). Returns whether it was paused.
    fn resume_key(&mut self) -> bool {
        let was = std::mem::take(&mut self.key_paused);
        if was && self.phase == Phase::Running && !self.paused {
            match self.worker {
                Worker::Held { i } => self.start_attempt(i),
                Worker::Idle => self.claim(),
                Worker::Running { .. } | Worker::Waiting { .. } => {}
            }
        }
        was
    }

    fn cancel(&mut self, i: usize) -> bool {
        match self.tasks[i].state {
            MState::Done => false,
            MState::Queued => {
                self.finish(i, Fate::Cancelled);
                true
            }
            MState::Running => {
                self.finish(i, Fate::Cancelled);
                self.claim();
                true
            }
        }
    }
}

/// What attempt `a` of task `i` returns on success.
fn value(i: usize, a: u32) -> usize {
    i * 1000 + a as usize
}

/// What attempt `a` of task `i` returns on failure.
fn error(i: usize, a: u32) -> String {
    format!("fail {i}/{a}")
}

// ---------------------------------------------------------------- the runner

type Handle = TaskHandle<usize, String>;

struct Real {
    cluster: Cluster,
    base: Instant,
    handles: Vec<Option<Handle>>,
    ids: Vec<TaskId>,
    subs: Vec<(usize, Option<Subscription<usize, String>>)>,
    log: Arc<Mutex<Vec<(usize, u32, u64)>>>,
}

fn to_out(r: Result<usize, TaskError<String>>) -> Fate {
    match r {
        Ok(v) => Fate::Value(v),
        Err(TaskError::Failed(e)) => Fate::Failed(e),
        Err(TaskError::Panicked { .. }) => Fate::Panicked,
        Err(TaskError::TimedOut { .. }) => Fate::TimedOut,
        Err(TaskError::Cancelled) => Fate::Cancelled,
        Err(TaskError::Shutdown) => Fate::Shutdown,
        Err(TaskError::Dropped) => Fate::Dropped,
        Err(e) => panic!("unexpected error kind {e:?}"),
    }
}

impl Real {
    /// Submits; `Ok(true)` if the submit joined the task holding its id.
    fn submit(&mut self, index: usize, spec: &Spec) -> Result<bool, SubmitError> {
        let log = self.log.clone();
        let base = self.base;
        let behavior = spec.behavior;
        let mut b = self
            .cluster
            .task(move |ctx| {
                let log = log.clone();
                async move {
                    let at = Instant::now().duration_since(base).as_millis() as u64;
                    log.lock().unwrap().push((index, ctx.attempt(), at));
                    let a = ctx.attempt();
                    match behavior {
                        Behavior::Ok => Ok(value(index, a)),
                        Behavior::FailTimes(k) if a <= k => Err(error(index, a)),
                        Behavior::FailTimes(_) => Ok(value(index, a)),
                        Behavior::Panic => panic!("model-panic"),
                        Behavior::Sleep(s) => {
                            tokio::time::sleep(Duration::from_millis(s * SEC + 500)).await;
                            Ok(value(index, a))
                        }
                    }
                }
            })
            .priority(spec.priority)
            .retry(spec.retries)
            .backoff(FixedBackoff::new(Duration::from_secs(spec.backoff_secs)))
            .retry_mode(if spec.immediate {
                RetryMode::Immediate
            } else {
                RetryMode::Requeue
            });
        if let Some(n) = spec.name {
            b = b.id(NAMES[n]);
        }
        if let Some(s) = spec.start_sec {
            b = b.start_at(base + Duration::from_secs(s));
        }
        if let Some(t) = spec.timeout_secs {
            b = b.timeout(Duration::from_secs(t));
        }
        if let Some(r) = spec.retention_secs {
            b = b.retention(Duration::from_secs(r));
        }
        if let Some(w) = spec.window_secs {
            b = b.dedup_window(Duration::from_secs(w));
        }
        if spec.join {
            b = b.on_duplicate(Duplicate::Join);
        }
        if spec.limited {
            b = b.limit("m");
        }
        if spec.keyed {
            b = b.key("k");
        }
        let h = b.submit()?;
        let joined = h.deduplicated();
        self.ids.push(h.id().clone());
        self.handles.push(Some(h));
        Ok(joined)
    }
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    check_bounded(ops, None)
}

/// `check` on a cluster with a capacity (`bound`), if any.
fn check_bounded(ops: Vec<Op>, bound: Option<(usize, Overflow)>) -> Result<(), TestCaseError> {
    // `DropLowest` drops only tasks in the queue, never one a limiter has
    // set aside; the model does not track which limited tasks a claim set
    // aside, so under that policy the tasks are not limited.
    let ops = if matches!(bound, Some((_, Overflow::DropLowest))) {
        ops.into_iter()
            .map(|op| match op {
                Op::Submit(spec) => Op::Submit(Spec {
                    limited: false,
                    ..spec
                }),
                op => op,
            })
            .collect()
    } else {
        ops
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let gone = rt.block_on(async move {
        let base = Instant::now();
        let mut builder = Cluster::builder().workers(1).paused();
        if let Some((n, overflow)) = bound {
            builder = builder.capacity(n, overflow);
        }
        let mut real = Real {
            cluster: {
                let c = builder.build().unwrap();
                let rate = Rate::per(1, Duration::from_millis(LIMIT_T));
                c.add_limiter("m", rate.burst(LIMIT_BURST as u32)).unwrap();
                c.set_key_limit("k", 1).unwrap();
                c
            },
            base,
            handles: Vec::new(),
            ids: Vec::new(),
            subs: Vec::new(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let mut model = Model::new(bound);
        // Keeps the test output readable: the model's own panics are expected.
        quiet_panics_starting_with("model-panic");
        // Operation k happens at millisecond offset k + 1 of its second.
        let mut second = 0u64;
        for (k, op) in ops.iter().enumerate() {
            if let Op::Advance(s) = op {
                second += s;
            }
            let at = op_time(second, k as u64 + 1, model.now);
            second = at / SEC;
            model.advance_to(at);
            tokio::time::sleep_until(base + Duration::from_millis(at)).await;
            match op {
                Op::Advance(_) => {}
                Op::Submit(spec) => {
                    let index = real.handles.len();
                    let expected = predict_submit(&model, spec);
                    let got = real.submit(index, spec);
                    prop_assert_eq!(
                        got.clone().map(|joined| joined.then_some(())),
                        expected.clone().map(|joined| joined.map(|_| ())),
                        "submit #{} {:?} (Ok(Some): joined)",
                        index,
                        spec
                    );
                    if let (Ok(_), Some(victim)) = (&got, drops(&model, spec, &expected)) {
                        model.finish(victim, Fate::Dropped);
                    }
                    if let Ok(Some(target)) = expected {
                        // Joined: no task of its own; its handle reads `target`'s outcome.
                        model.tasks.push(MTask::placeholder(spec, Some(target)));
                    } else if got.is_ok() {
                        let start = spec.start_sec.map_or(model.now, |s| s * SEC);
                        if let Some(n) = spec.name {
                            if let Some(old) = model.by_name(n) {
                                // Replacing a cached outcome: it is forgotten.
                                model.tasks[old].replaced_at = Some(model.now);
                            }
                        }
                        model.tasks.push(MTask {
                            spec: spec.clone(),
                            seq: model.next_seq,
                            start,
                            attempts: 0,
                            state: MState::Queued,
                            outcome: None,
                            finished_at: 0,
                            replaced_at: None,
                            alias: None,
                        });
                        model.next_seq += 1;
                        if matches!(model.worker, Worker::Idle) {
                            model.claim();
                        }
                    } else {
                        real.handles.push(None);
                        real.ids.push(TaskId::from("rejected"));
                        model.tasks.push(MTask::placeholder(spec, None));
                    }
                }
                Op::CancelName(n) => {
                    let expected = model.by_name(*n).is_some_and(|i| model.cancel(i));
                    prop_assert_eq!(
                        cancel(&real.cluster, NAMES[*n]),
                        expected,
                        "cancel {}",
                        NAMES[*n]
                    );
                }
                Op::CancelNth(i) => {
                    if *i < real.ids.len() && model.tasks[*i].seq != u64::MAX {
                        // A user id names whoever holds it now; a generated one, this task.
                        let target = match model.tasks[*i].spec.name {
                            Some(n) => model.by_name(n),
                            None => Some(*i),
                        };
                        let expected = target.is_some_and(|t| model.cancel(t));
                        prop_assert_eq!(
                            cancel(&real.cluster, real.ids[*i].clone()),
                            expected,
                            "cancel #{}",
                            i
                        );
                    }
                }
                Op::Subscribe(n) => {
                    let found = model.by_name(*n);
                    match real.cluster.subscribe::<usize, String>(NAMES[*n]) {
                        Ok(s) => {
                            prop_assert!(
                                found.is_some(),
                                "subscribe {} found a task the model forgot",
                                NAMES[*n]
                            );
                            real.subs.push((found.unwrap(), Some(s)));
                        }
                        Err(e) => prop_assert!(
                            found.is_none(),
                            "subscribe {}: {} but the model knows it",
                            NAMES[*n],
                            e
                        ),
                    }
                }
                Op::Run => {
                    // A second `run` is a no-op `Ok`.
                    let expected = matches!(model.phase, Phase::Idle | Phase::Running);
                    prop_assert_eq!(real.cluster.run().is_ok(), expected, "run");
                    if model.phase == Phase::Idle {
                        model.run();
                    }
                }
                Op::Stop(t) => {
                    let timeout = Duration::from_secs(*t);
                    let expected = model.stop(t * SEC);
                    let got = real.cluster.stop(timeout).await;
                    prop_assert_eq!(got.is_ok(), expected, "stop: {:?}", got);
                    let now = Instant::now().duration_since(base).as_millis() as u64;
                    prop_assert_eq!(now, model.now, "stop returned at the predicted time");
                }
                Op::CancelAll => {
                    model.cancel_all();
                    real.cluster.cancel();
                }
                Op::DropHandle(n) => {
                    if let Some(h) = real.handles.get_mut(*n) {
                        drop(h.take());
                    }
                }
                Op::DropSub(n) => {
                    if let Some((_, s)) = real.subs.get_mut(*n) {
                        drop(s.take());
                    }
                }
                // A cluster that never ran has no workers to lose.
                Op::Pause => {
                    let expected = model.pause();
                    prop_assert_eq!(real.cluster.pause(), expected, "pause");
                }
                Op::Resume => {
                    let expected = model.resume();
                    prop_assert_eq!(real.cluster.resume(), expected, "resume");
                }
                // The bounded model does not know which queued tasks a
                // claim diverted to a paused key (they are pending, but not
                // in the queue, so `DropLowest` never drops them).
                Op::PauseKey | Op::ResumeKey if bound.is_some() => {}
                Op::PauseKey => {
                    let expected = model.pause_key();
                    prop_assert_eq!(real.cluster.pause_key("k"), expected, "pause_key");
                }
                Op::ResumeKey => {
                    let stopped = model.phase == Phase::Stopped;
                    let expected = model.resume_key();
                    let got = real.cluster.resume_key("k");
                    // A stop may end the key's pause itself.
                    if !stopped {
                        prop_assert_eq!(got, expected, "resume_key");
                    }
                }
                Op::DropRuntime if model.phase == Phase::Idle => {}
                Op::DropRuntime => return Ok(Some((real, model))),
            }
        }
        // A pause left on would hold everything: end it (at the last
        // operation's instant, which no engine event shares).
        prop_assert_eq!(real.cluster.resume(), model.resume(), "final resume");
        // The key's too, at an instant of its own: a submit at the last
        // operation's instant has its claim still to come, which a resume
        // at that instant would race.
        let at = op_time(model.now / SEC, ops.len() as u64 + 1, model.now);
        model.advance_to(at);
        tokio::time::sleep_until(base + Duration::from_millis(at)).await;
        let (stopped, expected) = (model.phase == Phase::Stopped, model.resume_key());
        let got = real.cluster.resume_key("k");
        if !stopped {
            prop_assert_eq!(got, expected, "final resume_key");
        }
        // Let everything settle: run if never run, then wait out the schedule.
        // Offsets 998 and 999 are never an operation's, nor an event's.
        let end = op_time(model.now / SEC, 998, model.now);
        if model.phase == Phase::Idle {
            model.advance_to(end);
            tokio::time::sleep_until(base + Duration::from_millis(end)).await;
            model.run();
            real.cluster.run().unwrap();
        }
        let horizon = op_time(model.now / SEC + 200, 999, model.now);
        model.advance_to(horizon);
        tokio::time::sleep_until(base + Duration::from_millis(horizon)).await;
        model.cancel_all();
        real.cluster.cancel();

        let starts = real.log.lock().unwrap().clone();
        prop_assert_eq!(&starts, &model.starts, "attempt starts (task, attempt, ms)");
        for (i, h) in real.handles.iter_mut().enumerate() {
            if let Some(h) = h.take() {
                let got = to_out(h.await);
                let target = model.tasks[i].alias.unwrap_or(i);
                prop_assert_eq!(
                    Some(&got),
                    model.tasks[target].outcome.as_ref(),
                    "outcome of task #{} (the outcome of #{})",
                    i,
                    target
                );
            }
        }
        for (i, s) in real.subs.drain(..) {
            let Some(s) = s else { continue };
            let got = to_out(s.await);
            prop_assert_eq!(
                Some(&got),
                model.tasks[i].outcome.as_ref(),
                "subscriber of task #{}",
                i
            );
        }
        prop_assert_eq!(
            real.cluster.stats().queued + real.cluster.stats().running,
            0
        );
        Ok(None)
    })?;
    let Some((mut real, mut model)) = gone else {
        return Ok(());
    };
    // The runtime goes; the cluster lives on.
    let starts = real.log.lock().unwrap().clone();
    prop_assert_eq!(&starts, &model.starts, "attempt starts (task, attempt, ms)");
    drop(rt);
    model.runtime_gone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        let r = real
            .cluster
            .task(|_| async { Ok::<usize, String>(0) })
            .submit();
        prop_assert!(
            matches!(r, Err(SubmitError::ShuttingDown)),
            "a submit after the workers' runtime was dropped: {:?}",
            r.map(|h| h.id())
        );
        // Wall time here: a pending handle that is never answered fails fast.
        let wait = Duration::from_secs(2);
        for (i, h) in real.handles.iter_mut().enumerate() {
            if let Some(h) = h.take() {
                let got = tokio::time::timeout(wait, h).await;
                let target = model.tasks[i].alias.unwrap_or(i);
                prop_assert!(
                    got.is_ok(),
                    "task #{} never resolved after the runtime was dropped (model: {:?})",
                    i,
                    model.tasks[target].outcome
                );
                prop_assert_eq!(
                    Some(&to_out(got.unwrap())),
                    model.tasks[target].outcome.as_ref(),
                    "outcome of task #{} after the runtime was dropped",
                    i
                );
            }
        }
        for (i, s) in real.subs.drain(..) {
            let Some(s) = s else { continue };
            let got = tokio::time::timeout(wait, s).await;
            prop_assert!(
                got.is_ok(),
                "a subscriber of task #{} never resolved after the runtime was dropped",
                i
            );
            prop_assert_eq!(
                Some(&to_out(got.unwrap())),
                model.tasks[i].outcome.as_ref(),
                "subscriber of task #{} after the runtime was dropped",
                i
            );
        }
        Ok(())
    })
}

/// `Ok(None)`: a fresh task; `Ok(Some(i))`: joins task `i`.
fn predict_submit(model: &Model, spec: &Spec) -> Result<Option<usize>, SubmitError> {
    if model.phase == Phase::Stopped {
        return Err(SubmitError::ShuttingDown);
    }
    if let Some(n) = spec.name {
        if let Some(i) = model.by_name(n) {
            if model.holds(&model.tasks[i]) {
                if spec.join {
                    return Ok(Some(i));
                }
                return Err(SubmitError::DuplicateId(TaskId::from(NAMES[n])));
            }
        }
    }
    if let Some((capacity, overflow)) = model.bound {
        if model.pending() >= capacity {
            let room = overflow == Overflow::DropLowest
                && model
                    .lowest()
                    .is_some_and(|v| model.tasks[v].spec.priority < spec.priority);
            if !room {
                return Err(SubmitError::Full { capacity });
            }
        }
    }
    Ok(None)
}

/// The task a fresh submit (predicted `expected`) drops to make room, if any.
fn drops(
    model: &Model,
    spec: &Spec,
    expected: &Result<Option<usize>, SubmitError>,
) -> Option<usize> {
    let (capacity, _) = model.bound?;
    if !matches!(expected, Ok(None)) || model.pending() < capacity {
        return None;
    }
    model
        .lowest()
        .filter(|&v| model.tasks[v].spec.priority < spec.priority)
}

/// The fixed seed, so that CI runs the same cases every time; set
/// `PROPTEST_RNG_SEED` to explore others.
const DEFAULT_SEED: u64 = 0xC0_22A1;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        // A failing case may wait out wall-time limits (a handle never
        // answered after the runtime was dropped): bound the shrinking.
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    };
    if matches!(config.rng_seed, RngSeed::Random) {
        config.rng_seed = RngSeed::Fixed(DEFAULT_SEED);
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        // Shown with the failure (the output of passing tests is captured).
        eprintln!("proptest seed: {} (PROPTEST_RNG_SEED)", config().rng_seed);
        check(ops)?;
    }
}

fn bound() -> impl Strategy<Value = (usize, Overflow)> {
    (
        1usize..5,
        prop_oneof![
            Just(Overflow::Reject),
            Just(Overflow::Wait),
            Just(Overflow::DropLowest)
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..config() })]

    /// The same model on a bounded cluster: submits to a full queue are
    /// refused, or drop the lowest queued task, exactly when predicted.
    #[test]
    fn bounded_engine_matches_model(
        ops in prop::collection::vec(op(), 1..40),
        bound in bound(),
    ) {
        eprintln!("proptest seed: {} (PROPTEST_RNG_SEED)", config().rng_seed);
        check_bounded(ops, Some(bound))?;
    }
}

/// The first time at `offset` ms into a second, from `second` on, after `now`.
fn op_time(second: u64, offset: u64, now: u64) -> u64 {
    let at = second * SEC + offset;
    if at > now {
        at
    } else {
        (now / SEC + 1) * SEC + offset
    }
}
