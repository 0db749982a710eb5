//! Job identity.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The id a store gives every job: unique and increasing for the life of the
/// store (a PostgreSQL identity column). Any process can use it to
/// [`subscribe`](crate::Client::subscribe) or [`cancel`](crate::Client::cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub i64);

impl JobId {
    /// The number itself (the `id` column).
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A reference to a job: its [`JobId`], or the key given with
/// [`EnqueueBuilder::id`](crate::EnqueueBuilder::id). A key names the live
/// job holding it, or else the newest retained one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JobRef {
    /// By the store's id.
    Id(JobId),
    /// By the user's key.
    Key(String),
}

impl From<JobId> for JobRef {
    fn from(id: JobId) -> Self {
        JobRef::Id(id)
    }
}

impl From<&str> for JobRef {
    fn from(key: &str) -> Self {
        JobRef::Key(key.to_owned())
    }
}

impl From<String> for JobRef {
    fn from(key: String) -> Self {
        JobRef::Key(key)
    }
}
