//! The loaded program's maps as a [`Store`]: the only place that writes them.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapInfo, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use log::warn;
use xdp_common::{
    BACKEND_SLOTS, Backend, BackendCounter, Endpoint, FLOW_EVENT_COUNT, FlowKey, FlowSettings,
    FlowValue, MAX_BACKEND_SOURCES, MAX_LISTENERS, MAX_SERVICES, REASON_COUNT, RING_ENTRIES, Ring,
    ServiceConf, names,
};

use crate::{EBPF_OBJECT, live::Store};

/// `membarrier(2)`'s command that waits for an RCU grace period on all CPUs
/// (include/uapi/linux/membarrier.h, Linux 4.3; `synchronize_rcu()` since 4.16).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Loads the eBPF object with the flow table sized as configured.
pub fn load(flow_capacity: u32) -> Result<Ebpf> {
    load_pinned(flow_capacity, None)
}

/// [`load`]; with `pinned`, each map is the one pinned there under its name (a
/// persistent instance's, adopted with its contents), or is created and pinned
/// there.
pub fn load_pinned(flow_capacity: u32, pinned: Option<&Path>) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(names::FLOWS, flow_capacity);
    if let Some(dir) = pinned {
        for name in names::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    loader.load(EBPF_OBJECT).context(
        "loading the eBPF object; dnsteer needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)",
    )
}

/// A map's shape: key size, value size (per CPU for per-CPU maps) and entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub key: u32,
    pub value: u32,
    /// None: set from the config (`FLOWS`, checked on its own).
    pub entries: Option<u32>,
}

const fn layout<K, V>(entries: Option<u32>) -> Layout {
    Layout {
        key: size_of::<K>() as u32,
        value: size_of::<V>() as u32,
        entries,
    }
}

/// Every map this binary's programs use, by name, with the shape they expect.
pub const LAYOUTS: [(&str, Layout); 12] = [
    (
        names::SERVICES,
        layout::<Endpoint, u32>(Some(MAX_LISTENERS)),
    ),
    (
        names::SERVICE_CONF,
        layout::<u32, ServiceConf>(Some(MAX_SERVICES)),
    ),
    (names::RINGS, layout::<u32, Ring>(Some(RING_ENTRIES))),
    (names::ACTIVE_RING, layout::<u32, u32>(Some(MAX_SERVICES))),
    (names::BACKENDS, layout::<u32, Backend>(Some(BACKEND_SLOTS))),
    (
        names::BACKEND_STATS,
        layout::<u32, BackendCounter>(Some(BACKEND_SLOTS)),
    ),
    (
        names::BACKEND_SOURCES,
        layout::<Endpoint, u32>(Some(MAX_BACKEND_SOURCES)),
    ),
    (names::NTH_STATE, layout::<u32, u32>(Some(MAX_SERVICES))),
    (names::FLOWS, layout::<FlowKey, FlowValue>(None)),
    (names::FLOW_SETTINGS, layout::<u32, FlowSettings>(Some(1))),
    (
        names::FLOW_EVENTS,
        layout::<u32, u64>(Some(FLOW_EVENT_COUNT)),
    ),
    (names::REASONS, layout::<u32, u64>(Some(REASON_COUNT))),
];

/// Why a pinned map of shape `pinned` cannot serve as map `name` of shape
/// `want`, or None when it can.
pub fn layout_mismatch(name: &str, pinned: Layout, want: Layout) -> Option<String> {
    let entries_differ = want.entries.is_some_and(|n| Some(n) != pinned.entries);
    if pinned.key == want.key && pinned.value == want.value && !entries_differ {
        return None;
    }
    let shape = |l: Layout| {
        let entries = l
            .entries
            .map_or(String::new(), |n| format!("{n} entries, "));
        format!("{entries}{}-byte keys, {}-byte values", l.key, l.value)
    };
    Some(format!(
        "{name} has {}, this dnsteer's programs need {}",
        shape(pinned),
        shape(Layout {
            entries: want.entries.or(pinned.entries),
            ..want
        })
    ))
}

/// Refuses to adopt maps pinned under `dir` by a dnsteer whose map layouts
/// differ from this one's (an upgrade that widened addresses for IPv6, or
/// added a reason counter): the programs would read them wrong.
pub fn check_pinned_layouts(dir: &Path) -> Result<()> {
    for (name, want) in LAYOUTS {
        let path = dir.join(name);
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        let pinned = Layout {
            key: info.key_size(),
            value: info.value_size(),
            entries: Some(info.max_entries()),
        };
        if let Some(why) = layout_mismatch(name, pinned, want) {
            bail!(
                "the persistent data path under {} was made by a dnsteer with other map layouts ({why}), so it cannot be adopted; `dnsteer stop` it first (its flows are lost), then start this one",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The maps of a loaded object. It owns the `Ebpf`, and with it the program links.
pub struct KernelMaps {
    pub ebpf: Ebpf,
    /// Set when `membarrier` is unavailable and a sleep stands in for it.
    warned: bool,
}

impl KernelMaps {
    pub fn new(ebpf: Ebpf) -> Self {
        Self {
            ebpf,
            warned: false,
        }
    }
}

/// A typed view of one of the object's maps, by name.
pub fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Store for KernelMaps {
    fn write_backend(&mut self, slot: u32, backend: &Backend) -> Result<()> {
        let mut map: Array<_, Backend> = typed(&mut self.ebpf, names::BACKENDS)?;
        map.set(slot, backend, 0)
            .with_context(|| format!("writing backend slot {slot}"))
    }

    fn zero_backend_stats(&mut self, slot: u32) -> Result<()> {
        let cpus = nr_cpus().map_err(|(what, err)| anyhow!("{what}: {err}"))?;
        let zeros = PerCpuValues::try_from(vec![BackendCounter::default(); cpus])
            .context("building per-CPU zeros")?;
        let mut map: PerCpuArray<_, BackendCounter> = typed(&mut self.ebpf, names::BACKEND_STATS)?;
        map.set(slot, zeros, 0)
            .with_context(|| format!("clearing the counters of backend slot {slot}"))
    }

    fn write_ring(&mut self, key: u32, ring: &Ring) -> Result<()> {
        let mut map: Array<_, Ring> = typed(&mut self.ebpf, names::RINGS)?;
        map.set(key, ring, 0)
            .with_context(|| format!("writing ring {key}"))
    }

    fn flip(&mut self, service: u32, generation: u32) -> Result<()> {
        let mut map: Array<_, u32> = typed(&mut self.ebpf, names::ACTIVE_RING)?;
        map.set(service, generation, 0)
            .with_context(|| format!("flipping the ring of service {service}"))
    }

    fn write_conf(&mut self, service: u32, conf: &ServiceConf) -> Result<()> {
        let mut map: Array<_, ServiceConf> = typed(&mut self.ebpf, names::SERVICE_CONF)?;
        map.set(service, conf, 0)
            .with_context(|| format!("writing service {service}"))
    }

    fn insert_listen(&mut self, listen: &Endpoint, service: u32) -> Result<()> {
        let mut map: HashMap<_, Endpoint, u32> = typed(&mut self.ebpf, names::SERVICES)?;
        map.insert(listen, service, 0)
            .with_context(|| format!("writing a listen entry of service {service}"))
    }

    fn remove_listen(&mut self, listen: &Endpoint) -> Result<()> {
        let mut map: HashMap<_, Endpoint, u32> = typed(&mut self.ebpf, names::SERVICES)?;
        map.remove(listen).context("deleting a listen entry")
    }

    fn set_source(&mut self, source: &Endpoint, refs: u32) -> Result<()> {
        let mut map: HashMap<_, Endpoint, u32> = typed(&mut self.ebpf, names::BACKEND_SOURCES)?;
        if refs == 0 {
            map.remove(source).context("deleting a backend source")
        } else {
            map.insert(source, refs, 0)
                .context("writing a backend source")
        }
    }

    fn write_flow_settings(&mut self, settings: &FlowSettings) -> Result<()> {
        let mut map: Array<_, FlowSettings> = typed(&mut self.ebpf, names::FLOW_SETTINGS)?;
        map.set(0, settings, 0).context("writing the flow timeouts")
    }

    fn read_conf(&mut self, service: u32) -> Result<ServiceConf> {
        let map: Array<_, ServiceConf> = typed(&mut self.ebpf, names::SERVICE_CONF)?;
        map.get(&service, 0)
            .with_context(|| format!("reading service {service}"))
    }

    fn read_active(&mut self, service: u32) -> Result<u32> {
        let map: Array<_, u32> = typed(&mut self.ebpf, names::ACTIVE_RING)?;
        map.get(&service, 0)
            .with_context(|| format!("reading the ring generation of service {service}"))
    }

    fn read_ring(&mut self, key: u32) -> Result<Ring> {
        let map: Array<_, Ring> = typed(&mut self.ebpf, names::RINGS)?;
        map.get(&key, 0)
            .with_context(|| format!("reading ring {key}"))
    }

    fn read_backend(&mut self, slot: u32) -> Result<Backend> {
        let map: Array<_, Backend> = typed(&mut self.ebpf, names::BACKENDS)?;
        map.get(&slot, 0)
            .with_context(|| format!("reading backend slot {slot}"))
    }

    fn read_listens(&mut self) -> Result<Vec<(Endpoint, u32)>> {
        let map: HashMap<_, Endpoint, u32> = typed(&mut self.ebpf, names::SERVICES)?;
        map.iter()
            .collect::<Result<_, _>>()
            .context("reading the listen entries")
    }

    fn read_flow_settings(&mut self) -> Result<FlowSettings> {
        let map: Array<_, FlowSettings> = typed(&mut self.ebpf, names::FLOW_SETTINGS)?;
        map.get(&0, 0).context("reading the flow timeouts")
    }

    fn synchronize(&mut self) -> Result<()> {
        // SAFETY: a syscall with integer arguments only.
        let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
        if rc != 0 {
            // nohz_full kernels refuse it; a program run lasts microseconds.
            if !self.warned {
                warn!(
                    "membarrier(MEMBARRIER_CMD_GLOBAL) failed ({}); waiting 20 ms instead of an RCU grace period",
                    std::io::Error::last_os_error()
                );
                self.warned = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_shared_types_and_say_what_differs() {
        let flows = LAYOUTS.iter().find(|(n, _)| *n == names::FLOWS).unwrap().1;
        assert_eq!((flows.key, flows.value, flows.entries), (40, 32, None));
        assert_eq!(LAYOUTS.map(|(n, _)| n), names::ALL);
        let want = layout::<Endpoint, u32>(Some(MAX_LISTENERS));
        assert_eq!(layout_mismatch("SERVICES", want, want), None);
        // The IPv4-only layout of SERVICES: 8-byte keys.
        let old = Layout { key: 8, ..want };
        assert_eq!(
            layout_mismatch("SERVICES", old, want).unwrap(),
            "SERVICES has 1024 entries, 8-byte keys, 4-byte values, this dnsteer's programs need 1024 entries, 20-byte keys, 4-byte values"
        );
        // A reason counter more: the array is one entry short.
        let reasons = layout::<u32, u64>(Some(REASON_COUNT));
        let short = Layout {
            entries: Some(REASON_COUNT - 1),
            ..reasons
        };
        assert!(
            layout_mismatch("REASONS", short, reasons)
                .unwrap()
                .contains("9 entries")
        );
        // The flow table's size is the config's business, not the layout's.
        let sized = Layout {
            entries: Some(4096),
            ..flows
        };
        assert_eq!(layout_mismatch("FLOWS", sized, flows), None);
    }
}
