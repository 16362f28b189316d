//! `DNSTEER_TEST_KUBECONFIG` set at build time turns the real-cluster test
//! on (`cfg(dnsteer_real_cluster)`); without it the test is ignored.

fn main() {
    println!("cargo::rerun-if-env-changed=DNSTEER_TEST_KUBECONFIG");
    println!("cargo::rustc-check-cfg=cfg(dnsteer_real_cluster)");
    if std::env::var_os("DNSTEER_TEST_KUBECONFIG").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=dnsteer_real_cluster");
    }
}
