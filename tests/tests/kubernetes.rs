//! End to end, Kubernetes-fed backends: six real BIND backends stand in for
//! pods, the API server double for the cluster, and dnsteer watches it
//! through a kubeconfig while the client sends a steady query load. The test
//! plays the EndpointSlice controller through a pod rescheduled to a new
//! address, a rollout (each pod replaced, the old one terminating first), the
//! API server away for 10 s while pods move (and its history compacted, so
//! dnsteer relists on `410 Gone` when it is back), and a scale to zero and
//! back. A pod's named is stopped only once dnsteer shows its endpoint gone,
//! as a pod outlives its endpoint by its grace period.
//!
//! Checked: no query lost outside the scale-to-zero window; no answer from
//! an endpoint to a query sent after dnsteer showed it removed; how long a new
//! endpoint took to get traffic after the API server announced it; the
//! watch's state in `stats --json` and `/metrics`; `dnsteer backends add`
//! refused with where the backends come from. Also: `listen` left to the
//! Service's external IPs that are on the interface, and its ClusterIP (held by
//! no interface) steered at XDP and at the node's sockets.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    NetNs, TempDir, Topology, TopologyConfig, WHOAMI_NAME,
    cgroup::Cgroup,
    dnsteer::{Dnsteer, Launch, binary},
    kubeapi::{ApiServer, Cond, service, slice},
    load::{self, Answer, PacedLoad, QueryRecord},
};

const RATE: u32 = 2000;
const RUN: Duration = Duration::from_secs(40);
const NS: &str = "dns";
const PORT: (&str, u16, &str) = ("dns", 53, "UDP");
const METRICS: &str = "127.0.0.1:9154";
const API_DOWN: Duration = Duration::from_secs(10);
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// The flows' UDP idle timeout. The load sends each query from a fresh socket,
/// but the kernel reuses source ports: under the default 30 s a query would
/// often continue an older flow (to a draining backend, as it should); this
/// short makes nearly every query a new flow, so draining shows.
const UDP_IDLE: Duration = Duration::from_millis(200);
/// After dnsteer shows an endpoint draining, flows already on it may go on
/// for this long (each query within the idle timeout of the last one).
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// From a slice update to dnsteer steering by it, with the API server up.
const ANNOUNCE_LIMIT: Duration = Duration::from_secs(2);

fn config(iface: &str, listen: Option<&[SocketAddr]>) -> String {
    let listen = listen.map_or_else(String::new, |l| {
        let l: Vec<String> = l.iter().map(|a| format!("\"{a}\"")).collect();
        format!("listen = [{}]\n", l.join(", "))
    });
    format!(
        "interface = \"{iface}\"\n[flows]\nudp_idle_timeout = \"{}ms\"\n\n[[service]]\nname = \"dns\"\n{listen}protocol = \"udp\"\nselect = \"nth\"\nkubernetes = {{ namespace = \"{NS}\", service = \"bind\", port = \"dns\" }}\n",
        UDP_IDLE.as_millis()
    )
}

/// The service's backends as `dnsteer backends --json list` shows them: address -> state.
fn members(dnsteer: &Dnsteer) -> BTreeMap<String, String> {
    let json = dnsteer
        .backends(&["--json", "list"])
        .expect("dnsteer backends list");
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Polls until dnsteer's set is `want` (address -> state); when it first was.
fn wait_members(dnsteer: &Dnsteer, want: &[(SocketAddr, &str)], limit: Duration) -> Instant {
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(a, s)| (a.to_string(), (*s).to_owned()))
        .collect();
    let deadline = Instant::now() + limit;
    loop {
        let got = members(dnsteer);
        // When the answer came: the change it shows was complete by then.
        let now = Instant::now();
        if got == want {
            return now;
        }
        assert!(
            now < deadline,
            "dnsteer's backends are {got:?}, not {want:?}, after {limit:?}\n{}",
            dnsteer.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn ip_of(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!("IPv4 test bed"),
    }
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
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    })
}

fn sample(metrics: &str, key: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {key} in\n{metrics}"))
        .parse()
        .expect("a number")
}

/// The Kubernetes part of `stats --json` for the service.
fn watch_stats(dnsteer: &Dnsteer) -> Value {
    let json = dnsteer.stats(&["--json"]).expect("dnsteer stats --json");
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v["services"][0]["kubernetes"].clone()
}

/// What the test did and when.
struct Marks {
    start: Instant,
    /// (what, when), in order.
    events: Vec<(String, Instant)>,
    /// Endpoint -> when its announcement (ready) was written to the watch.
    announced: Vec<(SocketAddr, Instant, &'static str)>,
    /// Endpoint -> when dnsteer showed it removed.
    removed: Vec<(SocketAddr, Instant)>,
    /// Endpoint -> when dnsteer showed it draining.
    draining: Vec<(SocketAddr, Instant)>,
}

impl Marks {
    fn mark(&mut self, what: &str) -> Instant {
        let now = Instant::now();
        eprintln!("{:>7.3}s {what}", (now - self.start).as_secs_f64());
        self.events.push((what.to_owned(), now));
        now
    }

    fn at(&self, what: &str) -> Instant {
        self.events
            .iter()
            .find(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("no mark {what}"))
            .1
    }
}

/// The tests here run one at a time: the load test must not share the CPUs.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs this thread, and every thread and process it starts from now on (BIND,
/// the load's workers, dnsteer), at nice -20, as query_state.rs does: on a
/// machine busy with builds, a sender or BIND that waits a second for a CPU
/// loses queries that no steering decision lost.
fn run_ahead_of_other_work() {
    // SAFETY: gettid has no preconditions; setpriority changes this thread's nice
    // value only (threads and children inherit it).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20) };
    assert_eq!(
        rc,
        0,
        "setpriority(-20): {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn endpointslices_drive_the_backends_through_pod_events_under_load() {
    let _serial = serial();
    run_ahead_of_other_work();
    let mut topo = Topology::build(TopologyConfig {
        backends: 6,
        ..TopologyConfig::default()
    })
    .expect("test bed");
    let iface = topo.config.node_iface.clone();
    let b = topo.backend_targets();
    let ips: Vec<IpAddr> = b.iter().map(|a| a.ip()).collect();

    let mut api = ApiServer::start_in(Some(&topo.node.path()), "127.0.0.1:0".parse().unwrap())
        .expect("API double");
    api.set_bookmarks(Some(Duration::from_secs(1)));
    let dir = TempDir::new("kube-e2e").expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    let pods = |api: &ApiServer, eps: &[(usize, Cond)]| {
        let eps: Vec<(IpAddr, Cond)> = eps.iter().map(|(i, c)| (ips[*i], *c)).collect();
        api.apply_slice(&slice(NS, "bind-x7k2p", "bind", PORT, &eps));
        Instant::now()
    };
    use Cond::{NotReady, Ready, Terminating};
    pods(&api, &[(0, Ready), (1, Ready)]);

    let dnsteer = Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config(&iface, Some(&topo.service_targets())),
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--metrics-listen",
            METRICS,
        ],
    )
    .expect("dnsteer");
    wait_members(
        &dnsteer,
        &[(b[0], "active"), (b[1], "active")],
        Duration::from_secs(10),
    );

    // Backends are Kubernetes's: a hand-made change is refused, saying so.
    let refused = dnsteer
        .backends(&["add", &b[5].to_string()])
        .expect_err("backends add on a Kubernetes-fed service");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("Kubernetes") && refused.contains("dns/bind"),
        "the refusal does not say where the backends come from: {refused}"
    );

    let load = PacedLoad {
        // A query counts as lost only if it is not answered within 3 s: a
        // machine busy with other work can stall BIND (one worker) for a
        // second, and a query steered wrong is never answered anyway.
        timeout: QUERY_TIMEOUT,
        ..PacedLoad::new(topo.service_targets(), WHOAMI_NAME, RATE, RUN)
    };
    let mut m = Marks {
        start: Instant::now(),
        events: Vec::new(),
        announced: Vec::new(),
        removed: Vec::new(),
        draining: Vec::new(),
    };
    let (client, mut dns) = topo.split();
    let node = dns.node();
    let mut during_down = None;
    let records = thread::scope(|scope| {
        let load = scope.spawn(|| load::run_paced(client, &load, None).expect("query load"));
        thread::sleep(Duration::from_secs(2));
        let limit = ANNOUNCE_LIMIT;

        // 1. A pod rescheduled: the old one (b0) terminating, its replacement
        //    at a new address (b2) starting, then ready; then the old one gone.
        m.mark("reschedule");
        pods(&api, &[(0, Terminating), (1, Ready), (2, NotReady)]);
        let drained = wait_members(&dnsteer, &[(b[0], "draining"), (b[1], "active")], limit);
        m.draining.push((b[0], drained));
        thread::sleep(Duration::from_millis(300));
        let t = pods(&api, &[(0, Terminating), (1, Ready), (2, Ready)]);
        m.announced.push((b[2], t, "reschedule"));
        wait_members(
            &dnsteer,
            &[(b[0], "draining"), (b[1], "active"), (b[2], "active")],
            limit,
        );
        thread::sleep(Duration::from_millis(500));
        pods(&api, &[(1, Ready), (2, Ready)]);
        let gone = wait_members(&dnsteer, &[(b[1], "active"), (b[2], "active")], limit);
        m.removed.push((b[0], gone));
        thread::sleep(Duration::from_millis(300));
        dns.stop(0).expect("the old pod's named ends");
        m.mark("reschedule done");
        thread::sleep(Duration::from_secs(1));

        // 2. A rollout, one pod at a time (maxSurge 1, maxUnavailable 0):
        //    b1 -> b3, b2 -> b4.
        m.mark("rollout");
        let mut current = vec![1, 2];
        for (old, new) in [(1, 3), (2, 4)] {
            let others: Vec<(usize, Cond)> = current
                .iter()
                .filter(|&&i| i != old)
                .map(|&i| (i, Ready))
                .collect();
            let with = |extra: &[(usize, Cond)]| [others.clone(), extra.to_vec()].concat();
            pods(&api, &with(&[(old, Ready), (new, NotReady)]));
            thread::sleep(Duration::from_millis(300));
            let t = pods(&api, &with(&[(old, Ready), (new, Ready)]));
            m.announced.push((b[new], t, "rollout"));
            thread::sleep(Duration::from_millis(300));
            pods(&api, &with(&[(old, Terminating), (new, Ready)]));
            let mut want: Vec<(SocketAddr, &str)> = current
                .iter()
                .map(|&i| (b[i], if i == old { "draining" } else { "active" }))
                .chain([(b[new], "active")])
                .collect();
            want.sort();
            let drained = wait_members(&dnsteer, &want, limit);
            m.draining.push((b[old], drained));
            thread::sleep(Duration::from_millis(500));
            pods(&api, &with(&[(new, Ready)]));
            current.retain(|&i| i != old);
            current.push(new);
            let want: Vec<(SocketAddr, &str)> = current.iter().map(|&i| (b[i], "active")).collect();
            let mut want = want;
            want.sort();
            let gone = wait_members(&dnsteer, &want, limit);
            m.removed.push((b[old], gone));
            thread::sleep(Duration::from_millis(300));
            dns.stop(old).expect("the old pod's named ends");
        }
        m.mark("rollout done");
        thread::sleep(Duration::from_secs(1));

        // 3. The API server away for 10 s while b3 is rescheduled to b5 and the
        //    history is compacted: dnsteer keeps steering to b3 and b4 (b3's pod
        //    is still alive here: a pod outlives its endpoint) and catches up
        //    with a relist when the server is back.
        m.mark("api down");
        let down_at = Instant::now();
        api.stop();
        pods(&api, &[(3, Terminating), (4, Ready), (5, NotReady)]);
        thread::sleep(Duration::from_secs(2));
        pods(&api, &[(3, Terminating), (4, Ready), (5, Ready)]);
        thread::sleep(Duration::from_secs(2));
        pods(&api, &[(4, Ready), (5, Ready)]);
        api.compact(false);
        let kept = members(&dnsteer);
        let seen = watch_stats(&dnsteer);
        let scraped = scrape(node);
        during_down = Some((kept, seen, scraped));
        thread::sleep(API_DOWN.saturating_sub(down_at.elapsed()));
        api.restart().expect("API server back");
        let back = m.mark("api back");
        m.announced.push((b[5], back, "api back"));
        let gone = wait_members(
            &dnsteer,
            &[(b[4], "active"), (b[5], "active")],
            Duration::from_secs(10),
        );
        m.removed.push((b[3], gone));
        thread::sleep(Duration::from_millis(300));
        dns.stop(3).expect("the old pod's named ends");
        thread::sleep(Duration::from_secs(1));

        // 4. Scale to zero and back: both pods terminating, gone, their named
        //    stopped; a second later two new pods (at b0 and b1 again).
        m.mark("scale to zero");
        pods(&api, &[(4, Terminating), (5, Terminating)]);
        let drained = wait_members(&dnsteer, &[(b[4], "draining"), (b[5], "draining")], limit);
        m.draining.push((b[4], drained));
        m.draining.push((b[5], drained));
        thread::sleep(Duration::from_millis(500));
        pods(&api, &[]);
        let gone = wait_members(&dnsteer, &[], limit);
        m.removed.push((b[4], gone));
        m.removed.push((b[5], gone));
        dns.stop(4).expect("named ends");
        dns.stop(5).expect("named ends");
        thread::sleep(Duration::from_secs(1));
        m.mark("scale up");
        dns.start(0).expect("new pod's named");
        dns.start(1).expect("new pod's named");
        pods(&api, &[(0, NotReady), (1, NotReady)]);
        thread::sleep(Duration::from_millis(300));
        let t = pods(&api, &[(0, Ready), (1, Ready)]);
        m.announced.push((b[0], t, "scale up"));
        m.announced.push((b[1], t, "scale up"));
        wait_members(&dnsteer, &[(b[0], "active"), (b[1], "active")], limit);
        m.mark("scaled up");
        load.join().expect("load thread")
    });
    let summary = load::summarize(&records);
    eprintln!("load: {summary}");
    assert!(
        records.last().unwrap().sent > m.at("scaled up"),
        "the load ended before the last event; raise RUN"
    );

    // Per phase: sent and answered.
    let phases = [
        ("steady", m.start, m.at("reschedule")),
        ("reschedule", m.at("reschedule"), m.at("rollout")),
        ("rollout", m.at("rollout"), m.at("api down")),
        (
            "api down 10 s + catch-up",
            m.at("api down"),
            m.at("scale to zero"),
        ),
        (
            "scale to zero and back",
            m.at("scale to zero"),
            m.at("scaled up"),
        ),
        (
            "after",
            m.at("scaled up"),
            records.last().unwrap().sent + Duration::from_millis(1),
        ),
    ];
    for (name, from, to) in phases {
        let sent: Vec<&QueryRecord> = records
            .iter()
            .filter(|r| r.sent >= from && r.sent < to)
            .collect();
        let answered = sent
            .iter()
            .filter(|r| matches!(r.answer, Answer::Answered(_)))
            .count();
        let mut by: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        for r in &sent {
            if let Answer::Answered(a) = r.answer {
                *by.entry(a).or_default() += 1;
            }
        }
        eprintln!(
            "phase {name}: {} sent, {answered} answered, {} lost; by backend {by:?}",
            sent.len(),
            sent.len() - answered
        );
    }

    // 0 queries lost outside the scale-to-zero window.
    let (zero_from, zero_to) = (m.at("scale to zero"), m.at("scaled up"));
    let lost: Vec<&QueryRecord> = records
        .iter()
        .filter(|r| !matches!(r.answer, Answer::Answered(_)))
        .filter(|r| r.sent < zero_from || r.sent > zero_to)
        .collect();
    assert!(
        lost.is_empty(),
        "{} queries lost outside the scale-to-zero window, e.g. {:?}\n{}",
        lost.len(),
        lost.iter()
            .take(5)
            .map(|r| ((r.sent - m.start).as_secs_f64(), &r.answer))
            .collect::<Vec<_>>(),
        dnsteer.log()
    );

    // No answer from an endpoint to a query sent after dnsteer showed it removed
    // (until it was announced again).
    for &(addr, gone) in &m.removed {
        let back = m
            .announced
            .iter()
            .filter(|(a, t, _)| *a == addr && *t > gone)
            .map(|(_, t, _)| *t)
            .min();
        let late: Vec<&QueryRecord> = records
            .iter()
            .filter(|r| r.sent > gone && back.is_none_or(|b| r.sent < b))
            .filter(|r| r.answer == Answer::Answered(ip_of(addr)))
            .collect();
        assert!(
            late.is_empty(),
            "{} queries sent after {addr} was shown removed were answered by it, the first {:.3}s after",
            late.len(),
            (late[0].sent - gone).as_secs_f64()
        );
    }

    // A draining endpoint takes no new flows: once the flows it had have
    // gone idle, no query goes to it.
    for &(addr, drained) in &m.draining {
        let drained = drained + DRAIN_GRACE;
        let back = m
            .announced
            .iter()
            .filter(|(a, t, _)| *a == addr && *t > drained)
            .map(|(_, t, _)| *t)
            .min();
        let late = records
            .iter()
            .filter(|r| r.sent > drained && back.is_none_or(|b| r.sent < b))
            .filter(|r| r.answer == Answer::Answered(ip_of(addr)))
            .count();
        assert_eq!(
            late, 0,
            "{addr} took {late} new queries after dnsteer showed it draining"
        );
    }

    // From the API server announcing an endpoint to it answering queries.
    for &(addr, announced, event) in &m.announced {
        let first = records
            .iter()
            .filter(|r| r.sent >= announced && r.answer == Answer::Answered(ip_of(addr)))
            .map(|r| r.sent)
            .min()
            .unwrap_or_else(|| panic!("{addr} ({event}) never answered a query"));
        let took = first - announced;
        eprintln!(
            "endpoint {addr} ({event}): first query answered {:.1} ms after the API server announced it",
            took.as_secs_f64() * 1000.0
        );
        let bound = if event == "api back" {
            Duration::from_secs(8)
        } else {
            ANNOUNCE_LIMIT
        };
        assert!(
            took < bound,
            "{addr} ({event}) took {took:?} to get traffic"
        );
    }

    // The watch's state: while the server was away, the set stayed and the
    // errors showed; afterwards connected again and synced after it came back.
    let (kept, seen, scraped) = during_down.expect("observed while down");
    assert_eq!(
        kept.len(),
        2,
        "the set changed while the API server was away: {kept:?}"
    );
    assert_eq!(
        seen["connected"],
        Value::Bool(false),
        "stats while down: {seen}"
    );
    assert!(
        seen["watch_errors"].as_u64().unwrap() > 0,
        "stats while down: {seen}"
    );
    assert_eq!(
        sample(&scraped, "dnsteer_kubernetes_connected{service=\"dns\"}"),
        0.0
    );
    assert!(
        sample(
            &scraped,
            "dnsteer_kubernetes_watch_errors_total{service=\"dns\"}"
        ) > 0.0
    );
    let now = watch_stats(&dnsteer);
    assert_eq!(
        now["connected"],
        Value::Bool(true),
        "stats at the end: {now}"
    );
    assert_eq!(
        now["endpoints_seen"].as_u64(),
        Some(2),
        "stats at the end: {now}"
    );
    let scraped = scrape(node);
    assert_eq!(
        sample(&scraped, "dnsteer_kubernetes_connected{service=\"dns\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &scraped,
            "dnsteer_kubernetes_endpoints_seen{service=\"dns\"}"
        ),
        2.0
    );
    let synced = sample(
        &scraped,
        "dnsteer_kubernetes_last_sync_timestamp_seconds{service=\"dns\"}",
    );
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let since_back = m.at("api back").elapsed().as_secs_f64();
    assert!(
        unix - synced < since_back,
        "last sync {synced} is not after the API server came back ({since_back:.1}s ago)"
    );
    // One log line for the failure and one for the recovery.
    let log = dnsteer.log();
    assert_eq!(log.matches("keeping the last").count(), 1, "{log}");
    assert_eq!(log.matches("restored").count(), 1, "{log}");
    drop(api);
}

/// Steered (answered by one of `backends`) or not, through `target`.
fn steered(client: &NetNs, target: SocketAddr, backends: &[SocketAddr]) -> bool {
    matches!(
        testbed::dns::query_once(client, target, WHOAMI_NAME, Duration::from_millis(500)),
        Ok(Some(ip)) if backends.iter().any(|b| b.ip() == IpAddr::V4(ip))
    )
}

/// Waits until `target` is steered (`want`) or not; when it first was.
fn wait_steered(
    topo: &Topology,
    target: SocketAddr,
    want: bool,
    backends: &[SocketAddr],
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while steered(&topo.client, target, backends) != want {
        assert!(
            Instant::now() < deadline,
            "{target} steered: not {want} after 10 s\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn listen_from_the_service_external_ips_on_the_interface() {
    let _serial = serial();
    let topo = Topology::build(TopologyConfig {
        backends: 2,
        ..TopologyConfig::default()
    })
    .expect("test bed");
    let iface = topo.config.node_iface.clone();
    let b = topo.backend_targets();
    let api = ApiServer::start_in(Some(&topo.node.path()), "127.0.0.1:0".parse().unwrap())
        .expect("API double");
    let dir = TempDir::new("kube-listen").expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    api.apply_slice(&slice(
        NS,
        "bind-a",
        "bind",
        PORT,
        &[(b[0].ip(), Cond::Ready), (b[1].ip(), Cond::Ready)],
    ));
    // The first service address is on the interface; 198.51.100.7 is not.
    // The second one is on the interface too, but not the Service's (yet).
    let first = IpAddr::V4(topo.config.service_addrs[0]);
    let second = IpAddr::V4(topo.config.service_addrs[1]);
    let elsewhere: IpAddr = "198.51.100.7".parse().unwrap();
    api.apply_service(&service(NS, "bind", PORT, &[first, elsewhere]));
    let dnsteer = Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config(&iface, None),
        &["--kubeconfig", kubeconfig.to_str().unwrap()],
    )
    .expect("dnsteer");
    wait_members(
        &dnsteer,
        &[(b[0], "active"), (b[1], "active")],
        Duration::from_secs(10),
    );
    let log = || dnsteer.log();
    let text = dnsteer.stats(&[]).expect("dnsteer stats");
    assert!(
        text.contains("kubernetes dns/bind port \"dns\": watching, last sync"),
        "{text}"
    );
    wait_steered(&topo, SocketAddr::new(first, 53), true, &b, log);
    assert!(
        !steered(&topo.client, SocketAddr::new(second, 53), &b),
        "{second} is not the Service's, yet steered"
    );
    assert!(
        dnsteer.log().contains("not on 198.51.100.7:53"),
        "the address not on {iface} is not mentioned: {}",
        dnsteer.log()
    );

    // The Service changes its external IPs: the listen set follows.
    api.apply_service(&service(NS, "bind", PORT, &[second]));
    wait_steered(&topo, SocketAddr::new(second, 53), true, &b, log);
    wait_steered(&topo, SocketAddr::new(first, 53), false, &b, log);
}

/// The Service's ClusterIP is held by no interface: dnsteer listens on it all
/// the same, so a query for it that is routed to the node is steered at XDP,
/// and a process on the node (in the cgroup the socket programs are attached
/// to) is steered at its socket and answered from the ClusterIP.
#[test]
fn the_cluster_ip_is_served_on_the_interface_and_at_the_nodes_sockets() {
    let _serial = serial();
    let topo = Topology::build(TopologyConfig {
        backends: 2,
        ..TopologyConfig::default()
    })
    .expect("test bed");
    let iface = topo.config.node_iface.clone();
    let b = topo.backend_targets();
    let cgroup = Cgroup::new("kube-cluster-ip").expect("a cgroup v2 directory of the test's own");
    let api = ApiServer::start_in(Some(&topo.node.path()), "127.0.0.1:0".parse().unwrap())
        .expect("API double");
    let dir = TempDir::new("kube-cluster-ip").expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    api.apply_slice(&slice(
        NS,
        "bind-a",
        "bind",
        PORT,
        &[(b[0].ip(), Cond::Ready), (b[1].ip(), Cond::Ready)],
    ));
    let cluster_ip = SocketAddr::new("10.96.0.10".parse().unwrap(), PORT.1);
    let mut bind = service(NS, "bind", PORT, &[]);
    if let Some(spec) = bind.spec.as_mut() {
        spec.cluster_ip = Some(cluster_ip.ip().to_string());
        spec.cluster_ips = Some(vec![cluster_ip.ip().to_string()]);
    }
    api.apply_service(&bind);
    let at = cgroup.path_for_other_mounts();
    let dnsteer = Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config(&iface, None),
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--cgroup",
            at.to_str().unwrap(),
        ],
    )
    .expect("dnsteer");
    wait_members(
        &dnsteer,
        &[(b[0], "active"), (b[1], "active")],
        Duration::from_secs(10),
    );
    let log = || dnsteer.log();
    // The client routes everything through the node.
    wait_steered(&topo, cluster_ip, true, &b, log);
    assert!(
        dnsteer.log().contains(&format!(
            "listening on the Service's addresses {cluster_ip}"
        )),
        "{}",
        dnsteer.log()
    );

    // From the node itself: dig takes an answer only from the address it
    // asked, so an answer shows the reply was handed back as the ClusterIP.
    let mut answered = BTreeMap::new();
    for _ in 0..20 {
        let mut dig = topo.node.command("dig");
        dig.args([
            &format!("@{}", cluster_ip.ip()),
            "+short",
            "+time=2",
            "+tries=1",
            WHOAMI_NAME,
            "A",
        ]);
        cgroup.enter(&mut dig);
        let out = dig.output().expect("running dig");
        let text = String::from_utf8_lossy(&out.stdout);
        let ip: Ipv4Addr = text
            .lines()
            .find_map(|l| l.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "dig @{cluster_ip} from the node: no answer: {text}\n{}",
                    log()
                )
            });
        *answered.entry(ip).or_insert(0u32) += 1;
    }
    println!("node-local queries for {cluster_ip} answered by {answered:?}");
    let backends: Vec<IpAddr> = b.iter().map(SocketAddr::ip).collect();
    assert!(
        answered
            .keys()
            .all(|ip| backends.contains(&IpAddr::V4(*ip))),
        "{answered:?}"
    );
    assert_eq!(
        answered.len(),
        2,
        "nth spreads over both backends: {answered:?}"
    );
}

/// Health probes apply on top of Kubernetes: a pod Kubernetes calls ready
/// whose named does not answer is taken out, and put back when it does.
#[test]
fn health_probes_apply_on_top_of_kubernetes() {
    let _serial = serial();
    let mut topo = Topology::build(TopologyConfig {
        backends: 2,
        ..TopologyConfig::default()
    })
    .expect("test bed");
    let iface = topo.config.node_iface.clone();
    let b = topo.backend_targets();
    let api = ApiServer::start_in(Some(&topo.node.path()), "127.0.0.1:0".parse().unwrap())
        .expect("API double");
    let dir = TempDir::new("kube-health").expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    api.apply_slice(&slice(
        NS,
        "bind-a",
        "bind",
        PORT,
        &[(b[0].ip(), Cond::Ready), (b[1].ip(), Cond::Ready)],
    ));
    let text = config(&iface, Some(&topo.service_targets()))
        + "\n[service.health]\nquery = \"health.example. A\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nfall = 2\nrise = 2\n";
    let dnsteer = Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &text,
        &["--kubeconfig", kubeconfig.to_str().unwrap()],
    )
    .expect("dnsteer");
    wait_members(
        &dnsteer,
        &[(b[0], "active"), (b[1], "active")],
        Duration::from_secs(10),
    );
    topo.stop_dns(1).expect("stopping b1's named");
    wait_members(
        &dnsteer,
        &[(b[0], "active"), (b[1], "down")],
        Duration::from_secs(5),
    );
    // Kubernetes still lists b1 as ready; nothing goes to it.
    let target = topo.service_targets()[0];
    for _ in 0..50 {
        let answer =
            testbed::dns::query_once(&topo.client, target, WHOAMI_NAME, Duration::from_secs(1))
                .expect("a query through the service");
        assert_eq!(
            answer,
            Some(ip_of(b[0])),
            "answered by other than the healthy backend\n{}",
            dnsteer.log()
        );
    }
    topo.start_dns(1).expect("starting b1's named");
    wait_members(
        &dnsteer,
        &[(b[0], "active"), (b[1], "active")],
        Duration::from_secs(5),
    );
}

/// A persistent dnsteer restarted while the API server is away (a DaemonSet
/// pod replaced during an outage) adopts the data path and keeps its
/// backends: a broken watch never empties a service. When the server is back
/// the set catches up.
#[test]
fn a_restart_while_the_api_server_is_away_keeps_the_backends() {
    let _serial = serial();
    let topo = Topology::build(TopologyConfig {
        backends: 3,
        ..TopologyConfig::default()
    })
    .expect("test bed");
    let iface = topo.config.node_iface.clone();
    let b = topo.backend_targets();
    let mut api = ApiServer::start_in(Some(&topo.node.path()), "127.0.0.1:0".parse().unwrap())
        .expect("API double");
    let dir = TempDir::new("kube-restart").expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    let pods = |api: &ApiServer, eps: &[usize]| {
        let eps: Vec<(IpAddr, Cond)> = eps.iter().map(|&i| (b[i].ip(), Cond::Ready)).collect();
        api.apply_slice(&slice(NS, "bind-a", "bind", PORT, &eps));
    };
    pods(&api, &[0, 1]);
    let mut dnsteer = Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config(&iface, Some(&topo.service_targets())),
        &["--kubeconfig", kubeconfig.to_str().unwrap(), "--persist"],
    )
    .expect("dnsteer");
    let both = [(b[0], "active"), (b[1], "active")];
    wait_members(&dnsteer, &both, Duration::from_secs(10));

    dnsteer.kill();
    api.stop();
    dnsteer
        .restart()
        .expect("dnsteer adopts while the API server is away");
    let log = dnsteer.log();
    assert!(
        log.contains("no backends from Kubernetes yet for dns"),
        "{log}"
    );
    // Kept from the adopted data path, at once.
    wait_members(&dnsteer, &both, Duration::from_secs(1));
    let target = topo.service_targets()[0];
    for _ in 0..20 {
        let answer =
            testbed::dns::query_once(&topo.client, target, WHOAMI_NAME, Duration::from_secs(1))
                .expect("a query through the service");
        assert!(
            answer.is_some_and(|a| a == ip_of(b[0]) || a == ip_of(b[1])),
            "{answer:?} while the API server is away\n{}",
            dnsteer.log()
        );
    }
    assert_eq!(watch_stats(&dnsteer)["connected"], Value::Bool(false));

    // Back, with a pod moved meanwhile.
    pods(&api, &[0, 2]);
    api.restart().expect("API server back");
    wait_members(
        &dnsteer,
        &[(b[0], "active"), (b[2], "active")],
        Duration::from_secs(10),
    );
    dnsteer.stop().expect("dnsteer stops");
}

/// `listen` left out follows the interface's addresses as they change
/// (netlink address events), not only Kubernetes events: an external IP of
/// the Service added to the interface gets steered, and once removed is not.
#[test]
fn listen_follows_addresses_added_to_and_removed_from_the_interface() {
    let _serial = serial();
    let topo = Topology::build(TopologyConfig {
        backends: 2,
        ..TopologyConfig::default()
    })
    .expect("test bed");
    let iface = topo.config.node_iface.clone();
    let b = topo.backend_targets();
    let api = ApiServer::start_in(Some(&topo.node.path()), "127.0.0.1:0".parse().unwrap())
        .expect("API double");
    let dir = TempDir::new("kube-addr").expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
    api.apply_slice(&slice(
        NS,
        "bind-a",
        "bind",
        PORT,
        &[(b[0].ip(), Cond::Ready), (b[1].ip(), Cond::Ready)],
    ));
    // 192.0.2.12 is in the client's subnet but on no interface yet.
    let first = IpAddr::V4(topo.config.service_addrs[0]);
    let added: IpAddr = "192.0.2.12".parse().unwrap();
    api.apply_service(&service(NS, "bind", PORT, &[first, added]));
    let dnsteer = Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config(&iface, None),
        &["--kubeconfig", kubeconfig.to_str().unwrap()],
    )
    .expect("dnsteer");
    let log = || dnsteer.log();
    wait_steered(&topo, SocketAddr::new(first, 53), true, &b, log);
    assert!(
        !steered(&topo.client, SocketAddr::new(added, 53), &b),
        "{added} is on no interface, yet steered"
    );

    // No Kubernetes event from here on: only the interface changes.
    topo.node
        .run(&["ip", "addr", "add", "192.0.2.12/24", "dev", &iface])
        .expect("adding the address");
    wait_steered(&topo, SocketAddr::new(added, 53), true, &b, log);
    assert!(
        dnsteer
            .log()
            .contains(&format!("an address was added to {iface}")),
        "{}",
        dnsteer.log()
    );
    topo.node
        .run(&["ip", "addr", "del", "192.0.2.12/24", "dev", &iface])
        .expect("removing the address");
    wait_steered(&topo, SocketAddr::new(added, 53), false, &b, log);
    wait_steered(&topo, SocketAddr::new(first, 53), true, &b, log);
    assert!(
        dnsteer
            .log()
            .contains(&format!("an address was removed from {iface}")),
        "{}",
        dnsteer.log()
    );
    drop(api);
}
