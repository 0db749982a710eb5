//! Error types: a job's outcome error, and the errors of the client's and
//! the worker's own operations.

use std::time::Duration;

use crate::id::{JobId, JobRef};

/// Why a durable job did not produce its output.
///
/// | variant | cause | retried? |
/// |---|---|---|
/// | [`Failed`](JobError::Failed) | the body ended with an error | if retries remain, the job's `retry_if` agrees, and the body did not call it permanent |
/// | [`Panicked`](JobError::Panicked) | the body panicked | like `Failed` |
/// | [`TimedOut`](JobError::TimedOut) | an attempt ran past its timeout | like `Failed` |
/// | [`Cancelled`](JobError::Cancelled) | [`Client::cancel`](crate::Client::cancel) | never |
/// | [`Abandoned`](JobError::Abandoned) | its workers' leases expired too often (a job that kills its worker) | never |
/// | [`Undecodable`](JobError::Undecodable) | stored arguments, output or error no longer decode as the job type's | never |
/// | [`Expired`](JobError::Expired) | the outcome was pruned after its retention before it was read | - |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError<E> {
    /// The body's own error, from its last attempt.
    #[error("job failed: {0}")]
    Failed(E),
    /// The body panicked on its last attempt.
    #[error("job panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The last attempt ran past the job's timeout.
    #[error("job timed out after {limit:?}")]
    TimedOut {
        /// The per-attempt timeout.
        limit: Duration,
    },
    /// The job was cancelled by id.
    #[error("job was cancelled")]
    Cancelled,
    /// The job's attempts were lost with their workers' leases
    /// [`MAX_LOST_ATTEMPTS`](crate::MAX_LOST_ATTEMPTS) times; it is not run again.
    #[error("job abandoned after {attempts} attempts lost with their workers")]
    Abandoned {
        /// Attempts started in all.
        attempts: u32,
    },
    /// Stored data no longer decodes as the job type's (arguments, output or error).
    #[error("stored job data does not decode: {message}")]
    Undecodable {
        /// What failed to decode, and why.
        message: String,
    },
    /// The job finished, and its outcome was pruned after its retention.
    #[error("the job's outcome has expired")]
    Expired,
}

impl<E> JobError<E> {
    /// `true` if the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JobError::Cancelled)
    }

    /// The body's own error, if that is what this is.
    pub fn failure(&self) -> Option<&E> {
        match self {
            JobError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// A database (or connection pool) error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// PostgreSQL answered with an error, or the connection failed. Shown
    /// with the server's message and SQLSTATE (or the connection failure's
    /// cause), which the driver's own `Display` leaves out.
    #[error("database error: {}", db_text(.0))]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be taken from the pool.
    #[error("connection pool error: {0}")]
    Pool(String),
    /// Migrating the schema failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A live job already holds this key.
    #[error("a live job already holds key {0:?}")]
    DuplicateKey(String),
    /// The schema lacks migrations this build needs: a store connected
    /// with `migrate(false)` to a schema nobody migrated, or that an older
    /// build migrated. Apply
    /// [`PgStore::migration_sql`](crate::PgStore::migration_sql), or
    /// connect once with `migrate(true)`. Reported by a worker's start:
    /// its statements would fail on every claim.
    #[error(
        "schema {schema:?} is at migration {found}, this build needs {needed}: \
         apply PgStore::migration_sql or connect with migrate(true)"
    )]
    SchemaBehind {
        /// The schema.
        schema: String,
        /// Its newest applied migration (0: none, or no schema at all).
        found: i32,
        /// The newest migration of this build.
        needed: i32,
    },
}

impl StoreError {
    /// PostgreSQL refused the data of the statement, not for the state of
    /// the connection or the server: retrying the same statement cannot
    /// succeed, and splitting a batch finds the row at fault. SQLSTATE
    /// class 22 (data exception: a bad value, a NUL in `jsonb`), 23
    /// (integrity constraint violation: a value the schema's checks refuse)
    /// and 54 (program limit exceeded: `jsonb` nested deeper than
    /// `max_stack_depth` allows is 54001, one too large is 54000). Outages
    /// (classes 08, 53, 57, 58, a pool error) and conflicts (40) are not.
    pub(crate) fn is_data(&self) -> bool {
        matches!(self, StoreError::Db(e) if e.code().is_some_and(|c| is_data_code(c.code())))
    }
}

impl StoreError {
    /// What the database said, for a message: its own text and SQLSTATE
    /// (the `Display` of a server error is only "db error").
    pub(crate) fn why(&self) -> String {
        match self {
            StoreError::Db(e) => db_text(e),
            _ => self.to_string(),
        }
    }
}

/// A driver error as a message that says what went wrong: a server error's
/// own text and SQLSTATE, or another error with its cause. The driver's
/// `Display` is only its kind ("db error", "error communicating with the
/// server"), which told a user or a log reader nothing.
fn db_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Whether SQLSTATE `code` is about the statement's data (see
/// [`StoreError::is_data`]).
fn is_data_code(code: &str) -> bool {
    ["22", "23", "54"]
        .iter()
        .any(|class| code.starts_with(class))
}

/// `true` if JSON `text` holds an escaped NUL character, which PostgreSQL's
/// `jsonb` cannot store (a literal backslash before `u0000` does not count).
pub(crate) fn has_nul(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices("\\u0000").any(|(i, _)| {
        let slashes = bytes[..=i]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        slashes % 2 == 1
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_errors_are_told_from_outages() {
        // Data: bad values, a NUL in jsonb, constraints, jsonb too deep or
        // too large.
        for code in ["22P02", "22P05", "22023", "23514", "54000", "54001"] {
            assert!(super::is_data_code(code), "{code}");
        }
        // Outages and conflicts: retried.
        for code in [
            "08006", "53300", "57P01", "57014", "58030", "40001", "40P01", "XX000",
        ] {
            assert!(!super::is_data_code(code), "{code}");
        }
    }

    #[test]
    fn nul_escapes_are_told_from_literal_backslashes() {
        let nul = serde_json::to_string("a\0b").unwrap();
        assert!(super::has_nul(&nul), "{nul}");
        let literal = serde_json::to_string("a\\u0000b").unwrap();
        assert!(!super::has_nul(&literal), "{literal}");
        let both = serde_json::to_string("\\\0").unwrap();
        assert!(super::has_nul(&both), "{both}");
        assert!(!super::has_nul("{\"plain\":1}"));
    }
}

/// Why a submit was refused. Nothing was inserted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The key is empty or longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    #[error("invalid job id: {0}")]
    InvalidId(&'static str),
    /// An option is out of range.
    #[error("invalid job option `{option}`: {reason}")]
    InvalidOption {
        /// The builder method whose value was rejected.
        option: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A scheduled, available or running job already holds this key.
    #[error("a live job already has id {0:?}")]
    DuplicateId(String),
    /// The encoded arguments are larger than the limit.
    #[error("job arguments are {size} bytes, over the limit of {limit}")]
    PayloadTooLarge {
        /// Size of the encoded arguments.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// The arguments could not be serialized.
    #[error("job arguments do not serialize: {0}")]
    Encode(String),
    /// The database could not be reached or refused the insert.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for SubmitError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateKey(k) => SubmitError::DuplicateId(k),
            e => SubmitError::Store(e),
        }
    }
}

/// Why a subscribe (or a cancel) found nothing to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// By id: no job ever had this id. By key: no retained job has this
    /// key. A key is forgotten when its job's row is pruned (keeping every
    /// key ever used would grow without bound), so a job pruned after its
    /// retention is `NotFound` by key, and [`Expired`](Self::Expired) by id.
    #[error("no job {0:?}")]
    NotFound(JobRef),
    /// The job of this id existed, and its row was pruned after its
    /// retention (by key such a job is [`NotFound`](Self::NotFound)).
    #[error("job {0} has expired")]
    Expired(JobId),
    /// The job is of another kind than the type asked for.
    #[error("job is of kind {found:?}, not {expected:?}")]
    KindMismatch {
        /// The kind (and aliases) of the type asked for.
        expected: &'static str,
        /// The stored kind.
        found: String,
    },
    /// The database could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why [`JobContext::complete_in`](crate::JobContext::complete_in) did not
/// record the completion. Roll the transaction back on any of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompleteError {
    /// This attempt no longer holds the job (its lease expired; another
    /// worker may run it): the completion would be refused.
    #[error("this attempt lost the job with its lease")]
    LeaseLost,
    /// The job was cancelled while it ran: the row now says `cancelled`,
    /// and the body's own writes should not stand.
    #[error("the job was cancelled while it ran")]
    Cancelled,
    /// The job runs on a store that is not PostgreSQL.
    #[error("completing in a transaction needs a PgStore")]
    NotPostgres,
    /// The output could not be serialized.
    #[error("output does not serialize: {0}")]
    Encode(String),
    /// The statement failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration is invalid (see the message).
    #[error("invalid worker configuration: {0}")]
    Config(&'static str),
    /// Called outside a tokio runtime, or twice.
    #[error("worker cannot start: {0}")]
    Start(&'static str),
    /// The store could not register the worker.
    #[error(transparent)]
    Store(#[from] StoreError),
}
