//! The node's own clients, steered at their sockets: dig, kdig and kdig over
//! TCP run in the node's network namespace, in a cgroup v2 directory of the
//! test's own where dnsteer's socket programs are attached, and query the
//! service's listen address. Every query must be answered, from the address
//! asked (dig drops an answer from any other), spread over the backends, and
//! the socket counters must match the backends that answered; the XDP path
//! sees none of it. A resolver's connected UDP socket whose backend is
//! removed is closed under it and reconnects to a serving one.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use dnsteer::observe::stats::Snapshot;
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RData, RecordType},
};
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

const CONNECTED_QUERIES: usize = 1000;
const CONNECTED_TIMEOUT: Duration = Duration::from_secs(2);
/// Between one answer and the next query: 1000 queries take about 5 s, so
/// the change lands mid-run.
const CONNECTED_PACE: Duration = Duration::from_millis(5);
/// Answers before the change.
const CONNECTED_BEFORE: usize = 200;

/// What the connected client saw, in order: when each query was sent and which
/// backend answered it.
struct Connected {
    answers: Vec<(Instant, Ipv4Addr)>,
    timeouts: usize,
    /// Errors the kernel reported, after each of which the client reconnected.
    reconnects: Vec<String>,
}

/// A resolver's long-lived connected UDP socket, created in `cgroup` (in the
/// node's namespace): one query at a time, reconnecting only on an error
/// the kernel reports. `last` holds the answers so far and the last
/// answering backend.
fn connected_client(
    cgroup: &Cgroup,
    service: SocketAddr,
    last: &Mutex<(usize, Option<Ipv4Addr>)>,
) -> Connected {
    let socket = cgroup
        .with_process_in(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("joining the cgroup")
        .expect("a UDP socket");
    socket.connect(service).expect("connect");
    socket
        .set_read_timeout(Some(CONNECTED_TIMEOUT))
        .expect("a read timeout");
    let name = Name::from_ascii(WHOAMI_NAME).unwrap();
    let mut seen = Connected {
        answers: Vec::new(),
        timeouts: 0,
        reconnects: Vec::new(),
    };
    let mut buf = [0u8; 512];
    for _ in 0..CONNECTED_QUERIES {
        thread::sleep(CONNECTED_PACE);
        let mut query = Message::query();
        query.add_query(Query::query(name.clone(), RecordType::A));
        let bytes = query.to_vec().unwrap();
        let sent = Instant::now();
        // The send too may fail once the socket was closed under it.
        let got = socket.send(&bytes).and_then(|_| {
            loop {
                let n = socket.recv(&mut buf)?;
                match Message::from_vec(&buf[..n]) {
                    Ok(reply) if reply.metadata.id == query.metadata.id => break Ok(reply),
                    _ => continue,
                }
            }
        });
        match got {
            Ok(reply) => {
                let ip = reply
                    .answers
                    .iter()
                    .find_map(|r| match &r.data {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .expect("an A record");
                seen.answers.push((sent, ip));
                *last.lock().unwrap() = (seen.answers.len(), Some(ip));
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                seen.timeouts += 1;
            }
            Err(e) => {
                seen.reconnects.push(e.to_string());
                socket.connect(service).expect("reconnect");
            }
        }
    }
    seen
}

/// A connected UDP socket whose backend is removed is closed by dnsteer, so
/// the client's next call fails and its reconnect draws a serving backend:
/// no query times out, and none is answered by the removed backend once the
/// removal is done.
#[test]
fn a_connected_socket_whose_backend_leaves_is_closed_and_reconnects() {
    let topo = Topology::build(TopologyConfig {
        backends: 4,
        ..TopologyConfig::default()
    })
    .expect("test bed");
    let cgroup = Cgroup::new("connected").expect("a cgroup v2 directory of the test's own");
    let iface = &topo.config.node_iface;
    let listen = topo.service_targets();
    let b = topo.backend_targets();
    let config = service_config(iface, "nth", &listen[..1], &b[..3]);
    let dnsteer = Dnsteer::start_with_args(
        Launch::IpNetnsExec,
        &topo.node,
        &binary().unwrap(),
        iface,
        &config,
        &["--cgroup", cgroup.path_for_other_mounts().to_str().unwrap()],
    )
    .expect("dnsteer run");

    let last = Mutex::new((0, None));
    let (seen, removed, removed_at) = thread::scope(|s| {
        let client = s.spawn(|| {
            topo.node
                .enter(|| connected_client(&cgroup, listen[0], &last))
        });
        // Once the client is well under way, take away the backend it is on.
        let victim = loop {
            if let (CONNECTED_BEFORE.., Some(ip)) = *last.lock().unwrap() {
                break ip;
            }
            thread::sleep(CONNECTED_PACE);
        };
        let victim = *b.iter().find(|t| t.ip() == victim).expect("a backend");
        dnsteer
            .backends(&["remove", &victim.to_string()])
            .expect("backends remove");
        let removed_at = Instant::now();
        dnsteer
            .backends(&["add", &b[3].to_string()])
            .expect("backends add");
        (client.join().expect("the client"), victim, removed_at)
    });

    let after: BTreeMap<Ipv4Addr, usize> = seen
        .answers
        .iter()
        .filter(|(sent, _)| *sent > removed_at)
        .fold(BTreeMap::new(), |mut m, (_, ip)| {
            *m.entry(*ip).or_default() += 1;
            m
        });
    println!(
        "{} answered, {} timed out, reconnects {:?}; removed {removed}; answers after the removal by backend {after:?}",
        seen.answers.len(),
        seen.timeouts,
        seen.reconnects
    );
    assert_eq!(seen.timeouts, 0, "{}", dnsteer.log());
    assert!(
        !seen.reconnects.is_empty(),
        "the kernel reported no error: the socket was not closed\n{}",
        dnsteer.log()
    );
    assert_eq!(
        seen.answers.len() + seen.reconnects.len(),
        CONNECTED_QUERIES,
        "every query answered or failed at once"
    );
    assert!(
        after
            .keys()
            .all(|ip| std::net::IpAddr::V4(*ip) != removed.ip()),
        "answered by {removed} after its removal\n{}",
        dnsteer.log()
    );
    assert!(
        dnsteer
            .log()
            .contains(&format!("UDP socket(s) of this node to {removed}")),
        "{}",
        dnsteer.log()
    );
}
