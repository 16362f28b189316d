//! One read of a running instance's pinned maps into a [`Snapshot`].

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd as _},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, MapType, PerCpuArray};
use xdp_common::{
    ANY_IPV4, ANY_IPV6, Backend, BackendCounter, DnsStats, Endpoint, FlowEvent, ForwardConf,
    ForwardEvent, LATENCY_BASE_NS, LATENCY_BUCKETS, MAX_BACKENDS_PER_SERVICE, QueryEvent, Reason,
    Ring, SelectMode, ServiceConf, SockCounter, backend_slot, backend_state, names, rcode_class,
    ring_key,
};

use super::stats::{
    BackendDns, BackendStats, Capacity, CpuCounter, FlowStats, ForwardStats, JSON_VERSION,
    MapStats, QueryStats, ServiceStats, Snapshot, SocketBackend, SocketStats,
};
use crate::{
    config::Protocol,
    datapath::{expiry, pins::Instance},
};

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    instance: &Instance,
    name: &str,
) -> Result<T> {
    T::try_from(instance.map(name)?)
        .with_context(|| format!("pinned map {name} has an unexpected type"))
}

/// Reads a snapshot of `instance`.
pub fn read(instance: &Instance, per_cpu: bool) -> Result<Snapshot> {
    let confs: Array<MapData, ServiceConf> = typed(instance, names::SERVICE_CONF)?;
    let services: HashMap<MapData, Endpoint, u32> = typed(instance, names::SERVICES)?;
    let active: Array<MapData, u32> = typed(instance, names::ACTIVE_RING)?;
    let rings: Array<MapData, Ring> = typed(instance, names::RINGS)?;
    let backends: Array<MapData, Backend> = typed(instance, names::BACKENDS)?;
    let backend_stats: PerCpuArray<MapData, BackendCounter> =
        typed(instance, names::BACKEND_STATS)?;
    let dns_stats: PerCpuArray<MapData, DnsStats> = typed(instance, names::BACKEND_DNS)?;
    let outstanding: Array<MapData, u64> = typed(instance, names::OUTSTANDING)?;
    let timeouts: Array<MapData, u64> = typed(instance, names::TIMED_OUT)?;
    let reasons: PerCpuArray<MapData, u64> = typed(instance, names::REASONS)?;
    // Found through the pins, or through the loaded socket programs.
    let sock_stats: Option<Array<MapData, SockCounter>> = typed(instance, names::SOCK_STATS).ok();

    let mut listen: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for entry in services.iter() {
        let (endpoint, id) = entry.context("reading SERVICES")?;
        listen
            .entry(id)
            .or_default()
            .push(endpoint_string(&endpoint));
    }

    let mut out = Vec::new();
    for id in 0..confs.len() {
        let conf = confs
            .get(&id, 0)
            .with_context(|| format!("reading service {id}"))?;
        if conf.in_use == 0 {
            continue;
        }
        let generation = active.get(&id, 0).context("reading ACTIVE_RING")?;
        let ring = rings
            .get(&ring_key(id, generation), 0)
            .context("reading RINGS")?;
        let mut stats = ServiceStats {
            name: String::from_utf8_lossy(conf.name_bytes()).into_owned(),
            protocol: Protocol::from_mask(conf.protocols)
                .map_or("none", |p| p.as_str())
                .to_owned(),
            select: match ring.select {
                s if s == SelectMode::Random as u32 => "random",
                s if s == SelectMode::LeastOutstanding as u32 => "least_outstanding",
                _ => "nth",
            }
            .to_owned(),
            listen: listen.remove(&id).map(sorted).unwrap_or_default(),
            packets: 0,
            bytes: 0,
            fail_open: false,
            kubernetes: None,
            backends: Vec::new(),
            sockets: sock_stats.as_ref().map(|_| SocketStats::default()),
        };
        for index in 0..MAX_BACKENDS_PER_SERVICE {
            let slot = backend_slot(id, index);
            let backend = backends
                .get(&slot, 0)
                .with_context(|| format!("reading backend slot {slot}"))?;
            let state = match backend.state {
                backend_state::ACTIVE => "active",
                backend_state::DRAINING => "draining",
                backend_state::REMOVED => "removed",
                backend_state::DOWN => "down",
                _ => continue,
            };
            let cpus = backend_stats
                .get(&slot, 0)
                .with_context(|| format!("reading counters of slot {slot}"))?;
            let cpus: Vec<CpuCounter> = cpus
                .iter()
                .map(|c| CpuCounter {
                    packets: c.packets,
                    bytes: c.bytes,
                    new_flows: c.new_flows,
                })
                .collect();
            let sum = cpus.iter().fold(CpuCounter::default(), |s, c| CpuCounter {
                packets: s.packets + c.packets,
                bytes: s.bytes + c.bytes,
                new_flows: s.new_flows + c.new_flows,
            });
            stats.packets += sum.packets;
            stats.bytes += sum.bytes;
            let address = SocketAddr::new(
                xdp_common::ip_of(backend.addr),
                u16::from_be_bytes(backend.port),
            )
            .to_string();
            if let (Some(map), Some(sockets)) = (&sock_stats, stats.sockets.as_mut()) {
                let c = map
                    .get(&slot, 0)
                    .with_context(|| format!("reading socket counters of slot {slot}"))?;
                let n = c.sendmsg + c.connect_udp + c.connect_tcp;
                if n > 0 {
                    sockets.choices += n;
                    sockets.sendmsg += c.sendmsg;
                    sockets.connect_udp += c.connect_udp;
                    sockets.connect_tcp += c.connect_tcp;
                    sockets.backends.push(SocketBackend {
                        address: address.clone(),
                        sendmsg: c.sendmsg,
                        connect_udp: c.connect_udp,
                        connect_tcp: c.connect_tcp,
                    });
                }
            }
            stats.backends.push(BackendStats {
                address,
                state: state.to_owned(),
                weight: backend.weight,
                packets: sum.packets,
                bytes: sum.bytes,
                new_flows: sum.new_flows,
                health: None,
                dns: dns(&dns_stats, &outstanding, &timeouts, slot)?,
                per_cpu: per_cpu.then_some(cpus),
            });
        }
        out.push(stats);
    }

    let mut totals = BTreeMap::new();
    let mut split = BTreeMap::new();
    for reason in Reason::ALL {
        let cpus: Vec<u64> = reasons
            .get(&(reason as u32), 0)
            .context("reading REASONS")?
            .iter()
            .copied()
            .collect();
        totals.insert(reason.name().to_owned(), cpus.iter().sum());
        split.insert(reason.name().to_owned(), cpus);
    }
    let cpus = split.values().next().map_or(0, Vec::len);
    let maps = maps(instance)?;
    let forward = forward(instance)?;
    let entries = |name: &str| {
        maps.iter()
            .find(|m| m.name == name)
            .map_or(0, |m| m.max_entries)
    };
    let capacity = Capacity {
        services: entries(names::SERVICE_CONF),
        listeners: entries(names::SERVICES),
        backends_per_service: MAX_BACKENDS_PER_SERVICE,
        flow_records: entries(names::FLOWS),
    };
    Ok(Snapshot {
        version: JSON_VERSION,
        interface: instance.iface.clone(),
        running: instance.live,
        persistent: instance.persistent,
        cpus,
        services: out,
        reasons: totals,
        reasons_per_cpu: per_cpu.then_some(split),
        flows: flows(instance, entries(names::AFFINITY) + entries(names::FLOWS))?,
        queries: queries(instance)?,
        latency_bucket_le_seconds: latency_bounds(),
        forward,
        capacity,
        memory_bytes: maps.iter().map(|m| m.memory_bytes).sum(),
        maps,
    })
}

fn forward(instance: &Instance) -> Result<ForwardStats> {
    let conf: Array<MapData, ForwardConf> = typed(instance, names::FORWARD)?;
    let events: PerCpuArray<MapData, u64> = typed(instance, names::FORWARD_EVENTS)?;
    let mode = match conf.get(&0, 0).context("reading FORWARD")?.mode {
        xdp_common::forward::REDIRECT => "redirect",
        _ => "stack",
    };
    let mut counts = BTreeMap::new();
    for event in ForwardEvent::ALL {
        let n = events
            .get(&(event as u32), 0)
            .context("reading FORWARD_EVENTS")?
            .iter()
            .sum();
        counts.insert(event.name().to_owned(), n);
    }
    Ok(ForwardStats {
        mode: mode.to_owned(),
        events: counts,
    })
}

/// Every map of `instance`: sizes from the kernel, memory from its fdinfo.
fn maps(instance: &Instance) -> Result<Vec<MapStats>> {
    names::ALL
        .iter()
        .map(|&name| {
            let info = instance.map_info(name)?;
            let kind = match info.map_type() {
                Ok(MapType::Array) => "array".to_owned(),
                Ok(MapType::PerCpuArray) => "percpu_array".to_owned(),
                Ok(MapType::Hash) => "hash".to_owned(),
                Ok(MapType::LruHash) => "lru_hash".to_owned(),
                Ok(other) => format!("{other:?}").to_lowercase(),
                Err(_) => "unknown".to_owned(),
            };
            let memory_bytes = info.fd().ok().and_then(|fd| memlock(&fd)).unwrap_or(0);
            Ok(MapStats {
                name: name.to_owned(),
                kind,
                max_entries: info.max_entries(),
                key_size: info.key_size(),
                value_size: info.value_size(),
                memory_bytes,
            })
        })
        .collect()
}

/// The `memlock:` line of a map fd's fdinfo: the bytes the kernel charges for it.
fn memlock(fd: &impl AsFd) -> Option<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
    let info = std::fs::read_to_string(path).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A backend's DNS counters: per CPU, and the queries in flight kept in two
/// shared counters (records written less answers; records the loader removed).
fn dns(
    per_cpu: &PerCpuArray<MapData, DnsStats>,
    outstanding: &Array<MapData, u64>,
    timeouts: &Array<MapData, u64>,
    slot: u32,
) -> Result<BackendDns> {
    let cpus = per_cpu
        .get(&slot, 0)
        .with_context(|| format!("reading the DNS counters of slot {slot}"))?;
    let mut sum = DnsStats::default();
    for c in cpus.iter() {
        sum.add(c);
    }
    let written = outstanding.get(&slot, 0).unwrap_or(0);
    let timed_out = timeouts.get(&slot, 0).unwrap_or(0);
    let in_flight = written.wrapping_sub(timed_out);
    Ok(BackendDns {
        queries: sum.queries,
        answers: sum.answers,
        timeouts: timed_out,
        in_flight: if (in_flight as i64) < 0 { 0 } else { in_flight },
        rcodes: rcode_class::NAMES
            .iter()
            .zip(sum.rcodes)
            .map(|(name, n)| ((*name).to_owned(), n))
            .collect(),
        latency_buckets: sum.latency.to_vec(),
        latency_sum_seconds: sum.latency_sum_ns as f64 / 1e9,
    })
}

/// The latency buckets' upper bounds in seconds, the last (slower) one aside.
pub fn latency_bounds() -> Vec<f64> {
    (0..LATENCY_BUCKETS - 1)
        .map(|k| (LATENCY_BASE_NS << k) as f64 / 1e9)
        .collect()
}

fn queries(instance: &Instance) -> Result<QueryStats> {
    let events: PerCpuArray<MapData, u64> = typed(instance, names::QUERY_EVENTS)?;
    let count = |event| expiry::read(&events, event);
    let capacity = instance
        .map_info(names::QUERIES)
        .map_or(0, |i| i.max_entries());
    Ok(QueryStats {
        capacity,
        in_flight: expiry::in_flight(&events)?,
        peak_in_flight: count(QueryEvent::PeakInFlight)?,
        inserted: count(QueryEvent::Inserted)?,
        answered: count(QueryEvent::Answered)?,
        retransmitted: count(QueryEvent::Retransmitted)?,
        timed_out: count(QueryEvent::TimedOut)?,
        insert_failed: count(QueryEvent::InsertFailed)?,
        fragment_unmatched: count(QueryEvent::FragmentUnmatched)?,
    })
}

fn flows(instance: &Instance, capacity: u32) -> Result<FlowStats> {
    let events: PerCpuArray<MapData, u64> = typed(instance, names::FLOW_EVENTS)?;
    let count = |event: FlowEvent| -> Result<u64> {
        Ok(events
            .get(&(event as u32), 0)
            .context("reading FLOW_EVENTS")?
            .iter()
            .sum())
    };
    let (inserted, deleted) = (count(FlowEvent::Inserted)?, count(FlowEvent::Deleted)?);
    let entries = flow_entries(inserted, deleted, capacity);
    Ok(FlowStats {
        capacity,
        entries,
        hits: count(FlowEvent::Hit)?,
        misses: count(FlowEvent::Miss)?,
        expired: count(FlowEvent::Expired)?,
        backend_gone: count(FlowEvent::BackendGone)?,
        inserted,
        deleted,
        evictions: inserted.saturating_sub(deleted).saturating_sub(entries),
    })
}

/// The records the flow table holds, from the kernel's counters rather than a
/// walk of the table (which costs one syscall per record, up to 16 million, on
/// every `stats` and every scrape): records created and not deleted, up to the
/// capacity, past which the LRU table evicts one for each it creates.
fn flow_entries(inserted: u64, deleted: u64, capacity: u32) -> u64 {
    inserted.saturating_sub(deleted).min(u64::from(capacity))
}

/// Sorted, each once: a udp+tcp service has one `SERVICES` entry per protocol.
fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

pub(super) fn endpoint_string(e: &Endpoint) -> String {
    let port = u16::from_be_bytes(e.port);
    match e.addr {
        ANY_IPV4 => format!("*:{port}"),
        ANY_IPV6 => format!("[::]:{port}"),
        addr => SocketAddr::new(xdp_common::ip_of(addr), port).to_string(),
    }
}
