//! apalis-postgres 1.0.0 (with apalis-core 1.0.0) as a side. Configured as
//! its README's "Pubsub listener" example: `PostgresStorage::setup`, a
//! `Config` with the queue's name and `batch_size(slots)` (rows per fetch),
//! `with_pubsub()` for LISTEN/NOTIFY wake-ups, results and locks at their
//! defaults; bulk inserts with `push_bulk`, single ones with `push`.

use std::time::Duration;

use apalis_core::backend::TaskSink;
use apalis_core::error::BoxDynError;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_postgres::{Config, PgPool, PostgresStorage};
use serde::{Deserialize, Serialize};

use crate::pg::{e, Res};

const QUEUE: &str = "bench";

/// The no-op job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PeerNoop {
    i: u32,
}

fn config(batch: usize) -> Config {
    Config::default().queue(QUEUE).batch_size(batch.max(1))
}

/// A pool of sqlx's default size (10): apalis-postgres re-exports
/// `PgPool` but not sqlx's pool options.
async fn pool(url: &str) -> Res<PgPool> {
    tokio::time::timeout(Duration::from_secs(10), PgPool::connect(url))
        .await
        .map_err(|_| "apalis: connecting: timed out".to_string())?
        .map_err(|x| format!("apalis: connecting: {}", e(x)))
}

/// A producer and progress probe on its own pool.
pub struct Peer {
    pool: PgPool,
    storage: PostgresStorage<PeerNoop>,
    probe: tokio_postgres::Client,
}

impl Peer {
    /// Connects (`max` connections); with `migrate`, creates apalis's schema.
    pub async fn connect(url: &str, migrate: bool) -> Res<Peer> {
        let pool = pool(url).await?;
        if migrate {
            PostgresStorage::setup(&pool)
                .await
                .map_err(|x| format!("apalis: PostgresStorage::setup: {}", e(x)))?;
        }
        let storage = PostgresStorage::new(&pool).with_config(config(10));
        let probe = crate::pg::connect(url).await?;
        Ok(Peer {
            pool,
            storage,
            probe,
        })
    }

    /// Bulk insert of jobs `lo..hi` in one call.
    pub async fn batch(&self, lo: usize, hi: usize) -> Res<()> {
        let mut s = self.storage.clone();
        let jobs = (lo..hi).map(|i| PeerNoop { i: i as u32 }).collect();
        s.push_bulk(jobs)
            .await
            .map_err(|x| format!("apalis: push_bulk: {x}"))
    }

    /// One job, one insert.
    pub async fn one(&self, i: u32) -> Res<()> {
        let mut s = self.storage.clone();
        s.push(PeerNoop { i })
            .await
            .map_err(|x| format!("apalis: push: {x}"))
    }

    /// Jobs done and jobs not done.
    pub async fn counts(&self) -> Res<(i64, i64)> {
        let row = self
            .probe
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'Done'), count(*) FILTER (WHERE status <> 'Done')
                   FROM apalis.jobs WHERE job_type = $1",
                &[&QUEUE],
            )
            .await
            .map_err(|x| format!("apalis: counting: {}", e(x)))?;
        Ok((row.get(0), row.get(1)))
    }

    /// Closes the pool.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// A running apalis worker.
pub struct Runner {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), String>>,
    pool: PgPool,
}

static ON_RUN: std::sync::OnceLock<fn(u32)> = std::sync::OnceLock::new();

async fn handle(job: PeerNoop) -> Result<(), BoxDynError> {
    if let Some(f) = ON_RUN.get() {
        f(job.i);
    }
    Ok(())
}

impl Runner {
    /// Starts a worker fetching `slots` rows at a time; each body calls
    /// `on_run` with the job's index.
    pub async fn start(url: &str, slots: usize, on_run: fn(u32)) -> Res<Runner> {
        let _ = ON_RUN.set(on_run);
        let pool = pool(url).await?;
        let backend = PostgresStorage::<PeerNoop>::new(&pool)
            .with_config(config(slots))
            .with_pubsub();
        let name = format!("bench-{}", std::process::id());
        let worker = WorkerBuilder::new(name.as_str())
            .backend(backend)
            .build(handle);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            worker
                .run_until(async move {
                    let _ = rx.await;
                    Ok::<(), std::io::Error>(())
                })
                .await
                .map_err(|x| format!("apalis: worker: {x}"))
        });
        Ok(Runner {
            stop: tx,
            task,
            pool,
        })
    }

    /// Stops the worker (at most 5 s) and closes its pool; the worker's
    /// error if it failed.
    pub async fn stop(self) -> Res<()> {
        let _ = self.stop.send(());
        let r = match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(x)) => Err(format!("apalis: worker task: {x}")),
            Err(_) => Ok(()),
        };
        self.pool.close().await;
        r
    }
}
