//! awa 0.6.9 as a side. Configured as its own benchmark adapter
//! (hardbyte/postgresql-job-queue-benchmarking, by awa's author) and its
//! README do: `migrations::run`, then the vacuum-aware queue storage
//! installed with its defaults (`QueueStorage::install`), bulk inserts with
//! `enqueue_params_copy` (COPY), single inserts with `insert_with`, and a
//! `Client` with one queue of `slots` workers and every other setting at
//! its default (claim batches of up to 512, 200 ms poll beside
//! LISTEN/NOTIFY, batched completions).

use std::time::Duration;

use awa::model::insert::params_with;
use awa::{Client, InsertOpts, JobArgs, JobResult, QueueConfig, QueueStorage, QueueStorageConfig};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::pg::{e, Res};

const QUEUE: &str = "bench";

/// The no-op job.
#[derive(Serialize, Deserialize, JobArgs)]
struct PeerNoop {
    i: u32,
}

fn opts() -> InsertOpts {
    InsertOpts {
        queue: QUEUE.into(),
        ..Default::default()
    }
}

async fn pool(url: &str, max: u32) -> Res<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|x| format!("awa: connecting: {}", e(x)))
}

/// A producer and progress probe on its own pool.
pub struct Peer {
    pool: PgPool,
    store: QueueStorage,
    /// The id of the last job inserted with [`Peer::one`].
    last: std::sync::Mutex<Option<i64>>,
}

impl Peer {
    /// Connects (`max` connections); with `migrate`, creates awa's schema
    /// and installs its queue storage.
    pub async fn connect(url: &str, max: u32, migrate: bool) -> Res<Peer> {
        let pool = pool(url, max).await?;
        let store = QueueStorage::new(QueueStorageConfig::default()).map_err(e)?;
        if migrate {
            awa::migrations::run(&pool)
                .await
                .map_err(|x| format!("awa: migrations::run: {}", e(x)))?;
            store
                .install(&pool)
                .await
                .map_err(|x| format!("awa: QueueStorage::install: {}", e(x)))?;
        }
        Ok(Peer {
            pool,
            store,
            last: std::sync::Mutex::new(None),
        })
    }

    /// Bulk insert of jobs `lo..hi` in one call (COPY).
    pub async fn batch(&self, lo: usize, hi: usize) -> Res<()> {
        let params = (lo..hi)
            .map(|i| params_with(&PeerNoop { i: i as u32 }, opts()).map_err(e))
            .collect::<Res<Vec<_>>>()?;
        self.store
            .enqueue_params_copy(&self.pool, &params)
            .await
            .map_err(|x| format!("awa: enqueue_params_copy: {}", e(x)))?;
        Ok(())
    }

    /// One job, one insert.
    pub async fn one(&self, i: u32) -> Res<()> {
        let row = awa::insert_with(&self.pool, &PeerNoop { i }, opts())
            .await
            .map_err(|x| format!("awa: insert_with: {}", e(x)))?;
        *self.last.lock().unwrap() = Some(row.id);
        Ok(())
    }

    /// Whether the last job inserted with [`Peer::one`] has completed
    /// (`load_job`: `queue_counts` is exact but lags behind receipt-plane
    /// completions here by a second or more).
    pub async fn last_done(&self) -> Res<bool> {
        let Some(id) = *self.last.lock().unwrap() else {
            return Ok(false);
        };
        let job = self
            .store
            .load_job(&self.pool, id)
            .await
            .map_err(|x| format!("awa: load_job: {}", e(x)))?;
        Ok(job.is_some_and(|j| j.state == awa::JobState::Completed))
    }

    /// Jobs finished (any terminal state) and jobs queued or running.
    pub async fn counts(&self) -> Res<(i64, i64)> {
        let c = self
            .store
            .queue_counts(&self.pool, QUEUE)
            .await
            .map_err(|x| format!("awa: queue_counts: {}", e(x)))?;
        Ok((c.terminal, c.available + c.running))
    }

    /// Closes the pool.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// A running awa worker.
pub struct Runner {
    client: Client,
    pool: PgPool,
}

impl Runner {
    /// Starts a client with one queue of `slots` workers; each body calls
    /// `on_run` with the job's index.
    pub async fn start(url: &str, slots: usize, on_run: fn(u32)) -> Res<Runner> {
        // A connection per worker slot is what a client of this size may
        // hold (claims, completions, heartbeats, listener), capped at 20.
        let pool = pool(url, (slots as u32 + 4).min(20)).await?;
        let client = Client::builder(pool.clone())
            .queue(
                QUEUE,
                QueueConfig {
                    max_workers: slots as u32,
                    ..QueueConfig::default()
                },
            )
            .register::<PeerNoop, _, _>(move |job: PeerNoop, _ctx: &awa::JobContext| {
                on_run(job.i);
                async { Ok(JobResult::Completed) }
            })
            .build()
            .map_err(|x| format!("awa: Client::build: {x}"))?;
        client
            .start()
            .await
            .map_err(|x| format!("awa: Client::start: {}", e(x)))?;
        Ok(Runner { client, pool })
    }

    /// Stops the client (at most 5 s) and closes its pool.
    pub async fn stop(self) {
        self.client.shutdown(Duration::from_secs(5)).await;
        self.pool.close().await;
    }
}
