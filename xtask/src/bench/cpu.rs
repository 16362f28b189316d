//! CPU accounting from /proc/stat and conntrack's counters from
//! /proc/net/stat/nf_conntrack.
//!
//! /proc/stat is system-wide: every namespace shares the machine's CPUs, so a
//! step's CPU time is the node's forwarding and steering, and also the load
//! generator's sends and the responders' replies. The bench subtracts the same
//! measure taken with no steering at all.
//!
//! Which figure: with tick-based accounting (CONFIG_TICK_CPU_ACCOUNTING, the
//! usual setting) the user / system / softirq split is sampled once per tick,
//! and a load paced by timers, as kxdpgun's is, can alias with the tick and be
//! mostly missed or mostly hit. Idle time is not sampled: with NO_HZ the
//! kernel measures it at every idle entry and exit. So the bench takes busy
//! time = wall time x CPUs - idle - iowait as its figure, and keeps the sampled
//! split beside it for information.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use testbed::NetNs;

/// The aggregate `cpu` line of /proc/stat, in clock ticks, and when it was read.
#[derive(Debug, Clone)]
pub struct Ticks {
    pub at: Instant,
    pub user: u64,
    pub system: u64,
    pub irq: u64,
    pub softirq: u64,
    /// idle + iowait: measured, not sampled, with NO_HZ.
    pub idle: u64,
    /// Each CPU's `cpuN` line: (softirq, idle + iowait).
    pub per_cpu: Vec<(u64, u64)>,
}

impl Ticks {
    pub fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_stat(&stat, Instant::now())
    }
}

pub fn parse_stat(stat: &str, at: Instant) -> Result<Ticks> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no `cpu` line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing /proc/stat")?;
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let per_cpu = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let f = |i: usize| v.get(i).copied().unwrap_or(0);
            (f(6), f(3) + f(4))
        })
        .collect();
    Ok(Ticks {
        at,
        user: field(0) + field(1),
        system: field(2),
        irq: field(5),
        softirq: field(6),
        idle: field(3) + field(4),
        per_cpu,
    })
}

/// CPU time between two samples, in seconds, over all CPUs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    pub wall_s: f64,
    pub cpus: usize,
    /// Wall time x CPUs, less idle and iowait.
    pub busy_s: f64,
    /// The tick-sampled split of the busy time.
    pub user_s: f64,
    pub system_s: f64,
    pub irq_s: f64,
    pub softirq_s: f64,
    /// Each CPU's tick-sampled softirq time, seconds: where the packet
    /// processing ran (kxdpgun's CPU takes the sending side's softirq work).
    #[serde(default)]
    pub softirq_per_cpu_s: Vec<f64>,
    /// Each CPU's busy time (wall time less its measured idle), seconds.
    #[serde(default)]
    pub busy_per_cpu_s: Vec<f64>,
}

impl CpuUse {
    pub fn between(a: Ticks, b: Ticks) -> Self {
        let hz = clock_ticks_per_second();
        let s = |x: u64, y: u64| y.saturating_sub(x) as f64 / hz;
        let cpus = online_cpus();
        let wall_s = b.at.duration_since(a.at).as_secs_f64();
        Self {
            wall_s,
            cpus,
            busy_s: (wall_s * cpus as f64 - s(a.idle, b.idle)).max(0.0),
            user_s: s(a.user, b.user),
            system_s: s(a.system, b.system),
            irq_s: s(a.irq, b.irq),
            softirq_s: s(a.softirq, b.softirq),
            softirq_per_cpu_s: a
                .per_cpu
                .iter()
                .zip(&b.per_cpu)
                .map(|(x, y)| s(x.0, y.0))
                .collect(),
            busy_per_cpu_s: a
                .per_cpu
                .iter()
                .zip(&b.per_cpu)
                .map(|(x, y)| (wall_s - s(x.1, y.1)).max(0.0))
                .collect(),
        }
    }

    /// Each CPU's softirq share of its wall time, in percent, as `cpu0 12%, cpu1 3%`.
    pub fn softirq_split(&self) -> Option<String> {
        (!self.softirq_per_cpu_s.is_empty() && self.wall_s > 0.0).then(|| {
            self.softirq_per_cpu_s
                .iter()
                .enumerate()
                .map(|(i, s)| format!("cpu{i} {:.0}%", s / self.wall_s * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// The sampled kernel share: system + irq + softirq, seconds.
    pub fn kernel_s(&self) -> f64 {
        self.system_s + self.irq_s + self.softirq_s
    }

    /// Busy CPU microseconds per query.
    pub fn us_per(&self, queries: u64) -> Option<f64> {
        (queries > 0).then(|| self.busy_s * 1e6 / queries as f64)
    }

    /// The share of the machine that was busy, 0..1.
    pub fn busy_share(&self) -> f64 {
        self.busy_s / (self.wall_s * self.cpus.max(1) as f64).max(1e-9)
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// How busy the machine is over `span` with nothing of the bench running:
/// other work would be counted as the methods' CPU time.
pub fn background(span: std::time::Duration) -> Result<CpuUse> {
    let a = Ticks::now()?;
    std::thread::sleep(span);
    Ok(CpuUse::between(a, Ticks::now()?))
}

/// The columns of /proc/net/stat/nf_conntrack summed over CPUs (the
/// `entries` column is a global count repeated on every line: taken once).
pub type ConntrackStats = BTreeMap<String, u64>;

/// conntrack's counters in `ns`; empty when conntrack is not loaded.
pub fn conntrack_stats(ns: &NetNs) -> ConntrackStats {
    ns.run(&["cat", "/proc/net/stat/nf_conntrack"])
        .map(|text| parse_conntrack(&text))
        .unwrap_or_default()
}

pub fn parse_conntrack(text: &str) -> ConntrackStats {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return ConntrackStats::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut sums = ConntrackStats::new();
    for line in lines {
        for (name, hex) in names.iter().zip(line.split_whitespace()) {
            let value = u64::from_str_radix(hex, 16).unwrap_or(0);
            let sum = sums.entry((*name).to_owned()).or_default();
            *sum = if *name == "entries" {
                value
            } else {
                *sum + value
            };
        }
    }
    sums
}

/// What moved between two readings, with the entries at the end.
pub fn conntrack_delta(before: &ConntrackStats, after: &ConntrackStats) -> ConntrackStats {
    after
        .iter()
        .map(|(name, v)| {
            let moved = if name == "entries" {
                *v
            } else {
                v.saturating_sub(before.get(name).copied().unwrap_or(0))
            };
            (name.clone(), moved)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_from_measured_idle() {
        let t0 = Instant::now();
        let hz = clock_ticks_per_second();
        let a = parse_stat(
            "cpu  10 0 20 1000 0 1 5 0 0 0\ncpu0 1 2 3 500 0 0 2\ncpu1 1 2 3 500 0 0 3\n",
            t0,
        )
        .unwrap();
        assert_eq!(a.per_cpu, vec![(2, 500), (3, 500)]);
        let later = t0 + std::time::Duration::from_secs(1);
        let b = parse_stat("cpu  15 0 40 1100 7 2 25 0 0 0\n", later).unwrap();
        let used = CpuUse::between(a, b);
        assert!((used.kernel_s() - 41.0 / hz).abs() < 1e-9);
        let want = (used.cpus as f64 - 107.0 / hz).max(0.0);
        assert!((used.busy_s - want).abs() < 1e-9, "{used:?}");
        assert_eq!(used.us_per(0), None);
    }

    #[test]
    fn conntrack_columns_summed_over_cpus() {
        let text = "entries  clashres found new insert_failed drop early_drop\n\
                    00000010  00000000 00000001 0000000a 00000001 00000002 00000000\n\
                    00000010  00000000 00000001 00000005 00000000 00000003 00000001\n";
        let stats = parse_conntrack(text);
        assert_eq!(stats["entries"], 16);
        assert_eq!(stats["new"], 15);
        assert_eq!(stats["drop"], 5);
        let mut later = stats.clone();
        *later.get_mut("drop").unwrap() += 7;
        assert_eq!(conntrack_delta(&stats, &later)["drop"], 7);
        assert_eq!(conntrack_delta(&stats, &later)["entries"], 16);
    }
}
