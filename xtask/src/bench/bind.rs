//! The run against real BIND 9: the XDP responders off, `named -n 1` on the
//! four backends, kxdpgun sending a fresh flow per query (as the capacity runs
//! do), and the methods interleaved so that the other work on a shared machine
//! falls on all of them alike.
//!
//! - `probe`: with every named stopped, a burst of queries is queued on each
//!   backend's socket; the bytes the kernel charged for them (the skb's
//!   truesize, `ss -m`'s `r`) and the socket's buffer (`rb`) say how many
//!   queries the socket holds under each method.
//! - `rounds`: every case (method and BIND's receive buffer) runs every rate
//!   once per round, the cases in a rotated order each round; each step
//!   records what it lost where (`Udp: RcvbufErrors` on every backend), the
//!   CPU per CPU, named's CPU time and the machine's load.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use testbed::{BACKEND_IFACE, NetNs};

use super::{
    INTERRUPTED, MethodResult, Plan, SENT_SHARE, Status, check_interrupt,
    cpu::{CpuUse, Ticks},
    load::{self, Burst},
    methods::{self, Method},
    put_on, say,
    setup::Bed,
};

/// One thing compared: a steering method with BIND's `udp-receive-buffer`
/// (None: the kernel's `net.core.rmem_default`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    pub id: String,
    pub method: String,
    pub label: String,
    pub buffer: Option<u32>,
}

/// The cases, the reference (iptables nth, BIND as installed) first.
pub fn cases(plan: &Plan) -> Vec<Case> {
    let raised = Some(plan.bind_receive_buffer);
    let case = |id: &str, method: &str, label: &str, buffer: Option<u32>| Case {
        id: id.to_owned(),
        method: method.to_owned(),
        label: label.to_owned(),
        buffer,
    };
    vec![
        case(
            "iptables-nth",
            "iptables-nth",
            "iptables nth, BIND's default buffer",
            None,
        ),
        case(
            "dnsteer-nth",
            "dnsteer-nth",
            "dnsteer nth, XDP driver mode, BIND's default buffer",
            None,
        ),
        case(
            "dnsteer-nth+buffer",
            "dnsteer-nth",
            "dnsteer nth, XDP driver mode, BIND `udp-receive-buffer` raised",
            raised,
        ),
    ]
}

/// The method a case or probe puts on the node.
fn method(id: &str) -> Result<Method> {
    methods::all()
        .into_iter()
        .find(|m| m.id == id)
        .with_context(|| format!("no method {id}"))
}

/// One offered rate of one case in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub round: usize,
    pub offered: u32,
    pub burst: Burst,
    /// The generator sent at least `SENT_SHARE` of the offered queries.
    pub offered_in_full: bool,
    /// `Udp: RcvbufErrors` that moved on each backend: queries dropped at
    /// named's full socket.
    pub rcvbuf_errors: Vec<u64>,
    /// CPU seconds all named processes used over the whole step.
    pub named_cpu_s: f64,
    pub wall_s: f64,
    /// kxdpgun's steady window (per-CPU softirq and busy time in it).
    pub window: Option<load::Window>,
    /// CPU time over the whole step (kxdpgun's start and wait included): the
    /// tick-sampled softirq split gets more ticks than in the window.
    #[serde(default)]
    pub cpu: CpuUse,
    /// /proc/loadavg's 1-minute figure when the step started.
    pub loadavg: f64,
}

impl Step {
    pub fn loss(&self) -> f64 {
        self.burst.loss()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: Case,
    pub status: Status,
    pub reason: Option<String>,
    pub steps: Vec<Step>,
}

impl CaseResult {
    /// The unanswered shares at `rate`, one per round.
    pub fn losses_at(&self, rate: u32) -> Vec<f64> {
        self.steps
            .iter()
            .filter(|s| s.offered == rate)
            .map(Step::loss)
            .collect()
    }

    /// Per round: the highest rate answered in full (no query unanswered),
    /// with every lower rate of that round answered in full too; None when
    /// the lowest rate lost queries.
    pub fn all_answered_per_round(&self, rates: &[u32]) -> Vec<Option<u32>> {
        let rounds = self
            .steps
            .iter()
            .map(|s| s.round)
            .max()
            .map_or(0, |r| r + 1);
        (0..rounds)
            .map(|round| {
                let mut best = None;
                for &rate in rates {
                    match self
                        .steps
                        .iter()
                        .find(|s| s.round == round && s.offered == rate)
                    {
                        Some(s) if s.burst.unanswered() == 0 && s.offered_in_full => {
                            best = Some(rate);
                        }
                        _ => break,
                    }
                }
                best
            })
            .collect()
    }
}

/// How many queries a backend's socket holds under one method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub case: String,
    pub sent: u64,
    /// Per backend: bytes charged to named's socket (`ss -m` r), its buffer (rb),
    /// and the queries dropped at it (RcvbufErrors).
    pub queued_bytes: Vec<u64>,
    pub buffer_bytes: Vec<u64>,
    pub dropped: Vec<u64>,
}

impl Probe {
    /// Bytes charged per queued query: all bytes queued over the queries that
    /// were not dropped.
    pub fn bytes_per_query(&self) -> Option<f64> {
        let dropped: u64 = self.dropped.iter().sum();
        let queued = self.sent.checked_sub(dropped).filter(|q| *q > 0)?;
        Some(self.queued_bytes.iter().sum::<u64>() as f64 / queued as f64)
    }

    /// Queries one socket holds: its buffer over the bytes per query.
    pub fn holds(&self) -> Option<f64> {
        let rb = *self.buffer_bytes.first()? as f64;
        self.bytes_per_query().map(|b| rb / b)
    }
}

/// Everything the BIND run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BindRuns {
    pub rates: Vec<u32>,
    pub rounds: usize,
    pub step_s: f64,
    /// BIND's `udp-receive-buffer` in the `+buffer` cases.
    pub raised_buffer: u32,
    pub probes: Vec<Probe>,
    pub cases: Vec<CaseResult>,
    pub elapsed_s: f64,
}

/// The pid of each backend's named, in backend order.
fn named_pids(bed: &Bed) -> Vec<u32> {
    bed.topo
        .backends
        .iter()
        .filter_map(|b| b.dns_pid())
        .collect()
}

/// `Udp: RcvbufErrors` in the namespace of `pid` (/proc/PID/net is that
/// process's network namespace: no process to start).
fn rcvbuf_errors(pid: u32) -> u64 {
    let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process (all its threads), seconds.
fn process_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat(5), counted after the state (field 3).
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// named's UDP socket on port 53 in `ns`: (r, rb) from `ss -m`.
fn socket_memory(ns: &NetNs) -> Result<(u64, u64)> {
    let out = ns.run(&["ss", "-uamnH", "sport", "=", ":53"])?;
    let field = |key: &str| -> Option<u64> {
        let at = out.find(key)? + key.len();
        let digits: String = out[at..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    Ok((
        field("skmem:(r").context("no skmem r in ss -m")?,
        field(",rb").context("no skmem rb in ss -m")?,
    ))
}

fn signal_named(pids: &[u32], signal: libc::c_int) {
    for &pid in pids {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: the test bed's own named processes, still running.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// Turns GRO on or off on every backend's interface: `XDP_REDIRECT` into a veth
/// needs NAPI (GRO or an XDP program) on the receiving end.
fn backend_gro(bed: &Bed, on: bool) -> Result<()> {
    for b in &bed.topo.backends {
        b.ns.run(&[
            "ethtool",
            "-K",
            BACKEND_IFACE,
            "gro",
            if on { "on" } else { "off" },
        ])?;
    }
    Ok(())
}

/// Queues `PROBE_QUERIES` on the stopped named sockets under `case` and
/// reads what they were charged.
const PROBE_QUERIES: u32 = 1000;
const PROBE_RATE: u32 = 5000;

fn probe(
    bed: &Bed,
    dnsteer_bin: &Path,
    queries: &Path,
    id: &str,
    method_id: &str,
) -> Result<Option<Probe>> {
    let m = method(method_id)?;
    let mut scratch = MethodResult::new(&m);
    let redirect = method_id == "dnsteer-redirect";
    if redirect {
        backend_gro(bed, true)?;
    }
    let Some(applied) = put_on(bed, dnsteer_bin, &m, &mut scratch) else {
        if redirect {
            backend_gro(bed, false)?;
        }
        return Ok(None);
    };
    methods::flush_conntrack(&bed.topo.node);
    let pids = named_pids(bed);
    let before: Vec<u64> = pids.iter().map(|p| rcvbuf_errors(*p)).collect();
    signal_named(&pids, libc::SIGSTOP);
    let outcome = (|| -> Result<Probe> {
        let secs = f64::from(PROBE_QUERIES) / f64::from(PROBE_RATE);
        let (burst, _) = load::kxdpgun(
            &bed.topo.client,
            queries,
            bed.service(),
            &bed.node_mac,
            PROBE_RATE,
            Duration::from_secs_f64(secs),
        )?;
        std::thread::sleep(Duration::from_millis(200));
        let mut probe = Probe {
            case: id.to_owned(),
            sent: burst.sent,
            queued_bytes: Vec::new(),
            buffer_bytes: Vec::new(),
            dropped: Vec::new(),
        };
        for (b, (pid, was)) in bed.topo.backends.iter().zip(pids.iter().zip(&before)) {
            let (r, rb) = socket_memory(&b.ns)?;
            probe.queued_bytes.push(r);
            probe.buffer_bytes.push(rb);
            probe.dropped.push(rcvbuf_errors(*pid).saturating_sub(*was));
        }
        Ok(probe)
    })();
    signal_named(&pids, libc::SIGCONT);
    bed.clear_client_xdp()?;
    methods::remove(applied, &bed.topo.node)?;
    if redirect {
        backend_gro(bed, false)?;
    }
    // named answers what was queued; let it, before anything is measured.
    std::thread::sleep(Duration::from_millis(300));
    outcome.map(Some)
}

pub fn probe_line(p: &Probe) -> String {
    format!(
        "  probe {}: {} queries to stopped named: {} bytes queued per query, buffer {} bytes, holds {} queries; dropped {:?}",
        p.case,
        p.sent,
        p.bytes_per_query()
            .map_or("-".to_owned(), |b| format!("{b:.0}")),
        p.buffer_bytes.first().copied().unwrap_or(0),
        p.holds().map_or("-".to_owned(), |h| format!("{h:.0}")),
        p.dropped
    )
}

pub fn step_line(id: &str, s: &Step) -> String {
    let split = s.cpu.softirq_split().unwrap_or_default();
    format!(
        "  [{}] {id} (BIND): offered {:>6}/s: sent {}, answered {} ({:.3}% unanswered{}), RcvbufErrors {:?}, named CPU {:.0}%, softirq {split}, load {:.1}",
        s.round,
        s.offered,
        s.burst.sent,
        s.burst.answered,
        s.loss() * 100.0,
        if s.offered_in_full {
            ""
        } else {
            ", not sent in full"
        },
        s.rcvbuf_errors,
        s.named_cpu_s / s.wall_s.max(1e-9) * 100.0,
        s.loadavg
    )
}

fn step(bed: &Bed, queries: &Path, plan: &Plan, round: usize, rate: u32) -> Result<Step> {
    check_interrupt()?;
    methods::flush_conntrack(&bed.topo.node);
    let pids = named_pids(bed);
    let errors0: Vec<u64> = pids.iter().map(|p| rcvbuf_errors(*p)).collect();
    let cpu0: f64 = pids.iter().map(|p| process_cpu_s(*p)).sum();
    let load = loadavg();
    let ticks = Ticks::now()?;
    let started = Instant::now();
    let (burst, window) = load::kxdpgun(
        &bed.topo.client,
        queries,
        bed.service(),
        &bed.node_mac,
        rate,
        Duration::from_secs_f64(plan.bind_step_s),
    )?;
    let wall_s = started.elapsed().as_secs_f64();
    let cpu = CpuUse::between(ticks, Ticks::now()?);
    let named_cpu_s = pids.iter().map(|p| process_cpu_s(*p)).sum::<f64>() - cpu0;
    let rcvbuf_errors = pids
        .iter()
        .zip(&errors0)
        .map(|(p, e)| rcvbuf_errors(*p).saturating_sub(*e))
        .collect();
    Ok(Step {
        round,
        offered: rate,
        offered_in_full: burst.sent as f64 >= SENT_SHARE * f64::from(rate) * burst.duration_s,
        burst,
        rcvbuf_errors,
        named_cpu_s,
        wall_s,
        window,
        cpu,
        loadavg: load,
    })
}

/// The probes, then `plan.bind_rounds` rounds of every case at every rate.
pub fn run(bed: &mut Bed, dnsteer_bin: &Path, queries: &Path, plan: &Plan) -> Result<BindRuns> {
    let started = Instant::now();
    let cases = cases(plan);
    let mut out = BindRuns {
        rates: plan.bind_rates.clone(),
        rounds: plan.bind_rounds,
        step_s: plan.bind_step_s,
        raised_buffer: plan.bind_receive_buffer,
        ..Default::default()
    };
    out.cases = cases
        .iter()
        .map(|c| CaseResult {
            case: c.clone(),
            status: Status::Measured,
            reason: None,
            steps: Vec::new(),
        })
        .collect();

    // What each way of steering costs a queued query, named stopped.
    let mut buffer: Option<u32> = None;
    let probes: [(&str, &str, Option<u32>); 6] = [
        ("iptables-nth", "iptables-nth", None),
        ("dnsteer-nth", "dnsteer-nth", None),
        ("dnsteer-skb", "dnsteer-skb", None),
        ("dnsteer-redirect", "dnsteer-redirect", None),
        (
            "dnsteer-nth+buffer",
            "dnsteer-nth",
            Some(plan.bind_receive_buffer),
        ),
        (
            "iptables-nth+buffer",
            "iptables-nth",
            Some(plan.bind_receive_buffer),
        ),
    ];
    // The smoke test keeps the two that need no restart of named.
    let probes = if plan.quick {
        &probes[..2]
    } else {
        &probes[..]
    };
    for &(id, method_id, want) in probes {
        check_interrupt()?;
        if want != buffer {
            bed.topo.set_dns_receive_buffer(want)?;
            buffer = want;
        }
        match probe(bed, dnsteer_bin, queries, id, method_id) {
            Ok(Some(p)) => {
                say(&probe_line(&p));
                out.probes.push(p);
            }
            Ok(None) => say(&format!("  probe {id}: the method is not available")),
            Err(e) if !INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) => {
                say(&format!("  probe {id}: {e:#}"));
            }
            Err(e) => return Err(e),
        }
    }

    for round in 0..plan.bind_rounds {
        // Alternate which buffer goes first, so one restart of named per round.
        let mut groups: BTreeMap<Option<u32>, Vec<usize>> = BTreeMap::new();
        for (i, c) in cases.iter().enumerate() {
            groups.entry(c.buffer).or_default().push(i);
        }
        let mut order: Vec<(Option<u32>, Vec<usize>)> = groups.into_iter().collect();
        if order.first().map(|g| g.0) != Some(buffer) {
            order.reverse();
        }
        for (want, mut idx) in order {
            if want != buffer {
                check_interrupt()?;
                bed.topo.set_dns_receive_buffer(want)?;
                buffer = want;
            }
            let k = idx.len();
            idx.rotate_left(round % k.max(1));
            for i in idx {
                check_interrupt()?;
                let result = &mut out.cases[i];
                if !matches!(result.status, Status::Measured) {
                    continue;
                }
                let m = method(&result.case.method)?;
                let mut scratch = MethodResult::new(&m);
                let Some(applied) = put_on(bed, dnsteer_bin, &m, &mut scratch) else {
                    result.status = scratch.status;
                    result.reason = scratch.reason;
                    continue;
                };
                let mut outcome = Ok(());
                for &rate in &plan.bind_rates {
                    match step(bed, queries, plan, round, rate) {
                        Ok(s) => {
                            say(&step_line(&result.case.id, &s));
                            result.steps.push(s);
                        }
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    }
                }
                bed.clear_client_xdp()?;
                methods::remove(applied, &bed.topo.node)?;
                if let Err(e) = outcome {
                    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                        return Err(e);
                    }
                    result.status = Status::Skipped;
                    result.reason = Some(format!("the load could not run: {e:#}"));
                }
            }
        }
    }
    if buffer.is_some() {
        bed.topo.set_dns_receive_buffer(None)?;
    }
    out.elapsed_s = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Median of values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// How two sets of repeats compare: `Higher` / `Lower` when their ranges do not
/// overlap (for 5 against 5 that is a Mann-Whitney U of 0, p = 0.008
/// two-sided), `Within` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versus {
    Higher,
    Lower,
    Within,
}

pub fn versus(a: &[f64], b: &[f64]) -> Option<Versus> {
    // Fewer repeats than that say nothing about the noise.
    if a.len() < MIN_REPEATS || b.len() < MIN_REPEATS {
        return None;
    }
    let (amin, amax) = range(a);
    let (bmin, bmax) = range(b);
    Some(if amin > bmax {
        Versus::Higher
    } else if amax < bmin {
        Versus::Lower
    } else {
        Versus::Within
    })
}

/// The fewest repeats on each side for a statement about noise.
pub const MIN_REPEATS: usize = 3;

pub fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(
            versus(&[5.0, 6.0, 7.0], &[1.0, 4.9, 2.0]),
            Some(Versus::Higher)
        );
        assert_eq!(
            versus(&[1.0, 2.0, 1.5], &[2.5, 3.0, 4.0]),
            Some(Versus::Lower)
        );
        assert_eq!(
            versus(&[1.0, 3.0, 2.0], &[2.0, 4.0, 3.0]),
            Some(Versus::Within)
        );
        assert_eq!(versus(&[1.0], &[9.0]), None);
    }

    #[test]
    fn bytes_per_query_from_what_was_queued() {
        let p = Probe {
            case: "x".into(),
            sent: 1000,
            queued_bytes: vec![212_000, 212_000, 212_000, 212_000],
            buffer_bytes: vec![212_992; 4],
            dropped: vec![50, 50, 50, 50],
        };
        assert_eq!(p.bytes_per_query(), Some(1060.0));
        assert!((p.holds().unwrap() - 200.9).abs() < 0.1);
    }

    #[test]
    fn all_answered_stops_at_the_first_loss() {
        let step = |round, offered, answered| Step {
            round,
            offered,
            burst: Burst {
                sent: 100,
                answered,
                duration_s: 0.001,
            },
            offered_in_full: true,
            rcvbuf_errors: vec![],
            named_cpu_s: 0.0,
            wall_s: 1.0,
            window: None,
            cpu: CpuUse::default(),
            loadavg: 0.0,
        };
        let r = CaseResult {
            case: Case {
                id: "x".into(),
                method: "x".into(),
                label: "x".into(),
                buffer: None,
            },
            status: Status::Measured,
            reason: None,
            steps: vec![
                step(0, 10, 100),
                step(0, 20, 99),
                step(0, 30, 100),
                step(1, 10, 99),
                step(1, 20, 100),
            ],
        };
        assert_eq!(
            r.all_answered_per_round(&[10, 20, 30]),
            vec![Some(10), None]
        );
        assert_eq!(r.losses_at(20), vec![0.01, 0.0]);
    }
}
