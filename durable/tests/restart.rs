//! The crash suite's "the server restarted while jobs run", with the real
//! server: the local Debian cluster behind `DATABASE_URL` is restarted
//! (`pg_ctlcluster ... restart -m fast`) while a child worker process burns
//! down a queue. Nothing may be lost, nothing completed twice without a
//! lease loss, attempt counts stay honest, and the worker, the producer's
//! handles and its submits carry on by themselves (nothing is restarted but
//! the server).
//!
//! A binary of its own with one test: cargo runs test binaries one after
//! another, so the restart cannot break the tests of other binaries. The
//! same test is also the child worker (`CORRAL_RESTART_CHILD_SCHEMA` set).
//! A server that cannot be restarted from here fails the test, saying why;
//! `CORRAL_SKIP_PG_RESTART=1` skips it instead.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{database_url, drop_schema, pg_store, raw_client, unique_schema};
use corral_durable::{Client, Job, JobContext, JobResult, Worker};
use serde::{Deserialize, Serialize};

/// Only catches a hang or a loss: everything must be done this long after
/// the restart began.
const BOUND: Duration = Duration::from_secs(60);
/// The burn-down: short jobs, on `SHORT_SLOTS` of the child's slots.
const JOBS: usize = 300;
const JOB_MS: u64 = 20;
const SHORT_SLOTS: usize = 2;
/// The child's lease: longer than a restart takes, so none should be lost
/// (if one is, the checks below still hold, with its writes refused).
const LEASE_TTL_MS: u64 = 10_000;
/// How long the test waits for other clients of the server to leave before
/// it restarts the server anyway.
const COURTESY: Duration = Duration::from_secs(20);

const SKIP_VAR: &str = "CORRAL_SKIP_PG_RESTART";
const CHILD_VAR: &str = "CORRAL_RESTART_CHILD_SCHEMA";

/// The job: prints when it starts and ends.
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
        println!("START {} {} {pid}", ctx.id(), ctx.attempt());
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        println!("END {} {} {pid}", ctx.id(), ctx.attempt());
        Ok((pid, ctx.attempt()))
    }
}

#[test]
fn server_restarted_while_jobs_run_nothing_lost_workers_resume() {
    if let Ok(schema) = std::env::var(CHILD_VAR) {
        return child_worker(&schema);
    }
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        println!("SKIPPED: {SKIP_VAR}=1, the PostgreSQL server restart test does not run");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario());
}

/// The child worker process: prints `READY`, runs until its stdin says
/// `stop` (or closes), stops, prints `STATS`.
fn child_worker(schema: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = pg_store(schema).await;
        let worker = Worker::builder(&store)
            .register::<Work>()
            // One more slot than the burn-down uses, for the long job.
            .queue("default", SHORT_SLOTS + 1)
            .lease_ttl(Duration::from_millis(LEASE_TTL_MS))
            .start()
            .await
            .unwrap();
        common::serve_until_stop(worker).await;
    });
}

/// Fails the test: the server cannot be restarted from here.
fn cannot_restart(why: String) -> ! {
    panic!(
        "this test restarts the PostgreSQL server behind DATABASE_URL ({}) with Debian's \
         pg_ctlcluster, and cannot: {why}. It needs the local Debian cluster (run as root or \
         its owner); set {SKIP_VAR}=1 to skip it.",
        database_url()
    )
}

/// The local Debian cluster serving DATABASE_URL.
#[derive(Debug, Clone)]
struct Cluster {
    version: String,
    name: String,
    host: String,
    port: String,
}

impl Cluster {
    /// Finds the cluster whose postmaster is the parent of the backend
    /// serving DATABASE_URL: only that one is restarted.
    async fn find() -> Cluster {
        let url = database_url();
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                cannot_restart(format!(
                    "cannot connect ({e}; is it running? `pg_ctlcluster \
                     --skip-systemctl-redirect 15 main start` starts the local one)"
                ))
            });
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT current_setting('data_directory'), current_setting('port'), pg_backend_pid()",
                &[],
            )
            .await
            .unwrap_or_else(|e| cannot_restart(format!("cannot ask the server ({e})")));
        let (data_dir, port, backend): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        let listed = Command::new("pg_lsclusters")
            .arg("-h")
            .output()
            .unwrap_or_else(|e| cannot_restart(format!("pg_lsclusters cannot run ({e})")));
        let listed = String::from_utf8_lossy(&listed.stdout);
        // version cluster port status owner data_directory log
        let Some(f) = listed
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() >= 6 && f[5] == data_dir && f[2] == port)
        else {
            cannot_restart(format!(
                "no local cluster (pg_lsclusters) has its data directory {data_dir} and port {port}"
            ))
        };
        let postmaster = std::fs::read_to_string(format!("{data_dir}/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::trim).map(str::to_owned));
        let parent = std::fs::read_to_string(format!("/proc/{backend}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:").map(|p| p.trim().to_owned()))
            });
        if postmaster.is_none() || postmaster != parent {
            cannot_restart(format!(
                "its backend (pid {backend}) is not a child of the local cluster {} {}'s \
                 postmaster ({postmaster:?}, parent {parent:?}): not the same server",
                f[0], f[1]
            ));
        }
        let config: tokio_postgres::Config = url.parse().unwrap();
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".into(),
        };
        let cluster = Cluster {
            version: f[0].to_owned(),
            name: f[1].to_owned(),
            host,
            port,
        };
        // Fails now, before the scenario, if pg_ctlcluster is absent or
        // cannot act on the cluster.
        if let Err(e) = cluster.ctl("status") {
            cannot_restart(e);
        }
        cluster
    }

    fn ctl(&self, action: &str) -> Result<(), String> {
        let mode: &[&str] = if action == "status" {
            &[]
        } else {
            &["-m", "fast"]
        };
        let out = Command::new("pg_ctlcluster")
            .arg("--skip-systemctl-redirect")
            .args(mode)
            .args([&self.version, &self.name, action])
            .output()
            .map_err(|e| format!("pg_ctlcluster cannot run ({e})"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`pg_ctlcluster {} {} {action}` failed ({}): {}{}",
                self.version,
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn ready(&self) -> bool {
        Command::new("pg_isready")
            .args(["-q", "-h", &self.host, "-p", &self.port])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn wait_ready(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while !self.ready() {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }
}

/// Makes sure the server is up when the test ends, however it ends.
struct ServerUp(Cluster);

impl Drop for ServerUp {
    fn drop(&mut self) {
        if self.0.wait_ready(Duration::from_secs(5)) {
            return;
        }
        eprintln!("the PostgreSQL server is down after the restart test; starting it");
        if let Err(e) = self.0.ctl("start") {
            eprintln!("{e}");
        }
        if !self.0.wait_ready(Duration::from_secs(60)) {
            eprintln!("the PostgreSQL server did not come back up");
        }
    }
}

/// Client backends of the server other than this test's (and this query's).
async fn other_clients(schema: &str) -> i64 {
    let c = raw_client().await;
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname IS NOT NULL AND pid <> pg_backend_pid() AND application_name <> $1",
        &[&format!("corral-durable:{schema}")],
    )
    .await
    .unwrap()
    .get(0)
}

/// The child worker process and what it printed.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(schema: &str) -> Proc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "server_restarted_while_jobs_run_nothing_lost_workers_resume",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_VAR, schema)
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
                sink.lock().unwrap().push(line);
            }
        });
        let stdin = child.stdin.take();
        Proc {
            child,
            stdin,
            lines,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.starts_with(prefix)).count()
    }

    async fn wait_line(&self, prefix: &str) -> String {
        let end = tokio::time::Instant::now() + BOUND;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.starts_with(prefix)) {
                return l;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "the child worker never printed {prefix:?}; last printed {:?}",
                self.lines().iter().rev().take(10).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|s| s.is_none())
    }

    /// Stops the worker cleanly; returns its (finalized, lost, leases_lost).
    async fn stop(&mut self) -> (u64, u64, u64) {
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
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(job id, attempt)` of every line starting with `what`.
fn events(lines: &[String], what: &str) -> Vec<(i64, u32)> {
    lines
        .iter()
        .filter(|l| l.starts_with(what))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect()
}

async fn scenario() {
    let started = Instant::now();
    let cluster = Cluster::find().await;
    let schema = unique_schema("restart");

    // Courtesy to other users of the server (a CI run of another checkout):
    // give them a little time to finish before their connections are cut.
    let courtesy_end = Instant::now() + COURTESY;
    let mut others = other_clients(&schema).await;
    while others > 0 && Instant::now() < courtesy_end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        others = other_clients(&schema).await;
    }
    println!(
        "other client backends before the scenario: {others} (waited {:?})",
        started.elapsed()
    );

    let store = pg_store(&schema).await;
    let client = Client::new(&store);
    let mut child = Proc::spawn(&schema);
    child.wait_line("READY").await;
    let child_pid = child.child.id();

    // A long job that runs across the restart (its write comes after it),
    // and a delayed one the leader stages while the server is away or after.
    let long = client.enqueue(Work { ms: 3000 }).submit().await.unwrap();
    let delayed = client
        .enqueue(Work { ms: 1 })
        .delay(Duration::from_secs(2))
        .submit()
        .await
        .unwrap();
    child.wait_line(&format!("START {} 1", long.id())).await;
    let jobs = (0..JOBS)
        .map(|_| client.enqueue(Work { ms: JOB_MS }))
        .collect();
    let handles = client.submit_batch(jobs).await.unwrap();

    // Handles taken before the restart, awaited across it: the submit's
    // handles of every job, and a subscription to the long one.
    let subscribed = client.subscribe::<Work>(long.id()).await.unwrap();
    let awaited = tokio::spawn(async move {
        let mut out = Vec::new();
        for h in std::iter::once(long)
            .chain(std::iter::once(delayed))
            .chain(handles)
        {
            let id = h.id();
            out.push((id, h.await));
        }
        out
    });
    let subscribed = tokio::spawn(async move { subscribed.await });

    // Restart once about a third of the burn-down has completed.
    let end = tokio::time::Instant::now() + BOUND;
    while child.count("END") < JOBS / 3 {
        assert!(
            tokio::time::Instant::now() < end,
            "the burn-down did not get going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let others = other_clients(&schema).await;
    let guard = ServerUp(cluster.clone());
    let ended_before = child.count("END");
    let restart_began = Instant::now();
    let restart_wall = SystemTime::now();
    let restarted = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || {
            cluster.ctl("restart").map(|()| cluster.wait_ready(BOUND))
        })
        .await
        .unwrap()
    };
    match restarted {
        Err(e) => cannot_restart(e),
        Ok(ready) => assert!(
            ready,
            "the server did not answer pg_isready after its restart"
        ),
    }
    let restart_took = restart_began.elapsed();
    let ended_at_ready = child.count("END");
    let up_again: f64 = raw_client()
        .await
        .query_one(
            "SELECT extract(epoch FROM pg_postmaster_start_time())::float8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let began: f64 = restart_wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    println!(
        "restarted {} {} ({others} other client backends then): the new server started \
         {:.2} s after the restart began, pg_ctlcluster returned after {restart_took:.2?}; \
         {ended_before} of {JOBS} short jobs had ended before, {ended_at_ready} by then",
        cluster.version,
        cluster.name,
        up_again - began
    );

    // A submit after the restart works at once (the pool drops its dead
    // connections), and the worker, which nobody restarted, runs it.
    let after = client
        .enqueue(Work { ms: 1 })
        .submit()
        .await
        .expect("a submit right after the restart");
    let after_id = after.id();
    let after_out = tokio::time::timeout(BOUND, after)
        .await
        .expect("the job submitted after the restart never completed: the worker did not resume")
        .unwrap();
    assert_eq!(after_out, (child_pid, 1));

    // Every handle taken before the restart resolves: nothing lost.
    let remaining = BOUND.saturating_sub(restart_began.elapsed());
    let awaited = tokio::time::timeout(remaining, awaited)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "jobs lost or the worker hung: {BOUND:?} after the restart began, {} jobs had ended",
                child.count("END")
            )
        })
        .unwrap();
    let remaining = BOUND.saturating_sub(restart_began.elapsed());
    let sub_out = tokio::time::timeout(remaining, subscribed)
        .await
        .expect("a subscription taken before the restart never resolved")
        .unwrap()
        .expect("the long job's outcome");
    let all_done = restart_began.elapsed();
    assert!(child.alive(), "the worker process died");

    let lines = child.lines();
    let (finalized, lost, leases_lost) = child.stop().await;
    let starts = events(&lines, "START");
    let ends = events(&lines, "END");
    let mut outcomes: HashMap<i64, (u32, u32)> = HashMap::new();
    let long_id = awaited[0].0.get();
    for (id, out) in awaited {
        let out = out.unwrap_or_else(|e| panic!("job {id} did not complete: {e}"));
        assert_eq!(out.0, child_pid, "job {id} ran elsewhere");
        outcomes.insert(id.get(), out);
    }
    outcomes.insert(after_id.get(), after_out);
    assert_eq!(outcomes.len(), JOBS + 3);
    assert_eq!(
        sub_out, outcomes[&long_id],
        "the subscription saw another outcome"
    );

    // Completed exactly once unless a lease was lost: a body that ran to
    // its end more than once needs a refused write to account for it.
    let mut ends_per_job: HashMap<i64, u64> = HashMap::new();
    for (id, _) in &ends {
        *ends_per_job.entry(*id).or_default() += 1;
    }
    let extra: u64 = ends_per_job.values().map(|n| n - 1).sum();
    assert!(
        extra <= lost,
        "{extra} bodies ran to their end again, but only {lost} writes were refused"
    );
    // Honest attempts: each job's final attempt is the number of its starts
    // (a claim whose answer was lost in the restart would show here).
    for (id, (_, attempt)) in &outcomes {
        let n = starts.iter().filter(|(j, _)| j == id).count() as u32;
        assert_eq!(
            *attempt, n,
            "job {id}: attempt {attempt}, started {n} times"
        );
    }
    if lost == 0 && leases_lost == 0 {
        assert!(
            outcomes.values().all(|(_, a)| *a == 1),
            "a job ran again though no lease was lost"
        );
    }
    assert_eq!(
        finalized,
        (JOBS + 3) as u64,
        "every accepted write is one completion (finalized {finalized}, lost {lost})"
    );

    // The rows say the same, and that the restart really came mid-run:
    // jobs completed on both sides of it.
    let db = raw_client().await;
    let row = db
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE state = 'completed'),
                        count(*) FILTER (WHERE state <> 'completed'),
                        count(*) FILTER (WHERE finished_at < pg_postmaster_start_time()),
                        count(*) FILTER (WHERE finished_at >= pg_postmaster_start_time())
                   FROM {schema}.jobs"
            ),
            &[],
        )
        .await
        .unwrap();
    let (completed, other, before, since): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((completed, other), ((JOBS + 3) as i64, 0));
    assert!(
        before > 0 && since > 1,
        "the restart did not come mid-run: {before} jobs completed before it, {since} after"
    );
    println!(
        "all {} jobs completed once each ({before} before the restart, {since} after), \
         {all_done:?} after the restart began; worker stats: finalized {finalized}, lost {lost}, \
         leases lost {leases_lost}; test took {:?}",
        JOBS + 3,
        started.elapsed()
    );
    drop(db);
    drop(store);
    drop_schema(&schema).await;
    drop(guard);
}
