//! The Kubernetes source inside `dnsteer run`: one watch task per service
//! fed by Kubernetes, what they last said, and the config it makes: the file's
//! services with those backends (and listen addresses) filled in, for the
//! reconciler to apply like any other config.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use log::{info, warn};
use tokio::{sync::mpsc, task::JoinHandle};
use xdp_common::MAX_BACKENDS_PER_SERVICE;

use super::{
    BackendSet, Backoff, EndpointState, ServiceAddrs, Spec, Status, Update, client, watch,
};
use crate::config::{BackendSpec, Config, DEFAULT_WEIGHT, KubernetesSource, Listen, Service};

/// What the data path holds for a service now: its members and listen entries.
pub type Current = (Vec<BackendSpec>, Vec<Listen>);

/// What [`Feed::desired`] makes of the services Kubernetes does not feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Others {
    /// As the config says (a start, a reload).
    AsConfigured,
    /// As the data path has them now (a Kubernetes update).
    AsTheyAre,
}

/// The watch tasks and what they last reported.
pub struct Feed {
    kubeconfig: Option<PathBuf>,
    tx: mpsc::UnboundedSender<Update>,
    tasks: BTreeMap<String, (Spec, bool, JoinHandle<()>)>,
    sets: BTreeMap<String, BackendSet>,
    listen: BTreeMap<String, ServiceAddrs>,
    status: BTreeMap<String, Status>,
    /// Services whose set was cut to what a service holds, as last logged.
    cut: BTreeSet<String>,
    /// The Service's addresses on and off the interface, as last logged.
    listen_logged: BTreeMap<String, (Vec<SocketAddr>, Vec<SocketAddr>)>,
}

impl Feed {
    /// A feed that reads the cluster from `kubeconfig` (else as kubectl would
    /// find it, or in-cluster); its updates arrive on the receiver.
    pub fn new(kubeconfig: Option<PathBuf>) -> (Self, mpsc::UnboundedReceiver<Update>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = Self {
            kubeconfig,
            tx,
            tasks: BTreeMap::new(),
            sets: BTreeMap::new(),
            listen: BTreeMap::new(),
            status: BTreeMap::new(),
            cut: BTreeSet::new(),
            listen_logged: BTreeMap::new(),
        };
        (feed, rx)
    }

    /// One watch per service of `config` that has `kubernetes`, for its
    /// current spec: new ones started, changed ones restarted (forgetting what
    /// the old watch said), gone ones stopped. Needs a tokio runtime.
    pub fn sync(&mut self, config: &Config) {
        let mut wanted = BTreeMap::new();
        for service in &config.services {
            if let Some(source) = &service.kubernetes {
                wanted.insert(
                    service.name.clone(),
                    (spec(service, source), service.listen.is_empty()),
                );
            }
        }
        let stale: Vec<String> = self
            .tasks
            .iter()
            .filter(|(name, (spec, listen, _))| wanted.get(*name) != Some(&(spec.clone(), *listen)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((_, _, task)) = self.tasks.remove(&name) {
                task.abort();
            }
            self.sets.remove(&name);
            self.listen.remove(&name);
            self.status.remove(&name);
            self.listen_logged.remove(&name);
        }
        for (name, (spec, want_listen)) in wanted {
            if self.tasks.contains_key(&name) {
                continue;
            }
            info!(
                "service {name}: backends from Kubernetes Service {}/{} port {}",
                spec.namespace, spec.service, spec.port
            );
            let task = tokio::spawn(source(
                name.clone(),
                spec.clone(),
                want_listen,
                self.kubeconfig.clone(),
                self.tx.clone(),
            ));
            self.status.insert(name.clone(), Status::default());
            self.tasks.insert(name, (spec, want_listen, task));
        }
    }

    /// Takes in one update; true when the desired config changed.
    pub fn on(&mut self, update: Update) -> bool {
        match update {
            Update::Backends { service, backends } if self.tasks.contains_key(&service) => {
                self.sets.insert(service, backends);
                true
            }
            Update::Listen {
                service,
                cluster,
                listen,
            } if self.tasks.contains_key(&service) => {
                self.listen.insert(
                    service,
                    ServiceAddrs {
                        cluster,
                        outside: listen,
                    },
                );
                true
            }
            Update::Status { service, status } if self.tasks.contains_key(&service) => {
                self.status.insert(service, status);
                false
            }
            // From a watch stopped since.
            _ => false,
        }
    }

    /// Whether every watch has delivered its first complete set.
    pub fn synced(&self) -> bool {
        self.tasks.keys().all(|name| self.sets.contains_key(name))
    }

    /// The services still waiting for their first set.
    pub fn unsynced(&self) -> Vec<String> {
        self.tasks
            .keys()
            .filter(|name| !self.sets.contains_key(*name))
            .cloned()
            .collect()
    }

    pub fn status(&self, service: &str) -> Option<&Status> {
        self.status.get(service)
    }

    /// `config` with each Kubernetes-fed service's backends (active: weight
    /// 1, draining: weight 0) and, without `listen`, its Service's ClusterIPs
    /// and those of its external and load-balancer addresses that are
    /// addresses of `config.interface`. A service not heard from
    /// yet keeps what the data path has (`current`): an adopted data path
    /// is not emptied because the API server is unreachable.
    ///
    /// With [`Others::AsTheyAre`] the other services are given as the data
    /// path has them: a Kubernetes update applied this way changes only the
    /// services Kubernetes feeds, and leaves a `dnsteer backends` change to
    /// another service alone (until the next reload, as always).
    pub fn desired(
        &mut self,
        config: &Config,
        current: impl Fn(&str) -> Option<Current>,
        others: Others,
    ) -> Config {
        let mut out = config.clone();
        let mut local: Option<Vec<IpAddr>> = None;
        if others == Others::AsTheyAre {
            for service in out.services.iter_mut().filter(|s| s.kubernetes.is_none()) {
                if let Some((backends, listen)) = current(&service.name) {
                    service.backends = backends;
                    service.listen = listen;
                }
            }
        }
        for service in out.services.iter_mut().filter(|s| s.kubernetes.is_some()) {
            let now = current(&service.name);
            match self.sets.get(&service.name).cloned() {
                Some(set) => service.backends = self.specs(&service.name, &set),
                None => service.backends = now.as_ref().map(|(b, _)| b.clone()).unwrap_or_default(),
            }
            if !service.listen.is_empty() {
                continue;
            }
            match self.listen.get(&service.name) {
                Some(addrs) => {
                    let local = local.get_or_insert_with(|| interface_addrs(&config.interface));
                    let (mut mine, elsewhere): (Vec<SocketAddr>, Vec<SocketAddr>) =
                        addrs.outside.iter().partition(|a| local.contains(&a.ip()));
                    // No interface holds a ClusterIP: it is this node's to
                    // serve (its sockets, what is routed to it) wherever it is.
                    mine.splice(0..0, addrs.cluster.iter().copied());
                    mine.dedup();
                    let said = (mine.clone(), elsewhere.clone());
                    if self.listen_logged.get(&service.name) != Some(&said) {
                        let list = |l: &[SocketAddr]| {
                            l.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        let skipped = if elsewhere.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; not on {} (not addresses of {})",
                                list(&elsewhere),
                                config.interface
                            )
                        };
                        info!(
                            "service {}: listening on the Service's addresses {}{skipped}",
                            service.name,
                            if mine.is_empty() {
                                "(none on this interface)".to_owned()
                            } else {
                                list(&mine)
                            },
                        );
                        self.listen_logged.insert(service.name.clone(), said);
                    }
                    service.listen = mine
                        .into_iter()
                        .map(|a| Listen {
                            addr: a.ip(),
                            port: a.port(),
                        })
                        .collect();
                }
                None => service.listen = now.map(|(_, l)| l).unwrap_or_default(),
            }
        }
        out
    }

    /// A set as backends, active ones first when it must be cut to what a
    /// service holds.
    fn specs(&mut self, name: &str, set: &BackendSet) -> Vec<BackendSpec> {
        let mut specs: Vec<BackendSpec> = set
            .iter()
            .map(|&(addr, state)| BackendSpec {
                addr,
                weight: match state {
                    EndpointState::Active => DEFAULT_WEIGHT,
                    EndpointState::Draining => 0,
                },
            })
            .collect();
        let max = MAX_BACKENDS_PER_SERVICE as usize;
        if specs.len() > max {
            specs.sort_by_key(|b| (b.weight == 0, b.addr));
            if self.cut.insert(name.to_owned()) {
                warn!(
                    "service {name}: Kubernetes lists {} endpoints; a service holds {max}, the rest are left out",
                    specs.len()
                );
            }
            specs.truncate(max);
        } else if self.cut.remove(name) {
            info!(
                "service {name}: all of its {} Kubernetes endpoints fit again",
                specs.len()
            );
        }
        specs
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        for (_, _, task) in self.tasks.values() {
            task.abort();
        }
    }
}

/// What `service` asks of its Kubernetes source.
pub fn spec(service: &Service, source: &KubernetesSource) -> Spec {
    Spec {
        namespace: source.namespace.clone(),
        service: source.service.clone(),
        port: source.port.clone(),
        family: service.family(),
        protocol: service.protocol,
    }
}

/// One service's source: a client (retried with backoff until one can be
/// made), then the watch.
async fn source(
    name: String,
    spec: Spec,
    want_listen: bool,
    kubeconfig: Option<PathBuf>,
    tx: mpsc::UnboundedSender<Update>,
) {
    let mut backoff = Backoff::default();
    let mut status = Status::default();
    let client = loop {
        match client(kubeconfig.as_deref()).await {
            Ok(client) => break client,
            Err(err) => {
                if status.watch_errors == 0 {
                    warn!(
                        "service {name}: no Kubernetes client yet: {err:#}; retrying with backoff"
                    );
                }
                status.watch_errors += 1;
                status.last_error = Some(format!("{err:#}"));
                let update = Update::Status {
                    service: name.clone(),
                    status: status.clone(),
                };
                if tx.send(update).is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
            }
        }
    };
    watch(client, name, spec, want_listen, tx).await;
}

/// The addresses of interface `name` (none if it has none or is gone); an
/// IPv4 address with a label (`eth3:1`) counts as the device's.
fn interface_addrs(name: &str) -> Vec<IpAddr> {
    crate::datapath::uplink::addresses()
        .into_iter()
        .filter(|(holder, _)| holder.split(':').next() == Some(name))
        .map(|(_, addr)| addr)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use super::*;
    use crate::config::parse;

    const CONFIG: &str = r#"interface = "lo"
[[service]]
name = "k8s"
listen = ["192.0.2.10:53"]
kubernetes = { namespace = "dns", service = "bind", port = "dns" }
[[service]]
name = "file"
listen = ["192.0.2.11:53"]
backends = ["10.0.0.9:53"]
"#;

    fn at(i: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 0, 1, i), 53))
    }

    fn spec(addr: SocketAddr, weight: u32) -> BackendSpec {
        BackendSpec { addr, weight }
    }

    #[tokio::test]
    async fn desired_fills_in_what_kubernetes_said() {
        let config = parse(CONFIG, Path::new("dnsteer.toml")).unwrap();
        // The watch cannot connect anywhere; updates are fed by hand.
        let (mut feed, _rx) = Feed::new(Some("/nonexistent/kubeconfig".into()));
        feed.sync(&config);
        assert!(!feed.synced());
        assert_eq!(feed.unsynced(), ["k8s"]);

        // Not heard from yet: what the data path has stays (an adopted one).
        let adopted = |name: &str| (name == "k8s").then(|| (vec![spec(at(1), 1)], Vec::new()));
        let wanted = feed.desired(&config, adopted, Others::AsConfigured);
        assert_eq!(wanted.services[0].backends, [spec(at(1), 1)]);
        assert_eq!(wanted.services[1], config.services[1]);
        assert!(
            feed.desired(&config, |_| None, Others::AsConfigured)
                .services[0]
                .backends
                .is_empty()
        );

        // Active: weight 1; draining: weight 0; the file's service untouched.
        let set = vec![
            (at(2), EndpointState::Active),
            (at(3), EndpointState::Draining),
        ];
        assert!(feed.on(Update::Backends {
            service: "k8s".into(),
            backends: set
        }));
        assert!(feed.synced());
        let wanted = feed.desired(&config, adopted, Others::AsConfigured);
        assert_eq!(
            wanted.services[0].backends,
            [spec(at(2), 1), spec(at(3), 0)]
        );
        assert_eq!(wanted.services[0].listen, config.services[0].listen);
        assert_eq!(wanted.services[1], config.services[1]);

        // Applied for a Kubernetes update: the other services as they are now
        // (a `dnsteer backends add` to "file" stays).
        let changed_by_hand = |name: &str| {
            (name == "file").then(|| {
                (
                    vec![spec(at(9), 1), spec(at(8), 2)],
                    config.services[1].listen.clone(),
                )
            })
        };
        let wanted = feed.desired(&config, changed_by_hand, Others::AsTheyAre);
        assert_eq!(
            wanted.services[0].backends,
            [spec(at(2), 1), spec(at(3), 0)]
        );
        assert_eq!(
            wanted.services[1].backends,
            [spec(at(9), 1), spec(at(8), 2)]
        );
        let wanted = feed.desired(&config, changed_by_hand, Others::AsConfigured);
        assert_eq!(wanted.services[1], config.services[1]);

        // More endpoints than a service holds: the active ones first.
        let many: BackendSet = (1..=70)
            .map(|i| {
                let state = if i % 2 == 0 {
                    EndpointState::Active
                } else {
                    EndpointState::Draining
                };
                (at(i), state)
            })
            .collect();
        feed.on(Update::Backends {
            service: "k8s".into(),
            backends: many,
        });
        let backends = feed
            .desired(&config, |_| None, Others::AsConfigured)
            .services[0]
            .backends
            .clone();
        assert_eq!(backends.len(), MAX_BACKENDS_PER_SERVICE as usize);
        assert_eq!(backends.iter().filter(|b| b.weight == 1).count(), 35);

        // Statuses are kept, not applied; an update for a service no longer
        // fed (its watch stopped by a reload) is dropped.
        let status = Status {
            watch_errors: 3,
            ..Status::default()
        };
        assert!(!feed.on(Update::Status {
            service: "k8s".into(),
            status: status.clone()
        }));
        assert_eq!(feed.status("k8s"), Some(&status));
        let without = parse(
            &CONFIG.replace(
                "kubernetes = { namespace = \"dns\", service = \"bind\", port = \"dns\" }",
                "backends = [\"10.0.0.8:53\"]",
            ),
            Path::new("x"),
        )
        .unwrap();
        feed.sync(&without);
        assert!(!feed.on(Update::Backends {
            service: "k8s".into(),
            backends: Vec::new()
        }));
        assert_eq!(feed.status("k8s"), None);
        assert_eq!(
            feed.desired(&without, |_| None, Others::AsConfigured),
            without
        );
    }

    #[test]
    fn loopback_has_127_0_0_1() {
        assert!(interface_addrs("lo").contains(&IpAddr::from([127, 0, 0, 1])));
        assert!(interface_addrs("no-such-if0").is_empty());
    }
}
