//! The manifests under `deploy/kubernetes/`, parsed into `k8s-openapi` types
//! and checked for what `kubectl apply -k` on an empty cluster and dnsteer on
//! a node need: every namespace created, the image named once in the
//! kustomization, host networking on Linux nodes, the capabilities `dnsteer
//! run` checks for and no more, AppArmor and seccomp, the host's BPF
//! filesystem, a persistent data path, /healthz and /readyz probes on a port
//! no common DNS component uses, the node's name from the downward API, a
//! memory limit above the maps' figure for a 64-CPU node, a namespaced Role
//! with only the verbs the watches use, and a BIND Deployment (ready by a DNS
//! query, with the receive buffer README recommends) behind a Service
//! kube-proxy leaves alone. No cluster needed.

use std::{collections::BTreeSet, path::PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
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

/// Every object of `kind`, as its `k8s-openapi` type (which rejects unknown
/// shapes of known fields).
fn all<T: serde::de::DeserializeOwned + k8s_openapi::Resource>(
    objects: &[(String, Value)],
) -> Vec<T> {
    objects
        .iter()
        .filter(|(_, o)| o["kind"] == T::KIND && o["apiVersion"] == T::API_VERSION)
        .map(|(file, value)| {
            serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", T::KIND))
        })
        .collect()
}

/// The one object of `kind` named `name`.
fn named<
    T: serde::de::DeserializeOwned
        + k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    objects: &[(String, Value)],
    name: &str,
) -> T {
    let mut found: Vec<T> = all::<T>(objects)
        .into_iter()
        .filter(|o| o.metadata().name.as_deref() == Some(name))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {} {name} in deploy/kubernetes",
        T::KIND
    );
    found.remove(0)
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

/// The kustomization, as YAML.
fn kustomization() -> Value {
    serde_saphyr::from_str(
        &std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap(),
    )
    .expect("kustomization.yaml: not YAML")
}

/// dnsteer's config, from its ConfigMap.
fn dnsteer_config(objects: &[(String, Value)]) -> dnsteer::config::Config {
    let cm: ConfigMap = named(objects, "dnsteer");
    let (key, text) = cm.data.unwrap().into_iter().next().unwrap();
    dnsteer::config::parse(&text, std::path::Path::new(&key))
        .unwrap_or_else(|e| panic!("the ConfigMap's config does not validate: {e}"))
}

/// The namespace of dnsteer's Kubernetes-fed service.
fn watched_namespace(objects: &[(String, Value)]) -> String {
    let config = dnsteer_config(objects);
    let source = config.services[0]
        .kubernetes
        .clone()
        .expect("the ConfigMap's service takes its backends from Kubernetes");
    source.namespace
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
        "Role",
        "RoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.contains(kind), "deploy/kubernetes has no {kind}");
    }
    let listed: BTreeSet<String> = kustomization()["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = objects.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(listed, files, "kustomization.yaml resources vs the files");
}

#[test]
fn every_namespace_used_is_created() {
    let objects = objects();
    let created: BTreeSet<String> = all::<Namespace>(&objects)
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for (file, object) in &objects {
        if let Some(ns) = object["metadata"]["namespace"].as_str() {
            assert!(
                created.contains(ns),
                "{file}: namespace {ns} is not created by deploy/kubernetes ({created:?}): apply -k on an empty cluster fails"
            );
        }
    }
    for subject in all::<RoleBinding>(&objects)
        .into_iter()
        .flat_map(|b| b.subjects.unwrap_or_default())
    {
        let ns = subject
            .namespace
            .expect("a RoleBinding subject's namespace");
        assert!(
            created.contains(&ns),
            "RoleBinding subject in namespace {ns}"
        );
    }
    assert!(
        created.contains(&watched_namespace(&objects)),
        "the namespace dnsteer watches is created"
    );
}

#[test]
fn the_image_is_named_once_in_the_kustomization() {
    let objects = objects();
    let ds: DaemonSet = one(&objects);
    let c = dnsteer_container(&ds);
    let image = c.image.expect("the container's image");
    let images = kustomization()["images"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let entry = images
        .iter()
        .find(|i| i["name"].as_str() == Some(image.as_str()))
        .unwrap_or_else(|| panic!("kustomization.yaml images: has no entry for {image:?}"));
    let new_name = entry["newName"].as_str().expect("images[].newName");
    let new_tag = entry["newTag"].as_str().expect("images[].newTag");
    assert!(new_name.contains('/'), "a registry path: {new_name}");
    assert!(
        !new_tag.is_empty() && new_tag != "latest",
        "a pinned tag: {new_tag}"
    );
    assert!(
        !image.contains(':') && !image.contains('/'),
        "the DaemonSet names the image only by the kustomization's name, not {image:?}"
    );
    // Every other image has a pinned tag.
    let deployment: Deployment = one(&objects);
    for c in deployment.spec.unwrap().template.spec.unwrap().containers {
        let image = c.image.unwrap_or_default();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest",
            "{}: image {image:?} unpinned",
            c.name
        );
    }
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
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux"),
        "it tolerates every taint: nodeSelector kubernetes.io/os: linux keeps it off other systems"
    );
    let c = dnsteer_container(&ds);
    let args = c.args.clone().unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "--persist"),
        "--persist, so a pod restart or upgrade adopts the data path: {args:?}"
    );

    // The capabilities dnsteer run checks for, by the names caps.rs gives them, and no others.
    let sc = c.security_context.clone().expect("securityContext");
    assert_ne!(sc.privileged, Some(true), "capabilities, not privileged");
    let caps = sc
        .capabilities
        .clone()
        .expect("securityContext.capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]), "drop ALL");
    let added: BTreeSet<String> = caps.add.clone().unwrap_or_default().into_iter().collect();
    let needed: BTreeSet<String> = needed_caps()
        .into_iter()
        .map(|cap| cap.strip_prefix("CAP_").unwrap().to_owned())
        .collect();
    assert!(!needed.is_empty());
    assert_eq!(
        added, needed,
        "capabilities.add vs what dnsteer run checks for"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "no privilege escalation needed"
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true), "read-only root");
    assert_eq!(
        sc.app_armor_profile.as_ref().map(|p| p.type_.as_str()),
        Some("Unconfined"),
        "the default AppArmor profile denies writes under /sys/fs/bpf"
    );
    let seccomp = sc
        .seccomp_profile
        .clone()
        .or_else(|| pod.security_context.as_ref()?.seccomp_profile.clone())
        .expect("a seccomp profile");
    assert_eq!(seccomp.type_, "RuntimeDefault");

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
    // The control socket under /run, writable on a read-only root.
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/run" && m.read_only != Some(true)),
        "a writable /run for the control socket"
    );

    // The node's name from the downward API.
    let env = c.env.clone().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("env NODE_NAME");
    assert_eq!(
        node.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );

    // The config comes from the ConfigMap, at the path --config names.
    let config = flag(&args, "config").expect("--config");
    let cm: ConfigMap = named(&objects, "dnsteer");
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
    // One config for every node: the interface is chosen on each.
    assert_eq!(dnsteer_config(&objects).interface, "auto");

    // It runs as the ServiceAccount the binding grants.
    let sa: ServiceAccount = one(&objects);
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
}

/// What the dnsteer process itself takes besides the maps (its heap, the
/// runtime, the kube client), with room.
const PROCESS_BYTES: u64 = 64 << 20;

/// A memory quantity as Kubernetes writes it (`512Mi`, `1Gi`, `300M`).
fn bytes(quantity: &str) -> u64 {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (n, unit) = quantity.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("quantity {quantity}"));
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => panic!("unit of {quantity}"),
    }
}

#[test]
fn memory_limit_holds_the_maps_of_a_64_cpu_node() {
    let objects = objects();
    let ds: DaemonSet = one(&objects);
    let c = dnsteer_container(&ds);
    let limit = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| bytes(&q.0))
        .expect("a memory limit");
    let config = dnsteer_config(&objects);
    let maps: u64 = dnsteer::datapath::memory::estimate(&config.limits, config.flows.size, 64)
        .unwrap()
        .iter()
        .map(|m| m.bytes)
        .sum();
    assert!(
        maps + PROCESS_BYTES <= limit,
        "a 64-CPU node's maps take {} MiB, plus {} MiB for the process, over the limit {} MiB",
        maps >> 20,
        PROCESS_BYTES >> 20,
        limit >> 20
    );
}

/// Ports of the DNS components a node commonly runs, which dnsteer's
/// listener on the host network must not take: CoreDNS (metrics, health,
/// ready), NodeLocal DNSCache (metrics), kube-dns's sidecars, bind_exporter,
/// BIND's statistics channel, DNS itself.
const DNS_COMPONENT_PORTS: [u16; 9] = [53, 8053, 8080, 8181, 9119, 9153, 9253, 10054, 10055];

#[test]
fn probes_ask_healthz_and_readyz_on_a_port_of_dnsteers_own() {
    let objects = objects();
    let ds: DaemonSet = one(&objects);
    let c = dnsteer_container(&ds);
    let args = c.args.clone().unwrap_or_default();
    let metrics = flag(&args, "metrics-listen").expect("--metrics-listen");
    let metrics: std::net::SocketAddr = metrics.parse().expect("--metrics-listen ADDR:PORT");
    assert!(
        !DNS_COMPONENT_PORTS.contains(&metrics.port()),
        "--metrics-listen port {} is a common DNS component's ({DNS_COMPONENT_PORTS:?})",
        metrics.port()
    );
    for (what, probe, path) in [
        ("startupProbe", c.startup_probe.clone(), "/healthz"),
        ("livenessProbe", c.liveness_probe.clone(), "/healthz"),
        ("readinessProbe", c.readiness_probe.clone(), "/readyz"),
    ] {
        let probe = probe.unwrap_or_else(|| panic!("no {what}"));
        let get = probe.http_get.unwrap_or_else(|| panic!("{what}.httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        assert_eq!(
            get.port,
            IntOrString::Int(i32::from(metrics.port())),
            "{what}"
        );
        if metrics.ip().is_loopback() {
            assert_eq!(
                get.host.as_deref(),
                Some(metrics.ip().to_string().as_str()),
                "{what} must reach the loopback listener"
            );
        }
    }
}

#[test]
fn rbac_is_a_role_in_the_watched_namespace_with_list_and_watch_only() {
    let objects = objects();
    assert!(
        objects.iter().all(|(_, o)| o["kind"] != "ClusterRole"),
        "the watches are namespaced: a Role, not a ClusterRole"
    );
    let role: Role = one(&objects);
    let namespace = watched_namespace(&objects);
    assert_eq!(role.metadata.namespace.as_deref(), Some(namespace.as_str()));
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
    // kube-rs's watcher lists, then watches; nothing gets or writes.
    for verb in ["list", "watch"] {
        assert!(
            allows("discovery.k8s.io", "endpointslices", verb),
            "Role: {verb} endpointslices"
        );
        assert!(allows("", "services", verb), "Role: {verb} services");
    }
    for rule in &rules {
        for verb in &rule.verbs {
            assert!(
                ["list", "watch"].contains(&verb.as_str()),
                "the watches only list and watch; the Role grants {verb}"
            );
        }
    }
    let binding: RoleBinding = one(&objects);
    assert_eq!(binding.metadata.namespace, role.metadata.namespace);
    assert_eq!(binding.role_ref.kind, "Role");
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
    let config = dnsteer_config(&objects);
    let service = &config.services[0];
    let source = service
        .kubernetes
        .as_ref()
        .expect("the ConfigMap's service takes its backends from Kubernetes");
    assert_eq!(Some(&source.namespace), svc.metadata.namespace.as_ref());
    assert_eq!(Some(&source.service), svc.metadata.name.as_ref());
    let ports = svc.spec.clone().unwrap().ports.unwrap_or_default();
    let named_port = |p: &k8s_openapi::api::core::v1::ServicePort| match &source.port {
        dnsteer::config::PortRef::Name(name) => p.name.as_ref() == Some(name),
        dnsteer::config::PortRef::Number(n) => p.port == i32::from(*n),
    };
    assert!(
        ports.iter().any(named_port),
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

#[test]
fn bind_deployment_backs_the_service_and_is_ready_by_a_dns_query() {
    let objects = objects();
    let svc: Service = one(&objects);
    let deployment: Deployment = one(&objects);
    assert_eq!(deployment.metadata.namespace, svc.metadata.namespace);
    let spec = deployment.spec.unwrap();
    let labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let selector = svc
        .spec
        .clone()
        .unwrap()
        .selector
        .expect("the Service's selector");
    for (k, v) in &selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the BIND pods lack the Service's selector {k}={v}"
        );
    }
    let pod = spec.template.spec.unwrap();
    let bind = &pod.containers[0];
    // The pods' ports are the ones the Service sends to.
    let container_ports: BTreeSet<(i32, String)> = bind
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.container_port,
                p.protocol.unwrap_or_else(|| "TCP".to_owned()),
            )
        })
        .collect();
    for port in svc.spec.unwrap().ports.unwrap_or_default() {
        let target = match port.target_port {
            Some(IntOrString::Int(n)) => n,
            None => port.port,
            Some(IntOrString::String(name)) => panic!("use a port number, not {name}"),
        };
        let proto = port.protocol.unwrap_or_else(|| "TCP".to_owned());
        assert!(
            container_ports.contains(&(target, proto.clone())),
            "the BIND container does not expose {target}/{proto}"
        );
    }
    // Ready when it answers the query dnsteer's health probes ask.
    let config = dnsteer_config(&objects);
    let health = config.services[0].health.clone().expect("[service.health]");
    let qname = health.query.name.to_string();
    let probe = bind.readiness_probe.clone().expect("BIND readinessProbe");
    let command = probe
        .exec
        .and_then(|e| e.command)
        .unwrap_or_default()
        .join(" ");
    assert!(
        command.contains("dig"),
        "readiness by a DNS query: {command}"
    );
    assert!(
        command.contains(&qname),
        "the readiness query asks {qname}: {command}"
    );
    // Its config, mounted where named reads it, with the receive buffer README recommends.
    let args = bind.args.clone().unwrap_or_default();
    let conf_path = flag(&args, "c")
        .or_else(|| {
            args.iter()
                .position(|a| a == "-c")
                .and_then(|i| args.get(i + 1).cloned())
        })
        .expect("named -c FILE");
    let cm: ConfigMap = named(&objects, "bind");
    let mounts = bind.volume_mounts.clone().unwrap_or_default();
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.config_map.as_ref().is_some_and(|c| c.name == "bind"))
        .expect("BIND's ConfigMap as a volume");
    let mount = mounts
        .iter()
        .find(|m| m.name == volume.name)
        .expect("mounted");
    let key = conf_path
        .strip_prefix(&format!("{}/", mount.mount_path))
        .expect("named's config under the ConfigMap's mount");
    let data = cm.data.unwrap_or_default();
    let named_conf = data
        .get(key)
        .unwrap_or_else(|| panic!("bind ConfigMap has no {key}"));
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let recommended = readme
        .split("`udp-receive-buffer ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .expect("README recommends a udp-receive-buffer");
    assert!(
        named_conf.contains(&format!("udp-receive-buffer {recommended};")),
        "named.conf sets udp-receive-buffer {recommended} as README recommends"
    );
    // The zone holding the health query's name is there, with that name.
    let (label, zone) = qname
        .trim_end_matches('.')
        .split_once('.')
        .expect("a name in a zone");
    assert!(
        named_conf.contains(&format!("zone \"{zone}\"")),
        "named.conf serves {zone}"
    );
    assert!(
        data.values()
            .any(|v| v.lines().any(|l| l.starts_with(label) && l.contains(" A "))),
        "a zone file with {label} A"
    );
}
