//! End to end, health probes: four real BIND backends under a steady query load
//! from the client; one BIND is stopped, then started again. Measures how long
//! queries are lost (until the probes take the backend out) and how long the
//! backend waits to be readmitted, and scrapes `/metrics` against
//! `dnsteer stats --json` along the way. Also: every backend down fails open.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use dnsteer::observe::stats::Snapshot;
use testbed::{
    BACKEND_IFACE, NetNs, Topology, TopologyConfig, WHOAMI_NAME,
    dnsteer::{Dnsteer, Launch, binary, service_config},
    load::{self, Answer, PacedLoad, QueryRecord},
    tap::{Direction, Seen, Tap},
};

const RATE: u32 = 2000;
const RUN: Duration = Duration::from_secs(22);
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);
const FALL: u32 = 3;
const RISE: u32 = 2;
/// The backend that is stopped and started again.
const VICTIM: usize = 1;
const STOP_AT: Duration = Duration::from_secs(4);
const START_AT: Duration = Duration::from_secs(11);
const METRICS: &str = "127.0.0.1:9153";

fn health_config(iface: &str, topo: &Topology, backends: &[SocketAddr]) -> String {
    service_config(iface, "nth", &topo.service_targets(), backends)
        + &format!(
            "\n[service.health]\nquery = \"health.example. A\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nfall = {FALL}\nrise = {RISE}\nexpect_rcode = \"NOERROR\"\n",
            INTERVAL.as_millis(),
            TIMEOUT.as_millis()
        )
}

fn start(topo: &Topology, config: &str) -> Dnsteer {
    Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &topo.config.node_iface,
        config,
        &["--metrics-listen", METRICS],
    )
    .expect("dnsteer")
}

fn snapshot(dnsteer: &Dnsteer) -> Snapshot {
    let json = dnsteer.stats(&["--json"]).expect("dnsteer stats --json");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats JSON ({e}): {json}"))
}

/// `GET /metrics` from inside the node namespace; the body.
fn scrape(node: &NetNs) -> String {
    node.enter(|| {
        let mut stream = TcpStream::connect(METRICS).expect("connecting to the metrics listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {METRICS}\r\n\r\n").unwrap();
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

/// `name{label="value",...}` -> value, labels in the order written.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("NAME VALUE");
            (key.to_owned(), value.parse::<f64>().expect("a number"))
        })
        .collect()
}

/// The sample `name{service="dns",backend="ADDR"}` (or with `extra` labels after).
fn backend_sample(s: &BTreeMap<String, f64>, name: &str, backend: &str, extra: &str) -> f64 {
    let key = format!("{name}{{service=\"dns\",backend=\"{backend}\"{extra}}}");
    *s.get(&key)
        .unwrap_or_else(|| panic!("no sample {key}; have {:?}", s.keys().collect::<Vec<_>>()))
}

fn backend<'a>(snapshot: &'a Snapshot, address: &str) -> &'a dnsteer::observe::stats::BackendStats {
    snapshot.services[0]
        .backends
        .iter()
        .find(|b| b.address == address && b.state != "removed")
        .unwrap_or_else(|| panic!("{address} not in {snapshot:?}"))
}

/// Waits until the daemon reports `address`'s health as `state`; when it saw it.
fn wait_health(dnsteer: &Dnsteer, address: &str, state: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let now = Instant::now();
        let s = snapshot(dnsteer);
        if backend(&s, address)
            .health
            .as_ref()
            .map(|h| h.state.as_str())
            == Some(state)
        {
            return now;
        }
        assert!(
            now < deadline,
            "{address} not {state} after {limit:?}: {:?}\n{}",
            backend(&s, address),
            dnsteer.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every counter `/metrics` and `stats --json` both carry, side by side.
fn agree(metrics: &BTreeMap<String, f64>, stats: &Snapshot) -> Vec<(String, f64, u64)> {
    let mut pairs = Vec::new();
    for b in &stats.services[0].backends {
        for (name, value) in [
            ("dnsteer_backend_packets_total", b.packets),
            ("dnsteer_backend_bytes_total", b.bytes),
            ("dnsteer_backend_new_flows_total", b.new_flows),
        ] {
            pairs.push((
                format!("{name} {}", b.address),
                backend_sample(metrics, name, &b.address, ""),
                value,
            ));
        }
    }
    for (reason, value) in &stats.reasons {
        let key = format!("dnsteer_packets_total{{reason=\"{reason}\"}}");
        pairs.push((key.clone(), metrics[&key], *value));
    }
    let f = &stats.flows;
    for (event, value) in [
        ("hit", f.hits),
        ("miss", f.misses),
        ("expired", f.expired),
        ("backend_gone", f.backend_gone),
        ("inserted", f.inserted),
        ("deleted", f.deleted),
    ] {
        let key = format!("dnsteer_flow_events_total{{event=\"{event}\"}}");
        pairs.push((key.clone(), metrics[&key], value));
    }
    pairs
}

#[test]
fn a_dead_backend_is_taken_out_and_readmitted() {
    let mut topo = Topology::build(TopologyConfig::default()).expect("test bed");
    let iface = topo.config.node_iface.clone();
    let backends = topo.backend_targets();
    let dnsteer = start(&topo, &health_config(&iface, &topo, &backends));
    let victim = backends[VICTIM].to_string();
    let victim_ip = match backends[VICTIM] {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => unreachable!("IPv4 test bed"),
    };
    wait_health(&dnsteer, &victim, "up", Duration::from_secs(5));

    let load = PacedLoad::new(topo.service_targets(), WHOAMI_NAME, RATE, RUN);
    // What reached the victim and what it answered, on its own interface.
    let tap = Tap::start(&topo.backends[VICTIM].ns, BACKEND_IFACE).expect("tapping the victim");
    let client_ip = IpAddr::V4(topo.config.client_addr);
    let start = Instant::now();
    let mut marks = BTreeMap::new();
    let mut queued_at_stop = 0;
    let (client, mut dns) = topo.split();
    let node = dns.node();
    let (records, during) = thread::scope(|scope| {
        let load = scope.spawn(|| {
            let progress = |sent: usize, total: usize| {
                if sent % (RATE as usize * 5) < RATE as usize {
                    eprintln!("load: {sent} of {total} sent");
                }
            };
            load::run_paced(client, &load, Some(&progress)).expect("query load")
        });
        thread::sleep((start + STOP_AT).saturating_duration_since(Instant::now()));
        queued_at_stop = dns
            .udp_receive_queue(VICTIM)
            .expect("reading the victim's socket queue");
        marks.insert("stop", Instant::now());
        dns.stop(VICTIM).expect("stopping a backend's named");
        let down = wait_health(&dnsteer, &victim, "down", Duration::from_secs(10));
        marks.insert("down", down);

        // While it is down: the metrics and the stats agree, and nothing goes to it.
        let first = scrape(node);
        let stats = snapshot(&dnsteer);
        let second = scrape(node);
        let during = (samples(&first), stats, samples(&second));
        let out_at = backend(&during.1, &victim).packets;

        thread::sleep((start + START_AT).saturating_duration_since(Instant::now()));
        assert_eq!(
            backend(&snapshot(&dnsteer), &victim).packets,
            out_at,
            "packets went to {victim} while it was down"
        );
        marks.insert("start", Instant::now());
        dns.start(VICTIM).expect("starting it again");
        marks.insert("ready", Instant::now());
        marks.insert(
            "up",
            wait_health(&dnsteer, &victim, "up", Duration::from_secs(10)),
        );
        (load.join().expect("load thread"), during)
    });
    let at = |k: &str| marks[k];
    let since_start = |t: Instant| (t - start).as_secs_f64();

    // Loss: only queries the victim swallowed, and only while the probes had not yet
    // taken it out.
    let seen = tap.finish().expect("the victim's tap");
    let summary = load::summarize(&records);
    eprintln!("load: {summary}");
    let lost: Vec<&QueryRecord> = records
        .iter()
        .filter(|r| !matches!(r.answer, Answer::Answered(_)))
        .collect();
    let first_run: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.at < at("start") && s.peer.ip() == client_ip)
        .collect();
    let swallowed = swallowed_by_stop(&first_run).unwrap_or_else(|e| panic!("{e}"));
    let lost_keys: BTreeSet<(u16, u16)> = lost.iter().map(|r| (r.port, r.id)).collect();
    let not_swallowed: Vec<_> = lost
        .iter()
        .filter(|r| !swallowed.contains(&(r.port, r.id)))
        .take(5)
        .collect();
    assert!(
        not_swallowed.is_empty(),
        "lost queries that {victim} never received, or answered: {not_swallowed:?}"
    );
    assert_eq!(
        swallowed.len(),
        lost_keys.len(),
        "{victim} left queries unanswered that the client saw answered"
    );
    let before_stop: Vec<Duration> = lost
        .iter()
        .filter(|r| r.sent < at("stop"))
        .map(|r| at("stop") - r.sent)
        .collect();
    eprintln!(
        "{} lost queries, every one received by {victim} and never answered; {} of them sent before the stop ({:?} before it), with {queued_at_stop} bytes in named's receive queue",
        lost.len(),
        before_stop.len(),
        before_stop
    );
    let window = lost
        .iter()
        .map(|r| r.sent - at("stop"))
        .max()
        .unwrap_or_default();
    let window_limit = INTERVAL * FALL + Duration::from_secs(1);
    eprintln!(
        "stopped named of {victim} at {:.2} s; marked down at {:.2} s; {} queries lost, the last sent {:.2} s after the stop (limit {:.1} s)",
        since_start(at("stop")),
        since_start(at("down")),
        lost.len(),
        window.as_secs_f64(),
        window_limit.as_secs_f64()
    );
    assert!(
        window <= window_limit,
        "queries were lost for {window:?} after the stop, more than interval * fall + 1 s = {window_limit:?}"
    );
    assert!(
        summary.achieved_rate >= RATE as f64 * 0.98,
        "the load ran at {:.0} q/s, below {RATE}",
        summary.achieved_rate
    );

    // Readmission: the first answer from it to a query sent after it answered again.
    let back = records
        .iter()
        .filter(|r| r.sent >= at("ready") && r.answer == Answer::Answered(victim_ip))
        .map(|r| r.sent)
        .min()
        .expect("no answer from the restarted backend");
    let readmission = back - at("ready");
    let readmission_limit = INTERVAL * RISE + Duration::from_secs(1);
    eprintln!(
        "started named at {:.2} s; it answered at {:.2} s; marked up at {:.2} s; first query it answered was sent {:.2} s after it answered again ({:.2} s after the start command; limit {:.1} s)",
        since_start(at("start")),
        since_start(at("ready")),
        since_start(at("up")),
        readmission.as_secs_f64(),
        (back - at("start")).as_secs_f64(),
        readmission_limit.as_secs_f64()
    );
    assert!(
        readmission <= readmission_limit,
        "readmitted {readmission:?} after it answered again, more than interval * rise + 1 s = {readmission_limit:?}"
    );

    // While it was down, /metrics and stats --json agreed: each stats counter
    // lies between the scrape before and the scrape after.
    let (first, stats, second) = &during;
    for ((name, a, value), (_, b, _)) in agree(first, stats).iter().zip(agree(second, stats)) {
        assert!(
            *a <= *value as f64 && *value as f64 <= b,
            "{name}: scrapes {a} and {b} around stats {value}"
        );
    }
    assert_eq!(
        backend_sample(first, "dnsteer_backend_up", &victim, ""),
        0.0
    );
    assert_eq!(
        backend_sample(first, "dnsteer_backend_state", &victim, ",state=\"down\""),
        1.0
    );
    assert_eq!(backend(stats, &victim).state, "down");
    let health = backend(stats, &victim)
        .health
        .clone()
        .expect("health in stats");
    assert_eq!((health.state.as_str(), health.transitions), ("down", 1));
    assert!(health.last_error.is_some(), "{health:?}");
    for other in backends.iter().filter(|b| b.to_string() != victim) {
        let other = other.to_string();
        assert_eq!(backend_sample(first, "dnsteer_backend_up", &other, ""), 1.0);
        assert!(backend_sample(first, "dnsteer_backend_probe_rtt_seconds", &other, "") > 0.0);
    }

    // At rest, they agree exactly.
    thread::sleep(Duration::from_millis(1500));
    let stats = snapshot(&dnsteer);
    let metrics = samples(&scrape(&topo.node));
    let mismatched: Vec<_> = agree(&metrics, &stats)
        .into_iter()
        .filter(|(_, m, s)| *m != *s as f64)
        .collect();
    assert!(
        mismatched.is_empty(),
        "metrics and stats differ: {mismatched:?}"
    );
    // dnsteer's own count agrees: it sent the victim exactly what it answered and
    // what it swallowed.
    let answered_by_victim = records
        .iter()
        .filter(|r| r.answer == Answer::Answered(victim_ip))
        .count() as u64;
    assert_eq!(
        backend(&stats, &victim).packets,
        answered_by_victim + lost.len() as u64,
        "queries steered to {victim} against the {answered_by_victim} it answered and the {} lost",
        lost.len()
    );
    let health = backend(&stats, &victim).health.clone().unwrap();
    assert_eq!((health.state.as_str(), health.transitions), ("up", 2));
    assert_eq!(
        backend_sample(
            &metrics,
            "dnsteer_backend_health_transitions_total",
            &victim,
            ""
        ),
        2.0
    );
    assert_eq!(metrics["dnsteer_service_fail_open{service=\"dns\"}"], 0.0);

    // One log line per transition.
    let log = dnsteer.log();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        lines(&format!(
            "backend {victim} is DOWN after {FALL} failed probe(s)"
        )),
        1,
        "{log}"
    );
    assert_eq!(
        lines(&format!(
            "backend {victim} is up after {RISE} good probe(s)"
        )),
        1,
        "{log}"
    );
    assert_eq!(lines("FAILING OPEN"), 0, "{log}");
    assert_eq!(
        lines("selection"),
        0,
        "a second line for a transition: {log}"
    );
}

/// The queries (client port, DNS ID) that the victim received in its first run and
/// never answered; Err if one of them was followed by a query it did answer. named
/// answers a socket's queries in the order it reads them, so what a stop cuts off is
/// the tail of what it received: an unanswered query before an answered one was lost
/// while named was running.
fn swallowed_by_stop(first_run: &[&Seen]) -> Result<BTreeSet<(u16, u16)>, String> {
    let answered: BTreeSet<(u16, u16)> = first_run
        .iter()
        .filter(|s| s.direction == Direction::Answer)
        .map(|s| (s.peer.port(), s.id))
        .collect();
    let received: Vec<(u16, u16)> = first_run
        .iter()
        .filter(|s| s.direction == Direction::Query)
        .map(|s| (s.peer.port(), s.id))
        .collect();
    let tail = received
        .iter()
        .position(|q| !answered.contains(q))
        .unwrap_or(received.len());
    if let Some(later) = received[tail..].iter().find(|q| answered.contains(q)) {
        return Err(format!(
            "query {:?} was left unanswered while the later query {later:?} was answered: lost while named was running",
            received[tail]
        ));
    }
    Ok(received[tail..].iter().copied().collect())
}

#[test]
fn what_a_stop_cuts_off_is_the_tail() {
    let at = Instant::now();
    let seen = |direction, port, id| Seen {
        at,
        direction,
        peer: SocketAddr::from(([198, 51, 100, 7], port)),
        id,
    };
    let (q, a) = (Direction::Query, Direction::Answer);
    let run = [
        seen(q, 1000, 1),
        seen(a, 1000, 1),
        seen(q, 1001, 2),
        seen(q, 1002, 3),
        seen(a, 1001, 2),
        seen(q, 1003, 4),
        seen(q, 1004, 5),
    ];
    let refs: Vec<&Seen> = run.iter().collect();
    assert_eq!(
        swallowed_by_stop(&refs).unwrap(),
        BTreeSet::from([(1002, 3), (1003, 4), (1004, 5)])
    );
    // One dropped while named ran on: not explained by the stop.
    let mut hole = run.to_vec();
    hole.push(seen(a, 1004, 5));
    let refs: Vec<&Seen> = hole.iter().collect();
    let err = swallowed_by_stop(&refs).unwrap_err();
    assert!(err.contains("(1002, 3)"), "{err}");
    // Everything answered: nothing swallowed.
    let refs: Vec<&Seen> = run[..2].iter().collect();
    assert!(swallowed_by_stop(&refs).unwrap().is_empty());
}

#[test]
fn every_backend_down_fails_open() {
    let mut topo = Topology::build(TopologyConfig {
        backends: 2,
        node_iface: "hc0".to_owned(),
        client_addr: Ipv4Addr::new(198, 51, 100, 7),
        service_addrs: vec![Ipv4Addr::new(198, 51, 100, 53)],
        backend_base: Ipv4Addr::new(10, 77, 0, 2),
        node_backend_addr: Ipv4Addr::new(10, 77, 0, 1),
        ..Default::default()
    })
    .expect("test bed");
    let iface = topo.config.node_iface.clone();
    let backends = topo.backend_targets();
    let dnsteer = start(&topo, &health_config(&iface, &topo, &backends));
    let [a, b] = [0, 1].map(|i| backends[i].to_string());

    topo.stop_dns(0).expect("stopping named 0");
    wait_health(&dnsteer, &a, "down", Duration::from_secs(10));
    let s = snapshot(&dnsteer);
    assert!(!s.services[0].fail_open);
    assert_eq!(
        (
            backend(&s, &a).state.as_str(),
            backend(&s, &b).state.as_str()
        ),
        ("down", "active")
    );

    // The last one goes too: both stay in selection.
    topo.stop_dns(1).expect("stopping named 1");
    wait_health(&dnsteer, &b, "down", Duration::from_secs(10));
    let s = snapshot(&dnsteer);
    assert!(s.services[0].fail_open, "{s:?}");
    assert_eq!(
        (
            backend(&s, &a).state.as_str(),
            backend(&s, &b).state.as_str()
        ),
        ("active", "active")
    );
    let metrics = samples(&scrape(&topo.node));
    assert_eq!(metrics["dnsteer_service_fail_open{service=\"dns\"}"], 1.0);
    let text = dnsteer.stats(&[]).unwrap();
    assert!(text.contains("FAILING OPEN"), "{text}");
    let listed = dnsteer.backends(&["list"]).unwrap();
    assert!(listed.contains("FAILING OPEN"), "{listed}");
    assert!(
        dnsteer.log().contains("service dns: FAILING OPEN"),
        "{}",
        dnsteer.log()
    );

    // One back: it alone takes new flows again.
    topo.start_dns(1).expect("starting named 1");
    wait_health(&dnsteer, &b, "up", Duration::from_secs(10));
    let s = snapshot(&dnsteer);
    assert!(!s.services[0].fail_open);
    assert_eq!(
        (
            backend(&s, &a).state.as_str(),
            backend(&s, &b).state.as_str()
        ),
        ("down", "active")
    );
    assert!(
        dnsteer
            .log()
            .contains("service dns: no longer failing open"),
        "{}",
        dnsteer.log()
    );
}
