//! The test bed on its own, without dnsteer: the network routes, every backend's BIND
//! answers with its own address, one BIND can be stopped and started, and drop leaves
//! no namespace and no named behind.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use testbed::{
    BIG_NAME, Topology, TopologyConfig, WHOAMI_NAME,
    dns::{self, Load},
    require_root_tools,
};

fn require_testbed_tools() {
    require_root_tools(&["ip", "sysctl", "named", "kdig"]).unwrap_or_else(|e| panic!("{e:#}"));
}

fn listed_namespaces() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exact name match: `dnst-be0-7-1` must not match `dnst-be0-7-12`.
fn is_listed(listed: &str, name: &str) -> bool {
    listed
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn default_topology_backends_answer_and_teardown_is_complete() {
    require_testbed_tools();
    let mut topo =
        Topology::build(TopologyConfig::default()).expect("building the default topology");
    let namespaces = topo.namespace_names();
    let mut pids = topo.dns_pids();
    assert_eq!(namespaces.len(), 2 + 4);
    assert_eq!(pids.len(), 4, "one named per backend");

    // Every backend answers all queries, each from a fresh source port, with its own address.
    for (i, backend) in topo.backends.iter().enumerate() {
        let load = Load {
            targets: vec![backend.dns_target()],
            name: WHOAMI_NAME.to_owned(),
            count: 200,
            concurrency: 8,
            timeout: Duration::from_secs(2),
        };
        let outcome = dns::query_load(&topo.node, &load).expect("running the load");
        assert_eq!(outcome.answered, 200, "backend {i}: {outcome}");
        assert_eq!(outcome.total(), 200, "backend {i}: {outcome}");
        assert_eq!(
            outcome.by_answer,
            BTreeMap::from([(backend.addr, 200)]),
            "backend {i}: {outcome}"
        );
    }

    // The real resolver agrees.
    let b0 = topo.backends[0].dns_target();
    let records = dns::kdig(&topo.node, b0, WHOAMI_NAME).expect("kdig from the node");
    assert_eq!(records, vec![topo.backends[0].addr]);

    // The client reaches a backend through the node by plain forwarding (no steering).
    let b2 = &topo.backends[2];
    let answer = dns::query_once(
        &topo.client,
        b2.dns_target(),
        WHOAMI_NAME,
        Duration::from_secs(2),
    )
    .expect("query from the client");
    assert_eq!(
        answer,
        Some(b2.addr),
        "client -> node -> backend 2 forwarding"
    );

    // The same over IPv6: each backend answers on its IPv6 address (A names it too),
    // and the client reaches one through the node with AAAA naming its IPv6 address.
    for (i, backend) in topo.backends.iter().enumerate() {
        let load = Load::new(vec![backend.dns_target6()], WHOAMI_NAME, 50);
        let outcome = dns::query_load(&topo.node, &load).expect("running the load");
        assert_eq!(
            outcome.by_answer,
            BTreeMap::from([(backend.addr, 50)]),
            "backend {i} over IPv6: {outcome}"
        );
    }
    let reply = dns::kdig_query(&topo.client, b2.dns_target6(), WHOAMI_NAME, "AAAA", &[])
        .expect("kdig AAAA over IPv6 from the client");
    assert_eq!(reply.from, b2.dns_target6(), "{reply:?}");
    assert_eq!(reply.records, [b2.addr6.to_string()], "{reply:?}");

    // big.example. does not fit a UDP answer: BIND sets TC (kdig +ignore: no TCP retry).
    let server = format!("@{}", b0.ip());
    let big = topo
        .node
        .run(&[
            "kdig",
            &server,
            "+ignore",
            "+timeout=2",
            "+retry=0",
            BIG_NAME,
            "TXT",
        ])
        .expect("kdig big.example TXT");
    assert!(
        big.contains(" tc"),
        "big.example TXT was not truncated over UDP:\n{big}"
    );

    // Health: a stopped backend times out, a restarted one answers again.
    let b1: SocketAddr = topo.backends[1].dns_target();
    let b1_addr = topo.backends[1].addr;
    topo.stop_dns(1).expect("stopping backend 1's named");
    assert_eq!(topo.backends[1].dns_pid(), None);
    let answer = dns::query_once(&topo.node, b1, WHOAMI_NAME, Duration::from_millis(500))
        .expect("query to a stopped backend");
    assert_eq!(answer, None, "backend 1 answered while stopped");
    topo.start_dns(1).expect("restarting backend 1's named");
    pids.extend(topo.backends[1].dns_pid());
    let answer = dns::query_once(&topo.node, b1, WHOAMI_NAME, Duration::from_secs(2))
        .expect("query to the restarted backend");
    assert_eq!(answer, Some(b1_addr));

    drop(topo);
    let listed = listed_namespaces();
    for name in &namespaces {
        assert!(
            !is_listed(&listed, name),
            "{name} survived the drop:\n{listed}"
        );
    }
    for pid in pids {
        assert!(!alive(pid), "named pid {pid} survived the drop");
    }
}

#[test]
fn topology_is_torn_down_when_the_test_panics() {
    require_testbed_tools();
    let mut namespaces = Vec::new();
    let mut pids = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::build(TopologyConfig {
            backends: 1,
            ..Default::default()
        })
        .expect("building a one-backend topology");
        namespaces = topo.namespace_names();
        pids = topo.dns_pids();
        topo.node
            .enter(|| panic!("a test failing while the topology is up"));
    }));
    assert!(result.is_err());
    assert_eq!((namespaces.len(), pids.len()), (3, 1));
    let listed = listed_namespaces();
    for name in &namespaces {
        assert!(
            !is_listed(&listed, name),
            "{name} survived the panic:\n{listed}"
        );
    }
    for pid in pids {
        assert!(!alive(pid), "named pid {pid} survived the panic");
    }
}

#[test]
fn topology_without_dns_and_with_other_addresses() {
    require_testbed_tools();
    // Runs alongside the default topology in the same process: addresses never clash
    // across namespaces, names and temp dirs are unique.
    let config = TopologyConfig {
        backends: 2,
        node_iface: "ens5".to_owned(),
        client_addr: "198.51.100.50".parse().unwrap(),
        service_addrs: vec![
            "198.51.100.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
            "198.51.100.3".parse().unwrap(),
        ],
        prefix_len: 25,
        backend_base: "10.200.0.10".parse().unwrap(),
        node_backend_addr: "10.200.0.1".parse().unwrap(),
        client_addr6: "fd00:51::50".parse().unwrap(),
        service_addrs6: vec!["fd00:51::1".parse().unwrap(), "fd00:51::2".parse().unwrap()],
        prefix_len6: 112,
        backend_base6: "fd00:200::10".parse().unwrap(),
        node_backend_addr6: "fd00:200::1".parse().unwrap(),
        dns: false,
        dns_max_udp_size: None,
    };
    let mut topo = Topology::build(config).expect("building a custom topology");
    assert!(topo.dns_pids().is_empty());
    assert!(topo.stop_dns(0).is_err(), "no named to stop");
    assert_eq!(
        topo.backend_addrs(),
        [
            "10.200.0.10".parse::<std::net::Ipv4Addr>().unwrap(),
            "10.200.0.11".parse().unwrap()
        ]
    );

    let addrs = topo
        .node
        .run(&["ip", "-4", "-o", "addr", "show", "dev", "ens5"])
        .unwrap();
    for expected in [
        "198.51.100.1/25",
        "198.51.100.2/25 scope global secondary ens5:1",
        "ens5:2",
    ] {
        assert!(
            addrs.contains(expected),
            "missing {expected:?} in:\n{addrs}"
        );
    }
    assert_eq!(
        topo.backend_addrs6(),
        [
            "fd00:200::10".parse::<std::net::Ipv6Addr>().unwrap(),
            "fd00:200::11".parse().unwrap()
        ]
    );
    let addrs6 = topo
        .node
        .run(&["ip", "-6", "-o", "addr", "show", "dev", "ens5"])
        .unwrap();
    for expected in ["fd00:51::1/112", "fd00:51::2/112"] {
        assert!(
            addrs6.contains(expected),
            "missing {expected:?} in:\n{addrs6}"
        );
    }
    assert!(
        !addrs6.contains("tentative"),
        "addresses usable at once:\n{addrs6}"
    );
    let route = topo
        .client
        .run(&["ip", "route", "get", "10.200.0.11"])
        .unwrap();
    assert!(route.contains("via 198.51.100.1 dev eth0"), "{route}");
    let route = topo
        .client
        .run(&["ip", "-6", "route", "get", "fd00:200::11"])
        .unwrap();
    assert!(route.contains("via fd00:51::1 dev eth0"), "{route}");
    let route = topo
        .node
        .run(&["ip", "-6", "route", "get", "fd00:200::11"])
        .unwrap();
    assert!(route.contains("dev be1"), "{route}");
    let route = topo
        .node
        .run(&["ip", "route", "get", "10.200.0.11"])
        .unwrap();
    assert!(route.contains("dev be1"), "{route}");
    for key in [
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.forwarding",
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.ens5.rp_filter",
        "net.ipv4.conf.be0.rp_filter",
        "net.ipv6.conf.ens5.accept_dad",
    ] {
        let value = topo.node.run(&["sysctl", "-n", key]).unwrap();
        let want = if key == "net.ipv4.ip_forward" || key == "net.ipv6.conf.all.forwarding" {
            "1"
        } else {
            "0"
        };
        assert_eq!(value.trim(), want, "{key}");
    }
}
