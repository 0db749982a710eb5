//! Small measuring tools: median and percentiles, peak RSS (`VmHWM` from
//! `/proc/self/status`), process CPU time (`getrusage(RUSAGE_SELF)`), the
//! machine (CPU model and core count), a seeded random generator and an
//! inversion counter.

use std::time::Duration;

use tokio::time::Instant;

/// The median of `values` (mean of the middle two for an even count);
/// `None` when empty. NaNs are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The nearest-rank `p`-th percentile (0 < p <= 100) of sorted `values`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts `values` and returns its (p50, p99, max).
pub fn p50_p99_max(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        percentile(values, 50.0),
        percentile(values, 99.0),
        values.last().copied().unwrap_or(f64::NAN),
    )
}

/// The process's peak resident set size in bytes (`VmHWM`), if readable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// "CPU: AMD EPYC (family 25, model 17, stepping 1), 2 cores": the first
/// processor's `model name` (and, when given, its family, model and stepping
/// numbers, which tell apart CPUs that a VM names alike) from
/// `/proc/cpuinfo`, and the number of CPUs this process may run on.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("CPU: {}, {cores} cores", cpu_model(&cpuinfo))
}

/// The CPU model named by the first processor entry of `/proc/cpuinfo`.
fn cpu_model(cpuinfo: &str) -> String {
    let first = cpuinfo.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| {
        first.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let Some(model_name) = field("model name") else {
        return "unknown model".into();
    };
    match (field("cpu family"), field("model"), field("stepping")) {
        (Some(f), Some(m), Some(s)) => {
            format!("{model_name} (family {f}, model {m}, stepping {s})")
        }
        _ => model_name,
    }
}

/// User + system CPU time this process has used so far, in seconds.
pub fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` writes a `rusage` into the pointer it is given,
    // which points to memory of that type.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: zeroed is a valid `rusage`, and `getrusage` succeeded.
    let ru = unsafe { ru.assume_init() };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// `a - b` in nanoseconds, negative when `a` is before `b`.
pub fn signed_nanos(a: Instant, b: Instant) -> i64 {
    match a.checked_duration_since(b) {
        Some(d) => nanos(d),
        None => -nanos(b - a),
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// SplitMix64: a tiny seeded generator, so that every run (and both sides
/// of a workload) sees exactly the same "random" priorities and times.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is negligible here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Shuffles `v` (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// The number of pairs `i < j` with `v[i] > v[j]` (merge sort; sorts `v`).
pub fn inversions(v: &mut [u32]) -> u64 {
    let mut buf = v.to_vec();
    sort_count(v, &mut buf)
}

fn sort_count(v: &mut [u32], buf: &mut [u32]) -> u64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let mut count =
        sort_count(&mut v[..mid], &mut buf[..mid]) + sort_count(&mut v[mid..], &mut buf[mid..]);
    let (mut i, mut j, mut k) = (0, mid, 0);
    while i < mid && j < n {
        if v[i] <= v[j] {
            buf[k] = v[i];
            i += 1;
        } else {
            buf[k] = v[j];
            count += (mid - i) as u64;
            j += 1;
        }
        k += 1;
    }
    buf[k..k + mid - i].copy_from_slice(&v[i..mid]);
    k += mid - i;
    buf[k..k + n - j].copy_from_slice(&v[j..n]);
    v.copy_from_slice(&buf[..n]);
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_from_cpuinfo() {
        let amd = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\
                   model name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model(amd), "AMD EPYC (family 25, model 17, stepping 1)");
        assert_eq!(
            cpu_model("processor : 0\nmodel name : Neoverse\n"),
            "Neoverse"
        );
        assert_eq!(cpu_model(""), "unknown model");
    }

    #[test]
    fn inversions_match_brute_force() {
        let mut rng = Rng::new(7);
        for len in [0usize, 1, 2, 5, 17, 100] {
            let v: Vec<u32> = (0..len).map(|_| rng.below(10) as u32).collect();
            let brute = (0..len)
                .flat_map(|i| (i + 1..len).map(move |j| (i, j)))
                .filter(|&(i, j)| v[i] > v[j])
                .count() as u64;
            assert_eq!(inversions(&mut v.clone()), brute);
        }
    }

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
    }
}
