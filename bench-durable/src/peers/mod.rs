//! The peer queues as sides (cargo feature `peers`): awa 0.6.9,
//! apalis-postgres 1.0.0 and underway 0.2.0, on the same server and the
//! same no-op job as corral and the floor.
//!
//! Each peer hard-codes its schema name (`awa`, `apalis`, `underway`), so
//! each (workload, peer, repetition) runs in a database of its own,
//! `bench_<peer>_<child pid>`, created by the child and dropped (`WITH
//! (FORCE)`) at its end; the parent drops it again after the child exits,
//! in case the child was killed. Sides never see each other's rows.
//!
//! Workloads: D1 (with D7), D2, D3 and D6. The peers are slow enough that
//! D1's 100,000 jobs would not drain within a child's time limit (apalis and
//! underway run at hundreds of jobs/s here), so a peer's D1 measures the
//! first [`Budget::drain`] of the drain, or the whole drain if shorter, and
//! D3 stops after [`Budget::latency`] (both reported: `drained`,
//! `measured`).

mod apalis;
mod awa;
mod underway;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::child::{self, Ctx, Report, Sizes, LATENCY_SLOTS, SLOTS};
use crate::jobs;
use crate::pg::{self, e, Res};
use crate::proxy;

/// The peer sides, in the order they run.
pub const SIDES: [&str; 3] = ["awa", "apalis", "underway"];

/// Whether `side` is a peer.
pub fn is_peer(side: &str) -> bool {
    SIDES.contains(&side)
}

/// How each peer is configured, for the report's header.
pub const CONFIG: &str = "peers: awa 0.6.9 (queue storage installed, max_workers = slots, other QueueConfig defaults: \
claim batch <= 512, 200 ms poll + LISTEN/NOTIFY), apalis-postgres 1.0.0 (with_pubsub, batch_size = slots), \
underway 0.2.0 (Task + Queue API, concurrency min(slots, 16) on a pool of that + 4); each in a database of its own";

/// What the peers' columns mean, after the table.
pub const LEGEND: &str = "\
Peers: each run in a database of its own; corral/peer = median of the run-by-run ratios (repetition i of \
corral against repetition i of the peer). A peer's D1 rate covers the first 90 s of its drain of 100,000 jobs \
(the whole drain if shorter: see 'jobs drained'), its CPU and wire counts are per job drained. A peer's D3 \
'resolved' is when the enqueuer sees the job finished in the peer's tables (polled every 1 ms; no peer has a \
handle to await from another process); its run stops after 100 s or at the first job not finished within 65 s \
(a lost wake-up, recorded at 65 s).";

/// Time limits of the peers' open-ended workloads.
struct Budget {
    /// D1: stop measuring the drain after this long.
    drain: Duration,
    /// D3: stop starting new jobs after this long.
    latency: Duration,
    /// D3: the longest one job may take (underway polls every 60 s).
    one: Duration,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                drain: Duration::from_secs(20),
                latency: Duration::from_secs(15),
                one: Duration::from_secs(15),
            }
        } else {
            Budget {
                drain: Duration::from_secs(90),
                latency: Duration::from_secs(100),
                one: Duration::from_secs(65),
            }
        }
    }
}

/// The database of a peer's child.
pub fn db_name(side: &str, pid: u32) -> String {
    format!("bench_{side}_{pid}")
}

/// The URL with its database replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[start..].find('/').map_or(base.len(), |i| start + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Drops a peer's database (after its child), if it is still there.
pub async fn drop_db(url: &str, db: &str) {
    if let Ok(c) = pg::connect(&pg::with_app(url, "bench_durable_parent")).await {
        let _ = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
    }
}

/// Drops the database of the peer child `pid` (the parent's backstop).
pub fn cleanup(url: &str, side: &str, pid: u32) {
    if !is_peer(side) {
        return;
    }
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        rt.block_on(drop_db(url, &db_name(side, pid)));
    }
}

/// A peer's producer and progress probe.
enum Peer {
    Awa(awa::Peer),
    Apalis(apalis::Peer),
    Underway(underway::Peer),
}

impl Peer {
    async fn connect(side: &str, url: &str, max: u32, migrate: bool) -> Res<Peer> {
        Ok(match side {
            "awa" => Peer::Awa(awa::Peer::connect(url, max, migrate).await?),
            "apalis" => Peer::Apalis(apalis::Peer::connect(url, migrate).await?),
            "underway" => Peer::Underway(underway::Peer::connect(url, max, migrate).await?),
            other => return Err(format!("no peer {other}")),
        })
    }

    async fn batch(&self, lo: usize, hi: usize) -> Res<()> {
        match self {
            Peer::Awa(p) => p.batch(lo, hi).await,
            Peer::Apalis(p) => p.batch(lo, hi).await,
            Peer::Underway(p) => p.batch(lo, hi).await,
        }
    }

    async fn one(&self, i: u32) -> Res<()> {
        match self {
            Peer::Awa(p) => p.one(i).await,
            Peer::Apalis(p) => p.one(i).await,
            Peer::Underway(p) => p.one(i).await,
        }
    }

    /// (finished, not finished).
    async fn counts(&self) -> Res<(i64, i64)> {
        match self {
            Peer::Awa(p) => p.counts().await,
            Peer::Apalis(p) => p.counts().await,
            Peer::Underway(p) => p.counts().await,
        }
    }

    /// Whether job `i`, the last inserted with [`Peer::one`] into a queue
    /// that finished every job before it, has finished.
    async fn done_one(&self, i: u32) -> Res<bool> {
        match self {
            Peer::Awa(p) => p.last_done().await,
            _ => Ok(self.counts().await?.0 > i64::from(i)),
        }
    }

    async fn close(self) {
        match self {
            Peer::Awa(p) => p.close().await,
            Peer::Apalis(p) => p.close().await,
            Peer::Underway(p) => p.close().await,
        }
    }
}

/// A peer's running worker.
enum Runner {
    /// Boxed: awa's client is large.
    Awa(Box<awa::Runner>),
    Apalis(apalis::Runner),
    Underway(underway::Runner),
}

impl Runner {
    async fn start(side: &str, url: &str, slots: usize, on_run: fn(u32)) -> Res<Runner> {
        Ok(match side {
            "awa" => Runner::Awa(Box::new(awa::Runner::start(url, slots, on_run).await?)),
            "apalis" => Runner::Apalis(apalis::Runner::start(url, slots, on_run).await?),
            "underway" => Runner::Underway(underway::Runner::start(url, slots, on_run).await?),
            other => return Err(format!("no peer {other}")),
        })
    }

    async fn stop(self) -> Res<()> {
        match self {
            Runner::Awa(r) => {
                r.stop().await;
                Ok(())
            }
            Runner::Apalis(r) => r.stop().await,
            Runner::Underway(r) => r.stop().await,
        }
    }
}

/// Runs a peer's workload in a database of its own.
pub async fn run(ctx: &Ctx, s: &Sizes) -> Res<Report> {
    let db = db_name(&ctx.side, ctx.pid);
    let admin = pg::connect(&pg::with_app(&ctx.url, &child::app(ctx, 'x'))).await?;
    // Two statements: neither may run in a transaction block.
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .map_err(|x| format!("creating database {db}: {}", e(x)))?;
    }
    let urls = Urls {
        direct: with_db(&ctx.url, &db),
        proxied: with_db(&ctx.purl, &db),
    };
    let b = Budget::new(ctx.quick);
    let r = match ctx.workload.as_str() {
        "D1" => d1(ctx, s.d1, &urls, &b).await,
        "D2" => d2(ctx, s, &urls).await,
        "D3" => d3(ctx, s.d3, &urls, &b).await,
        "D6" => d6(ctx, s.d6, &urls).await,
        other => Err(format!("{other} is not measured for the peers")),
    };
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
    r
}

struct Urls {
    direct: String,
    proxied: String,
}

/// D1 (and D7): drain `n` no-op jobs inserted in bulk (batches of 5,000),
/// for at most the budget.
async fn d1(ctx: &Ctx, n: usize, u: &Urls, b: &Budget) -> Res<Report> {
    let mut r = Report::default();
    let setup = Peer::connect(
        &ctx.side,
        &pg::with_app(&u.direct, &child::app(ctx, 'x')),
        4,
        true,
    )
    .await?;
    for lo in (0..n).step_by(5_000) {
        setup.batch(lo, n.min(lo + 5_000)).await?;
    }
    let (_, queued) = setup.counts().await?;
    r.check(queued as usize == n, || {
        format!("{queued} of {n} jobs queued")
    });
    jobs::track(n);
    let stats = pg::connect(&pg::with_app(&u.proxied, &child::app(ctx, 's'))).await?;
    let x0 = pg::xact_commit(&stats).await?;
    let s0 = proxy::counts(&ctx.ctl, &child::app(ctx, 's')).map_err(e)?;
    let me = child::app(ctx, 'w');
    let w = child::open(ctx, &stats).await?;
    let runner = Runner::start(&ctx.side, &pg::with_app(&u.proxied, &me), SLOTS, jobs::ran).await?;
    let stop_at = Instant::now() + b.drain;
    let mut done = 0;
    while Instant::now() < stop_at {
        done = setup.counts().await?.0 as usize;
        if done >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = Instant::now();
    let first = jobs::first_start().unwrap_or(w.t);
    // The window's counters cover `done` jobs (CPU and wire counts run on
    // while the worker is stopped, a small overcount).
    let per = done.max(1) as f64;
    let _ = child::close(ctx, &stats, &w, &mut r, per).await?;
    let stopped = runner.stop().await;
    r.check(stopped.is_ok(), || format!("{stopped:?}"));
    pg::wait_gone(&stats, &me).await?;
    let s1 = proxy::counts(&ctx.ctl, &child::app(ctx, 's')).map_err(e)?;
    let x1 = pg::xact_commit(&stats).await?;
    let own = (s1[2] - s0[2]) as i64 + 1;
    r.set("commits", (x1 - x0 - own) as f64 / per);
    let secs = (end - first).as_secs_f64();
    r.set("rate", done as f64 / secs);
    r.set("secs", secs);
    r.set("drained", done as f64);
    r.set("cpu_worker_10k", r.values["cpu_worker"] * 10_000.0 / per);
    r.set("cpu_server_10k", r.values["cpu_server"] * 10_000.0 / per);
    r.check(done > 0, || "no job finished".into());
    let (finished, _) = setup.counts().await?;
    let (never, twice) = jobs::not_once();
    let ran = n - never;
    r.check(twice == 0, || format!("{twice} jobs ran twice"));
    r.check(ran >= finished as usize, || {
        format!("{finished} jobs finished but only {ran} bodies ran")
    });
    setup.close().await;
    Ok(r)
}

/// D2: single inserts from 8 tasks, or batches of 1,000 from one.
async fn d2(ctx: &Ctx, s: &Sizes, u: &Urls) -> Res<Report> {
    let mut r = Report::default();
    let single = ctx.variant == "single";
    let n = if single { s.d2_single } else { s.d2 };
    let url = pg::with_app(&u.direct, &child::app(ctx, 'w'));
    // Migrate on a connection of its own, then measure on a pool of 8.
    Peer::connect(&ctx.side, &url, 2, true).await?.close().await;
    let p = std::sync::Arc::new(Peer::connect(&ctx.side, &url, 8, false).await?);
    let t = Instant::now();
    if single {
        let mut tasks = Vec::new();
        for k in 0..8 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = k;
                while i < n {
                    p.one(i as u32).await?;
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
            p.batch(lo, n.min(lo + 1_000)).await?;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    r.set("rate", n as f64 / secs);
    let (done, queued) = p.counts().await?;
    r.check((done + queued) as usize == n, || {
        format!("{} of {n} rows", done + queued)
    });
    if let Ok(p) = std::sync::Arc::try_unwrap(p) {
        p.close().await;
    }
    Ok(r)
}

/// D3: one job at a time into an idle queue whose worker runs in another
/// process (`--peer-worker`); enqueue -> start from the body's stamp (the
/// worker prints it), enqueue -> resolved when the enqueuer sees the job
/// finished in the peer's tables (polled every millisecond: the peers have
/// no handle to await from another process).
async fn d3(ctx: &Ctx, n: usize, u: &Urls, b: &Budget) -> Res<Report> {
    let mut r = Report::default();
    let p = Peer::connect(
        &ctx.side,
        &pg::with_app(&u.direct, &child::app(ctx, 'q')),
        2,
        true,
    )
    .await?;
    let exe = std::env::current_exe().map_err(e)?;
    let mut worker = Command::new(exe)
        .args([
            "--peer-worker",
            &ctx.side,
            "--url",
            &pg::with_app(&u.direct, &child::app(ctx, 'w')),
            "--slots",
            &LATENCY_SLOTS.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(e)?;
    let out = worker.stdout.take().ok_or("no worker stdout")?;
    let mut lines = BufReader::new(out).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| "the worker did not start within 30 s".to_string())?
        .map_err(e)?;
    if ready.as_deref() != Some("READY") {
        return Err(format!("the worker did not start: {ready:?}"));
    }
    let (tx, mut starts) = tokio::sync::mpsc::unbounded_channel::<(u32, i64)>();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            let mut f = l.split_whitespace();
            if let (Some("S"), Some(i), Some(t)) = (f.next(), f.next(), f.next()) {
                if let (Ok(i), Ok(t)) = (i.parse(), t.parse()) {
                    let _ = tx.send((i, t));
                }
            }
        }
    });
    let mut start = Vec::new();
    let mut done = Vec::new();
    let mut seen: HashMap<u32, i64> = HashMap::new();
    let began = Instant::now();
    let mut stalled = 0;
    for i in 0..n as u32 {
        if began.elapsed() > b.latency {
            break;
        }
        let t0 = jobs::now_us();
        p.one(i).await?;
        let limit = Instant::now() + b.one;
        loop {
            while let Ok((j, t)) = starts.try_recv() {
                seen.insert(j, t);
            }
            if seen.contains_key(&i) && p.done_one(i).await? {
                break;
            }
            if Instant::now() > limit {
                // A lost wake-up: the job waits for the peer's next poll
                // or heartbeat. Counted, with the limit as its latency (a
                // lower bound), and the run ends here.
                stalled = 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t1 = jobs::now_us();
        let cap = b.one.as_micros() as i64;
        start.push((seen.get(&i).map_or(cap, |s| s - t0)) as f64 / 1000.0);
        done.push((t1 - t0) as f64 / 1000.0);
        if stalled > 0 {
            break;
        }
    }
    drop(worker.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), worker.wait()).await;
    let _ = worker.start_kill();
    p.close().await;
    r.set("measured", start.len() as f64);
    r.set("stalled", f64::from(stalled));
    r.check(!start.is_empty(), || "no job measured".into());
    for (name, v) in [("start", &mut start), ("done", &mut done)] {
        r.set(&format!("{name}_p50"), child::pct(v, 0.5));
        r.set(&format!("{name}_p99"), child::pct(v, 0.99));
        r.set(&format!("{name}_max"), child::pct(v, 1.0));
    }
    Ok(r)
}

/// D6: an idle worker (8 slots) for the idle time, after 1 s to settle.
async fn d6(ctx: &Ctx, idle: Duration, u: &Urls) -> Res<Report> {
    let mut r = Report::default();
    let me = child::app(ctx, 'w');
    Peer::connect(
        &ctx.side,
        &pg::with_app(&u.direct, &child::app(ctx, 'x')),
        2,
        true,
    )
    .await?
    .close()
    .await;
    let stats = pg::connect(&pg::with_app(&u.direct, &child::app(ctx, 's'))).await?;
    let runner = Runner::start(
        &ctx.side,
        &pg::with_app(&u.proxied, &me),
        LATENCY_SLOTS,
        jobs::ran,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let w = child::open(ctx, &stats).await?;
    tokio::time::sleep(idle).await;
    let secs = child::close(ctx, &stats, &w, &mut r, 1.0).await?;
    let stopped = runner.stop().await;
    r.check(stopped.is_ok(), || format!("{stopped:?}"));
    child::per_second(&mut r, secs);
    Ok(r)
}

/// Prints a body's start (`S <index> <µs since the epoch>`) for D3's
/// enqueuer.
fn stamp(i: u32) {
    println!("S {i} {}", jobs::now_us());
}

/// The worker process of D3 (`--peer-worker SIDE --url URL --slots N`):
/// prints `READY`, then one `S` line per body; stops when stdin closes.
pub fn worker_main(args: &[String]) -> i32 {
    let mut side = String::new();
    let mut url = String::new();
    let mut slots = LATENCY_SLOTS;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--peer-worker" => side = v,
            "--url" => url = v,
            "--slots" => slots = v.parse().unwrap_or(LATENCY_SLOTS),
            other => {
                eprintln!("FAIL peer worker: unknown argument {other}");
                return 2;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(x) => {
            eprintln!("FAIL peer worker: runtime: {x}");
            return 2;
        }
    };
    let r: Res<()> = rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            let _ = tx.send(());
        });
        let runner = Runner::start(&side, &url, slots, stamp).await?;
        println!("READY");
        let _ = rx.await;
        runner.stop().await
    });
    match r {
        Ok(()) => 0,
        Err(x) => {
            eprintln!("FAIL peer worker {side}: {x}");
            1
        }
    }
}
