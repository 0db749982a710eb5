//! Durable jobs, end to end.
//!
//! `cargo run -p corral-durable --example durable` runs on `MemoryStore`
//! (no setup). With `DATABASE_URL` set (for example
//! `postgres://postgres@127.0.0.1:5432/test`), it runs the same jobs on
//! PostgreSQL with two worker processes sharing the queue, kills the one
//! running a long job, and shows the job finish on the other.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use corral_durable::{
    Backend, Backoff, CancelOutcome, Client, Ending, Job, JobContext, JobError, JobResult,
    MemoryStore, PgStore, Worker,
};
use serde::{Deserialize, Serialize};

/// Sends a (pretend) invoice; fails on its first attempt.
#[derive(Serialize, Deserialize)]
struct SendInvoice {
    customer: String,
    cents: u64,
}

impl Job for SendInvoice {
    const KIND: &'static str = "send_invoice";
    type Output = String;
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<String, String> {
        if self.cents == 0 {
            return Err(Ending::Permanent("nothing to bill".into()));
        }
        if ctx.attempt() == 1 {
            return Err(Ending::Retry("mail server busy".into()));
        }
        Ok(format!(
            "invoice for {} ({} cents) sent on attempt {}",
            self.customer,
            self.cents,
            ctx.attempt()
        ))
    }
}

/// A long report; prints where it runs, so the demo can kill that process.
#[derive(Serialize, Deserialize)]
struct Report {
    seconds: u64,
}

impl Job for Report {
    const KIND: &'static str = "report";
    /// (process that finished it, attempt)
    type Output = (u32, u32);
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<(u32, u32), String> {
        println!(
            "REPORT-STARTED {} attempt {}",
            std::process::id(),
            ctx.attempt()
        );
        tokio::time::sleep(Duration::from_secs(self.seconds)).await;
        Ok((std::process::id(), ctx.attempt()))
    }
}

fn worker(store: impl Into<Backend>) -> corral_durable::WorkerBuilder {
    Worker::builder(store)
        .register::<SendInvoice>()
        .register::<Report>()
        .queue("default", 4)
        .lease_ttl(Duration::from_secs(2))
}

/// The jobs of the demo, on any store.
async fn invoices(client: &Client) {
    let ok = client
        .enqueue(SendInvoice {
            customer: "ada".into(),
            cents: 4200,
        })
        .retry(3)
        .backoff(Backoff::exponential(Duration::from_millis(50), 2.0))
        .priority(5)
        .submit()
        .await
        .unwrap();
    let empty = client
        .enqueue(SendInvoice {
            customer: "bob".into(),
            cents: 0,
        })
        .retry(3)
        .submit()
        .await
        .unwrap();
    let later = client
        .enqueue(SendInvoice {
            customer: "cy".into(),
            cents: 100,
        })
        .id("invoice-cy")
        .start_at(SystemTime::now() + Duration::from_millis(300))
        .retry(1)
        .submit()
        .await
        .unwrap();
    let never = client
        .enqueue(SendInvoice {
            customer: "dee".into(),
            cents: 1,
        })
        .delay(Duration::from_secs(3600))
        .submit()
        .await
        .unwrap();
    assert_eq!(
        client.cancel(never.id()).await.unwrap(),
        CancelOutcome::Cancelled
    );
    println!("ada:   {:?}", ok.await);
    println!("bob:   {:?}", empty.await);
    // Anyone can subscribe by key, from any process.
    let by_key = client.subscribe::<SendInvoice>("invoice-cy").await.unwrap();
    println!("cy:    {:?}", by_key.await);
    drop(later);
    println!("dee:   {:?}", never.await);
    println!("stats: {:?}", client.stats().await.unwrap());
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let (Some("--worker"), Some(schema)) = (args.get(1).map(String::as_str), args.get(2)) {
        return worker_process(schema).await;
    }
    match std::env::var("DATABASE_URL") {
        Err(_) => memory().await,
        Ok(url) => postgres(&url).await,
    }
}

async fn memory() {
    println!("== MemoryStore (set DATABASE_URL to run on PostgreSQL)");
    let store = MemoryStore::new();
    let w = worker(&store).start().await.unwrap();
    let client = Client::new(&store);
    invoices(&client).await;
    let report = client
        .enqueue(Report { seconds: 0 })
        .submit()
        .await
        .unwrap();
    println!("report: {:?}", report.await);
    w.stop(Duration::from_secs(5)).await;
}

/// A worker process of the PostgreSQL demo: runs until stdin says stop.
async fn worker_process(schema: &str) {
    let url = std::env::var("DATABASE_URL").unwrap();
    let store = PgStore::builder(url)
        .schema(schema)
        .connect()
        .await
        .unwrap();
    let w = worker(&store).start().await.unwrap();
    println!("READY {}", std::process::id());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.await;
    w.stop(Duration::from_secs(5)).await;
}

async fn postgres(url: &str) {
    let schema = format!("corral_example_{}", std::process::id());
    println!("== PostgreSQL, schema {schema}, two worker processes");
    let store = PgStore::builder(url)
        .schema(&schema)
        .connect()
        .await
        .unwrap();
    let client = Client::new(&store);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--worker", &schema])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, pid) = (started_tx.clone(), child.id());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if line.starts_with("REPORT-STARTED") {
                    let _ = tx.send((pid, line));
                }
            }
        });
        workers.push(child);
    }
    invoices(&client).await;

    let report = client
        .enqueue(Report { seconds: 2 })
        .submit()
        .await
        .unwrap();
    let (pid, line) = started_rx.recv().unwrap();
    println!("{line}: killing worker process {pid} (SIGKILL)");
    let victim = workers.iter().position(|c| c.id() == pid).unwrap();
    let mut dead = workers.remove(victim);
    dead.kill().unwrap();
    dead.wait().unwrap();
    match report.await {
        Ok((by, attempt)) => {
            println!("report survived: finished by process {by} on attempt {attempt}")
        }
        Err(JobError::Abandoned { attempts }) => println!("report abandoned after {attempts}"),
        Err(e) => println!("report failed: {e}"),
    }
    for mut w in workers {
        let _ = w.stdin.take().unwrap().write_all(b"stop\n");
        w.wait().unwrap();
    }
    drop(store);
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
