//! PostgreSQL helpers shared by the children: connecting with a deadline,
//! listening, the floor's schema and statements, and the counters read
//! around a measured window (CPU from `/proc`, commits from
//! `pg_stat_database`, wire counts from the proxy).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A connection error or a query error, as text.
pub type Res<T> = Result<T, String>;

/// Adds `application_name` (and `connect_timeout`) to a URL.
pub fn with_app(url: &str, app: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}&connect_timeout=5&sslmode=disable")
}

/// Connects (a dead server fails within seconds) and drives the connection
/// on a task.
pub async fn connect(url: &str) -> Res<Client> {
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| format!("connecting to {url}: timed out"))?
            .map_err(|e| format!("connecting to {url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects and forwards every notification's payload to the receiver.
pub async fn connect_listening(url: &str) -> Res<(Client, mpsc::UnboundedReceiver<String>)> {
    let (client, mut conn) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| format!("connecting to {url}: timed out"))?
            .map_err(|e| format!("connecting to {url}: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_owned());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok((client, rx))
}

/// An error's text, with its sources (a database error's message is in
/// its source).
pub fn e<E: std::error::Error>(x: E) -> String {
    let mut s = x.to_string();
    let mut src = x.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Creates the floor's schema: corral's own DDL (same table, indexes and
/// insert trigger), so both sides stand on one table design.
pub async fn create_floor_schema(c: &Client, schema: &str) -> Res<()> {
    c.batch_execute(&corral_durable::PgStore::migration_sql(schema))
        .await
        .map_err(e)
}

/// Drops a schema (and everything in it).
pub async fn drop_schema(url: &str, schema: &str) {
    if let Ok(c) = connect(url).await {
        let _ = c
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}

/// The floor's bulk insert: `$1` is the JSON arguments of every row.
pub fn floor_insert(s: &str) -> String {
    format!(
        "INSERT INTO {s}.jobs (queue, kind, args)
         SELECT 'default', 'noop', a::jsonb FROM unnest($1::text[]) AS a"
    )
}

/// The floor's claim: one `UPDATE ... FROM (SELECT ... FOR UPDATE SKIP
/// LOCKED LIMIT n)`. `$1` is n.
pub fn floor_claim(s: &str) -> String {
    format!(
        "UPDATE {s}.jobs j SET state = 'running', attempt = j.attempt + 1, attempted_at = now()
           FROM (SELECT id FROM {s}.jobs
                  WHERE state = 'available' AND queue = 'default' AND run_at <= now()
                  ORDER BY priority DESC, run_at, id
                  LIMIT $1 FOR UPDATE SKIP LOCKED) p
          WHERE j.id = p.id
         RETURNING j.id, j.args::text"
    )
}

/// The floor's completion: one statement per batch; `$1` ids, `$2` each
/// job's output (a number). With `notify`, also one notice of the finished
/// ids with their outputs (`d:id:out,...`) on the schema's channel, for a
/// waiter in another process.
pub fn floor_done(s: &str, notify: bool) -> String {
    let tail = if notify {
        format!(
            "SELECT count(pg_notify('corral_{s}', m))
               FROM (SELECT 'd:' || string_agg(id || ':' || out, ',') AS m FROM d) x WHERE m IS NOT NULL"
        )
    } else {
        "SELECT count(*) FROM d".to_owned()
    };
    format!(
        "WITH d AS (
            UPDATE {s}.jobs j SET state = 'completed', output = to_jsonb(i.out), lease = NULL,
                   finished_at = now(), prune_at = now() + j.retention_ms * interval '1 millisecond'
              FROM unnest($1::bigint[], $2::bigint[]) AS i(id, out)
             WHERE j.id = i.id
            RETURNING j.id, i.out
         )
         {tail}"
    )
}

/// The notification channel of a schema (corral's naming).
pub fn channel(s: &str) -> String {
    format!("corral_{s}")
}

/// Clock ticks per second for `/proc/<pid>/stat`.
fn ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User plus system CPU seconds of a process, from `/proc/<pid>/stat`.
pub fn cpu_of(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, s): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((u + s) / ticks())
}

/// CPU seconds of this process.
pub fn cpu_self() -> f64 {
    cpu_of("self").unwrap_or(0.0)
}

/// CPU seconds per backend pid of the connections named `app`.
pub async fn backend_cpu(stats: &Client, app: &str) -> Res<HashMap<i32, f64>> {
    let rows = stats
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .map_err(e)?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let pid: i32 = r.get(0);
            Some((pid, cpu_of(&pid.to_string())?))
        })
        .collect())
}

/// Server CPU spent between two snapshots (backends new in `after` count
/// from zero; backends gone before `after` are missed).
pub fn cpu_delta(before: &HashMap<i32, f64>, after: &HashMap<i32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, t)| (t - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// Committed transactions of the current database (fresh snapshot).
pub async fn xact_commit(stats: &Client) -> Res<i64> {
    let row = stats
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(e)?;
    let _ = stats.batch_execute("SELECT pg_stat_clear_snapshot()").await;
    Ok(row.get(0))
}

/// Waits until no backend of `app` remains (their stats are flushed at exit).
pub async fn wait_gone(stats: &Client, app: &str) -> Res<()> {
    for _ in 0..100 {
        let row = stats
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .map_err(e)?;
        if row.get::<_, i64>(0) == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("connections of {app} still open after 5 s"))
}

/// Server settings and version for the report's header.
pub async fn settings(c: &Client) -> Res<String> {
    let row = c
        .query_one(
            "SELECT version(), current_setting('synchronous_commit'), current_setting('shared_buffers'),
                    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'),
                    current_setting('shared_preload_libraries')",
            &[],
        )
        .await
        .map_err(e)?;
    let version: String = row.get(0);
    let version = version.split(" on ").next().unwrap_or(&version).to_owned();
    let pss: bool = row.get(3);
    let preload: String = row.get(4);
    Ok(format!(
        "server: {version}, synchronous_commit = {}, shared_buffers = {}, pg_stat_statements {}",
        row.get::<_, String>(1),
        row.get::<_, String>(2),
        if pss && preload.contains("pg_stat_statements") {
            "installed (statements still counted on the wire)"
        } else {
            "not loaded (statements counted on the wire by the harness's proxy)"
        }
    ))
}
