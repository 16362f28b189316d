//! End to end, issue 11's fragmented answers: real BIND with `max-udp-size 4096`
//! answers a 2250-byte TXT over UDP to `kdig +bufsize=4096`, which leaves the backend
//! in two fragments (1500-byte MTU on every veth). Through both service addresses
//! (the primary and the alias), over IPv4 and IPv6, the answer must arrive whole, over
//! UDP (no TC bit, no retry over TCP) and from the service address asked; the client's
//! kernel must have reassembled it, and dnsteer must count the later fragments it
//! translated (`reasons.reply_fragment`).
//!
//! One summary line per family and service address (the closing note of issue 11
//! quotes them).

use std::{collections::BTreeMap, net::SocketAddr};

use serde_json::Value;
use testbed::{
    HUGE_NAME, HUGE_TXT_BYTES, NetNs, Topology, TopologyConfig,
    dns::{self, KdigReply, Transport},
    dnsteer::{Dnsteer, Launch, binary},
    huge_txt, require_root_tools,
};

/// kdig's EDNS buffer size and BIND's `max-udp-size`: room for the whole answer.
const UDP_SIZE: u16 = 4096;
/// Queries per service address: with `nth` over two backends, both answer some.
const QUERIES: usize = 4;
const MTU: &str = "mtu 1500";

/// The IP counters of `ns` (`/proc/net/snmp`'s `Ip:` and `/proc/net/snmp6`'s `Ip6*`),
/// by name: `ReasmOKs`, `FragCreates`, `Ip6ReasmOKs`, ...
fn ip_counters(ns: &NetNs) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    let snmp = ns.run(&["cat", "/proc/net/snmp"]).expect("/proc/net/snmp");
    let ip: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Ip: ")).collect();
    if let [names, values] = ip.as_slice() {
        for (name, value) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            counters.insert(name.to_owned(), value.parse().unwrap_or(0));
        }
    }
    let snmp6 = ns
        .run(&["cat", "/proc/net/snmp6"])
        .expect("/proc/net/snmp6");
    for line in snmp6.lines() {
        if let Some((name, value)) = line.split_once(char::is_whitespace)
            && name.starts_with("Ip6")
        {
            counters.insert(name.to_owned(), value.trim().parse().unwrap_or(0));
        }
    }
    counters
}

/// `name`'s increase between two [`ip_counters`] readings, summed over namespaces.
fn grew(before: &[BTreeMap<String, u64>], after: &[BTreeMap<String, u64>], name: &str) -> u64 {
    let total = |all: &[BTreeMap<String, u64>]| -> u64 {
        all.iter().map(|c| c.get(name).copied().unwrap_or(0)).sum()
    };
    total(after) - total(before)
}

/// `reasons.reply_fragment` and `queries.fragment_unmatched` (0 when absent).
fn fragment_counters(dnsteer: &Dnsteer) -> (u64, u64) {
    let json = dnsteer.stats(&["--json"]).expect("dnsteer stats --json");
    let v: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats JSON ({e}): {json}"));
    (
        v["reasons"]["reply_fragment"].as_u64().unwrap_or(0),
        v["queries"]["fragment_unmatched"].as_u64().unwrap_or(0),
    )
}

/// One big answer over UDP; Err says what was wrong with it.
fn big_query(client: &NetNs, target: SocketAddr) -> Result<KdigReply, String> {
    let bufsize = format!("+bufsize={UDP_SIZE}");
    let reply = dns::kdig_query(client, target, HUGE_NAME, "TXT", &[&bufsize])
        .map_err(|e| format!("{e:#}"))?;
    let mut wrong = Vec::new();
    if reply.transport != Transport::Udp {
        wrong.push("came over TCP (the UDP answer was truncated)".to_owned());
    }
    if reply.from != target {
        wrong.push(format!("came from {}", reply.from));
    }
    if reply.rcode != "NOERROR" {
        wrong.push(format!("rcode {}", reply.rcode));
    }
    if reply.records != [huge_txt()] {
        let lens: Vec<usize> = reply.records.iter().map(String::len).collect();
        wrong.push(format!(
            "TXT records of {lens:?} bytes, want one of {HUGE_TXT_BYTES}"
        ));
    }
    if wrong.is_empty() {
        Ok(reply)
    } else {
        Err(format!("{}: {reply:?}", wrong.join(", ")))
    }
}

fn quoted(addrs: &[SocketAddr]) -> String {
    let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    quoted.join(", ")
}

#[test]
fn fragments_big_udp_answers_arrive_whole_through_every_service_address() {
    require_root_tools(&["ip", "sysctl", "named", "kdig", "cat"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let topo = Topology::build(TopologyConfig {
        backends: 2,
        node_iface: "fr0".to_owned(),
        dns_max_udp_size: Some(UDP_SIZE),
        ..TopologyConfig::default()
    })
    .expect("test bed");
    let iface = &topo.config.node_iface;
    // The answer is larger than the path's MTU everywhere: the backend must fragment.
    for (ns, dev) in [
        (&topo.client, testbed::CLIENT_IFACE),
        (&topo.node, iface.as_str()),
    ]
    .into_iter()
    .chain(
        topo.backends
            .iter()
            .map(|b| (&b.ns, testbed::BACKEND_IFACE)),
    ) {
        let link = ns.run(&["ip", "-o", "link", "show", dev]).unwrap();
        assert!(link.contains(MTU), "{} {dev}: {link}", ns.name());
    }
    let backends: Vec<&NetNs> = topo.backends.iter().map(|b| &b.ns).collect();
    let counters = |nss: &[&NetNs]| -> Vec<BTreeMap<String, u64>> {
        nss.iter().map(|ns| ip_counters(ns)).collect()
    };

    // Without dnsteer in the way (straight to a backend): the test bed fragments, and
    // the client reassembles, over both families.
    for target in [
        topo.backends[0].dns_target(),
        topo.backends[0].dns_target6(),
    ] {
        let (c0, b0) = (counters(&[&topo.client]), counters(&backends));
        big_query(&topo.client, target)
            .unwrap_or_else(|e| panic!("straight to backend {target}: {e}"));
        let (c1, b1) = (counters(&[&topo.client]), counters(&backends));
        let (frag, reasm) = match target {
            SocketAddr::V4(_) => ("FragOKs", "ReasmOKs"),
            SocketAddr::V6(_) => ("Ip6FragOKs", "Ip6ReasmOKs"),
        };
        assert_eq!(
            (grew(&b0, &b1, frag), grew(&c0, &c1, reasm)),
            (1, 1),
            "straight to {target}: the backend must fragment the answer ({frag}) and \
             the client reassemble it ({reasm})"
        );
    }

    let config = format!(
        r#"interface = "{iface}"

[[service]]
name = "dns4"
listen = [{listen4}]
protocol = "udp+tcp"
select = "nth"
backends = [{backends4}]

[[service]]
name = "dns6"
listen = [{listen6}]
protocol = "udp+tcp"
select = "nth"
backends = [{backends6}]
"#,
        listen4 = quoted(&topo.service_targets()),
        backends4 = quoted(&topo.backend_targets()),
        listen6 = quoted(&topo.service_targets6()),
        backends6 = quoted(&topo.backend_targets6()),
    );
    // Shared mounts: `stats` reads the maps through their pins, by name.
    let dnsteer = Dnsteer::start_with(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        iface,
        &config,
    )
    .expect("dnsteer run");

    let mut failures = Vec::new();
    let targets = topo
        .service_targets()
        .into_iter()
        .zip(["IPv4", "IPv4 alias"])
        .chain(
            topo.service_targets6()
                .into_iter()
                .zip(["IPv6", "IPv6 second"]),
        );
    for (target, label) in targets {
        let (reasm_reqds, reasm_oks, frag_oks, frag_creates) = match target {
            SocketAddr::V4(_) => ("ReasmReqds", "ReasmOKs", "FragOKs", "FragCreates"),
            SocketAddr::V6(_) => (
                "Ip6ReasmReqds",
                "Ip6ReasmOKs",
                "Ip6FragOKs",
                "Ip6FragCreates",
            ),
        };
        let (c0, b0) = (counters(&[&topo.client]), counters(&backends));
        let (translated_before, unmatched_before) = fragment_counters(&dnsteer);
        let mut whole = 0;
        for i in 0..QUERIES {
            match big_query(&topo.client, target) {
                Ok(_) => whole += 1,
                Err(e) => failures.push(format!("{label} {target} query {i}: {e}")),
            }
        }
        let (c1, b1) = (counters(&[&topo.client]), counters(&backends));
        let (translated, unmatched) = fragment_counters(&dnsteer);
        let (translated, unmatched) =
            (translated - translated_before, unmatched - unmatched_before);
        let fragmented = grew(&b0, &b1, frag_oks);
        let created = grew(&b0, &b1, frag_creates);
        let reassembled = grew(&c0, &c1, reasm_oks);
        let fragments_in = grew(&c0, &c1, reasm_reqds);
        // Every fragment but the first of each answer reached the client through
        // dnsteer's fragment translation.
        let later = fragments_in.saturating_sub(reassembled);
        println!(
            "fragments {label} {target}: {whole}/{QUERIES} whole over UDP from the service \
             address; backends fragmented {fragmented} answers into {created} fragments, the \
             client reassembled {reassembled} from {fragments_in}; dnsteer reply_fragment \
             +{translated}, fragment_unmatched +{unmatched}"
        );
        if fragmented < QUERIES as u64 {
            failures.push(format!(
                "{label} {target}: only {fragmented} of {QUERIES} answers left the backends \
                 fragmented ({frag_oks})"
            ));
        }
        if reassembled != whole as u64 {
            failures.push(format!(
                "{label} {target}: the client reassembled {reassembled} answers ({reasm_oks}), \
                 got {whole} whole"
            ));
        }
        if unmatched != 0 {
            failures.push(format!(
                "{label} {target}: queries.fragment_unmatched +{unmatched}: a later fragment \
                 went untranslated"
            ));
        }
        if translated != later || later == 0 {
            failures.push(format!(
                "{label} {target}: reasons.reply_fragment +{translated}, want the {later} later \
                 fragments the client received"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "fragmented answers through dnsteer:\n{}\ndnsteer log:\n{}",
        failures.join("\n"),
        dnsteer.log()
    );
}
