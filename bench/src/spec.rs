//! What one child process runs: a workload, a side (corral or its raw-tokio
//! floor), a worker count, a driver and a variant, and how that travels on
//! the child's command line (`--child W1 --side corral --workers 2 --driver
//! block_on --variant - [--quick] [--n N] [--callgrind]`).

use std::fmt;

/// Which program runs the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Through corral.
    Corral,
    /// The most direct raw-tokio program doing the same job.
    Floor,
}

/// Where the workload loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// In `Runtime::block_on` on the main thread (the body of `#[tokio::main]`).
    BlockOn,
    /// Inside a `tokio::spawn`ed task, on a runtime worker thread.
    Spawned,
}

/// One (workload, side, workers, driver, variant) combination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spec {
    /// `W1` .. `W12`.
    pub workload: &'static str,
    /// Corral or floor.
    pub side: Side,
    /// Corral workers, and the floor's semaphore size.
    pub workers: usize,
    /// Where the loop runs.
    pub driver: Driver,
    /// Workload-specific variant (`distinct` / `same` for W2, `w2-ref` for
    /// W2's reference W1 runs, `named` for W6 by user string id, `chain`,
    /// `fan`, `pending`, `pending-any` for W10 and `w10-ref` for W10's reference W1 runs,
    /// `w11-ref` and `w11-limiter` for W11's W1 runs), else `-`.
    pub variant: &'static str,
}

pub const WORKLOADS: [&str; 12] = [
    "W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10", "W11", "W12",
];
const VARIANTS: [&str; 18] = [
    "-",
    "distinct",
    "same",
    W2_REFERENCE,
    W6_NAMED,
    W10_CHAIN,
    W10_FAN,
    W10_PENDING,
    W10_PENDING_ANY,
    W10_REFERENCE,
    W11_REFERENCE,
    W11_IDLE_LIMITER,
    W11_BURST1,
    W12_MANY,
    W12_HOT,
    W12_COLD,
    W12_WAITING,
    W12_REFERENCE,
];

/// The variant of W2's own W1-floor runs: the same program as W1's floor at
/// 1 worker, recorded apart so that W2's ratios pair runs made side by side
/// with W2's (and W1's row keeps only its own runs).
pub const W2_REFERENCE: &str = "w2-ref";

/// The variant of W6 that names every task with a user string id and
/// cancels it by that string (the default variant cancels by the generated
/// id). The floor program is the same for both.
pub const W6_NAMED: &str = "named";

/// W10's chain variant.
pub const W10_CHAIN: &str = "chain";
/// W10's fan-out/fan-in variant.
pub const W10_FAN: &str = "fan";
/// W10's waiting-dependent memory variant (its floor side is corral's plain
/// pending task, W5's corral program).
pub const W10_PENDING: &str = "pending";
/// W10's pending variant with ordering-only edges (`After::any`).
pub const W10_PENDING_ANY: &str = "pending-any";
/// The variant of W10's own W1 corral runs (2 workers, `block_on`): the
/// plain-task throughput W10's chain and fan are compared with, recorded
/// apart so that W10 pairs runs made side by side with its own.
pub const W10_REFERENCE: &str = "w10-ref";

/// The variant of W11's own W1 corral runs (2 workers, `block_on`): plain
/// W1, run in W11's group so that the idle-limiter run pairs with it.
pub const W11_REFERENCE: &str = "w11-ref";
/// W1's corral program on a cluster that has a limiter its tasks do not
/// name (W11).
pub const W11_IDLE_LIMITER: &str = "w11-limiter";

/// W11 with a burst of 1.
pub const W11_BURST1: &str = "burst1";

/// W12's variant of 1,000 keys with limit 1.
pub const W12_MANY: &str = "many-keys";
/// W12's variant of one key with limit 2 among tasks of other keys.
pub const W12_HOT: &str = "hot-key";
/// W12's hot-key program without the hot key's tasks: the others alone.
pub const W12_COLD: &str = "cold-key";
/// W12's memory variant: tasks waiting on a paused key (its floor side is
/// corral's plain pending task, W5's corral program).
pub const W12_WAITING: &str = "waiting";
/// The variant of W12's own W1 corral runs (2 workers, `block_on`).
pub const W12_REFERENCE: &str = "w12-ref";

/// The child's options besides its spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildOptions {
    /// `--quick`: the small sizes.
    pub quick: bool,
    /// `--n N`: the workload's task count instead of the size table's (W1
    /// tasks, W4 round trips, W6 cancels, W7 tasks over all producers).
    pub n: Option<usize>,
    /// `--callgrind`: mark the measured section with callgrind client
    /// requests (zero the counters at its start, dump them at its end).
    pub callgrind: bool,
}

impl Spec {
    /// A spec with the `block_on` driver and no variant.
    pub fn new(workload: &'static str, side: Side, workers: usize) -> Self {
        Spec {
            workload,
            side,
            workers,
            driver: Driver::BlockOn,
            variant: "-",
        }
    }

    /// This spec with another driver.
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = driver;
        self
    }

    /// This spec with another variant.
    pub fn variant(mut self, variant: &'static str) -> Self {
        self.variant = variant;
        self
    }

    /// The hidden arguments that make the binary run this spec as a child.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--child".into(),
            self.workload.into(),
            "--side".into(),
            self.side.to_string(),
            "--workers".into(),
            self.workers.to_string(),
            "--driver".into(),
            self.driver.to_string(),
            "--variant".into(),
            self.variant.into(),
        ]
    }

    /// Parses the arguments written by [`to_args`](Self::to_args) (plus the
    /// optional `--quick`, `--n N` and `--callgrind`), returning the spec and
    /// the child's other options.
    pub fn parse(args: &[String]) -> Result<(Spec, ChildOptions), String> {
        let mut spec = Spec::new("W1", Side::Corral, 1);
        let mut opts = ChildOptions::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--child" => spec.workload = pick(&WORKLOADS, value()?)?,
                "--side" => {
                    spec.side = match value()?.as_str() {
                        "corral" => Side::Corral,
                        "floor" => Side::Floor,
                        other => return Err(format!("unknown side {other}")),
                    }
                }
                "--workers" => {
                    spec.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?
                }
                "--driver" => {
                    spec.driver = match value()?.as_str() {
                        "block_on" => Driver::BlockOn,
                        "spawned" => Driver::Spawned,
                        other => return Err(format!("unknown driver {other}")),
                    }
                }
                "--variant" => spec.variant = pick(&VARIANTS, value()?)?,
                "--quick" => opts.quick = true,
                "--n" => {
                    let n = value()?.parse().map_err(|e| format!("--n: {e}"))?;
                    if n == 0 {
                        return Err("--n must be positive".into());
                    }
                    opts.n = Some(n);
                }
                "--callgrind" => opts.callgrind = true,
                other => return Err(format!("unknown child argument {other}")),
            }
        }
        Ok((spec, opts))
    }
}

fn pick(known: &[&'static str], value: &str) -> Result<&'static str, String> {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .ok_or_else(|| format!("unknown value {value}"))
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Corral => "corral",
            Side::Floor => "floor",
        })
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::BlockOn => "block_on",
            Driver::Spawned => "spawned",
        })
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} w={} {}",
            self.workload, self.side, self.workers, self.driver
        )?;
        if self.variant != "-" {
            write!(f, " {}", self.variant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every W10 child spec survives the trip through the command line
    /// (an unknown variant would make the child refuse to run).
    #[test]
    fn w10_specs_round_trip() {
        let specs = crate::rows::w10_specs();
        assert_eq!(specs.len(), 9);
        for spec in specs {
            let (back, _) = Spec::parse(&spec.to_args()).expect("parses");
            assert_eq!(back, spec);
        }
    }

    /// Likewise for W12's.
    #[test]
    fn w12_specs_round_trip() {
        let specs = crate::rows::w12_specs();
        assert_eq!(specs.len(), 6);
        for spec in specs {
            let (back, _) = Spec::parse(&spec.to_args()).expect("parses");
            assert_eq!(back, spec);
        }
    }

    /// Likewise for W11's.
    #[test]
    fn w11_specs_round_trip() {
        let specs = crate::rows::w11_specs();
        assert_eq!(specs.len(), 6);
        for spec in specs {
            let (back, _) = Spec::parse(&spec.to_args()).expect("parses");
            assert_eq!(back, spec);
        }
    }
}
