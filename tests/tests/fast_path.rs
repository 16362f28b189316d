//! End to end, the fast path: with `forward = "redirect"` steered queries leave
//! the node by XDP_REDIRECT towards the FIB's next hop, and the backends'
//! replies are translated on the ingress of their veths and sent straight out
//! the client-facing interface, the node's IP stack skipped both ways. Over
//! IPv4, then over IPv6 (a service of its own on the same node and backends).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use dnsteer::observe::stats::Snapshot;
use testbed::{
    BACKEND_IFACE, CLIENT_IFACE, Topology, TopologyConfig, WHOAMI_NAME, dns,
    dnsteer::{Dnsteer, binary, service_config},
    load::{self, Answer, PacedLoad},
};

const RATE: u32 = 2000;
const RUN: Duration = Duration::from_secs(5);
/// The IPv6 load: a few thousand queries.
const RUN6: Duration = Duration::from_secs(2);

fn snapshot(dnsteer: &Dnsteer) -> Snapshot {
    let json = dnsteer.stats(&["--json"]).expect("dnsteer stats --json");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats JSON ({e}): {json}"))
}

fn event(s: &Snapshot, name: &str) -> u64 {
    s.forward.events[name]
}

/// `dns` (IPv4) from the test bed's helper and `dns6` on the first IPv6
/// service address, both `udp+tcp` to the same backends' two addresses, and
/// the fast path on.
fn config(topo: &Topology) -> String {
    let iface = &topo.config.node_iface;
    let quoted: Vec<String> = topo
        .backend_targets6()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let ipv4 = service_config(
        iface,
        "nth",
        &topo.service_targets(),
        &topo.backend_targets(),
    )
    .replacen(
        "\n\n[[service]]",
        "\nforward = \"redirect\"\n\n[[service]]",
        1,
    )
    .replacen("protocol = \"udp\"", "protocol = \"udp+tcp\"", 1);
    format!(
        "{ipv4}\n[[service]]\nname = \"dns6\"\nlisten = [\"{}\"]\nprotocol = \"udp+tcp\"\nselect = \"nth\"\nbackends = [{}]\n",
        topo.service_targets6()[0],
        quoted.join(", ")
    )
}

/// A paced UDP load to `targets`: every query answered from the address asked,
/// steered and its reply rewritten, and both sent past the stack (counted in
/// `forward`).
fn load_through_the_fast_path(
    topo: &Topology,
    dnsteer: &Dnsteer,
    family: &str,
    targets: Vec<SocketAddr>,
    run: Duration,
) {
    let iface = &topo.config.node_iface;
    let before = snapshot(dnsteer);
    let load = PacedLoad::new(targets, WHOAMI_NAME, RATE, run);
    let records = load::run_paced(&topo.client, &load, None).expect("query load");
    let summary = load::summarize(&records);
    eprintln!("{family} load: {summary}");
    let failed: Vec<_> = records
        .iter()
        .filter(|r| !matches!(r.answer, Answer::Answered(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "{family}: {} of {} queries failed, e.g. {:?}",
        failed.len(),
        records.len(),
        &failed[..failed.len().min(5)]
    );

    let after = snapshot(dnsteer);
    let queries = records.len() as u64;
    assert_eq!(queries, load.total() as u64);
    let delta = |f: &dyn Fn(&Snapshot) -> u64| f(&after) - f(&before);
    let steered = delta(&|s| s.reasons["steered"]);
    let rewritten = delta(&|s| s.reasons["reply_rewritten"]);
    let redirected = delta(&|s| event(s, "redirected"));
    let passed = delta(&|s| event(s, "passed"));
    let reply_redirected = delta(&|s| event(s, "reply_redirected"));
    eprintln!(
        "{family}: {queries} queries: {steered} steered, {redirected} redirected by XDP, {passed} passed to the stack; {rewritten} replies rewritten, {reply_redirected} sent straight out {iface}"
    );
    assert_eq!(steered, queries, "{family}: steered");
    assert_eq!(rewritten, queries, "{family}: replies rewritten");
    assert_eq!(
        redirected + passed,
        queries,
        "{family}: every steered query is counted once"
    );
    // Only a first packet towards a backend whose neighbour entry is not
    // resolved yet may take the stack.
    assert!(
        redirected * 100 >= queries * 99,
        "{family}: only {redirected} of {queries} queries redirected"
    );
    assert!(
        reply_redirected * 100 >= queries * 99,
        "{family}: only {reply_redirected} of {queries} replies sent straight out"
    );
    assert_eq!(delta(&|s| event(s, "reply_passed")), 0, "{family}");
    assert_eq!(delta(&|s| event(s, "ttl_expired")), 0, "{family}");
}

#[test]
fn redirect_forwards_queries_and_replies_past_the_stack() {
    let topo = Topology::build(TopologyConfig {
        node_iface: "fp0".to_owned(),
        client_addr: Ipv4Addr::new(198, 18, 0, 100),
        service_addrs: vec![Ipv4Addr::new(198, 18, 0, 53)],
        backend_base: Ipv4Addr::new(10, 66, 0, 2),
        node_backend_addr: Ipv4Addr::new(10, 66, 0, 1),
        // Unique local backends behind a global service address: the two
        // differ from the first byte on, as a reply's source does before and
        // after its translation.
        backend_base6: "fd00:66::2".parse().unwrap(),
        node_backend_addr6: "fd00:66::1".parse().unwrap(),
        ..Default::default()
    })
    .expect("test bed");
    // XDP_REDIRECT into a veth needs NAPI on the receiving end: GRO turns it on.
    for backend in &topo.backends {
        backend
            .ns
            .run(&["ethtool", "-K", BACKEND_IFACE, "gro", "on"])
            .expect("ethtool -K eth0 gro on");
    }
    // XDP_REDIRECT carries no checksum offload state: the client's frames must
    // carry complete checksums, as from a NIC, not a veth's partial ones.
    topo.client
        .run(&["ethtool", "-K", CLIENT_IFACE, "tx", "off"])
        .expect("ethtool -K eth0 tx off");
    let iface = topo.config.node_iface.clone();
    let dnsteer =
        Dnsteer::start(&topo.node, &binary().unwrap(), &iface, &config(&topo)).expect("dnsteer");
    let log = dnsteer.log();
    for backend in &topo.backends {
        assert!(
            log.contains(&format!(
                "fast path: replies arriving on {} are translated there",
                backend.node_iface
            )),
            "{log}"
        );
    }
    assert_eq!(snapshot(&dnsteer).forward.mode, "redirect");

    load_through_the_fast_path(&topo, &dnsteer, "IPv4", topo.service_targets(), RUN);
    load_through_the_fast_path(
        &topo,
        &dnsteer,
        "IPv6",
        topo.service_targets6()[..1].to_vec(),
        RUN6,
    );

    // TCP takes the same path, handshake and all, in both families.
    for (target, rtype) in [
        (topo.service_targets()[0], "A"),
        (topo.service_targets6()[0], "AAAA"),
    ] {
        let reply = dns::kdig_query(&topo.client, target, WHOAMI_NAME, rtype, &["+tcp"]);
        let reply =
            reply.unwrap_or_else(|e| panic!("kdig +tcp @{target} through the fast path: {e:#}"));
        assert_eq!(reply.from, target, "{reply:?}");
        assert!(!reply.records.is_empty(), "{reply:?}");
    }
}
