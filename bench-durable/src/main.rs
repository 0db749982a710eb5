//! `corral-bench-durable`: measures `corral-durable` on PostgreSQL against
//! the plain-SQL floor (the least a queue on the same table can do),
//! workloads D1-D8 of `shared/spec/benchmarks-durable.md`, and prints one
//! table of medians, ratios to the floor, targets and whether each is met.
//!
//! ```text
//! cargo run -p corral-bench-durable --release -- [--quick] [--reps N] [--only D1,D3] [--markdown FILE] [--url URL]
//! ```
//!
//! The parent ([`parent`]) starts a counting proxy ([`proxy`]) in front of
//! the server and re-executes this binary once per (workload, variant,
//! side, repetition) with hidden arguments; the child ([`child`]) runs one
//! program and prints a `RESULT key=value ...` line. Workloads that need
//! the worker in a separate process start a third process ([`worker`]).

mod child;
mod jobs;
mod parent;
#[cfg(feature = "peers")]
mod peers;
mod pg;
mod proxy;
mod report;
mod worker;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let status = match args.first().map(String::as_str) {
        Some("--child") => parent::child_main(&args),
        Some("--worker") => worker::main(&args),
        #[cfg(feature = "peers")]
        Some("--peer-worker") => peers::worker_main(&args),
        _ => parent::main(&args),
    };
    std::process::exit(status);
}
