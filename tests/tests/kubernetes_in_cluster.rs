//! dnsteer reaching the API server as a pod does: `KUBERNETES_SERVICE_HOST`
//! and `_PORT`, and the service account's token and CA at
//! `/var/run/secrets/kubernetes.io/serviceaccount` (bind-mounted there in a
//! mount namespace of dnsteer's own), no kubeconfig. The API server double
//! sits behind HTTPS with a CA of the test's own and requires the token.
//!
//! Checked: the backends come from the EndpointSlice over HTTPS with the
//! token; a rotated token file is read again (kube-rs re-reads it within a
//! minute), the old token refused meanwhile with the backends kept, and the
//! change made meanwhile applied once the new token is in use; restarted
//! (adopting the persistent data path) with a CA that did not sign the
//! server's certificate: a log line that names the certificate problem, and
//! the last backends kept.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    TempDir, Topology, TopologyConfig,
    dnsteer::{Dnsteer, InCluster, binary},
    kubeapi::{ApiServer, Cond, slice},
    kubetls::{Pki, TlsFront},
};

const NS: &str = "dns";
const PORT: (&str, u16, &str) = ("dns", 53, "UDP");
/// kube-rs re-reads the token file when it is within 10 s of a minute old.
const TOKEN_REREAD: Duration = Duration::from_secs(90);

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

fn active(addrs: &[SocketAddr]) -> BTreeMap<String, String> {
    addrs
        .iter()
        .map(|a| (a.to_string(), "active".to_owned()))
        .collect()
}

fn wait_until(what: &str, limit: Duration, dnsteer: &Dnsteer, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            dnsteer.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `file` in `dir` by rename, as the kubelet swaps a projected volume's files.
fn replace(dir: &Path, file: &str, contents: &[u8]) {
    let tmp = dir.join(format!(".{file}.new"));
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, dir.join(file)).unwrap();
}

#[test]
fn in_cluster_https_with_token_rotation_and_a_wrong_ca() {
    let topo = Topology::build(TopologyConfig {
        backends: 2,
        dns: false,
        ..TopologyConfig::default()
    })
    .unwrap();
    let iface = topo.config.node_iface.clone();
    let backends = topo.backend_targets();
    let ep = |i: usize| (IpAddr::V4(topo.backend_addrs()[i]), Cond::Ready);

    let api = ApiServer::start_in(Some(&topo.node.path()), "127.0.0.1:0".parse().unwrap())
        .expect("the API server double");
    api.apply_slice(&slice(NS, "bind-a1", "bind", PORT, &[ep(0)]));
    let dir = TempDir::new("in-cluster").unwrap();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let pki = Pki::new(dir.path(), "cluster", loopback).expect("the cluster's CA");
    let other = Pki::new(dir.path(), "other", loopback).expect("another CA");
    let front = TlsFront::start_in(
        &topo.node.path(),
        "127.0.0.1:0".parse().unwrap(),
        &pki,
        api.addr(),
        "token-1",
    )
    .expect("the HTTPS front");

    let sa = dir.path().join("serviceaccount");
    fs::create_dir(&sa).unwrap();
    fs::write(sa.join("token"), "token-1").unwrap();
    fs::copy(&pki.ca_cert, sa.join("ca.crt")).unwrap();
    fs::write(sa.join("namespace"), "dnsteer").unwrap();

    let config = format!(
        "interface = \"{iface}\"\npersist = true\n[[service]]\nname = \"dns\"\nlisten = [\"{}\"]\nprotocol = \"udp\"\nselect = \"nth\"\nkubernetes = {{ namespace = \"{NS}\", service = \"bind\", port = \"dns\" }}\n",
        topo.service_targets()[0]
    );
    let mut dnsteer = Dnsteer::start_in_cluster(
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config,
        &[],
        InCluster {
            service_account: sa.clone(),
            api: front.addr(),
        },
    )
    .expect("dnsteer run in cluster");

    // Over HTTPS, with the token.
    wait_until("the first list", Duration::from_secs(20), &dnsteer, || {
        members(&dnsteer) == active(&backends[..1])
    });
    let seen = front.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|t| t == "token-1"),
        "every request carries the token: {seen:?}"
    );
    assert_eq!(front.refused(), 0);

    // The kubelet rotates the token; the old one is revoked at once, and the
    // open watches end, so the next requests need a token.
    replace(&sa, "token", b"token-2");
    front.accept_only("token-2");
    api.end_watches();
    api.apply_slice(&slice(NS, "bind-a1", "bind", PORT, &[ep(0), ep(1)]));
    wait_until(
        "a request refused for the old token",
        Duration::from_secs(20),
        &dnsteer,
        || front.refused() > 0,
    );
    assert_eq!(
        members(&dnsteer),
        active(&backends[..1]),
        "refused: the last backends are kept"
    );
    wait_until("the rotated token in use", TOKEN_REREAD, &dnsteer, || {
        front.seen().iter().any(|t| t == "token-2")
    });
    wait_until(
        "the change made meanwhile",
        Duration::from_secs(20),
        &dnsteer,
        || members(&dnsteer) == active(&backends),
    );

    // A CA that did not sign the server's certificate: the adopted data
    // path keeps its backends, and the log says why none come.
    dnsteer.stop().expect("dnsteer stop (persist)");
    fs::copy(&other.ca_cert, sa.join("ca.crt")).unwrap();
    let requests = front.seen().len();
    api.apply_slice(&slice(NS, "bind-a1", "bind", PORT, &[ep(1)]));
    dnsteer.restart().expect("dnsteer run again");
    wait_until(
        "the certificate error logged",
        Duration::from_secs(20),
        &dnsteer,
        || {
            let log = dnsteer.log();
            log.lines()
                .any(|l| l.contains("service dns") && l.contains("certificate"))
        },
    );
    assert_eq!(
        members(&dnsteer),
        active(&backends),
        "the last backends are kept"
    );
    assert_eq!(
        front.seen().len(),
        requests,
        "no request got past the TLS handshake"
    );
    let line = dnsteer
        .log()
        .lines()
        .find(|l| l.contains("certificate"))
        .unwrap()
        .to_owned();
    eprintln!("{line}");
    dnsteer.stop_command().expect("dnsteer stop");
}
