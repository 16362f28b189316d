//! The running daemon's state: the data path (and the reconciler inside it),
//! the config it was last given, and the health monitor. Every event the
//! sources send ends up in one of the methods here, one at a time.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Instant,
};

use anyhow::Result;
use log::{error, info, warn};

use super::{
    RunOptions,
    view::{ServiceView, View},
};
use crate::{
    config::{self, Config, PassiveCheck, Protocol},
    control::{BackendView, KubernetesStats, Op, Request, Response},
    datapath::{Datapath, pins},
    health::{
        Monitor, ProbeResult,
        passive::{Counts, Tracker, Transition},
        probe::Transport,
    },
    kubernetes::{Feed, Others, Update},
    live::Change,
    observe::stats::{self, Snapshot},
};

/// What `dnsteer run` holds while it runs.
pub struct Daemon {
    /// First, so it drops (detaches and unpins) first.
    pub datapath: Datapath,
    /// The config the maps hold now (runtime changes aside).
    config: Config,
    monitor: Monitor,
    /// Services whose every weighted backend is down, as last logged.
    failing_open: BTreeSet<String>,
    /// The Kubernetes source: what it says the backends of the services it
    /// feeds are, filled into the config before it is applied.
    feed: Feed,
    /// Passive health, per member of a service with `[service.passive]`.
    passive: BTreeMap<(String, SocketAddr), Tracker>,
}

impl Daemon {
    /// Starts probing and brings the fast path in line with a data path that
    /// already holds `config`.
    pub fn new(datapath: Datapath, config: &Config, monitor: Monitor, feed: Feed) -> Result<Self> {
        let mut daemon = Daemon {
            datapath,
            config: config.clone(),
            monitor,
            failing_open: BTreeSet::new(),
            feed,
            passive: BTreeMap::new(),
        };
        daemon.datapath.sync_fast_path()?;
        daemon.sync_health();
        Ok(daemon)
    }

    /// Applies a new config, or changes nothing and logs why.
    pub fn reload(&mut self, opts: &RunOptions, why: &str) {
        let new = match opts.load() {
            Ok(new) => new,
            Err(err) => {
                error!("reload ({why}) refused, nothing changed: {err}");
                return;
            }
        };
        let fixed = [
            (
                "interface",
                self.config.interface.clone(),
                new.interface.clone(),
            ),
            (
                "xdp_mode",
                self.config.xdp_mode.to_string(),
                new.xdp_mode.to_string(),
            ),
            (
                "flows.size",
                self.config.flows.size.to_string(),
                new.flows.size.to_string(),
            ),
            (
                "forward",
                self.config.forward.to_string(),
                new.forward.to_string(),
            ),
            (
                "sockets.cgroup",
                format!("{:?}", self.config.sockets),
                format!("{:?}", new.sockets),
            ),
            (
                "persist",
                (opts.persist || self.config.persist).to_string(),
                (opts.persist || new.persist).to_string(),
            ),
            (
                "limits.services",
                self.config.limits.services.to_string(),
                new.limits.services.to_string(),
            ),
            (
                "limits.listeners",
                self.config.limits.listeners.to_string(),
                new.limits.listeners.to_string(),
            ),
        ];
        for (field, old, new) in fixed {
            if old != new {
                error!(
                    "reload ({why}) refused, nothing changed: {field} changed from {old} to {new}, which needs a restart of dnsteer"
                );
                return;
            }
        }
        self.feed.sync(&new);
        let live = self.datapath.live();
        let wanted = self
            .feed
            .desired(&new, |name| live.current(name), Others::AsConfigured);
        match self.datapath.live_mut().apply(&wanted) {
            Ok(lines) if lines.is_empty() => info!("reload ({why}): no changes"),
            Ok(lines) => {
                for line in lines {
                    info!("reload ({why}): {line}");
                }
            }
            Err(err) => error!("reload ({why}) failed part way: {err:#}"),
        }
        if new.flows.query_timeout != self.config.flows.query_timeout {
            info!(
                "reload ({why}): flows.query_timeout {} -> {}",
                config::human(self.config.flows.query_timeout),
                config::human(new.flows.query_timeout)
            );
            self.datapath.set_query_timeout(new.flows.query_timeout);
        }
        self.config = new;
        if let Err(err) = self.datapath.sync_fast_path() {
            error!("reload ({why}): fast path: {err:#}");
        }
        self.sync_health();
    }

    /// Probes exactly the members of services with `[service.health]`; a
    /// backend that stops being probed while down goes back into selection.
    fn sync_health(&mut self) {
        let mut wanted = BTreeMap::new();
        for service in &self.config.services {
            let Some(check) = &service.health else {
                continue;
            };
            let transport = match service.protocol {
                Protocol::Tcp => Transport::Tcp,
                Protocol::Udp | Protocol::UdpTcp => Transport::Udp,
            };
            for backend in self.datapath.live().members(&service.name) {
                wanted.insert((service.name.clone(), backend), (check.clone(), transport));
            }
        }
        for (service, backend) in self.monitor.reconcile(&wanted) {
            // A service that is gone took its backends with it.
            if self.datapath.live().names().contains(&service) {
                self.set_health(&service, backend, true, Some("no longer health checked"));
            }
        }
        self.note_fail_open();
    }

    /// Applies one probe's outcome; a transition changes selection and is logged.
    pub fn on_probe(&mut self, result: ProbeResult) {
        let Some(t) = self.monitor.record(result) else {
            return;
        };
        let state = if t.up { "up" } else { "DOWN" };
        let line = format!(
            "service {}: backend {} is {state} {}",
            t.service, t.backend, t.detail
        );
        if t.up {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        // The line above is the transition's one log line. A backend its
        // answers ejected stays out until its ejection ends.
        let ejected = self
            .passive
            .get(&(t.service.clone(), t.backend))
            .is_some_and(Tracker::ejected);
        if t.up && ejected {
            info!(
                "service {}: backend {} stays out until its passive ejection ends",
                t.service, t.backend
            );
            return;
        }
        self.set_health(&t.service, t.backend, t.up, None);
        self.note_fail_open();
    }

    /// Passive health: judges each backend's recent answers (once a second).
    pub fn on_tick(&mut self) {
        let checks: BTreeMap<String, PassiveCheck> = self
            .config
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.passive.clone()?)))
            .collect();
        if checks.is_empty() {
            self.passive.clear();
            return;
        }
        let snapshot = match self.snapshot() {
            Ok(snapshot) => snapshot,
            Err(err) => {
                warn!("passive health: reading the counters: {err:#}");
                return;
            }
        };
        let now = Instant::now();
        let mut seen = BTreeSet::new();
        let mut transitions = Vec::new();
        for service in &snapshot.services {
            let Some(check) = checks.get(&service.name) else {
                continue;
            };
            for b in &service.backends {
                // Members only: a draining backend takes no new queries anyway.
                if !matches!(b.state.as_str(), "active" | "down") {
                    continue;
                }
                let Ok(addr) = b.address.parse::<SocketAddr>() else {
                    continue;
                };
                let key = (service.name.clone(), addr);
                let counts = Counts {
                    answers: b.dns.answers,
                    servfail: b.dns.rcodes.get("servfail").copied().unwrap_or(0),
                    timeouts: b.dns.timeouts,
                };
                let tracker = self.passive.entry(key.clone()).or_default();
                if let Some(t) = tracker.observe(now, counts, check) {
                    transitions.push((key.clone(), t, check.eject_for));
                }
                seen.insert(key);
            }
        }
        self.passive.retain(|key, _| seen.contains(key));
        for ((service, backend), transition, eject_for) in transitions {
            match transition {
                Transition::Eject(why) => {
                    warn!(
                        "service {service}: backend {backend} is DOWN (passive health: {why}); out for {}",
                        config::human(eject_for)
                    );
                    self.set_health(&service, backend, false, None);
                }
                Transition::Readmit(out_for) => {
                    let probes_down = self
                        .monitor
                        .stats(&service, backend)
                        .is_some_and(|h| h.state == "down");
                    if probes_down {
                        info!(
                            "service {service}: backend {backend}: passive ejection over; still down by its health probes"
                        );
                    } else {
                        info!(
                            "service {service}: backend {backend} is up (passive health: out for {:.1}s)",
                            out_for.as_secs_f64()
                        );
                        self.set_health(&service, backend, true, None);
                    }
                }
            }
        }
        self.note_fail_open();
    }

    /// Puts `backend` in or out of selection; logs the change with `why`, if given.
    fn set_health(&mut self, service: &str, backend: SocketAddr, up: bool, why: Option<&str>) {
        match self.datapath.live_mut().set_health(service, backend, up) {
            Ok(Some(line)) => {
                if let Some(why) = why {
                    info!("{line} ({why})");
                }
            }
            Ok(None) => {}
            Err(err) => error!(
                "service {service}: marking {backend} {} failed: {err:#}",
                if up { "up" } else { "down" }
            ),
        }
    }

    /// Logs each service that starts or stops failing open.
    fn note_fail_open(&mut self) {
        let now: BTreeSet<String> = self
            .datapath
            .live()
            .names()
            .into_iter()
            .filter(|name| self.datapath.live().fail_open(name))
            .collect();
        for name in now.difference(&self.failing_open) {
            error!(
                "service {name}: FAILING OPEN: every backend failed its health checks; steering new flows to all of them anyway"
            );
        }
        for name in self.failing_open.difference(&now) {
            if self.datapath.live().names().contains(name) {
                warn!(
                    "service {name}: no longer failing open: a backend passes its health checks again"
                );
            }
        }
        self.failing_open = now;
    }

    /// The backends of service `name` with their health, and whether it fails open.
    fn views(&self, name: &str) -> Result<(Vec<BackendView>, bool)> {
        let name = self.datapath.live().resolve_name(name)?;
        let backends = self
            .datapath
            .live()
            .list(&name)?
            .into_iter()
            .map(|member| {
                let health = member
                    .address
                    .parse()
                    .ok()
                    .and_then(|addr| self.monitor.stats(&name, addr));
                BackendView::new(member, health)
            })
            .collect();
        Ok((backends, self.datapath.live().fail_open(&name)))
    }

    /// What readers see now: every service's backends, health and watch.
    pub fn view(&self) -> View {
        let services = self
            .datapath
            .live()
            .names()
            .into_iter()
            .map(|name| {
                let (backends, fail_open) = self.views(&name).unwrap_or_default();
                ServiceView {
                    kubernetes: self.kubernetes_stats(&name),
                    name,
                    backends,
                    fail_open,
                }
            })
            .collect();
        View {
            interface: self.config.interface.clone(),
            services,
        }
    }

    /// The counters, as `dnsteer stats --json` would print them.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let found = pins::Instance::find(Some(&self.config.interface))?;
        let mut snapshot = stats::read(&found, false)?;
        for service in &mut snapshot.services {
            if let Ok((views, fail_open)) = self.views(&service.name) {
                stats::add_health(service, fail_open, &views);
            }
            service.kubernetes = self.kubernetes_stats(&service.name);
        }
        Ok(snapshot)
    }

    /// Takes in what a Kubernetes watch said. A new backend (or listen) set
    /// is applied like a config in which only the services Kubernetes feeds
    /// differ: each one's set flips atomically, and a backend that is gone
    /// is removed as `dnsteer backends remove` removes one.
    pub fn on_kubernetes(&mut self, update: Update) {
        if !self.feed.on(update) {
            return;
        }
        let live = self.datapath.live();
        let wanted = self
            .feed
            .desired(&self.config, |name| live.current(name), Others::AsTheyAre);
        match self.datapath.live_mut().apply(&wanted) {
            Ok(lines) => {
                for line in lines {
                    info!("{line} (kubernetes)");
                }
            }
            Err(err) => error!("kubernetes: applying the new backends failed part way: {err:#}"),
        }
        if let Err(err) = self.datapath.sync_fast_path() {
            error!("kubernetes: fast path: {err:#}");
        }
        self.sync_health();
    }

    /// The interface's addresses changed (netlink): a service without
    /// `listen` listens on those of its Service's addresses the interface now
    /// holds; recomputed and applied as a Kubernetes event would be.
    pub fn on_addresses(&mut self) {
        let live = self.datapath.live();
        let wanted = self
            .feed
            .desired(&self.config, |name| live.current(name), Others::AsTheyAre);
        match self.datapath.live_mut().apply(&wanted) {
            Ok(lines) => {
                for line in lines {
                    info!("{line} (addresses of {} changed)", self.config.interface);
                }
            }
            Err(err) => error!(
                "addresses of {} changed: applying the new listen addresses failed part way: {err:#}",
                self.config.interface
            ),
        }
        if let Err(err) = self.datapath.sync_fast_path() {
            error!("addresses changed: fast path: {err:#}");
        }
        self.sync_health();
    }

    /// Whether every service fed by Kubernetes has had its first set.
    pub fn kubernetes_synced(&self) -> bool {
        self.feed.synced()
    }

    /// The Kubernetes watch of service `name`, for stats and the control socket.
    fn kubernetes_stats(&self, name: &str) -> Option<KubernetesStats> {
        let service = self.config.services.iter().find(|s| s.name == name)?;
        let source = service.kubernetes.as_ref()?;
        let status = self.feed.status(name).cloned().unwrap_or_default();
        Some(KubernetesStats {
            source: source.to_string(),
            connected: status.connected,
            last_sync_unix_ms: status.last_sync.and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64)
            }),
            watch_errors: status.watch_errors,
            endpoints_seen: status.endpoints_seen,
            last_error: status.last_error,
        })
    }

    /// Applies one change to a service's backend set from `source`, logs it,
    /// and brings the fast path and the probes along. Returns the log line.
    pub fn change(&mut self, service: &str, change: &Change, source: &str) -> Result<String> {
        let (_, message) = self.datapath.live_mut().change(service, change)?;
        info!("{message} ({source})");
        if let Err(err) = self.datapath.sync_fast_path() {
            error!("fast path: {err:#}");
        }
        self.sync_health();
        Ok(message)
    }

    /// Answers one control request.
    pub fn handle(&mut self, request: &Request) -> Response {
        if request.op == Op::Stop {
            // The run loop exits after this answer; nothing is left behind.
            self.datapath.set_persistent(false);
            return Response {
                ok: true,
                error: None,
                message: Some(format!(
                    "dnsteer on {}: detaching and removing its pins",
                    self.config.interface
                )),
                service: String::new(),
                fail_open: false,
                backends: Vec::new(),
                kubernetes: None,
            };
        }
        let service = request.service.as_str();
        let change = match request.op.change() {
            Ok(change) => change,
            Err(err) => return Response::error(service, err),
        };
        // A service Kubernetes feeds takes its backends from there only.
        if change.is_some() {
            let name = self
                .datapath
                .live()
                .resolve_name(service)
                .unwrap_or_else(|_| service.to_owned());
            if let Some(source) = self
                .config
                .services
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.kubernetes.as_ref())
            {
                return Response::error(
                    service,
                    format!(
                        "service {name:?} takes its backends from Kubernetes (the EndpointSlices of Service {source}); change them there (scale, roll out, or the pods' readiness), or put backends instead of kubernetes in the config"
                    ),
                );
            }
        }
        let message = match &change {
            None => None,
            Some(change) => match self.change(service, change, "dnsteer backends") {
                Ok(message) => Some(message),
                Err(err) => return Response::error(service, format!("{err:#}")),
            },
        };
        match self.views(service) {
            Ok((backends, fail_open)) => Response {
                ok: true,
                error: None,
                message,
                service: self
                    .datapath
                    .live()
                    .resolve_name(service)
                    .unwrap_or_default(),
                fail_open,
                backends,
                kubernetes: self
                    .datapath
                    .live()
                    .resolve_name(service)
                    .ok()
                    .and_then(|name| self.kubernetes_stats(&name)),
            },
            Err(err) => Response::error(service, format!("{err:#}")),
        }
    }
}

/// Logs what an instance does, one line per service.
pub fn describe(config: &Config, daemon: &Daemon) {
    info!(
        "steering on {} (XDP in {} mode, replies translated on egress), maps pinned under {}",
        config.interface,
        daemon.datapath.xdp_mode.as_str(),
        daemon.datapath.pin_dir().display()
    );
    for service in &config.services {
        let listen: Vec<String> = service.listen.iter().map(ToString::to_string).collect();
        if let Some(source) = &service.kubernetes {
            let listen = if listen.is_empty() {
                format!(
                    "the Service's external and load-balancer addresses on {}",
                    config.interface
                )
            } else {
                listen.join(", ")
            };
            info!(
                "service {}: {} {listen} -> select {} over the endpoints of Kubernetes Service {source}",
                service.name,
                service.protocol.as_str(),
                service.select.as_str(),
            );
        } else {
            let backends: Vec<String> = service.backends.iter().map(ToString::to_string).collect();
            info!(
                "service {}: {} {} -> select {} over {} backend(s): {}",
                service.name,
                service.protocol.as_str(),
                listen.join(", "),
                service.select.as_str(),
                backends.len(),
                backends.join(", ")
            );
        }
        if let Some(h) = &service.health {
            info!(
                "service {}: health query {} every {} (timeout {}), down after {} failures, up after {} successes, expecting {}",
                service.name,
                h.query,
                config::human(h.interval),
                config::human(h.timeout),
                h.fall,
                h.rise,
                h.expect_rcode
                    .map_or_else(|| "any rcode".to_owned(), |r| format!("rcode {r}"))
            );
        }
    }
}
