//! The paced load generator and the kdig helpers against the test bed's real BIND
//! backends, without dnsteer: the load keeps its rate and every backend answers its share;
//! kdig reaches BIND over TCP, asked to or after a truncated UDP answer.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use testbed::{
    BIG_NAME, BIG_TXT_MIN_BYTES, Topology, TopologyConfig, WHOAMI_NAME,
    dns::{self, Transport},
    load::{self, PacedLoad},
    require_root_tools,
};

fn build_topology() -> Topology {
    require_root_tools(&["ip", "sysctl", "named", "kdig"]).unwrap_or_else(|e| panic!("{e:#}"));
    Topology::build(TopologyConfig::default()).expect("building the default topology")
}

/// User + system CPU time of this whole process (every thread, other tests included).
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// utime + stime of `pid` from /proc/<pid>/stat, in clock ticks.
fn ticks_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum()
}

/// Runs `rate` q/s for `seconds` from the client straight at the four backends and checks
/// that every query was answered, evenly, at the asked rate.
fn paced_load_against_backends(rate: u32, seconds: u64) {
    let topo = build_topology();
    let targets = topo.backend_targets();
    let load = PacedLoad {
        targets: targets.clone(),
        name: WHOAMI_NAME.to_owned(),
        rate,
        duration: Duration::from_secs(seconds),
        timeout: Duration::from_secs(1),
    };
    let named_pids = topo.dns_pids();
    let named_before: Vec<u64> = named_pids.iter().map(|&p| ticks_of(p)).collect();
    let cpu_before = process_cpu();
    let wall = Instant::now();
    let progress = |sent: usize, total: usize| eprintln!("paced load: {sent}/{total} sent");
    let records =
        load::run_paced(&topo.client, &load, Some(&progress)).expect("running the paced load");
    let wall = wall.elapsed();
    let cpu = process_cpu() - cpu_before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let named_cpu: Vec<String> = named_pids
        .iter()
        .zip(&named_before)
        .map(|(&p, &before)| {
            let secs = (ticks_of(p) - before) as f64 / hz;
            format!("{:.0}%", 100.0 * secs / wall.as_secs_f64())
        })
        .collect();
    let summary = load::summarize(&records);
    let mut rtts: Vec<Duration> = records.iter().filter_map(|r| r.rtt).collect();
    rtts.sort();
    let pct =
        |p: f64| rtts.get(((rtts.len() as f64 * p) as usize).min(rtts.len().saturating_sub(1)));
    eprintln!("paced load: {summary}");
    eprintln!(
        "paced load: {wall:.2?} wall, generator process CPU {cpu:.2?} = {:.1}% of one CPU; \
         named CPU each: {}; rtt p50 {:?} p99 {:?} max {:?}",
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        named_cpu.join(" "),
        pct(0.5),
        pct(0.99),
        rtts.last()
    );

    let total = load.total();
    assert_eq!(summary.sent, total, "{summary}");
    assert_eq!(summary.answered, total, "{summary}");
    assert!(
        summary.achieved_rate >= f64::from(rate) * 0.98,
        "asked for {rate}/s: {summary}"
    );
    assert_eq!(
        summary.by_answer.keys().copied().collect::<Vec<_>>(),
        topo.backend_addrs(),
        "{summary}"
    );
    let quarter = total as f64 / 4.0;
    for (addr, &n) in &summary.by_answer {
        assert!(
            (n as f64 - quarter).abs() <= 0.2 * quarter,
            "{addr} answered {n}, not within 20% of {quarter}: {summary}"
        );
    }
    // Query i went to target i % 4, and that backend is who answered it.
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.target, targets[i % targets.len()], "query {i}");
        assert_eq!(
            record.answer,
            load::Answer::Answered(topo.backends[i % targets.len()].addr),
            "query {i}"
        );
    }
}

#[test]
fn paced_load_at_5000_per_second_is_answered_by_every_backend() {
    paced_load_against_backends(5000, 5);
}

/// The rate and length the live-change tests need; slow, so only on request
/// (`cargo test -p dnsteer-tests --test load_smoke -- --ignored`).
#[test]
#[ignore = "runs for 30 s"]
fn paced_load_sustains_5000_per_second_for_30_seconds() {
    paced_load_against_backends(5000, 30);
}

#[test]
fn kdig_over_tcp_reaches_the_backend() {
    let topo = build_topology();
    let backend = &topo.backends[1];
    let reply = dns::kdig_query(
        &topo.client,
        backend.dns_target(),
        WHOAMI_NAME,
        "A",
        &["+tcp"],
    )
    .expect("kdig +tcp whoami A");
    assert_eq!(reply.transport, Transport::Tcp, "{reply:?}");
    assert_eq!(reply.from, backend.dns_target(), "{reply:?}");
    assert_eq!(reply.rcode, "NOERROR", "{reply:?}");
    assert_eq!(reply.records, [backend.addr.to_string()], "{reply:?}");

    // Without +tcp the same question stays on UDP.
    let reply = dns::kdig_query(&topo.client, backend.dns_target(), WHOAMI_NAME, "A", &[])
        .expect("kdig whoami A");
    assert_eq!(reply.transport, Transport::Udp, "{reply:?}");
    assert_eq!(reply.records, [backend.addr.to_string()], "{reply:?}");
}

#[test]
fn truncated_udp_answer_is_retried_over_tcp_with_every_record() {
    let topo = build_topology();
    let target = topo.backends[2].dns_target();
    let retried =
        dns::kdig_query(&topo.client, target, BIG_NAME, "TXT", &[]).expect("kdig big.example TXT");
    assert_eq!(retried.transport, Transport::Tcp, "{retried:?}");
    assert_eq!(retried.from, target, "{retried:?}");
    assert_eq!(retried.rcode, "NOERROR", "{retried:?}");

    // All of the records, as a direct TCP query gets them, and too many bytes for UDP.
    let direct = dns::kdig_query(&topo.client, target, BIG_NAME, "TXT", &["+tcp"])
        .expect("kdig +tcp big.example TXT");
    let got: BTreeSet<&String> = retried.records.iter().collect();
    let want: BTreeSet<&String> = direct.records.iter().collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), retried.records.len(), "duplicate records");
    let bytes: usize = retried.records.iter().map(|r| r.len() + 1).sum();
    assert!(bytes > BIG_TXT_MIN_BYTES, "only {bytes} bytes of TXT");
    // The zone numbers its strings 00-, 01-, ...: none is missing.
    for (i, record) in got.iter().enumerate() {
        assert!(record.starts_with(&format!("{i:02}-")), "{record:?}");
    }
}
