//! The running services and backend sets, and how a change reaches the kernel
//! without a packet ever seeing half of it.
//!
//! # How a backend set changes atomically
//!
//! New flows pick a backend from the service's *ring* (`RINGS`), which exists in
//! two generations; `ACTIVE_RING[service]` names the one the data path reads. A
//! change never writes the ring in use. It goes, in this order:
//!
//! 1. Backends that start taking new flows are written `ACTIVE` first, so a ring
//!    never names a backend the data path would refuse.
//! 2. The new ring is written into the unused generation, whole.
//! 3. One aligned 4-byte write flips `ACTIVE_RING[service]`: every CPU's next
//!    packet reads the new generation, none can see a mix of the two.
//! 4. An RCU grace period (`membarrier(MEMBARRIER_CMD_GLOBAL)`, which is
//!    `synchronize_rcu()`): XDP and TC programs run inside RCU read-side
//!    sections, so afterwards no CPU still reads the old generation, and the
//!    next change may overwrite it.
//! 5. Backends that left the ring are marked `DRAINING` or `REMOVED`; flows of a
//!    removed backend fail their record check and move on their next packet.
//! 6. Another grace period, so once the change returns, no packet in flight
//!    still acts on the old state: no new flow goes to a removed backend.
//!
//! A backend whose health probes fail is `DOWN`: out of the ring like a removed
//! one (its flows move), still a member. When every weighted member of a service
//! is down, the service fails open: they all stay in the ring and `ACTIVE`, since
//! a backend the prober cannot reach may still answer clients.
//!
//! A backend slot is reused for another address only after it was `REMOVED`; the
//! new address is written while the slot still says `REMOVED` and only then made
//! `ACTIVE`, so a torn read can never pair an old flow with the new address.
//!
//! A data path left running by `dnsteer run --persist` is adopted by reading
//! the state back from its maps ([`Live::adopt`]); the next change then goes to
//! the generation the data path does not read, as always.
//!
//! The kernel maps are behind the [`Store`] trait so the ordering above is
//! unit tested against a recording fake; `datapath::maps::KernelMaps` is the
//! real one, the only writer of the maps.
//!
//! # Where desired state comes in
//!
//! The reconciler has three entry points, one per kind of source:
//!
//! - [`Live::apply`]: a whole desired state (the config file), diffed against
//!   what the maps hold; only the difference is written.
//! - [`Live::change`]: one service's backend set changed ([`Change`]: the
//!   control socket, or a source such as Kubernetes sending `Change::Set`).
//! - [`Live::set_health`]: a backend in or out of selection (health probes).
//!
//! Sources do not call these themselves: they send events to the daemon
//! (`daemon::sources`), which applies them one at a time. The steps above live
//! in `commit.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use anyhow::{Result, bail};
use xdp_common::{
    Backend, Endpoint, FlowSettings, MAX_BACKENDS_PER_SERVICE, MAX_SERVICES, MAX_WEIGHT, Ring,
    SelectMode, ServiceConf, backend_slot, backend_state, ip_of, ring_key,
};

mod commit;

use commit::{conf, source_endpoints};

use crate::config::{BackendSpec, Config, Family, Protocol, Select, Service};

/// Writes into the kernel's maps, one entry at a time.
pub trait Store {
    fn write_backend(&mut self, slot: u32, backend: &Backend) -> Result<()>;
    fn zero_backend_stats(&mut self, slot: u32) -> Result<()>;
    fn write_ring(&mut self, key: u32, ring: &Ring) -> Result<()>;
    fn flip(&mut self, service: u32, generation: u32) -> Result<()>;
    fn write_conf(&mut self, service: u32, conf: &ServiceConf) -> Result<()>;
    fn insert_listen(&mut self, listen: &Endpoint, service: u32) -> Result<()>;
    fn remove_listen(&mut self, listen: &Endpoint) -> Result<()>;
    /// `refs == 0` deletes the entry.
    fn set_source(&mut self, source: &Endpoint, refs: u32) -> Result<()>;
    fn write_flow_settings(&mut self, settings: &FlowSettings) -> Result<()>;
    /// Returns once no program run that started before the call is still running.
    fn synchronize(&mut self) -> Result<()>;

    // What the maps hold, to adopt a data path that is already running.
    fn read_conf(&mut self, service: u32) -> Result<ServiceConf>;
    fn read_active(&mut self, service: u32) -> Result<u32>;
    fn read_ring(&mut self, key: u32) -> Result<Ring>;
    fn read_backend(&mut self, slot: u32) -> Result<Backend>;
    fn read_listens(&mut self) -> Result<Vec<(Endpoint, u32)>>;
    fn read_flow_settings(&mut self) -> Result<FlowSettings>;
}

/// A member of a service (active, draining or down), as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub address: String,
    pub weight: u32,
    /// `active`, `draining` or `down` (failed its health checks).
    pub state: String,
}

/// A change to one service's backend set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Make the backend an active member with this weight (adding it if needed).
    Add(SocketAddr, u32),
    Remove(SocketAddr),
    /// Weight 0: no new flows, existing flows stay.
    Drain(SocketAddr),
    /// Replace the whole set.
    Set(Vec<BackendSpec>),
}

/// What one slot of a service holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    addr: SocketAddr,
    weight: u32,
    /// `ACTIVE`, `DRAINING` or `REMOVED`.
    state: u8,
    /// When it was removed (a change counter), to reuse the oldest slot first.
    removed_at: u64,
}

#[derive(Clone, Debug)]
struct ServiceState {
    name: String,
    protocol: Protocol,
    select: Select,
    listen: Vec<crate::config::Listen>,
    slots: Vec<Option<Slot>>,
    /// The generation of its ring the data path reads.
    generation: u32,
    /// Members whose health probes failed.
    down: BTreeSet<SocketAddr>,
    /// Every weighted member is down, so all of them are kept in the ring.
    fail_open: bool,
}

impl ServiceState {
    fn members(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .filter(|(_, s)| s.state != backend_state::REMOVED)
    }

    /// The family of the service's listen entries and backends (validation
    /// keeps them one); None before it has any.
    fn family(&self) -> Option<Family> {
        self.listen
            .first()
            .map(|l| Family::of(l.addr))
            .or_else(|| self.members().next().map(|(_, s)| Family::of(s.addr.ip())))
    }

    /// The members as a wanted list: what a change or a reload starts from.
    fn specs(&self) -> Vec<BackendSpec> {
        self.members()
            .map(|(_, s)| BackendSpec {
                addr: s.addr,
                weight: s.weight,
            })
            .collect()
    }

    fn view(&self) -> Vec<Member> {
        self.members()
            .map(|(_, s)| Member {
                address: s.addr.to_string(),
                weight: s.weight,
                state: match s.state {
                    backend_state::ACTIVE => "active",
                    backend_state::DOWN => "down",
                    _ => "draining",
                }
                .to_owned(),
            })
            .collect()
    }
}

/// The running state and the store it lives in.
pub struct Live<S: Store> {
    store: S,
    /// Indexed by service id.
    services: Vec<Option<ServiceState>>,
    /// What `SERVICES` holds: listen (address, port, protocol) -> service id.
    listens: BTreeMap<Endpoint, u32>,
    /// Backend (address, port, protocol) -> slots using it.
    sources: BTreeMap<Endpoint, u32>,
    flow_settings: Option<FlowSettings>,
    /// Counts changes; orders slot removals.
    changes: u64,
    /// Service ids the maps hold (`[limits] services`).
    max_services: u32,
}

impl<S: Store> Live<S> {
    /// An empty state over freshly loaded (zeroed) maps.
    pub fn new(store: S) -> Self {
        Self {
            store,
            services: Vec::new(),
            listens: BTreeMap::new(),
            sources: BTreeMap::new(),
            flow_settings: None,
            changes: 0,
            max_services: MAX_SERVICES,
        }
    }

    /// Service ids up to `max_services` (the size the maps were loaded with).
    pub fn with_max_services(mut self, max_services: u32) -> Self {
        self.max_services = max_services;
        self
    }

    /// The state a running data path's maps hold, written by an earlier
    /// `dnsteer run`: services, listen entries, backend slots (removed ones
    /// too, so their slots are reused last), the generation each service's
    /// ring is read from, and the flow timeouts. Writes nothing.
    pub fn adopt(store: S, max_services: u32) -> Result<Self> {
        let mut live = Self::new(store).with_max_services(max_services);
        let mut listen_of: BTreeMap<u32, Vec<crate::config::Listen>> = BTreeMap::new();
        for (endpoint, id) in live.store.read_listens()? {
            // The wildcards come back as their family's unspecified address.
            let listen = crate::config::Listen {
                addr: ip_of(endpoint.addr),
                port: u16::from_be_bytes(endpoint.port),
            };
            let list = listen_of.entry(id).or_default();
            if !list.contains(&listen) {
                list.push(listen);
            }
            live.listens.insert(endpoint, id);
        }
        for id in 0..live.max_services {
            let conf = live.store.read_conf(id)?;
            if conf.in_use == 0 {
                continue;
            }
            let Some(protocol) = Protocol::from_mask(conf.protocols) else {
                bail!("service {id} in the maps has no protocol; `dnsteer stop` and start afresh");
            };
            let generation = live.store.read_active(id)? & 1;
            let ring = live.store.read_ring(ring_key(id, generation))?;
            let select = match ring.select {
                s if s == SelectMode::Random as u32 => Select::Random,
                s if s == SelectMode::LeastOutstanding as u32 => Select::LeastOutstanding,
                _ => Select::Nth,
            };
            let mut slots = vec![None; MAX_BACKENDS_PER_SERVICE as usize];
            let mut down = BTreeSet::new();
            for (i, slot) in slots.iter_mut().enumerate() {
                let b = live.store.read_backend(backend_slot(id, i as u32))?;
                if b.state == backend_state::EMPTY {
                    continue;
                }
                let addr = SocketAddr::new(ip_of(b.addr), u16::from_be_bytes(b.port));
                if b.state == backend_state::DOWN {
                    down.insert(addr);
                }
                if b.state != backend_state::REMOVED {
                    for e in source_endpoints(addr, protocol) {
                        *live.sources.entry(e).or_insert(0) += 1;
                    }
                }
                *slot = Some(Slot {
                    addr,
                    weight: b.weight,
                    state: b.state,
                    removed_at: 0,
                });
            }
            let mut listen = listen_of.remove(&id).unwrap_or_default();
            listen.sort_by_key(|l| (l.addr, l.port));
            let id = id as usize;
            if live.services.len() <= id {
                live.services.resize(id + 1, None);
            }
            live.services[id] = Some(ServiceState {
                name: String::from_utf8_lossy(conf.name_bytes()).into_owned(),
                protocol,
                select,
                listen,
                slots,
                generation,
                down,
                fail_open: false,
            });
        }
        live.flow_settings = Some(live.store.read_flow_settings()?);
        Ok(live)
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Makes the running state match `config` (services, listens, backends,
    /// timeouts), writing only what differs. Returns one line per change.
    ///
    /// Each service's backend set flips atomically; listen entries move between
    /// services with one map update each, so an address is never unserved.
    pub fn apply(&mut self, config: &Config) -> Result<Vec<String>> {
        let mut log = Vec::new();
        let wanted: BTreeSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        // Ids of services that go away are freed only at the end, so a new
        // service never takes an id whose listen entries still point at it.
        let mut ids = Vec::new();
        for service in &config.services {
            let id = match self.id_of(&service.name) {
                Some(id) => {
                    self.update_service(id, service, &mut log)?;
                    id
                }
                None => {
                    let id = self.add_service(service)?;
                    log.push(format!(
                        "service {}: added ({} backend(s))",
                        service.name,
                        service.backends.len()
                    ));
                    id
                }
            };
            ids.push((id, service));
        }
        self.sync_listens(&ids, &mut log)?;
        let gone: Vec<u32> = self
            .services
            .iter()
            .enumerate()
            .filter_map(|(id, s)| {
                s.as_ref()
                    .filter(|s| !wanted.contains(s.name.as_str()))
                    .map(|_| id as u32)
            })
            .collect();
        if !gone.is_empty() {
            // The listen entries are gone; wait until no packet can still match them.
            self.store.synchronize()?;
        }
        for id in gone {
            let name = self.remove_service(id)?;
            log.push(format!("service {name}: removed"));
        }
        let settings = flow_settings(config);
        if self.flow_settings != Some(settings) {
            self.store.write_flow_settings(&settings)?;
            if self.flow_settings.is_some() {
                log.push("flow timeouts changed".to_owned());
            }
            self.flow_settings = Some(settings);
        }
        Ok(log)
    }

    /// Applies one change to service `name` and returns its backends afterwards.
    pub fn change(&mut self, name: &str, change: &Change) -> Result<(Vec<Member>, String)> {
        let id = self.resolve(name)?;
        let state = self.services[id as usize].as_ref().expect("resolved");
        let name = state.name.clone();
        let name = name.as_str();
        let family = state.family();
        let mut wanted = state.specs();
        let position = |wanted: &[BackendSpec], addr| wanted.iter().position(|b| b.addr == addr);
        let one_family = |addr: &SocketAddr| match family {
            Some(family) if Family::of(addr.ip()) != family => bail!(
                "{addr} is {}, service {name:?} is {family}; a service is one family (XDP rewrites the destination in place and cannot translate between IPv4 and IPv6)",
                Family::of(addr.ip())
            ),
            _ => Ok(()),
        };
        let summary = match change {
            Change::Add(addr, weight) => {
                check_weight(*weight)?;
                one_family(addr)?;
                match position(&wanted, *addr) {
                    Some(i) => wanted[i].weight = *weight,
                    None => wanted.push(BackendSpec {
                        addr: *addr,
                        weight: *weight,
                    }),
                }
                format!("{addr} active with weight {weight}")
            }
            Change::Remove(addr) => {
                let Some(i) = position(&wanted, *addr) else {
                    bail!("{addr} is not a backend of service {name:?}");
                };
                wanted.remove(i);
                format!("{addr} removed")
            }
            Change::Drain(addr) => {
                let Some(i) = position(&wanted, *addr) else {
                    bail!("{addr} is not a backend of service {name:?}");
                };
                wanted[i].weight = 0;
                format!("{addr} draining")
            }
            Change::Set(list) => {
                let mut seen = BTreeSet::new();
                for b in list {
                    check_weight(b.weight)?;
                    one_family(&b.addr)?;
                    if !seen.insert(b.addr) {
                        bail!("{} is listed twice", b.addr);
                    }
                }
                wanted = list.clone();
                format!("set to {} backend(s)", wanted.len())
            }
        };
        // Without an active backend every new flow would pass unsteered.
        if !wanted.iter().any(|b| b.weight > 0) {
            bail!(
                "service {name:?} would have no active backend left; add or reweight another one first"
            );
        }
        if wanted.len() > MAX_BACKENDS_PER_SERVICE as usize {
            bail!(
                "service {name:?} would have {} backends; at most {MAX_BACKENDS_PER_SERVICE} are supported",
                wanted.len()
            );
        }
        let select = state.select;
        self.commit(id, &wanted, select)?;
        Ok((self.list(name)?, format!("service {name}: {summary}")))
    }

    /// Takes backend `addr` of service `name` out of selection (`up == false`;
    /// its flows move on their next packet) or puts it back. Returns one line
    /// for the log, or None when nothing changed (not a member, or already so).
    pub fn set_health(&mut self, name: &str, addr: SocketAddr, up: bool) -> Result<Option<String>> {
        let id = self.resolve(name)?;
        let state = self.services[id as usize].as_mut().expect("resolved");
        let is_member = state.members().any(|(_, s)| s.addr == addr);
        let changed = if up {
            state.down.remove(&addr)
        } else {
            is_member && state.down.insert(addr)
        };
        if !changed {
            return Ok(None);
        }
        let (wanted, select) = (state.specs(), state.select);
        self.commit(id, &wanted, select)?;
        let name = &self.services[id as usize].as_ref().expect("live").name;
        let what = if up {
            "back in selection"
        } else {
            "out of selection"
        };
        Ok(Some(format!("service {name}: {addr} {what}")))
    }

    /// Whether every weighted backend of service `name` is down, so that all of
    /// them take new flows anyway.
    pub fn fail_open(&self, name: &str) -> bool {
        self.id_of(name)
            .and_then(|id| self.services[id as usize].as_ref())
            .is_some_and(|s| s.fail_open)
    }

    /// What service `name` holds now, as a config would say it: its members
    /// with their weights, and its listen entries. None if there is no such service.
    pub fn current(&self, name: &str) -> Option<(Vec<BackendSpec>, Vec<crate::config::Listen>)> {
        self.id_of(name)
            .and_then(|id| self.services[id as usize].as_ref())
            .map(|s| (s.specs(), s.listen.clone()))
    }

    /// Every backend that keeps its flows: a member of some service (active
    /// or draining) and not down. One that leaves this set has the node's
    /// connected sockets to it closed.
    pub fn serving(&self) -> BTreeSet<SocketAddr> {
        self.services
            .iter()
            .flatten()
            .flat_map(|s| {
                s.members()
                    .map(|(_, slot)| slot.addr)
                    .filter(move |addr| !s.down.contains(addr))
            })
            .collect()
    }

    /// The members (active, draining, down) of service `name`.
    pub fn members(&self, name: &str) -> Vec<SocketAddr> {
        self.id_of(name)
            .and_then(|id| self.services[id as usize].as_ref())
            .map(|s| s.members().map(|(_, slot)| slot.addr).collect())
            .unwrap_or_default()
    }

    /// The backends of service `name` (active, draining and down).
    pub fn list(&self, name: &str) -> Result<Vec<Member>> {
        let id = self.resolve(name)?;
        Ok(self.services[id as usize]
            .as_ref()
            .expect("resolved")
            .view())
    }

    fn resolve(&self, name: &str) -> Result<u32> {
        match self.id_of(name) {
            Some(id) => Ok(id),
            None if name.is_empty() => bail!(
                "this instance runs several services; name one with --service: {}",
                self.names().join(", ")
            ),
            None => bail!("no service {name:?}; services: {}", self.names().join(", ")),
        }
    }

    /// The name `name` stands for (an empty name means the only service).
    pub fn resolve_name(&self, name: &str) -> Result<String> {
        let id = self.resolve(name)?;
        Ok(self.services[id as usize]
            .as_ref()
            .expect("resolved")
            .name
            .clone())
    }

    pub fn names(&self) -> Vec<String> {
        self.services
            .iter()
            .flatten()
            .map(|s| s.name.clone())
            .collect()
    }

    /// The id of service `name`; an empty name means the only service, if there is one.
    fn id_of(&self, name: &str) -> Option<u32> {
        if name.is_empty() {
            let mut live = self
                .services
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_some());
            return match (live.next(), live.next()) {
                (Some((id, _)), None) => Some(id as u32),
                _ => None,
            };
        }
        self.services
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.name == name))
            .map(|i| i as u32)
    }

    fn add_service(&mut self, service: &Service) -> Result<u32> {
        let id = match self.services.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.services.len() < self.max_services as usize => {
                self.services.push(None);
                self.services.len() - 1
            }
            None => bail!(
                "at most {} services fit in the maps ([limits] services)",
                self.max_services
            ),
        } as u32;
        self.services[id as usize] = Some(ServiceState {
            name: service.name.clone(),
            protocol: service.protocol,
            select: service.select,
            listen: Vec::new(),
            slots: vec![None; MAX_BACKENDS_PER_SERVICE as usize],
            generation: 0,
            down: BTreeSet::new(),
            fail_open: false,
        });
        self.store
            .write_conf(id, &conf(&service.name, service.protocol))?;
        self.commit(id, &service.backends, service.select)?;
        Ok(id)
    }

    fn update_service(&mut self, id: u32, service: &Service, log: &mut Vec<String>) -> Result<()> {
        let state = self.services[id as usize].as_ref().expect("a live id");
        let before = state.specs();
        let (old_protocol, old_select) = (state.protocol, state.select);
        if old_protocol != service.protocol {
            // Sources are keyed by protocol: retire the old ones, add the new.
            for addr in before.iter().map(|b| b.addr) {
                self.unref_source(addr, old_protocol)?;
                self.ref_source(addr, service.protocol)?;
            }
            let state = self.services[id as usize].as_mut().expect("a live id");
            state.protocol = service.protocol;
            self.store
                .write_conf(id, &conf(&service.name, service.protocol))?;
            log.push(format!(
                "service {}: protocol {old_protocol} -> {}",
                service.name, service.protocol
            ));
        }
        let same_set = {
            let mut a = before.clone();
            let mut b = service.backends.clone();
            a.sort_by_key(|x| x.addr);
            b.sort_by_key(|x| x.addr);
            a == b
        };
        if !same_set || old_select != service.select {
            self.commit(id, &service.backends, service.select)?;
            if old_select != service.select {
                log.push(format!(
                    "service {}: select {old_select} -> {}",
                    service.name, service.select
                ));
            }
            if !same_set {
                log.push(format!(
                    "service {}: backends {} -> {}",
                    service.name,
                    specs(&before),
                    specs(&service.backends)
                ));
            }
        }
        Ok(())
    }
}

fn check_weight(weight: u32) -> Result<()> {
    if weight > MAX_WEIGHT {
        bail!("weight {weight} is too large; use 0 (drain) to {MAX_WEIGHT}");
    }
    Ok(())
}

fn flow_settings(config: &Config) -> FlowSettings {
    FlowSettings {
        udp_idle_ns: config.flows.udp_idle_timeout.as_nanos() as u64,
        tcp_idle_ns: config.flows.tcp_idle_timeout.as_nanos() as u64,
        tcp_closing_ns: config.flows.tcp_closing_timeout.as_nanos() as u64,
    }
}

fn specs(list: &[BackendSpec]) -> String {
    let v: Vec<String> = list.iter().map(ToString::to_string).collect();
    format!("[{}]", v.join(", "))
}

fn listens(list: &[crate::config::Listen]) -> String {
    let v: Vec<String> = list.iter().map(ToString::to_string).collect();
    format!("[{}]", v.join(", "))
}

#[cfg(test)]
mod tests;
