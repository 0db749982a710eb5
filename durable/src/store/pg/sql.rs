//! Every statement the PostgreSQL store sends, built once per schema.
//!
//! States are literals in every statement (never a parameter), so the
//! planner can match the partial indexes (a lesson of awa's, see
//! `shared/spec/durable-peers.md`). Each statement is one round trip for a
//! whole batch: arrays go in through `unnest`.

use crate::MAX_LOST_ATTEMPTS;

/// The final states, as SQL.
const FINAL: &str = "('completed', 'failed', 'cancelled')";

/// The migrations, in order: `(version, SQL)`. `{s}` is the schema and
/// `{chan}` the notification channel.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE {s}.jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key           text,
    queue         text        NOT NULL,
    kind          text        NOT NULL,
    state         text        NOT NULL DEFAULT 'available' CHECK (state IN
                    ('scheduled', 'available', 'running', 'completed', 'failed', 'cancelled')),
    priority      integer     NOT NULL DEFAULT 0,
    run_at        timestamptz NOT NULL DEFAULT now(),
    attempt       integer     NOT NULL DEFAULT 0,
    lost          integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL DEFAULT 1,
    timeout_ms    bigint,
    backoff       jsonb       NOT NULL DEFAULT '{"fixed":{"secs":0,"nanos":0}}',
    jitter        real        NOT NULL DEFAULT 0,
    immediate     boolean     NOT NULL DEFAULT false,
    retention_ms  bigint      NOT NULL DEFAULT 86400000,
    args          jsonb       NOT NULL,
    output        jsonb,
    error         jsonb,
    lease         bigint,
    cancel_requested boolean  NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    attempted_at  timestamptz,
    finished_at   timestamptz,
    prune_at      timestamptz
);
-- What a claim reads: due rows of a queue in order.
CREATE INDEX jobs_claim ON {s}.jobs (queue, priority DESC, run_at, id) WHERE state = 'available';
-- What the leader stages.
CREATE INDEX jobs_scheduled ON {s}.jobs (run_at) WHERE state = 'scheduled';
-- What a rescue and a heartbeat read.
CREATE INDEX jobs_running ON {s}.jobs (lease) WHERE state = 'running';
-- What the pruner deletes.
CREATE INDEX jobs_prune ON {s}.jobs (prune_at) WHERE prune_at IS NOT NULL;
-- A key names at most one live job; finished ones stay findable by key.
CREATE UNIQUE INDEX jobs_live_key ON {s}.jobs (key)
    WHERE key IS NOT NULL AND state IN ('scheduled', 'available', 'running');
CREATE INDEX jobs_key ON {s}.jobs (key, id) WHERE key IS NOT NULL;
-- A hot queue table: vacuum early and often.
ALTER TABLE {s}.jobs SET (autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 90);

CREATE TABLE {s}.workers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    expires_at  timestamptz NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    info        text        NOT NULL DEFAULT ''
);

CREATE TABLE {s}.leader (
    name        text PRIMARY KEY,
    lease       bigint      NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Inserts notify the queues that got due rows, and the leader of scheduled
-- ones; once per statement, so a batch insert sends one notice per queue.
CREATE FUNCTION {s}.notify_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{chan}', 'q:' || q.queue)
        FROM (SELECT DISTINCT queue FROM new_rows WHERE state = 'available') q;
    IF EXISTS (SELECT 1 FROM new_rows WHERE state = 'scheduled') THEN
        PERFORM pg_notify('{chan}', 's');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify_insert AFTER INSERT ON {s}.jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_insert();
"#,
    ),
    (
        2,
        r#"
-- A jitter ratio outside [0, 1] (NaN included) written by hand made the
-- retry delay's draw panic. Existing bad rows lose their jitter.
UPDATE {s}.jobs SET jitter = 0 WHERE NOT (jitter >= 0 AND jitter <= 1);
ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_jitter_ratio CHECK (jitter >= 0 AND jitter <= 1);
"#,
    ),
    (
        3,
        r#"
-- The worker's number of the claim that made a row running: a heartbeat
-- tells rows of a claim whose answer was lost (settled, yet not held by the
-- worker) from rows of a claim still in flight.
ALTER TABLE {s}.jobs ADD COLUMN claim bigint;
"#,
    ),
];

/// Notices for rows an update moved: finished ids (chunked under the
/// 8000-byte payload limit), queues with new due rows, and the leader.
/// `{rows}` is a CTE with `id`, `state` and `queue`.
const NOTIFY_MOVED: &str = r#"
notes AS (
    SELECT count(pg_notify('{chan}', msg)) AS sent FROM (
        SELECT 'd:' || string_agg(id::text, ',') AS msg
          FROM (SELECT id, (row_number() OVER ()) / 400 AS chunk
                  FROM {rows} WHERE state IN ('completed', 'failed', 'cancelled')) f
         GROUP BY chunk
        UNION ALL
        SELECT DISTINCT 'q:' || queue FROM {rows} WHERE state = 'available'
        UNION ALL
        SELECT 's' FROM (SELECT 1 FROM {rows} WHERE state = 'scheduled' LIMIT 1) one
    ) m
)"#;

/// The end of both claims: `picked` rows move to `running` under a live lease.
const CLAIMED: &str = "), claimed AS (
                    UPDATE {s}.jobs j
                       SET state = 'running', attempt = j.attempt + 1, lease = $1, attempted_at = now(),
                           claim = {claim_no}
                      FROM picked
                     WHERE j.id = picked.id
                       AND EXISTS (SELECT 1 FROM {s}.workers w WHERE w.id = $1 AND w.expires_at > now())
                    RETURNING j.id, j.key, j.queue, j.kind, j.args::text AS args, j.attempt, j.lost,
                              j.max_attempts, j.timeout_ms, j.backoff::text AS backoff, j.jitter,
                              j.immediate, j.priority, j.run_at
                 )
                 SELECT c.id, c.key, c.queue, c.kind, c.args, c.attempt, c.lost, c.max_attempts, c.timeout_ms,
                        c.backoff, c.jitter, c.immediate, c.priority, c.run_at, s.skipped
                   FROM (SELECT {skipped} AS skipped) s LEFT JOIN claimed c ON true
                  ORDER BY c.priority DESC, c.run_at, c.id";

/// Whether a short claim from the front left due rows of its queue (and
/// kinds) it did not take: rows another session held locked, which `SKIP
/// LOCKED` passed over. No notice comes when such a lock goes, so the
/// worker claims again after a backoff while this says so. Read from the
/// statement's snapshot, where the rows just claimed are still
/// `available`: they are left out. Only evaluated for a short claim (`AND`
/// stops at a full one), so a backlog pays nothing for it.
const SKIPPED: &str = "((SELECT count(*) FROM claimed) < $4 AND EXISTS (
                    SELECT 1 FROM {s}.jobs x
                     WHERE x.state = 'available' AND x.queue = $2 AND x.kind = ANY($3) AND x.run_at <= now()
                       AND x.id NOT IN (SELECT id FROM claimed)))";

/// The fenced write of running jobs (see `Sql::finish`). Fenced on job,
/// attempt, running state, lease, and the lease being alive when the
/// statement runs (`statement_timestamp()`, not `now()`: inside a body's
/// long transaction `now()` is when that transaction began). Actions: 0
/// complete, 1 fail, 2 cancel, 3 retry, 4 snooze, 5 release. A cancel
/// request wins over any action.
const FINISH: &str = "WITH input AS (
                    SELECT * FROM unnest($2::bigint[], $3::int[], $4::smallint[], $5::text[], $6::bigint[])
                        AS i(id, attempt, action, payload, delay_ms)
                 ){lock}, moved AS (
                    UPDATE {s}.jobs j SET
                        state = CASE
                            WHEN j.cancel_requested OR i.action = 2 THEN 'cancelled'
                            WHEN i.action = 0 THEN 'completed'
                            WHEN i.action = 1 THEN 'failed'
                            WHEN i.action IN (3, 4) AND i.delay_ms > 0 THEN 'scheduled'
                            ELSE 'available' END,
                        attempt = CASE WHEN i.action IN (4, 5) AND NOT j.cancel_requested
                                       THEN j.attempt - 1 ELSE j.attempt END,
                        output = CASE WHEN i.action = 0 THEN i.payload::jsonb ELSE j.output END,
                        error = CASE WHEN i.action IN (1, 3) THEN i.payload::jsonb ELSE j.error END,
                        run_at = CASE WHEN i.action IN (3, 4)
                                      THEN now() + i.delay_ms * interval '1 millisecond' ELSE j.run_at END,
                        lease = NULL,
                        finished_at = CASE WHEN j.cancel_requested OR i.action IN (0, 1, 2) THEN now() END,
                        prune_at = CASE WHEN j.cancel_requested OR i.action IN (0, 1, 2)
                                        THEN now() + j.retention_ms * interval '1 millisecond' END
                      FROM input i
                     WHERE j.id = i.id AND j.attempt = i.attempt AND j.state = 'running' AND j.lease = $1
                       AND EXISTS (SELECT 1 FROM {s}.workers w WHERE w.id = $1 AND w.expires_at > statement_timestamp())
                       {only_locked}
                    RETURNING j.id, j.state, j.queue, j.cancel_requested
                 ), {notes}
                 SELECT moved.id, moved.state, moved.queue, moved.cancel_requested FROM moved CROSS JOIN notes{busy}";

/// The finalizer's rows are locked with `SKIP LOCKED` first: a row another
/// session holds locked (an application's `SELECT ... FOR SHARE` in an open
/// transaction) is not waited on, or the whole batch, and every batch of
/// the worker after it, would wait with it. Rows of the batch that are
/// still this lease's in the statement's snapshot but were not locked come
/// back as `busy` (a NULL state), for the finalizer to write again later,
/// if the lease is alive (a dead lease's write is refused either way);
/// only looked for when some row of the batch was not locked (the first,
/// one-time condition), so the usual batch pays nothing for it.
const FINISH_LOCK: &str = ", locked AS (
                    SELECT j.id FROM {s}.jobs j JOIN input i ON j.id = i.id
                     WHERE j.attempt = i.attempt AND j.state = 'running' AND j.lease = $1
                       FOR UPDATE OF j SKIP LOCKED
                 )";
const FINISH_BUSY: &str = "
                 UNION ALL
                 SELECT i.id, NULL::text, NULL::text, NULL::bool FROM input i JOIN {s}.jobs j ON j.id = i.id
                  WHERE (SELECT count(*) FROM locked) < (SELECT count(*) FROM input)
                    AND j.attempt = i.attempt AND j.state = 'running' AND j.lease = $1
                    AND i.id NOT IN (SELECT id FROM locked)
                    -- A dead lease's write is refused, locked or not: not busy.
                    AND EXISTS (SELECT 1 FROM {s}.workers w WHERE w.id = $1 AND w.expires_at > statement_timestamp())";

/// The statements of one schema.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) schema: String,
    pub(crate) channel: String,
    pub(crate) insert: String,
    pub(crate) insert_uniform: String,
    pub(crate) register: String,
    pub(crate) heartbeat: String,
    pub(crate) retire: String,
    pub(crate) claim: String,
    pub(crate) claim_after: String,
    pub(crate) insert_one: String,
    pub(crate) finish: String,
    pub(crate) finish_in_tx: String,
    pub(crate) lookup: String,
    pub(crate) find_key: String,
    pub(crate) lock_for_cancel: String,
    pub(crate) cancel_queued: String,
    pub(crate) cancel_running: String,
    pub(crate) stats: String,
    pub(crate) stage: String,
    pub(crate) rescue: String,
    pub(crate) prune: String,
    pub(crate) prune_workers: String,
}

impl Sql {
    pub(crate) fn new(schema: &str) -> Sql {
        let channel = format!("corral_{schema}");
        let fill = |text: &str| {
            text.replace("{s}", schema)
                .replace("{chan}", &channel)
                .replace("{final}", FINAL)
                .replace("{max_lost}", &MAX_LOST_ATTEMPTS.to_string())
        };
        let notify = |rows: &str| fill(&NOTIFY_MOVED.replace("{rows}", rows));
        Sql {
            insert: fill(
                "INSERT INTO {s}.jobs (key, queue, kind, args, priority, run_at, state, max_attempts,
                                       timeout_ms, backoff, jitter, retention_ms, immediate)
                 SELECT key, queue, kind, args::jsonb, priority, r,
                        CASE WHEN r <= now() THEN 'available' ELSE 'scheduled' END,
                        max_attempts, timeout_ms, backoff::jsonb, jitter, retention_ms, immediate
                   FROM (SELECT u.*, COALESCE(u.start_at, now() + u.delay_ms * interval '1 millisecond') AS r
                           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[],
                                       $6::timestamptz[], $7::bigint[], $8::int[], $9::bigint[],
                                       $10::text[], $11::real[], $12::bigint[], $13::bool[]) WITH ORDINALITY
                                AS u(key, queue, kind, args, priority, start_at, delay_ms, max_attempts,
                                     timeout_ms, backoff, jitter, retention_ms, immediate, ord)) x
                  ORDER BY ord
                 RETURNING id",
            ),
            // A batch whose rows differ only in key and arguments (the usual
            // batch: one job type, one set of options): two arrays, the
            // options as scalars computed once (`OFFSET 0` keeps that
            // subquery from being pulled up into a per-row expression), and
            // the ids back as one array. Identity values rise in insertion
            // order, which is `ord`: sorted ids are the input's order.
            insert_uniform: fill(
                "WITH ins AS (
                    INSERT INTO {s}.jobs (key, queue, kind, args, priority, run_at, state, max_attempts,
                                          timeout_ms, backoff, jitter, retention_ms, immediate)
                    SELECT u.key, o.queue, o.kind, u.args::jsonb, o.priority, o.r, o.state, o.max_attempts,
                           o.timeout_ms, o.backoff, o.jitter, o.retention_ms, o.immediate
                      FROM (SELECT $2::text AS queue, $3::text AS kind, $5::int AS priority, t.r,
                                   CASE WHEN t.r <= now() THEN 'available' ELSE 'scheduled' END AS state,
                                   $8::int AS max_attempts, $9::bigint AS timeout_ms,
                                   $10::text::jsonb AS backoff, $11::real AS jitter,
                                   $12::bigint AS retention_ms, $13::bool AS immediate
                              FROM (SELECT COALESCE($6::timestamptz,
                                                    now() + $7::bigint * interval '1 millisecond') AS r) t
                            OFFSET 0) o
                     CROSS JOIN unnest($1::text[], $4::text[]) WITH ORDINALITY AS u(key, args, ord)
                     ORDER BY u.ord
                    RETURNING id
                 )
                 SELECT array_agg(id ORDER BY id) FROM ins",
            ),
            // One job: scalars, not arrays (`submit` is one job at a time).
            insert_one: fill(
                "INSERT INTO {s}.jobs (key, queue, kind, args, priority, run_at, state, max_attempts,
                                       timeout_ms, backoff, jitter, retention_ms, immediate)
                 SELECT $1::text, $2::text, $3::text, $4::text::jsonb, $5::int, r,
                        CASE WHEN r <= now() THEN 'available' ELSE 'scheduled' END,
                        $8::int, $9::bigint, $10::text::jsonb, $11::real, $12::bigint, $13::bool
                   FROM (SELECT COALESCE($6::timestamptz, now() + $7::bigint * interval '1 millisecond') AS r) x
                 RETURNING id",
            ),
            register: fill(
                "INSERT INTO {s}.workers (expires_at, info)
                 VALUES (now() + $1::bigint * interval '1 millisecond', $2) RETURNING id",
            ),
            // A lease is renewed only while alive: once expired it stays
            // expired, so a rescue acting on any snapshot is never undone.
            heartbeat: fill(
                "WITH w AS (
                    UPDATE {s}.workers SET expires_at = now() + $2::bigint * interval '1 millisecond'
                     WHERE id = $1 AND expires_at > now() RETURNING id
                 ), l AS (
                    INSERT INTO {s}.leader (name, lease, expires_at)
                    SELECT 'leader', w.id, now() + $2::bigint * interval '1 millisecond' FROM w
                    ON CONFLICT (name) DO UPDATE SET lease = EXCLUDED.lease, expires_at = EXCLUDED.expires_at
                     WHERE {s}.leader.lease = EXCLUDED.lease OR {s}.leader.expires_at < now()
                    RETURNING lease
                 )
                 SELECT (SELECT count(*) FROM w) AS alive, (SELECT count(*) FROM l) AS leader,
                        ARRAY(SELECT id FROM {s}.jobs
                               WHERE state = 'running' AND lease = $1 AND cancel_requested) AS cancels,
                        -- Rows of claims that answered (numbered below $4) the worker
                        -- does not hold: their answer was lost.
                        ARRAY(SELECT id FROM {s}.jobs
                               WHERE state = 'running' AND lease = $1 AND claim < $4
                                 AND id <> ALL($3) ORDER BY id) AS unknown,
                        ARRAY(SELECT attempt FROM {s}.jobs
                               WHERE state = 'running' AND lease = $1 AND claim < $4
                                 AND id <> ALL($3) ORDER BY id) AS unknown_attempts,
                        -- The holder's expiry as it was before this statement (for a
                        -- worker that did not take the row: when to contend again).
                        (SELECT (extract(epoch FROM expires_at - now()) * 1000)::bigint
                           FROM {s}.leader WHERE name = 'leader') AS leader_ms,
                        -- For the leader: when another lease expires (past: one did and
                        -- was not rescued yet; retired leases are expired, not -infinity),
                        -- and when the first finished row is due for pruning. So an
                        -- idle leader sends no rescue or prune that cannot have work.
                        (SELECT (extract(epoch FROM min(expires_at) - now()) * 1000)::bigint
                           FROM {s}.workers WHERE id <> $1 AND expires_at > '-infinity') AS rescue_ms,
                        (SELECT (extract(epoch FROM min(prune_at) - now()) * 1000)::bigint
                           FROM {s}.jobs WHERE prune_at IS NOT NULL) AS prune_ms",
            ),
            // Expiring (not deleting) keeps the row for the rescuer to find;
            // expired now (not `-infinity`), the leader's next heartbeat sees
            // it and rescues its running rows, if any. A retiring leader
            // tells the others, which contend for the row at once.
            retire: fill(
                "WITH w AS (UPDATE {s}.workers SET expires_at = now() WHERE id = $1),
                      l AS (DELETE FROM {s}.leader WHERE lease = $1 RETURNING lease)
                 SELECT pg_notify('{chan}', 'l') FROM l",
            ),
            claim: fill(&format!(
                "WITH picked AS (
                    SELECT id FROM {{s}}.jobs
                     WHERE state = 'available' AND queue = $2 AND kind = ANY($3) AND run_at <= now()
                     ORDER BY priority DESC, run_at, id
                     LIMIT $4
                     FOR UPDATE SKIP LOCKED
                 {}",
                CLAIMED.replace("{claim_no}", "$5").replace("{skipped}", SKIPPED)
            )),
            // The same past a cursor: a range scan of the claim index from
            // the cursor on (within its priority), not from the front, where
            // the entries of rows claimed since the last vacuum lie (dead,
            // and not removable while an open snapshot holds back vacuum).
            claim_after: fill(&format!(
                "WITH picked AS (
                    SELECT id FROM {{s}}.jobs
                     WHERE state = 'available' AND queue = $2 AND kind = ANY($3) AND run_at <= now()
                       AND priority = $5 AND (run_at, id) > ($6, $7)
                     ORDER BY priority DESC, run_at, id
                     LIMIT $4
                     FOR UPDATE SKIP LOCKED
                 {}",
                // Not asked past a cursor: a short claim there is followed
                // by one from the front anyway.
                CLAIMED.replace("{claim_no}", "$8").replace("{skipped}", "false")
            )),
            // The finalizer's: skips rows held locked (`FINISH_LOCK`).
            finish: fill(
                &FINISH
                    .replace("{lock}", FINISH_LOCK)
                    .replace("{only_locked}", "AND j.id IN (SELECT id FROM locked)")
                    .replace("{busy}", FINISH_BUSY)
                    .replace("{notes}", &notify("moved")),
            ),
            // In a body's own transaction (`complete_in`): waits for a
            // lock like any statement of the caller's, and never says busy.
            finish_in_tx: fill(
                &FINISH
                    .replace("{lock}", "")
                    .replace("{only_locked}", "")
                    .replace("{busy}", "")
                    .replace("{notes}", &notify("moved")),
            ),
            lookup: fill(
                "SELECT j.kind, j.state, j.output::text, j.error::text,
                        (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {s}.jobs_id_seq) AS last
                   FROM (SELECT 1) one LEFT JOIN {s}.jobs j ON j.id = $1",
            ),
            find_key: fill("SELECT id FROM {s}.jobs WHERE key = $1 ORDER BY id DESC LIMIT 1"),
            lock_for_cancel: fill("SELECT state FROM {s}.jobs WHERE id = $1 FOR UPDATE"),
            cancel_queued: fill(
                "UPDATE {s}.jobs SET state = 'cancelled', finished_at = now(),
                        prune_at = now() + retention_ms * interval '1 millisecond'
                  WHERE id = $1",
            ),
            cancel_running: fill("UPDATE {s}.jobs SET cancel_requested = true WHERE id = $1"),
            // One branch per live state, each with a literal predicate, so
            // each reads its small partial index; finished rows are counted
            // while retained (their cost grows with the retention).
            stats: fill(
                "SELECT queue, 'available'::text, count(*) FROM {s}.jobs WHERE state = 'available' GROUP BY queue
                 UNION ALL
                 SELECT queue, 'scheduled', count(*) FROM {s}.jobs WHERE state = 'scheduled' GROUP BY queue
                 UNION ALL
                 SELECT queue, 'running', count(*) FROM {s}.jobs WHERE state = 'running' GROUP BY queue
                 UNION ALL
                 SELECT queue, state, count(*) FROM {s}.jobs WHERE state IN {final} GROUP BY queue, state",
            ),
            stage: fill(&format!(
                "WITH due AS (
                    SELECT id FROM {{s}}.jobs WHERE state = 'scheduled' AND run_at <= now()
                     ORDER BY run_at LIMIT $1 FOR UPDATE SKIP LOCKED
                 ), moved AS (
                    UPDATE {{s}}.jobs j SET state = 'available' FROM due WHERE j.id = due.id
                    RETURNING j.id, j.state, j.queue
                 ), {}
                 SELECT (SELECT count(*) FROM moved) AS staged, (SELECT sent FROM notes) AS sent,
                        (SELECT (extract(epoch FROM min(run_at) - now()) * 1000)::bigint
                           FROM {{s}}.jobs WHERE state = 'scheduled' AND run_at > now()) AS next_ms,
                        -- Due rows a short stage left scheduled: another session held
                        -- them locked (`SKIP LOCKED` passed them over). No notice comes
                        -- when that lock goes: the leader stages again after a backoff.
                        -- The snapshot still shows the rows staged here as scheduled.
                        ((SELECT count(*) FROM moved) < $1 AND EXISTS (
                            SELECT 1 FROM {{s}}.jobs x WHERE x.state = 'scheduled' AND x.run_at <= now()
                               AND x.id NOT IN (SELECT id FROM moved))) AS skipped",
                notify("moved")
            )),
            // Self-guarding: the join on an expired lease is re-checked on
            // the row it changes (a row finished and claimed again meanwhile
            // holds a live lease and is left alone), and an expired lease
            // never comes back.
            //
            // The dead leases are marked (`-infinity`) by an update, not
            // just read: that locks their rows, so a heartbeat racing this
            // rescue either committed first (and its lease is not dead
            // here) or waits and then finds its lease ended: a heartbeat
            // that began before the expiry cannot revive a lease whose
            // jobs this rescue moved. Rows already at `-infinity` (rescued
            // leases, or retired by an older version) are included: their
            // running rows, if any, are rescued too. `$1` is the caller's
            // own lease, left out of the next expiry (it keeps renewing it).
            rescue: fill(&format!(
                "WITH dead AS (
                    UPDATE {{s}}.workers SET expires_at = '-infinity' WHERE expires_at <= now()
                    RETURNING id
                 ), moved AS (
                    UPDATE {{s}}.jobs j SET
                        lost = j.lost + 1,
                        lease = NULL,
                        state = CASE WHEN j.cancel_requested THEN 'cancelled'
                                     WHEN j.lost + 1 >= {{max_lost}} THEN 'failed'
                                     ELSE 'available' END,
                        error = CASE WHEN NOT j.cancel_requested AND j.lost + 1 >= {{max_lost}}
                                     THEN jsonb_build_object('abandoned', jsonb_build_object('attempts', j.attempt))
                                     ELSE j.error END,
                        finished_at = CASE WHEN j.cancel_requested OR j.lost + 1 >= {{max_lost}} THEN now() END,
                        prune_at = CASE WHEN j.cancel_requested OR j.lost + 1 >= {{max_lost}}
                                        THEN now() + j.retention_ms * interval '1 millisecond' END
                      FROM dead
                     WHERE j.lease = dead.id AND j.state = 'running'
                    RETURNING j.id, j.state, j.queue
                 ), {}
                 SELECT (SELECT count(*) FROM moved CROSS JOIN notes) AS rescued,
                        (SELECT (extract(epoch FROM min(expires_at) - now()) * 1000)::bigint
                           FROM {{s}}.workers WHERE expires_at > now() AND id <> $1) AS next_expiry_ms",
                notify("moved")
            )),
            prune: fill(
                "WITH old AS (
                    SELECT id FROM {s}.jobs WHERE prune_at <= now()
                     ORDER BY prune_at LIMIT $1 FOR UPDATE SKIP LOCKED
                 ), gone AS (
                    DELETE FROM {s}.jobs j USING old WHERE j.id = old.id RETURNING j.id
                 )
                 SELECT count(*) FROM gone",
            ),
            prune_workers: fill(
                "DELETE FROM {s}.workers w WHERE expires_at < now() - interval '1 hour'
                   AND NOT EXISTS (SELECT 1 FROM {s}.jobs j WHERE j.state = 'running' AND j.lease = w.id)",
            ),
            schema: schema.to_owned(),
            channel,
        }
    }

    /// The newest migration's version.
    pub(crate) fn latest_migration(&self) -> i32 {
        MIGRATIONS.last().map_or(0, |(v, _)| *v)
    }

    /// The migrations for this schema, in order.
    pub(crate) fn migrations(&self) -> Vec<(i32, String)> {
        MIGRATIONS
            .iter()
            .map(|(v, text)| {
                (
                    *v,
                    text.replace("{s}", &self.schema)
                        .replace("{chan}", &self.channel),
                )
            })
            .collect()
    }
}
