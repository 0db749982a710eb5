//! The child process: runs exactly one (workload, side, workers, driver,
//! variant) on a fresh tokio multi-thread runtime with 2 worker threads, and
//! prints one line for the parent:
//!
//! ```text
//! RESULT rate=1234567.8 secs=0.16 ...
//! ```
//!
//! With `--n N` the workload runs `N` tasks instead of its size-table count;
//! with `--callgrind` its measured section is marked for callgrind (see
//! [`crate::callgrind`]).
//!
//! A broken correctness check (wrong value, inversions, a handle that did
//! not answer as it must) is printed as `FAIL ...` on stderr after the
//! `RESULT` line, and the child exits with status 1.

use std::future::Future;

use tokio::runtime::Runtime;

use crate::alloc;
use crate::callgrind;
use crate::spec::{
    Driver, Side, Spec, W10_CHAIN, W10_FAN, W10_PENDING, W10_PENDING_ANY, W11_BURST1,
    W11_IDLE_LIMITER, W12_COLD, W12_HOT, W12_MANY, W12_WAITING, W6_NAMED,
};
use crate::workloads::{
    deps, keys, latency, limits, memory, order, throughput, timers, Outcome, Sizes,
};

/// Runs the child given its arguments (starting with `--child`); returns
/// the process exit status.
pub fn main(args: &[String]) -> i32 {
    let (spec, opts) = match Spec::parse(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("FAIL bad child arguments: {e}");
            return 2;
        }
    };
    let memory = matches!(spec.workload, "W5" | "W6" | "W9");
    let pending = matches!(spec.variant, W10_PENDING | W10_PENDING_ANY);
    let waiting = spec.workload == "W12" && spec.variant == W12_WAITING;
    if memory || (spec.workload == "W10" && pending) || waiting {
        alloc::enable();
    }
    if opts.callgrind {
        callgrind::enable_marks();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("FAIL runtime: {e}");
            return 2;
        }
    };
    let mut sizes = Sizes::new(opts.quick);
    if let Some(n) = opts.n {
        sizes = sizes.with_n(n);
    }
    let outcome = run(&rt, &spec, &sizes);
    drop(rt);
    match outcome {
        Ok(report) => {
            let fields: Vec<String> = report
                .values
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("RESULT {}", fields.join(" "));
            for f in &report.failures {
                eprintln!("FAIL {spec}: {f}");
            }
            i32::from(!report.failures.is_empty())
        }
        Err(e) => {
            eprintln!("FAIL {spec}: {e}");
            1
        }
    }
}

/// Runs the workload loop where the driver says.
fn drive<F>(rt: &Runtime, driver: Driver, fut: F) -> Outcome
where
    F: Future<Output = Outcome> + Send + 'static,
{
    match driver {
        Driver::BlockOn => rt.block_on(fut),
        Driver::Spawned => rt.block_on(async {
            tokio::spawn(fut)
                .await
                .unwrap_or_else(|e| Err(format!("workload task: {e}")))
        }),
    }
}

fn run(rt: &Runtime, spec: &Spec, s: &Sizes) -> Outcome {
    let (w, d) = (spec.workers, spec.driver);
    let variant = spec.variant;
    match (spec.workload, spec.side) {
        ("W1", Side::Corral) if variant == W11_IDLE_LIMITER => {
            drive(rt, d, limits::w1_with_idle_limiter(s.w1, w))
        }
        ("W1", Side::Corral) => drive(rt, d, throughput::w1_corral(s.w1, w)),
        ("W1", Side::Floor) => drive(rt, d, throughput::w1_floor(s.w1, w)),
        ("W2", Side::Corral) => drive(rt, d, order::w2_corral(s.w2, variant)),
        ("W2", Side::Floor) => order::w2_floor(s.w2, variant),
        ("W3", Side::Corral) => drive(rt, d, timers::w3_corral(s.w3, s.w3_from, s.w3_to, w)),
        ("W3", Side::Floor) => drive(rt, d, timers::w3_floor(s.w3, s.w3_from, s.w3_to)),
        ("W4", Side::Corral) => drive(rt, d, latency::w4_corral(s.w4, w)),
        ("W4", Side::Floor) => drive(rt, d, latency::w4_floor(s.w4)),
        ("W5", Side::Corral) => drive(rt, d, memory::w5_corral(s.w5, s.settle, w)),
        ("W5", Side::Floor) => drive(rt, d, memory::w5_floor(s.w5, s.settle)),
        ("W6", Side::Corral) => {
            let named = variant == W6_NAMED;
            drive(rt, d, memory::w6_corral(s.w6, s.settle, w, named))
        }
        ("W6", Side::Floor) => drive(rt, d, memory::w6_floor(s.w6, s.settle)),
        ("W7", Side::Corral) => drive(rt, d, throughput::w7_corral(s.w7, w)),
        ("W7", Side::Floor) => drive(rt, d, throughput::w7_floor(s.w7, w)),
        ("W8", Side::Corral) => drive(rt, d, throughput::w8_corral(s.w8, w)),
        ("W8", Side::Floor) => drive(rt, d, throughput::w8_floor(s.w8, w)),
        ("W9", Side::Corral) => drive(
            rt,
            d,
            memory::w9_corral(s.w9, s.w9_checkpoint, s.w9_wave, w),
        ),
        ("W9", Side::Floor) => Err("W9 has no floor program".into()),
        ("W10", side) => w10(rt, spec, s, side),
        ("W11", side) => {
            let burst = if variant == W11_BURST1 {
                1
            } else {
                limits::BURST
            };
            match side {
                Side::Corral => drive(rt, d, limits::w11_corral(s.w11, w, burst)),
                Side::Floor => drive(rt, d, limits::w11_floor(s.w11, burst)),
            }
        }
        ("W12", side) => w12(rt, spec, s, side),
        (other, _) => Err(format!("unknown workload {other}")),
    }
}

/// W10: the variant picks the program; the pending variant's floor side is
/// corral's plain pending task (W5's corral program at W10's size).
fn w10(rt: &Runtime, spec: &Spec, s: &Sizes, side: Side) -> Outcome {
    let (w, d) = (spec.workers, spec.driver);
    match (spec.variant, side) {
        (W10_CHAIN, Side::Corral) => drive(rt, d, deps::chain_corral(s.w10, w)),
        (W10_CHAIN, Side::Floor) => drive(rt, d, deps::chain_floor(s.w10, w)),
        (W10_FAN, Side::Corral) => drive(rt, d, deps::fan_corral(s.w10, w)),
        (W10_FAN, Side::Floor) => drive(rt, d, deps::fan_floor(s.w10, w)),
        (v @ (W10_PENDING | W10_PENDING_ANY), Side::Corral) => {
            let typed = v == W10_PENDING;
            drive(
                rt,
                d,
                deps::pending_corral(s.w10_pending, s.settle, w, typed),
            )
        }
        (W10_PENDING | W10_PENDING_ANY, Side::Floor) => {
            drive(rt, d, memory::w5_corral(s.w10_pending, s.settle, w))
        }
        (other, _) => Err(format!("W10 has no variant {other}")),
    }
}

/// W12: the variant picks the program. The rate variants have no floor
/// (they are compared with W1 corral); the waiting variant's floor side is
/// corral's plain pending task (W5's corral program at W12's size).
fn w12(rt: &Runtime, spec: &Spec, s: &Sizes, side: Side) -> Outcome {
    let (w, d) = (spec.workers, spec.driver);
    match (spec.variant, side) {
        (W12_MANY, Side::Corral) => drive(rt, d, keys::many_keys_corral(s.w12, w)),
        (W12_HOT, Side::Corral) => drive(rt, d, keys::hot_key_corral(s.w12, w, true)),
        (W12_COLD, Side::Corral) => drive(rt, d, keys::hot_key_corral(s.w12, w, false)),
        (W12_WAITING, Side::Corral) => {
            drive(rt, d, keys::waiting_corral(s.w12_waiting, s.settle, w))
        }
        (W12_WAITING, Side::Floor) => drive(rt, d, memory::w5_corral(s.w12_waiting, s.settle, w)),
        (other, _) => Err(format!("W12 has no {side} program for variant {other}")),
    }
}
