//! The parent process: checks the server, starts the counting proxy, runs
//! every (workload, variant, side, repetition) in a child process of its
//! own (sides alternating, order flipped every repetition; D6's idle runs
//! side by side), and prints the table.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::{self, Ctx, SLOTS};
use crate::pg;
use crate::proxy;

const USAGE: &str = "\
usage: corral-bench-durable [--quick] [--reps N] [--only D1,D3,...] [--markdown FILE] [--url URL]

  --quick          small sizes (seconds), correctness only (no speed judged)
  --reps N         repetitions per side (default 3)
  --only LIST      run only these workloads (D1 to D8; D7 comes from D1; D2/batch: one variant)
  --markdown FILE  also write the table as markdown to FILE
  --url URL        the server (default $DATABASE_URL, else
                   postgres://postgres@127.0.0.1:5432/test)

Exit status: 0 all correct (and, without --quick, every judged target met);
1 a correctness failure, a child that crashed or timed out, or no server;
2 a target missed (full runs only); 64 bad arguments.";

const WORKLOADS: [&str; 8] = ["D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8"];

struct Options {
    quick: bool,
    reps: usize,
    only: Option<Vec<String>>,
    markdown: Option<String>,
    url: String,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        reps: 3,
        only: None,
        markdown: None,
        url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
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
                // `D2/BATCH`: one variant of a workload.
                let workload = |w: &String| w.split('/').next().unwrap_or_default().to_owned();
                if let Some(bad) = only
                    .iter()
                    .find(|w| !WORKLOADS.contains(&workload(w).as_str()))
                {
                    return Err(format!("--only: unknown workload {bad} (D1 to D8)"));
                }
                o.only = Some(only);
            }
            "--markdown" => o.markdown = Some(value()?),
            "--url" => o.url = value()?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

impl Options {
    fn wants(&self, w: &str) -> bool {
        self.wants_variant(w, None)
    }

    /// Whether `--only` names workload `w` (or, with `variant`, that
    /// variant of it: `D2` or `D2/batch`).
    fn wants_variant(&self, w: &str, variant: Option<&str>) -> bool {
        let named = |x: &String| match x.split_once('/') {
            None => x == w,
            Some((xw, xv)) => xw == w && variant.is_none_or(|v| v.eq_ignore_ascii_case(xv)),
        };
        self.only.as_ref().is_none_or(|o| o.iter().any(named)) || (w == "D1" && self.wants("D7"))
    }
}

/// One child run to make.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Spec {
    workload: &'static str,
    side: &'static str,
    variant: &'static str,
}

struct Group {
    specs: Vec<Spec>,
    /// Run every repetition of every side at once (idle workloads only).
    together: bool,
    reps: Option<usize>,
}

/// With the peers, D1, D2, D3 and D6 also run each peer queue.
#[cfg(feature = "peers")]
fn with_peers(mut g: Group) -> Group {
    let (workload, variant) = (g.specs[0].workload, g.specs[0].variant);
    g.specs.extend(crate::peers::SIDES.iter().map(|&side| Spec {
        workload,
        side,
        variant,
    }));
    g
}

#[cfg(not(feature = "peers"))]
fn with_peers(g: Group) -> Group {
    g
}

fn plan(o: &Options) -> Vec<Group> {
    let pair = |workload, variant| Group {
        specs: vec![
            Spec {
                workload,
                side: "corral",
                variant,
            },
            Spec {
                workload,
                side: "floor",
                variant,
            },
        ],
        together: false,
        reps: None,
    };
    let mut g = vec![
        with_peers(pair("D1", "-")),
        with_peers(pair("D2", "single")),
        with_peers(pair("D2", "batch")),
        with_peers(pair("D3", "-")),
    ];
    let mut d6 = with_peers(pair("D6", "-"));
    d6.together = true;
    g.push(d6);
    g.push(pair("D4", "-"));
    g.push(pair("D5", "-"));
    g.push(Group {
        specs: vec![Spec {
            workload: "D8",
            side: "corral",
            variant: "-",
        }],
        together: false,
        reps: Some(1),
    });
    g.retain(|g| o.wants_variant(g.specs[0].workload, Some(g.specs[0].variant)));
    g
}

type Values = HashMap<String, f64>;

struct Running {
    child: std::process::Child,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

fn start(
    exe: &std::path::Path,
    spec: &Spec,
    o: &Options,
    p: &proxy::Proxy,
    purl: &str,
) -> std::io::Result<Running> {
    let mut cmd = Command::new(exe);
    cmd.args([
        "--child",
        spec.workload,
        "--side",
        spec.side,
        "--variant",
        spec.variant,
        "--url",
        &o.url,
        "--purl",
        purl,
        "--ctl",
        &p.control.to_string(),
    ]);
    if o.quick {
        cmd.arg("--quick");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    Ok(Running { child, out, err })
}

/// Waits for a child (killing it past `limit`); its values or an error.
fn finish(mut r: Running, limit: Duration) -> Result<Values, String> {
    let t = Instant::now();
    let status = loop {
        match r.child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t.elapsed() > limit => {
                let _ = r.child.kill();
                let _ = r.child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let out = r.out.join().unwrap_or_default();
    let err = r.err.join().unwrap_or_default();
    let values: Option<Values> = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|f| {
            f.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                .collect()
        });
    let tail: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(4)..].join(" | ");
    match (status, values) {
        (None, _) => Err(format!(
            "killed after {limit:?} (server gone or hung?) {tail}"
        )),
        (Some(s), Some(v)) if s.success() => Ok(v),
        (Some(s), _) => Err(format!("{s}: {tail}")),
    }
}

/// Runs a child (`--child ...`).
pub fn child_main(args: &[String]) -> i32 {
    let mut ctx = Ctx {
        workload: String::new(),
        side: String::new(),
        variant: "-".into(),
        quick: false,
        url: String::new(),
        purl: String::new(),
        ctl: String::new(),
        pid: std::process::id(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut v = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--child" => ctx.workload = v(),
            "--side" => ctx.side = v(),
            "--variant" => ctx.variant = v(),
            "--url" => ctx.url = v(),
            "--purl" => ctx.purl = v(),
            "--ctl" => ctx.ctl = v(),
            "--quick" => ctx.quick = true,
            other => {
                eprintln!("FAIL bad child argument {other}");
                return 2;
            }
        }
    }
    child::main(ctx)
}

/// Starts the counting proxy in front of the URL's server; the URL through
/// it (same user, database and password) and the proxy.
fn proxied(url: &str) -> Result<(String, proxy::Proxy), String> {
    let cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => return Err("the harness needs a TCP host in the URL".into()),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let db = cfg.get_dbname().unwrap_or(user);
    let pass = cfg
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let p = proxy::start(format!("{host}:{port}")).map_err(|e| e.to_string())?;
    Ok((format!("postgres://{user}{pass}@{}/{db}", p.data), p))
}

fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "machine: {} (family {}, model {}), {cores} cores",
        field("model name"),
        field("cpu family"),
        field("model\t")
    )
}

/// Runs the parent; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() { 0 } else { 64 };
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = rt.block_on(async {
        let c = pg::connect(&pg::with_app(&o.url, "bench_durable_parent")).await?;
        pg::settings(&c).await
    });
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("corral-bench-durable: the server does not answer: {e}");
            return 1;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cannot find this executable: {e}");
            return 1;
        }
    };
    let mode = if o.quick { "quick" } else { "full" };
    let header = format!(
        "corral-bench-durable: {mode} run, {} rep(s) per side, corral: PgStore defaults (pool 8, LISTEN/NOTIFY, 5 min fallback poll), \
         worker slots {SLOTS} (D1/D4/D5/D8; a claim takes as many rows as free slots), {} (D3/D6), lease TTL 30 s (D8: {}); floor batch {SLOTS}\n{settings}\n{}",
        o.reps,
        child::LATENCY_SLOTS,
        if o.quick { "1 s" } else { "10 s" },
        machine()
    );
    #[cfg(feature = "peers")]
    let header = format!("{header}\n{}", crate::peers::CONFIG);
    eprintln!("{header}");
    let (purl, proxy) = match proxied(&o.url) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("proxy: {e}");
            return 1;
        }
    };
    let mut results: HashMap<Spec, Vec<Option<Values>>> = HashMap::new();
    let mut failures = Vec::new();
    let limit = if o.quick {
        Duration::from_secs(90)
    } else {
        Duration::from_secs(300)
    };
    let total = Instant::now();
    let mut server_gone = false;
    for g in plan(&o) {
        if server_gone {
            eprintln!("corral-bench-durable: the server stopped answering; the remaining workloads are not run");
            failures.push("the server stopped answering".into());
            break;
        }
        let t = Instant::now();
        let reps = g.reps.unwrap_or(o.reps);
        let mut batches: Vec<Vec<Spec>> = Vec::new();
        if g.together {
            batches.push((0..reps).flat_map(|_| g.specs.clone()).collect());
        } else {
            for rep in 0..reps {
                let mut s = g.specs.clone();
                if rep % 2 == 1 {
                    s.reverse();
                }
                batches.extend(s.into_iter().map(|x| vec![x]));
            }
        }
        let mut failed = 0;
        for batch in batches {
            let running: Vec<_> = batch
                .iter()
                .map(|spec| (spec.clone(), start(&exe, spec, &o, &proxy, &purl)))
                .collect();
            for (spec, run) in running {
                let pid = run.as_ref().map_or(0, |r| r.child.id());
                let r = run
                    .map_err(|e| e.to_string())
                    .and_then(|r| finish(r, limit));
                #[cfg(feature = "peers")]
                crate::peers::cleanup(&o.url, spec.side, pid);
                let _ = pid;
                let v = match r {
                    Ok(v) => Some(v),
                    Err(e) => {
                        failed += 1;
                        failures.push(format!(
                            "{}/{}/{}: {e}",
                            spec.workload, spec.side, spec.variant
                        ));
                        server_gone = !rt.block_on(answers(&o.url));
                        None
                    }
                };
                results.entry(spec).or_default().push(v);
            }
        }
        let s = &g.specs[0];
        eprintln!(
            "  {} {:<8} {:>3} runs {:>7.1} s{}",
            s.workload,
            s.variant,
            g.specs.len() * reps,
            t.elapsed().as_secs_f64(),
            if failed > 0 { "  FAILED" } else { "" }
        );
    }
    eprintln!("  all runs: {:.1} s", total.elapsed().as_secs_f64());
    let rows = crate::report::rows(&results_view(&results), o.quick);
    let table = crate::report::render(&rows);
    println!("\n{}\n\n{table}", header.replace('\n', "\n\n"));
    println!("{}", crate::report::LEGEND);
    #[cfg(feature = "peers")]
    println!("{}", crate::peers::LEGEND);
    if let Some(path) = &o.markdown {
        let md = format!(
            "{}\n\n{table}\n{}\n",
            header.replace('\n', "\n\n"),
            crate::report::LEGEND
        );
        #[cfg(feature = "peers")]
        let md = format!("{md}\n{}\n", crate::peers::LEGEND);
        if let Err(e) = std::fs::write(path, md) {
            eprintln!("cannot write {path}: {e}");
            return 1;
        }
    }
    let (met, judged) = crate::report::score(&rows);
    println!(
        "\ntargets met: {met} of {judged}{}",
        if o.quick {
            " (quick sizes: shown, not judged)"
        } else {
            ""
        }
    );
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

/// Whether the server answers a connection within seconds.
async fn answers(url: &str) -> bool {
    match pg::connect(&pg::with_app(url, "bench_durable_parent")).await {
        Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

/// Results by "workload/side/variant".
fn results_view(r: &HashMap<Spec, Vec<Option<Values>>>) -> HashMap<String, Vec<Option<Values>>> {
    r.iter()
        .map(|(s, v)| {
            (
                format!("{}/{}/{}", s.workload, s.side, s.variant),
                v.clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn planned(only: &str) -> Vec<(&'static str, &'static str)> {
        let o = parse(&args(&["--only", only])).unwrap();
        plan(&o)
            .iter()
            .map(|g| (g.specs[0].workload, g.specs[0].variant))
            .collect()
    }

    #[test]
    fn only_takes_workloads_and_single_variants() {
        assert_eq!(planned("D2"), vec![("D2", "single"), ("D2", "batch")]);
        assert_eq!(planned("d2/batch"), vec![("D2", "batch")]);
        assert_eq!(planned("D2/single,D3"), vec![("D2", "single"), ("D3", "-")]);
        // D7 comes from D1.
        assert_eq!(planned("D7"), vec![("D1", "-")]);
        assert!(parse(&args(&["--only", "D9/batch"])).is_err());
    }
}
