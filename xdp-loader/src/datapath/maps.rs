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
    Backend, BackendCounter, DnsStats, Endpoint, FLOW_EVENT_COUNT, FORWARD_EVENT_COUNT,
    FRAGMENT_CAPACITY, FlowKey, FlowSettings, FlowValue, ForwardConf, FragmentKey, FragmentValue,
    MAX_BACKENDS_PER_SERVICE, QUERY_EVENT_COUNT, QueryKey, QueryValue, REASON_COUNT, Ring,
    ServiceConf, names,
};

use super::EBPF_OBJECT;
use crate::{config::Limits, live::Store};

/// `membarrier(2)`'s command that waits for an RCU grace period on all CPUs
/// (include/uapi/linux/membarrier.h, Linux 4.3; `synchronize_rcu()` since 4.16).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Sets how steered packets leave the node (`FORWARD[0]`).
pub fn write_forward(ebpf: &mut Ebpf, conf: &ForwardConf) -> Result<()> {
    let mut map: Array<_, ForwardConf> = typed(ebpf, names::FORWARD)?;
    map.set(0, conf, 0).context("writing the forwarding mode")
}

/// Each map's capacity in entries for these limits and flow table size; the
/// maps not listed have a fixed size.
pub fn capacities(limits: &Limits, flow_capacity: u32) -> [(&'static str, u32); 16] {
    let services = limits.services;
    let slots = services * MAX_BACKENDS_PER_SERVICE;
    [
        (names::SERVICES, limits.listeners),
        (names::SERVICE_CONF, services),
        (names::RINGS, services * 2),
        (names::ACTIVE_RING, services),
        (names::NTH_STATE, services),
        (names::BACKENDS, slots),
        (names::BACKEND_STATS, slots),
        (names::BACKEND_DNS, slots),
        (names::OUTSTANDING, slots),
        (names::TIMED_OUT, slots),
        // Replies are recognised by (backend address, port, protocol).
        (names::BACKEND_SOURCES, slots * 2),
        // `[flows] size` sizes each state table.
        (names::FLOWS, flow_capacity),
        (names::AFFINITY, flow_capacity),
        (names::QUERIES, flow_capacity),
        (names::SOCK_STATS, slots),
        // A socket of the node's own clients is a flow of theirs.
        (names::SOCK_REVERSE, flow_capacity),
    ]
}

/// Every map's (name, key size, value size, capacity) as this build lays
/// them out: what pinned maps must match to be adopted.
pub fn layouts(limits: &Limits, flow_capacity: u32) -> Vec<(&'static str, usize, usize, u32)> {
    use std::mem::size_of;
    let sized: std::collections::BTreeMap<&str, u32> =
        capacities(limits, flow_capacity).into_iter().collect();
    let fixed = |name: &str, n: u32| sized.get(name).copied().unwrap_or(n);
    let u32s = size_of::<u32>();
    [
        (names::SERVICES, size_of::<Endpoint>(), u32s),
        (names::SERVICE_CONF, u32s, size_of::<ServiceConf>()),
        (names::RINGS, u32s, size_of::<Ring>()),
        (names::ACTIVE_RING, u32s, u32s),
        (names::BACKENDS, u32s, size_of::<Backend>()),
        (names::BACKEND_STATS, u32s, size_of::<BackendCounter>()),
        (names::BACKEND_SOURCES, size_of::<Endpoint>(), u32s),
        (names::NTH_STATE, u32s, u32s),
        (names::FLOWS, size_of::<FlowKey>(), size_of::<FlowValue>()),
        (names::FLOW_SETTINGS, u32s, size_of::<FlowSettings>()),
        (names::FLOW_EVENTS, u32s, size_of::<u64>()),
        (names::REASONS, u32s, size_of::<u64>()),
        (names::FORWARD, u32s, size_of::<ForwardConf>()),
        (names::FORWARD_EVENTS, u32s, size_of::<u64>()),
        (
            names::QUERIES,
            size_of::<QueryKey>(),
            size_of::<QueryValue>(),
        ),
        (
            names::AFFINITY,
            size_of::<FlowKey>(),
            size_of::<FlowValue>(),
        ),
        (
            names::FRAGMENTS,
            size_of::<FragmentKey>(),
            size_of::<FragmentValue>(),
        ),
        (names::QUERY_EVENTS, u32s, size_of::<u64>()),
        (names::BACKEND_DNS, u32s, size_of::<DnsStats>()),
        (names::OUTSTANDING, u32s, size_of::<u64>()),
        (names::TIMED_OUT, u32s, size_of::<u64>()),
        (
            names::SOCK_REVERSE,
            size_of::<xdp_common::SockKey>(),
            size_of::<Endpoint>(),
        ),
        (
            names::SOCK_STATS,
            u32s,
            size_of::<xdp_common::SockCounter>(),
        ),
    ]
    .into_iter()
    .map(|(name, key, value)| {
        let entries = match name {
            names::FLOW_SETTINGS | names::FORWARD => 1,
            names::FLOW_EVENTS => FLOW_EVENT_COUNT,
            names::REASONS => REASON_COUNT,
            names::FORWARD_EVENTS => FORWARD_EVENT_COUNT,
            names::FRAGMENTS => FRAGMENT_CAPACITY,
            names::QUERY_EVENTS => QUERY_EVENT_COUNT,
            _ => fixed(name, 0),
        };
        (name, key, value, entries)
    })
    .collect()
}

/// Refuses to adopt pinned maps laid out otherwise than this build and the
/// config want: a pinned map keeps its size (`[flows] size`, `[limits]`), and
/// another dnsteer version may have other key or value layouts. A map not
/// pinned yet (new in this version) is created.
pub fn check_layouts(dir: &Path, wanted: &[(&str, usize, usize, u32)]) -> Result<()> {
    for &(name, key, value, entries) in wanted {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        // Counters and settings have sizes of this build's own, not the config's.
        let sized_by_config = capacities(&Limits::default(), 0)
            .iter()
            .any(|(sized, _)| *sized == name);
        if info.max_entries() != entries && !sized_by_config {
            bail!(
                "the persistent data path's map {name} holds {} entries, this dnsteer version uses {entries}: it was laid out by another version; `dnsteer stop` it and start afresh (its flows are lost)",
                info.max_entries()
            );
        }
        if info.max_entries() != entries {
            bail!(
                "the persistent data path's map {name} holds {} entries, this config asks for {entries}; keep [flows] size and [limits] as they were, or `dnsteer stop` it first (its flows are lost)",
                info.max_entries()
            );
        }
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            bail!(
                "the persistent data path's map {name} is laid out by another dnsteer version ({}-byte keys, {}-byte values; this one uses {key} and {value}); `dnsteer stop` it and start afresh (its flows are lost)",
                info.key_size(),
                info.value_size()
            );
        }
    }
    Ok(())
}

/// Loads the eBPF object with the default limits and the flow table sized as configured.
pub fn load(flow_capacity: u32) -> Result<Ebpf> {
    load_pinned(&Limits::default(), flow_capacity, None)
}

/// Loads the eBPF object with its maps sized for `limits` and `flow_capacity`.
/// With `pinned`, each map is the one pinned there under its name (a
/// persistent instance's, adopted with its contents), or is created and pinned
/// there.
pub fn load_pinned(limits: &Limits, flow_capacity: u32, pinned: Option<&Path>) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (name, entries) in capacities(limits, flow_capacity) {
        loader.map_max_entries(name, entries);
    }
    if let Some(dir) = pinned {
        for name in names::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    loader.load(EBPF_OBJECT).context(
        "loading the eBPF object; dnsteer needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)",
    )
}

/// The maps of a loaded object. It owns the `Ebpf`, and with it the program links.
pub struct KernelMaps {
    pub ebpf: Ebpf,
    /// Set when `membarrier` is unavailable and a sleep stands in for it.
    warned: bool,
    /// Whether a program reading the maps may be running: until then no grace
    /// period is needed (filling 10,000 services would otherwise wait out
    /// 10,000 of them before the first packet is steered).
    pub attached: bool,
}

impl KernelMaps {
    /// The maps of a freshly loaded object: nothing attached reads them yet.
    pub fn new(ebpf: Ebpf) -> Self {
        Self {
            ebpf,
            warned: false,
            attached: false,
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
            .with_context(|| format!("clearing the counters of backend slot {slot}"))?;
        // Its DNS counters too; not its queries in flight (OUTSTANDING less
        // TIMED_OUT), which the old backend's answers and timeouts
        // still settle.
        let zeros = PerCpuValues::try_from(vec![DnsStats::default(); cpus])
            .context("building per-CPU zeros")?;
        let mut map: PerCpuArray<_, DnsStats> = typed(&mut self.ebpf, names::BACKEND_DNS)?;
        map.set(slot, zeros, 0)
            .with_context(|| format!("clearing the DNS counters of backend slot {slot}"))
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
        if !self.attached {
            return Ok(());
        }
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
        if let Some(extra) = slow_grace() {
            std::thread::sleep(extra);
        }
        Ok(())
    }
}

/// `DNSTEER_SLOW_GRACE_MS`, for tests only: each grace period lasts this much
/// longer, as on a busy host where `membarrier` takes over a second, so a test
/// can tell whether anything waits for a change in flight.
fn slow_grace() -> Option<Duration> {
    static EXTRA: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *EXTRA.get_or_init(|| {
        std::env::var("DNSTEER_SLOW_GRACE_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
    })
}
