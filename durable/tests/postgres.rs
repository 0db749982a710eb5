//! PostgreSQL-only behaviour: migrations, poll-only mode, submits in the
//! caller's transaction, the database down at submit.

mod common;

use std::time::Duration;

use common::{database_url, drop_schema, pg_store, raw_client, unique_schema, Probe, Step};
use corral_durable::{
    Client, CompleteError, Ending, Job, JobContext, JobError, JobResult, PgStore, SubmitError,
    Worker,
};
use serde::{Deserialize, Serialize};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_sql_applies_and_migrating_again_is_a_no_op() {
    let schema = unique_schema("export");
    let sql = PgStore::migration_sql(&schema);
    assert!(sql.contains(&format!("CREATE TABLE {schema}.jobs")));
    raw_client().await.batch_execute(&sql).await.unwrap();
    // A store that does not migrate works on the exported schema...
    let store = PgStore::builder(database_url())
        .schema(&schema)
        .migrate(false)
        .connect()
        .await
        .unwrap();
    let client = Client::new(&store);
    let h = client
        .enqueue(Probe::new("export", "x", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    assert!(h.id().get() >= 1);
    // ...and one that migrates finds nothing to do, twice at once.
    let (a, b) = tokio::join!(pg_store(&schema), pg_store(&schema));
    drop((a, b));
    let versions = raw_client()
        .await
        .query_one(&format!("SELECT count(*) FROM {schema}.migrations"), &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(versions, 3);
    drop(store);
    drop_schema(&schema).await;
}

/// A worker refuses to start on a schema missing a migration of its build
/// (its claims would fail forever), saying which; jobs submitted meanwhile
/// run once the schema is migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_does_not_start_on_a_schema_behind_its_build() {
    let schema = unique_schema("behind");
    let sql = PgStore::migration_sql(&schema);
    let needed = sql.matches("\n-- migration ").count() as i32;
    let unmigrated = |found: i32| {
        let schema = schema.clone();
        move |r: Result<Worker, corral_durable::WorkerError>| match r {
            Err(corral_durable::WorkerError::Store(
                e @ corral_durable::StoreError::SchemaBehind { .. },
            )) => {
                let text = e.to_string();
                assert!(
                    matches!(&e, corral_durable::StoreError::SchemaBehind { schema: s, found: f, needed: n }
                        if *s == schema && *f == found && *n == needed),
                    "{e:?}"
                );
                assert!(text.contains("migration_sql"), "{text}");
            }
            Err(other) => panic!("expected SchemaBehind, got {other}"),
            Ok(_) => panic!("a worker started on a schema behind its build"),
        }
    };
    let store = PgStore::builder(database_url())
        .schema(&schema)
        .migrate(false)
        .connect()
        .await
        .unwrap();
    let start = || {
        Worker::builder(&store)
            .register::<Probe>()
            .queue("default", 1)
            .start()
    };
    // No schema at all.
    unmigrated(0)(start().await);
    // Every migration but the last, as a team's own tooling applied it.
    let older = &sql[..sql.rfind("\n-- migration ").unwrap()];
    raw_client().await.batch_execute(older).await.unwrap();
    let h = Client::new(&store)
        .enqueue(Probe::new("behind", "b", vec![Step::Ok]))
        .submit()
        .await
        .expect("a submit works on the older schema");
    unmigrated(needed - 1)(start().await);
    // Migrated: the job submitted meanwhile runs.
    drop(pg_store(&schema).await);
    let w = start().await.expect("starts on the migrated schema");
    let out = tokio::time::timeout(LONG, h).await.expect("hung");
    assert_eq!(out, Ok("b@1".to_owned()));
    w.stop(LONG).await;
    drop(store);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_only_mode_runs_jobs_without_listen() {
    let schema = unique_schema("poll");
    drop(pg_store(&schema).await);
    let store = PgStore::builder(database_url())
        .schema(&schema)
        .poll_only(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let w = Worker::builder(&store)
        .register::<Probe>()
        .queue("default", 2)
        .start()
        .await
        .unwrap();
    let client = Client::new(&store);
    let h = client
        .enqueue(Probe::new("poll", "p", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    let out = tokio::time::timeout(LONG, h).await.expect("hung").unwrap();
    assert_eq!(out, "p@1");
    // No LISTEN connection for this schema, though a listener would have
    // connected long ago (a store that listens shows one: the check can
    // see it).
    let db = raw_client().await;
    let listeners = || async {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            &[&format!("corral-durable:{schema}")],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert_eq!(listeners().await, 0);
    w.stop(LONG).await;
    drop(store);
    let listening = pg_store(&schema).await;
    let end = std::time::Instant::now() + LONG;
    while listeners().await == 0 {
        assert!(std::time::Instant::now() < end, "a listener never showed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(listening);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_in_the_callers_transaction() {
    let schema = unique_schema("tx");
    let store = pg_store(&schema).await;
    let client = Client::new(&store);
    let mut conn = raw_client().await;
    let tx = conn.transaction().await.unwrap();
    let rolled_back = client
        .enqueue(Probe::new("tx", "r", vec![Step::Ok]))
        .submit_in(&tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let committed = client
        .enqueue(Probe::new("tx", "c", vec![Step::Ok]))
        .submit_in(&tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let stats = client.stats().await.unwrap();
    assert_eq!(
        stats["default"].available, 1,
        "only the committed job exists"
    );
    let w = Worker::builder(&store)
        .register::<Probe>()
        .queue("default", 1)
        .start()
        .await
        .unwrap();
    let out = tokio::time::timeout(LONG, committed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, "c@1");
    assert!(client.subscribe::<Probe>(rolled_back.id()).await.is_err());
    w.stop(LONG).await;
    // On a memory store, a transaction submit is a typed error.
    let memory = Client::new(corral_durable::MemoryStore::new());
    let tx = conn.transaction().await.unwrap();
    let r = memory
        .enqueue(Probe::new("tx", "m", vec![Step::Ok]))
        .submit_in(&tx)
        .await;
    assert!(matches!(r, Err(SubmitError::InvalidOption { .. })), "{r:?}");
    drop(store);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_submit_is_a_typed_error() {
    // Nothing listens on port 1: the store starts (no migration asked), and
    // every operation reports the store error instead of hanging or panicking.
    let store = PgStore::builder("postgres://postgres@127.0.0.1:1/test?connect_timeout=2")
        .migrate(false)
        .connect()
        .await
        .unwrap();
    let client = Client::new(&store);
    let r = client
        .enqueue(Probe::new("down", "d", vec![Step::Ok]))
        .submit()
        .await;
    assert!(matches!(r, Err(SubmitError::Store(_))), "{r:?}");
    assert!(client.stats().await.is_err());
    assert!(client.cancel("anything").await.is_err());
}

/// Records a payment and its own completion in one transaction; the first
/// attempt rolls back and fails, when asked to.
#[derive(Serialize, Deserialize)]
struct Pay {
    schema: String,
    cents: i64,
    fail_first: bool,
}

impl Job for Pay {
    const KIND: &'static str = "pay";
    type Output = i64;
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<i64, String> {
        let e = |e: tokio_postgres::Error| Ending::Retry(e.to_string());
        let mut db = raw_client().await;
        let tx = db.transaction().await.map_err(e)?;
        tx.execute(
            &format!(
                "INSERT INTO {}.payments (key, cents) VALUES ($1, $2)",
                self.schema
            ),
            &[&ctx.idempotency_key(), &self.cents],
        )
        .await
        .map_err(e)?;
        ctx.complete_in(&tx, &self.cents)
            .await
            .map_err(|e: CompleteError| Ending::Retry(e.to_string()))?;
        if self.fail_first && ctx.attempt() == 1 {
            tx.rollback().await.map_err(e)?;
            return Err(Ending::Retry("rolled back".into()));
        }
        tx.commit().await.map_err(e)?;
        Ok(self.cents)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_commits_its_writes_with_its_completion() {
    let schema = unique_schema("pay");
    let store = pg_store(&schema).await;
    raw_client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {schema}.payments (key text PRIMARY KEY, cents bigint NOT NULL)"
        ))
        .await
        .unwrap();
    let w = Worker::builder(&store)
        .register::<Pay>()
        .queue("default", 2)
        .start()
        .await
        .unwrap();
    let client = Client::new(&store);
    let once = client
        .enqueue(Pay {
            schema: schema.clone(),
            cents: 100,
            fail_first: false,
        })
        .submit()
        .await
        .unwrap();
    let twice = client
        .enqueue(Pay {
            schema: schema.clone(),
            cents: 200,
            fail_first: true,
        })
        .retry(1)
        .submit()
        .await
        .unwrap();
    let (once_id, twice_id) = (once.id(), twice.id());
    assert_eq!(tokio::time::timeout(LONG, once).await.unwrap(), Ok(100));
    assert_eq!(tokio::time::timeout(LONG, twice).await.unwrap(), Ok(200));
    // Exactly the committed attempts' writes exist: the rolled-back attempt
    // left neither its payment nor its completion.
    let rows = raw_client()
        .await
        .query(
            &format!("SELECT key FROM {schema}.payments ORDER BY key"),
            &[],
        )
        .await
        .unwrap();
    let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, [format!("{once_id}:1"), format!("{twice_id}:2")]);
    w.stop(LONG).await;
    let stats = w.stats();
    assert_eq!((stats.finalized, stats.lost), (3, 0), "{stats:?}");
    drop(store);
    drop_schema(&schema).await;
}

/// A claim made with a lease that expired comes back empty; once the
/// heartbeat registers a new lease the claim loop must look again at once,
/// not at the fallback poll (5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_lease_wakes_the_claim_loops() {
    let schema = unique_schema("release");
    let store = pg_store(&schema).await;
    let w = Worker::builder(&store)
        .register::<Probe>()
        .queue("default", 2)
        .lease_ttl(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let client = Client::new(&store);
    // Let the first heartbeat (sent at start) pass; the next is half a TTL
    // period (500 ms) later.
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The worker is idle: expire its lease, then submit at once, so that the
    // notice's claim runs with the dead lease (the next heartbeat is up to
    // about 350 ms away).
    raw_client()
        .await
        .execute(
            &format!("UPDATE {schema}.workers SET expires_at = now() - interval '1 millisecond' WHERE id = $1"),
            &[&w.lease_id()],
        )
        .await
        .unwrap();
    let h = client
        .enqueue(Probe::new("release", "r", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    // Bound only against a hang: the fallback poll is 5 minutes away.
    let out = tokio::time::timeout(Duration::from_secs(20), h)
        .await
        .expect("the job waited for the fallback poll: the new lease woke no claim loop")
        .unwrap();
    assert_eq!(out, "r@1");
    assert_eq!(w.stats().leases_lost, 1);
    w.stop(LONG).await;
    drop(store);
    drop_schema(&schema).await;
}

/// A row written by SQL with a jitter ratio the client never allows (NaN)
/// neither panics the attempt nor wedges the worker; the CHECK of migration
/// 2 refuses such rows from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stored_jitter_does_not_wedge_the_worker() {
    let schema = unique_schema("jitter");
    let store = pg_store(&schema).await;
    let db = raw_client().await;
    let args =
        serde_json::to_string(&Probe::new("jitter", "j", vec![Step::Retry, Step::Ok])).unwrap();
    let insert = format!(
        "INSERT INTO {schema}.jobs (queue, kind, args, max_attempts, backoff, jitter)
         VALUES ('default', 'probe', '{args}'::jsonb, 2, '{{\"fixed\":{{\"secs\":0,\"nanos\":10000000}}}}', 'NaN')
         RETURNING id"
    );
    let refused = db.query_one(&insert, &[]).await.unwrap_err();
    let refused = format!("{refused:?}");
    assert!(refused.contains("jobs_jitter_ratio"), "{refused}");
    // Bypass the CHECK, as a row written before it would.
    db.batch_execute(&format!(
        "ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_jitter_ratio"
    ))
    .await
    .unwrap();
    let id: i64 = db.query_one(&insert, &[]).await.unwrap().get(0);
    let w = Worker::builder(&store)
        .register::<Probe>()
        .queue("default", 1)
        .start()
        .await
        .unwrap();
    let client = Client::new(&store);
    let h = client
        .subscribe::<Probe>(corral_durable::JobId(id))
        .await
        .unwrap();
    let out = tokio::time::timeout(LONG, h)
        .await
        .expect("the worker is wedged")
        .unwrap();
    assert_eq!(out, "j@2");
    w.stop(LONG).await;
    drop(store);
    drop_schema(&schema).await;
}

/// Its first attempt loses the lease (expired by hand) just before it
/// completes in its own transaction, and returns its output anyway.
#[derive(Serialize, Deserialize)]
struct LosesLease {
    schema: String,
}

impl Job for LosesLease {
    const KIND: &'static str = "loses_lease";
    type Output = u32;
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<u32, String> {
        let e = |e: tokio_postgres::Error| Ending::Retry(e.to_string());
        let mut db = raw_client().await;
        if ctx.attempt() == 1 {
            db.batch_execute(&format!(
                "UPDATE {}.workers SET expires_at = now() - interval '1 millisecond'",
                self.schema
            ))
            .await
            .map_err(e)?;
        }
        let tx = db.transaction().await.map_err(e)?;
        match ctx.complete_in(&tx, &ctx.attempt()).await {
            Ok(()) => tx.commit().await.map_err(e)?,
            Err(CompleteError::LeaseLost) => tx.rollback().await.map_err(e)?,
            Err(other) => return Err(Ending::Permanent(other.to_string())),
        }
        Ok(ctx.attempt())
    }
}

/// A completion in the body refused for a lost lease is a lost job, not a
/// finalized one: the worker counts (and logs) it as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_completion_in_the_body_counts_as_lost() {
    let schema = unique_schema("inbodylost");
    let store = pg_store(&schema).await;
    let w = Worker::builder(&store)
        .register::<LosesLease>()
        .queue("default", 1)
        .lease_ttl(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let client = Client::new(&store);
    let h = client
        .enqueue(LosesLease {
            schema: schema.clone(),
        })
        .submit()
        .await
        .unwrap();
    // The rescued job runs again under the worker's new lease.
    assert_eq!(tokio::time::timeout(LONG, h).await.expect("hung"), Ok(2));
    w.stop(LONG).await;
    let stats = w.stats();
    assert_eq!((stats.finalized, stats.lost), (1, 1), "{stats:?}");
    drop(store);
    drop_schema(&schema).await;
}

/// An outcome `on_complete` saw, with the schema of the test that ran it.
type Seen = (String, Result<u32, JobError<String>>);
static SEEN: std::sync::Mutex<Vec<Seen>> = std::sync::Mutex::new(Vec::new());

/// Its first attempt completes in its own transaction, then loses the lease
/// (expired by hand) and rolls that transaction back: the completion never
/// happened, and the rescued job runs again.
#[derive(Serialize, Deserialize)]
struct RollsBackAfterLoss {
    schema: String,
}

impl Job for RollsBackAfterLoss {
    const KIND: &'static str = "rolls_back_after_loss";
    type Output = u32;
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<u32, String> {
        let e = |e: tokio_postgres::Error| Ending::Retry(e.to_string());
        let mut db = raw_client().await;
        let tx = db.transaction().await.map_err(e)?;
        ctx.complete_in(&tx, &ctx.attempt())
            .await
            .map_err(|e| Ending::Permanent(e.to_string()))?;
        if ctx.attempt() == 1 {
            raw_client()
                .await
                .batch_execute(&format!(
                    "UPDATE {}.workers SET expires_at = now() - interval '1 millisecond'",
                    self.schema
                ))
                .await
                .map_err(e)?;
            tx.rollback().await.map_err(e)?;
        } else {
            tx.commit().await.map_err(e)?;
        }
        Ok(ctx.attempt())
    }

    fn on_complete(&self, _id: corral_durable::JobId, outcome: &Result<u32, JobError<String>>) {
        SEEN.lock()
            .unwrap()
            .push((self.schema.clone(), outcome.clone()));
    }
}

/// A completion applied in the body whose transaction then rolls back, the
/// lease lost meanwhile, is a lost job: the worker neither counts it as
/// finalized nor runs the job's hooks with an outcome that was never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_in_the_body_rolled_back_after_the_lease_is_lost_counts_as_lost() {
    let schema = unique_schema("inbodyrollback");
    let store = pg_store(&schema).await;
    let w = Worker::builder(&store)
        .register::<RollsBackAfterLoss>()
        .queue("default", 1)
        .lease_ttl(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    let h = Client::new(&store)
        .enqueue(RollsBackAfterLoss {
            schema: schema.clone(),
        })
        .submit()
        .await
        .unwrap();
    assert_eq!(tokio::time::timeout(LONG, h).await.expect("hung"), Ok(2));
    w.stop(LONG).await;
    let stats = w.stats();
    assert_eq!((stats.finalized, stats.lost), (1, 1), "{stats:?}");
    let seen: Vec<_> = SEEN
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| *s == schema)
        .map(|(_, outcome)| outcome.clone())
        .collect();
    assert_eq!(seen, [Ok(2)]);
    drop(store);
    drop_schema(&schema).await;
}

/// A worker's stop returns within its bounds while the database hangs
/// (connections open, nothing answered): nothing it waits on is a query
/// without an end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_while_the_database_hangs() {
    let schema = unique_schema("hung");
    drop(pg_store(&schema).await);
    let proxy = common::Proxy::start().await;
    let store = PgStore::builder(&proxy.url)
        .schema(&schema)
        .connect()
        .await
        .unwrap();
    let w = Worker::builder(&store)
        .register::<Probe>()
        .queue("default", 2)
        .start()
        .await
        .unwrap();
    let client = Client::new(&store);
    let h = client
        .enqueue(Probe::new("hung", "a", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(LONG, h).await.expect("hung"),
        Ok("a@1".to_owned())
    );
    // One attempt running when the server stops answering.
    let running = client
        .enqueue(Probe::new("hung", "b", vec![Step::SleepMs(600_000)]))
        .submit()
        .await
        .unwrap();
    drop(running);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.freeze(true);
    // Its bounds are a few times `timeout` (attempts, results, retire);
    // a minute is only there to fail rather than hang.
    tokio::time::timeout(Duration::from_secs(60), w.stop(Duration::from_secs(1)))
        .await
        .expect("stop hung with the database");
    proxy.freeze(false);
    drop(store);
    drop_schema(&schema).await;
}

/// Client load that holds every connection of the store's pool (here
/// cancels waiting on a row lock) does not starve the worker's heartbeats:
/// they have connections of their own, and the lease stays alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_load_cannot_starve_heartbeats() {
    let schema = unique_schema("starve");
    drop(pg_store(&schema).await);
    let store = PgStore::builder(database_url())
        .schema(&schema)
        .pool_size(2)
        .connect()
        .await
        .unwrap();
    let client = Client::new(&store);
    let h = client
        .enqueue(Probe::new("starve", "s", vec![Step::Ok]))
        .queue("nobody")
        .submit()
        .await
        .unwrap();
    let w = Worker::builder(&store)
        .register::<Probe>()
        .queue("default", 1)
        .lease_ttl(Duration::from_millis(1500))
        .start()
        .await
        .unwrap();
    // Lock the row, so that cancels wait holding the pool's connections.
    let mut db = raw_client().await;
    let tx = db.transaction().await.unwrap();
    tx.execute(
        &format!("SELECT 1 FROM {schema}.jobs WHERE id = $1 FOR UPDATE"),
        &[&h.id().get()],
    )
    .await
    .unwrap();
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let (client, id) = (client.clone(), h.id());
            tokio::spawn(async move { client.cancel(id).await })
        })
        .collect();
    // Well past the TTL: without heartbeats the lease would be lost.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let alive: bool = raw_client()
        .await
        .query_one(
            &format!("SELECT expires_at > now() FROM {schema}.workers WHERE id = $1"),
            &[&w.lease_id()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(alive, "heartbeats were starved: the lease expired");
    assert_eq!(w.stats().leases_lost, 0);
    tx.rollback().await.unwrap();
    for b in blocked {
        b.await.unwrap().unwrap();
    }
    w.stop(LONG).await;
    drop(store);
    drop_schema(&schema).await;
}

/// A listener whose connection drops as soon as it is up (here terminated
/// each time it shows) reconnects with backoff, not in a tight loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_dropped_at_once_backs_off() {
    let schema = unique_schema("flap");
    let store = pg_store(&schema).await;
    let db = raw_client().await;
    let mut terminated = 0;
    let end = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < end {
        let row = db
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                &[&format!("corral-durable:{schema}")],
            )
            .await
            .unwrap();
        terminated += row.get::<_, i64>(0);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Backoff 50, 100, 200, 400, 800 ms: a handful of reconnects in 1.5 s
    // (a tight loop makes one every few milliseconds).
    assert!(terminated >= 1, "the listener never connected");
    assert!(terminated <= 12, "{terminated} reconnects in 1.5 s");
    drop(store);
    drop_schema(&schema).await;
}

/// A batch whose rows share every option (one statement with the options
/// sent once) keeps each row's key and arguments, the input's order in the
/// ids it returns, and the shared options on every row; a batch that mixes
/// options still goes through the per-row statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uniform_batch_keeps_order_keys_and_options() {
    let schema = unique_schema("uniform");
    let store = pg_store(&schema).await;
    let client = Client::new(&store);
    let probe = |i: usize| Probe::new("uniform", &format!("u{i}"), vec![Step::Ok]);
    let jobs = (0..300)
        .map(|i| {
            client
                .enqueue(probe(i))
                .id(format!("key-{i}"))
                .queue("uq")
                .priority(7)
                .retry(2)
                .delay(Duration::from_secs(3600))
        })
        .collect();
    let handles = client.submit_batch(jobs).await.unwrap();
    assert_eq!(handles.len(), 300);
    let rows = raw_client()
        .await
        .query(
            &format!(
                "SELECT id, key, args->>'label', queue, priority, max_attempts, state
                   FROM {schema}.jobs ORDER BY id"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 300);
    for (i, (h, row)) in handles.iter().zip(&rows).enumerate() {
        assert_eq!(h.id().get(), row.get::<_, i64>(0), "the ids in input order");
        assert_eq!(row.get::<_, String>(1), format!("key-{i}"));
        assert_eq!(row.get::<_, String>(2), format!("u{i}"));
        assert_eq!(row.get::<_, String>(3), "uq");
        assert_eq!(row.get::<_, i32>(4), 7);
        assert_eq!(row.get::<_, i32>(5), 3);
        assert_eq!(row.get::<_, String>(6), "scheduled");
    }
    // A live key in a uniform batch fails the whole batch, naming it.
    let again = vec![
        client.enqueue(probe(1000)).id("key-new"),
        client.enqueue(probe(1001)).id("key-5"),
    ];
    assert!(
        matches!(client.submit_batch(again).await, Err(SubmitError::DuplicateId(ref k)) if k == "key-5"),
        "a live key is refused"
    );
    // Mixed options: each row keeps its own.
    let mixed = vec![
        client.enqueue(probe(2000)).priority(1),
        client.enqueue(probe(2001)).priority(2),
    ];
    let ids: Vec<i64> = client
        .submit_batch(mixed)
        .await
        .unwrap()
        .iter()
        .map(|h| h.id().get())
        .collect();
    let priorities: Vec<i32> = raw_client()
        .await
        .query(
            &format!("SELECT priority FROM {schema}.jobs WHERE id = ANY($1) ORDER BY id"),
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(priorities, vec![1, 2]);
    assert_eq!(
        client.stats().await.unwrap()["uq"].scheduled,
        300,
        "nothing of the refused batch was inserted"
    );
    drop(store);
    drop_schema(&schema).await;
}

/// JSON nested deeper than PostgreSQL's `jsonb` accepts (refused with
/// SQLSTATE 54001, not a class 22 data error).
fn too_deep() -> Box<serde_json::value::RawValue> {
    const DEPTH: usize = 100_000;
    let text = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    serde_json::value::RawValue::from_string(text).unwrap()
}

/// What the hooks of `Deep` and `DeepRetry` saw: the job's kind, the hook,
/// and the outcome's error (empty for a success).
static DEEP_HOOKS: std::sync::Mutex<Vec<(&str, &str, String)>> = std::sync::Mutex::new(Vec::new());

fn deep_hook<E>(kind: &'static str, hook: &'static str, error: Option<&JobError<E>>) {
    let error = match error {
        Some(JobError::Undecodable { message }) => format!("undecodable: {message}"),
        Some(_) => "another error".to_owned(),
        None => String::new(),
    };
    DEEP_HOOKS.lock().unwrap().push((kind, hook, error));
}

/// Its output is too deep for `jsonb`.
#[derive(Serialize, Deserialize)]
struct Deep;

impl Job for Deep {
    const KIND: &'static str = "deep";
    type Output = Box<serde_json::value::RawValue>;
    type Error = ();

    async fn run(&self, _ctx: JobContext) -> JobResult<Self::Output, ()> {
        Ok(too_deep())
    }

    fn on_complete(
        &self,
        _id: corral_durable::JobId,
        outcome: &Result<Self::Output, JobError<()>>,
    ) {
        deep_hook(Self::KIND, "on_complete", outcome.as_ref().err());
    }

    fn on_failure(&self, _id: corral_durable::JobId, error: &JobError<()>) {
        deep_hook(Self::KIND, "on_failure", Some(error));
    }
}

/// JSON arrays nested `.0` deep, serialized as such (not parsed from text:
/// the stored error is built as a `serde_json::Value`, whose parser stops
/// at depth 128). Deserialized as anything at all.
#[derive(Debug)]
struct Nested(usize);

impl Serialize for Nested {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        if self.0 == 0 {
            return s.serialize_unit();
        }
        let mut seq = s.serialize_seq(Some(1))?;
        seq.serialize_element(&Nested(self.0 - 1))?;
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Nested {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Nested(0))
    }
}

/// It fails, to be retried, with an error too deep for `jsonb` (deeper
/// than PostgreSQL's stack allows at its default `max_stack_depth`).
#[derive(Serialize, Deserialize)]
struct DeepRetry;

impl Job for DeepRetry {
    const KIND: &'static str = "deep_retry";
    type Output = ();
    type Error = Nested;

    async fn run(&self, _ctx: JobContext) -> JobResult<(), Self::Error> {
        Err(Ending::Retry(Nested(100_000)))
    }

    fn on_complete(&self, _id: corral_durable::JobId, outcome: &Result<(), JobError<Self::Error>>) {
        deep_hook(Self::KIND, "on_complete", outcome.as_ref().err());
    }

    fn on_failure(&self, _id: corral_durable::JobId, error: &JobError<Self::Error>) {
        deep_hook(Self::KIND, "on_failure", Some(error));
    }
}

/// A result the database refuses for its data with an error outside class
/// 22 does not wedge the finalizer: the job fails saying why, its hooks see
/// that failure (not the result that was never stored), and the jobs
/// finished with it complete.
#[test]
fn a_result_too_deep_for_jsonb_fails_alone() {
    // Serializing `DeepRetry`'s error recurses once per level.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(256 << 20)
        .enable_all()
        .build()
        .unwrap()
        .block_on(too_deep_for_jsonb());
}

async fn too_deep_for_jsonb() {
    let schema = unique_schema("deep");
    let store = pg_store(&schema).await;
    let w = Worker::builder(&store)
        .register::<Deep>()
        .register::<DeepRetry>()
        .register::<Probe>()
        .queue("default", 4)
        .start()
        .await
        .unwrap();
    let client = Client::new(&store);
    let deep = client.enqueue(Deep).submit().await.unwrap();
    let deep_retry = client.enqueue(DeepRetry).retry(3).submit().await.unwrap();
    let mut others = Vec::new();
    for i in 0..5 {
        let label = format!("ok{i}");
        let probe = Probe::new("deep", &label, vec![Step::Ok]);
        others.push((label, client.enqueue(probe).submit().await.unwrap()));
    }
    match tokio::time::timeout(LONG, deep)
        .await
        .expect("the finalizer is wedged")
    {
        Err(JobError::Undecodable { message }) => {
            assert!(message.contains("could not be stored"), "{message}");
            assert!(message.contains("SQLSTATE 54001"), "{message}");
        }
        other => panic!("expected a failure saying why, got {other:?}"),
    }
    // The retry whose error cannot be stored fails for good at once.
    match tokio::time::timeout(LONG, deep_retry).await.expect("hung") {
        Err(JobError::Undecodable { message }) => {
            assert!(message.contains("SQLSTATE 54001"), "{message}");
        }
        other => panic!("expected a failure saying why, got {other:?}"),
    }
    for (label, h) in others {
        let out = tokio::time::timeout(LONG, h).await.expect("hung");
        assert_eq!(out, Ok(format!("{label}@1")));
    }
    w.stop(LONG).await;
    let mut hooks = DEEP_HOOKS.lock().unwrap().clone();
    hooks.sort();
    let seen: Vec<_> = hooks
        .iter()
        .map(|(kind, hook, error)| {
            assert!(
                error.starts_with("undecodable: the result could not be stored"),
                "{kind} {hook}: {error}"
            );
            (*kind, *hook)
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("deep", "on_complete"),
            ("deep", "on_failure"),
            ("deep_retry", "on_complete"),
            ("deep_retry", "on_failure"),
        ]
    );
    drop(store);
    drop_schema(&schema).await;
}

/// A server error reaches the user (and the logs) with the server's own
/// message and SQLSTATE, not only the driver's "db error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_show_the_server_message_and_sqlstate() {
    let schema = unique_schema("errtext");
    let store = pg_store(&schema).await;
    // The jobs table goes behind the store's back: the insert fails on the
    // server with "relation ... does not exist" (SQLSTATE 42P01).
    raw_client()
        .await
        .batch_execute(&format!("DROP TABLE {schema}.jobs"))
        .await
        .unwrap();
    let err = Client::new(&store)
        .enqueue(Probe::new("errtext", "x", vec![Step::Ok]))
        .submit()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("does not exist") && text.contains("42P01"),
        "{text}"
    );
    drop(store);
    drop_schema(&schema).await;
}

/// Submits two jobs of `tag` ("locked" and "free"), makes both due in
/// `state` by hand, and locks the first from another session's open
/// transaction (as an application's `SELECT ... FOR UPDATE` would). The
/// transaction is returned: committing it ends the lock.
async fn lock_one_of_two(
    schema: &str,
    client: &Client,
    tag: &str,
    state: &str,
) -> (
    corral_durable::JobHandle<Probe>,
    corral_durable::JobHandle<Probe>,
    tokio_postgres::Client,
) {
    let submit = |label: &'static str| {
        client
            .enqueue(Probe::new(tag, label, vec![Step::Ok]))
            .delay(Duration::from_secs(3600))
            .submit()
    };
    let (locked, free) = (
        submit("locked").await.unwrap(),
        submit("free").await.unwrap(),
    );
    // Due now, in `state`, without an insert's notice.
    let holder = raw_client().await;
    holder
        .execute(
            &format!("UPDATE {schema}.jobs SET run_at = now() - interval '1 second', state = $1"),
            &[&state],
        )
        .await
        .unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM {schema}.jobs WHERE id = {} FOR UPDATE",
            locked.id().get()
        ))
        .await
        .unwrap();
    (locked, free, holder)
}

/// Two due rows in `state`, one held locked by another session: the free
/// one runs (so the stage or claim that passed over the locked one is
/// over), then, once the lock goes, the locked one runs too, though no
/// notice tells the worker (`stuck` says what it would have stayed).
async fn locked_row_runs_once_unlocked(tag: &'static str, state: &str, stuck: &str) {
    let schema = unique_schema(tag);
    let store = pg_store(&schema).await;
    let client = Client::new(&store);
    let (locked, free, holder) = lock_one_of_two(&schema, &client, tag, state).await;
    let w = Worker::builder(&store)
        .register::<Probe>()
        .queue("default", 2)
        .start()
        .await
        .unwrap();
    let out = tokio::time::timeout(LONG, free)
        .await
        .expect("hung")
        .unwrap();
    assert_eq!(out, "free@1");
    holder.batch_execute("COMMIT").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), locked)
        .await
        .expect(stuck)
        .unwrap();
    assert_eq!(out, "locked@1");
    w.stop(Duration::from_secs(5)).await;
    drop(store);
    drop_schema(&schema).await;
}

/// A due scheduled row held locked when the leader stages is passed over
/// (`SKIP LOCKED`); once the lock goes it still starts, though no notice
/// tells the leader (it stages again after a backoff while such rows
/// remain, instead of sleeping until the next insert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_row_locked_at_staging_starts_once_unlocked() {
    locked_row_runs_once_unlocked(
        "lockstage",
        "scheduled",
        "the row locked at staging stayed scheduled",
    )
    .await;
}

/// An available row held locked when a claim runs is passed over (`SKIP
/// LOCKED`); once the lock goes an idle worker still claims it, though no
/// notice comes (it claims again after a backoff while such rows remain,
/// instead of waiting for the next notice or the fallback poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_available_row_locked_at_claim_runs_once_unlocked() {
    locked_row_runs_once_unlocked(
        "lockclaim",
        "available",
        "the row locked at claim stayed available with the worker idle",
    )
    .await;
}

/// Permits for `Gated` bodies to end.
fn gate() -> &'static tokio::sync::Semaphore {
    static GATE: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    GATE.get_or_init(|| tokio::sync::Semaphore::new(0))
}

/// A job that records its start, then waits for a permit of `gate()`.
#[derive(Serialize, Deserialize)]
struct Gated {
    tag: String,
}

impl Job for Gated {
    const KIND: &'static str = "gated";
    type Output = ();
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<(), String> {
        common::record(&self.tag, "started", ctx.attempt());
        gate().acquire().await.unwrap().forget();
        common::record(&self.tag, "ended", ctx.attempt());
        Ok(())
    }
}

/// A running row held locked by another session (`FOR SHARE` in an open
/// transaction) when its result is written does not hold up the worker's
/// later results: its write is tried again after a backoff, and the rows
/// finished after it are written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_running_row_does_not_hold_up_later_results() {
    let tag = "lockfinish";
    let schema = unique_schema(tag);
    let store = pg_store(&schema).await;
    let client = Client::new(&store);
    let w = Worker::builder(&store)
        .register::<Gated>()
        .register::<Probe>()
        .queue("default", 2)
        .start()
        .await
        .unwrap();
    let locked = client
        .enqueue(Gated { tag: tag.into() })
        .submit()
        .await
        .unwrap();
    common::eventually(LONG, "the gated job starts", || {
        common::recorded(tag).contains(&("started".into(), 1))
    })
    .await;
    // Running now (the claim committed before the body began): lock it.
    let holder = raw_client().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM {schema}.jobs WHERE id = {} FOR SHARE",
            locked.id().get()
        ))
        .await
        .unwrap();
    gate().add_permits(1);
    common::eventually(LONG, "the gated job ends", || {
        common::recorded(tag).contains(&("ended".into(), 1))
    })
    .await;
    // Its result is queued for the finalizer before this job is even
    // inserted: this one's result comes after it.
    let later = client
        .enqueue(Probe::new(tag, "later", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), later)
        .await
        .expect("a later result waited for the locked row's")
        .unwrap();
    assert_eq!(out, "later@1");
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), locked)
        .await
        .expect("the locked row's result was never written")
        .unwrap();
    w.stop(Duration::from_secs(5)).await;
    assert_eq!(w.stats().lost, 0);
    drop(store);
    drop_schema(&schema).await;
}
