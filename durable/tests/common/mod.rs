//! Test support: a store per test (memory, or PostgreSQL in a schema of its
//! own, dropped at the end), and jobs that record what they did.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use corral_durable::{Backend, Ending, Job, JobContext, JobResult, MemoryStore, PgStore, Worker};
use serde::{Deserialize, Serialize};

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A unique schema name for this test run.
pub fn unique_schema(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag: String = tag.chars().take(16).collect();
    format!(
        "t_{tag}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000
    )
}

fn unreachable(url: &str, e: impl std::fmt::Display) -> ! {
    panic!(
        "PostgreSQL is not reachable at {url} ({e}). These tests need it: start the local \
         server with `pg_ctlcluster --skip-systemctl-redirect 15 main start` (or run `.ci/run`, \
         which starts it), or point DATABASE_URL at one."
    )
}

pub async fn pg_store(schema: &str) -> PgStore {
    let url = database_url();
    match PgStore::builder(&url).schema(schema).connect().await {
        Ok(s) => s,
        Err(e) => unreachable(&url, e),
    }
}

/// A plain connection for checks and cleanup.
pub async fn raw_client() -> tokio_postgres::Client {
    let url = database_url();
    let (client, conn) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => unreachable(&url, e),
    };
    tokio::spawn(conn);
    client
}

pub async fn drop_schema(schema: &str) {
    let c = raw_client().await;
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop test schema");
}

/// One test's store, and a way to make a second, independent connection
/// to the same data (another "process" as far as the store can tell).
#[derive(Clone)]
pub struct Env {
    pub memory: Option<MemoryStore>,
    pub pg: Option<(PgStore, String)>,
}

impl Env {
    pub fn memory() -> Env {
        Env {
            memory: Some(MemoryStore::new()),
            pg: None,
        }
    }

    pub async fn postgres(tag: &str) -> Env {
        let schema = unique_schema(tag);
        let store = pg_store(&schema).await;
        Env {
            memory: None,
            pg: Some((store, schema)),
        }
    }

    pub fn backend(&self) -> Backend {
        match (&self.memory, &self.pg) {
            (Some(m), _) => m.into(),
            (_, Some((p, _))) => p.into(),
            _ => unreachable!(),
        }
    }

    /// A second store instance over the same data (own pool and listener).
    pub async fn other(&self) -> Backend {
        match (&self.memory, &self.pg) {
            (Some(m), _) => m.into(),
            (_, Some((_, schema))) => pg_store(schema).await.into(),
            _ => unreachable!(),
        }
    }

    pub fn is_pg(&self) -> bool {
        self.pg.is_some()
    }

    pub async fn cleanup(self) {
        if let Some((store, schema)) = self.pg {
            drop(store);
            drop_schema(&schema).await;
        }
    }
}

/// Runs a scenario against both stores.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name($crate::common::Env::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let env = $crate::common::Env::postgres(stringify!($name)).await;
                super::$name(env.clone()).await;
                env.cleanup().await;
            }
        }
    )*};
}

/// What jobs recorded, per test tag: `(label, attempt)` in run order.
type Log = Mutex<HashMap<String, Vec<(String, u32)>>>;

pub fn log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(Mutex::default)
}

/// When each recorded run started, per test tag: `(label, attempt, at)`.
type TimedLog = Mutex<HashMap<String, Vec<(String, u32, std::time::Instant)>>>;

fn timed_log() -> &'static TimedLog {
    static LOG: OnceLock<TimedLog> = OnceLock::new();
    LOG.get_or_init(Mutex::default)
}

pub fn record(tag: &str, label: &str, attempt: u32) {
    let at = std::time::Instant::now();
    timed_log()
        .lock()
        .unwrap()
        .entry(tag.to_owned())
        .or_default()
        .push((label.to_owned(), attempt, at));
    log()
        .lock()
        .unwrap()
        .entry(tag.to_owned())
        .or_default()
        .push((label.to_owned(), attempt));
}

/// When the run `(label, attempt)` of `tag` started, as recorded inside the
/// job (not when a poll noticed it).
pub fn started_at(tag: &str, label: &str, attempt: u32) -> Option<std::time::Instant> {
    timed_log()
        .lock()
        .unwrap()
        .get(tag)?
        .iter()
        .find(|(l, a, _)| l == label && *a == attempt)
        .map(|(_, _, at)| *at)
}

pub fn recorded(tag: &str) -> Vec<(String, u32)> {
    log().lock().unwrap().get(tag).cloned().unwrap_or_default()
}

/// A job that records itself and then behaves as `plan` says for its attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub tag: String,
    pub label: String,
    /// What run `n` of this label does: `plan[n - 1]`, or the last entry after that.
    pub plan: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Step {
    Ok,
    Retry,
    Permanent,
    RetryAfterMs(u64),
    SnoozeMs(u64),
    Panic,
    SleepMs(u64),
    /// Succeeds with an output holding a NUL character.
    NulOutput,
}

impl Probe {
    pub fn new(tag: &str, label: &str, plan: Vec<Step>) -> Probe {
        Probe {
            tag: tag.into(),
            label: label.into(),
            plan,
        }
    }
}

impl Job for Probe {
    const KIND: &'static str = "probe";
    type Output = String;
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<String, String> {
        record(&self.tag, &self.label, ctx.attempt());
        // The plan follows runs, not attempts (a snooze gives its attempt back).
        let runs = recorded(&self.tag)
            .iter()
            .filter(|(l, _)| *l == self.label)
            .count();
        let i = runs.saturating_sub(1).min(self.plan.len() - 1);
        let out = format!("{}@{}", self.label, ctx.attempt());
        match &self.plan[i] {
            Step::Ok => Ok(out),
            Step::Retry => Err(Ending::Retry(format!("retry {}", ctx.attempt()))),
            Step::Permanent => Err(Ending::Permanent("permanent".into())),
            Step::RetryAfterMs(ms) => Err(Ending::RetryAfter {
                error: "later".into(),
                delay: Duration::from_millis(*ms),
            }),
            Step::SnoozeMs(ms) => Err(Ending::Snooze(Duration::from_millis(*ms))),
            Step::Panic => panic!("probe panicked"),
            Step::NulOutput => Ok("nul\0".into()),
            Step::SleepMs(ms) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                Ok(out)
            }
        }
    }
}

/// Waits for `f` to be true, polling; panics after `limit` (generous bounds
/// only: a failure means a hang or a loss, not a slow machine).
pub async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The child worker process's protocol, shared by the crash and restart
/// suites: prints `READY <lease>`, runs until a `stop` line (or the end of
/// standard input), stops the worker and prints `STATS <finalized> <lost>
/// <leases_lost>` for the parent.
pub async fn serve_until_stop(worker: Worker) {
    // The leading newline ends the test harness's own "test ... " line.
    println!("\nREADY {}", worker.lease_id());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.trim() == "stop" {
                break;
            }
            line.clear();
        }
        let _ = tx.send(());
    });
    let _ = rx.await;
    worker.stop(Duration::from_secs(10)).await;
    let s = worker.stats();
    println!("STATS {} {} {}", s.finalized, s.lost, s.leases_lost);
}

/// A TCP proxy to the test server that can stop answering, like a server
/// hung (or a network partition that drops packets): connections stay
/// open, and nothing comes back from either side while frozen.
pub struct Proxy {
    /// A database URL through the proxy.
    pub url: String,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let url = database_url();
        let config: tokio_postgres::Config = url.parse().expect("DATABASE_URL parses");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect((host.as_str(), port)).await
                else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pipe(ri, wo, flag.clone()));
                tokio::spawn(pipe(ro, wi, flag.clone()));
            }
        });
        let user = config.get_user().unwrap_or("postgres");
        let db = config.get_dbname().unwrap_or("test");
        Proxy {
            url: format!("postgres://{user}@{local}/{db}"),
            frozen,
        }
    }

    /// Stops (or resumes) forwarding, in both directions.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Held, not dropped: what was sent arrives if the proxy resumes.
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
