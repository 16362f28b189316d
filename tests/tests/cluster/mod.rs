//! The real-cluster test's scenario, shared with `kubeapi.rs`, which runs it
//! against the API server double so that it is known to work before it
//! meets a cluster.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

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

/// Makes a namespace of its own, runs [`scenario`] in it, and deletes it
/// whatever happened.
pub async fn run(client: kube::Client) {
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
}

/// In namespace `ns`: a selector-less
/// Service and a hand-made EndpointSlice that goes from two ready endpoints
/// to one terminating to deleted, and the sets dnsteer's source derives.
pub async fn scenario(client: kube::Client, ns: String) {
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
