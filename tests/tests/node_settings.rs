//! Per-node settings and the health endpoints, end to end: one config for
//! every node (`interface = "auto"`, chosen by a listen address or by the
//! default route; `--iface` in place of a missing `interface`), and
//! `/healthz` and `/readyz` on the metrics listener, where readiness waits
//! for the first EndpointSlice list from an API server that is away when
//! dnsteer starts.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use testbed::{
    NetNs, TempDir, Topology, TopologyConfig, WHOAMI_NAME,
    dns::query_once,
    dnsteer::{Dnsteer, Launch, binary},
    kubeapi::{ApiServer, Cond, slice},
};

const METRICS: &str = "127.0.0.1:9855";
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

fn topology(tag_backends: usize) -> Topology {
    Topology::build(TopologyConfig {
        backends: tag_backends,
        ..TopologyConfig::default()
    })
    .expect("building the topology")
}

/// `config` with `interface` as given (None: left out).
fn config(interface: Option<&str>, listen: &[String], backends: &str) -> String {
    let interface = interface.map_or_else(String::new, |i| format!("interface = \"{i}\"\n"));
    let listen: Vec<String> = listen.iter().map(|l| format!("\"{l}\"")).collect();
    format!(
        "{interface}\n[[service]]\nname = \"dns\"\nlisten = [{}]\nprotocol = \"udp\"\nselect = \"nth\"\n{backends}\n",
        listen.join(", ")
    )
}

fn static_backends(topo: &Topology) -> String {
    let b: Vec<String> = topo
        .backend_targets()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    format!("backends = [{}]", b.join(", "))
}

/// A query from the client to the first service address is answered by a backend.
fn assert_steered(topo: &Topology, dnsteer: &Dnsteer) {
    let target = topo.service_targets()[0];
    let answer = query_once(&topo.client, target, WHOAMI_NAME, QUERY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dnsteer.log()))
        .unwrap_or_else(|| panic!("no answer from {target}\n{}", dnsteer.log()));
    assert!(
        topo.backend_index(IpAddr::V4(answer)).is_some(),
        "answered {answer}, not a backend"
    );
}

#[test]
fn interface_auto_and_iface_stand_in_for_a_per_node_interface() {
    let topo = topology(2);
    let bin = binary().unwrap();
    let iface = topo.config.node_iface.clone();
    let listen: Vec<String> = topo
        .service_targets()
        .iter()
        .map(ToString::to_string)
        .collect();

    // auto: the interface holding a listen address.
    let text = config(Some("auto"), &listen, &static_backends(&topo));
    let mut dnsteer = Dnsteer::start(&topo.node, &bin, &iface, &text).expect("dnsteer run");
    let said = format!(
        "interface = \"auto\": steering on {iface}: it holds {}, a listen address of service dns",
        topo.config.service_addrs[0]
    );
    assert!(
        dnsteer.log().contains(&said),
        "no {said:?} in\n{}",
        dnsteer.log()
    );
    assert_steered(&topo, &dnsteer);
    dnsteer.stop().expect("dnsteer stop");

    // auto with only a wildcard listen: the interface of the default route.
    topo.node
        .run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &topo.config.client_addr.to_string(),
            "dev",
            &iface,
        ])
        .expect("a default route on the node");
    let text = config(Some("auto"), &["*:53".to_owned()], &static_backends(&topo));
    let mut dnsteer = Dnsteer::start(&topo.node, &bin, &iface, &text).expect("dnsteer run");
    let said =
        format!("interface = \"auto\": steering on {iface}: it holds the IPv4 default route");
    assert!(
        dnsteer.log().contains(&said),
        "no {said:?} in\n{}",
        dnsteer.log()
    );
    assert_steered(&topo, &dnsteer);
    dnsteer.stop().expect("dnsteer stop");

    // No interface in the file: --iface gives it.
    let text = config(None, &listen, &static_backends(&topo));
    let mut dnsteer = Dnsteer::start_with_args(
        Launch::IpNetnsExec,
        &topo.node,
        &bin,
        &iface,
        &text,
        &["--iface", &iface],
    )
    .expect("dnsteer run --iface");
    assert_steered(&topo, &dnsteer);
    dnsteer.stop().expect("dnsteer stop");
}

/// `GET path` on the metrics listener from inside the node namespace: status and body.
fn get(node: &NetNs, path: &str) -> (u16, String) {
    node.enter(|| {
        let mut stream = TcpStream::connect(METRICS).expect("connecting to the metrics listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {METRICS}\r\n\r\n").unwrap();
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reading the answer");
        let status = response
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    })
}

#[test]
fn readyz_waits_for_the_first_kubernetes_list_and_healthz_does_not() {
    let topo = topology(2);
    let bin = binary().unwrap();
    let iface = topo.config.node_iface.clone();
    let mut api = ApiServer::start_in(Some(&topo.node.path()), "127.0.0.1:0".parse().unwrap())
        .expect("the API server double");
    let dir = TempDir::new("node-settings").unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "dns")
        .expect("kubeconfig");
    let endpoints: Vec<(IpAddr, Cond)> = topo
        .backend_addrs()
        .into_iter()
        .map(|a| (IpAddr::V4(a), Cond::Ready))
        .collect();
    api.apply_slice(&slice(
        "dns",
        "bind-a1",
        "bind",
        ("dns", 53, "UDP"),
        &endpoints,
    ));
    // Away when dnsteer starts: it attaches without a first list (after 5 s).
    api.stop();

    let listen: Vec<String> = topo
        .service_targets()
        .iter()
        .map(ToString::to_string)
        .collect();
    let source = "kubernetes = { namespace = \"dns\", service = \"bind\", port = \"dns\" }";
    let text = config(Some(&iface), &listen, source);
    let dnsteer = Dnsteer::start_with_args(
        Launch::IpNetnsExec,
        &topo.node,
        &bin,
        &iface,
        &text,
        &[
            "--metrics-listen",
            METRICS,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
    )
    .expect("dnsteer run");

    assert_eq!(get(&topo.node, "/healthz"), (200, "ok\n".to_owned()));
    let (status, body) = get(&topo.node, "/readyz");
    assert_eq!(status, 503, "ready without a Kubernetes list: {body}");
    assert!(body.contains("Kubernetes"), "{body}");

    api.restart().expect("the API server back");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&topo.node, "/readyz");
        if status == 200 {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} {body:?} 30 s after the API server came back\n{}",
            dnsteer.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Ready means steering to what the list said.
    assert_steered(&topo, &dnsteer);
    assert_eq!(get(&topo.node, "/healthz").0, 200);
    let backends: Vec<SocketAddr> = topo.backend_targets();
    let list = dnsteer.backends(&["list"]).expect("backends list");
    for b in backends {
        assert!(list.contains(&b.to_string()), "{b} missing from\n{list}");
    }
}
