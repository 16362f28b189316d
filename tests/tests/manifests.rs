//! The manifests under `deploy/kubernetes/`, parsed into `k8s-openapi` types
//! and checked for what dnsteer needs on a node: host networking, the
//! capabilities `dnsteer run` checks for, the host's BPF filesystem, a
//! persistent data path, readiness from the metrics endpoint, the RBAC to
//! watch EndpointSlices and Services, and a BIND Service kube-proxy leaves
//! alone. No cluster needed.

use std::{collections::BTreeSet, path::PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every object in every `*.yaml` but the kustomization, by file.
fn objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read manifest");
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            out.push((file.clone(), doc));
        }
    }
    out
}

/// The one object of `kind`, as its `k8s-openapi` type (which rejects unknown
/// shapes of known fields).
fn one<T: serde::de::DeserializeOwned + k8s_openapi::Resource>(objects: &[(String, Value)]) -> T {
    let found: Vec<&(String, Value)> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == T::KIND && o["apiVersion"] == T::API_VERSION)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {} {} in deploy/kubernetes, found {}",
        T::API_VERSION,
        T::KIND,
        found.len()
    );
    let (file, value) = found[0];
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", T::KIND))
}

fn dnsteer_container(ds: &DaemonSet) -> Container {
    let spec = ds.spec.as_ref().expect("DaemonSet spec");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    pod.containers
        .iter()
        .find(|c| {
            c.args
                .as_ref()
                .is_some_and(|a| a.first().is_some_and(|a| a == "run"))
        })
        .expect("a container running `dnsteer run`")
        .clone()
}

/// `--flag=value` or `--flag value` in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == &long {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{long}=")).map(str::to_owned)
        }
    })
}

/// What `dnsteer run` checks for, by its own check: all it lacks with no
/// capabilities at all.
fn needed_caps() -> Vec<String> {
    dnsteer::datapath::caps::missing_for_run(&Default::default())
        .into_iter()
        .map(|cap| cap.to_string())
        .collect()
}

#[test]
fn every_manifest_parses_and_kustomization_lists_them_all() {
    let objects = objects();
    let kinds: BTreeSet<String> = objects
        .iter()
        .map(|(_, o)| o["kind"].as_str().unwrap_or("").to_owned())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Service",
    ] {
        assert!(kinds.contains(kind), "deploy/kubernetes has no {kind}");
    }
    let _: Namespace = one(&objects);
    let kustomization: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = objects.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(listed, files, "kustomization.yaml resources vs the files");
}

#[test]
fn daemonset_runs_dnsteer_with_what_it_checks_for() {
    let objects = objects();
    let ds: DaemonSet = one(&objects);
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.host_network,
        Some(true),
        "dnsteer attaches to the node's interface: hostNetwork"
    );
    let c = dnsteer_container(&ds);
    let args = c.args.clone().unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "--persist"),
        "--persist, so a pod restart or upgrade adopts the data path: {args:?}"
    );

    // The capabilities dnsteer run checks for, by the names caps.rs gives them.
    let sc = c.security_context.clone().expect("securityContext");
    if sc.privileged != Some(true) {
        let added: BTreeSet<String> = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let needed = needed_caps();
        assert!(!needed.is_empty());
        for cap in needed {
            let name = cap.strip_prefix("CAP_").unwrap();
            assert!(
                added.contains(name),
                "capabilities.add lacks {name} (dnsteer run checks for {cap}): {added:?}"
            );
        }
        assert!(
            sc.allow_privilege_escalation != Some(true),
            "no privilege escalation needed"
        );
    }

    // The host's BPF filesystem at /sys/fs/bpf, where the pins outlive the pod.
    let volumes = pod.volumes.clone().unwrap_or_default();
    let bpffs = volumes
        .iter()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/sys/fs/bpf")
        })
        .expect("a hostPath volume of /sys/fs/bpf");
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let mount = mounts
        .iter()
        .find(|m| m.name == bpffs.name)
        .expect("the bpffs volume mounted");
    assert_eq!(mount.mount_path, "/sys/fs/bpf");
    assert_ne!(mount.read_only, Some(true), "pins are written there");

    // Readiness from the metrics endpoint dnsteer serves.
    let metrics = flag(&args, "metrics-listen").expect("--metrics-listen");
    let metrics: std::net::SocketAddr = metrics.parse().expect("--metrics-listen ADDR:PORT");
    let probe = c.readiness_probe.clone().expect("readinessProbe");
    let get = probe.http_get.expect("readinessProbe.httpGet");
    assert_eq!(get.path.as_deref(), Some("/metrics"));
    assert_eq!(get.port, IntOrString::Int(i32::from(metrics.port())));
    if metrics.ip().is_loopback() {
        assert_eq!(
            get.host.as_deref(),
            Some(metrics.ip().to_string().as_str()),
            "the probe must reach the loopback listener"
        );
    }

    // The config comes from the ConfigMap, at the path --config names.
    let config = flag(&args, "config").expect("--config");
    let cm: ConfigMap = one(&objects);
    let volume = volumes
        .iter()
        .find(|v| {
            v.config_map
                .as_ref()
                .is_some_and(|c| Some(c.name.as_str()) == cm.metadata.name.as_deref())
        })
        .expect("the ConfigMap as a volume");
    let mount = mounts
        .iter()
        .find(|m| m.name == volume.name)
        .expect("the ConfigMap volume mounted");
    let key = config
        .strip_prefix(&format!("{}/", mount.mount_path))
        .unwrap_or_else(|| panic!("--config {config} is not under {}", mount.mount_path));
    assert!(
        cm.data.as_ref().is_some_and(|d| d.contains_key(key)),
        "the ConfigMap has no key {key}"
    );

    // It runs as the ServiceAccount the binding grants.
    let sa: ServiceAccount = one(&objects);
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
}

#[test]
fn rbac_allows_watching_endpointslices_and_services_and_nothing_more() {
    let objects = objects();
    let role: ClusterRole = one(&objects);
    let rules = role.rules.clone().unwrap_or_default();
    let allows = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.api_groups
                .as_ref()
                .is_some_and(|g| g.iter().any(|g| g == group))
                && r.resources
                    .as_ref()
                    .is_some_and(|rs| rs.iter().any(|x| x == resource))
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    for verb in ["get", "list", "watch"] {
        assert!(
            allows("discovery.k8s.io", "endpointslices", verb),
            "ClusterRole: {verb} endpointslices"
        );
        assert!(allows("", "services", verb), "ClusterRole: {verb} services");
    }
    for rule in &rules {
        for verb in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "dnsteer only reads; the ClusterRole grants {verb}"
            );
        }
    }
    let binding: ClusterRoleBinding = one(&objects);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name.clone()), role.metadata.name);
    let sa: ServiceAccount = one(&objects);
    let subject = binding.subjects.clone().unwrap_or_default();
    assert!(
        subject.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace == sa.metadata.namespace),
        "the binding's subjects {subject:?} lack the ServiceAccount"
    );
}

#[test]
fn bind_service_is_left_to_dnsteer() {
    let objects = objects();
    let svc: Service = one(&objects);
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("service.kubernetes.io/service-proxy-name")
            .map(String::as_str),
        Some("dnsteer"),
        "kube-proxy skips Services with this label"
    );
    // The ConfigMap's dnsteer config is valid and points at this Service and
    // one of its ports, for the protocol it balances.
    let cm: ConfigMap = one(&objects);
    let (key, text) = cm.data.unwrap().into_iter().next().unwrap();
    let config = dnsteer::config::parse(&text, std::path::Path::new(&key))
        .unwrap_or_else(|e| panic!("the ConfigMap's config does not validate: {e}"));
    let service = &config.services[0];
    let source = service
        .kubernetes
        .as_ref()
        .expect("the ConfigMap's service takes its backends from Kubernetes");
    assert_eq!(Some(&source.namespace), svc.metadata.namespace.as_ref());
    assert_eq!(Some(&source.service), svc.metadata.name.as_ref());
    let ports = svc.spec.unwrap().ports.unwrap_or_default();
    let named = |p: &k8s_openapi::api::core::v1::ServicePort| match &source.port {
        dnsteer::config::PortRef::Name(name) => p.name.as_ref() == Some(name),
        dnsteer::config::PortRef::Number(n) => p.port == i32::from(*n),
    };
    assert!(
        ports.iter().any(named),
        "the Service has no port {}",
        source.port
    );
    for proto in service.protocol.ip_protos() {
        let word = if *proto == 17 { "UDP" } else { "TCP" };
        assert!(
            ports
                .iter()
                .any(|p| p.protocol.as_deref().unwrap_or("TCP") == word),
            "the Service has no {word} port, and the config balances {}",
            service.protocol
        );
    }
}
