//! underway 0.2.0 as a side. Configured as its docs describe: migrations
//! with `run_migrations`, the lower-level `Task` API (a `Job` of one step
//! is the same task underneath, but only `Queue` has a batch insert,
//! `enqueue_multi`), one `Queue`, and a `Worker` whose concurrency limit is
//! raised from the CPU count to what the pool can carry: underway holds a
//! transaction, so a connection, for every running task.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use underway::task::Result as TaskResult;
use underway::{Queue, Task, Worker};

use crate::pg::{e, Res};

const QUEUE: &str = "bench";

/// Running tasks at once: each holds a connection of the pool (sized
/// `CONCURRENCY + 4` for the listener and the worker's own statements).
pub const CONCURRENCY: usize = 16;

/// The no-op job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerNoop {
    i: u32,
}

/// The task: records that it ran.
#[derive(Clone)]
struct NoopTask {
    on_run: fn(u32),
}

impl Task for NoopTask {
    type Input = PeerNoop;
    type Output = ();

    async fn execute(&self, _tx: Transaction<'_, Postgres>, input: PeerNoop) -> TaskResult<()> {
        (self.on_run)(input.i);
        Ok(())
    }
}

fn nothing(_: u32) {}

async fn pool(url: &str, max: u32) -> Res<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|x| format!("underway: connecting: {}", e(x)))
}

async fn queue(pool: &PgPool) -> Res<Queue<NoopTask>> {
    Queue::builder()
        .name(QUEUE)
        .pool(pool.clone())
        .build()
        .await
        .map_err(|x| format!("underway: Queue::build: {}", e(x)))
}

/// A producer and progress probe on its own pool.
pub struct Peer {
    pool: PgPool,
    queue: Queue<NoopTask>,
}

impl Peer {
    /// Connects (`max` connections); with `migrate`, creates underway's
    /// schema.
    pub async fn connect(url: &str, max: u32, migrate: bool) -> Res<Peer> {
        let pool = pool(url, max).await?;
        if migrate {
            underway::run_migrations(&pool)
                .await
                .map_err(|x| format!("underway: run_migrations: {}", e(x)))?;
        }
        let queue = queue(&pool).await?;
        Ok(Peer { pool, queue })
    }

    /// Bulk insert of jobs `lo..hi` in one call.
    pub async fn batch(&self, lo: usize, hi: usize) -> Res<()> {
        let inputs: Vec<PeerNoop> = (lo..hi).map(|i| PeerNoop { i: i as u32 }).collect();
        let task = NoopTask { on_run: nothing };
        self.queue
            .enqueue_multi(&self.pool, &task, &inputs)
            .await
            .map_err(|x| format!("underway: enqueue_multi: {}", e(x)))?;
        Ok(())
    }

    /// One job, one insert.
    pub async fn one(&self, i: u32) -> Res<()> {
        let task = NoopTask { on_run: nothing };
        self.queue
            .enqueue(&self.pool, &task, &PeerNoop { i })
            .await
            .map_err(|x| format!("underway: enqueue: {}", e(x)))?;
        Ok(())
    }

    /// Tasks succeeded and tasks not succeeded.
    pub async fn counts(&self) -> Res<(i64, i64)> {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state <> 'succeeded')
               FROM underway.task WHERE task_queue_name = $1",
        )
        .bind(QUEUE)
        .fetch_one(&self.pool)
        .await
        .map_err(|x| format!("underway: counting: {}", e(x)))
    }

    /// Closes the pool.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// A running underway worker.
pub struct Runner {
    worker: Worker<NoopTask>,
    task: tokio::task::JoinHandle<Result<(), String>>,
    pool: PgPool,
}

impl Runner {
    /// Starts a worker running at most `min(slots, CONCURRENCY)` tasks at
    /// once; each body calls `on_run` with the job's index.
    pub async fn start(url: &str, slots: usize, on_run: fn(u32)) -> Res<Runner> {
        let limit = slots.min(CONCURRENCY);
        let pool = pool(url, limit as u32 + 4).await?;
        let q = queue(&pool).await?;
        let mut worker = Worker::new(Arc::new(q), NoopTask { on_run });
        worker.set_concurrency_limit(limit);
        let w = worker.clone();
        let task = tokio::spawn(async move {
            w.run()
                .await
                .map_err(|x| format!("underway: worker: {}", e(x)))
        });
        Ok(Runner { worker, task, pool })
    }

    /// Stops the worker (at most 5 s) and closes its pool; the worker's
    /// error if it failed.
    pub async fn stop(self) -> Res<()> {
        self.worker.shutdown();
        let r = match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(x)) => Err(format!("underway: worker task: {x}")),
            Err(_) => Ok(()),
        };
        self.pool.close().await;
        r
    }
}
