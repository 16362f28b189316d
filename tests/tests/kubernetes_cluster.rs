//! dnsteer's Kubernetes source against a real cluster: runs when
//! `DNSTEER_TEST_KUBECONFIG` names a kubeconfig (ignored otherwise), e.g.
//!
//!     DNSTEER_TEST_KUBECONFIG=~/.kube/kind-config cargo xtask test -- kubernetes_cluster
//!
//! It makes a namespace of its own (`dnsteer-test-<pid>`), a selector-less
//! Service `bind` there and an EndpointSlice for it by hand (labelled as
//! managed by this test, so no controller touches it), changes the slice and
//! checks the backend sets dnsteer derives, then deletes the namespace. The
//! kubeconfig's user needs to create and delete namespaces, Services and
//! EndpointSlices; no root and no network namespace are needed.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use dnsteer::{
    config::{Family, Protocol},
    kubernetes::{self, EndpointState, PortRef, Spec, Update},
};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use testbed::kubeapi::{Cond, service, slice};
use tokio::sync::mpsc;

const PORT: (&str, u16, &str) = ("dns", 53, "UDP");

async fn next_set(rx: &mut mpsc::UnboundedReceiver<Update>) -> Vec<(SocketAddr, EndpointState)> {
    loop {
        let update = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("no backend set from the cluster within 30 s")
            .expect("the watch task ended");
        match update {
            Update::Backends { backends, .. } => return backends,
            Update::Status { status, .. } if status.last_error.is_some() => {
                eprintln!("watch: {status:?}");
            }
            _ => {}
        }
    }
}

#[test]
#[cfg_attr(
    not(dnsteer_real_cluster),
    ignore = "set DNSTEER_TEST_KUBECONFIG to a cluster's kubeconfig to run it"
)]
fn endpointslices_of_a_real_cluster() {
    let path = PathBuf::from(
        std::env::var_os("DNSTEER_TEST_KUBECONFIG").expect("DNSTEER_TEST_KUBECONFIG"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = kubernetes::client(Some(&path))
            .await
            .expect("a client for the cluster");
        let ns = format!("dnsteer-test-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .expect("creating the test namespace");
        let result = tokio::spawn(scenario(client.clone(), ns.clone())).await;
        // Whatever happened, the namespace goes (and everything in it).
        let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
        if let Err(err) = result {
            std::panic::resume_unwind(err.into_panic());
        }
    });
}

async fn scenario(client: kube::Client, ns: String) {
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let mut svc = service(&ns, "bind", PORT, &[]);
    // Selector-less: the EndpointSlice controller leaves its slices to us.
    svc.spec.as_mut().unwrap().selector = None;
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("creating the Service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let ip = |s: &str| s.parse().unwrap();
    let mut first = slice(
        &ns,
        "bind-test",
        "bind",
        PORT,
        &[
            (ip("192.0.2.21"), Cond::Ready),
            (ip("192.0.2.22"), Cond::Ready),
        ],
    );
    first.metadata.labels.as_mut().unwrap().insert(
        "endpointslice.kubernetes.io/managed-by".to_owned(),
        "dnsteer-test".to_owned(),
    );
    let labels: BTreeMap<String, String> = first.metadata.labels.clone().unwrap();
    slices
        .create(&PostParams::default(), &first)
        .await
        .expect("creating the EndpointSlice");

    let spec = Spec {
        namespace: ns.clone(),
        service: "bind".to_owned(),
        port: PortRef::Name("dns".to_owned()),
        family: Family::Ipv4,
        protocol: Protocol::Udp,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(kubernetes::watch(client, "dns".to_owned(), spec, false, tx));
    let at = |s: &str| -> SocketAddr { s.parse().unwrap() };
    use EndpointState::{Active, Draining};
    assert_eq!(
        next_set(&mut rx).await,
        vec![(at("192.0.2.21:53"), Active), (at("192.0.2.22:53"), Active)]
    );

    // One pod terminating: draining.
    let mut changed = slice(
        &ns,
        "bind-test",
        "bind",
        PORT,
        &[
            (ip("192.0.2.21"), Cond::Terminating),
            (ip("192.0.2.22"), Cond::Ready),
        ],
    );
    changed.metadata.labels = Some(labels);
    let current = slices
        .get("bind-test")
        .await
        .expect("reading the slice back");
    changed.metadata.resource_version = current.metadata.resource_version;
    slices
        .replace("bind-test", &PostParams::default(), &changed)
        .await
        .expect("replacing the EndpointSlice");
    assert_eq!(
        next_set(&mut rx).await,
        vec![
            (at("192.0.2.21:53"), Draining),
            (at("192.0.2.22:53"), Active)
        ]
    );

    // The slice gone: no backends.
    slices
        .delete("bind-test", &DeleteParams::default())
        .await
        .expect("deleting the EndpointSlice");
    assert_eq!(next_set(&mut rx).await, vec![]);
    task.abort();
}
