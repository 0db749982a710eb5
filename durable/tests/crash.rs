//! The crash suite on PostgreSQL, with real worker processes: this test
//! binary runs itself as a child (`child_worker`, ignored unless started by
//! a test) and the parent kills, pauses and disconnects them.
//!
//! Each test checks: nothing lost (every job completes), nothing completed
//! twice without a lease loss (a body that ran to its end more than once
//! needs a refused write to account for it), attempt counts honest, and
//! the late writer told it lost its lease. Bounds are generous: they only
//! fail on a hang or a loss.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{drop_schema, pg_store, raw_client, unique_schema};
use corral_durable::{Client, Job, JobContext, JobResult, PgStore, Worker};
use serde::{Deserialize, Serialize};

const BOUND: Duration = Duration::from_secs(60);

/// Every job started in this process (children print theirs instead).
static LOCAL_STARTS: Mutex<Vec<i64>> = Mutex::new(Vec::new());

/// The job the children run: prints when it starts and ends.
#[derive(Serialize, Deserialize)]
struct Work {
    ms: u64,
}

impl Job for Work {
    const KIND: &'static str = "work";
    /// (pid of the process that ran it, attempt)
    type Output = (u32, u32);
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<(u32, u32), String> {
        let pid = std::process::id();
        // Starts in this process (in-process workers), for duplicate checks.
        LOCAL_STARTS.lock().unwrap().push(ctx.id().get());
        println!("START {} {} {pid}", ctx.id(), ctx.attempt());
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        println!("END {} {} {pid}", ctx.id(), ctx.attempt());
        Ok((pid, ctx.attempt()))
    }
}

/// The child worker process. Configured by environment; prints `READY`,
/// runs until its stdin says `stop` (or closes), stops, prints `STATS`.
#[test]
#[ignore = "the worker process of the crash suite; started by its tests"]
fn child_worker() {
    let schema = std::env::var("CORRAL_CHILD_SCHEMA").expect("started by a crash test");
    let ttl: u64 = std::env::var("CORRAL_CHILD_TTL_MS")
        .unwrap()
        .parse()
        .unwrap();
    let slots: usize = std::env::var("CORRAL_CHILD_SLOTS")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = pg_store(&schema).await;
        let worker = Worker::builder(&store)
            .register::<Work>()
            .queue("default", slots)
            .lease_ttl(Duration::from_millis(ttl))
            .start()
            .await
            .unwrap();
        common::serve_until_stop(worker).await;
    });
}

/// A child worker process and what it printed.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Each line with when this process read it.
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Proc {
    fn spawn(schema: &str, ttl_ms: u64, slots: usize) -> Proc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_worker",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CORRAL_CHILD_SCHEMA", schema)
            .env("CORRAL_CHILD_TTL_MS", ttl_ms.to_string())
            .env("CORRAL_CHILD_SLOTS", slots.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        let stdin = child.stdin.take();
        Proc {
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// When the first line starting with `prefix` was read.
    fn read_at(&self, prefix: &str) -> Option<Instant> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
    }

    async fn wait_line(&self, prefix: &str) -> String {
        let end = tokio::time::Instant::now() + BOUND;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.starts_with(prefix)) {
                return l;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "child {} never printed {prefix:?}; last printed {:?}",
                self.pid(),
                self.lines().iter().rev().take(10).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.pid());
    }

    /// Stops the worker cleanly; returns its (finalized, lost, leases_lost).
    async fn stop(mut self) -> (u64, u64, u64) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let stats = self.wait_line("STATS").await;
        let _ = self.child.wait();
        let n: Vec<u64> = stats
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        (n[0], n[1], n[2])
    }

    fn kill(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(job id, attempt, pid)` of every line starting with `what`.
fn events(procs: &[&Proc], what: &str) -> Vec<(i64, u32, u32)> {
    let lines: Vec<String> = procs.iter().flat_map(|p| p.lines()).collect();
    events_in(&lines, what)
}

fn events_in(lines: &[String], what: &str) -> Vec<(i64, u32, u32)> {
    lines
        .iter()
        .filter(|l| l.starts_with(what))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

async fn setup(tag: &str) -> (String, PgStore, Client) {
    let schema = unique_schema(tag);
    let store = pg_store(&schema).await;
    let client = Client::new(&store);
    (schema, store, client)
}

async fn await_all(client: &Client, ids: &[corral_durable::JobId]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for id in ids {
        let h = client.subscribe::<Work>(*id).await.unwrap();
        let r = tokio::time::timeout(BOUND, h)
            .await
            .unwrap_or_else(|_| panic!("job {id} lost: never completed"));
        out.push(r.unwrap_or_else(|e| panic!("job {id} failed: {e}")));
    }
    out
}

/// Every job's bodies ended at most once, unless writes were refused.
fn check_no_double_completion(ends: &[(i64, u32, u32)], lost: u64) {
    let mut per_job: HashMap<i64, u64> = HashMap::new();
    for (id, _, _) in ends {
        *per_job.entry(*id).or_default() += 1;
    }
    let extra: u64 = per_job.values().map(|n| n - 1).sum();
    assert!(
        extra <= lost,
        "{extra} bodies ran to their end again, but only {lost} writes were refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_job_completes_once_on_another_worker() {
    let (schema, _store, client) = setup("kill").await;
    let a = Proc::spawn(&schema, 1000, 1);
    a.wait_line("READY").await;
    // No retries: an attempt lost with its worker does not count against them.
    let h = client.enqueue(Work { ms: 1500 }).submit().await.unwrap();
    let id = h.id();
    a.wait_line(&format!("START {id} 1")).await;
    let a_pid = a.pid();
    a.kill();
    let killed = Instant::now();
    // The survivor's own lease is generous, so a loaded machine cannot make
    // it lose the job too.
    let b = Proc::spawn(&schema, 5000, 1);
    let (pid, attempt) = tokio::time::timeout(BOUND, h).await.expect("lost").unwrap();
    assert_eq!(
        (pid, attempt),
        (b.pid(), 2),
        "completed by the other worker, attempt 2"
    );
    assert_ne!(pid, a_pid);
    let starts = events(&[&b], "START");
    assert_eq!(starts.len(), 1, "one more start only: {starts:?}");
    // Rescued only once the lease expired: its last heartbeat was at most a
    // third of the 1 s TTL before the kill.
    let rerun = b.read_at(&format!("START {id} 2")).unwrap() - killed;
    assert!(
        rerun >= Duration::from_millis(600),
        "rescued before the lease expired: {rerun:?}"
    );
    let (finalized, lost, _) = b.stop().await;
    assert_eq!((finalized, lost), (1, 0));
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_lease_then_sigcont_the_late_write_is_refused() {
    let (schema, _store, client) = setup("stop").await;
    let a = Proc::spawn(&schema, 1000, 1);
    a.wait_line("READY").await;
    let h = client.enqueue(Work { ms: 2000 }).submit().await.unwrap();
    let id = h.id();
    a.wait_line(&format!("START {id} 1")).await;
    a.signal("-STOP");
    let b = Proc::spawn(&schema, 5000, 1);
    let outcome = tokio::time::timeout(BOUND, h).await.expect("lost").unwrap();
    assert_eq!(outcome, (b.pid(), 2), "the new worker's outcome");
    a.signal("-CONT");
    // The old worker wakes, finds its lease gone; its write is refused and reported.
    let (_, a_lost, a_leases_lost) = a.stop().await;
    assert!(a_lost >= 1, "the late writer was told it lost the job");
    assert!(
        a_leases_lost >= 1,
        "the paused worker noticed its lease expired"
    );
    // The stored outcome is still the new worker's.
    let again = client.subscribe::<Work>(id).await.unwrap().await.unwrap();
    assert_eq!(again, (b.pid(), 2));
    let (b_fin, b_lost, _) = b.stop().await;
    assert_eq!((b_fin, b_lost), (1, 0));
    drop_schema(&schema).await;
}

async fn terminate_backends(schema: &str, only_listener: bool) -> i64 {
    let c = raw_client().await;
    let sql = if only_listener {
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE application_name = $1 AND query LIKE 'LISTEN%'"
    } else {
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1"
    };
    let row = c
        .query_one(sql, &[&format!("corral-durable:{schema}")])
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_backend_terminated_workers_resume() {
    let (schema, _store, client) = setup("listen").await;
    let a = Proc::spawn(&schema, 10_000, 2);
    a.wait_line("READY").await;
    let first = client.enqueue(Work { ms: 10 }).submit().await.unwrap();
    tokio::time::timeout(BOUND, first).await.unwrap().unwrap();
    // Terminates the listeners of this schema (the child's and this process's).
    let killed = terminate_backends(&schema, true).await;
    assert!(killed >= 1, "found no listener to terminate");
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(client.enqueue(Work { ms: 10 }).submit().await.unwrap().id());
    }
    // Wake-ups resume without the 5-minute fallback poll: well within BOUND.
    let outcomes = await_all(&client, &ids).await;
    assert!(outcomes.iter().all(|(_, attempt)| *attempt == 1));
    let (_, lost, _) = a.stop().await;
    assert_eq!(lost, 0);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_terminated_while_jobs_run_nothing_lost() {
    // A server restart as tests beside it see it: restarting the shared
    // server would break the other tests of this binary, which run in
    // parallel, so every connection of this test's schema (pool and
    // listener, parent and child) is terminated, twice, while jobs run.
    // The real restart is `tests/restart.rs`, a binary of its own.
    let (schema, _store, client) = setup("restart").await;
    let a = Proc::spawn(&schema, 3000, 4);
    a.wait_line("READY").await;
    let jobs = (0..40).map(|_| client.enqueue(Work { ms: 100 })).collect();
    let ids: Vec<_> = client
        .submit_batch(jobs)
        .await
        .unwrap()
        .iter()
        .map(|h| h.id())
        .collect();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        terminate_backends(&schema, false).await;
    }
    let outcomes = await_all(&client, &ids).await;
    assert_eq!(outcomes.len(), 40);
    let log = a.lines.clone();
    let (_, lost, _) = a.stop().await;
    let lines: Vec<String> = log.lock().unwrap().iter().map(|(_, l)| l.clone()).collect();
    check_no_double_completion(&events_in(&lines, "END"), lost);
    // Attempts are honest: each job's final attempt is the number of its starts.
    let starts = events_in(&lines, "START");
    for (id, (_, attempt)) in ids.iter().zip(&outcomes) {
        let n = starts.iter().filter(|(j, _, _)| *j == id.get()).count() as u32;
        assert_eq!(
            *attempt, n,
            "job {id}: attempt {attempt}, started {n} times"
        );
    }
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_beside_a_burn_down() {
    let (schema, _store, client) = setup("idle").await;
    // Holds the xmin horizon back for the whole burn-down.
    let holder = raw_client().await;
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT txid_current();")
        .await
        .unwrap();
    let jobs = (0..2000).map(|_| client.enqueue(Work { ms: 0 })).collect();
    let ids: Vec<_> = client
        .submit_batch(jobs)
        .await
        .unwrap()
        .iter()
        .map(|h| h.id())
        .collect();
    let a = Proc::spawn(&schema, 10_000, 16);
    a.wait_line("READY").await;
    let stats_done = async {
        loop {
            let s = client.stats().await.unwrap();
            if s["default"].completed == 2000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(BOUND, stats_done)
        .await
        .expect("claims stalled beside an idle transaction");
    let outcomes = await_all(&client, &ids[..50]).await;
    assert!(outcomes.iter().all(|(_, attempt)| *attempt == 1));
    holder.batch_execute("ROLLBACK").await.unwrap();
    let (finalized, lost, _) = a.stop().await;
    assert_eq!((finalized, lost), (2000, 0));
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workers_one_queue_no_job_twice_none_lost() {
    let (schema, store, client) = setup("many").await;
    let procs: Vec<Proc> = (0..3).map(|_| Proc::spawn(&schema, 10_000, 4)).collect();
    for p in &procs {
        p.wait_line("READY").await;
    }
    // And two in-process workers (tasks) on the same queue.
    let mut local = Vec::new();
    for _ in 0..2 {
        local.push(
            Worker::builder(&store)
                .register::<Work>()
                .queue("default", 2)
                .start()
                .await
                .unwrap(),
        );
    }
    let jobs = (0..600).map(|_| client.enqueue(Work { ms: 2 })).collect();
    let ids: Vec<_> = client
        .submit_batch(jobs)
        .await
        .unwrap()
        .iter()
        .map(|h| h.id())
        .collect();
    let outcomes = await_all(&client, &ids).await;
    assert!(
        outcomes.iter().all(|(_, attempt)| *attempt == 1),
        "no rescue, no retry"
    );
    let mut lost = 0;
    let refs: Vec<&Proc> = procs.iter().collect();
    let starts = events(&refs, "START");
    for w in &local {
        w.stop(Duration::from_secs(10)).await;
        lost += w.stats().lost;
    }
    let by_procs = starts.len();
    let mut child_lost = 0;
    for p in procs {
        child_lost += p.stop().await.1;
    }
    assert_eq!(lost + child_lost, 0);
    // Each job started once in all: the children's starts (printed) and
    // the in-process workers' (recorded in this process) together.
    let ours: std::collections::HashSet<i64> = ids.iter().map(|id| id.get()).collect();
    let local_starts: Vec<i64> = LOCAL_STARTS
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|id| ours.contains(id))
        .collect();
    assert_eq!(
        by_procs + local_starts.len(),
        600,
        "every job ran exactly once"
    );
    let mut seen = std::collections::HashSet::new();
    assert!(
        starts
            .iter()
            .map(|(id, _, _)| *id)
            .chain(local_starts.iter().copied())
            .all(|id| seen.insert(id)),
        "a job started twice"
    );
    drop_schema(&schema).await;
}
