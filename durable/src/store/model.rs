//! A model-based test of the claim / lease / heartbeat / fenced finalize /
//! rescue protocol: random interleavings of claims, completions,
//! heartbeats, pauses (a lease expiring under a live worker), crashes and
//! rescues run against a store and against a reference state machine, and
//! after every step the store must equal the reference and the invariants
//! must hold:
//! 1. no job lost: every job is in exactly one state, finished only by an
//!    accepted write;
//! 2. no write accepted from a lost lease (the fate of every write is
//!    predicted from the reference: accepted iff the job is running under
//!    that lease with that attempt and the lease is alive);
//! 3. no job running on two live leases;
//! 4. attempts counted honestly: a claim spends one, a snooze or a release
//!    gives it back, nothing else changes it;
//! 5. a cancel says what it did, and once it said "requested" the job ends
//!    cancelled whatever its attempt writes (or a rescue does).
//!
//! Runs against `MemoryStore` always and against `PgStore` with fewer cases.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::memory::MemoryStore;
use super::pg::PgStore;
use super::{Action, CancelResult, Fate, Finish, LeaseId, NewJob, Start, Store};
use crate::id::JobId;
use crate::MAX_LOST_ATTEMPTS;

const JOBS: usize = 4;
const WORKERS: usize = 3;
/// Leases never expire by themselves during a case: only `Pause` and
/// `Crash` expire them, so the interleaving is exactly the one generated.
const TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
enum End {
    Complete,
    Retry,
    Snooze,
    Release,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Claim(usize, usize),
    Finish(usize, usize, End),
    Heartbeat(usize),
    Pause(usize),
    Crash(usize),
    Rescue,
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0..WORKERS;
    let end = prop_oneof![
        Just(End::Complete),
        Just(End::Retry),
        Just(End::Snooze),
        Just(End::Release)
    ];
    prop_oneof![
        4 => (w.clone(), 1..3usize).prop_map(|(w, n)| Op::Claim(w, n)),
        4 => (w.clone(), 0..4usize, end).prop_map(|(w, i, e)| Op::Finish(w, i, e)),
        2 => w.clone().prop_map(Op::Heartbeat),
        1 => w.clone().prop_map(Op::Pause),
        1 => w.prop_map(Op::Crash),
        2 => Just(Op::Rescue),
        1 => (0..JOBS).prop_map(Op::Cancel),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MState {
    Available,
    Running(LeaseId),
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy)]
struct MJob {
    state: MState,
    attempt: i32,
    lost: i32,
    cancel_requested: bool,
}

#[derive(Debug, Default)]
struct MWorker {
    lease: Option<LeaseId>,
    /// Claims the worker believes it runs: (job, attempt, lease).
    held: Vec<(JobId, i32, LeaseId)>,
}

enum Harness {
    Memory(MemoryStore),
    Pg(PgStore),
}

impl Harness {
    fn store(&self) -> &dyn Store {
        match self {
            Harness::Memory(m) => m,
            Harness::Pg(p) => p,
        }
    }

    async fn expire(&self, lease: LeaseId) {
        match self {
            Harness::Memory(m) => m.expire(lease),
            Harness::Pg(p) => p.expire(lease).await,
        }
    }

    async fn snapshot(&self) -> Vec<(JobId, String, i32, Option<LeaseId>)> {
        match self {
            Harness::Memory(m) => m.snapshot(),
            Harness::Pg(p) => p.snapshot().await,
        }
    }
}

fn new_job() -> NewJob {
    NewJob {
        key: None,
        queue: "q".into(),
        kind: "k".into(),
        args: "{}".into(),
        priority: 0,
        start: Start::Now,
        max_attempts: 1,
        timeout_ms: None,
        backoff: r#"{"fixed":{"secs":0,"nanos":0}}"#.into(),
        jitter: 0.0,
        retention_ms: 3_600_000,
        immediate: false,
    }
}

macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($arg)*)));
        }
    };
}

async fn run(h: &Harness, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = h.store();
    let err = |e: crate::StoreError| TestCaseError::fail(e.to_string());
    let ids = store
        .insert((0..JOBS).map(|_| new_job()).collect())
        .await
        .map_err(err)?;
    let mut jobs: HashMap<JobId, MJob> = ids
        .iter()
        .map(|id| {
            (
                *id,
                MJob {
                    state: MState::Available,
                    attempt: 0,
                    lost: 0,
                    cancel_requested: false,
                },
            )
        })
        .collect();
    let mut alive: HashMap<LeaseId, bool> = HashMap::new();
    let mut workers: Vec<MWorker> = (0..WORKERS).map(|_| MWorker::default()).collect();
    let kinds = vec!["k".to_owned()];

    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Claim(w, n) => {
                let lease = match workers[w].lease {
                    Some(l) => l,
                    None => {
                        let l = store.register(TTL).await.map_err(err)?;
                        alive.insert(l, true);
                        workers[w].lease = Some(l);
                        l
                    }
                };
                let claimed = store
                    .claim(lease, "q", &kinds, n, None, 1)
                    .await
                    .map_err(err)?
                    .rows;
                let available = jobs
                    .values()
                    .filter(|j| j.state == MState::Available)
                    .count();
                let expected = if alive[&lease] { n.min(available) } else { 0 };
                check!(
                    claimed.len() == expected,
                    "step {step}: claimed {} of {expected}",
                    claimed.len()
                );
                for c in claimed {
                    let j = jobs.get_mut(&c.id).unwrap();
                    check!(
                        j.state == MState::Available,
                        "step {step}: claimed {} in {:?}",
                        c.id,
                        j.state
                    );
                    j.state = MState::Running(lease);
                    j.attempt += 1;
                    check!(c.attempt == j.attempt, "step {step}: attempt {}", c.attempt);
                    workers[w].held.push((c.id, c.attempt, lease));
                }
            }
            Op::Finish(w, pick, end) => {
                if workers[w].held.is_empty() {
                    continue;
                }
                let i = pick % workers[w].held.len();
                let (id, attempt, lease) = workers[w].held.remove(i);
                let action = match end {
                    End::Complete => Action::Complete { output: "1".into() },
                    End::Retry => Action::Retry {
                        delay: Duration::ZERO,
                        error: "\"e\"".into(),
                    },
                    End::Snooze => Action::Snooze {
                        delay: Duration::ZERO,
                    },
                    End::Release => Action::Release,
                };
                let fates = store
                    .finish(
                        lease,
                        vec![Finish {
                            id,
                            attempt,
                            action,
                        }],
                    )
                    .await
                    .map_err(err)?;
                let j = jobs.get_mut(&id).unwrap();
                let fenced =
                    j.state == MState::Running(lease) && j.attempt == attempt && alive[&lease];
                let expected = match (fenced, j.cancel_requested) {
                    (false, _) => Fate::Refused,
                    (true, false) => Fate::Applied,
                    // A cancel request wins over whatever the body returned.
                    (true, true) => Fate::CancelledInstead,
                };
                check!(
                    fates == [expected],
                    "step {step}: write of {id}@{attempt} under lease {lease}: {fates:?}, expected {expected:?}"
                );
                if fenced && j.cancel_requested {
                    j.state = MState::Cancelled;
                } else if fenced {
                    match end {
                        End::Complete => j.state = MState::Completed,
                        End::Retry => j.state = MState::Available,
                        End::Snooze | End::Release => {
                            j.state = MState::Available;
                            j.attempt -= 1;
                        }
                    }
                }
            }
            Op::Heartbeat(w) => {
                let Some(lease) = workers[w].lease else {
                    continue;
                };
                let beat = store
                    .heartbeat(lease, TTL, Vec::new(), 0)
                    .await
                    .map_err(err)?;
                check!(
                    beat.alive == alive[&lease],
                    "step {step}: heartbeat of {lease} said alive={}",
                    beat.alive
                );
                if beat.alive {
                    let mut want: Vec<JobId> = jobs
                        .iter()
                        .filter(|(_, j)| j.state == MState::Running(lease) && j.cancel_requested)
                        .map(|(id, _)| *id)
                        .collect();
                    want.sort();
                    let mut got = beat.cancels.clone();
                    got.sort();
                    check!(
                        got == want,
                        "step {step}: cancels {got:?}, expected {want:?}"
                    );
                } else {
                    // The worker learns it lost its lease and takes a new
                    // one; it keeps its stale claims, to try them later as
                    // a late writer would.
                    let l = store.register(TTL).await.map_err(err)?;
                    alive.insert(l, true);
                    workers[w].lease = Some(l);
                }
            }
            Op::Pause(w) => {
                if let Some(lease) = workers[w].lease {
                    h.expire(lease).await;
                    alive.insert(lease, false);
                }
            }
            Op::Crash(w) => {
                if let Some(lease) = workers[w].lease.take() {
                    h.expire(lease).await;
                    alive.insert(lease, false);
                }
                workers[w].held.clear();
            }
            Op::Rescue => {
                let (n, _) = store.rescue(0).await.map_err(err)?;
                let mut expected = 0;
                for j in jobs.values_mut() {
                    if let MState::Running(l) = j.state {
                        if !alive[&l] {
                            expected += 1;
                            j.lost += 1;
                            j.state = if j.cancel_requested {
                                MState::Cancelled
                            } else if j.lost >= MAX_LOST_ATTEMPTS {
                                MState::Failed
                            } else {
                                MState::Available
                            };
                        }
                    }
                }
                check!(
                    n == expected,
                    "step {step}: rescued {n}, expected {expected}"
                );
            }
            Op::Cancel(i) => {
                let id = ids[i];
                let got = store.cancel(id).await.map_err(err)?;
                let j = jobs.get_mut(&id).unwrap();
                let want = match j.state {
                    MState::Available => {
                        j.state = MState::Cancelled;
                        CancelResult::Cancelled
                    }
                    MState::Running(_) => {
                        j.cancel_requested = true;
                        CancelResult::Requested
                    }
                    _ => CancelResult::AlreadyFinished,
                };
                check!(
                    got == want,
                    "step {step}: cancel {id}: {got:?}, expected {want:?}"
                );
            }
        }

        // The store equals the reference (invariants 1 and 4).
        let snap = h.snapshot().await;
        check!(snap.len() == JOBS, "step {step}: {} rows", snap.len());
        for (id, state, attempt, lease) in &snap {
            let j = &jobs[id];
            let (want_state, want_lease) = match j.state {
                MState::Available => ("available", None),
                MState::Running(l) => ("running", Some(l)),
                MState::Completed => ("completed", None),
                MState::Failed => ("failed", None),
                MState::Cancelled => ("cancelled", None),
            };
            check!(
                state == want_state && *attempt == j.attempt && *lease == want_lease,
                "step {step} after {op:?}: job {id} is {state}@{attempt} lease {lease:?}, reference {want_state}@{} lease {want_lease:?}",
                j.attempt
            );
        }
        // Invariant 3: no job held under two live leases at its current attempt.
        for (id, j) in &jobs {
            let live_holders = workers
                .iter()
                .flat_map(|w| &w.held)
                .filter(|(h, a, l)| h == id && *a == j.attempt && alive[l])
                .count();
            check!(
                live_holders <= 1,
                "step {step}: {id} on {live_holders} live leases"
            );
        }
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn strategy() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..60)
}

#[test]
fn protocol_model_memory() {
    let mut runner = TestRunner::new(Config::with_cases(512));
    runner
        .run(&strategy(), |ops| {
            runtime().block_on(run(&Harness::Memory(MemoryStore::new()), ops))
        })
        .unwrap();
}

#[test]
fn protocol_model_postgres() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_model_{}", std::process::id());
    let rt = runtime();
    let store = rt.block_on(async {
        PgStore::builder(&url)
            .schema(&schema)
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {url} ({e}): start it with \
                     `pg_ctlcluster --skip-systemctl-redirect 15 main start` or set DATABASE_URL"
                )
            })
    });
    let harness = Harness::Pg(store);
    let mut runner = TestRunner::new(Config::with_cases(32));
    let result = runner.run(&strategy(), |ops| {
        rt.block_on(async {
            if let Harness::Pg(p) = &harness {
                p.truncate().await;
            }
            run(&harness, ops).await
        })
    });
    rt.block_on(async {
        if let Harness::Pg(p) = &harness {
            p.drop_schema().await;
        }
    });
    result.unwrap();
}

/// Rescues racing a new owner's claims and writes on real connections: a
/// rescue must never act on a row another lease took meanwhile (River's
/// stale-snapshot bug), and the old owner's writes must all be refused.
#[test]
fn concurrent_rescues_never_touch_a_reclaimed_job_postgres() {
    const N: usize = 200;
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_race_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = PgStore::builder(&url)
            .schema(&schema)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e})"));
        let ids = store
            .insert((0..N).map(|_| new_job()).collect())
            .await
            .unwrap();
        let kinds = vec!["k".to_owned()];
        let old = store.register(TTL).await.unwrap();
        let claimed = store
            .claim(old, "q", &kinds, N, None, 1)
            .await
            .unwrap()
            .rows;
        assert_eq!(claimed.len(), N);
        store.expire(old).await;
        let new = store.register(TTL).await.unwrap();

        let rescuers: Vec<_> = (0..3)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move {
                    let mut total = 0;
                    for _ in 0..20 {
                        total += s.rescue(0).await.unwrap().0;
                        tokio::task::yield_now().await;
                    }
                    total
                })
            })
            .collect();
        let taker = {
            let (s, kinds) = (store.clone(), kinds.clone());
            tokio::spawn(async move {
                let mut done = 0;
                let mut refused = 0;
                while done < N {
                    let got = s.claim(new, "q", &kinds, 16, None, 1).await.unwrap().rows;
                    let batch: Vec<Finish> = got
                        .iter()
                        .map(|c| Finish {
                            id: c.id,
                            attempt: c.attempt,
                            action: Action::Complete { output: "1".into() },
                        })
                        .collect();
                    for fate in s.finish(new, batch).await.unwrap() {
                        match fate {
                            Fate::Applied => done += 1,
                            _ => refused += 1,
                        }
                    }
                    tokio::task::yield_now().await;
                }
                refused
            })
        };
        // The old owner wakes up and tries to write everything: refused.
        let stale: Vec<Finish> = claimed
            .iter()
            .map(|c| Finish {
                id: c.id,
                attempt: c.attempt,
                action: Action::Complete { output: "0".into() },
            })
            .collect();
        let fates = store.finish(old, stale).await.unwrap();
        assert!(
            fates.iter().all(|f| *f == Fate::Refused),
            "a write of the lost lease was accepted"
        );

        let refused = taker.await.unwrap();
        let mut rescued = 0;
        for r in rescuers {
            rescued += r.await.unwrap();
        }
        assert_eq!(refused, 0, "the new owner's writes were refused");
        assert_eq!(rescued, N as u64, "each job rescued exactly once");
        let snap = store.snapshot().await;
        assert_eq!(snap.len(), N);
        for (id, state, attempt, _) in snap {
            assert!(ids.contains(&id));
            assert_eq!((state.as_str(), attempt), ("completed", 2), "job {id}");
        }
        store.drop_schema().await;
    });
}

/// A heartbeat that began before its lease expired and commits after a
/// rescue moved the lease's jobs must not revive the lease: the worker would
/// go on as if it held jobs that another worker may now run.
#[test]
fn a_heartbeat_racing_a_rescue_never_revives_the_lease_postgres() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_revive_{}", std::process::id());
    runtime().block_on(async {
        let store = PgStore::builder(&url)
            .schema(&schema)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e})"));
        store.insert(vec![new_job()]).await.unwrap();
        let lease = store.register(Duration::from_millis(300)).await.unwrap();
        let kinds = vec!["k".to_owned()];
        assert_eq!(
            store
                .claim(lease, "q", &kinds, 1, None, 1)
                .await
                .unwrap()
                .rows
                .len(),
            1
        );
        // The heartbeat's transaction starts while the lease is alive (its
        // `now()` is fixed then)...
        let (mut beat, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let tx = beat.transaction().await.unwrap();
        tx.batch_execute("SELECT 1").await.unwrap();
        // ...the lease expires, and a rescue moves its job...
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(store.rescue(0).await.unwrap().0, 1);
        // ...then the heartbeat's statement runs and commits.
        let ttl_ms: i64 = 60_000;
        let row = tx
            .query_one(
                store.heartbeat_sql(),
                &[&lease, &ttl_ms, &Vec::<i64>::new(), &0i64],
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let alive: i64 = row.get(0);
        assert_eq!(
            alive, 0,
            "a heartbeat revived a lease the rescue treated as dead"
        );
        store.drop_schema().await;
    });
}

/// A completion written in a body's transaction that began while the lease
/// was alive, sent after the lease expired, is refused: the fence judges
/// the lease by the statement's time, not the transaction's start.
#[test]
fn a_completion_in_an_old_transaction_is_fenced_by_the_statement_time_postgres() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_fence_{}", std::process::id());
    runtime().block_on(async {
        let store = PgStore::builder(&url)
            .schema(&schema)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e})"));
        store.insert(vec![new_job()]).await.unwrap();
        let lease = store.register(Duration::from_millis(300)).await.unwrap();
        let kinds = vec!["k".to_owned()];
        let claimed = store
            .claim(lease, "q", &kinds, 1, None, 1)
            .await
            .unwrap()
            .rows;
        let (mut db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let tx = db.transaction().await.unwrap();
        tx.batch_execute("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (fate, _) = store
            .complete_in(&tx, lease, claimed[0].id, claimed[0].attempt, "1".into())
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(
            fate,
            Fate::Refused,
            "a write of an expired lease was accepted"
        );
        store.drop_schema().await;
    });
}

/// A claim past a cursor starts after it, within the cursor's priority:
/// rows before it (a released row, a higher priority) are left to a claim
/// from the front, which the worker makes whenever one past a cursor comes
/// back short.
#[test]
fn a_claim_past_a_cursor_starts_after_it_postgres() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_cursor_{}", std::process::id());
    runtime().block_on(async {
        let store = PgStore::builder(&url)
            .schema(&schema)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e})"));
        let ids = store.insert(vec![new_job(); 6]).await.unwrap();
        let lease = store.register(Duration::from_secs(60)).await.unwrap();
        let kinds = vec!["k".to_owned()];
        let claim = |n: usize, after| {
            let store = store.clone();
            let kinds = kinds.clone();
            async move {
                let rows = store
                    .claim(lease, "q", &kinds, n, after, 1)
                    .await
                    .unwrap()
                    .rows;
                rows
            }
        };
        let ids_of = |rows: &[super::Claimed]| rows.iter().map(|r| r.id).collect::<Vec<_>>();
        let first = claim(2, None).await;
        assert_eq!(ids_of(&first), ids[0..2]);
        let second = claim(2, Some(first[1].cursor)).await;
        assert_eq!(ids_of(&second), ids[2..4], "starts past the cursor");
        // The first row back in the queue (before the cursor), and a row of
        // a higher priority (before it too).
        let release = Finish {
            id: first[0].id,
            attempt: first[0].attempt,
            action: Action::Release,
        };
        assert_eq!(
            store.finish(lease, vec![release]).await.unwrap(),
            vec![Fate::Applied]
        );
        let urgent = store
            .insert(vec![NewJob {
                priority: 5,
                ..new_job()
            }])
            .await
            .unwrap()[0];
        let third = claim(4, Some(second[1].cursor)).await;
        assert_eq!(
            ids_of(&third),
            ids[4..6],
            "only rows past the cursor, of its priority"
        );
        let front = claim(4, None).await;
        assert_eq!(
            ids_of(&front),
            vec![urgent, ids[0]],
            "a claim from the front finds what the cursor passed"
        );
        store.drop_schema().await;
    });
}

/// A heartbeat reports the lease's running rows the worker does not know:
/// claimed by a claim that has answered (numbered below the bound) and not
/// among the held ids. Rows of a claim still in flight, or held, are not.
#[test]
fn a_heartbeat_reports_rows_of_a_lost_claim_answer_postgres() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_unknown_{}", std::process::id());
    runtime().block_on(async {
        let store = PgStore::builder(&url)
            .schema(&schema)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e})"));
        store.insert(vec![new_job(); 2]).await.unwrap();
        let lease = store.register(Duration::from_secs(60)).await.unwrap();
        let kinds = vec!["k".to_owned()];
        let lost = store
            .claim(lease, "q", &kinds, 1, None, 7)
            .await
            .unwrap()
            .rows;
        let held = store
            .claim(lease, "q", &kinds, 1, None, 8)
            .await
            .unwrap()
            .rows;
        let ttl = Duration::from_secs(60);
        let beat = |held: Vec<i64>, below: i64| {
            let store = store.clone();
            async move { store.heartbeat(lease, ttl, held, below).await.unwrap() }
        };
        // Claim 7 answered (8 in flight): its row is unknown.
        let b = beat(vec![], 8).await;
        assert!(b.alive);
        assert_eq!(b.unknown, vec![(lost[0].id, 1)]);
        // Both answered, the second row held.
        let b = beat(vec![held[0].id.0], 9).await;
        assert_eq!(b.unknown, vec![(lost[0].id, 1)]);
        // Both held, or both still in flight: nothing.
        let b = beat(vec![lost[0].id.0, held[0].id.0], 9).await;
        assert_eq!(b.unknown, vec![]);
        let b = beat(vec![], 7).await;
        assert_eq!(b.unknown, vec![]);
        store.drop_schema().await;
    });
}
