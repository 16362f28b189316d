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

mod cluster;

use std::path::PathBuf;

use dnsteer::kubernetes;

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
        cluster::run(client).await;
    });
}
