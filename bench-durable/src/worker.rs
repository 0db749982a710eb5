//! A worker process (`--worker corral|floor`), started by a child for the
//! workloads that need the worker in another process (D3, D8). It prints
//! `READY` once it serves, and stops when its stdin closes (or is killed).

use std::io::Read;
use std::time::{Duration, Instant};

use corral_durable::{PgStore, Worker};

use crate::child::floor_loop;
use crate::jobs::{self, Noop, Stamp};
use crate::pg::{self, e, Res};

/// What a worker process is told.
#[derive(Debug, Default)]
pub struct Args {
    pub side: String,
    pub url: String,
    pub schema: String,
    pub slots: usize,
    pub ttl: Duration,
    pub app: String,
    pub runs: Option<String>,
}

impl Args {
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let mut a = Args::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut v = || it.next().cloned().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--worker" => a.side = v()?,
                "--url" => a.url = v()?,
                "--schema" => a.schema = v()?,
                "--slots" => a.slots = v()?.parse().map_err(e)?,
                "--ttl-ms" => a.ttl = Duration::from_millis(v()?.parse().map_err(e)?),
                "--app" => a.app = v()?,
                "--runs" => a.runs = Some(v()?),
                other => return Err(format!("unknown worker argument {other}")),
            }
        }
        Ok(a)
    }
}

/// Runs the worker process; returns its exit status.
pub fn main(args: &[String]) -> i32 {
    let a = match Args::parse(args) {
        Ok(a) => a,
        Err(err) => {
            eprintln!("FAIL worker: {err}");
            return 2;
        }
    };
    if let Some(path) = &a.runs {
        if let Err(err) = jobs::log_runs_to(path) {
            eprintln!("FAIL worker: {path}: {err}");
            return 2;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(serve(&a)) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("FAIL worker: {err}");
            1
        }
    }
}

async fn serve(a: &Args) -> Res<()> {
    // Closing stdin is the parent's "stop".
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let url = pg::with_app(&a.url, &a.app);
    if a.side == "corral" {
        let store = PgStore::builder(url)
            .schema(&a.schema)
            .migrate(false)
            .connect()
            .await
            .map_err(e)?;
        let worker = Worker::builder(&store)
            .register::<Noop>()
            .register::<Stamp>()
            .queue("default", a.slots)
            .lease_ttl(a.ttl)
            .start()
            .await
            .map_err(e)?;
        println!("READY");
        let _ = rx.await;
        worker.stop(Duration::from_secs(5)).await;
    } else {
        let (c, mut notes) = pg::connect_listening(&url).await?;
        c.batch_execute(&format!("LISTEN {}", pg::channel(&a.schema)))
            .await
            .map_err(e)?;
        println!("READY");
        let far = Instant::now() + Duration::from_secs(3600);
        let schema = a.schema.clone();
        let slots = a.slots as i64;
        tokio::select! {
            r = floor_loop(&c, &schema, slots, true, None, far, Some(&mut notes)) => { r?; }
            _ = rx => {}
        }
    }
    Ok(())
}
