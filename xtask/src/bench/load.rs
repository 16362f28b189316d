//! The loads: kxdpgun (AF_XDP, a new source port and address walk so every
//! query is a new flow) for capacity and the run against BIND, and the test
//! bed's paced generator for round trips.

use std::{
    fs,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use testbed::{
    CLIENT_IFACE, NetNs, WHOAMI_NAME,
    load::{Answer, PacedLoad, run_paced},
};

use super::{
    cpu::{CpuUse, Ticks},
    setup::LOADGEN_SOURCES,
};

/// What one kxdpgun run reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Burst {
    pub sent: u64,
    pub answered: u64,
    /// As the generator measured it, seconds.
    pub duration_s: f64,
}

impl Burst {
    pub fn unanswered(&self) -> u64 {
        self.sent.saturating_sub(self.answered)
    }

    /// Unanswered share of what was sent, 0..1 (1 when nothing was sent).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        self.unanswered() as f64 / self.sent as f64
    }
}

/// The query kxdpgun sends, as its input file.
pub fn write_query_file(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("queries.txt");
    fs::write(&path, format!("{WHOAMI_NAME} A\n")).context("writing the query file")?;
    Ok(path)
}

/// How long after its start kxdpgun is asked for its first running total:
/// it takes about a second to set up its AF_XDP socket before it sends.
const WARMUP: Duration = Duration::from_millis(1500);

/// The part of a kxdpgun run between two of its running totals (SIGUSR1),
/// away from its start-up and its wait for the last replies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Window {
    pub sent: u64,
    pub answered: u64,
    pub seconds: f64,
    pub cpu: CpuUse,
}

/// `rate` queries/s for `duration` from the client with kxdpgun to `target`
/// (port 53), through `gateway_mac` (the node's eth3). The totals are the whole
/// run's; the window is `duration - 1 s` of steady sending, with the kernel
/// CPU time spent in it.
pub fn kxdpgun(
    client: &NetNs,
    queries: &Path,
    target: SocketAddr,
    gateway_mac: &str,
    rate: u32,
    duration: Duration,
) -> Result<(Burst, Option<Window>)> {
    // The previous run's AF_XDP socket is released asynchronously; until it
    // is, binding the queue again fails with EBUSY.
    let mut tries = 0;
    loop {
        match kxdpgun_once(client, queries, target, gateway_mac, rate, duration) {
            Err(e) if tries < BUSY_RETRIES && format!("{e:#}").contains(BUSY) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// What kxdpgun says when the interface queue is still bound by another socket.
const BUSY: &str = "resource is busy";
const BUSY_RETRIES: usize = 10;

fn kxdpgun_once(
    client: &NetNs,
    queries: &Path,
    target: SocketAddr,
    gateway_mac: &str,
    rate: u32,
    duration: Duration,
) -> Result<(Burst, Option<Window>)> {
    let secs = format!("{:.3}", duration.as_secs_f64());
    let mut cmd = client.command("kxdpgun");
    cmd.args(["-t", &secs, "-Q", &rate.to_string(), "-I", CLIENT_IFACE])
        .args(["-l", LOADGEN_SOURCES, "-R", gateway_mac])
        .args(["-p", &target.port().to_string(), "-i"])
        .arg(queries)
        .arg(target.ip().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().context("starting kxdpgun")?;
    // `ip netns exec` execs kxdpgun in place: the child is kxdpgun.
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let window = duration
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_millis(300));
    std::thread::sleep(WARMUP);
    let t1 = Ticks::now()?;
    // SAFETY: signalling our own child, not yet reaped; kxdpgun prints its
    // running totals on SIGUSR1.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let started = Instant::now();
    std::thread::sleep(window);
    let t2 = Ticks::now()?;
    let seconds = started.elapsed().as_secs_f64();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let out = child.wait_with_output().context("waiting for kxdpgun")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "kxdpgun failed ({}): {}{}",
            out.status,
            stderr.trim(),
            stdout.trim()
        );
    }
    let totals = parse_kxdpgun(&stdout, duration)
        .with_context(|| format!("reading kxdpgun's output:\n{stdout}{stderr}"))?;
    let (Some(a), Some(b), Some(last)) = (totals.first(), totals.get(1), totals.last()) else {
        bail!("kxdpgun printed no totals:\n{stdout}{stderr}");
    };
    // Three totals: the two running ones and the final one. With fewer, the
    // run ended before the second signal: no window.
    let window = (totals.len() >= 3 && a.sent > 0).then(|| Window {
        sent: b.sent.saturating_sub(a.sent),
        answered: b.answered.saturating_sub(a.answered),
        seconds,
        cpu: CpuUse::between(t1, t2),
    });
    Ok((last.clone(), window))
}

/// Every total kxdpgun printed, in order: `total queries: N (R pps) ...`
/// and `total replies: M ...` (absent when nothing was sent yet).
pub fn parse_kxdpgun(out: &str, duration: Duration) -> Result<Vec<Burst>> {
    let first_number = |rest: &str| -> Option<u64> { rest.split_whitespace().next()?.parse().ok() };
    let mut totals: Vec<Burst> = Vec::new();
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("total queries:") {
            totals.push(Burst {
                sent: first_number(rest).context("a `total queries:` line without a number")?,
                answered: 0,
                duration_s: duration.as_secs_f64(),
            });
        } else if let Some(rest) = line.strip_prefix("total replies:")
            && let Some(last) = totals.last_mut()
        {
            last.answered = first_number(rest).unwrap_or(0);
        }
    }
    if totals.is_empty() {
        bail!("no `total queries:` line");
    }
    Ok(totals)
}

/// Round trips at a steady rate (the test bed's paced generator: a fresh
/// kernel UDP socket per query), over the queries answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub rate: u32,
    pub duration_s: f64,
    pub sent: usize,
    pub answered: usize,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

pub fn latency(
    client: &NetNs,
    target: SocketAddr,
    rate: u32,
    duration: Duration,
) -> Result<Latency> {
    let load = PacedLoad::new(vec![target], WHOAMI_NAME, rate, duration);
    let records = run_paced(client, &load, None)?;
    let mut rtts: Vec<f64> = records
        .iter()
        .filter(|r| matches!(r.answer, Answer::Answered(_)))
        .filter_map(|r| r.rtt)
        .map(|d| d.as_secs_f64() * 1e6)
        .collect();
    rtts.sort_by(f64::total_cmp);
    Ok(Latency {
        rate,
        duration_s: duration.as_secs_f64(),
        sent: records.len(),
        answered: rtts.len(),
        p50_us: percentile(&rtts, 0.50),
        p99_us: percentile(&rtts, 0.99),
    })
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kxdpgun_totals() {
        let out = "using interface eth0, XDP threads 1, IPv4/UDP, native mode\n\
                   total queries:     50000 (10000 pps) (100.000000%)\n\
                   total replies:     49990 (9998 pps) (99.980000%)\n\
                   average DNS reply size: 64 B\n\
                   total queries:     90000 (10000 pps) (100.000000%)\n\
                   total replies:     89990 (9998 pps) (99.980000%)\n";
        let totals = parse_kxdpgun(out, Duration::from_secs(5)).unwrap();
        assert_eq!(totals.len(), 2);
        assert_eq!((totals[1].sent, totals[1].answered), (90000, 89990));
        let burst = &totals[0];
        assert_eq!(
            (burst.sent, burst.answered, burst.unanswered()),
            (50000, 49990, 10)
        );
        let none = parse_kxdpgun("total queries:     0 (0 pps)\n", Duration::from_secs(1));
        assert_eq!(none.unwrap()[0].loss(), 1.0);
        let failed = parse_kxdpgun("failed to initialize XDP socket\n", Duration::from_secs(1));
        assert!(failed.is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
