//! End to end over IPv6: the client, the node running dnsteer on `eth3` with two
//! IPv6 service addresses next to an IPv4 service, four real BIND 9 backends on
//! their IPv6 addresses. `kdig` over UDP and TCP and a paced UDP load through
//! the IPv6 service: every query answered from the address asked, the counters
//! equal to the queries, `nth` order per CPU, IPv6 backends health-probed over
//! IPv6 and shown as `[ADDR]:PORT` in stats and metrics. And a service that
//! mixes families is refused.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use dnsteer::observe::stats::{CpuCounter, ServiceStats, Snapshot};
use testbed::{
    HEALTH_NAME, NetNs, Topology, TopologyConfig, WHOAMI_NAME, dns,
    dnsteer::{Dnsteer, Launch, binary},
    load::{self, Answer, PacedLoad},
};

const RATE: u32 = 1000;
const RUN: Duration = Duration::from_secs(2);
const IPV4_QUERIES: usize = 500;
/// The metrics listener, on the node's IPv6 loopback.
const METRICS: &str = "[::1]:9154";

fn quoted(addrs: &[SocketAddr]) -> String {
    let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    quoted.join(", ")
}

/// `dns6` (udp+tcp, nth, health-checked) on the IPv6 service addresses, and `dns4`
/// on the first IPv4 service address, to the same backends' other addresses.
fn config(topo: &Topology) -> String {
    format!(
        r#"interface = "{iface}"

[[service]]
name = "dns6"
listen = [{listen6}]
protocol = "udp+tcp"
select = "nth"
backends = [{backends6}]

[service.health]
query = "{HEALTH_NAME} A"
interval = "300ms"
timeout = "200ms"

[[service]]
name = "dns4"
listen = ["{listen4}"]
backends = [{backends4}]
"#,
        iface = topo.config.node_iface,
        listen6 = quoted(&topo.service_targets6()),
        backends6 = quoted(&topo.backend_targets6()),
        listen4 = topo.service_targets()[0],
        backends4 = quoted(&topo.backend_targets()),
    )
}

fn snapshot(dnsteer: &Dnsteer) -> Snapshot {
    let json = dnsteer
        .stats(&["--json", "--per-cpu"])
        .expect("dnsteer stats --json");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats JSON ({e}): {json}"))
}

fn service<'a>(snapshot: &'a Snapshot, name: &str) -> &'a ServiceStats {
    snapshot
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name} in {snapshot:?}"))
}

/// Per backend address, `count` per CPU between two snapshots of service `name`.
fn per_cpu_delta(
    before: &Snapshot,
    after: &Snapshot,
    name: &str,
    count: fn(&CpuCounter) -> u64,
) -> BTreeMap<SocketAddr, Vec<u64>> {
    let (old, new) = (service(before, name), service(after, name));
    new.backends
        .iter()
        .zip(&old.backends)
        .map(|(n, o)| {
            assert_eq!(n.address, o.address);
            let addr: SocketAddr = n.address.parse().expect("ADDR:PORT or [ADDR]:PORT");
            let (n, o) = (n.per_cpu.as_ref().unwrap(), o.per_cpu.as_ref().unwrap());
            (
                addr,
                n.iter().zip(o).map(|(n, o)| count(n) - count(o)).collect(),
            )
        })
        .collect()
}

/// `GET /metrics` from inside the node namespace, over IPv6; the body.
fn scrape(node: &NetNs) -> String {
    node.enter(|| {
        let mut stream = TcpStream::connect(METRICS).expect("connecting to the metrics listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {METRICS}\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("the scrape");
        let (head, body) = response.split_once("\r\n\r\n").expect("headers");
        assert!(head.starts_with("HTTP/1.1 200"), "scrape: {head}");
        body.to_owned()
    })
}

#[test]
fn steers_ipv6_over_udp_and_tcp_next_to_ipv4() {
    let topo = Topology::build(TopologyConfig::default()).expect("topology");
    let iface = &topo.config.node_iface;
    let dnsteer = Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        iface,
        &config(&topo),
        &["--metrics-listen", METRICS],
    )
    .expect("dnsteer run");
    let services6 = topo.service_targets6();
    let backends6: Vec<String> = topo
        .backend_addrs6()
        .iter()
        .map(ToString::to_string)
        .collect();

    // A real resolver over UDP and TCP: each answer from the address asked.
    let before_kdig = snapshot(&dnsteer);
    let mut kdig_queries = 0;
    for target in &services6 {
        for (extra, transport) in [
            (&[][..], dns::Transport::Udp),
            (&["+tcp"][..], dns::Transport::Tcp),
        ] {
            let reply = dns::kdig_query(&topo.client, *target, WHOAMI_NAME, "AAAA", extra)
                .unwrap_or_else(|e| panic!("kdig @{target} {extra:?}: {e:#}"));
            assert_eq!(reply.from, *target, "answered from the address asked");
            assert_eq!(
                (reply.transport, reply.rcode.as_str()),
                (transport, "NOERROR")
            );
            assert!(
                reply.records.len() == 1 && backends6.contains(&reply.records[0]),
                "{reply:?} names no backend"
            );
            kdig_queries += 1;
        }
    }
    let after_kdig = snapshot(&dnsteer);
    let delta = |before: &Snapshot, after: &Snapshot, r: &str| after.reasons[r] - before.reasons[r];
    assert_eq!(
        delta(&before_kdig, &after_kdig, "tcp_no_flow"),
        0,
        "every TCP segment had its flow"
    );
    assert!(delta(&before_kdig, &after_kdig, "steered") >= kdig_queries);
    assert_eq!(delta(&before_kdig, &after_kdig, "malformed"), 0);

    // A paced UDP load over both IPv6 service addresses, a fresh source port each.
    let before = snapshot(&dnsteer);
    let load = PacedLoad::new(services6.clone(), WHOAMI_NAME, RATE, RUN);
    let records = load::run_paced(&topo.client, &load, None).expect("the load");
    let after = snapshot(&dnsteer);
    let summary = load::summarize(&records);
    println!("IPv6: {summary}");
    let queries = records.len();
    assert_eq!(queries, load.total());
    let mut answered = vec![0usize; topo.backends.len()];
    for (i, record) in records.iter().enumerate() {
        match &record.answer {
            // whoami's A record names the backend, also when asked over IPv6.
            Answer::Answered(a) => {
                let k = topo
                    .backend_index((*a).into())
                    .unwrap_or_else(|| panic!("query {i}: {a} is no backend"));
                answered[k] += 1;
            }
            other => panic!("query {i} to {}: {other:?}\n{summary}", record.target),
        }
    }

    // The counters say exactly what the backends answered.
    let per_cpu = per_cpu_delta(&before, &after, "dns6", |c| c.packets);
    let steered: BTreeMap<SocketAddr, u64> = per_cpu
        .iter()
        .map(|(a, c)| (*a, c.iter().sum::<u64>()))
        .collect();
    let want: BTreeMap<SocketAddr, u64> = topo
        .backend_targets6()
        .into_iter()
        .zip(&answered)
        .map(|(a, n)| (a, *n as u64))
        .collect();
    assert_eq!(steered, want, "stats per backend vs answers per backend");
    let queries = queries as u64;
    for (reason, want) in [
        ("steered", queries),
        ("reply_rewritten", queries),
        ("reply_no_flow", 0),
        ("malformed", 0),
    ] {
        assert_eq!(delta(&before, &after, reason), want, "{reason}");
    }
    // (`ipv6_ext` may move: the hosts' MLD reports carry a hop-by-hop header.)
    // Round robin per CPU over new flows: on each CPU the counts differ by at most one.
    let new_flows = per_cpu_delta(&before, &after, "dns6", |c| c.new_flows);
    for cpu in 0..after.cpus {
        let counts: Vec<u64> = new_flows.values().map(|c| c[cpu]).collect();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "nth split on CPU {cpu}: {counts:?}");
    }

    // Stats and metrics name IPv6 endpoints in brackets.
    let dns6 = service(&after, "dns6");
    assert_eq!(dns6.listen, ["[2001:db8::10]:53", "[2001:db8::11]:53"]);
    let addresses: Vec<&str> = dns6.backends.iter().map(|b| b.address.as_str()).collect();
    assert_eq!(
        addresses,
        [
            "[2001:db8:13::2]:53",
            "[2001:db8:13::3]:53",
            "[2001:db8:13::4]:53",
            "[2001:db8:13::5]:53"
        ]
    );
    let text = dnsteer.stats(&[]).expect("dnsteer stats");
    assert!(
        text.contains("listen [2001:db8::10]:53, [2001:db8::11]:53"),
        "{text}"
    );
    let metrics = scrape(&topo.node);
    let at_rest = snapshot(&dnsteer);
    for b in &service(&at_rest, "dns6").backends {
        let line = format!(
            "dnsteer_backend_packets_total{{service=\"dns6\",backend=\"{}\"}} {}",
            b.address, b.packets
        );
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }

    // The IPv6 backends are probed over IPv6 and up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = snapshot(&dnsteer);
        let health: Vec<_> = service(&s, "dns6")
            .backends
            .iter()
            .map(|b| b.health.clone())
            .collect();
        if health.iter().all(|h| {
            h.as_ref()
                .is_some_and(|h| h.state == "up" && h.probes_ok >= 2)
        }) {
            assert!(
                health.iter().flatten().all(|h| h.probes_failed == 0),
                "{health:?}\n{}",
                dnsteer.log()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "IPv6 backends not probed up: {health:?}\n{}",
            dnsteer.log()
        );
        thread::sleep(Duration::from_millis(100));
    }

    // IPv4 in the same run goes to its own service, untouched by the IPv6 one.
    let before = snapshot(&dnsteer);
    let outcome = dns::query_load(
        &topo.client,
        &dns::Load::new(vec![topo.service_targets()[0]], WHOAMI_NAME, IPV4_QUERIES),
    )
    .unwrap();
    let after = snapshot(&dnsteer);
    assert_eq!(outcome.answered, IPV4_QUERIES, "IPv4: {outcome}");
    let packets = |s: &Snapshot, name: &str| service(s, name).packets;
    assert_eq!(
        packets(&after, "dns4") - packets(&before, "dns4"),
        IPV4_QUERIES as u64
    );
    assert_eq!(packets(&after, "dns6"), packets(&before, "dns6"));

    // A backend of the other family is refused at run time too, naming both.
    let err = dnsteer
        .backends(&["--service", "dns4", "add", "[2001:db8:13::9]:53"])
        .expect_err("an IPv6 backend in an IPv4 service");
    let err = format!("{err:#}");
    assert!(
        err.contains("[2001:db8:13::9]:53 is IPv6, service \"dns4\" is IPv4"),
        "{err}"
    );
    let listed = dnsteer
        .backends(&["--service", "dns6", "list"])
        .expect("backends list");
    assert!(listed.contains("[2001:db8:13::2]:53"), "{listed}");
}

#[test]
fn refuses_a_service_that_mixes_families() {
    let topo = Topology::build(TopologyConfig {
        node_iface: "ens6".into(),
        backends: 2,
        dns: false,
        ..TopologyConfig::default()
    })
    .expect("topology");
    let iface = &topo.config.node_iface;
    let backends = [topo.backend_targets6()[0], topo.backend_targets()[1]];
    let config = format!(
        "interface = \"{iface}\"\n\n[[service]]\nname = \"mixed\"\nlisten = [{}]\nbackends = [{}]\n",
        quoted(&topo.service_targets6()),
        quoted(&backends)
    );
    let err = Dnsteer::start(&topo.node, &binary().unwrap(), iface, &config)
        .err()
        .expect("a mixed-family service must be refused");
    let msg = format!("{err:#}");
    for part in [
        "dnsteer.toml",
        r#"service[0] "mixed": backends[1] = "10.100.13.3:53""#,
        r#"an IPv4 backend in a service whose listen[0] "[2001:db8::10]:53" is IPv6"#,
        "cannot translate between IPv4 and IPv6",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    let link = topo.node.run(&["ip", "link", "show", iface]).unwrap();
    assert!(
        !link.contains("xdp"),
        "a refused config left XDP attached: {link}"
    );
}
