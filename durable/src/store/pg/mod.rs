//! `PgStore`: the PostgreSQL store (tokio-postgres over a deadpool pool of
//! its own, plus one LISTEN connection per store instance).

mod listen;
mod migrate;
mod sql;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::sql::Sql;
use super::signals::Signals;
use super::{
    Action, Beat, BoxFut, CancelResult, ClaimBatch, ClaimCursor, Claimed, Fate, Finish, LeaseId,
    Lookup, NewJob, RawOutcome, RawStats, Staged, Start, Store, StoreResult,
};
use crate::error::StoreError;
use crate::id::JobId;

/// How long a connection may take to open (unless the URL says otherwise),
/// and a pooled one to be checked.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an operation waits for a free connection of the main pool.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// Connections reserved for heartbeats, leases and the leader's duties.
const CONTROL_POOL: usize = 2;
/// How long a heartbeat or a leader duty waits for a reserved connection.
const CONTROL_WAIT: Duration = Duration::from_secs(5);

/// Configures a [`PgStore`].
///
/// # Default
/// | option | default |
/// |---|---|
/// | `schema` | `corral` |
/// | `pool_size` | 8 connections (its own pool; heartbeats and the leader's duties use 2 more, reserved, so that client load cannot starve them) |
/// | `migrate` | `true` (apply missing migrations at connect) |
/// | `fallback_poll` | 5 minutes (a safety net; wake-ups come from LISTEN/NOTIFY) |
/// | `poll_only` | off; when on, no LISTEN and a poll every `poll_interval` |
/// | `poll_interval` | 1 second (poll-only mode) |
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect` is called"]
pub struct PgStoreBuilder {
    url: String,
    schema: String,
    pool_size: usize,
    migrate: bool,
    fallback_poll: Duration,
    poll_only: bool,
    poll_interval: Duration,
}

impl PgStoreBuilder {
    /// The schema holding the tables (`[a-z_][a-z0-9_]*`, at most 48 bytes).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The size of the store's own connection pool (at least 2).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Whether `connect` applies missing migrations (see [`PgStore::migration_sql`]).
    /// Without, `connect` does not touch the database; a worker's start
    /// then checks that the schema has every migration of this build
    /// ([`StoreError::SchemaBehind`] if not).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// How often waiters look again when no notice came.
    pub fn fallback_poll(mut self, every: Duration) -> Self {
        self.fallback_poll = every;
        self
    }

    /// Polls every `interval` instead of listening (for transaction-mode
    /// poolers such as pgbouncer, which break LISTEN).
    pub fn poll_only(mut self, interval: Duration) -> Self {
        self.poll_only = true;
        self.poll_interval = interval;
        self
    }

    /// Connects, migrates (unless turned off) and starts the listener.
    ///
    /// # Errors
    /// [`StoreError::Pool`] for a bad URL or options, [`StoreError::Db`] if
    /// the server cannot be reached, [`StoreError::Migration`] if a
    /// migration fails.
    pub async fn connect(self) -> Result<PgStore, StoreError> {
        let valid = !self.schema.is_empty()
            && self.schema.len() <= 48
            && self
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !self.schema.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(StoreError::Pool(format!(
                "invalid schema name {:?}",
                self.schema
            )));
        }
        if self.pool_size < 2 {
            return Err(StoreError::Pool("pool_size must be at least 2".into()));
        }
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| StoreError::Pool(format!("bad database URL: {e}")))?;
        // Named after the schema, so an operator (or a test) can find this
        // store's connections in pg_stat_activity.
        if config.get_application_name().is_none() {
            config.application_name(format!("corral-durable:{}", self.schema));
        }
        // No operation waits without bound: a server that does not answer
        // the handshake, a pool whose connections are all busy.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let build = |size: usize, wait: Duration| {
            let manager = Manager::from_config(
                config.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(wait))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .recycle_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| StoreError::Pool(e.to_string()))
        };
        let pool = build(self.pool_size, POOL_WAIT)?;
        // Heartbeats and the leader's duties have connections of their own:
        // client load on the main pool cannot starve a lease.
        let control = build(CONTROL_POOL, CONTROL_WAIT)?;
        let sql = Sql::new(&self.schema);
        if self.migrate {
            let (mut client, connection) = config.connect(NoTls).await?;
            let driver = tokio::spawn(connection);
            let result = migrate::migrate(&mut client, &sql).await;
            drop(client);
            let _ = driver.await;
            result?;
        }
        let signals = Arc::new(Signals::default());
        let stop = CancellationToken::new();
        if self.poll_only {
            tokio::spawn(listen::poll_only(
                signals.clone(),
                self.poll_interval,
                stop.clone(),
            ));
        } else {
            tokio::spawn(listen::listen(
                config,
                sql.channel.clone(),
                signals.clone(),
                self.fallback_poll,
                stop.clone(),
            ));
        }
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                control,
                sql,
                signals,
                _listener: stop.drop_guard(),
            }),
        })
    }
}

/// The PostgreSQL store. Cheap to clone; clones share one pool and one
/// listener, which stop when the last clone is dropped.
///
/// Tables and indexes (in the configured schema, `corral` by default):
/// `jobs` (one row per job), `workers` (leases), `leader` (one row with a
/// TTL), `migrations`. See [`migration_sql`](Self::migration_sql) for the
/// exact DDL, and the README for the vacuum settings it applies.
///
/// ```no_run
/// # async fn f() -> Result<(), corral_durable::StoreError> {
/// use corral_durable::{Client, PgStore};
/// let store = PgStore::builder("postgres://postgres@127.0.0.1/app").schema("jobs").connect().await?;
/// let client = Client::new(&store);
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Heartbeats, leases and the leader's duties.
    control: Pool,
    sql: Sql,
    signals: Arc<Signals>,
    _listener: DropGuard,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.sql.schema)
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// A builder for a store at `url` (a libpq-style URL or key=value string).
    pub fn builder(url: impl Into<String>) -> PgStoreBuilder {
        PgStoreBuilder {
            url: url.into(),
            schema: "corral".into(),
            pool_size: 8,
            migrate: true,
            fallback_poll: Duration::from_secs(300),
            poll_only: false,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Connects with the default settings.
    ///
    /// # Errors
    /// See [`PgStoreBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<PgStore, StoreError> {
        PgStore::builder(url).connect().await
    }

    /// The schema's DDL as plain SQL (every migration, with its bookkeeping
    /// row), for teams that apply migrations themselves (then connect with
    /// `migrate(false)`).
    pub fn migration_sql(schema: &str) -> String {
        migrate::export(&Sql::new(schema))
    }

    /// The schema this store uses.
    pub fn schema(&self) -> &str {
        &self.inner.sql.schema
    }

    /// Fails with [`StoreError::SchemaBehind`] unless the schema has every
    /// migration of this build.
    pub(crate) async fn check_schema(&self) -> StoreResult<()> {
        let client = self.control().await?;
        migrate::check(&**client, &self.inner.sql).await
    }

    async fn control(&self) -> StoreResult<deadpool_postgres::Object> {
        self.inner
            .control
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))
    }

    async fn conn(&self) -> StoreResult<deadpool_postgres::Object> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))
    }

    /// Inserts with any client (the pool's, with its cached statement, or a
    /// caller's transaction, which prepares it).
    pub(crate) async fn insert_with<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        prepared: Option<tokio_postgres::Statement>,
        jobs: &[NewJob],
    ) -> StoreResult<Vec<JobId>> {
        if let [job] = jobs {
            let stmt = match prepared {
                Some(stmt) => stmt,
                None => client.prepare(&self.inner.sql.insert_one).await?,
            };
            let (start, delay) = split_start(job.start);
            let row = client
                .query_one(
                    &stmt,
                    &[
                        &job.key,
                        &job.queue,
                        &job.kind,
                        &job.args,
                        &job.priority,
                        &start,
                        &delay,
                        &job.max_attempts,
                        &job.timeout_ms,
                        &job.backoff,
                        &job.jitter,
                        &job.retention_ms,
                        &job.immediate,
                    ],
                )
                .await
                .map_err(insert_error)?;
            return Ok(vec![JobId(row.get(0))]);
        }
        if let Some(first) = uniform(jobs) {
            return self.insert_uniform(client, prepared, first, jobs).await;
        }
        let mut keys = Vec::with_capacity(jobs.len());
        let mut queues = Vec::with_capacity(jobs.len());
        let mut kinds = Vec::with_capacity(jobs.len());
        let mut args = Vec::with_capacity(jobs.len());
        let mut priorities = Vec::with_capacity(jobs.len());
        let mut starts: Vec<Option<SystemTime>> = Vec::with_capacity(jobs.len());
        let mut delays = Vec::with_capacity(jobs.len());
        let mut max_attempts = Vec::with_capacity(jobs.len());
        let mut timeouts = Vec::with_capacity(jobs.len());
        let mut backoffs = Vec::with_capacity(jobs.len());
        let mut jitters = Vec::with_capacity(jobs.len());
        let mut retentions = Vec::with_capacity(jobs.len());
        let mut immediates = Vec::with_capacity(jobs.len());
        for j in jobs {
            keys.push(j.key.as_deref());
            queues.push(j.queue.as_ref());
            kinds.push(j.kind.as_ref());
            args.push(j.args.as_str());
            priorities.push(j.priority);
            let (start, delay) = split_start(j.start);
            starts.push(start);
            delays.push(delay);
            max_attempts.push(j.max_attempts);
            timeouts.push(j.timeout_ms);
            backoffs.push(j.backoff.as_ref());
            jitters.push(j.jitter);
            retentions.push(j.retention_ms);
            immediates.push(j.immediate);
        }
        let stmt = match prepared {
            Some(stmt) => stmt,
            None => client.prepare(&self.inner.sql.insert).await?,
        };
        let rows = client
            .query(
                &stmt,
                &[
                    &keys,
                    &queues,
                    &kinds,
                    &args,
                    &priorities,
                    &starts,
                    &delays,
                    &max_attempts,
                    &timeouts,
                    &backoffs,
                    &jitters,
                    &retentions,
                    &immediates,
                ],
            )
            .await
            .map_err(insert_error)?;
        Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
    }

    /// A batch whose rows share every option: keys and arguments as
    /// arrays, the rest once (see `Sql::insert_uniform`).
    async fn insert_uniform<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        prepared: Option<tokio_postgres::Statement>,
        first: &NewJob,
        jobs: &[NewJob],
    ) -> StoreResult<Vec<JobId>> {
        let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.key.as_deref()).collect();
        let args: Vec<&str> = jobs.iter().map(|j| j.args.as_str()).collect();
        let stmt = match prepared {
            Some(stmt) => stmt,
            None => client.prepare(&self.inner.sql.insert_uniform).await?,
        };
        let (start, delay) = split_start(first.start);
        let row = client
            .query_one(
                &stmt,
                &[
                    &keys,
                    &first.queue,
                    &first.kind,
                    &args,
                    &first.priority,
                    &start,
                    &delay,
                    &first.max_attempts,
                    &first.timeout_ms,
                    &first.backoff,
                    &first.jitter,
                    &first.retention_ms,
                    &first.immediate,
                ],
            )
            .await
            .map_err(insert_error)?;
        let ids: Option<Vec<i64>> = row.get(0);
        Ok(ids.unwrap_or_default().into_iter().map(JobId).collect())
    }

    /// Finished ids and due queues seen by this process's own writes are
    /// signalled at once, without waiting for the notice's round trip.
    fn signal_moved(&self, rows: &[tokio_postgres::Row]) {
        let s = &self.inner.signals;
        let mut finished = false;
        for r in rows {
            let state: &str = r.get(1);
            match state {
                "available" => s.wake_queue(r.get(2)),
                "scheduled" => s.wake_scheduled(),
                _ => {
                    finished = true;
                    s.job_done(JobId(r.get(0)));
                }
            }
        }
        if finished {
            s.rows_finished();
        }
    }
}

impl PgStore {
    /// The fenced completion of one attempt, in the caller's transaction,
    /// and, when it applied, that transaction's id (to ask later whether
    /// it committed: [`PgStore::committed`]).
    pub(crate) async fn complete_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        lease: LeaseId,
        id: JobId,
        attempt: i32,
        output: String,
    ) -> StoreResult<(Fate, i64)> {
        let rows = tx
            .query(
                &self.inner.sql.finish_in_tx,
                &[
                    &lease,
                    &vec![id.0],
                    &vec![attempt],
                    &vec![0i16],
                    &vec![Some(output)],
                    &vec![0i64],
                ],
            )
            .await?;
        Ok(match rows.first() {
            None => (Fate::Refused, 0),
            Some(r) if r.get::<_, bool>(3) => (Fate::CancelledInstead, 0),
            Some(_) => {
                let xid = tx.query_one("SELECT txid_current()", &[]).await?;
                (Fate::Applied, xid.get(0))
            }
        })
    }

    /// Whether the transaction `xid` committed: `Some(true)` committed,
    /// `Some(false)` rolled back (or too old for the server to remember,
    /// which a transaction of a running attempt is not), `None` still open.
    pub(crate) async fn committed(&self, xid: i64) -> StoreResult<Option<bool>> {
        let client = self.conn().await?;
        let row = client.query_one("SELECT txid_status($1)", &[&xid]).await?;
        Ok(match row.get::<_, Option<String>>(0).as_deref() {
            Some("committed") => Some(true),
            Some("in progress") => None,
            _ => Some(false),
        })
    }
}

/// The first job of a batch of at least two whose rows differ only in key
/// and arguments, if it is one.
fn uniform(jobs: &[NewJob]) -> Option<&NewJob> {
    let (first, rest) = jobs.split_first()?;
    let same = |j: &NewJob| {
        j.queue == first.queue
            && j.kind == first.kind
            && j.priority == first.priority
            && j.start == first.start
            && j.max_attempts == first.max_attempts
            && j.timeout_ms == first.timeout_ms
            && j.backoff == first.backoff
            && j.jitter.to_bits() == first.jitter.to_bits()
            && j.retention_ms == first.retention_ms
            && j.immediate == first.immediate
    };
    (!rest.is_empty() && rest.iter().all(same)).then_some(first)
}

/// A start as the insert's `(start_at, delay_ms)` parameters.
fn split_start(start: Start) -> (Option<SystemTime>, i64) {
    match start {
        Start::Now => (None, 0),
        // A past start means due now: any time before the epoch is past on
        // every clock, and encoding it could overflow (a panic) or leave
        // PostgreSQL's range (an error).
        Start::At(at) => (Some(at.max(SystemTime::UNIX_EPOCH)), 0),
        Start::After(d) => (None, i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    }
}

/// A live key already present is `DuplicateKey`, naming it.
fn insert_error(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        let key = e
            .as_db_error()
            .and_then(|d| d.detail())
            .and_then(|d| d.split("=(").nth(1))
            .and_then(|d| d.split(')').next())
            .unwrap_or_default()
            .to_owned();
        StoreError::DuplicateKey(key)
    } else {
        StoreError::Db(e)
    }
}

/// Milliseconds from now as a duration (a past instant is zero).
fn from_ms(ms: Option<i64>) -> Option<Duration> {
    ms.map(|ms| Duration::from_millis(ms.max(0) as u64))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store for PgStore {
    fn insert(&self, jobs: Vec<NewJob>) -> BoxFut<'_, StoreResult<Vec<JobId>>> {
        Box::pin(async move {
            let client = self.conn().await?;
            let sql = &self.inner.sql;
            let text = if jobs.len() == 1 {
                &sql.insert_one
            } else if uniform(&jobs).is_some() {
                &sql.insert_uniform
            } else {
                &sql.insert
            };
            let stmt = client.prepare_cached(text).await?;
            self.insert_with(&**client, Some(stmt), &jobs).await
        })
    }

    fn register(&self, ttl: Duration) -> BoxFut<'_, StoreResult<LeaseId>> {
        Box::pin(async move {
            let client = self.control().await?;
            let info = format!("pid {}", std::process::id());
            let stmt = client.prepare_cached(&self.inner.sql.register).await?;
            let row = client.query_one(&stmt, &[&ms(ttl), &info]).await?;
            Ok(row.get(0))
        })
    }

    fn heartbeat(
        &self,
        lease: LeaseId,
        ttl: Duration,
        held: Vec<i64>,
        settled_below: i64,
    ) -> BoxFut<'_, StoreResult<Beat>> {
        Box::pin(async move {
            let client = self.control().await?;
            let stmt = client.prepare_cached(&self.inner.sql.heartbeat).await?;
            let row = client
                .query_one(&stmt, &[&lease, &ms(ttl), &held, &settled_below])
                .await?;
            let alive: i64 = row.get(0);
            let leader = row.get::<_, i64>(1) > 0;
            let cancels: Vec<i64> = row.get(2);
            let unknown: Vec<i64> = row.get(3);
            let attempts: Vec<i32> = row.get(4);
            let lead = |i: usize| if leader { from_ms(row.get(i)) } else { None };
            Ok(Beat {
                alive: alive > 0,
                leader,
                cancels: cancels.into_iter().map(JobId).collect(),
                leader_expires_in: if leader { None } else { from_ms(row.get(5)) },
                rescue_in: lead(6),
                prune_in: lead(7),
                unknown: unknown.into_iter().map(JobId).zip(attempts).collect(),
            })
        })
    }

    fn retire(&self, lease: LeaseId) -> BoxFut<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.control().await?;
            client.query(&self.inner.sql.retire, &[&lease]).await?;
            Ok(())
        })
    }

    fn claim<'a>(
        &'a self,
        lease: LeaseId,
        queue: &'a str,
        kinds: &'a [String],
        limit: usize,
        after: Option<ClaimCursor>,
        claim_no: i64,
    ) -> BoxFut<'a, StoreResult<ClaimBatch>> {
        Box::pin(async move {
            let client = self.conn().await?;
            let sql = &self.inner.sql;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = match after {
                None => {
                    let stmt = client.prepare_cached(&sql.claim).await?;
                    client
                        .query(&stmt, &[&lease, &queue, &kinds, &limit, &claim_no])
                        .await?
                }
                Some(c) => {
                    let stmt = client.prepare_cached(&sql.claim_after).await?;
                    client
                        .query(
                            &stmt,
                            &[
                                &lease,
                                &queue,
                                &kinds,
                                &limit,
                                &c.priority,
                                &c.run_at,
                                &c.id.0,
                                &claim_no,
                            ],
                        )
                        .await?
                }
            };
            // The claim from the front answers at least one row, with
            // `skipped` and, if it took nothing, a NULL id.
            let skipped = rows
                .first()
                .and_then(|r| r.get::<_, Option<bool>>(14))
                .unwrap_or(false);
            let rows = rows
                .iter()
                .filter(|r| r.get::<_, Option<i64>>(0).is_some())
                .map(|r| Claimed {
                    id: JobId(r.get(0)),
                    key: r.get(1),
                    queue: r.get(2),
                    kind: r.get(3),
                    args: r.get(4),
                    attempt: r.get(5),
                    lost: r.get(6),
                    max_attempts: r.get(7),
                    timeout_ms: r.get(8),
                    backoff: r.get(9),
                    jitter: r.get(10),
                    immediate: r.get(11),
                    cursor: ClaimCursor {
                        priority: r.get(12),
                        run_at: r.get(13),
                        id: JobId(r.get(0)),
                    },
                })
                .collect();
            Ok(ClaimBatch { rows, skipped })
        })
    }

    fn finish(&self, lease: LeaseId, batch: Vec<Finish>) -> BoxFut<'_, StoreResult<Vec<Fate>>> {
        Box::pin(async move {
            let mut ids = Vec::with_capacity(batch.len());
            let mut attempts = Vec::with_capacity(batch.len());
            let mut actions: Vec<i16> = Vec::with_capacity(batch.len());
            let mut payloads: Vec<Option<&str>> = Vec::with_capacity(batch.len());
            let mut delays = Vec::with_capacity(batch.len());
            for f in &batch {
                ids.push(f.id.0);
                attempts.push(f.attempt);
                let (action, payload, delay) = match &f.action {
                    Action::Complete { output } => (0, Some(output.as_str()), 0),
                    Action::Fail { error } => (1, Some(error.as_str()), 0),
                    Action::Cancel => (2, None, 0),
                    Action::Retry { delay, error } => (3, Some(error.as_str()), ms(*delay)),
                    Action::Snooze { delay } => (4, None, ms(*delay)),
                    Action::Release => (5, None, 0),
                };
                actions.push(action);
                payloads.push(payload);
                delays.push(delay);
            }
            let client = self.conn().await?;
            let stmt = client.prepare_cached(&self.inner.sql.finish).await?;
            let rows = client
                .query(
                    &stmt,
                    &[&lease, &ids, &attempts, &actions, &payloads, &delays],
                )
                .await?;
            // Rows with no state: not written, another session held them
            // locked (see `sql::FINISH_LOCK`).
            let (busy, rows): (Vec<_>, Vec<_>) = rows
                .into_iter()
                .partition(|r| r.get::<_, Option<&str>>(1).is_none());
            self.signal_moved(&rows);
            let moved: std::collections::HashMap<i64, bool> = rows
                .iter()
                .map(|r| (r.get(0), r.get::<_, bool>(3)))
                .collect();
            let busy: std::collections::HashSet<i64> = busy.iter().map(|r| r.get(0)).collect();
            Ok(ids
                .iter()
                .zip(&actions)
                .map(|(id, action)| match moved.get(id) {
                    None if busy.contains(id) => Fate::Busy,
                    None => Fate::Refused,
                    Some(true) if *action != 2 => Fate::CancelledInstead,
                    Some(_) => Fate::Applied,
                })
                .collect())
        })
    }

    fn lookup(&self, id: JobId) -> BoxFut<'_, StoreResult<Lookup>> {
        Box::pin(async move {
            let client = self.conn().await?;
            let stmt = client.prepare_cached(&self.inner.sql.lookup).await?;
            let row = client.query_one(&stmt, &[&id.0]).await?;
            let kind: Option<String> = row.get(0);
            let last: i64 = row.get(4);
            let Some(kind) = kind else {
                return Ok(if id.0 >= 1 && id.0 <= last {
                    Lookup::Expired
                } else {
                    Lookup::NotFound
                });
            };
            let state: &str = row.get(1);
            Ok(match state {
                "completed" => Lookup::Done {
                    kind,
                    outcome: RawOutcome::Completed(
                        row.get::<_, Option<String>>(2).unwrap_or_default(),
                    ),
                },
                "failed" => Lookup::Done {
                    kind,
                    outcome: RawOutcome::Failed(
                        row.get::<_, Option<String>>(3).unwrap_or_default(),
                    ),
                },
                "cancelled" => Lookup::Done {
                    kind,
                    outcome: RawOutcome::Cancelled,
                },
                _ => Lookup::Pending { kind },
            })
        })
    }

    fn find_key<'a>(&'a self, key: &'a str) -> BoxFut<'a, StoreResult<Option<JobId>>> {
        Box::pin(async move {
            let client = self.conn().await?;
            let stmt = client.prepare_cached(&self.inner.sql.find_key).await?;
            let row = client.query_opt(&stmt, &[&key]).await?;
            Ok(row.map(|r| JobId(r.get(0))))
        })
    }

    fn cancel(&self, id: JobId) -> BoxFut<'_, StoreResult<CancelResult>> {
        Box::pin(async move {
            let mut client = self.conn().await?;
            let tx = client.transaction().await?;
            let Some(row) = tx
                .query_opt(&self.inner.sql.lock_for_cancel, &[&id.0])
                .await?
            else {
                return Ok(CancelResult::NotFound);
            };
            let state: &str = row.get(0);
            let chan = &self.inner.sql.channel;
            let result = match state {
                "scheduled" | "available" => {
                    tx.execute(&self.inner.sql.cancel_queued, &[&id.0]).await?;
                    tx.execute("SELECT pg_notify($1, $2)", &[chan, &format!("d:{id}")])
                        .await?;
                    CancelResult::Cancelled
                }
                "running" => {
                    tx.execute(&self.inner.sql.cancel_running, &[&id.0]).await?;
                    tx.execute("SELECT pg_notify($1, $2)", &[chan, &format!("c:{id}")])
                        .await?;
                    CancelResult::Requested
                }
                _ => CancelResult::AlreadyFinished,
            };
            tx.commit().await?;
            match result {
                CancelResult::Cancelled => {
                    self.inner.signals.job_done(id);
                    self.inner.signals.rows_finished();
                }
                CancelResult::Requested => self.inner.signals.cancel_requested(id),
                _ => {}
            }
            Ok(result)
        })
    }

    fn stats(&self) -> BoxFut<'_, StoreResult<RawStats>> {
        Box::pin(async move {
            let client = self.conn().await?;
            let rows = client.query(&self.inner.sql.stats, &[]).await?;
            Ok(RawStats {
                rows: rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect(),
            })
        })
    }

    fn stage(&self, limit: i64) -> BoxFut<'_, StoreResult<Staged>> {
        Box::pin(async move {
            let client = self.control().await?;
            let stmt = client.prepare_cached(&self.inner.sql.stage).await?;
            let row = client.query_one(&stmt, &[&limit]).await?;
            let staged: i64 = row.get(0);
            let next: Option<i64> = row.get(2);
            Ok(Staged {
                staged: staged as u64,
                next_due: next.map(|ms| Duration::from_millis(ms.max(0) as u64)),
                skipped: row.get::<_, Option<bool>>(3).unwrap_or(false),
            })
        })
    }

    fn rescue(&self, own: LeaseId) -> BoxFut<'_, StoreResult<(u64, Option<Duration>)>> {
        Box::pin(async move {
            let mut client = self.control().await?;
            let stmt = client.prepare_cached(&self.inner.sql.rescue).await?;
            // Rescues take turns (a leadership handover may overlap two):
            // each locks the dead leases' rows, then their jobs, and two at
            // once could lock them in opposite orders. The next one's
            // statement sees what the previous one committed.
            let tx = client.transaction().await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('corral_durable_rescue:' || $1::text))",
                &[&self.inner.sql.schema],
            )
            .await?;
            let row = tx.query_one(&stmt, &[&own]).await?;
            tx.commit().await?;
            let next: Option<i64> = row.get(1);
            Ok((
                row.get::<_, i64>(0) as u64,
                next.map(|ms| Duration::from_millis(ms.max(0) as u64)),
            ))
        })
    }

    fn prune(&self, limit: i64) -> BoxFut<'_, StoreResult<u64>> {
        Box::pin(async move {
            let client = self.control().await?;
            let row = client.query_one(&self.inner.sql.prune, &[&limit]).await?;
            client.execute(&self.inner.sql.prune_workers, &[]).await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn signals(&self) -> &Arc<Signals> {
        &self.inner.signals
    }

    fn pg(&self) -> Option<&PgStore> {
        Some(self)
    }
}

#[cfg(test)]
impl PgStore {
    /// Expires `lease` now, as a pause past the TTL would (model test helper).
    pub(crate) async fn expire(&self, lease: LeaseId) {
        let client = self.conn().await.unwrap();
        let sql = format!(
            "UPDATE {}.workers SET expires_at = now() - interval '1 millisecond' WHERE id = $1",
            self.inner.sql.schema
        );
        client.execute(&sql, &[&lease]).await.unwrap();
    }

    /// The heartbeat statement (race test helper).
    pub(crate) fn heartbeat_sql(&self) -> &str {
        &self.inner.sql.heartbeat
    }

    /// Every row's id, state, attempt and lease (model test helper).
    pub(crate) async fn snapshot(&self) -> Vec<(JobId, String, i32, Option<LeaseId>)> {
        let client = self.conn().await.unwrap();
        let sql = format!(
            "SELECT id, state, attempt, lease FROM {}.jobs ORDER BY id",
            self.inner.sql.schema
        );
        let rows = client.query(&sql, &[]).await.unwrap();
        rows.iter()
            .map(|r| (JobId(r.get(0)), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    /// Empties the tables (model test helper: one schema for many cases).
    pub(crate) async fn truncate(&self) {
        let client = self.conn().await.unwrap();
        let s = &self.inner.sql.schema;
        client
            .batch_execute(&format!("TRUNCATE {s}.jobs, {s}.workers, {s}.leader"))
            .await
            .unwrap();
    }

    /// Drops the schema (model test cleanup).
    pub(crate) async fn drop_schema(&self) {
        let client = self.conn().await.unwrap();
        let s = &self.inner.sql.schema;
        client
            .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
            .await
            .unwrap();
    }
}
