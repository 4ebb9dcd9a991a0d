//! The table the benchmark prints, and the arithmetic behind its figures: rates, percentiles,
//! Prometheus text, peak RSS.

use std::time::Duration;

/// One line of the table.
pub struct Row {
    pub figure: String,
    pub measured: String,
    pub compared: String,
    pub ratio: Option<f64>,
    pub target: String,
    /// `None` for a row that explains another.
    pub met: Option<bool>,
}

impl Row {
    /// A figure checked against a limit of its own.
    pub fn limit(figure: String, measured: String, target: String, met: bool) -> Row {
        Row {
            figure,
            measured,
            compared: String::new(),
            ratio: None,
            target,
            met: Some(met),
        }
    }

    /// A figure compared with a raw one: met when `ratio` reaches `min`.
    pub fn versus(figure: String, measured: String, compared: String, (ratio, min): (f64, f64)) -> Row {
        Row {
            figure,
            measured,
            compared,
            ratio: Some(ratio),
            target: format!("≥ {min}×"),
            met: Some(ratio >= min),
        }
    }
}

/// Prints the rows as a Markdown table, with a verdict per row.
pub fn print(rows: &[Row], full: bool) {
    println!();
    if !full {
        println!(
            "Smoke run (`cargo test --features full`): reduced sizes, debug build; the verdicts mean nothing here."
        );
    }
    println!("| figure | measured | compared with, same run | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let ratio = r.ratio.map_or("".to_string(), |x| format!("{x:.2}×"));
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        println!(
            "| {} | {} | {} | {ratio} | {} | {met} |",
            r.figure, r.measured, r.compared, r.target
        );
    }
    println!();
}

/// Operations done by concurrent clients in a measured time, with each one's latency.
#[derive(Default)]
pub struct Load {
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
    pub errors: u64,
}

impl Load {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of the latencies (0.99 for p99), in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i].as_secs_f64() * 1e3
    }
}

/// VmHWM of a process: its peak resident set, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    crate::cluster::peak_rss_kib(pid) as f64 / 1024.0
}

/// The value of one sample line (`name{labels} value`) of Prometheus text; 0 when absent.
pub fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A histogram's cumulative buckets `(upper bound, count)`, from Prometheus text.
pub fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The `q` quantile of a histogram, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let share = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return lower.0 + (le - lower.0) * share;
        }
        lower = (le, count);
    }
    f64::NAN
}

/// Observations at or under `bound` in a histogram with such a bucket.
pub fn at_most(buckets: &[(f64, f64)], bound: f64) -> f64 {
    buckets
        .iter()
        .find(|(le, _)| (le - bound).abs() < 1e-9)
        .map_or(f64::NAN, |(_, c)| *c)
}

/// CPU seconds used so far by some processes: by pid, by name (`postgres`, `beam.smp`: every
/// process of that name, found anew at each reading, with the CPU of the children they reaped, so
/// that PostgreSQL's per-connection backends count, also once they have exited), and by the
/// children this process has waited for (wrk).
pub struct Cpu {
    pids: Vec<u32>,
    names: Vec<String>,
}

/// utime + stime (and, with `reaped`, cutime + cstime) of a process, in seconds.
fn cpu_secs(pid: u32, reaped: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses come fields 3 (the state, a letter) onwards: utime,
    // stime, cutime, cstime (fields 14 to 17) are at 11 to 14. The letter counts as a field.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    let fields = if reaped { 11..15 } else { 11..13 };
    fields.map(|i| f.get(i).unwrap_or(&0.0)).sum::<f64>() / 100.0
}

impl Cpu {
    /// The processes with these pids, and those with these exact names.
    pub fn of(pids: &[u32], names: &[&str]) -> Cpu {
        Cpu {
            pids: pids.to_vec(),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// CPU seconds of each pid, then of each name, then of the waited-for children, then of this
    /// process.
    pub fn now(&self) -> Vec<f64> {
        let mut out: Vec<f64> = self.pids.iter().map(|p| cpu_secs(*p, false)).collect();
        for name in &self.names {
            let found = std::process::Command::new("pgrep").args(["-x", name]).output().unwrap();
            let pids = String::from_utf8_lossy(&found.stdout)
                .lines()
                .filter_map(|l| l.parse::<u32>().ok())
                .collect::<Vec<_>>();
            out.push(pids.iter().map(|p| cpu_secs(*p, true)).sum());
        }
        for who in [libc::RUSAGE_CHILDREN, libc::RUSAGE_SELF] {
            // SAFETY: getrusage fills the struct it is given.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(who, &mut usage) };
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            out.push(secs(usage.ru_utime) + secs(usage.ru_stime));
        }
        out
    }
}

/// Milliseconds of CPU per operation of each process between two `Cpu::now` readings.
pub fn cpu_per_op_ms(before: &[f64], after: &[f64], ops: f64) -> Vec<f64> {
    before.iter().zip(after).map(|(b, a)| (a - b) * 1e3 / ops).collect()
}

/// MB/s for `bytes` in `secs`.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}
