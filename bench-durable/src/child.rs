//! The child process: runs one (workload, side, variant) and prints one
//! `RESULT key=value ...` line; a broken correctness check is a `FAIL`
//! line on stderr and exit status 1.
//!
//! Connections are named (`application_name`) so that each child reads
//! only its own wire counts and its own backends' CPU: `bw_<pid>` is the
//! measured side (worker, or the floor's worker connection), `bs_<pid>` the
//! child's statistics connection, `bx_<pid>` setup and checks.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant, UNIX_EPOCH};

use corral_durable::{Client, PgStore, Worker};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::jobs::{self, Noop, Stamp};
use crate::pg::{self, e, Res};
use crate::proxy;

/// Worker slots of corral's queue in the throughput workloads: what a user
/// running short jobs would set; each claim takes as many rows as free
/// slots. The floor claims batches of the same size.
pub const SLOTS: usize = 100;
/// Slots of the worker in the latency workloads (D3, D6).
pub const LATENCY_SLOTS: usize = 8;

/// What one child needs to know.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub workload: String,
    pub side: String,
    pub variant: String,
    pub quick: bool,
    /// Direct URL (setup, checks).
    pub url: String,
    /// URL through the counting proxy.
    pub purl: String,
    /// The proxy's control address.
    pub ctl: String,
    pub pid: u32,
}

/// Sizes of every workload.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub d1: usize,
    pub d2: usize,
    pub d2_single: usize,
    pub d3: usize,
    pub d4: usize,
    pub d4_spread: Duration,
    pub d6: Duration,
    pub d8: usize,
    pub d8_ttl: Duration,
    pub deadline: Duration,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                d1: 2_000,
                d2: 2_000,
                d2_single: 1_000,
                d3: 50,
                d4: 500,
                d4_spread: Duration::from_secs(1),
                d6: Duration::from_secs(2),
                d8: 2_000,
                d8_ttl: Duration::from_secs(1),
                deadline: Duration::from_secs(60),
            }
        } else {
            Sizes {
                d1: 100_000,
                d2: 100_000,
                // One commit per job with synchronous_commit = on: about
                // 700/s on this machine, so 100,000 would take 2.5 minutes
                // per run.
                d2_single: 10_000,
                d3: 2_000,
                d4: 10_000,
                d4_spread: Duration::from_secs(5),
                d6: Duration::from_secs(60),
                d8: 100_000,
                d8_ttl: Duration::from_secs(10),
                deadline: Duration::from_secs(240),
            }
        }
    }
}

/// Values for the `RESULT` line, and failed checks.
#[derive(Debug, Default)]
pub struct Report {
    pub values: BTreeMap<String, f64>,
    pub failures: Vec<String>,
}

impl Report {
    pub(crate) fn set(&mut self, k: &str, v: f64) {
        self.values.insert(k.to_owned(), v);
    }
    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }
}

/// Runs the child; returns the exit status.
pub fn main(ctx: Ctx) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("FAIL runtime: {err}");
            return 2;
        }
    };
    let sizes = Sizes::new(ctx.quick);
    let schema = format!("bench_{}_{}", ctx.side, ctx.pid);
    let out = rt.block_on(async {
        let r = tokio::time::timeout(sizes.deadline, run(&ctx, &sizes, &schema)).await;
        pg::drop_schema(&pg::with_app(&ctx.url, &format!("bx_{}", ctx.pid)), &schema).await;
        r.unwrap_or_else(|_| {
            Err(format!(
                "no result within {:?} (server gone?)",
                sizes.deadline
            ))
        })
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match out {
        Ok(report) => {
            let fields: Vec<String> = report
                .values
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("RESULT {}", fields.join(" "));
            for f in &report.failures {
                eprintln!("FAIL {}/{}: {f}", ctx.workload, ctx.side);
            }
            i32::from(!report.failures.is_empty())
        }
        Err(err) => {
            eprintln!("FAIL {}/{}: {err}", ctx.workload, ctx.side);
            1
        }
    }
}

async fn run(ctx: &Ctx, s: &Sizes, schema: &str) -> Res<Report> {
    let corral = ctx.side == "corral";
    #[cfg(feature = "peers")]
    if crate::peers::is_peer(&ctx.side) {
        return crate::peers::run(ctx, s).await;
    }
    match ctx.workload.as_str() {
        "D1" => burn_down(ctx, s.d1, schema, false, s).await,
        "D5" => burn_down(ctx, s.d1, schema, true, s).await,
        "D2" if corral => d2_corral(ctx, d2_n(ctx, s), schema).await,
        "D2" => d2_floor(ctx, d2_n(ctx, s), schema).await,
        "D3" => d3(ctx, s.d3, schema).await,
        "D4" => d4(ctx, s, schema).await,
        "D6" => d6(ctx, s.d6, schema).await,
        "D8" if corral => d8(ctx, s, schema).await,
        other => Err(format!("no program for {other} on side {}", ctx.side)),
    }
}

fn d2_n(ctx: &Ctx, s: &Sizes) -> usize {
    if ctx.variant == "single" {
        s.d2_single
    } else {
        s.d2
    }
}

pub(crate) fn app(ctx: &Ctx, role: char) -> String {
    format!("b{role}_{}", ctx.pid)
}

/// A PgStore on `schema`, connections named `name`.
async fn store(url: &str, name: &str, schema: &str, migrate: bool) -> Res<PgStore> {
    PgStore::builder(pg::with_app(url, name))
        .schema(schema)
        .migrate(migrate)
        .connect()
        .await
        .map_err(|x| format!("PgStore::connect: {x}"))
}

/// Inserts `n` no-op jobs in bulk (corral: `submit_batch` of 5,000; floor:
/// `INSERT ... SELECT FROM unnest` of 10,000).
async fn seed(ctx: &Ctx, n: usize, schema: &str) -> Res<()> {
    if ctx.side == "corral" {
        let st = store(&ctx.url, &app(ctx, 'x'), schema, true).await?;
        let client = Client::new(&st);
        for lo in (0..n).step_by(5_000) {
            let batch = (lo..n.min(lo + 5_000))
                .map(|i| client.enqueue(Noop { i: i as u32 }))
                .collect();
            client.submit_batch(batch).await.map_err(e)?;
        }
    } else {
        let c = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 'x'))).await?;
        pg::create_floor_schema(&c, schema).await?;
        let ins = pg::floor_insert(schema);
        for lo in (0..n).step_by(10_000) {
            let args: Vec<String> = (lo..n.min(lo + 10_000))
                .map(|i| format!("{{\"i\":{i}}}"))
                .collect();
            c.execute(&ins, &[&args]).await.map_err(e)?;
        }
    }
    Ok(())
}

/// What a measured window starts from.
pub(crate) struct Window {
    pub(crate) t: Instant,
    cpu: f64,
    backends: std::collections::HashMap<i32, f64>,
    wire: [u64; 3],
}

pub(crate) async fn open(ctx: &Ctx, stats: &tokio_postgres::Client) -> Res<Window> {
    let me = app(ctx, 'w');
    Ok(Window {
        wire: proxy::counts(&ctx.ctl, &me).map_err(e)?,
        backends: pg::backend_cpu(stats, &me).await?,
        cpu: pg::cpu_self(),
        t: Instant::now(),
    })
}

/// Closes a window: seconds, worker CPU, server CPU and wire counts.
pub(crate) async fn close(
    ctx: &Ctx,
    stats: &tokio_postgres::Client,
    w: &Window,
    r: &mut Report,
    per: f64,
) -> Res<f64> {
    let secs = w.t.elapsed().as_secs_f64();
    let cpu = pg::cpu_self() - w.cpu;
    let me = app(ctx, 'w');
    let backends = pg::backend_cpu(stats, &me).await?;
    let wire = proxy::counts(&ctx.ctl, &me).map_err(e)?;
    r.set("cpu_worker", cpu);
    r.set("cpu_server", pg::cpu_delta(&w.backends, &backends));
    r.set("round_trips", (wire[0] - w.wire[0]) as f64 / per);
    r.set("statements", (wire[1] - w.wire[1]) as f64 / per);
    r.set("wire_commits", (wire[2] - w.wire[2]) as f64 / per);
    Ok(secs)
}

/// D1 (and D5 with `held`): drain `n` no-op jobs inserted in bulk.
async fn burn_down(ctx: &Ctx, n: usize, schema: &str, held: bool, s: &Sizes) -> Res<Report> {
    let mut r = Report::default();
    // D5: a transaction holding the horizon back from before the insert.
    let hold = if held {
        let h = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 'h'))).await?;
        h.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT txid_current()")
            .await
            .map_err(e)?;
        Some(h)
    } else {
        None
    };
    seed(ctx, n, schema).await?;
    jobs::track(n);
    let stats = pg::connect(&pg::with_app(&ctx.purl, &app(ctx, 's'))).await?;
    let x0 = pg::xact_commit(&stats).await?;
    let s0 = proxy::counts(&ctx.ctl, &app(ctx, 's')).map_err(e)?;
    let me = app(ctx, 'w');
    let secs = if ctx.side == "corral" {
        let st = store(&ctx.purl, &me, schema, false).await?;
        let w = open(ctx, &stats).await?;
        let worker = Worker::builder(&st)
            .register::<Noop>()
            .queue("default", SLOTS)
            .start()
            .await
            .map_err(e)?;
        let deadline = Instant::now() + s.deadline;
        while (worker.stats().finalized as usize) < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {n} finalized",
                    worker.stats().finalized
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let end = Instant::now();
        let first = jobs::first_start().unwrap_or(w.t);
        let _ = close(ctx, &stats, &w, &mut r, n as f64).await?;
        worker.stop(Duration::from_secs(5)).await;
        r.check(worker.stats().lost == 0, || {
            format!("{} writes refused", worker.stats().lost)
        });
        drop(worker);
        drop(st);
        (end - first).as_secs_f64()
    } else {
        let c = pg::connect(&pg::with_app(&ctx.purl, &me)).await?;
        let claim = c.prepare(&pg::floor_claim(schema)).await.map_err(e)?;
        let done = c.prepare(&pg::floor_done(schema, false)).await.map_err(e)?;
        let w = open(ctx, &stats).await?;
        let batch = SLOTS as i64;
        let mut finished = 0;
        loop {
            let rows = c.query(&claim, &[&batch]).await.map_err(e)?;
            if rows.is_empty() {
                break;
            }
            let mut ids = Vec::with_capacity(rows.len());
            for row in &rows {
                let args: String = row.get(1);
                let job: Noop = serde_json::from_str(&args).map_err(e)?;
                jobs::ran(job.i);
                ids.push(row.get::<_, i64>(0));
            }
            let outs = vec![0i64; ids.len()];
            c.query_one(&done, &[&ids, &outs]).await.map_err(e)?;
            finished += ids.len();
        }
        let secs = w.t.elapsed().as_secs_f64();
        let _ = close(ctx, &stats, &w, &mut r, n as f64).await?;
        r.check(finished == n, || format!("finished {finished} of {n}"));
        drop(c);
        secs
    };
    pg::wait_gone(&stats, &me).await?;
    let s1 = proxy::counts(&ctx.ctl, &app(ctx, 's')).map_err(e)?;
    let x1 = pg::xact_commit(&stats).await?;
    let own = (s1[2] - s0[2]) as i64 + 1; // the stats connection's own transactions
    r.set("commits", (x1 - x0 - own) as f64 / n as f64);
    r.set("rate", n as f64 / secs);
    r.set("secs", secs);
    r.set("drained", n as f64);
    r.set(
        "cpu_worker_10k",
        r.values["cpu_worker"] * 10_000.0 / n as f64,
    );
    r.set(
        "cpu_server_10k",
        r.values["cpu_server"] * 10_000.0 / n as f64,
    );
    let (never, twice) = jobs::not_once();
    r.check(never == 0 && twice == 0, || {
        format!("{never} jobs never ran, {twice} ran twice")
    });
    let c = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 'x'))).await?;
    let row = c
        .query_one(
            &format!("SELECT count(*) FROM {schema}.jobs WHERE state = 'completed'"),
            &[],
        )
        .await
        .map_err(e)?;
    let completed: i64 = row.get(0);
    r.check(completed as usize == n, || {
        format!("{completed} of {n} rows completed")
    });
    // Both sides stamp `attempted_at` and `finished_at` with now(), the
    // transaction's start: distinct values count claims and completions.
    let row = c
        .query_one(
            &format!("SELECT count(DISTINCT attempted_at), count(DISTINCT finished_at) FROM {schema}.jobs"),
            &[],
        )
        .await
        .map_err(e)?;
    let (claims, dones): (i64, i64) = (row.get(0), row.get(1));
    r.set("rows_per_claim", n as f64 / claims.max(1) as f64);
    r.set("rows_per_done", n as f64 / dones.max(1) as f64);
    drop(hold);
    Ok(r)
}

/// D2: 8 tasks submitting one job at a time, or batches of 1,000.
async fn d2_corral(ctx: &Ctx, n: usize, schema: &str) -> Res<Report> {
    let mut r = Report::default();
    let st = store(&ctx.url, &app(ctx, 'w'), schema, true).await?;
    let client = Client::new(&st);
    let cpu = CpuWindow::open(ctx).await?;
    let t = Instant::now();
    if ctx.variant == "single" {
        let mut tasks = Vec::new();
        for k in 0..8 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = k;
                while i < n {
                    let _handle = client
                        .enqueue(Noop { i: i as u32 })
                        .submit()
                        .await
                        .map_err(e)?;
                    i += 8;
                }
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(e)??;
        }
    } else {
        for lo in (0..n).step_by(1_000) {
            let batch = (lo..n.min(lo + 1_000))
                .map(|i| client.enqueue(Noop { i: i as u32 }))
                .collect();
            client.submit_batch(batch).await.map_err(e)?;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    r.set("rate", n as f64 / secs);
    cpu.close(&mut r, n).await?;
    count_rows(ctx, schema, n, &mut r).await?;
    Ok(r)
}

async fn d2_floor(ctx: &Ctx, n: usize, schema: &str) -> Res<Report> {
    let mut r = Report::default();
    let setup = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 'x'))).await?;
    pg::create_floor_schema(&setup, schema).await?;
    let url = pg::with_app(&ctx.url, &app(ctx, 'w'));
    let (t, cpu, secs);
    if ctx.variant == "single" {
        let mut conns = Vec::new();
        for _ in 0..8 {
            let c = pg::connect(&url).await?;
            let ins = c
                .prepare(&format!(
                    "INSERT INTO {schema}.jobs (queue, kind, args) VALUES ('default', 'noop', $1::text::jsonb)"
                ))
                .await
                .map_err(e)?;
            conns.push((c, ins));
        }
        cpu = CpuWindow::open(ctx).await?;
        t = Instant::now();
        let mut tasks = Vec::new();
        for (k, (c, ins)) in conns.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let mut i = k;
                while i < n {
                    c.execute(&ins, &[&format!("{{\"i\":{i}}}")])
                        .await
                        .map_err(e)?;
                    i += 8;
                }
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(e)??;
        }
        secs = t.elapsed().as_secs_f64();
        cpu.close(&mut r, n).await?;
    } else {
        let c = pg::connect(&url).await?;
        let ins = c.prepare(&pg::floor_insert(schema)).await.map_err(e)?;
        cpu = CpuWindow::open(ctx).await?;
        t = Instant::now();
        for lo in (0..n).step_by(1_000) {
            let args: Vec<String> = (lo..n.min(lo + 1_000))
                .map(|i| format!("{{\"i\":{i}}}"))
                .collect();
            c.execute(&ins, &[&args]).await.map_err(e)?;
        }
        // Before the connection closes, while its backend can be read.
        secs = t.elapsed().as_secs_f64();
        cpu.close(&mut r, n).await?;
    }
    r.set("rate", n as f64 / secs);
    count_rows(ctx, schema, n, &mut r).await?;
    Ok(r)
}

/// D2's CPU, without the proxy in the way (D2 connects directly): this
/// process's, and that of the server backends of its connections (`w`).
/// CPU does not depend on what else the machine runs, unlike the rate.
struct CpuWindow {
    stats: tokio_postgres::Client,
    me: String,
    cpu: f64,
    backends: std::collections::HashMap<i32, f64>,
}

impl CpuWindow {
    async fn open(ctx: &Ctx) -> Res<CpuWindow> {
        let stats = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 's'))).await?;
        let me = app(ctx, 'w');
        let backends = pg::backend_cpu(&stats, &me).await?;
        Ok(CpuWindow {
            stats,
            me,
            cpu: pg::cpu_self(),
            backends,
        })
    }

    /// Sets `cpu_client_10k` and `cpu_server_10k` (seconds per 10,000 jobs).
    async fn close(self, r: &mut Report, n: usize) -> Res<()> {
        let cpu = pg::cpu_self() - self.cpu;
        let backends = pg::backend_cpu(&self.stats, &self.me).await?;
        let per = 10_000.0 / n as f64;
        r.set("cpu_client_10k", cpu * per);
        r.set(
            "cpu_server_10k",
            pg::cpu_delta(&self.backends, &backends) * per,
        );
        Ok(())
    }
}

async fn count_rows(ctx: &Ctx, schema: &str, n: usize, r: &mut Report) -> Res<()> {
    let c = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 'x'))).await?;
    let row = c
        .query_one(&format!("SELECT count(*) FROM {schema}.jobs"), &[])
        .await
        .map_err(e)?;
    let rows: i64 = row.get(0);
    r.check(rows as usize == n, || {
        format!("{rows} rows for {n} submits")
    });
    Ok(())
}

/// Starts a worker process (`--worker`) and waits for its `READY` line.
async fn spawn_worker(
    ctx: &Ctx,
    schema: &str,
    slots: usize,
    ttl: Duration,
    runs: Option<&str>,
) -> Res<Child> {
    let exe = std::env::current_exe().map_err(e)?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "--worker",
        &ctx.side,
        "--url",
        &ctx.url,
        "--schema",
        schema,
        "--slots",
        &slots.to_string(),
        "--ttl-ms",
        &ttl.as_millis().to_string(),
        "--app",
        &format!("bw_{}", ctx.pid),
    ]);
    if let Some(path) = runs {
        cmd.args(["--runs", path]);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(e)?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(out).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    match ready {
        Ok(Ok(Some(l))) if l == "READY" => Ok(child),
        other => Err(format!("worker process did not start: {other:?}")),
    }
}

/// Ends a worker process gracefully (closes its stdin), then kills it.
async fn end_worker(mut child: Child) {
    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// D3: enqueue one job and await it from another process, `n` times.
async fn d3(ctx: &Ctx, n: usize, schema: &str) -> Res<Report> {
    let mut r = Report::default();
    let (mut start, mut done) = (Vec::with_capacity(n), Vec::with_capacity(n));
    if ctx.side == "corral" {
        let st = store(&ctx.url, &app(ctx, 'x'), schema, true).await?;
        let worker = spawn_worker(
            ctx,
            schema,
            LATENCY_SLOTS,
            corral_durable::DEFAULT_LEASE_TTL,
            None,
        )
        .await?;
        let client = Client::new(&st);
        for i in 0..n {
            let t0 = jobs::now_us();
            let h = client
                .enqueue(Stamp {
                    i: i as u32,
                    due_us: 0,
                })
                .submit()
                .await
                .map_err(e)?;
            let started = tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .map_err(|_| format!("job {i} not resolved within 30 s"))?
                .map_err(|x| format!("job {i}: {x:?}"))?;
            let t1 = jobs::now_us();
            start.push((started - t0) as f64 / 1000.0);
            done.push((t1 - t0) as f64 / 1000.0);
        }
        end_worker(worker).await;
    } else {
        let setup = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 'x'))).await?;
        pg::create_floor_schema(&setup, schema).await?;
        let worker = spawn_worker(
            ctx,
            schema,
            LATENCY_SLOTS,
            corral_durable::DEFAULT_LEASE_TTL,
            None,
        )
        .await?;
        let (c, mut rx) = pg::connect_listening(&pg::with_app(&ctx.url, &app(ctx, 'q'))).await?;
        c.batch_execute(&format!("LISTEN {}", pg::channel(schema)))
            .await
            .map_err(e)?;
        let ins = c
            .prepare(&format!(
                "INSERT INTO {schema}.jobs (queue, kind, args) VALUES ('default', 'stamp', $1::text::jsonb) RETURNING id"
            ))
            .await
            .map_err(e)?;
        for i in 0..n {
            let t0 = jobs::now_us();
            let row = c
                .query_one(&ins, &[&format!("{{\"i\":{i},\"due_us\":0}}")])
                .await
                .map_err(e)?;
            let id: i64 = row.get(0);
            let want = format!("{id}:");
            let started = loop {
                let note = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                    .await
                    .map_err(|_| format!("job {i} not done within 30 s"))?
                    .ok_or("listener gone")?;
                let Some(list) = note.strip_prefix("d:") else {
                    continue;
                };
                if let Some(v) = list.split(',').find_map(|p| p.strip_prefix(&want)) {
                    break v.parse::<i64>().map_err(e)?;
                }
            };
            let t1 = jobs::now_us();
            start.push((started - t0) as f64 / 1000.0);
            done.push((t1 - t0) as f64 / 1000.0);
        }
        end_worker(worker).await;
    }
    r.check(start.len() == n, || {
        format!("{} of {n} resolved", start.len())
    });
    r.set("measured", start.len() as f64);
    r.set("stalled", 0.0);
    for (name, v) in [("start", &mut start), ("done", &mut done)] {
        r.set(&format!("{name}_p50"), pct(v, 0.5));
        r.set(&format!("{name}_p99"), pct(v, 0.99));
        r.set(&format!("{name}_max"), pct(v, 1.0));
    }
    Ok(r)
}

/// D4: `n` jobs due over the spread; lateness of their starts.
async fn d4(ctx: &Ctx, s: &Sizes, schema: &str) -> Res<Report> {
    let mut r = Report::default();
    let n = s.d4;
    jobs::track(n);
    let spread = s.d4_spread.as_micros() as i64;
    let lead = if ctx.quick { 500_000 } else { 1_000_000 };
    let base = jobs::now_us() + lead;
    let due = |i: usize| base + spread * i as i64 / n as i64;
    let deadline = Instant::now() + s.deadline;
    if ctx.side == "corral" {
        let st = store(&ctx.url, &app(ctx, 'w'), schema, true).await?;
        let worker = Worker::builder(&st)
            .register::<Stamp>()
            .queue("default", SLOTS)
            .start()
            .await
            .map_err(e)?;
        let client = Client::new(&st);
        for lo in (0..n).step_by(1_000) {
            let batch = (lo..n.min(lo + 1_000))
                .map(|i| {
                    let at = UNIX_EPOCH + Duration::from_micros(due(i) as u64);
                    client
                        .enqueue(Stamp {
                            i: i as u32,
                            due_us: due(i),
                        })
                        .start_at(at)
                })
                .collect();
            client.submit_batch(batch).await.map_err(e)?;
        }
        r.check(jobs::now_us() < base, || {
            "inserting took longer than the lead".into()
        });
        while (worker.stats().finalized as usize) < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {n} finalized",
                    worker.stats().finalized
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker.stop(Duration::from_secs(5)).await;
    } else {
        let c = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 'w'))).await?;
        pg::create_floor_schema(&c, schema).await?;
        let ins = format!(
            "INSERT INTO {schema}.jobs (queue, kind, args, run_at)
             SELECT 'default', 'stamp', a::jsonb, timestamptz 'epoch' + d * interval '1 microsecond'
               FROM unnest($1::text[], $2::bigint[]) AS u(a, d)"
        );
        for lo in (0..n).step_by(1_000) {
            let args: Vec<String> = (lo..n.min(lo + 1_000))
                .map(|i| format!("{{\"i\":{i},\"due_us\":{}}}", due(i)))
                .collect();
            let dues: Vec<i64> = (lo..n.min(lo + 1_000)).map(due).collect();
            c.execute(&ins, &[&args, &dues]).await.map_err(e)?;
        }
        r.check(jobs::now_us() < base, || {
            "inserting took longer than the lead".into()
        });
        floor_loop(&c, schema, SLOTS as i64, false, Some(n), deadline, None).await?;
    }
    let mut late: Vec<f64> = jobs::LATENESS
        .lock()
        .unwrap()
        .iter()
        .map(|&us| us as f64 / 1000.0)
        .collect();
    let (never, twice) = jobs::not_once();
    r.check(never == 0 && twice == 0, || {
        format!("{never} jobs never ran, {twice} ran twice")
    });
    let early = late.iter().filter(|&&ms| ms < -1.0).count();
    r.check(early == 0, || {
        format!("{early} jobs started more than 1 ms early")
    });
    r.set("late_p50", pct(&mut late, 0.5));
    r.set("late_p99", pct(&mut late, 0.99));
    r.set("late_max", pct(&mut late, 1.0));
    Ok(r)
}

/// The floor's worker loop on one connection: claim up to `batch` due rows,
/// run them, complete them in one statement; when none is due, wait for a
/// notice (if `listen` gives a receiver), the next due time, or a 1 s poll.
/// Ends after `stop_after` jobs, at the deadline, or when `stop` fires.
pub async fn floor_loop(
    c: &tokio_postgres::Client,
    schema: &str,
    batch: i64,
    notify: bool,
    stop_after: Option<usize>,
    deadline: Instant,
    mut listen: Option<&mut tokio::sync::mpsc::UnboundedReceiver<String>>,
) -> Res<usize> {
    let claim = c.prepare(&pg::floor_claim(schema)).await.map_err(e)?;
    let done = c
        .prepare(&pg::floor_done(schema, notify))
        .await
        .map_err(e)?;
    let next = c
        .prepare(&format!(
            "SELECT (extract(epoch FROM min(run_at) - clock_timestamp()) * 1000000)::bigint
               FROM {schema}.jobs WHERE state = 'available' AND queue = 'default'"
        ))
        .await
        .map_err(e)?;
    let mut finished = 0;
    loop {
        if stop_after.is_some_and(|n| finished >= n) || Instant::now() > deadline {
            return Ok(finished);
        }
        if let Some(rx) = listen.as_mut() {
            while rx.try_recv().is_ok() {} // seen before the claim: no lost wake-up
        }
        let rows = c.query(&claim, &[&batch]).await.map_err(e)?;
        if !rows.is_empty() {
            let mut ids = Vec::with_capacity(rows.len());
            let mut outs = Vec::with_capacity(rows.len());
            for row in &rows {
                let args: String = row.get(1);
                let v: serde_json::Value = serde_json::from_str(&args).map_err(e)?;
                let now = jobs::now_us();
                let i = v["i"].as_u64().unwrap_or(0) as u32;
                jobs::ran(i);
                let due = v["due_us"].as_i64().unwrap_or(0);
                if due > 0 {
                    jobs::LATENESS.lock().unwrap().push(now - due);
                }
                ids.push(row.get::<_, i64>(0));
                outs.push(now);
            }
            c.query_one(&done, &[&ids, &outs]).await.map_err(e)?;
            finished += ids.len();
            continue;
        }
        let mut wait = Duration::from_secs(1);
        if stop_after.is_some() {
            let row = c.query_one(&next, &[]).await.map_err(e)?;
            if let Some(us) = row.get::<_, Option<i64>>(0) {
                wait = wait.min(Duration::from_micros(us.max(0) as u64));
            }
        }
        match listen.as_mut() {
            Some(rx) => {
                let _ = tokio::time::timeout(wait, rx.recv()).await;
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// D6: an idle worker: statements per second, CPU of worker and server.
async fn d6(ctx: &Ctx, idle: Duration, schema: &str) -> Res<Report> {
    let mut r = Report::default();
    let me = app(ctx, 'w');
    let stats = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 's'))).await?;
    let settle = Duration::from_secs(1);
    if ctx.side == "corral" {
        let _setup = store(&ctx.url, &app(ctx, 'x'), schema, true).await?;
        let st = store(&ctx.purl, &me, schema, false).await?;
        let worker = Worker::builder(&st)
            .register::<Noop>()
            .queue("default", LATENCY_SLOTS)
            .start()
            .await
            .map_err(e)?;
        tokio::time::sleep(settle).await;
        let w = open(ctx, &stats).await?;
        tokio::time::sleep(idle).await;
        let secs = close(ctx, &stats, &w, &mut r, 1.0).await?;
        worker.stop(Duration::from_secs(5)).await;
        per_second(&mut r, secs);
    } else {
        let setup = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 'x'))).await?;
        pg::create_floor_schema(&setup, schema).await?;
        let (c, mut rx) = pg::connect_listening(&pg::with_app(&ctx.purl, &me)).await?;
        c.batch_execute(&format!("LISTEN {}", pg::channel(schema)))
            .await
            .map_err(e)?;
        let stop = Instant::now() + settle + idle;
        let sch = schema.to_owned();
        let looper = tokio::spawn(async move {
            floor_loop(
                &c,
                &sch,
                LATENCY_SLOTS as i64,
                true,
                None,
                stop,
                Some(&mut rx),
            )
            .await
        });
        tokio::time::sleep(settle).await;
        let w = open(ctx, &stats).await?;
        tokio::time::sleep(idle).await;
        let secs = close(ctx, &stats, &w, &mut r, 1.0).await?;
        looper.abort();
        per_second(&mut r, secs);
    }
    Ok(r)
}

pub(crate) fn per_second(r: &mut Report, secs: f64) {
    for k in ["statements", "round_trips", "wire_commits"] {
        let v = r.values[k] / secs;
        r.set(&format!("{k}_per_s"), v);
    }
    let (cw, cs) = (r.values["cpu_worker"], r.values["cpu_server"]);
    r.set("cpu_worker_per_min", cw * 60.0 / secs);
    r.set("cpu_server_per_min", cs * 60.0 / secs);
}

/// D8: a worker process SIGKILLed at 50%, a new one started.
async fn d8(ctx: &Ctx, s: &Sizes, schema: &str) -> Res<Report> {
    let mut r = Report::default();
    let n = s.d8;
    seed(ctx, n, schema).await?;
    let c = pg::connect(&pg::with_app(&ctx.url, &app(ctx, 'x'))).await?;
    let dir = std::env::temp_dir();
    let runs_a = dir.join(format!("corral-bench-d8-{}-a", ctx.pid));
    let runs_b = dir.join(format!("corral-bench-d8-{}-b", ctx.pid));
    let (pa, pb) = (
        runs_a.to_string_lossy().into_owned(),
        runs_b.to_string_lossy().into_owned(),
    );
    let _ = std::fs::remove_file(&runs_a);
    let _ = std::fs::remove_file(&runs_b);
    let deadline = Instant::now() + s.deadline;
    let mut a = spawn_worker(ctx, schema, SLOTS, s.d8_ttl, Some(&pa)).await?;
    loop {
        let len = std::fs::metadata(&runs_a).map(|m| m.len()).unwrap_or(0) as usize;
        if len / 4 >= n / 2 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the first worker did not reach 50%".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.start_kill().map_err(e)?; // SIGKILL
    let killed = Instant::now();
    let _ = a.wait().await;
    let rows = c
        .query(
            &format!("SELECT (args->>'i')::int, lease FROM {schema}.jobs WHERE state = 'running'"),
            &[],
        )
        .await
        .map_err(e)?;
    let running: std::collections::HashSet<i32> = rows.iter().map(|row| row.get(0)).collect();
    let dead: Option<i64> = rows.first().and_then(|row| row.get(1));
    let b = spawn_worker(ctx, schema, SLOTS, s.d8_ttl, Some(&pb)).await?;
    let mut rescue = 0.0;
    if let Some(dead) = dead {
        let q =
            format!("SELECT count(*) FROM {schema}.jobs WHERE state = 'running' AND lease = $1");
        loop {
            let left: i64 = c.query_one(&q, &[&dead]).await.map_err(e)?.get(0);
            if left == 0 {
                rescue = killed.elapsed().as_secs_f64();
                break;
            }
            if Instant::now() > deadline {
                return Err("the dead worker's jobs were never rescued".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let q = format!("SELECT count(*) FROM {schema}.jobs WHERE state <> 'completed'");
    loop {
        let left: i64 = c.query_one(&q, &[]).await.map_err(e)?.get(0);
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{left} jobs not completed at the deadline"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    end_worker(b).await;
    let mut count = vec![0u32; n];
    for path in [&runs_a, &runs_b] {
        let bytes = std::fs::read(path).unwrap_or_default();
        for w in bytes.chunks_exact(4) {
            let i = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize;
            if let Some(c) = count.get_mut(i) {
                *c += 1;
            }
        }
    }
    let _ = std::fs::remove_file(&runs_a);
    let _ = std::fs::remove_file(&runs_b);
    let lost = count.iter().filter(|&&c| c == 0).count();
    let dups: Vec<usize> = (0..n).filter(|&i| count[i] > 1).collect();
    let stray = dups
        .iter()
        .filter(|&&i| !running.contains(&(i as i32)))
        .count();
    r.set("lost", lost as f64);
    r.set("dups", dups.len() as f64);
    r.set("running_at_kill", running.len() as f64);
    r.set("dups_outside", stray as f64);
    r.set("rescue_s", rescue);
    r.set("ttl_s", s.d8_ttl.as_secs_f64());
    r.check(lost == 0, || format!("{lost} jobs lost"));
    r.check(stray == 0, || {
        format!("{stray} jobs ran twice that were not running at the kill")
    });
    Ok(r)
}
