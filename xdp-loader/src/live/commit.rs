//! Steps 1 to 6 of the module comment: how one service's backend set, its
//! listen entries and its backend sources reach the store.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use anyhow::{Result, bail};
use xdp_common::{
    Backend, Endpoint, MAX_BACKENDS_PER_SERVICE, RING_SIZE, Ring, SERVICE_NAME_LEN, SelectMode,
    ServiceConf, addr_of, backend_slot, backend_state, ring_key, select::smooth_ring,
};

use super::{Live, Slot, Store, listens};
use crate::config::{BackendSpec, Listen, Protocol, Select, Service};

impl<S: Store> Live<S> {
    /// Makes service `id`'s set `wanted`, following the steps in the module comment.
    pub(super) fn commit(&mut self, id: u32, wanted: &[BackendSpec], select: Select) -> Result<()> {
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
                Select::LeastOutstanding => SelectMode::LeastOutstanding,
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
    pub(super) fn sync_listens(
        &mut self,
        ids: &[(u32, &Service)],
        log: &mut Vec<String>,
    ) -> Result<()> {
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
        let sorted = |list: &[Listen]| {
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
    pub(super) fn remove_service(&mut self, id: u32) -> Result<String> {
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

    pub(super) fn ref_source(&mut self, addr: SocketAddr, protocol: Protocol) -> Result<()> {
        for e in source_endpoints(addr, protocol) {
            let refs = self.sources.entry(e).or_insert(0);
            *refs += 1;
            let refs = *refs;
            self.store.set_source(&e, refs)?;
        }
        Ok(())
    }

    pub(super) fn unref_source(&mut self, addr: SocketAddr, protocol: Protocol) -> Result<()> {
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

pub(super) fn backend(addr: SocketAddr, state: u8, weight: u32) -> Backend {
    Backend {
        addr: addr_of(addr.ip()),
        port: addr.port().to_be_bytes(),
        state,
        _pad: 0,
        weight,
    }
}

/// A service's kernel-side record.
pub(super) fn conf(name: &str, protocol: Protocol) -> ServiceConf {
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

pub(super) fn endpoints(listen: &[Listen], protocol: Protocol) -> Vec<Endpoint> {
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

pub(super) fn source_endpoints(addr: SocketAddr, protocol: Protocol) -> Vec<Endpoint> {
    protocol
        .ip_protos()
        .iter()
        .map(|&p| Endpoint::new(addr_of(addr.ip()), addr.port().to_be_bytes(), p))
        .collect()
}
