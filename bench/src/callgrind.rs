//! Instruction counts under callgrind (`--callgrind`, see
//! `bench/README.md#instruction-counts`).
//!
//! **Child side.** With `--callgrind` a child marks its workload's measured
//! section (the timed window) with two callgrind client requests: it zeroes
//! the counters at the section's start ([`zero`]) and dumps them at its end
//! ([`dump`]). Callgrind then writes one profile file for that section, all
//! threads summed, apart from its profile of the rest of the process
//! (start-up, runtime and cluster construction, shutdown). Outside valgrind
//! a client request is a few no-op instructions; without `--callgrind` not
//! even those are executed.
//!
//! **Parent side.** [`main`] runs each (workload, side) under `valgrind
//! --tool=callgrind --collect-bus=yes` with `n` and with `2n` tasks,
//! `--reps` times each, reads the section's instruction count (`Ir`) and
//! atomic instruction count (`Ge`, callgrind's "global bus events": the
//! `lock`-prefixed read-modify-write instructions, i.e. lock acquisitions
//! and releases, reference counts, wake-ups) from each dump, and reports
//! `(Ir(2n) - Ir(n)) / n` instructions per task, with the median `Ir` of
//! each size, and the same for `Ge`. The difference cancels whatever fixed
//! cost the section still has (waking the workers, the last park).
//!
//! Valgrind runs one thread at a time. With its default scheduling, which
//! thread runs next, and so how often threads park and wake each other,
//! varied from run to run: some runs counted 20% more than others of the
//! same program (W4 `block_on`, the W1 floor with a spawned driver).
//! `--fair-sched=yes` (threads take turns in order) made the counts repeat
//! within a few parts in a thousand in the same checks; the median of the
//! repetitions drops an odd run still.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::report::{self, Cell, Row, Target, Unit};
use crate::spec::{Driver, Side, Spec, W6_NAMED};
use crate::stats::median;

// ---------------------------------------------------------------------------
// Child side: client requests.

static MARKS: AtomicBool = AtomicBool::new(false);

/// Makes [`zero`] and [`dump`] issue their client requests (child flag
/// `--callgrind`).
pub fn enable_marks() {
    MARKS.store(true, Ordering::Relaxed);
}

/// `VG_USERREQ_TOOL_BASE('C', 'T')` from `valgrind/callgrind.h`: the first
/// of callgrind's requests, `DUMP_STATS`; `ZERO_STATS` follows it.
const DUMP_STATS: usize = ((b'C' as usize) << 24) | ((b'T' as usize) << 16);
const ZERO_STATS: usize = DUMP_STATS + 1;

/// Zeroes callgrind's counters (all threads): the measured section starts.
pub fn zero() {
    if MARKS.load(Ordering::Relaxed) {
        client_request(ZERO_STATS);
    }
}

/// Dumps callgrind's counters since [`zero`] to a profile file of their own:
/// the measured section ends.
pub fn dump() {
    if MARKS.load(Ordering::Relaxed) {
        client_request(DUMP_STATS);
    }
}

/// Valgrind's client request on x86-64 (`VALGRIND_DO_CLIENT_REQUEST_EXPR` in
/// `valgrind/valgrind.h`): the four rotations of `rdi` add up to 128 bits
/// and leave it as it was, and `xchg rbx, rbx` does nothing, so on a real
/// CPU this is a no-op; valgrind recognises the sequence and serves the
/// request whose arguments `rax` points to.
#[cfg(target_arch = "x86_64")]
fn client_request(request: usize) {
    let args: [usize; 6] = [request, 0, 0, 0, 0, 0];
    let _result: usize;
    // SAFETY: the sequence only rotates `rdi` back to its own value and
    // exchanges `rbx` with itself; `rdx` (the result) is declared as
    // written, and valgrind only reads the six words `rax` points to, which
    // live until the asm block ends.
    unsafe {
        std::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            inout("rdx") 0usize => _result,
            in("rax") args.as_ptr(),
            options(nostack),
        );
    }
}

/// No client requests on this architecture: the parent refuses
/// `--callgrind` before any child runs.
#[cfg(not(target_arch = "x86_64"))]
fn client_request(_request: usize) {}

// ---------------------------------------------------------------------------
// Parent side.

/// Default `n` per workload: small, because callgrind serialises threads and
/// runs the program some 50 times slower, yet large enough that the
/// per-task figure is stable to a few instructions.
fn default_n(workload: &str) -> usize {
    match workload {
        "W1" | "W7" => 20_000,
        _ => 10_000,
    }
}

/// One row of the instruction table.
struct Plan {
    name: String,
    corral: Spec,
    floor: Spec,
    target: Target,
}

/// The rows: W1 (1 and 2 workers, both drivers), W4 (both drivers), W6 (by
/// generated id and by user string id), W7; filtered by `--only`.
fn plan(wants: impl Fn(&str) -> bool) -> Vec<Plan> {
    let floor = |c: &Spec| Spec {
        side: Side::Floor,
        ..c.clone()
    };
    let drivers = [Driver::BlockOn, Driver::Spawned];
    let mut rows = Vec::new();
    for w in [1, 2] {
        for d in drivers {
            let c = Spec::new("W1", Side::Corral, w).driver(d);
            rows.push(Plan {
                name: format!("W1 Ir per task, {w} worker(s), {d}"),
                floor: floor(&c),
                corral: c,
                target: Target::AtMost(0.6),
            });
        }
    }
    for d in drivers {
        let c = Spec::new("W4", Side::Corral, 2).driver(d);
        rows.push(Plan {
            name: format!("W4 Ir per round trip, {d}"),
            floor: floor(&c),
            corral: c,
            target: match d {
                Driver::Spawned => Target::AtMost(1.0),
                Driver::BlockOn => Target::Info,
            },
        });
    }
    // One floor program for both W6 rows: aborting a JoinHandle.
    let w6 = Spec::new("W6", Side::Corral, 2);
    for (variant, what) in [("-", "generated id"), (W6_NAMED, "user string id")] {
        rows.push(Plan {
            name: format!("W6 Ir per cancel, by {what}"),
            corral: w6.clone().variant(variant),
            floor: floor(&w6),
            target: Target::AtMost(0.5),
        });
    }
    let c = Spec::new("W7", Side::Corral, 2);
    rows.push(Plan {
        name: "W7 Ir per task, 4 producers".into(),
        floor: floor(&c),
        corral: c,
        target: Target::Info,
    });
    rows.retain(|r| wants(r.corral.workload));
    rows
}

/// Printed under the instruction table.
pub const LEGEND: &str = "\
Ir per task = (Ir(2n) - Ir(n)) / n. Ir: the instructions callgrind counts, all threads summed, in
  the workload's measured section (its timed window; W6: from the first cancel until every handle
  has answered), the median of --reps runs with n tasks and of as many with 2n. Start-up, runtime
  and cluster construction and shutdown are not counted. ratio = corral/floor, lower is better.
  W6's floor aborts JoinHandles in both rows; corral cancels by the handle's generated id, or by
  the task's user string id (`cancel_task(name.as_str())`).
Atomic ops per task: the same for callgrind's Ge (`--collect-bus=yes`): lock-prefixed
  read-modify-write instructions (lock acquisitions and releases, reference counts, wake-ups),
  which cost far more than their count of instructions when threads share the cache lines.";

/// `valgrind --version`, or why callgrind cannot run.
fn valgrind_version() -> Result<String, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err(
            "--callgrind marks the measured section with valgrind client requests, \
                    implemented here for x86-64 only"
                .into(),
        );
    }
    match Command::new("valgrind").arg("--version").output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => Err(format!("`valgrind --version` failed: {}", out.status)),
        Err(e) => Err(format!(
            "--callgrind needs valgrind, which could not be run ({e}); \
             install it (e.g. `apt-get install valgrind`) and make sure `valgrind` is on PATH"
        )),
    }
}

/// The file-name stem of one run's profiles.
fn stem(spec: &Spec, n: usize) -> String {
    let variant = if spec.variant == "-" {
        String::new()
    } else {
        format!("-{}", spec.variant)
    };
    format!(
        "{}-{}-w{}-{}{variant}-n{n}",
        spec.workload, spec.side, spec.workers, spec.driver
    )
}

/// What a section's profile counted.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    /// Instructions (`Ir`).
    ir: u64,
    /// Atomic read-modify-write instructions (`Ge`).
    ge: u64,
}

/// The counts of a callgrind profile, from its `summary:` line (the events
/// callgrind counted; `totals:`, the sum of the cost lines written, can
/// differ from it by a few parts in 100,000), else its `totals:`. The
/// `events:` line names the columns; a profile without `Ge` (no
/// `--collect-bus`) has none.
fn section_counts(profile: &str) -> Option<Counts> {
    let events: Vec<&str> = profile
        .lines()
        .find_map(|l| l.strip_prefix("events:"))?
        .split_whitespace()
        .collect();
    let line = profile
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .or_else(|| profile.lines().find_map(|l| l.strip_prefix("totals:")))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let column = |name: &str| {
        let i = events.iter().position(|e| *e == name)?;
        values.get(i).copied()
    };
    Some(Counts {
        ir: column("Ir")?,
        ge: column("Ge")?,
    })
}

/// Runs `spec` with `n` tasks under callgrind; returns the measured
/// section's counts and the path of its profile.
fn measure(exe: &Path, dir: &Path, spec: &Spec, n: usize) -> Result<(Counts, PathBuf), String> {
    let stem = stem(spec, n);
    // Profiles of an earlier run would be mistaken for this one's.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{stem}."))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let out_file = dir.join(format!("{stem}.out"));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--fair-sched=yes")
        .arg("--collect-bus=yes")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(exe)
        .args(spec.to_args())
        .args(["--quick", "--n", &n.to_string(), "--callgrind"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not start valgrind: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.lines().any(|l| l.starts_with("RESULT ")) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The child's own lines, not valgrind's `==pid==` banner.
        let own: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("==")).collect();
        let tail = own[own.len().saturating_sub(6)..].join(" | ");
        return Err(format!("{}: {tail}", out.status));
    }
    // The section's dump is the profile whose trigger is the client request
    // (the final one, at exit, is "Program termination").
    let mut found = None;
    for e in std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
    {
        if !e
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{stem}."))
        {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let is_section = text
            .lines()
            .take(20)
            .any(|l| l.starts_with("desc: Trigger: Client Request"));
        if is_section {
            if found.is_some() {
                return Err(format!("more than one section dump for {stem}"));
            }
            let counts = section_counts(&text)
                .ok_or_else(|| format!("no Ir and Ge totals in {}", e.path().display()))?;
            found = Some((counts, e.path()));
        }
    }
    found.ok_or_else(|| {
        format!(
            "no section dump for {stem} in {} (the child never marked its measured section)",
            dir.display()
        )
    })
}

/// Instructions and atomic instructions per task of one spec.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PerTask {
    ir: f64,
    ge: f64,
}

impl PerTask {
    /// `(median(2n) - median(n)) / n` of each count, from the runs with `n`
    /// tasks (`small`) and with `2n` (`large`).
    fn of(small: &[Counts], large: &[Counts], n: usize) -> Result<Self, String> {
        let per = |count: fn(&Counts) -> u64| {
            let a: Vec<f64> = small.iter().map(|c| count(c) as f64).collect();
            let b: Vec<f64> = large.iter().map(|c| count(c) as f64).collect();
            Some((median(&b)? - median(&a)?) / n as f64)
        };
        match (per(|c| c.ir), per(|c| c.ge)) {
            (Some(ir), Some(ge)) => Ok(PerTask { ir, ge }),
            _ => Err("no runs".into()),
        }
    }
}

/// Runs the `--callgrind` mode; returns the process exit status.
pub fn main(
    exe: &Path,
    header: &str,
    n: Option<usize>,
    reps: usize,
    wants: impl Fn(&str) -> bool,
    markdown: Option<&Path>,
) -> i32 {
    let rows = plan(wants);
    if rows.is_empty() {
        eprintln!(
            "corral-bench: --callgrind counts W1, W4, W6 and W7; --only selected none of them"
        );
        return 64;
    }
    let version = match valgrind_version() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("corral-bench: {e}");
            return 1;
        }
    };
    let dir = exe
        .parent()
        .map_or_else(|| PathBuf::from("callgrind"), |p| p.join("callgrind"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return 1;
    }
    let header = format!(
        "{header}\ninstruction counts: {version} --tool=callgrind --fair-sched=yes --collect-bus=yes, median of {reps} run(s) per size"
    );
    eprintln!("{header}\nprofiles in {}", dir.display());
    let total = Instant::now();
    // Instructions and atomics per task of each spec run (W6's floor serves
    // two rows).
    let mut per_task: HashMap<Spec, Option<PerTask>> = HashMap::new();
    let mut failures = Vec::new();
    for spec in rows.iter().flat_map(|r| [&r.corral, &r.floor]) {
        if per_task.contains_key(spec) {
            continue;
        }
        let n = n.unwrap_or_else(|| default_n(spec.workload));
        let t = Instant::now();
        let (mut small, mut large) = (Vec::new(), Vec::new());
        let mut error = None;
        for _ in 0..reps {
            match measure(exe, &dir, spec, n).and_then(|(a, _)| {
                let (b, _) = measure(exe, &dir, spec, 2 * n)?;
                Ok((a, b))
            }) {
                Ok((a, b)) => {
                    small.push(a);
                    large.push(b);
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let value = match error {
            None => PerTask::of(&small, &large, n),
            Some(e) => Err(e),
        };
        let value = match value {
            Ok(v) => {
                let list = |v: &[Counts]| {
                    v.iter()
                        .map(|x| format!("{:.1}M", x.ir as f64 / 1e6))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                eprintln!(
                    "  {:<30} {:>6.0} Ir {:>5.1} atomics per task  Ir(n={n}): {}  Ir(2n): {}  {:.1} s",
                    spec.to_string(),
                    v.ir,
                    v.ge,
                    list(&small),
                    list(&large),
                    t.elapsed().as_secs_f64(),
                );
                Some(v)
            }
            Err(e) => {
                eprintln!("  {:<30} FAILED: {e}", spec.to_string());
                failures.push(format!("{spec}: {e}"));
                None
            }
        };
        per_task.insert(spec.clone(), value);
    }
    eprintln!("  all runs: {:.1} s", total.elapsed().as_secs_f64());

    let cell = |s: &Spec| per_task.get(s).copied().flatten();
    let row = |name: String, unit, c: Option<f64>, f: Option<f64>, target| Row {
        name,
        unit,
        corral: c.map_or(Cell::Missing, Cell::Value),
        floor: f.map_or(Cell::Missing, Cell::Value),
        ratio: c.zip(f).map(|(c, f)| c / f).filter(|r| r.is_finite()),
        target,
    };
    let mut table: Vec<Row> = rows
        .iter()
        .map(|r| {
            let (c, f) = (cell(&r.corral), cell(&r.floor));
            row(
                r.name.clone(),
                Unit::Instr,
                c.map(|c| c.ir),
                f.map(|f| f.ir),
                r.target,
            )
        })
        .collect();
    // The atomics of each row, after all the instruction rows (informative:
    // the issue's targets are in instructions).
    table.extend(rows.iter().map(|r| {
        let (c, f) = (cell(&r.corral), cell(&r.floor));
        row(
            r.name.replacen(" Ir per ", " atomic ops per ", 1),
            Unit::Atomics,
            c.map(|c| c.ge),
            f.map(|f| f.ge),
            Target::Info,
        )
    }));
    let n_note = match n {
        Some(n) => format!("n = {n}"),
        None => "n = 20,000 (W1, W7) or 10,000 (W4, W6)".into(),
    };
    println!("\n{header}, {n_note}\n\n{}", report::render(&table, false));
    println!("{LEGEND}");
    if let Some(path) = markdown {
        let md = format!(
            "{}, {n_note}\n\n{}\n{LEGEND}\n",
            header.replace('\n', "\n\n"),
            report::render(&table, true)
        );
        if let Err(e) = std::fs::write(path, md) {
            eprintln!("cannot write {}: {e}", path.display());
            return 1;
        }
    }
    let (met, judged) = report::score(&table);
    println!("\ntargets met: {met} of {judged}");
    println!(
        "profiles of the measured sections: {}/*.out.1 (callgrind_annotate --inclusive=yes FILE)",
        dir.display()
    );
    if !failures.is_empty() {
        println!("\nFAILURES ({}):", failures.len());
        for f in &failures {
            println!("  {f}");
        }
        return 1;
    }
    if met < judged {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_summary_then_totals_by_event_name() {
        let counts = |ir, ge| Some(Counts { ir, ge });
        assert_eq!(
            section_counts("events: Ir Ge\nsummary: 12 3\ntotals: 34 5\n"),
            counts(12, 3)
        );
        assert_eq!(
            section_counts("events: Ge Ir\ntotals: 5 34\n"),
            counts(34, 5)
        );
        // No Ge column (callgrind without --collect-bus), no totals, junk.
        assert_eq!(section_counts("events: Ir\nsummary: 12\n"), None);
        assert_eq!(section_counts("events: Ir Ge\n"), None);
        assert_eq!(section_counts("events: Ir Ge\nsummary: 12 x\n"), None);
    }

    #[test]
    fn per_task_is_the_difference_of_the_medians() {
        let c = |ir, ge| Counts { ir, ge };
        let small = [c(1_000, 10), c(1_100, 12), c(1_050, 11)];
        let large = [c(3_000, 30), c(3_050, 31), c(9_000, 99)];
        let v = PerTask::of(&small, &large, 100).unwrap();
        assert_eq!(v, PerTask { ir: 20.0, ge: 0.2 });
        assert!(PerTask::of(&[], &[], 100).is_err());
    }

    #[test]
    fn request_codes_match_callgrind_h() {
        // VG_USERREQ__DUMP_STATS = VG_USERREQ_TOOL_BASE('C','T') = 0x43540000.
        assert_eq!(DUMP_STATS, 0x4354_0000);
        assert_eq!(ZERO_STATS, 0x4354_0001);
    }

    #[test]
    fn marks_are_harmless_outside_valgrind() {
        enable_marks();
        zero();
        dump();
    }

    #[test]
    fn plan_covers_the_issue_rows() {
        let rows = plan(|_| true);
        assert_eq!(rows.len(), 4 + 2 + 2 + 1);
        assert!(rows.iter().all(|r| r.floor.side == Side::Floor));
        let only_w6 = plan(|w| w == "W6");
        assert_eq!(only_w6.len(), 2);
        assert_eq!(only_w6[0].floor, only_w6[1].floor);
    }
}
