//! # corral-durable
//!
//! corral's engine across processes and machines: jobs stored in
//! PostgreSQL (or, with the same API, in memory), claimed by workers that
//! run them on corral's in-process [`corral::Cluster`].
//!
//! ```text
//!  Client::enqueue(job).submit() ─► store (jobs table) ─► Worker: claim (SKIP LOCKED, n rows)
//!        │                             ▲   │ NOTIFY         ─► corral::Cluster runs the attempt
//!        │ JobHandle / subscribe ◄─────┘   └─ fenced batch write ◄── outcome + durable retry decision
//! ```
//!
//! - **Job model**: a job is a type ([`Job`]): its value is the serialized
//!   arguments, [`Job::KIND`] names it in the store, and its code (run,
//!   retry decision, backoff, hooks) ships with the worker. Everything on
//!   the [`EnqueueBuilder`] is data.
//! - **At least once**: a worker holds a lease it renews; when the lease
//!   expires its jobs are rescued and run again. Every write of a running
//!   job is fenced on the job, its attempt, its running state and a live
//!   lease, so a worker that lost its lease cannot overwrite what another
//!   did, and learns it lost ([`WorkerStats::lost`]). A body can commit its
//!   own database writes together with its completion
//!   ([`JobContext::complete_in`]).
//! - **Order**: among due jobs of a queue, higher priority first, then
//!   earlier start, then insertion order, exactly for one worker claiming;
//!   with several workers claiming at once, equal-priority order is best
//!   effort (each claim takes the first rows not locked by another).
//! - **Time**: start times are wall-clock times judged by the store's
//!   clock; the leader stages scheduled rows at their time (no polling
//!   period) and notifies the queue.
//! - **Wake-ups**: LISTEN/NOTIFY on one connection per store instance, with
//!   a slow fallback poll, or a poll-only mode; no notice is lost while a
//!   claim is in flight or every slot is busy.
//!
//! ## Decisions where the contract is silent
//! - Submitting a live id (key) again is an error,
//!   [`SubmitError::DuplicateId`]; a finished job's key may be reused.
//! - An attempt lost with its worker counts as an attempt
//!   ([`JobContext::attempt`] is honest) but not against the retries; a job
//!   whose attempts are lost [`MAX_LOST_ATTEMPTS`] times ends as
//!   [`JobError::Abandoned`] (a job that kills its worker must not loop).
//! - A snooze, and a worker's stop, give the attempt back.
//! - A cancel request wins over whatever the running body returns next.
//! - Handles wait through store outages instead of failing.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod client;
mod error;
mod id;
mod job;
mod options;
mod store;
mod worker;

pub use crate::client::{
    Backend, CancelOutcome, Client, EnqueueBuilder, JobHandle, QueueStats, DEFAULT_MAX_PAYLOAD,
    DEFAULT_QUEUE, DEFAULT_RETENTION, MAX_KEY_LEN, MAX_QUEUE_LEN,
};
pub use crate::error::{
    CompleteError, JobError, StoreError, SubmitError, SubscribeError, WorkerError,
};
pub use crate::id::{JobId, JobRef};
pub use crate::job::{Ending, Job, JobContext, JobResult};
pub use crate::options::Backoff;
pub use crate::store::memory::MemoryStore;
pub use crate::store::pg::{PgStore, PgStoreBuilder};
pub use crate::worker::{Worker, WorkerBuilder, WorkerStats, DEFAULT_LEASE_TTL, MAX_LEASE_TTL};
pub use corral::RetryMode;

/// How many times a job's attempt may be lost with its worker's lease
/// before the job is given up as [`JobError::Abandoned`].
pub const MAX_LOST_ATTEMPTS: i32 = 5;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
