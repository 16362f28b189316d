//! End to end, live changes: six real BIND backends, four of them in the
//! initial set, a steady query load from the client, and the backend set changed
//! a hundred times (add, remove, drain, weight changes, full replacement) through
//! `dnsteer backends` while it runs. Also config reloads (SIGHUP and file edits)
//! and DNS over TCP.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use dnsteer::observe::stats::Snapshot;
use testbed::{
    BIG_NAME, Topology, TopologyConfig, WHOAMI_NAME, dns,
    dnsteer::{Dnsteer, binary, service_config},
    load::{self, Answer, PacedLoad, QueryRecord},
};

const RATE: u32 = 5000;
const RUN: Duration = Duration::from_secs(30);
const CHANGES: usize = 100;
/// Changes start after this much load and are this far apart: the last one
/// returns well before the end, leaving a steady weighted phase to measure.
const FIRST_CHANGE: Duration = Duration::from_millis(500);
const CHANGE_EVERY: Duration = Duration::from_millis(250);
/// The flows' UDP idle timeout in this test. The generator sends every query from
/// a fresh socket, but the kernel hands out source ports at random: at 5000 q/s
/// over 64k ports, a port comes back every ~13 s per service address. Under the
/// default 30 s nearly every query would continue an older flow (as under
/// iptables' `--state NEW` with conntrack's 30 s), and only the first ones
/// would follow the weights; 200 ms makes almost every query a new flow.
const UDP_IDLE: Duration = Duration::from_millis(200);

fn snapshot(dnsteer: &Dnsteer) -> Snapshot {
    let json = dnsteer.stats(&["--json"]).expect("dnsteer stats --json");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats JSON ({e}): {json}"))
}

/// Backend -> weight; absent means removed.
type Set = BTreeMap<Ipv4Addr, u32>;

/// One `dnsteer backends` call and the set it leaves.
struct Step {
    args: Vec<String>,
    started: Instant,
    returned: Instant,
    after: Set,
}

/// A change's CLI arguments and its effect on the set.
type Scripted = (Vec<String>, Box<dyn Fn(&mut Set)>);

/// The ten changes of one cycle over backends b[0..6], as CLI arguments, each
/// with its effect on the set. A cycle never leaves the set without an active
/// backend; every kind of change appears.
fn cycle(b: &[SocketAddr]) -> Vec<Scripted> {
    let ip = |i: usize| match b[i] {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => unreachable!("IPv4 test bed"),
    };
    let a = |i: usize| b[i].to_string();
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (b0, b1, b2, b3, b4, b5) = (ip(0), ip(1), ip(2), ip(3), ip(4), ip(5));
    vec![
        (
            args(&["add", &a(4), "--weight", "2"]),
            Box::new(move |s: &mut Set| {
                s.insert(b4, 2);
            }),
        ),
        (
            args(&["drain", &a(0)]),
            Box::new(move |s: &mut Set| {
                s.insert(b0, 0);
            }),
        ),
        (
            args(&["remove", &a(0)]),
            Box::new(move |s: &mut Set| {
                s.remove(&b0);
            }),
        ),
        (
            args(&["add", &a(5), "--weight", "3"]),
            Box::new(move |s: &mut Set| {
                s.insert(b5, 3);
            }),
        ),
        (
            args(&["add", &a(1), "--weight", "2"]),
            Box::new(move |s: &mut Set| {
                s.insert(b1, 2);
            }),
        ),
        (
            args(&["remove", &a(2)]),
            Box::new(move |s: &mut Set| {
                s.remove(&b2);
            }),
        ),
        (
            args(&["set", &format!("{},{},{}=2,{}", a(0), a(1), a(2), a(3))]),
            Box::new(move |s: &mut Set| {
                *s = Set::from([(b0, 1), (b1, 1), (b2, 2), (b3, 1)]);
            }),
        ),
        (
            args(&["drain", &a(3)]),
            Box::new(move |s: &mut Set| {
                s.insert(b3, 0);
            }),
        ),
        (
            args(&["add", &a(3)]),
            Box::new(move |s: &mut Set| {
                s.insert(b3, 1);
            }),
        ),
        (
            args(&["set", &format!("{},{}=2,{}=3,{}=4", a(0), a(1), a(2), a(3))]),
            Box::new(move |s: &mut Set| {
                *s = Set::from([(b0, 1), (b1, 2), (b2, 3), (b3, 4)]);
            }),
        ),
    ]
}

/// The sets in effect at some instant of [from, to] (both sets during a change).
fn sets_during<'a>(
    steps: &'a [Step],
    initial: &'a Set,
    from: Instant,
    to: Instant,
) -> Vec<&'a Set> {
    let mut sets = vec![];
    let mut current = initial;
    for step in steps {
        if step.started > to {
            break;
        }
        // The set before a step holds until the step returns.
        if step.returned >= from {
            sets.push(current);
        }
        current = &step.after;
    }
    sets.push(current);
    sets
}

/// The backends that may answer a query in flight over [sent, landed]: those
/// taking new flows at some point of it, and draining ones whose flows may
/// still be alive (active within the idle timeout before). Removed ones never.
fn allowed(steps: &[Step], initial: &Set, sent: Instant, landed: Instant) -> Vec<Ip> {
    let active = |sets: Vec<&Set>| -> Vec<Ip> {
        sets.iter()
            .flat_map(|s| s.iter().filter(|(_, w)| **w > 0).map(|(a, _)| *a))
            .collect()
    };
    let mut out = active(sets_during(steps, initial, sent, landed));
    let members: Vec<Ip> = sets_during(steps, initial, sent, landed)
        .iter()
        .flat_map(|s| s.keys().copied())
        .collect();
    let earlier = sent.checked_sub(UDP_IDLE).unwrap_or(sent);
    out.extend(
        active(sets_during(steps, initial, earlier, landed))
            .into_iter()
            .filter(|b| members.contains(b)),
    );
    out.sort();
    out.dedup();
    out
}

type Ip = Ipv4Addr;

/// The set in effect once every change that returned before `t` took effect.
fn set_at<'a>(steps: &'a [Step], initial: &'a Set, t: Instant) -> &'a Set {
    steps
        .iter()
        .take_while(|s| s.returned <= t)
        .last()
        .map_or(initial, |s| &s.after)
}

#[test]
fn hundred_changes_under_load_lose_nothing() {
    let topo = Topology::build(TopologyConfig {
        backends: 6,
        ..Default::default()
    })
    .expect("test bed");
    let iface = &topo.config.node_iface;
    let backends = topo.backend_targets();
    topo.client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65535")
        .expect("widening the client's port range");
    let config = service_config(iface, "nth", &topo.service_targets(), &backends[..4])
        + &format!(
            "\n[flows]\nudp_idle_timeout = \"{}ms\"\n",
            UDP_IDLE.as_millis()
        );
    let dnsteer = Dnsteer::start(&topo.node, &binary().unwrap(), iface, &config).expect("dnsteer");
    let before = snapshot(&dnsteer);
    let initial: Set = backends[..4]
        .iter()
        .map(|b| match b {
            SocketAddr::V4(a) => (*a.ip(), 1),
            SocketAddr::V6(_) => unreachable!(),
        })
        .collect();

    let steps: Mutex<Vec<Step>> = Mutex::new(Vec::new());
    let load = PacedLoad::new(topo.service_targets(), WHOAMI_NAME, RATE, RUN);
    let start = Instant::now();
    let records: Vec<QueryRecord> = thread::scope(|scope| {
        scope.spawn(|| {
            let script = cycle(&backends);
            let mut set = initial.clone();
            for k in 0..CHANGES {
                let due = start + FIRST_CHANGE + CHANGE_EVERY * k as u32;
                thread::sleep(due.saturating_duration_since(Instant::now()));
                let (args, effect) = &script[k % script.len()];
                let mut argv: Vec<&str> = vec!["--service", "dns"];
                argv.extend(args.iter().map(String::as_str));
                let started = Instant::now();
                dnsteer
                    .backends(&argv)
                    .unwrap_or_else(|e| panic!("change {k} ({args:?}): {e}"));
                let returned = Instant::now();
                effect(&mut set);
                steps.lock().unwrap().push(Step {
                    args: args.clone(),
                    started,
                    returned,
                    after: set.clone(),
                });
            }
        });
        let progress = |sent: usize, total: usize| {
            if sent % (RATE as usize * 5) < RATE as usize {
                eprintln!("load: {sent} of {total} sent");
            }
        };
        load::run_paced(&topo.client, &load, Some(&progress)).expect("query load")
    });
    let steps = steps.into_inner().unwrap();
    let after = snapshot(&dnsteer);
    assert_eq!(steps.len(), CHANGES);

    // Every query answered, from the address it was sent to.
    let summary = load::summarize(&records);
    eprintln!("load: {summary}");
    let first = steps[0].started;
    let last = steps[CHANGES - 1].returned;
    let during: Vec<&QueryRecord> = records
        .iter()
        .filter(|r| r.sent >= first && r.sent <= last)
        .collect();
    let during_answered = during
        .iter()
        .filter(|r| matches!(r.answer, Answer::Answered(_)))
        .count();
    eprintln!(
        "during the {CHANGES} changes ({:.1} s): {} queries sent, {during_answered} answered",
        (last - first).as_secs_f64(),
        during.len()
    );
    let failures: Vec<&QueryRecord> = records
        .iter()
        .filter(|r| !matches!(r.answer, Answer::Answered(_)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} queries failed, e.g. {:?}",
        failures.len(),
        records.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        summary.achieved_rate >= RATE as f64 * 0.98,
        "the load ran at {:.0} q/s, below {RATE}",
        summary.achieved_rate
    );

    // No answer from a backend that was out of the ring for the query's whole flight.
    let mut stray = Vec::new();
    for r in &records {
        let Answer::Answered(by) = r.answer else {
            continue;
        };
        let landed = r.sent + r.rtt.unwrap_or_default();
        if !allowed(&steps, &initial, r.sent, landed).contains(&by) {
            stray.push((r.sent - start, by));
        }
    }
    assert!(
        stray.is_empty(),
        "{} answers from backends removed (or drained longer than the idle timeout) before the query was sent, e.g. {:?}",
        stray.len(),
        &stray[..stray.len().min(5)]
    );

    // The split follows the weights: each query's expected share is its set's.
    let mut expected: BTreeMap<Ip, f64> = BTreeMap::new();
    let mut actual: BTreeMap<Ip, f64> = BTreeMap::new();
    let mut steady: BTreeMap<Ip, usize> = BTreeMap::new();
    for r in &records {
        let Answer::Answered(by) = r.answer else {
            continue;
        };
        let set = set_at(&steps, &initial, r.sent);
        let total: u32 = set.values().sum();
        for (b, w) in set {
            *expected.entry(*b).or_default() += *w as f64 / total as f64;
        }
        *actual.entry(by).or_default() += 1.0;
        if r.sent > last {
            *steady.entry(by).or_default() += 1;
        }
    }
    let n = records.len() as f64;
    let mut report = String::new();
    for (b, want) in &expected {
        let got = actual.get(b).copied().unwrap_or(0.0);
        report += &format!(
            "\n  {b}: expected {want:.0} ({:.2}%), answered {got:.0} ({:.2}%), {:+.2}% of its share",
            100.0 * want / n,
            100.0 * got / n,
            100.0 * (got - want) / want
        );
    }
    eprintln!("weights over the run:{report}");
    for (b, want) in &expected {
        let got = actual.get(b).copied().unwrap_or(0.0);
        assert!(
            (got - want).abs() <= 0.05 * want,
            "{b} got {got} answers against {want:.0} expected from its weights:{report}"
        );
    }
    // After the last change, weights 1:2:3:4 over b0..b3.
    let steady_total: usize = steady.values().sum();
    eprintln!("steady phase after the last change: {steady:?} of {steady_total}");
    let final_set = &steps[CHANGES - 1].after;
    let weight_sum: u32 = final_set.values().sum();
    for (b, w) in final_set {
        let share = steady.get(b).copied().unwrap_or(0) as f64 / steady_total as f64;
        let want = *w as f64 / weight_sum as f64;
        assert!(
            (share - want).abs() <= 0.05 * want,
            "steady phase: {b} share {share:.4}, weight share {want:.4}"
        );
    }

    let flows =
        |f: fn(&dnsteer::observe::stats::FlowStats) -> u64| f(&after.flows) - f(&before.flows);
    eprintln!(
        "flows: {} new ({} misses, {} expired, {} backend gone), {} hits",
        flows(|f| f.misses) + flows(|f| f.expired) + flows(|f| f.backend_gone),
        flows(|f| f.misses),
        flows(|f| f.expired),
        flows(|f| f.backend_gone),
        flows(|f| f.hits)
    );

    // The counters agree: every query steered once, every answer translated once.
    let delta = |r: &str| after.reasons[r] - before.reasons[r];
    assert_eq!(
        delta("steered"),
        records.len() as u64,
        "{:?}",
        after.reasons
    );
    assert_eq!(delta("reply_rewritten"), records.len() as u64);
    assert_eq!(delta("no_backend"), 0);
    let packets: u64 = after.services[0]
        .backends
        .iter()
        .map(|b| b.packets)
        .sum::<u64>()
        - before.services[0]
            .backends
            .iter()
            .map(|b| b.packets)
            .sum::<u64>();
    assert_eq!(
        packets,
        records.len() as u64,
        "backend counters, removed ones included"
    );

    // The final set as the instance lists it.
    let listed = dnsteer
        .backends(&["--service", "dns", "--json", "list"])
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let mut listed: Vec<(String, u64)> = listed["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    listed.sort();
    let want: Vec<(String, u64)> = final_set
        .iter()
        .map(|(a, w)| (SocketAddrV4::new(*a, 53).to_string(), *w as u64))
        .collect();
    assert_eq!(listed, want);
    let slowest = steps.iter().max_by_key(|s| s.returned - s.started).unwrap();
    eprintln!(
        "changes: {} in {:.1} s, slowest {} ms ({:?})",
        steps.len(),
        (last - first).as_secs_f64(),
        (slowest.returned - slowest.started).as_millis(),
        slowest.args
    );
}

/// Polls `f` every 100 ms for up to 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn listed(dnsteer: &Dnsteer) -> String {
    dnsteer.backends(&["list"]).expect("backends list")
}

#[test]
fn reloads_apply_the_difference_and_refuse_a_broken_config() {
    let topo = Topology::build(TopologyConfig::default()).expect("test bed");
    let iface = &topo.config.node_iface;
    let b = topo.backend_targets();
    let services = topo.service_targets();
    let config = service_config(iface, "nth", &services, &b);
    let dnsteer = Dnsteer::start(&topo.node, &binary().unwrap(), iface, &config).expect("dnsteer");
    let original = listed(&dnsteer);

    // A broken file (edited in place) and then SIGHUP: both refused, nothing changes.
    let broken = config.replace(&b[3].to_string(), "10.100.13.5:0");
    dnsteer.write_config(&broken).unwrap();
    eventually("the file edit to be refused", || {
        dnsteer
            .log()
            .contains("reload (config file changed) refused")
    });
    dnsteer.reload();
    eventually("SIGHUP to be refused", || {
        dnsteer.log().contains("reload (SIGHUP) refused")
    });
    assert!(
        dnsteer.log().contains("port 0 is not allowed"),
        "{}",
        dnsteer.log()
    );
    assert_eq!(listed(&dnsteer), original);
    let outcome = dns::query_load(
        &topo.client,
        &dns::Load::new(services.clone(), WHOAMI_NAME, 400),
    )
    .unwrap();
    assert_eq!(
        (outcome.answered, outcome.by_answer.len()),
        (400, 4),
        "{outcome:?}"
    );

    // A valid edit: two backends, one weighted. Applied without a signal.
    let two = service_config(iface, "nth", &services, &b[..2]).replace(
        &format!("\"{}\"]", b[1]),
        &format!("{{ addr = \"{}\", weight = 3 }}]", b[1]),
    );
    dnsteer.write_config(&two).unwrap();
    eventually("the edit to apply", || {
        dnsteer
            .log()
            .contains("reload (config file changed): service dns: backends")
    });
    let now = listed(&dnsteer);
    assert!(
        now.contains(&format!(
            "{:<22} {:<9} {:>6}",
            b[1].to_string(),
            "active",
            3
        )),
        "{now}"
    );
    assert_eq!(now.lines().count(), 3, "header and two backends: {now}");
    let outcome = dns::query_load(
        &topo.client,
        &dns::Load::new(services.clone(), WHOAMI_NAME, 400),
    )
    .unwrap();
    let by = |i: usize| match b[i] {
        SocketAddr::V4(a) => outcome.by_answer.get(a.ip()).copied().unwrap_or(0),
        SocketAddr::V6(_) => unreachable!(),
    };
    assert_eq!(outcome.answered, 400, "{outcome:?}");
    assert_eq!(by(2) + by(3), 0, "removed backends: {outcome:?}");
    // Each CPU walks the 4-entry ring from wherever its cursor stood: at most
    // one ring's worth of skew per CPU.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        by(0).abs_diff(100) <= 4 * cpus,
        "weights 1:3 under nth: {outcome:?}"
    );

    // SIGHUP with an unchanged file changes nothing.
    dnsteer.reload();
    eventually("the no-op reload", || {
        dnsteer.log().contains("reload (SIGHUP): no changes")
    });
    assert_eq!(listed(&dnsteer), now);
}

#[test]
fn dns_over_tcp_and_truncation_fallback_through_the_service_address() {
    let topo = Topology::build(TopologyConfig::default()).expect("test bed");
    let iface = &topo.config.node_iface;
    let services = topo.service_targets();
    let config = service_config(iface, "nth", &services, &topo.backend_targets())
        .replace("protocol = \"udp\"", "protocol = \"udp+tcp\"");
    let dnsteer = Dnsteer::start(&topo.node, &binary().unwrap(), iface, &config).expect("dnsteer");
    let before = snapshot(&dnsteer);
    let backends: Vec<String> = topo
        .backend_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..8 {
        let target = services[i % services.len()];
        let reply =
            dns::kdig_query(&topo.client, target, WHOAMI_NAME, "A", &["+tcp"]).expect("kdig +tcp");
        assert_eq!(reply.transport, dns::Transport::Tcp);
        assert_eq!(reply.from, target, "answered from the service address");
        assert_eq!(reply.rcode, "NOERROR");
        assert!(backends.contains(&reply.records[0]), "{reply:?}");
        seen.insert(reply.records[0].clone());
    }
    assert_eq!(seen.len(), 4, "TCP connections are balanced too: {seen:?}");
    // The TXT answer is too big for UDP: kdig gets TC=1 and asks again over TCP.
    for target in &services {
        let reply = dns::kdig_query(&topo.client, *target, BIG_NAME, "TXT", &[]).expect("kdig");
        assert_eq!(reply.transport, dns::Transport::Tcp, "{reply:?}");
        assert_eq!(reply.from, *target);
        assert_eq!(reply.records.len(), testbed::BIG_TXT_RECORDS, "{reply:?}");
    }
    let after = snapshot(&dnsteer);
    let delta = |r: &str| after.reasons[r] - before.reasons[r];
    assert_eq!(delta("tcp_no_flow"), 0, "every segment had its flow");
    assert!(delta("steered") > 0 && delta("reply_rewritten") > 0);
    assert!(after.flows.deleted + after.flows.entries > 0);
}
