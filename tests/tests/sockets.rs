//! The node's own clients, steered at their sockets: dig, kdig and kdig over
//! TCP run in the node's network namespace, in a cgroup v2 directory of the
//! test's own where dnsteer's socket programs are attached, and query the
//! service's listen address. Every query must be answered, from the address
//! asked (dig drops an answer from any other), spread over the backends, and
//! the socket counters must match the backends that answered; the XDP path
//! sees none of it.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    process::Command,
};

use dnsteer::observe::stats::Snapshot;
use testbed::{
    Topology, TopologyConfig, WHOAMI_NAME,
    cgroup::Cgroup,
    dnsteer::{Dnsteer, Launch, binary, service_config},
};

const QUERIES: usize = 120;

fn snapshot(dnsteer: &Dnsteer) -> Snapshot {
    let json = dnsteer.stats(&["--json"]).expect("dnsteer stats --json");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats JSON ({e}): {json}"))
}

#[derive(Clone, Copy, Debug)]
enum Client {
    Dig,
    Kdig,
    KdigTcp,
}

/// One query for the answering backend's address, by `client` in the node's
/// namespace inside `cgroup`.
fn whoami(topo: &Topology, cgroup: &Cgroup, client: Client, target: SocketAddr) -> Ipv4Addr {
    let server = format!("@{}", target.ip());
    let port = target.port().to_string();
    let mut cmd: Command = match client {
        Client::Dig => {
            let mut c = topo.node.command("dig");
            c.args([&server, "-p", &port, "+short", "+time=2", "+tries=1"]);
            c
        }
        Client::Kdig | Client::KdigTcp => {
            let mut c = topo.node.command("kdig");
            c.args([&server, "-p", &port, "+short", "+timeout=2", "+retry=0"]);
            if matches!(client, Client::KdigTcp) {
                c.arg("+tcp");
            }
            c
        }
    };
    cmd.args([WHOAMI_NAME, "A"]);
    cgroup.enter(&mut cmd);
    let out = cmd.output().expect("running the DNS client");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{client:?} to {target} got no answer (status {}): {text} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Per backend address: socket choices and XDP packets, from one snapshot.
fn counts(s: &Snapshot) -> (BTreeMap<Ipv4Addr, u64>, u64) {
    let service = &s.services[0];
    let sockets = service.sockets.as_ref().expect("a sockets object");
    let choices = sockets
        .backends
        .iter()
        .map(|b| {
            let ip = b.address.parse::<SocketAddr>().unwrap().ip();
            let std::net::IpAddr::V4(ip) = ip else {
                panic!("{ip}")
            };
            (ip, b.sendmsg + b.connect_udp + b.connect_tcp)
        })
        .collect();
    (choices, service.packets)
}

#[test]
fn node_local_clients_are_steered_at_their_sockets() {
    let topo = Topology::build(TopologyConfig::default()).expect("test bed");
    let cgroup = Cgroup::new("sockets").expect("a cgroup v2 directory of the test's own");
    let iface = &topo.config.node_iface;
    let listen = topo.service_targets();
    let config = service_config(iface, "nth", &listen, &topo.backend_targets())
        .replace("protocol = \"udp\"", "protocol = \"udp+tcp\"");
    let at = cgroup.path_for_other_mounts();
    let dnsteer = Dnsteer::start_with_args(
        Launch::IpNetnsExec,
        &topo.node,
        &binary().unwrap(),
        iface,
        &config,
        &["--cgroup", at.to_str().unwrap()],
    )
    .expect("dnsteer run");
    assert!(
        dnsteer.log().contains("socket programs attached to cgroup"),
        "{}",
        dnsteer.log()
    );

    for client in [Client::Dig, Client::Kdig, Client::KdigTcp] {
        let before = snapshot(&dnsteer);
        let mut answered: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
        for i in 0..QUERIES {
            let target = listen[i % listen.len()];
            *answered
                .entry(whoami(&topo, &cgroup, client, target))
                .or_default() += 1;
        }
        let after = snapshot(&dnsteer);
        let ((c0, p0), (c1, p1)) = (counts(&before), counts(&after));
        let chosen: BTreeMap<Ipv4Addr, u64> = c1
            .iter()
            .map(|(ip, n)| (*ip, n - c0.get(ip).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        println!("{client:?}: answered by {answered:?}, socket choices {chosen:?}");
        assert_eq!(
            answered, chosen,
            "{client:?}: the backends that answered are the ones the socket programs chose"
        );
        assert_eq!(
            answered.len(),
            topo.backend_addrs().len(),
            "{client:?}: nth spreads over every backend"
        );
        assert_eq!(
            p1, p0,
            "{client:?}: no packet of the node's own crossed XDP"
        );
    }

    // A process outside the cgroup is not steered: nothing answers on the
    // node's own listen address.
    let out = topo
        .node
        .run(&[
            "dig",
            &format!("@{}", listen[0].ip()),
            "+short",
            "+time=1",
            "+tries=1",
            WHOAMI_NAME,
            "A",
        ])
        .unwrap_or_default();
    assert!(
        out.lines().all(|l| l.trim().parse::<Ipv4Addr>().is_err()),
        "outside the cgroup: {out}"
    );

    // The interface's clients are served as before, by XDP.
    let before = snapshot(&dnsteer);
    let got = testbed::dns::kdig(&topo.client, listen[0], WHOAMI_NAME).expect("kdig");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        snapshot(&dnsteer).services[0].packets,
        before.services[0].packets + 1
    );
}

#[test]
fn a_path_that_is_not_cgroup_v2_is_named_and_the_interface_still_steers() {
    let topo = Topology::build(TopologyConfig::default()).expect("test bed");
    let iface = &topo.config.node_iface;
    let listen = topo.service_targets();
    let config = service_config(iface, "nth", &listen, &topo.backend_targets());
    let dnsteer = Dnsteer::start_with_args(
        Launch::IpNetnsExec,
        &topo.node,
        &binary().unwrap(),
        iface,
        &config,
        &["--cgroup", "/proc"],
    )
    .expect("dnsteer run");
    let log = dnsteer.log();
    assert!(
        log.contains("socket steering is off")
            && log.contains("/proc is not a cgroup v2 directory"),
        "{log}"
    );
    let got = testbed::dns::kdig(&topo.client, listen[0], WHOAMI_NAME).expect("kdig");
    assert_eq!(got.len(), 1, "{got:?}");
}
