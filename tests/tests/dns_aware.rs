//! End to end, issue 15's DNS-aware balancing: three backends running the test bed's
//! responder, a paced load from the client with a fresh source port per query, and
//! what the kernel counts per backend (`dns` in `dnsteer stats --json`, `/metrics`).
//!
//! - `select = "least_outstanding"` against `nth` with one backend answering late: the
//!   slow one gets far fewer queries, and the client's latency drops.
//! - `[service.passive]` ejects a backend that answers SERVFAIL within its window,
//!   readmits it after `eject_for`, ejects it again while it still fails, and keeps it
//!   once it answers well.
//! - The latency histogram counts exactly the answers the client got, in the bucket of
//!   the backends' delay, in `stats --json` and in `/metrics` alike.
//! - A backend that stops answering is ejected for its timeouts, and once its
//!   unanswered queries expired least_outstanding gives it its share again.
//!
//! Health transitions are timed on the traffic (the client's answers, the responder's
//! queries): `stats` shows a backend's state only after an RCU grace period, and waits
//! for the daemon's event loop, which grace periods hold up on a loaded machine.
//!
//! The tests run one at a time (their latencies would suffer from each other on two
//! CPUs) and print one summary line per measurement (the closing note of issue 15
//! quotes them).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use dnsteer::observe::stats::{BackendStats, Snapshot};
use hickory_proto::op::ResponseCode;
use testbed::{
    DNS_PORT, NetNs, Topology, TopologyConfig, WHOAMI_NAME,
    dnsteer::{Dnsteer, Launch, binary, service_config},
    load::{self, Answer, PacedLoad, QueryRecord},
    require_root_tools,
    responder::Behaviour,
};

/// One test at a time: each measures latencies on a 2-CPU machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// Sender threads, one pinned to each CPU, so the XDP program runs on both.
const SENDER_CPUS: [usize; 2] = [0, 1];
/// Where `dnsteer run --metrics-listen` listens, inside the node namespace.
const METRICS: &str = "127.0.0.1:9153";

/// Holds the others off and runs this test (its threads, responders and dnsteer) at
/// nice -20, so builds on the machine stall the senders and responders less.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    require_root_tools(&["ip", "sysctl"]).unwrap_or_else(|e| panic!("{e:#}"));
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs 2 CPUs, the machine has {cpus}");
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: gettid has no preconditions; setpriority changes this thread's nice
    // value only (threads and children inherit it).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20) };
    assert_eq!(
        rc,
        0,
        "setpriority(-20): {}",
        std::io::Error::last_os_error()
    );
    guard
}

/// Three backends with a responder each on port 53 (`behaviours[i]`), no BIND.
fn topology(node_iface: &str, behaviours: [Behaviour; 3]) -> Topology {
    let mut topo = Topology::build(TopologyConfig {
        backends: 3,
        node_iface: node_iface.to_owned(),
        dns: false,
        ..TopologyConfig::default()
    })
    .expect("test bed");
    for (i, behaviour) in behaviours.into_iter().enumerate() {
        topo.start_responder(i, DNS_PORT, behaviour)
            .unwrap_or_else(|e| panic!("responder on backend {i}: {e:#}"));
    }
    // Fresh sockets get random ports: a wide range keeps ports from coming back soon.
    topo.client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65535")
        .unwrap();
    topo
}

/// `dnsteer run` on the node with `config` and /metrics; shared mounts, so `stats`
/// reads the pins.
fn start(topo: &Topology, config: &str) -> Dnsteer {
    Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &topo.config.node_iface,
        config,
        &["--metrics-listen", METRICS],
    )
    .unwrap_or_else(|e| panic!("dnsteer run: {e:#}"))
}

fn snapshot(dnsteer: &Dnsteer) -> Snapshot {
    let json = dnsteer.stats(&["--json"]).expect("dnsteer stats --json");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats JSON ({e}): {json}"))
}

fn backend<'a>(snapshot: &'a Snapshot, address: &str) -> &'a BackendStats {
    snapshot.services[0]
        .backends
        .iter()
        .find(|b| b.address == address && b.state != "removed")
        .unwrap_or_else(|| panic!("{address} not in {snapshot:?}"))
}

fn ipv4(addr: SocketAddr) -> Ipv4Addr {
    match addr.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!("the IPv4 service"),
    }
}

/// The answers' round trips on the client's clock, sorted.
fn rtts(records: &[QueryRecord]) -> Vec<Duration> {
    let mut rtts: Vec<Duration> = records
        .iter()
        .filter(|r| matches!(r.answer, Answer::Answered(_)))
        .filter_map(|r| r.rtt)
        .collect();
    rtts.sort();
    rtts
}

/// The `q` quantile (nearest rank) of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    assert!(!sorted.is_empty(), "no answers to take a quantile of");
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn mean(values: &[Duration]) -> Duration {
    values.iter().sum::<Duration>() / values.len().max(1) as u32
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------------
// least_outstanding against nth, one slow backend.

/// The slow backend answers this late, the others at once. Long next to the stalls of
/// a loaded machine (tens of ms), so slow and fast answers stay apart.
const SLOW_DELAY: Duration = Duration::from_millis(200);
const SLOW: usize = 1;
/// 1000 q/s for 5 s per policy: under nth 67 queries wait at the slow backend.
const LO_RATE: u32 = 1000;
const LO_RUN: Duration = Duration::from_secs(5);
/// The client gives up on a query after this: SLOW_DELAY and ample slack.
const LO_TIMEOUT: Duration = Duration::from_secs(2);
/// The slow backend's share under least_outstanding stays under this. The second
/// draw is made again (up to three times) while it names the first's backend, so
/// the slow one is its own rival in 1/81 of picks; it wins no comparison while
/// queries wait there (rate x share x delay), and ties only when nothing waits
/// there. Room for a fast responder stalled by the machine for a while; under nth
/// the share is 1/3.
const LO_MAX_SLOW_SHARE: f64 = 0.2;

/// What one policy did with the load.
struct Run {
    select: &'static str,
    records: Vec<QueryRecord>,
    /// Sorted round trips of the answered queries.
    rtts: Vec<Duration>,
    /// Answers per backend (by the A record, which names it), in backend order.
    answered_by: Vec<usize>,
    /// `dns.queries` per backend, in backend order.
    kernel_queries: Vec<u64>,
}

impl Run {
    fn share(&self, i: usize) -> f64 {
        self.answered_by[i] as f64 / self.records.len().max(1) as f64
    }

    fn line(&self) -> String {
        let summary = load::summarize(&self.records);
        let shares: Vec<String> = (0..self.answered_by.len())
            .map(|i| {
                format!(
                    "{}{} {} ({:.1}%; dns.queries {})",
                    i,
                    if i == SLOW { " (slow)" } else { "" },
                    self.answered_by[i],
                    100.0 * self.share(i),
                    self.kernel_queries[i]
                )
            })
            .collect();
        format!(
            "dns_aware select={:<17} sent {} at {:.0}/s, answered {}, lost {}; client \
             latency p50 {} p80 {} p90 {} p99 {} mean {}; backends {}",
            self.select,
            summary.sent,
            summary.achieved_rate,
            summary.answered,
            summary.sent - summary.answered,
            ms(quantile(&self.rtts, 0.5)),
            ms(quantile(&self.rtts, 0.8)),
            ms(quantile(&self.rtts, 0.9)),
            ms(quantile(&self.rtts, 0.99)),
            ms(mean(&self.rtts)),
            shares.join(", "),
        )
    }
}

/// Runs the load through a fresh `dnsteer run` with `select`; panics unless every
/// query was answered from the service address and the kernel counted, per backend,
/// exactly the queries each answered.
fn run_policy(topo: &Topology, select: &'static str) -> Run {
    let config = service_config(
        &topo.config.node_iface,
        select,
        &topo.service_targets(),
        &topo.backend_targets(),
    );
    let mut dnsteer = start(topo, &config);
    let load = PacedLoad {
        timeout: LO_TIMEOUT,
        ..PacedLoad::new(topo.service_targets(), WHOAMI_NAME, LO_RATE, LO_RUN)
    };
    let records =
        load::run_paced_on_cpus(&topo.client, &load, &SENDER_CPUS, None).expect("the paced load");
    for b in &topo.backends {
        b.responder()
            .unwrap()
            .wait_idle(LO_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let snap = snapshot(&dnsteer);
    dnsteer
        .stop()
        .unwrap_or_else(|e| panic!("stopping dnsteer: {e:#}"));
    let summary = load::summarize(&records);
    let addrs = topo.backend_addrs();
    let answered_by: Vec<usize> = addrs
        .iter()
        .map(|a| summary.by_answer.get(a).copied().unwrap_or(0))
        .collect();
    let kernel_queries: Vec<u64> = topo
        .backend_targets()
        .iter()
        .map(|a| backend(&snap, &a.to_string()).dns.queries)
        .collect();
    let run = Run {
        select,
        rtts: rtts(&records),
        records,
        answered_by,
        kernel_queries,
    };
    println!("{}", run.line());
    assert!(
        summary.achieved_rate >= f64::from(LO_RATE) * 0.9,
        "select={select}: the generator sent {:.0}/s of {LO_RATE}/s; the machine is too busy",
        summary.achieved_rate
    );
    assert_eq!(
        summary.answered,
        summary.sent,
        "select={select}: every query must be answered from the service address: {summary}; \
         first losses {:?}",
        run.records
            .iter()
            .filter(|r| !matches!(r.answer, Answer::Answered(_)))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        run.kernel_queries,
        run.answered_by
            .iter()
            .map(|&n| n as u64)
            .collect::<Vec<_>>(),
        "select={select}: dns.queries per backend must be the answers the client got from each"
    );
    run
}

/// nth, then least_outstanding, through the same backends, one of them slow.
fn compare_policies(node_iface: &str) -> (Run, Run) {
    let mut behaviours = [Behaviour::default(); 3];
    behaviours[SLOW] = Behaviour::delayed(SLOW_DELAY);
    let topo = topology(node_iface, behaviours);
    let nth = run_policy(&topo, "nth");
    let lo = run_policy(&topo, "least_outstanding");
    (nth, lo)
}

#[test]
fn dns_aware_least_outstanding_steers_around_a_slow_backend() {
    let _serial = exclusive();
    let (nth, lo) = compare_policies("da0");

    // nth: a third of the queries wait for the slow backend, so the latency from the
    // 67th percentile up is its delay. The premise the comparison stands on.
    let nth_share = nth.share(SLOW);
    assert!(
        (0.3..0.37).contains(&nth_share),
        "nth must send a third of the queries to each backend: slow share {nth_share:.3}"
    );
    assert!(
        quantile(&nth.rtts, 0.8) >= SLOW_DELAY,
        "nth: p80 {} must be the slow backend's delay {}",
        ms(quantile(&nth.rtts, 0.8)),
        ms(SLOW_DELAY)
    );

    // least_outstanding: the slow backend only wins when the draws cannot avoid it.
    let lo_share = lo.share(SLOW);
    assert!(
        lo_share < LO_MAX_SLOW_SHARE,
        "least_outstanding must send the slow backend under {LO_MAX_SLOW_SHARE} of the \
         queries (1/9 from two draws that both pick it), sent {lo_share:.3}; nth sent \
         {nth_share:.3}\n{}\n{}",
        nth.line(),
        lo.line()
    );
    // So the queries from the 80th percentile up to the ~89th, slow under nth, are fast
    // now, and the mean drops with the slow share (to about a third).
    let (nth_p80, lo_p80) = (quantile(&nth.rtts, 0.8), quantile(&lo.rtts, 0.8));
    assert!(
        lo_p80 < SLOW_DELAY / 2,
        "least_outstanding: p80 {} must be well under the slow delay {} (nth: {})",
        ms(lo_p80),
        ms(SLOW_DELAY),
        ms(nth_p80)
    );
    let (nth_mean, lo_mean) = (mean(&nth.rtts), mean(&lo.rtts));
    assert!(
        lo_mean.as_secs_f64() < nth_mean.as_secs_f64() * 0.6,
        "least_outstanding: mean latency {} must drop well below nth's {}",
        ms(lo_mean),
        ms(nth_mean)
    );
    println!(
        "dns_aware least_outstanding vs nth, slow backend {SLOW} at {}: slow share {:.1}% vs \
         {:.1}%; client p50 {} vs {}, p99 {} vs {}, mean {} vs {}",
        ms(SLOW_DELAY),
        100.0 * lo_share,
        100.0 * nth_share,
        ms(quantile(&lo.rtts, 0.5)),
        ms(quantile(&nth.rtts, 0.5)),
        ms(quantile(&lo.rtts, 0.99)),
        ms(quantile(&nth.rtts, 0.99)),
        ms(lo_mean),
        ms(nth_mean),
    );
}

/// Issue 15 asks for the client's p99 to drop against nth. Drawn with
/// replacement, two choices would send 1/9 of the queries (three equal
/// backends) to the slow one whatever it has in flight, and the p99 would wait
/// for it; least_outstanding draws the second choice again while it names the
/// first's backend, so the slow one takes a query only when it has as few in
/// flight as a fast one, or in the 1/81 of picks whose redraws all failed.
#[test]
fn dns_aware_least_outstanding_cuts_the_p99() {
    let _serial = exclusive();
    let (nth, lo) = compare_policies("da1");
    let (nth_p99, lo_p99) = (quantile(&nth.rtts, 0.99), quantile(&lo.rtts, 0.99));
    assert!(
        lo_p99 < SLOW_DELAY / 2,
        "least_outstanding: client p99 {} must drop well below the slow delay {} (nth: {}); \
         slow share {:.3} (nth {:.3})",
        ms(lo_p99),
        ms(SLOW_DELAY),
        ms(nth_p99),
        lo.share(SLOW),
        nth.share(SLOW)
    );
}

// ---------------------------------------------------------------------------------
// Passive health: a backend answering SERVFAIL.

const VICTIM: usize = 2;
/// 300 q/s over three backends: 100 a second to the victim, 200 in a window, over
/// PASSIVE_MIN_QUERIES in well under a second.
const PASSIVE_RATE: u32 = 300;
const PASSIVE_WINDOW: Duration = Duration::from_secs(2);
const PASSIVE_MIN_QUERIES: u32 = 20;
const EJECT_FOR: Duration = Duration::from_secs(3);
/// The daemon judges once a second, and `stats` takes a moment on a busy machine.
const SLACK: Duration = Duration::from_secs(2);
/// How long the readmitted backend, answering well again, must stay in.
const STAY: Duration = Duration::from_secs(4);
/// The longest a test waits for `stats` to show a state change.
const STATE_LIMIT: Duration = Duration::from_secs(12);
/// Load before the victim starts failing.
const WARM_UP: Duration = Duration::from_secs(2);
/// The load runs this long; the test's steps take about 16 s, at most about 24 s.
const PASSIVE_RUN: Duration = Duration::from_secs(24);

fn passive_config(topo: &Topology) -> String {
    service_config(
        &topo.config.node_iface,
        "nth",
        &topo.service_targets(),
        &topo.backend_targets(),
    ) + &format!(
        "\n[service.passive]\nmax_servfail_ratio = 0.5\nwindow = \"{}s\"\nmin_queries = \
         {PASSIVE_MIN_QUERIES}\neject_for = \"{}s\"\n",
        PASSIVE_WINDOW.as_secs(),
        EJECT_FOR.as_secs()
    )
}

/// Polls `stats --json` until `address` is in `state`; when it was seen so. On
/// failure the message lists every poll (when it started, how long `stats` took, the
/// state it saw), so a slow `stats` is told apart from a state that never came.
fn wait_state(dnsteer: &Dnsteer, address: &str, state: &str, limit: Duration) -> Instant {
    let start = Instant::now();
    let deadline = start + limit;
    let mut polls = Vec::new();
    loop {
        let now = Instant::now();
        let s = snapshot(dnsteer);
        let seen = backend(&s, address).state.clone();
        polls.push(format!(
            "{:.2}+{:.2}s {seen}",
            (now - start).as_secs_f64(),
            now.elapsed().as_secs_f64()
        ));
        if seen == state {
            return now;
        }
        assert!(
            now < deadline,
            "{address} not {state} after {limit:?}: {:?}\npolls: {}\n{}",
            backend(&s, address),
            polls.join(", "),
            dnsteer.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[test]
fn dns_aware_passive_health_ejects_a_servfail_backend_and_readmits_it() {
    let _serial = exclusive();
    let topo = topology("da2", [Behaviour::default(); 3]);
    let dnsteer = start(&topo, &passive_config(&topo));
    let victim_addr = topo.backend_targets()[VICTIM];
    let victim = victim_addr.to_string();
    let responder = topo.backends[VICTIM].responder().unwrap();
    assert_eq!(backend(&snapshot(&dnsteer), &victim).state, "active");

    let load = PacedLoad {
        timeout: Duration::from_secs(1),
        ..PacedLoad::new(
            topo.service_targets(),
            WHOAMI_NAME,
            PASSIVE_RATE,
            PASSIVE_RUN,
        )
    };
    let mut marks: Vec<(&str, Instant)> = Vec::new();
    let records = thread::scope(|scope| {
        let running = scope.spawn(|| {
            load::run_paced_on_cpus(&topo.client, &load, &SENDER_CPUS, None)
                .expect("the paced load")
        });
        thread::sleep(WARM_UP);
        assert_eq!(
            backend(&snapshot(&dnsteer), &victim).state,
            "active",
            "ejected before it failed: {}",
            dnsteer.log()
        );
        marks.push(("servfail", Instant::now()));
        responder.set_behaviour(Behaviour::rcode(ResponseCode::ServFail));
        // The limits only bound the wait; the times are taken from the traffic below.
        marks.push(("down", wait_state(&dnsteer, &victim, "down", STATE_LIMIT)));
        // Still failing: readmitted after eject_for, and ejected again.
        marks.push(("up", wait_state(&dnsteer, &victim, "active", STATE_LIMIT)));
        marks.push((
            "down again",
            wait_state(&dnsteer, &victim, "down", STATE_LIMIT),
        ));
        // Marked once the switch is made: every query sent after the mark is read
        // under the new behaviour (a mark taken before it would let a query sent
        // while this thread waits for the lock draw a SERVFAIL).
        responder.set_behaviour(Behaviour::default());
        marks.push(("noerror", Instant::now()));
        let up = wait_state(&dnsteer, &victim, "active", STATE_LIMIT);
        marks.push(("up again", up));
        // It stays in, at least STAY and until the load ends.
        while up.elapsed() < STAY || !running.is_finished() {
            let s = snapshot(&dnsteer);
            assert_eq!(
                backend(&s, &victim).state,
                "active",
                "{victim} out again {} after its readmission, answering NOERROR: {:?}\n{}",
                secs(up.elapsed()),
                backend(&s, &victim),
                dnsteer.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
        running.join().expect("the load thread")
    });
    let at = |name: &str| {
        marks
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .unwrap()
    };
    // On the client's clock, from the queries the victim answered (10 ms apart at
    // 100 q/s): it is out of selection from the last one before a gap to the first
    // after it. The ring flips as the daemon decides; `stats` shows the state only
    // after an RCU grace period, and its polls add their own delay.
    let victim_ip = ipv4(victim_addr);
    let from_victim = |r: &QueryRecord| match &r.answer {
        Answer::Answered(ip) => *ip == victim_ip,
        Answer::Error(e) => e.starts_with("rcode "),
        _ => false,
    };
    let victim_sends: Vec<Instant> = records
        .iter()
        .filter(|r| from_victim(r))
        .map(|r| r.sent)
        .collect();
    let gaps: Vec<(Instant, Instant)> = victim_sends
        .windows(2)
        .filter(|w| w[1] - w[0] > EJECT_FOR / 2)
        .map(|w| (w[0], w[1]))
        .collect();
    println!(
        "dns_aware passive health: seen in stats: down {} after the switch to SERVFAIL, \
         active {} later, down {} later; NOERROR again {} into that ejection, active {} \
         after it, stayed {}",
        secs(at("down") - at("servfail")),
        secs(at("up") - at("down")),
        secs(at("down again") - at("up")),
        secs(at("noerror") - at("down again")),
        secs(at("up again") - at("down again")),
        secs(at("up again").elapsed()),
    );
    let [(out1, in1), (out2, in2)] = gaps[..] else {
        panic!(
            "{victim} must be out of selection twice (gaps of over {} in the queries it              answered), was out {} times: {:?}",
            secs(EJECT_FOR / 2),
            gaps.len(),
            gaps.iter()
                .map(|(a, b)| format!("{} for {}", secs(*a - at("servfail")), secs(*b - *a)))
                .collect::<Vec<_>>()
        )
    };
    let (ejection, readmission) = (out1 - at("servfail"), in1 - out1);
    let (reejection, final_readmission) = (out2 - in1, in2 - out2);
    println!(
        "dns_aware passive health (max_servfail_ratio 0.5, window {}, min_queries \
         {PASSIVE_MIN_QUERIES}, eject_for {}; {PASSIVE_RATE} q/s over 3 backends), on the \
         client's clock: SERVFAIL from {victim}, out of selection after {}; back {} later, \
         still failing: out again {} later; NOERROR again {} into that ejection, back {} \
         after it ({} after the switch), and stayed",
        secs(PASSIVE_WINDOW),
        secs(EJECT_FOR),
        secs(ejection),
        secs(readmission),
        secs(reejection),
        secs(at("noerror") - out2),
        secs(final_readmission),
        secs(in2 - at("noerror")),
    );

    // Ejected within the window (plus the once-a-second judging and slack), each
    // ejection lasting eject_for (and up to a judging tick more).
    assert!(
        ejection <= PASSIVE_WINDOW + SLACK,
        "out of selection {} after it started answering SERVFAIL, more than window + {} = {}",
        secs(ejection),
        secs(SLACK),
        secs(PASSIVE_WINDOW + SLACK)
    );
    assert!(
        reejection <= PASSIVE_WINDOW + SLACK,
        "out again {} after its readmission while still failing, more than {}",
        secs(reejection),
        secs(PASSIVE_WINDOW + SLACK)
    );
    for (what, took) in [("first", readmission), ("second", final_readmission)] {
        assert!(
            // Judged once a second: the tick nearest the end readmits.
            took + Duration::from_millis(600) >= EJECT_FOR && took <= EJECT_FOR + SLACK,
            "the {what} ejection lasted {}, not eject_for {} (to half a judging tick less, or more)",
            secs(took),
            secs(EJECT_FOR)
        );
    }
    assert!(
        (out2..in2).contains(&at("noerror")),
        "the switch back to NOERROR must fall in the second ejection ({} to {} after the \
         first switch), was at {}",
        secs(out2 - at("servfail")),
        secs(in2 - at("servfail")),
        secs(at("noerror") - at("servfail"))
    );
    // Between the ejections it still failed; after the second it answers well.
    let failing_between = records
        .iter()
        .filter(|r| from_victim(r) && r.sent > out1 && r.sent < out2)
        .all(|r| matches!(&r.answer, Answer::Error(_)));
    assert!(
        failing_between,
        "{victim} answered NOERROR between its ejections"
    );

    // One log line per transition.
    let log = dnsteer.log();
    for line in log.lines().filter(|l| l.contains("passive health")) {
        println!("dns_aware passive health log: {line}");
    }
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let down_line = format!("service dns: backend {victim} is DOWN (passive health: ");
    let up_line = format!("service dns: backend {victim} is up (passive health: out for ");
    assert_eq!(
        (lines(&down_line), lines(&up_line)),
        (2, 2),
        "two ejections and two readmissions logged:\n{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains(&down_line))
            .all(|l| l.contains("SERVFAIL")),
        "the ejections must name the SERVFAILs:\n{log}"
    );
    assert_eq!(lines("is DOWN"), 2, "only {victim} goes down:\n{log}");
    assert_eq!(lines("FAILING OPEN"), 0, "{log}");

    // The client saw exactly the SERVFAILs the kernel counted, all from the victim,
    // and none once it answered well again.
    let summary = load::summarize(&records);
    let snap = snapshot(&dnsteer);
    let servfails: Vec<u64> = topo
        .backend_targets()
        .iter()
        .map(|a| {
            backend(&snap, &a.to_string())
                .dns
                .rcodes
                .get("servfail")
                .copied()
                .unwrap_or(0)
        })
        .collect();
    let rcode_errors = records
        .iter()
        .filter(|r| matches!(&r.answer, Answer::Error(e) if e.starts_with("rcode ")))
        .count() as u64;
    println!(
        "dns_aware passive health: client {summary}; SERVFAILs counted per backend \
         {servfails:?}, client got {rcode_errors}"
    );
    assert!(
        servfails[VICTIM] > 0 && servfails.iter().sum::<u64>() == servfails[VICTIM],
        "SERVFAILs per backend {servfails:?}: only the victim {VICTIM} sends them"
    );
    assert_eq!(
        servfails[VICTIM], rcode_errors,
        "dns.rcodes.servfail of {victim} must be the SERVFAILs the client got"
    );
    assert_eq!(
        summary.answered as u64 + rcode_errors,
        summary.sent as u64,
        "every query must be answered, SERVFAIL or NOERROR: {summary}"
    );
    let after_switch: Vec<&QueryRecord> =
        records.iter().filter(|r| r.sent > at("noerror")).collect();
    assert!(
        after_switch
            .iter()
            .all(|r| matches!(r.answer, Answer::Answered(_))),
        "queries sent after the victim answered well again must be answered: {:?}",
        after_switch
            .iter()
            .filter(|r| !matches!(r.answer, Answer::Answered(_)))
            .take(5)
            .collect::<Vec<_>>()
    );
    let back = after_switch
        .iter()
        .filter(|r| r.sent > at("up again") && r.answer == Answer::Answered(victim_ip))
        .count();
    assert!(
        back > 0,
        "no query sent after the readmission was answered by {victim}"
    );
}

// ---------------------------------------------------------------------------------
// The latency histogram against the client's answers.

/// Every backend answers this late: within (bound 12, bound 13] = (67 ms, 134 ms].
const HIST_DELAY: Duration = Duration::from_millis(100);
const HIST_RATE: u32 = 600;
const HIST_RUN: Duration = Duration::from_secs(3);
const LATENCY_BOUNDS: usize = 19;

/// `GET /metrics` from inside the node namespace; the body.
fn scrape(node: &NetNs) -> String {
    node.enter(|| {
        let mut stream = TcpStream::connect(METRICS).expect("connecting to the metrics listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {METRICS}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reading the scrape");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {response:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "scrape: {head}");
        body.to_owned()
    })
}

/// `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("NAME VALUE");
            (key.to_owned(), value.parse::<f64>().expect("a number"))
        })
        .collect()
}

#[test]
fn dns_aware_latency_histogram_counts_the_answers_the_client_got() {
    let _serial = exclusive();
    let topo = topology("da3", [Behaviour::delayed(HIST_DELAY); 3]);
    let dnsteer = start(
        &topo,
        &service_config(
            &topo.config.node_iface,
            "nth",
            &topo.service_targets(),
            &topo.backend_targets(),
        ),
    );
    let load = PacedLoad {
        timeout: Duration::from_secs(2),
        ..PacedLoad::new(topo.service_targets(), WHOAMI_NAME, HIST_RATE, HIST_RUN)
    };
    let records =
        load::run_paced_on_cpus(&topo.client, &load, &SENDER_CPUS, None).expect("the paced load");
    for b in &topo.backends {
        b.responder()
            .unwrap()
            .wait_idle(Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let summary = load::summarize(&records);
    let snap = snapshot(&dnsteer);
    let metrics = samples(&scrape(&topo.node));

    let bounds = &snap.latency_bucket_le_seconds;
    assert_eq!(
        bounds.len(),
        LATENCY_BOUNDS,
        "latency_bucket_le_seconds {bounds:?}"
    );
    // The bucket holding HIST_DELAY: the first bound at or above it.
    let k = bounds
        .iter()
        .position(|&le| le >= HIST_DELAY.as_secs_f64())
        .unwrap_or_else(|| panic!("no bound at or above {HIST_DELAY:?}: {bounds:?}"));
    let backends = &snap.services[0].backends;
    let answers: u64 = backends.iter().map(|b| b.dns.answers).sum();
    let client_rtts = rtts(&records);
    println!(
        "dns_aware histogram: client {summary}; client latency p50 {} p99 {}; dns.answers \
         {answers} over {} backends; delay {} in the bucket le {} (index {k})",
        ms(quantile(&client_rtts, 0.5)),
        ms(quantile(&client_rtts, 0.99)),
        backends.len(),
        ms(HIST_DELAY),
        bounds[k],
    );
    assert_eq!(
        summary.answered, summary.sent,
        "every query must be answered from the service address: {summary}"
    );
    assert_eq!(
        answers, summary.answered as u64,
        "the backends' dns.answers must sum to the answers the client got"
    );

    for b in backends {
        let dns = &b.dns;
        let in_buckets: u64 = dns.latency_buckets.iter().sum();
        let metric = |name: &str| {
            let key = format!("{name}{{service=\"dns\",backend=\"{}\"}}", b.address);
            *metrics.get(&key).unwrap_or_else(|| {
                panic!(
                    "no sample {key} in /metrics; have {:?}",
                    metrics
                        .keys()
                        .filter(|k| k.contains("latency"))
                        .collect::<Vec<_>>()
                )
            })
        };
        let count = metric("dnsteer_backend_answer_latency_seconds_count");
        let sum = metric("dnsteer_backend_answer_latency_seconds_sum");
        let mean = dns.latency_sum_seconds / dns.answers.max(1) as f64;
        println!(
            "dns_aware histogram {}: queries {} answers {} timeouts {} in_flight {} rcodes \
             {:?}; buckets sum {in_buckets}, at le {}: {}, slower: {}; mean {:.1} ms; \
             /metrics _count {count} _sum {sum:.4}",
            b.address,
            dns.queries,
            dns.answers,
            dns.timeouts,
            dns.in_flight,
            dns.rcodes,
            bounds[k],
            dns.latency_buckets.get(k).copied().unwrap_or(0),
            dns.latency_buckets.iter().skip(k + 1).sum::<u64>(),
            mean * 1000.0,
        );
        assert_eq!(
            dns.latency_buckets.len(),
            LATENCY_BOUNDS + 1,
            "{}: latency_buckets {:?}",
            b.address,
            dns.latency_buckets
        );
        assert!(dns.answers > 0, "{}: no answers: {dns:?}", b.address);
        assert_eq!(
            in_buckets, dns.answers,
            "{}: the latency buckets must sum to dns.answers: {dns:?}",
            b.address
        );
        assert_eq!(
            (dns.queries, dns.timeouts, dns.in_flight),
            (dns.answers, 0, 0),
            "{}: every query answered, none timed out or in flight: {dns:?}",
            b.address
        );
        assert_eq!(
            dns.rcodes.get("noerror").copied(),
            Some(dns.answers),
            "{}: every answer NOERROR: {dns:?}",
            b.address
        );
        // A responder never answers before its delay: nothing below its bucket.
        assert_eq!(
            dns.latency_buckets[..k].iter().sum::<u64>(),
            0,
            "{}: answers faster than the delay {}: buckets {:?}",
            b.address,
            ms(HIST_DELAY),
            dns.latency_buckets
        );
        // Most within the bucket: a stall of 34 ms or more moves one up.
        assert!(
            dns.latency_buckets[k] * 2 > dns.answers,
            "{}: most answers must be in the bucket le {} of the delay {}: buckets {:?}",
            b.address,
            bounds[k],
            ms(HIST_DELAY),
            dns.latency_buckets
        );
        assert!(
            mean >= HIST_DELAY.as_secs_f64() && mean < bounds[k] * 2.0,
            "{}: mean latency {:.1} ms (latency_sum_seconds / answers) for a delay of {}",
            b.address,
            mean * 1000.0,
            ms(HIST_DELAY)
        );
        assert_eq!(
            count, dns.answers as f64,
            "{}: /metrics dnsteer_backend_answer_latency_seconds_count must equal dns.answers",
            b.address
        );
        assert!(
            (sum - dns.latency_sum_seconds).abs() < 1e-6,
            "{}: /metrics _sum {sum} against latency_sum_seconds {}",
            b.address,
            dns.latency_sum_seconds
        );
    }
}

// ---------------------------------------------------------------------------------
// Passive health and least_outstanding: a backend that stops answering.

/// `[flows] query_timeout`: the expiry thread removes a record this long (and up to a
/// quarter more, its sweep) after its query, and counts it against the backend.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
const SILENT_RATE: u32 = 600;
/// Long enough for every record of the silent backend to expire before readmission.
const SILENT_EJECT_FOR: Duration = Duration::from_secs(4);
/// Queries counted after the readmission to measure the backend's share.
const SHARE_FOR: Duration = Duration::from_secs(3);
/// `min_queries` for the silent backend. least_outstanding itself steers around it
/// once its first queries wait: it then wins only the picks whose four draws all name
/// it (1/243 with three equal backends), a few queries a second at SILENT_RATE, all
/// of which time out: passive health must judge on few.
const SILENT_MIN_QUERIES: u32 = 4;
/// Its share of those once it answers at once again, as the others do: about 1/3
/// when its queries in flight went back to none with the timeouts. Were the timed-out
/// queries still counted in flight, it would win almost no draw.
const READMITTED_MIN_SHARE: f64 = 0.2;

#[test]
fn dns_aware_passive_health_ejects_a_silent_backend_and_least_outstanding_forgets_its_timeouts() {
    let _serial = exclusive();
    let topo = topology("da4", [Behaviour::default(); 3]);
    let config = service_config(
        &topo.config.node_iface,
        "least_outstanding",
        &topo.service_targets(),
        &topo.backend_targets(),
    ) + &format!(
        "\n[service.passive]\nmax_timeout_ratio = 0.2\nwindow = \"{}s\"\nmin_queries = \
         {SILENT_MIN_QUERIES}\neject_for = \"{}s\"\n\n[flows]\nquery_timeout = \"{}ms\"\n",
        PASSIVE_WINDOW.as_secs(),
        SILENT_EJECT_FOR.as_secs(),
        QUERY_TIMEOUT.as_millis()
    );
    let dnsteer = start(&topo, &config);
    let victim = topo.backend_targets()[VICTIM].to_string();
    let responder = topo.backends[VICTIM].responder().unwrap();
    let queries = |s: &Snapshot| -> Vec<u64> {
        topo.backend_targets()
            .iter()
            .map(|a| backend(s, &a.to_string()).dns.queries)
            .collect()
    };

    let run = WARM_UP + PASSIVE_WINDOW + SILENT_EJECT_FOR + SLACK * 3 + SHARE_FOR + SLACK;
    let load = PacedLoad {
        timeout: Duration::from_secs(1),
        ..PacedLoad::new(topo.service_targets(), WHOAMI_NAME, SILENT_RATE, run)
    };
    let (silent_at, down, expired, up, share) = thread::scope(|scope| {
        let running = scope.spawn(|| {
            load::run_paced_on_cpus(&topo.client, &load, &SENDER_CPUS, None)
                .expect("the paced load")
        });
        thread::sleep(WARM_UP);
        let silent_at = Instant::now();
        responder.set_behaviour(Behaviour::silent());
        // Out of selection when its responder stops receiving queries (on this
        // clock, not through `stats`, which shows the state after a grace period).
        let limit = QUERY_TIMEOUT * 5 / 4 + PASSIVE_WINDOW + SLACK * 4;
        let (mut last, mut changed) = (responder.stats().received, Instant::now());
        while changed.elapsed() < Duration::from_secs(1) {
            assert!(
                silent_at.elapsed() < limit,
                "{victim} still received queries {} after it went silent\n{}",
                secs(limit),
                dnsteer.log()
            );
            thread::sleep(Duration::from_millis(10));
            let now = responder.stats().received;
            if now != last {
                (last, changed) = (now, Instant::now());
            }
        }
        let down = changed;
        wait_state(&dnsteer, &victim, "down", STATE_LIMIT);
        // Ejected: once its last records expired, none of its queries is in flight.
        thread::sleep((down + QUERY_TIMEOUT * 3 / 2).saturating_duration_since(Instant::now()));
        responder.set_behaviour(Behaviour::default());
        let expired = backend(&snapshot(&dnsteer), &victim).dns.clone();
        let up = wait_state(&dnsteer, &victim, "active", STATE_LIMIT);
        let before = queries(&snapshot(&dnsteer));
        thread::sleep(SHARE_FOR);
        let after = queries(&snapshot(&dnsteer));
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert!(
            !running.is_finished(),
            "the load ended before the share was measured"
        );
        let records = running.join().expect("the load thread");
        println!(
            "dns_aware silent backend: client {}",
            load::summarize(&records)
        );
        (silent_at, down, expired, up, delta)
    });
    let total: u64 = share.iter().sum();
    let victim_share = share[VICTIM] as f64 / total.max(1) as f64;
    println!(
        "dns_aware silent backend (least_outstanding, max_timeout_ratio 0.2, window {}, \
         query_timeout {}, eject_for {}): {victim} silent, ejected after {}; its records \
         expired: queries {} answers {} timeouts {} in_flight {}; answering again, \
         readmitted {} after the ejection, then took {} of {total} queries ({:.1}%) in {}: \
         per backend {share:?}",
        secs(PASSIVE_WINDOW),
        secs(QUERY_TIMEOUT),
        secs(SILENT_EJECT_FOR),
        secs(down - silent_at),
        expired.queries,
        expired.answers,
        expired.timeouts,
        expired.in_flight,
        secs(up - down),
        share[VICTIM],
        100.0 * victim_share,
        secs(SHARE_FOR),
    );
    let log = dnsteer.log();
    for line in log.lines().filter(|l| l.contains("passive health")) {
        println!("dns_aware silent backend log: {line}");
    }
    let ejection = down - silent_at;
    assert!(
        ejection <= QUERY_TIMEOUT * 5 / 4 + PASSIVE_WINDOW + SLACK,
        "ejected {} after it went silent, more than query_timeout (and a sweep) + window + \
         {}",
        secs(ejection),
        secs(SLACK)
    );
    assert!(
        log.lines().any(
            |l| l.contains(&format!("backend {victim} is DOWN (passive health: "))
                && l.contains("timed out")
        ),
        "the ejection must be logged, naming the timeouts:\n{log}"
    );
    assert!(
        expired.timeouts > 0
            && expired.in_flight == 0
            && expired.queries == expired.answers + expired.timeouts,
        "{victim}: every query it left unanswered must have timed out, none in flight: \
         {expired:?}"
    );
    assert!(
        victim_share > READMITTED_MIN_SHARE,
        "least_outstanding gave the readmitted {victim} {:.3} of the queries (per backend \
         {share:?}), not about 1/3: are its timed-out queries still counted in flight?",
        victim_share
    );
}
