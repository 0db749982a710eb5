//! `corral-bench`: measures corral against the most direct raw-tokio program
//! doing the same job (the "floor"), workload by workload (W1-W11 of
//! `bench/README.md`), and prints one table of medians, ratios
//! corral/floor, targets and whether each is met.
//!
//! ```text
//! cargo run -p corral-bench --release -- [--quick] [--reps N] [--only W1,W3] [--markdown FILE]
//! cargo run -p corral-bench --release --features count-alloc -- ...   # with heap numbers
//! cargo run -p corral-bench --release -- --callgrind [--n N] [--only W1,W4]   # instructions per task
//! ```
//!
//! Every (workload, variant, side) runs in its own process: the parent
//! ([`parent`]) re-executes this binary with hidden arguments (`--child W1
//! --side corral --workers 2 --driver block_on --variant -`), the child
//! ([`child`]) runs it on a tokio multi-thread runtime with 2 worker threads
//! and prints one `RESULT key=value ...` line, and the parent tabulates
//! ([`report`], [`rows`]). A correctness failure makes the child, and then
//! the parent, exit non-zero.
//!
//! Modules: [`workloads`] (the programs), [`alloc`] (the counting allocator
//! behind the `count-alloc` feature), [`stats`] (median, percentiles, RSS,
//! CPU time, the machine), [`spec`] (what a child runs), [`callgrind`]
//! (instruction counts per task under valgrind's callgrind).

mod alloc;
mod callgrind;
mod child;
mod parent;
mod report;
mod rows;
mod spec;
mod stats;
mod workloads;

/// Counts live heap bytes and allocations (enabled by the memory workloads).
#[cfg(feature = "count-alloc")]
#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let status = if args.first().map(String::as_str) == Some("--child") {
        child::main(&args)
    } else {
        parent::main(&args)
    };
    std::process::exit(status);
}
