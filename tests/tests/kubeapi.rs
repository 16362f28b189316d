//! kube-rs against the API server double, through dnsteer's Kubernetes
//! source: the first list, watch events, bookmarks (a re-watch resumes from
//! a bookmark's resourceVersion, so a compaction behind it costs no relist),
//! `410 Gone` on an open watch and on a re-watch (relist, and the list
//! replaces the set), watch timeouts, and the server going away (the set
//! stays, errors are counted) and coming back. Needs root for its own
//! network namespace (the double listens on its loopback).

mod cluster;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use dnsteer::{
    config::{Family, Protocol},
    kubernetes::{self, EndpointState, PortRef, Spec, Status, Update},
};
use testbed::{
    NetNs, TempDir,
    kubeapi::{ApiServer, Cond, Request, service, slice},
};
use tokio::{runtime::Runtime, sync::mpsc};

const NS: &str = "dns";
const PORT: (&str, u16, &str) = ("dns", 53, "UDP");

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn at(s: &str) -> SocketAddr {
    SocketAddr::new(ip(s), 53)
}

/// Receives updates until `want` accepts one; all updates seen are kept.
struct Updates {
    rx: mpsc::UnboundedReceiver<Update>,
    seen: Vec<(Instant, Update)>,
    status: Status,
}

impl Updates {
    fn until(
        &mut self,
        rt: &Runtime,
        timeout: Duration,
        what: &str,
        want: impl Fn(&Update, &Status) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = rt
                .block_on(async { tokio::time::timeout(left, self.rx.recv()).await })
                .unwrap_or_else(|_| {
                    panic!(
                        "no update within {timeout:?} for: {what}; seen: {:#?}",
                        self.seen
                    )
                });
            let update = got.expect("the watch task ended");
            if let Update::Status { status, .. } = &update {
                self.status = status.clone();
            }
            let now = Instant::now();
            self.seen.push((now, update.clone()));
            if want(&update, &self.status) {
                return now;
            }
        }
    }

    fn backends(
        &mut self,
        rt: &Runtime,
        what: &str,
        want: &[(SocketAddr, EndpointState)],
    ) -> Instant {
        self.until(
            rt,
            Duration::from_secs(15),
            what,
            |u, _| matches!(u, Update::Backends { backends, .. } if backends == want),
        )
    }

    fn status(&mut self, rt: &Runtime, what: &str, want: impl Fn(&Status) -> bool) {
        if want(&self.status) {
            return;
        }
        self.until(rt, Duration::from_secs(15), what, |u, s| {
            matches!(u, Update::Status { .. }) && want(s)
        });
    }

    /// Every backend set received in `window`: none expected.
    fn quiet(&mut self, rt: &Runtime, window: Duration) -> Vec<Update> {
        let deadline = Instant::now() + window;
        let mut sets = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rt.block_on(async { tokio::time::timeout(left, self.rx.recv()).await }) {
                Ok(Some(update)) => {
                    if let Update::Status { status, .. } = &update {
                        self.status = status.clone();
                    }
                    if matches!(update, Update::Backends { .. }) {
                        sets.push(update.clone());
                    }
                    self.seen.push((Instant::now(), update));
                }
                Ok(None) => panic!("the watch task ended"),
                Err(_) => break,
            }
        }
        sets
    }
}

fn slice_watches(requests: &[Request]) -> Vec<&Request> {
    requests
        .iter()
        .filter(|r| r.watch && r.kind == Some(testbed::kubeapi::Kind::EndpointSlice))
        .collect()
}

fn slice_lists(requests: &[Request]) -> usize {
    requests
        .iter()
        .filter(|r| !r.watch && r.kind == Some(testbed::kubeapi::Kind::EndpointSlice))
        .count()
}

#[test]
fn kube_watcher_lists_watches_resumes_and_relists_against_the_double() {
    let ns = NetNs::new("kapi").expect("namespace");
    let mut api =
        ApiServer::start_in(Some(&ns.path()), "127.0.0.1:0".parse().unwrap()).expect("API double");
    let dir = TempDir::new("kubeapi").expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");

    use Cond::{NotReady, Ready, Terminating};
    api.apply_slice(&slice(
        NS,
        "bind-a",
        "bind",
        PORT,
        &[
            (ip("10.1.0.1"), Ready),
            (ip("10.1.0.2"), Ready),
            (ip("10.1.0.3"), Terminating),
            (ip("10.1.0.4"), NotReady),
        ],
    ));
    api.apply_slice(&slice(
        NS,
        "other-a",
        "other",
        PORT,
        &[(ip("10.9.0.1"), Ready)],
    ));
    api.apply_service(&service(
        NS,
        "bind",
        PORT,
        &[ip("192.0.2.10"), ip("192.0.2.11")],
    ));
    api.set_bookmarks(Some(Duration::from_millis(200)));

    ns.enter(|| run(&mut api, &kubeconfig));
}

fn run(api: &mut ApiServer, kubeconfig: &Path) {
    use Cond::{Ready, Terminating};
    use EndpointState::{Active, Draining};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(kubernetes::client(Some(kubeconfig)))
        .expect("a client from the kubeconfig");
    let spec = Spec {
        namespace: NS.into(),
        service: "bind".into(),
        port: PortRef::Name("dns".into()),
        family: Family::Ipv4,
        protocol: Protocol::Udp,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    rt.spawn(kubernetes::watch(client, "dns".into(), spec, true, tx));
    let mut updates = Updates {
        rx,
        seen: Vec::new(),
        status: Status::default(),
    };

    // 1. The first list: ready -> active, terminating -> draining, not ready left out.
    updates.backends(
        &rt,
        "the first list",
        &[
            (at("10.1.0.1"), Active),
            (at("10.1.0.2"), Active),
            (at("10.1.0.3"), Draining),
        ],
    );
    updates.status(&rt, "connected after the list", |s| {
        s.connected && s.endpoints_seen == 4 && s.last_sync.is_some()
    });
    // The Service's watch runs beside the slices' one: its update may have come first.
    let listen = |u: &Update| matches!(u, Update::Listen { listen, .. } if listen == &[at("192.0.2.10"), at("192.0.2.11")]);
    if !updates.seen.iter().any(|(_, u)| listen(u)) {
        updates.until(
            &rt,
            Duration::from_secs(10),
            "the Service's external IPs",
            |u, _| listen(u),
        );
    }
    // A Service watch event: its external IPs change.
    api.apply_service(&service(NS, "bind", PORT, &[ip("192.0.2.12")]));
    updates.until(
        &rt,
        Duration::from_secs(10),
        "the Service's new external IPs",
        |u, _| matches!(u, Update::Listen { listen, .. } if listen == &[at("192.0.2.12")]),
    );
    assert!(
        api.wait_for(Duration::from_secs(5), |r| !slice_watches(r).is_empty()),
        "no watch after the list"
    );
    let requests = api.requests();
    let list = requests
        .iter()
        .find(|r| r.kind == Some(testbed::kubeapi::Kind::EndpointSlice) && !r.watch)
        .unwrap();
    assert_eq!(
        list.param("labelSelector"),
        Some("kubernetes.io/service-name=bind")
    );
    let watch = slice_watches(&requests)[0];
    assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));
    assert!(
        watch
            .param("resourceVersion")
            .is_some_and(|v| !v.is_empty() && v != "0"),
        "{watch:?}"
    );
    eprintln!("list+watch: {} request(s) so far", requests.len());

    // 2. A watch event: a new ready endpoint, and how long it took to arrive.
    let sent = Instant::now();
    api.apply_slice(&slice(
        NS,
        "bind-a",
        "bind",
        PORT,
        &[
            (ip("10.1.0.1"), Ready),
            (ip("10.1.0.2"), Ready),
            (ip("10.1.0.3"), Terminating),
            (ip("10.1.0.5"), Ready),
        ],
    ));
    let got = updates.backends(
        &rt,
        "a watch event",
        &[
            (at("10.1.0.1"), Active),
            (at("10.1.0.2"), Active),
            (at("10.1.0.3"), Draining),
            (at("10.1.0.5"), Active),
        ],
    );
    eprintln!("watch event to backend set: {:?}", got - sent);

    // 3. Bookmarks: the resourceVersion moves on (another Service's slices),
    //    bookmarks carry it; history before it is compacted; the watch ends.
    //    A client that kept the bookmark resumes without 410 and without a list.
    for i in 0..5 {
        api.apply_slice(&slice(
            NS,
            "other-a",
            "other",
            PORT,
            &[(ip(&format!("10.9.0.{}", i + 2)), Ready)],
        ));
    }
    let rv = api.resource_version();
    std::thread::sleep(Duration::from_millis(700));
    let (lists_before, watches_before, errors_before) = {
        let r = api.requests();
        (
            slice_lists(&r),
            slice_watches(&r).len(),
            updates.status.watch_errors,
        )
    };
    api.compact(false);
    api.end_watches();
    assert!(
        api.wait_for(Duration::from_secs(10), |r| slice_watches(r).len()
            > watches_before),
        "no new watch after the watch ended"
    );
    let requests = api.requests();
    let rewatch = slice_watches(&requests)[watches_before];
    assert_eq!(
        rewatch.param("resourceVersion"),
        Some(rv.to_string().as_str()),
        "re-watch not from the bookmark's resourceVersion"
    );
    assert!(updates.quiet(&rt, Duration::from_millis(500)).is_empty());
    assert_eq!(
        slice_lists(&api.requests()),
        lists_before,
        "a relist although the bookmark was current"
    );
    assert_eq!(
        updates.status.watch_errors, errors_before,
        "errors although the bookmark was current"
    );

    // 4. 410 Gone on the open watch: kube relists; the set stays as it was.
    let lists_before = slice_lists(&api.requests());
    api.compact(true);
    assert!(
        api.wait_for(Duration::from_secs(10), |r| slice_lists(r) > lists_before),
        "no relist after 410 Gone"
    );
    updates.status(&rt, "the 410 counted", |s| s.watch_errors > errors_before);
    updates.status(&rt, "connected after the relist", |s| s.connected);
    assert!(
        updates.quiet(&rt, Duration::from_millis(500)).is_empty(),
        "the relist found the same set"
    );

    // 5. Watch timeouts: short watches end cleanly, kube watches again, no errors, events still arrive.
    let errors_before = updates.status.watch_errors;
    let (lists_before, watches_before) = {
        let r = api.requests();
        (slice_lists(&r), slice_watches(&r).len())
    };
    api.set_watch_cap(Some(Duration::from_millis(300)));
    api.end_watches();
    std::thread::sleep(Duration::from_millis(1500));
    api.apply_slice(&slice(
        NS,
        "bind-b",
        "bind",
        PORT,
        &[(ip("10.1.0.6"), Ready)],
    ));
    updates.backends(
        &rt,
        "an event after watch timeouts",
        &[
            (at("10.1.0.1"), Active),
            (at("10.1.0.2"), Active),
            (at("10.1.0.3"), Draining),
            (at("10.1.0.5"), Active),
            (at("10.1.0.6"), Active),
        ],
    );
    let r = api.requests();
    assert!(
        slice_watches(&r).len() >= watches_before + 3,
        "watches were not renewed: {}",
        slice_watches(&r).len() - watches_before
    );
    assert_eq!(
        slice_lists(&r),
        lists_before,
        "a timeout is not a reason to relist"
    );
    assert_eq!(
        updates.status.watch_errors, errors_before,
        "a timeout is not an error"
    );
    api.set_watch_cap(None);
    api.end_watches();

    // 6. The server goes away: errors counted, disconnected, the set stays.
    api.stop();
    updates.status(&rt, "disconnected", |s| {
        !s.connected && s.watch_errors > errors_before && s.last_error.is_some()
    });
    let down = updates.quiet(&rt, Duration::from_secs(2));
    assert!(
        down.is_empty(),
        "a backend set was sent while the API server was away: {down:?}"
    );
    // While it is away the pods move on and the history is compacted: the
    // client's resourceVersion is too old when it comes back.
    api.delete_slice(NS, "bind-b");
    api.apply_slice(&slice(
        NS,
        "bind-a",
        "bind",
        PORT,
        &[(ip("10.1.0.1"), Ready), (ip("10.1.0.7"), Ready)],
    ));
    api.compact(false);
    let lists_before = slice_lists(&api.requests());
    api.restart().expect("restart the double");
    let back = Instant::now();
    let got = updates.backends(
        &rt,
        "the relist after coming back",
        &[(at("10.1.0.1"), Active), (at("10.1.0.7"), Active)],
    );
    updates.status(&rt, "connected again", |s| {
        s.connected && s.last_error.is_none()
    });
    assert!(
        slice_lists(&api.requests()) > lists_before,
        "came back without a relist"
    );
    eprintln!(
        "server back to new set: {:?}; watch errors counted: {}; requests: {}",
        got - back,
        updates.status.watch_errors,
        api.requests().len()
    );
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// The real-cluster test's scenario (`kubernetes_cluster.rs`), run against
/// the double: it creates a namespace, a Service and an EndpointSlice over
/// HTTP, changes and deletes them, and checks the sets dnsteer derives.
#[test]
fn the_real_cluster_scenario_runs_against_the_double() {
    let ns = NetNs::new("kapi-rw").expect("namespace");
    let api =
        ApiServer::start_in(Some(&ns.path()), "127.0.0.1:0".parse().unwrap()).expect("API double");
    let dir = TempDir::new("kubeapi-rw").expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig, "default")
        .expect("kubeconfig");
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = kubernetes::client(Some(&kubeconfig))
                .await
                .expect("a client");
            cluster::run(client).await;
        });
    });
    // Everything it made was deleted with its namespace.
    let requests = api.requests();
    assert!(
        requests.iter().any(|r| r.watch),
        "the scenario never watched"
    );
}
