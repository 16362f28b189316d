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
//! unit tested against a recording fake.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use xdp_common::{
    Backend, Endpoint, FlowSettings, MAX_BACKENDS_PER_SERVICE, MAX_SERVICES, MAX_WEIGHT, RING_SIZE,
    Ring, SERVICE_NAME_LEN, SelectMode, ServiceConf, addr_of, backend_slot, backend_state, ip_of,
    ring_key, select::smooth_ring,
};

use crate::{
    config::{BackendSpec, Config, Family, Protocol, Select, Service},
    health::HealthStats,
};

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

/// A backend as `dnsteer backends list` and the control socket report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub address: String,
    pub weight: u32,
    /// `active`, `draining` or `down` (failed its health checks).
    pub state: String,
    /// What the health probes say; null without `[service.health]`.
    #[serde(default)]
    pub health: Option<HealthStats>,
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

    fn view(&self) -> Vec<BackendView> {
        self.members()
            .map(|(_, s)| BackendView {
                address: s.addr.to_string(),
                weight: s.weight,
                state: match s.state {
                    backend_state::ACTIVE => "active",
                    backend_state::DOWN => "down",
                    _ => "draining",
                }
                .to_owned(),
                health: None,
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
            let select = if ring.select == SelectMode::Random as u32 {
                Select::Random
            } else {
                Select::Nth
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
    pub fn change(&mut self, name: &str, change: &Change) -> Result<(Vec<BackendView>, String)> {
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

    /// The members (active, draining, down) of service `name`.
    pub fn members(&self, name: &str) -> Vec<SocketAddr> {
        self.id_of(name)
            .and_then(|id| self.services[id as usize].as_ref())
            .map(|s| s.members().map(|(_, slot)| slot.addr).collect())
            .unwrap_or_default()
    }

    /// The backends of service `name` (active, draining and down).
    pub fn list(&self, name: &str) -> Result<Vec<BackendView>> {
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

    /// Makes service `id`'s set `wanted`, following the steps in the module comment.
    fn commit(&mut self, id: u32, wanted: &[BackendSpec], select: Select) -> Result<()> {
        self.changes += 1;
        let now = self.changes;
        let state = self.services[id as usize].as_ref().expect("a live id");
        let protocol = state.protocol;
        let mut slots = state.slots.clone();
        // Health: a backend that leaves the set forgets it was down.
        let down: BTreeSet<SocketAddr> = wanted
            .iter()
            .map(|b| b.addr)
            .filter(|a| state.down.contains(a))
            .collect();
        let fail_open = !down.is_empty()
            && wanted
                .iter()
                .filter(|b| b.weight > 0)
                .all(|b| down.contains(&b.addr));

        // Where each wanted backend lives: its current slot, else a never-used
        // one, else the one removed longest ago.
        let mut placed = Vec::with_capacity(wanted.len());
        let mut fresh = Vec::new();
        for spec in wanted {
            let current = slots.iter().position(|s| {
                s.is_some_and(|s| s.addr == spec.addr && s.state != backend_state::REMOVED)
            });
            match current {
                Some(i) => placed.push((i, *spec)),
                None => fresh.push(*spec),
            }
        }
        let taken: BTreeSet<usize> = placed.iter().map(|(i, _)| *i).collect();
        let leaving: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                !taken.contains(i) && s.is_some_and(|s| s.state != backend_state::REMOVED)
            })
            .map(|(i, _)| i)
            .collect();
        let mut reusable: Vec<usize> = (0..slots.len())
            .filter(|&i| {
                !taken.contains(&i)
                    && !leaving.contains(&i)
                    && slots[i].is_none_or(|s| s.state == backend_state::REMOVED)
            })
            .collect();
        // Same address first (its counters continue), then never used, then oldest removal.
        reusable.sort_by_key(|&i| match slots[i] {
            None => (1, 0),
            Some(s) => (2, s.removed_at),
        });
        for spec in fresh {
            let same = reusable
                .iter()
                .position(|&i| slots[i].is_some_and(|s| s.addr == spec.addr));
            let Some(k) = same.or(if reusable.is_empty() { None } else { Some(0) }) else {
                bail!(
                    "service {}: no free backend slot (at most {MAX_BACKENDS_PER_SERVICE} per service, removed ones included)",
                    state.name
                );
            };
            let i = reusable.remove(k);
            if let Some(old) = slots[i]
                && old.addr != spec.addr
            {
                // Step "reuse": the new address goes in while the slot still says REMOVED.
                let slot = backend_slot(id, i as u32);
                self.store
                    .write_backend(slot, &backend(spec.addr, backend_state::REMOVED, 0))?;
                self.store.zero_backend_stats(slot)?;
                slots[i] = None;
            }
            placed.push((i, spec));
        }

        // 1. Backends entering the ring become ACTIVE; weight-only changes of
        //    active ones and new draining or down ones are written too (harmless
        //    before the flip).
        let mut drained = Vec::new();
        for &(i, spec) in &placed {
            let new_state = if down.contains(&spec.addr) && !fail_open {
                backend_state::DOWN
            } else if spec.weight > 0 {
                backend_state::ACTIVE
            } else {
                backend_state::DRAINING
            };
            let old = slots[i];
            let was_member = old.is_some_and(|s| s.state != backend_state::REMOVED);
            let leaves_ring = old.is_some_and(|s| s.state == backend_state::ACTIVE)
                && new_state != backend_state::ACTIVE;
            if !was_member {
                self.ref_source(spec.addr, protocol)?;
            }
            slots[i] = Some(Slot {
                addr: spec.addr,
                weight: spec.weight,
                state: new_state,
                removed_at: 0,
            });
            if leaves_ring {
                drained.push(i); // written after the flip
                continue;
            }
            if old.is_none_or(|s| {
                s.state != new_state || s.weight != spec.weight || s.addr != spec.addr
            }) {
                self.store.write_backend(
                    backend_slot(id, i as u32),
                    &backend(spec.addr, new_state, spec.weight),
                )?;
            }
        }

        // 2-4. The new ring into the unused generation, flip, grace period.
        let mut weights = vec![0u32; MAX_BACKENDS_PER_SERVICE as usize];
        for &(i, spec) in &placed {
            if slots[i].is_some_and(|s| s.state == backend_state::ACTIVE) {
                weights[i] = spec.weight;
            }
        }
        let mut ring = Ring {
            select: match select {
                Select::Nth => SelectMode::Nth,
                Select::Random => SelectMode::Random,
            } as u32,
            ..Ring::default()
        };
        let Some(len) = smooth_ring(&weights, &mut ring.slots) else {
            bail!("the weights do not fit in a ring of {RING_SIZE} entries");
        };
        ring.len = len as u32;
        let state = self.services[id as usize].as_mut().expect("a live id");
        let next = state.generation ^ 1;
        self.store.write_ring(ring_key(id, next), &ring)?;
        self.store.flip(id, next)?;
        state.generation = next;
        state.select = select;
        state.down = down;
        state.fail_open = fail_open;
        self.store.synchronize()?;

        // 5-6. Backends that left the ring: draining ones keep their flows,
        //      down and removed ones lose them; then a grace period before returning.
        for &i in &drained {
            let slot = slots[i].expect("placed above");
            self.store.write_backend(
                backend_slot(id, i as u32),
                &backend(slot.addr, slot.state, slot.weight),
            )?;
        }
        for &i in &leaving {
            let old = slots[i].expect("a member");
            self.store.write_backend(
                backend_slot(id, i as u32),
                &backend(old.addr, backend_state::REMOVED, old.weight),
            )?;
            self.unref_source(old.addr, protocol)?;
            slots[i] = Some(Slot {
                state: backend_state::REMOVED,
                removed_at: now,
                ..old
            });
        }
        if !drained.is_empty() || !leaving.is_empty() {
            self.store.synchronize()?;
        }
        self.services[id as usize].as_mut().expect("live").slots = slots;
        Ok(())
    }

    /// Points every wanted listen entry at its service (one update each, so an
    /// entry moving between services is never absent) and deletes the rest.
    fn sync_listens(&mut self, ids: &[(u32, &Service)], log: &mut Vec<String>) -> Result<()> {
        let mut wanted: BTreeMap<Endpoint, u32> = BTreeMap::new();
        for (id, service) in ids {
            for e in endpoints(&service.listen, service.protocol) {
                wanted.insert(e, *id);
            }
        }
        for (e, id) in &wanted {
            if self.listens.get(e) != Some(id) {
                self.store.insert_listen(e, *id)?;
                self.listens.insert(*e, *id);
            }
        }
        let stale: Vec<Endpoint> = self
            .listens
            .keys()
            .filter(|e| !wanted.contains_key(e))
            .copied()
            .collect();
        for e in stale {
            self.store.remove_listen(&e)?;
            self.listens.remove(&e);
        }
        let sorted = |list: &[crate::config::Listen]| {
            let mut list = list.to_vec();
            list.sort_by_key(|l| (l.addr, l.port));
            list
        };
        for (id, service) in ids {
            let state = self.services[*id as usize].as_mut().expect("live");
            if sorted(&state.listen) != sorted(&service.listen) {
                if !state.listen.is_empty() {
                    log.push(format!(
                        "service {}: listen {} -> {}",
                        service.name,
                        listens(&state.listen),
                        listens(&service.listen)
                    ));
                }
                state.listen = service.listen.clone();
            }
        }
        Ok(())
    }

    /// Tears service `id` down after its listen entries are gone; returns its name.
    fn remove_service(&mut self, id: u32) -> Result<String> {
        let state = self.services[id as usize].take().expect("a live id");
        let next = state.generation ^ 1;
        self.store
            .write_ring(ring_key(id, next), &Ring::default())?;
        self.store.flip(id, next)?;
        self.store.synchronize()?;
        for (i, slot) in state.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.state != backend_state::REMOVED {
                self.unref_source(slot.addr, state.protocol)?;
            }
            let index = backend_slot(id, i as u32);
            self.store.write_backend(index, &Backend::default())?;
            self.store.zero_backend_stats(index)?;
        }
        self.store.write_conf(id, &ServiceConf::default())?;
        Ok(state.name)
    }

    fn ref_source(&mut self, addr: SocketAddr, protocol: Protocol) -> Result<()> {
        for e in source_endpoints(addr, protocol) {
            let refs = self.sources.entry(e).or_insert(0);
            *refs += 1;
            let refs = *refs;
            self.store.set_source(&e, refs)?;
        }
        Ok(())
    }

    fn unref_source(&mut self, addr: SocketAddr, protocol: Protocol) -> Result<()> {
        for e in source_endpoints(addr, protocol) {
            let refs = match self.sources.get_mut(&e) {
                Some(refs) if *refs > 1 => {
                    *refs -= 1;
                    *refs
                }
                _ => {
                    self.sources.remove(&e);
                    0
                }
            };
            self.store.set_source(&e, refs)?;
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

fn backend(addr: SocketAddr, state: u8, weight: u32) -> Backend {
    Backend {
        addr: addr_of(addr.ip()),
        port: addr.port().to_be_bytes(),
        state,
        _pad: 0,
        weight,
    }
}

/// A service's kernel-side record.
fn conf(name: &str, protocol: Protocol) -> ServiceConf {
    let mut conf = ServiceConf {
        protocols: protocol.mask(),
        in_use: 1,
        ..Default::default()
    };
    // Config validation keeps names below SERVICE_NAME_LEN; the NUL pad stays.
    let len = name.len().min(SERVICE_NAME_LEN - 1);
    conf.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    conf
}

fn endpoints(listen: &[crate::config::Listen], protocol: Protocol) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for l in listen {
        // A wildcard is its family's unspecified address: `ANY_IPV4` or `ANY_IPV6`.
        let addr = addr_of(l.addr);
        for &proto in protocol.ip_protos() {
            out.push(Endpoint::new(addr, l.port.to_be_bytes(), proto));
        }
    }
    out
}

fn source_endpoints(addr: SocketAddr, protocol: Protocol) -> Vec<Endpoint> {
    protocol
        .ip_protos()
        .iter()
        .map(|&p| Endpoint::new(addr_of(addr.ip()), addr.port().to_be_bytes(), p))
        .collect()
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
mod tests {
    use std::{collections::HashMap, path::Path};

    use xdp_common::{PROTO_TCP, PROTO_UDP};

    use super::*;
    use crate::config;

    /// One write, as the fake store saw it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Write {
        Backend(u32, u8),
        Zero(u32),
        Ring(u32),
        Flip(u32, u32),
        Listen(Endpoint, Option<u32>),
        Sync,
        Other,
    }

    /// Maps in memory, plus the data path's invariants checked after every write.
    #[derive(Default)]
    struct Fake {
        backends: HashMap<u32, Backend>,
        rings: HashMap<u32, Ring>,
        active: HashMap<u32, u32>,
        listens: BTreeMap<Endpoint, u32>,
        sources: BTreeMap<Endpoint, u32>,
        confs: HashMap<u32, ServiceConf>,
        flow_settings: FlowSettings,
        /// Ring keys that stopped being active and had no grace period since.
        unsettled: BTreeSet<u32>,
        log: Vec<Write>,
    }

    impl Fake {
        fn ring(&self, service: u32) -> Option<&Ring> {
            let generation = self.active.get(&service).copied().unwrap_or(0);
            self.rings.get(&ring_key(service, generation))
        }

        /// Every backend a packet could pick right now is ACTIVE.
        fn check(&self) {
            for service in self.listens.values() {
                if let Some(ring) = self.ring(*service) {
                    for &local in &ring.slots[..ring.len as usize] {
                        let slot = backend_slot(*service, local as u32);
                        let state = self.backends.get(&slot).map(|b| b.state);
                        assert_eq!(
                            state,
                            Some(backend_state::ACTIVE),
                            "service {service}'s ring names slot {slot} in state {state:?}; log: {:?}",
                            self.log
                        );
                    }
                }
            }
        }

        fn picks(&self, service: u32) -> Vec<SocketAddr> {
            let ring = self.ring(service).expect("a ring");
            ring.slots[..ring.len as usize]
                .iter()
                .map(|&l| {
                    let b = self.backends[&backend_slot(service, l as u32)];
                    SocketAddr::new(ip_of(b.addr), u16::from_be_bytes(b.port))
                })
                .collect()
        }

        /// The writes after `mark`, less the ones no invariant is about.
        fn since(&self, mark: usize) -> Vec<Write> {
            self.log[mark..]
                .iter()
                .filter(|w| **w != Write::Other)
                .cloned()
                .collect()
        }
    }

    impl Store for Fake {
        fn write_backend(&mut self, slot: u32, backend: &Backend) -> Result<()> {
            self.backends.insert(slot, *backend);
            self.log.push(Write::Backend(slot, backend.state));
            self.check();
            Ok(())
        }
        fn zero_backend_stats(&mut self, slot: u32) -> Result<()> {
            self.log.push(Write::Zero(slot));
            Ok(())
        }
        fn write_ring(&mut self, key: u32, ring: &Ring) -> Result<()> {
            let service = key / 2;
            let in_use = ring_key(service, self.active.get(&service).copied().unwrap_or(0));
            let live = self.listens.values().any(|&s| s == service);
            assert!(!(live && key == in_use), "wrote the ring in use ({key})");
            assert!(
                !self.unsettled.contains(&key),
                "rewrote ring {key} before a grace period"
            );
            self.rings.insert(key, *ring);
            self.log.push(Write::Ring(key));
            Ok(())
        }
        fn flip(&mut self, service: u32, generation: u32) -> Result<()> {
            let old = ring_key(service, self.active.get(&service).copied().unwrap_or(0));
            self.unsettled.insert(old);
            self.active.insert(service, generation);
            self.log.push(Write::Flip(service, generation));
            self.check();
            Ok(())
        }
        fn write_conf(&mut self, service: u32, conf: &ServiceConf) -> Result<()> {
            self.confs.insert(service, *conf);
            self.log.push(Write::Other);
            Ok(())
        }
        fn insert_listen(&mut self, listen: &Endpoint, service: u32) -> Result<()> {
            assert!(self.ring(service).is_some(), "listen before its ring");
            self.listens.insert(*listen, service);
            self.log.push(Write::Listen(*listen, Some(service)));
            self.check();
            Ok(())
        }
        fn remove_listen(&mut self, listen: &Endpoint) -> Result<()> {
            self.listens.remove(listen);
            self.log.push(Write::Listen(*listen, None));
            Ok(())
        }
        fn set_source(&mut self, source: &Endpoint, refs: u32) -> Result<()> {
            if refs == 0 {
                self.sources.remove(source);
            } else {
                self.sources.insert(*source, refs);
            }
            self.log.push(Write::Other);
            Ok(())
        }
        fn write_flow_settings(&mut self, settings: &FlowSettings) -> Result<()> {
            self.flow_settings = *settings;
            self.log.push(Write::Other);
            Ok(())
        }
        fn read_conf(&mut self, service: u32) -> Result<ServiceConf> {
            Ok(self.confs.get(&service).copied().unwrap_or_default())
        }
        fn read_active(&mut self, service: u32) -> Result<u32> {
            Ok(self.active.get(&service).copied().unwrap_or(0))
        }
        fn read_ring(&mut self, key: u32) -> Result<Ring> {
            Ok(self.rings.get(&key).copied().unwrap_or_default())
        }
        fn read_backend(&mut self, slot: u32) -> Result<Backend> {
            Ok(self.backends.get(&slot).copied().unwrap_or_default())
        }
        fn read_listens(&mut self) -> Result<Vec<(Endpoint, u32)>> {
            Ok(self.listens.iter().map(|(e, id)| (*e, *id)).collect())
        }
        fn read_flow_settings(&mut self) -> Result<FlowSettings> {
            Ok(self.flow_settings)
        }
        fn synchronize(&mut self) -> Result<()> {
            self.unsettled.clear();
            self.log.push(Write::Sync);
            Ok(())
        }
    }

    fn parse(text: &str) -> Config {
        config::parse(text, Path::new("test.toml")).unwrap()
    }

    fn one_service(backends: &str) -> Config {
        parse(&format!(
            "interface = \"lo\"\n[[service]]\nname = \"dns\"\nlisten = [\"192.0.2.10:53\"]\nbackends = [{backends}]\n"
        ))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn started(backends: &str) -> Live<Fake> {
        let mut live = Live::new(Fake::default());
        live.apply(&one_service(backends)).unwrap();
        live
    }

    const FOUR: &str = r#""10.0.0.2:53", "10.0.0.3:53", "10.0.0.4:53", "10.0.0.5:53""#;

    #[test]
    fn start_fills_backends_then_ring_then_listens() {
        let live = started(FOUR);
        let fake = live.store();
        assert_eq!(
            fake.picks(0),
            ["10.0.0.2:53", "10.0.0.3:53", "10.0.0.4:53", "10.0.0.5:53"].map(addr)
        );
        let first = |w: &dyn Fn(&Write) -> bool| fake.log.iter().position(w).unwrap();
        let last_backend = fake
            .log
            .iter()
            .rposition(|w| matches!(w, Write::Backend(..)))
            .unwrap();
        assert!(last_backend < first(&|w| matches!(w, Write::Ring(_))));
        assert!(
            first(&|w| matches!(w, Write::Flip(..))) < first(&|w| matches!(w, Write::Listen(..)))
        );
        assert_eq!(fake.sources.len(), 4);
    }

    #[test]
    fn remove_flips_first_marks_removed_then_waits() {
        let mut live = started(FOUR);
        let mark = live.store().log.len();
        let (after, _) = live
            .change("dns", &Change::Remove(addr("10.0.0.3:53")))
            .unwrap();
        assert_eq!(after.len(), 3);
        let fake = live.store();
        assert_eq!(
            fake.since(mark),
            [
                Write::Ring(0),
                Write::Flip(0, 0),
                Write::Sync,
                Write::Backend(1, backend_state::REMOVED),
                Write::Sync,
            ]
        );
        assert!(!fake.picks(0).contains(&addr("10.0.0.3:53")));
        assert_eq!(fake.sources.len(), 3);
    }

    #[test]
    fn down_leaves_the_ring_after_the_flip_and_up_rejoins_before_it() {
        let mut live = started(FOUR);
        let b = addr("10.0.0.3:53");
        let mark = live.store().log.len();
        let line = live.set_health("dns", b, false).unwrap();
        assert_eq!(
            line.as_deref(),
            Some("service dns: 10.0.0.3:53 out of selection")
        );
        assert_eq!(
            live.store().since(mark),
            [
                Write::Ring(0),
                Write::Flip(0, 0),
                Write::Sync,
                Write::Backend(1, backend_state::DOWN),
                Write::Sync,
            ]
        );
        assert!(!live.store().picks(0).contains(&b));
        // Still a member: listed as down, weight kept, its source kept for replies.
        let view = live.list("dns").unwrap();
        assert_eq!((view[1].state.as_str(), view[1].weight), ("down", 1));
        assert_eq!(live.members("dns").len(), 4);
        assert_eq!(live.store().sources.len(), 4);
        assert!(!live.fail_open("dns"));
        // Again: nothing to do.
        assert_eq!(live.set_health("dns", b, false).unwrap(), None);

        let mark = live.store().log.len();
        let line = live.set_health("dns", b, true).unwrap();
        assert_eq!(
            line.as_deref(),
            Some("service dns: 10.0.0.3:53 back in selection")
        );
        assert_eq!(
            live.store().since(mark),
            [
                Write::Backend(1, backend_state::ACTIVE),
                Write::Ring(1),
                Write::Flip(0, 1),
                Write::Sync,
            ]
        );
        assert_eq!(live.store().picks(0).len(), 4);
    }

    #[test]
    fn all_weighted_backends_down_fails_open() {
        let mut live = started(
            r#"{ addr = "10.0.0.2:53", weight = 2 }, "10.0.0.3:53", { addr = "10.0.0.4:53", weight = 0 }"#,
        );
        let (a, b, c) = (
            addr("10.0.0.2:53"),
            addr("10.0.0.3:53"),
            addr("10.0.0.4:53"),
        );
        live.set_health("dns", a, false).unwrap();
        assert_eq!(live.store().picks(0), [b]);
        // The draining one does not count: with both weighted ones down, fail open.
        live.set_health("dns", b, false).unwrap();
        assert!(live.fail_open("dns"));
        let mut picks = live.store().picks(0);
        picks.sort();
        assert_eq!(picks, [a, a, b], "weights as configured");
        let states: Vec<String> = live
            .list("dns")
            .unwrap()
            .into_iter()
            .map(|v| v.state)
            .collect();
        assert_eq!(states, ["active", "active", "draining"]);
        // Failing open ignores health altogether: a draining one that goes
        // down keeps its flows, until a weighted one is back.
        live.set_health("dns", c, false).unwrap();
        assert_eq!(live.list("dns").unwrap()[2].state, "draining");
        assert!(live.fail_open("dns"));
        // One back: it alone takes new flows.
        live.set_health("dns", b, true).unwrap();
        assert!(!live.fail_open("dns"));
        assert_eq!(live.store().picks(0), [b]);
        let states: Vec<String> = live
            .list("dns")
            .unwrap()
            .into_iter()
            .map(|v| v.state)
            .collect();
        assert_eq!(states, ["down", "active", "down"]);
    }

    #[test]
    fn health_survives_changes_but_not_removal() {
        let mut live = started(FOUR);
        let b = addr("10.0.0.3:53");
        live.set_health("dns", b, false).unwrap();
        // A weight change keeps it down.
        live.change("dns", &Change::Add(b, 5)).unwrap();
        assert_eq!(live.list("dns").unwrap()[1].state, "down");
        assert!(!live.store().picks(0).contains(&b));
        // Removed and added back, it starts up.
        live.change("dns", &Change::Remove(b)).unwrap();
        live.change("dns", &Change::Add(b, 1)).unwrap();
        assert!(live.store().picks(0).contains(&b));
        // Not a member: nothing to mark.
        assert_eq!(
            live.set_health("dns", addr("10.9.9.9:53"), false).unwrap(),
            None
        );
        assert!(live.set_health("nope", b, false).is_err());
    }

    /// A second `Live` over the same maps, as a restarted `dnsteer run` makes.
    fn restarted(live: Live<Fake>) -> Live<Fake> {
        let fake = live.store;
        let mark = fake.log.len();
        let adopted = Live::adopt(fake, MAX_SERVICES).unwrap();
        assert_eq!(
            adopted.store().log.len(),
            mark,
            "adopting wrote to the maps"
        );
        adopted
    }

    #[test]
    fn adopting_reads_back_the_state_and_writes_nothing() {
        let text = r#"interface = "lo"
[[service]]
name = "dns"
listen = ["192.0.2.11:53", "192.0.2.10:53"]
protocol = "udp+tcp"
backends = [{ addr = "10.0.0.2:53", weight = 3 }, "10.0.0.3:53", "10.0.0.4:53"]
[[service]]
name = "other"
listen = ["*:5300"]
select = "random"
backends = ["10.0.1.2:53"]
[flows]
udp_idle_timeout = "2s"
"#;
        let config = parse(text);
        let mut live = Live::new(Fake::default());
        live.apply(&config).unwrap();
        // Changes made at run time: a drained, a removed, a down backend, a flipped generation.
        live.change("dns", &Change::Drain(addr("10.0.0.3:53")))
            .unwrap();
        live.change("dns", &Change::Remove(addr("10.0.0.4:53")))
            .unwrap();
        live.change("dns", &Change::Add(addr("10.0.0.5:53"), 2))
            .unwrap();
        live.set_health("dns", addr("10.0.0.5:53"), false).unwrap();
        let views = (live.list("dns").unwrap(), live.list("other").unwrap());
        let sources = live.store().sources.clone();
        let generation = live.store().active[&0];

        let mut adopted = restarted(live);
        assert_eq!(
            (adopted.list("dns").unwrap(), adopted.list("other").unwrap()),
            views
        );
        assert_eq!(adopted.sources, sources);
        assert!(!adopted.fail_open("dns"));
        // The config as it stands changes only what the run-time changes did.
        let mark = adopted.store().log.len();
        let lines = adopted.apply(&config).unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("service dns: backends"), "{lines:?}");
        // ... through the generation the data path does not read.
        assert!(
            adopted
                .store()
                .since(mark)
                .contains(&Write::Flip(0, generation ^ 1))
        );
        assert_eq!(
            adopted
                .list("dns")
                .unwrap()
                .iter()
                .map(|v| v.state.as_str())
                .collect::<Vec<_>>(),
            ["active", "active", "active"]
        );
        // Applied again after another restart: nothing to do.
        let mut again = restarted(adopted);
        let mark = again.store().log.len();
        assert!(again.apply(&config).unwrap().is_empty());
        assert_eq!(again.store().since(mark), []);
    }

    #[test]
    fn adopting_empty_maps_finds_nothing() {
        let live = Live::adopt(Fake::default(), MAX_SERVICES).unwrap();
        assert!(live.names().is_empty());
    }

    #[test]
    fn drain_keeps_the_slot_and_leaves_the_ring() {
        let mut live = started(FOUR);
        let mark = live.store().log.len();
        let (after, _) = live
            .change("dns", &Change::Drain(addr("10.0.0.2:53")))
            .unwrap();
        assert_eq!((after[0].state.as_str(), after[0].weight), ("draining", 0));
        assert_eq!(
            live.store().since(mark),
            [
                Write::Ring(0),
                Write::Flip(0, 0),
                Write::Sync,
                Write::Backend(0, backend_state::DRAINING),
                Write::Sync,
            ]
        );
        // Adding it again reactivates it before it enters the ring.
        let mark = live.store().log.len();
        live.change("dns", &Change::Add(addr("10.0.0.2:53"), 2))
            .unwrap();
        assert_eq!(
            live.store().since(mark),
            [
                Write::Backend(0, backend_state::ACTIVE),
                Write::Ring(1),
                Write::Flip(0, 1),
                Write::Sync,
            ]
        );
        assert_eq!(live.store().picks(0).len(), 5, "weights 2, 1, 1, 1");
    }

    #[test]
    fn a_reused_slot_gets_its_address_while_still_removed() {
        let mut live = started(FOUR);
        live.change("dns", &Change::Remove(addr("10.0.0.3:53")))
            .unwrap();
        let mark = live.store().log.len();
        live.change("dns", &Change::Add(addr("10.0.0.9:53"), 1))
            .unwrap();
        // Never-used slots go first: slot 4.
        assert_eq!(
            live.store().since(mark)[0],
            Write::Backend(4, backend_state::ACTIVE)
        );
        // Fill the service up, so only the removed slot 1 is left.
        let more: Vec<BackendSpec> = (0..59)
            .map(|i| BackendSpec {
                addr: SocketAddr::new([10, 1, 0, i].into(), 53),
                weight: 1,
            })
            .chain(live.list("dns").unwrap().iter().map(|b| BackendSpec {
                addr: b.address.parse().unwrap(),
                weight: b.weight,
            }))
            .collect();
        live.change("dns", &Change::Set(more)).unwrap();
        assert_eq!(live.list("dns").unwrap().len(), 63);
        let mark = live.store().log.len();
        live.change("dns", &Change::Add(addr("10.0.0.10:53"), 1))
            .unwrap();
        assert_eq!(live.list("dns").unwrap().len(), 64);
        assert_eq!(
            live.store().since(mark)[..3],
            [
                Write::Backend(1, backend_state::REMOVED),
                Write::Zero(1),
                Write::Backend(1, backend_state::ACTIVE),
            ]
        );
        let err = live
            .change("dns", &Change::Add(addr("10.0.0.11:53"), 1))
            .unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
        // With every slot in use, a replacement must wait for the old one's removal.
        let mut swapped: Vec<BackendSpec> = live
            .list("dns")
            .unwrap()
            .iter()
            .map(|b| BackendSpec {
                addr: b.address.parse().unwrap(),
                weight: 1,
            })
            .collect();
        swapped[0].addr = addr("10.0.0.11:53");
        let mark = live.store().log.len();
        let err = live.change("dns", &Change::Set(swapped)).unwrap_err();
        assert!(err.to_string().contains("no free backend slot"), "{err}");
        assert!(live.store().since(mark).is_empty(), "nothing written");
    }

    #[test]
    fn re_adding_a_removed_backend_keeps_its_slot_and_counters() {
        let mut live = started(FOUR);
        live.change("dns", &Change::Remove(addr("10.0.0.4:53")))
            .unwrap();
        let mark = live.store().log.len();
        live.change("dns", &Change::Add(addr("10.0.0.4:53"), 1))
            .unwrap();
        let writes = live.store().since(mark);
        assert_eq!(writes[0], Write::Backend(2, backend_state::ACTIVE));
        assert!(!writes.iter().any(|w| matches!(w, Write::Zero(_))));
    }

    #[test]
    fn generations_alternate_with_a_grace_period_between() {
        let mut live = started(FOUR);
        for i in 0..20u8 {
            let b = SocketAddr::new([10, 0, 1, i].into(), 53);
            live.change("dns", &Change::Add(b, (i % 3 + 1) as u32))
                .unwrap();
            live.change("dns", &Change::Drain(b)).unwrap();
            live.change("dns", &Change::Remove(b)).unwrap();
        }
        // The Fake asserts on every write; the set ends where it began.
        assert_eq!(
            live.store().picks(0),
            ["10.0.0.2:53", "10.0.0.3:53", "10.0.0.4:53", "10.0.0.5:53"].map(addr)
        );
    }

    #[test]
    fn weights_shape_the_ring() {
        let live = started(
            r#"{ addr = "10.0.0.2:53", weight = 3 }, "10.0.0.3:53", { addr = "10.0.0.4:53", weight = 0 }"#,
        );
        let picks = live.store().picks(0);
        let count = |a: &str| picks.iter().filter(|&&p| p == addr(a)).count();
        assert_eq!(
            (
                count("10.0.0.2:53"),
                count("10.0.0.3:53"),
                count("10.0.0.4:53")
            ),
            (3, 1, 0)
        );
        let view = live.list("dns").unwrap();
        assert_eq!(view[2].state, "draining");
    }

    #[test]
    fn a_reload_writes_only_the_difference() {
        let mut live = started(FOUR);
        let mark = live.store().log.len();
        let log = live.apply(&one_service(FOUR)).unwrap();
        assert!(log.is_empty(), "{log:?}");
        assert!(live.store().since(mark).is_empty());
        let log = live
            .apply(&one_service(
                r#""10.0.0.2:53", "10.0.0.3:53", "10.0.0.4:53", "10.0.0.6:53""#,
            ))
            .unwrap();
        assert_eq!(log.len(), 1, "{log:?}");
        let writes = live.store().since(mark);
        assert_eq!(
            writes[0],
            Write::Backend(4, backend_state::ACTIVE),
            "only the new one"
        );
        assert!(writes.contains(&Write::Backend(3, backend_state::REMOVED)));
        assert!(!writes.iter().any(|w| matches!(w, Write::Listen(..))));
    }

    #[test]
    fn listens_move_between_services_without_a_gap() {
        let two = |a: &str, b: &str| {
            parse(&format!(
                "interface = \"lo\"\n[[service]]\nname = \"a\"\nlisten = [{a}]\nbackends = [\"10.0.0.2:53\"]\n[[service]]\nname = \"b\"\nlisten = [{b}]\nbackends = [\"10.0.0.3:53\"]\n"
            ))
        };
        let mut live = Live::new(Fake::default());
        live.apply(&two(
            r#""192.0.2.10:53", "192.0.2.11:53""#,
            r#""192.0.2.12:53""#,
        ))
        .unwrap();
        let mark = live.store().log.len();
        live.apply(&two(
            r#""192.0.2.10:53""#,
            r#""192.0.2.11:53", "192.0.2.12:53""#,
        ))
        .unwrap();
        let moved = Endpoint::new(
            xdp_common::ipv4_mapped([192, 0, 2, 11]),
            53u16.to_be_bytes(),
            PROTO_UDP,
        );
        assert_eq!(live.store().since(mark), [Write::Listen(moved, Some(1))]);
        // Dropping service a: its listen goes first, then a grace period, then its backends.
        let only_b = parse(
            "interface = \"lo\"\n[[service]]\nname = \"b\"\nlisten = [\"192.0.2.12:53\"]\nbackends = [\"10.0.0.3:53\"]\n",
        );
        let mark = live.store().log.len();
        let log = live.apply(&only_b).unwrap();
        assert!(log.iter().any(|l| l == "service a: removed"), "{log:?}");
        let writes = live.store().since(mark);
        let first_sync = writes.iter().position(|w| *w == Write::Sync).unwrap();
        assert!(
            writes[..first_sync]
                .iter()
                .all(|w| matches!(w, Write::Listen(_, None)))
        );
        assert_eq!(live.store().listens.len(), 1);
        assert_eq!(live.store().sources.len(), 1);
        assert_eq!(live.names(), ["b"]);
    }

    #[test]
    fn udp_and_tcp_listen_and_sources() {
        let mut live = Live::new(Fake::default());
        live.apply(&parse(
            "interface = \"lo\"\n[[service]]\nname = \"dns\"\nprotocol = \"udp+tcp\"\nlisten = [\"192.0.2.10:53\"]\nbackends = [\"10.0.0.2:53\"]\n",
        ))
        .unwrap();
        assert_eq!(
            (live.store().listens.len(), live.store().sources.len()),
            (2, 2)
        );
        live.apply(&one_service(r#""10.0.0.2:53""#)).unwrap();
        let protos: Vec<u8> = live.store().listens.keys().map(|e| e.proto).collect();
        assert_eq!(protos, [PROTO_UDP]);
        assert_eq!(live.store().sources.len(), 1);
    }

    /// Both families side by side: one service each, the two wildcards apart,
    /// read back whole after a restart; a change may not mix families.
    #[test]
    fn ipv6_services_and_the_family_rule() {
        let text = r#"interface = "lo"
[[service]]
name = "dns4"
listen = ["*:53", "192.0.2.10:53"]
backends = ["10.0.0.2:53"]
[[service]]
name = "dns6"
protocol = "udp+tcp"
listen = ["[::]:53", "[2001:db8::10]:53"]
backends = ["[2001:db8:13::2]:53", { addr = "[2001:db8:13::3]:53", weight = 2 }]
"#;
        let config = parse(text);
        let mut live = Live::new(Fake::default());
        live.apply(&config).unwrap();
        let endpoint = |ip: &str, proto| {
            Endpoint::new(addr_of(ip.parse().unwrap()), 53u16.to_be_bytes(), proto)
        };
        let want: BTreeMap<Endpoint, u32> = [
            (endpoint("0.0.0.0", PROTO_UDP), 0),
            (endpoint("192.0.2.10", PROTO_UDP), 0),
            (endpoint("::", PROTO_UDP), 1),
            (endpoint("::", PROTO_TCP), 1),
            (endpoint("2001:db8::10", PROTO_UDP), 1),
            (endpoint("2001:db8::10", PROTO_TCP), 1),
        ]
        .into();
        assert_eq!(live.store().listens, want);
        assert_eq!(endpoint("0.0.0.0", PROTO_UDP).addr, xdp_common::ANY_IPV4);
        assert_eq!(endpoint("::", PROTO_UDP).addr, xdp_common::ANY_IPV6);
        assert_eq!(
            live.store().picks(1),
            [
                addr("[2001:db8:13::3]:53"),
                addr("[2001:db8:13::2]:53"),
                addr("[2001:db8:13::3]:53")
            ]
        );
        assert!(live.store().sources.contains_key(&Endpoint::new(
            addr_of("2001:db8:13::2".parse().unwrap()),
            53u16.to_be_bytes(),
            PROTO_TCP
        )));

        let mark = live.store().log.len();
        for (service, change, want) in [
            (
                "dns4",
                Change::Add(addr("[2001:db8:13::9]:53"), 1),
                "[2001:db8:13::9]:53 is IPv6, service \"dns4\" is IPv4; a service is one family",
            ),
            (
                "dns6",
                Change::Add(addr("10.0.0.9:53"), 1),
                "10.0.0.9:53 is IPv4, service \"dns6\" is IPv6",
            ),
            (
                "dns6",
                Change::Set(vec![
                    BackendSpec {
                        addr: addr("[2001:db8:13::2]:53"),
                        weight: 1,
                    },
                    BackendSpec {
                        addr: addr("10.0.0.9:53"),
                        weight: 1,
                    },
                ]),
                "10.0.0.9:53 is IPv4",
            ),
        ] {
            let err = live.change(service, &change).unwrap_err().to_string();
            assert!(err.contains(want), "{change:?}: {err}");
        }
        assert!(live.store().since(mark).is_empty());
        live.change("dns6", &Change::Add(addr("[2001:db8:13::4]:53"), 1))
            .unwrap();
        live.set_health("dns6", addr("[2001:db8:13::2]:53"), false)
            .unwrap();

        let views = (live.list("dns4").unwrap(), live.list("dns6").unwrap());
        assert_eq!(
            views
                .1
                .iter()
                .map(|v| v.address.as_str())
                .collect::<Vec<_>>(),
            [
                "[2001:db8:13::2]:53",
                "[2001:db8:13::3]:53",
                "[2001:db8:13::4]:53"
            ]
        );
        let mut adopted = restarted(live);
        assert_eq!(
            (adopted.list("dns4").unwrap(), adopted.list("dns6").unwrap()),
            views
        );
        // The family is known again after the restart, from the listen entries read back.
        let err = adopted
            .change("dns6", &Change::Add(addr("10.0.0.9:53"), 1))
            .unwrap_err();
        assert!(err.to_string().contains("is IPv4"), "{err}");
        let lines = adopted.apply(&config).unwrap();
        assert_eq!(
            lines.len(),
            1,
            "only the run-time change is undone: {lines:?}"
        );
        assert!(lines[0].starts_with("service dns6: backends"), "{lines:?}");
    }

    #[test]
    fn bad_changes_change_nothing() {
        let mut live = started(FOUR);
        let mark = live.store().log.len();
        for (change, want) in [
            (Change::Remove(addr("10.0.0.9:53")), "not a backend"),
            (Change::Drain(addr("10.0.0.9:53")), "not a backend"),
            (Change::Add(addr("10.0.0.9:53"), 101), "too large"),
            (
                Change::Set(vec![
                    BackendSpec {
                        addr: addr("10.0.0.9:53"),
                        weight: 1,
                    },
                    BackendSpec {
                        addr: addr("10.0.0.9:53"),
                        weight: 2,
                    },
                ]),
                "twice",
            ),
        ] {
            let err = live.change("dns", &change).unwrap_err().to_string();
            assert!(err.contains(want), "{change:?}: {err}");
        }
        let err = live
            .change("nope", &Change::Remove(addr("10.0.0.2:53")))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no service \"nope\"; services: dns"),
            "{err}"
        );
        let mut one = started(r#""10.0.0.2:53", { addr = "10.0.0.3:53", weight = 0 }"#);
        for change in [
            Change::Remove(addr("10.0.0.2:53")),
            Change::Drain(addr("10.0.0.2:53")),
            Change::Set(vec![BackendSpec {
                addr: addr("10.0.0.3:53"),
                weight: 0,
            }]),
        ] {
            let err = one.change("dns", &change).unwrap_err().to_string();
            assert!(err.contains("no active backend left"), "{change:?}: {err}");
        }
        assert!(live.store().since(mark).is_empty());
        assert_eq!(
            live.list("").unwrap().len(),
            4,
            "the only service by default"
        );
    }
}
