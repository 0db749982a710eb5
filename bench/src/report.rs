//! The report: one row per measured quantity, with corral's median, the
//! floor's median, the median of the pairwise ratios corral/floor (run k of
//! corral against run k of the floor), the target and whether it is met;
//! rendered as a text table or as markdown. Which rows exist, and their
//! targets, is in [`crate::rows`].
//!
//! Ratio orientation is always **corral / floor**. For rates (tasks/s)
//! higher is better and the target reads `>= X`; for latency, time, heap
//! and RSS lower is better and the target reads `<= X`. A target written
//! `corral ...` bounds corral's own value, not the ratio.

use std::collections::HashMap;
use std::fmt;

use crate::spec::Spec;

/// Every child's values, per spec, one entry per repetition (`None` when
/// that run printed no `RESULT`).
pub type Results = HashMap<Spec, Vec<Option<HashMap<String, f64>>>>;

/// Printed under the table.
pub const LEGEND: &str = "\
ratio = corral/floor: the median over repetitions of (corral run k / floor run k).
  rates (/s): higher is better, target `>= X`; latency, time, heap, RSS: lower is better,
  target `<= X`. `corral ...` targets bound corral's own median (inversions: the max).
  W2's drain rate is paired with the W1 floor at 1 worker (block_on); W9 has no floor.
  W10 (informational): chain and fan against a tokio floor and against W1 corral at
  2 workers; a waiting dependent against corral's own plain pending task (W5's program).
  W11 (informational): a limiter at 1,000/s against one tokio timer per task on the
  same schedule; W1 corral w=2 on a cluster with an idle limiter against plain W1.
  W12 (informational): keyed tasks against W1 corral at 2 workers; a task waiting on a key
  against corral's own plain pending task (W5's program).
  `n/a`: not measured (heap values need `--features count-alloc`) or the run failed.";

/// How a value is printed.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Rate,
    Ms,
    Us,
    Secs,
    Bytes,
    PerTask,
    Int,
    MiB,
    Pct,
    Ratio,
    /// Instructions (callgrind's `Ir`), per task.
    Instr,
    /// Atomic read-modify-write instructions (callgrind's `Ge`), per task.
    Atomics,
}

/// `2160` -> "2,160".
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

impl Unit {
    fn show(self, v: f64) -> String {
        // No "-0.00".
        let v = if v.abs() < 5e-3 { 0.0 } else { v };
        match self {
            Unit::Rate if v >= 1e6 => format!("{:.2}M/s", v / 1e6),
            Unit::Rate => format!("{:.1}k/s", v / 1e3),
            Unit::Ms => format!("{v:.3} ms"),
            Unit::Us => format!("{v:.1} us"),
            Unit::Secs => format!("{v:.3} s"),
            Unit::Bytes => format!("{v:.0} B"),
            Unit::PerTask => format!("{v:.3}"),
            Unit::Int => format!("{v:.0}"),
            Unit::MiB => format!("{v:.1} MiB"),
            Unit::Pct => format!("{v:.2} %"),
            Unit::Ratio => format!("{v:.3}"),
            Unit::Instr => thousands(v),
            Unit::Atomics => format!("{v:.1}"),
        }
    }
}

/// What a row is judged by.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// ratio >= x (rates).
    AtLeast(f64),
    /// ratio <= x (latency, time, memory).
    AtMost(f64),
    /// corral's value <= x; the label says it in words.
    Corral(f64, &'static str),
    /// Shown for information, not judged.
    Info,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::AtLeast(x) => write!(f, "ratio >= {x}"),
            Target::AtMost(x) => write!(f, "ratio <= {x}"),
            Target::Corral(_, label) => write!(f, "corral {label}"),
            Target::Info => f.write_str("(info)"),
        }
    }
}

/// One side's value in a row.
#[derive(Debug, Clone, Copy)]
pub enum Cell {
    Value(f64),
    /// Not measured (feature off, or the runs failed).
    Missing,
    /// The row has no such side.
    Absent,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured (workload, variant).
    pub name: String,
    /// How values print.
    pub unit: Unit,
    /// Corral's folded value.
    pub corral: Cell,
    /// The floor's folded value.
    pub floor: Cell,
    /// Median of the pairwise ratios corral/floor.
    pub ratio: Option<f64>,
    /// What the row is judged by.
    pub target: Target,
}

impl Row {
    /// `Some(true/false)` when judged, `None` for info rows and missing data.
    fn met(&self) -> Option<bool> {
        match (self.target, self.corral, self.ratio) {
            (Target::AtLeast(x), _, Some(r)) => Some(r >= x),
            (Target::AtMost(x), _, Some(r)) => Some(r <= x),
            (Target::Corral(x, _), Cell::Value(c), _) => Some(c <= x + 1e-3),
            _ => None,
        }
    }

    fn cells(&self) -> [String; 6] {
        let show = |c: Cell| match c {
            Cell::Value(v) => self.unit.show(v),
            Cell::Missing => "n/a".into(),
            Cell::Absent => "-".into(),
        };
        let met = match (self.met(), self.target) {
            (_, Target::Info) => "-",
            (Some(true), _) => "yes",
            (Some(false), _) => "NO",
            (None, _) => "n/a",
        };
        [
            self.name.clone(),
            show(self.corral),
            show(self.floor),
            self.ratio.map_or("-".into(), |r| format!("{r:.2}")),
            self.target.to_string(),
            met.into(),
        ]
    }
}

const HEADERS: [&str; 6] = [
    "workload",
    "corral",
    "floor",
    "corral/floor",
    "target",
    "met?",
];

/// The table as aligned text, or as markdown.
pub fn render(rows: &[Row], markdown: bool) -> String {
    let cells: Vec<[String; 6]> = rows.iter().map(Row::cells).collect();
    let mut out = String::new();
    if markdown {
        out.push_str(&format!("| {} |\n", HEADERS.join(" | ")));
        out.push_str("|---|---:|---:|---:|---|---|\n");
        for c in &cells {
            out.push_str(&format!("| {} |\n", c.join(" | ")));
        }
        return out;
    }
    let mut width = HEADERS.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let mut s = String::new();
        for (i, (text, w)) in c.iter().zip(width).enumerate() {
            let pad = w - text.chars().count();
            // Text columns left-aligned, numbers right-aligned.
            if matches!(i, 1..=3) {
                s.push_str(&" ".repeat(pad));
                s.push_str(text);
            } else {
                s.push_str(text);
                s.push_str(&" ".repeat(pad));
            }
            s.push_str("  ");
        }
        s.trim_end().to_string()
    };
    out.push_str(&line(HEADERS));
    out.push('\n');
    out.push_str(&"-".repeat(width.iter().sum::<usize>() + 2 * 5));
    out.push('\n');
    for c in &cells {
        out.push_str(&line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]]));
        out.push('\n');
    }
    out
}

/// (targets met, targets judged).
pub fn score(rows: &[Row]) -> (usize, usize) {
    let judged: Vec<bool> = rows.iter().filter_map(Row::met).collect();
    (judged.iter().filter(|m| **m).count(), judged.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(2160.0), "2,160");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-12_345.0), "-12,345");
    }
}
