use std::collections::BTreeMap;

use xdp_common::Endpoint;

use super::{read::endpoint_string, stats::*};
use crate::control::BackendView;

fn backend(address: &str, state: &str, health: Option<HealthStats>) -> BackendStats {
    BackendStats {
        address: address.to_owned(),
        state: state.to_owned(),
        weight: 1,
        packets: 10,
        bytes: 740,
        new_flows: 10,
        health,
        dns: BackendDns::default(),
        per_cpu: None,
    }
}

fn health(state: &str, rtt: Option<u64>, error: Option<&str>, transitions: u64) -> HealthStats {
    HealthStats {
        state: state.to_owned(),
        last_rtt_us: rtt,
        last_error: error.map(str::to_owned),
        transitions,
        probes_ok: 5,
        probes_failed: 3,
    }
}

#[test]
fn health_reads_as_state_rtt_or_error_and_transitions() {
    assert_eq!(
        health_text(&health("up", Some(412), None, 0)),
        "up 0.4ms (0 transitions)"
    );
    assert_eq!(
        health_text(&health("down", Some(412), Some("no reply within 500ms"), 1)),
        "down: no reply within 500ms (1 transition)"
    );
    assert_eq!(
        health_text(&health("up", None, None, 2)),
        "up (2 transitions)"
    );
}

#[test]
fn add_health_matches_members_by_address_and_skips_removed_slots() {
    let mut service = ServiceStats {
        name: "dns".to_owned(),
        protocol: "udp".to_owned(),
        select: "nth".to_owned(),
        listen: vec!["192.0.2.10:53".to_owned()],
        packets: 20,
        bytes: 1480,
        fail_open: false,
        kubernetes: None,
        sockets: None,
        backends: vec![
            backend("10.0.0.2:53", "active", None),
            backend("10.0.0.3:53", "removed", None),
            backend("10.0.0.4:53", "down", None),
        ],
    };
    let view = |address: &str, state: &str, h: HealthStats| BackendView {
        address: address.to_owned(),
        weight: 1,
        state: state.to_owned(),
        health: Some(h),
    };
    let views = [
        view("10.0.0.2:53", "active", health("up", Some(300), None, 0)),
        view("10.0.0.3:53", "active", health("up", Some(300), None, 0)),
        view(
            "10.0.0.4:53",
            "down",
            health("down", None, Some("refused"), 1),
        ),
    ];
    add_health(&mut service, true, &views);
    assert!(service.fail_open);
    let states: Vec<Option<&str>> = service
        .backends
        .iter()
        .map(|b| b.health.as_ref().map(|h| h.state.as_str()))
        .collect();
    assert_eq!(states, [Some("up"), None, Some("down")]);

    let snapshot = Snapshot {
        version: JSON_VERSION,
        interface: "eth3".to_owned(),
        running: true,
        persistent: false,
        forward: ForwardStats::default(),
        capacity: Capacity::default(),
        maps: Vec::new(),
        memory_bytes: 0,
        cpus: 2,
        services: vec![service],
        reasons: BTreeMap::new(),
        reasons_per_cpu: None,
        flows: FlowStats::default(),
        queries: QueryStats::default(),
        latency_bucket_le_seconds: Vec::new(),
    };
    let text = render(&snapshot, None);
    assert!(text.contains("FAILING OPEN"), "{text}");
    let line = |address: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(address))
            .unwrap_or_else(|| panic!("no line for {address}: {text}"))
            .to_owned()
    };
    assert!(
        line("10.0.0.2:53").ends_with("  up 0.3ms (0 transitions)"),
        "{text}"
    );
    assert!(line("10.0.0.3:53").ends_with("  -"), "{text}");
    assert!(
        line("10.0.0.4:53").ends_with("  down: refused (1 transition)"),
        "{text}"
    );
    assert!(text.contains("new flows  health"), "{text}");
}

#[test]
fn ipv6_addresses_read_in_brackets_and_widen_the_table() {
    let endpoint = |ip: &str| {
        Endpoint::new(
            xdp_common::addr_of(ip.parse().unwrap()),
            53u16.to_be_bytes(),
            xdp_common::PROTO_UDP,
        )
    };
    assert_eq!(endpoint_string(&endpoint("0.0.0.0")), "*:53");
    assert_eq!(endpoint_string(&endpoint("::")), "[::]:53");
    assert_eq!(endpoint_string(&endpoint("192.0.2.10")), "192.0.2.10:53");
    assert_eq!(
        endpoint_string(&endpoint("2001:db8::10")),
        "[2001:db8::10]:53"
    );
    let long = "[2001:db8:ffff:ffff:ffff:ffff:ffff:1]:53";
    let service = ServiceStats {
        name: "dns6".to_owned(),
        protocol: "udp".to_owned(),
        select: "nth".to_owned(),
        listen: vec!["[2001:db8::10]:53".to_owned()],
        packets: 20,
        bytes: 1480,
        fail_open: false,
        kubernetes: None,
        sockets: None,
        backends: vec![
            backend(long, "active", None),
            backend("[2001:db8::2]:53", "active", None),
        ],
    };
    let snapshot = Snapshot {
        version: JSON_VERSION,
        interface: "eth3".to_owned(),
        running: true,
        persistent: false,
        cpus: 1,
        services: vec![service],
        reasons: BTreeMap::new(),
        reasons_per_cpu: None,
        flows: FlowStats::default(),
        queries: QueryStats::default(),
        latency_bucket_le_seconds: Vec::new(),
        forward: ForwardStats::default(),
        capacity: Capacity::default(),
        maps: Vec::new(),
        memory_bytes: 0,
    };
    let text = render(&snapshot, None);
    let column = |needle: &str| {
        let line = text.lines().find(|l| l.contains(needle)).unwrap();
        line.find(" active")
            .or_else(|| line.find(" state"))
            .unwrap()
    };
    assert_eq!(column(long), column("[2001:db8::2]:53"), "{text}");
    assert_eq!(column(long), column("backend "), "{text}");
    assert!(text.contains("listen [2001:db8::10]:53"), "{text}");
}

#[test]
fn a_backend_with_queries_gets_a_dns_line() {
    let mut b = backend("10.0.0.2:53", "active", None);
    b.dns = BackendDns {
        queries: 101,
        answers: 100,
        timeouts: 1,
        in_flight: 0,
        rcodes: [("noerror", 97), ("servfail", 3)]
            .map(|(k, v)| (k.to_owned(), v))
            .into(),
        latency_buckets: {
            let mut v = vec![0; 20];
            (v[5], v[6], v[10]) = (50, 49, 1);
            v
        },
        latency_sum_seconds: 0.05,
    };
    let snapshot = Snapshot {
        version: JSON_VERSION,
        interface: "eth3".to_owned(),
        running: true,
        persistent: false,
        forward: ForwardStats::default(),
        capacity: Capacity::default(),
        maps: Vec::new(),
        memory_bytes: 0,
        cpus: 2,
        services: vec![ServiceStats {
            name: "dns".to_owned(),
            protocol: "udp".to_owned(),
            select: "least_outstanding".to_owned(),
            listen: vec!["192.0.2.10:53".to_owned()],
            packets: 101,
            bytes: 7474,
            fail_open: false,
            backends: vec![b],
            kubernetes: None,
            sockets: None,
        }],
        reasons: BTreeMap::new(),
        reasons_per_cpu: None,
        flows: FlowStats::default(),
        queries: QueryStats::default(),
        latency_bucket_le_seconds: crate::observe::read::latency_bounds(),
    };
    let text = render(&snapshot, None);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("dns "))
        .unwrap_or_else(|| panic!("no dns line in\n{text}"));
    assert!(
        line.contains("answers 100 (servfail 3,") && line.contains("timeouts 1"),
        "{line}"
    );
    // 50 of 100 within 524 µs (bucket 5), 99 within 1.05 ms (bucket 6).
    assert!(
        line.contains("mean 500 µs, p50 ≤ 524 µs, p99 ≤ 1.05 ms"),
        "{line}"
    );
}
