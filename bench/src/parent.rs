//! The parent process: plans the child runs, runs each (workload, variant,
//! side) in its own process by re-executing this binary, collects the
//! `RESULT` lines and hands them to the report.
//!
//! Within a group (one workload variant) the sides run one after the other,
//! and the order flips every repetition (corral, floor; floor, corral; ...)
//! so that slow drift of a shared machine hits both sides alike.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::callgrind;
use crate::report::{self, Results};
use crate::rows;
use crate::spec::{Driver, Side, Spec, W6_NAMED, WORKLOADS};
use crate::stats;

const USAGE: &str = "\
usage: corral-bench [--quick] [--reps N] [--only W1,W3,...] [--markdown FILE]
       corral-bench --callgrind [--n N] [--only W1,W4,W6,W7] [--markdown FILE]

  --quick          small sizes, correctness only (never fails on speed targets)
  --reps N         repetitions per side (default 3; with --callgrind, per size)
  --only LIST      run only these workloads (comma separated, e.g. W1,W4)
  --markdown FILE  also write the table as markdown to FILE
  --callgrind      instead of timing, count instructions and atomic
                   operations per task under valgrind's callgrind (W1, W4,
                   W6, W7; needs valgrind)
  --n N            with --callgrind: run N and 2N tasks (default 20000 for
                   W1 and W7, 10000 for W4 and W6)

Exit status: 0 all correct (and, without --quick, every target met);
1 a correctness failure (or a child crashed); 2 a speed/memory target
missed (full runs only); 64 bad arguments.";

/// The parent's command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Small sizes, correctness only.
    pub quick: bool,
    /// Repetitions per side.
    pub reps: usize,
    /// Workloads to run (`None`: all).
    pub only: Option<Vec<String>>,
    /// Where to write the markdown table.
    pub markdown: Option<PathBuf>,
    /// Count instructions under callgrind instead of timing.
    pub callgrind: bool,
    /// `--n`: the callgrind runs' task count.
    pub n: Option<usize>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            quick: false,
            reps: 3,
            only: None,
            markdown: None,
            callgrind: false,
            n: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--quick" => o.quick = true,
                "--reps" => {
                    o.reps = value()?
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or("--reps needs a positive number")?
                }
                "--only" => {
                    let only: Vec<String> = value()?
                        .split(',')
                        .map(|w| w.trim().to_uppercase())
                        .filter(|w| !w.is_empty())
                        .collect();
                    if let Some(bad) = only.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
                        return Err(format!("--only: unknown workload {bad} (W1 to W12)"));
                    }
                    o.only = Some(only);
                }
                "--markdown" => o.markdown = Some(PathBuf::from(value()?)),
                "--callgrind" => o.callgrind = true,
                "--n" => {
                    o.n = Some(
                        value()?
                            .parse()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or("--n needs a positive number")?,
                    )
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if o.n.is_some() && !o.callgrind {
            return Err("--n goes with --callgrind".into());
        }
        if o.callgrind && o.quick {
            return Err("--callgrind has its own sizes (--n); drop --quick".into());
        }
        Ok(o)
    }

    /// `true` if `workload` is to be run.
    pub fn wants(&self, workload: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|w| w == workload))
    }
}

/// Child runs that are repeated together, sides alternating.
struct Group {
    title: String,
    specs: Vec<Spec>,
}

fn pair(title: String, corral: Spec) -> Group {
    let floor = Spec {
        side: Side::Floor,
        ..corral.clone()
    };
    Group {
        title,
        specs: vec![corral, floor],
    }
}

/// Every group, in run order, filtered by `--only`.
fn plan(o: &Options) -> Vec<Group> {
    let mut groups = Vec::new();
    let drivers = [Driver::BlockOn, Driver::Spawned];
    for workers in [1, 2, 8] {
        for d in drivers {
            let c = Spec::new("W1", Side::Corral, workers).driver(d);
            groups.push(pair(format!("W1 w={workers} {d}"), c));
        }
    }
    groups.push(Group {
        title: "W2 (+ W1 floor w=1)".into(),
        specs: rows::w2_specs(),
    });
    groups.push(pair("W3".into(), Spec::new("W3", Side::Corral, 8)));
    for d in drivers {
        let c = Spec::new("W4", Side::Corral, 2).driver(d);
        groups.push(pair(format!("W4 {d}"), c));
    }
    for w in ["W5", "W6", "W7", "W8"] {
        groups.push(pair(w.into(), Spec::new(w, Side::Corral, 2)));
        if w == "W6" {
            let c = Spec::new(w, Side::Corral, 2).variant(W6_NAMED);
            groups.push(pair(format!("W6 {W6_NAMED}"), c));
        }
    }
    groups.push(Group {
        title: "W9".into(),
        specs: vec![Spec::new("W9", Side::Corral, 2)],
    });
    groups.push(Group {
        title: "W10 (+ W1 corral w=2)".into(),
        specs: rows::w10_specs(),
    });
    groups.push(Group {
        title: "W11 (+ W1 corral w=2, with and without an idle limiter)".into(),
        specs: rows::w11_specs(),
    });
    groups.push(Group {
        title: "W12 (+ W1 corral w=2)".into(),
        specs: rows::w12_specs(),
    });
    groups.retain(|g| o.wants(g.specs[0].workload));
    groups
}

/// What one child run gave.
struct ChildRun {
    values: Option<HashMap<String, f64>>,
    error: Option<String>,
}

fn run_child(exe: &PathBuf, spec: &Spec, quick: bool) -> ChildRun {
    let mut cmd = Command::new(exe);
    cmd.args(spec.to_args()).stdin(Stdio::null());
    if quick {
        cmd.arg("--quick");
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            return ChildRun {
                values: None,
                error: Some(format!("could not start: {e}")),
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let values = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|fields| {
            fields
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        });
    let error = (!out.status.success() || values.is_none()).then(|| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{}: {}", out.status, tail.join(" | "))
    });
    ChildRun { values, error }
}

/// Runs the parent given the arguments after the program name; returns the
/// process exit status.
pub fn main(args: &[String]) -> i32 {
    let o = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() { 0 } else { 64 };
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("cannot find this executable to re-run it: {e}");
            return 1;
        }
    };
    if o.callgrind {
        let header = format!("corral-bench: callgrind run\n{}", stats::machine());
        return callgrind::main(
            &exe,
            &header,
            o.n,
            o.reps,
            |w| o.wants(w),
            o.markdown.as_deref(),
        );
    }
    let counting = cfg!(feature = "count-alloc");
    let mode = if o.quick { "quick" } else { "full" };
    let header = format!(
        "corral-bench: {mode} run, {} rep(s) per side, count-alloc {}\n{}",
        o.reps,
        if counting { "on" } else { "off" },
        stats::machine()
    );
    eprintln!("{header}");
    let mut results: Results = HashMap::new();
    let mut failures = Vec::new();
    let total = Instant::now();
    for g in plan(&o) {
        let t = Instant::now();
        let mut failed = 0;
        for rep in 0..o.reps {
            let mut specs: Vec<&Spec> = g.specs.iter().collect();
            if rep % 2 == 1 {
                specs.reverse();
            }
            for spec in specs {
                let run = run_child(&exe, spec, o.quick);
                if let Some(e) = run.error {
                    failed += 1;
                    failures.push(format!("{spec} (rep {}): {e}", rep + 1));
                }
                results.entry(spec.clone()).or_default().push(run.values);
            }
        }
        eprintln!(
            "  {:<22} {:>3} runs  {:>6.1} s{}",
            g.title,
            g.specs.len() * o.reps,
            t.elapsed().as_secs_f64(),
            if failed > 0 { "  FAILED" } else { "" }
        );
    }
    eprintln!("  all runs: {:.1} s", total.elapsed().as_secs_f64());

    let rows = rows::rows(&results, &o);
    let table = report::render(&rows, false);
    println!("\n{header}\n\n{table}");
    println!("{}", report::LEGEND);
    if let Some(path) = &o.markdown {
        let md = format!(
            "{}\n\n{}\n{}\n",
            header.replace('\n', "\n\n"),
            report::render(&rows, true),
            report::LEGEND
        );
        if let Err(e) = std::fs::write(path, md) {
            eprintln!("cannot write {}: {e}", path.display());
            return 1;
        }
    }
    let (met, judged) = report::score(&rows);
    let judged_note = if o.quick {
        " (quick sizes: shown, not judged)"
    } else {
        ""
    };
    println!("\ntargets met: {met} of {judged}{judged_note}");
    if !failures.is_empty() {
        println!("\nCORRECTNESS FAILURES ({}):", failures.len());
        for f in &failures {
            println!("  {f}");
        }
        return 1;
    }
    if o.quick {
        println!("quick run: all correctness checks passed (speed targets not judged)");
        0
    } else if met < judged {
        2
    } else {
        0
    }
}
