//! `dnsteer stats`: reads a running instance's pinned maps and says where every
//! packet went.
//!
//! The JSON form (`--json`) is a stable interface; `Snapshot` is its schema and
//! README.md documents it. Fields are only ever added.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, MapType, PerCpuArray};
use serde::{Deserialize, Serialize};
use xdp_common::{
    ANY_IPV4, ANY_IPV6, Backend, BackendCounter, Endpoint, FlowEvent, FlowKey, FlowValue,
    ForwardConf, ForwardEvent, MAX_BACKENDS_PER_SERVICE, QueryEvent, Reason, Ring, SelectMode,
    ServiceConf, backend_slot, backend_state, names, ring_key,
};

use crate::{config::Protocol, expiry, live::BackendView, pins::Instance};

/// Version of the JSON shape; bumped only for incompatible changes.
pub const JSON_VERSION: u32 = 1;

/// Everything `dnsteer stats` reports, as one consistent-enough read of the maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub interface: String,
    /// False when no `dnsteer run` holds the pins: left by an instance that is
    /// gone, or a persistent data path steering without a loader.
    pub running: bool,
    /// The data path's links are pinned (`--persist`): it steers whether or
    /// not a `dnsteer run` is running.
    #[serde(default)]
    pub persistent: bool,
    pub cpus: usize,
    pub services: Vec<ServiceStats>,
    /// Packets per reason (see `Reason::name`), summed over CPUs.
    pub reasons: BTreeMap<String, u64>,
    /// Packets per reason per CPU; only with `--per-cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons_per_cpu: Option<BTreeMap<String, Vec<u64>>>,
    /// The flow affinity table.
    #[serde(default)]
    pub flows: FlowStats,
    /// UDP queries in flight: the records their answers need.
    #[serde(default)]
    pub queries: QueryStats,
    /// How steered packets leave the node, and what the fast path did.
    #[serde(default)]
    pub forward: ForwardStats,
    /// What the maps hold at most (`[limits]`, `[flows] size`).
    #[serde(default)]
    pub capacity: Capacity,
    /// Every kernel map, with the memory the kernel charges for it.
    #[serde(default)]
    pub maps: Vec<MapStats>,
    /// The sum of `maps[].memory_bytes`.
    #[serde(default)]
    pub memory_bytes: u64,
}

/// `forward`: the mode and the fast path's counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStats {
    /// `stack` or `redirect`.
    pub mode: String,
    /// Per `ForwardEvent::name`: `redirected`, `transmitted`, `passed`,
    /// `ttl_expired`, `reply_redirected`, `reply_passed`.
    pub events: BTreeMap<String, u64>,
}

/// The maps' capacities, as loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub services: u32,
    /// Listen entries (address, port, protocol) over all services.
    pub listeners: u32,
    /// Fixed: slots per service, removed backends included until reused.
    pub backends_per_service: u32,
    /// Flow table records (two per flow).
    pub flow_records: u32,
}

/// One kernel map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStats {
    pub name: String,
    /// The kernel's map type: `array`, `percpu_array`, `hash`, `lru_hash`.
    #[serde(rename = "type")]
    pub kind: String,
    pub max_entries: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// What the kernel charges for the map (`memlock` in its fdinfo), per-CPU
    /// copies included; 0 when the kernel does not say.
    pub memory_bytes: u64,
}

/// The flow table: its size and what happened to its records, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    /// Records the table holds at most (two per flow: query and reply).
    pub capacity: u32,
    /// Records present now.
    pub entries: u64,
    /// Queries that followed their flow's record.
    pub hits: u64,
    /// Queries with no record.
    pub misses: u64,
    /// Queries whose record had been idle too long (or whose TCP flow had closed).
    pub expired: u64,
    /// Queries whose record named a backend that is gone.
    pub backend_gone: u64,
    /// Records created under a new key.
    pub inserted: u64,
    /// Records deleted because a TCP flow was reset.
    pub deleted: u64,
    /// Records the full table dropped to make room: `inserted - deleted - entries`
    /// (exact when no traffic flows while it is read).
    pub evictions: u64,
}

/// The UDP query table: queries waiting for their answers, and what became
/// of the others, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryStats {
    /// Queries in flight the table holds at most (`[flows] size`).
    pub capacity: u32,
    /// Queries in flight now: `inserted - answered - timed_out`.
    pub in_flight: u64,
    /// The most in flight at once, sampled every 100 ms by `dnsteer run`.
    pub peak_in_flight: u64,
    /// Queries whose record was written.
    pub inserted: u64,
    /// Answers that found their query's record (and consumed it).
    pub answered: u64,
    /// Queries repeated with the same DNS ID from the same port while in flight.
    pub retransmitted: u64,
    /// Records removed unanswered after `[flows] query_timeout`.
    pub timed_out: u64,
    /// Queries steered without a record because the table was full: their
    /// answers leave untranslated (`reply_no_flow`) and are lost.
    pub insert_failed: u64,
    /// Later fragments of an answer whose first fragment was not seen.
    pub fragment_unmatched: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStats {
    pub name: String,
    pub protocol: String,
    pub select: String,
    /// `ADDR:PORT` (`[ADDR]:PORT` for IPv6), `*:PORT` for any IPv4 address,
    /// `[::]:PORT` for any IPv6 address; sorted.
    pub listen: Vec<String>,
    /// Sums over the backends.
    pub packets: u64,
    pub bytes: u64,
    /// Every health-checked backend is down, so all of them take new flows
    /// anyway (`[service.health]`; false without it).
    #[serde(default)]
    pub fail_open: bool,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    /// `ADDR:PORT`, `[ADDR]:PORT` for IPv6.
    pub address: String,
    /// `active`, `draining` (weight 0: keeps its flows, takes no new ones), `down`
    /// (failed its health checks: takes no new flows, its flows move) or
    /// `removed` (listed until its slot is reused, so no packet goes unaccounted).
    pub state: String,
    pub weight: u32,
    pub packets: u64,
    pub bytes: u64,
    /// Flows that started on this backend.
    pub new_flows: u64,
    /// What the service's health probes say; null without `[service.health]`,
    /// for a removed backend, or when no `dnsteer run` answers.
    #[serde(default)]
    pub health: Option<HealthStats>,
    /// One entry per possible CPU; only with `--per-cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_cpu: Option<Vec<CpuCounter>>,
}

/// A backend's health as `dnsteer run` probes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStats {
    /// `up` or `down`. A backend starts up.
    pub state: String,
    /// Round trip of the last probe that got a reply, in microseconds.
    pub last_rtt_us: Option<u64>,
    /// Why the last probe failed; null when it succeeded.
    pub last_error: Option<String>,
    /// Changes between up and down since the backend joined.
    pub transitions: u64,
    pub probes_ok: u64,
    pub probes_failed: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuCounter {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

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
    let reasons: PerCpuArray<MapData, u64> = typed(instance, names::REASONS)?;

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
            select: if ring.select == SelectMode::Random as u32 {
                "random"
            } else {
                "nth"
            }
            .to_owned(),
            listen: listen.remove(&id).map(sorted).unwrap_or_default(),
            packets: 0,
            bytes: 0,
            fail_open: false,
            backends: Vec::new(),
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
            stats.backends.push(BackendStats {
                address,
                state: state.to_owned(),
                weight: backend.weight,
                packets: sum.packets,
                bytes: sum.bytes,
                new_flows: sum.new_flows,
                health: None,
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
        flows: flows(instance)?,
        queries: queries(instance)?,
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

/// `12.3 MiB`, `4.0 KiB`, `512 B`.
pub fn bytes_text(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / (1u64 << 10) as f64),
        n => format!("{n} B"),
    }
}

/// Adds what `dnsteer run` knows of `service`'s health (from the control
/// socket or the daemon itself) to its counters.
pub fn add_health(service: &mut ServiceStats, fail_open: bool, views: &[BackendView]) {
    service.fail_open = fail_open;
    for backend in &mut service.backends {
        // A removed backend's slot may name an address that is a member again
        // in another slot; only the member has a health state.
        if backend.state == "removed" {
            continue;
        }
        backend.health = views
            .iter()
            .find(|v| v.address == backend.address)
            .and_then(|v| v.health.clone());
    }
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

fn flows(instance: &Instance) -> Result<FlowStats> {
    let events: PerCpuArray<MapData, u64> = typed(instance, names::FLOW_EVENTS)?;
    let count = |event: FlowEvent| -> Result<u64> {
        Ok(events
            .get(&(event as u32), 0)
            .context("reading FLOW_EVENTS")?
            .iter()
            .sum())
    };
    // UDP affinity and TCP connection records.
    let (mut entries, mut capacity) = (0, 0);
    for name in [names::AFFINITY, names::FLOWS] {
        let table: HashMap<MapData, FlowKey, FlowValue> = typed(instance, name)?;
        // Keys only: a walk of at most `capacity` get-next-key calls.
        entries += table.keys().filter(Result::is_ok).count() as u64;
        capacity += table.map().info().map_or(0, |i| i.max_entries());
    }
    let (inserted, deleted) = (count(FlowEvent::Inserted)?, count(FlowEvent::Deleted)?);
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

/// Sorted, each once: a udp+tcp service has one `SERVICES` entry per protocol.
fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

fn endpoint_string(e: &Endpoint) -> String {
    let port = u16::from_be_bytes(e.port);
    match e.addr {
        ANY_IPV4 => format!("*:{port}"),
        ANY_IPV6 => format!("[::]:{port}"),
        addr => SocketAddr::new(xdp_common::ip_of(addr), port).to_string(),
    }
}

/// The backend column's width: enough for an IPv4 backend, more when an IPv6
/// one among `addresses` needs it.
pub fn address_width<'a>(addresses: impl Iterator<Item = &'a str>) -> usize {
    addresses.map(str::len).max().unwrap_or(0).max(22)
}

/// `up 0.4ms (2 transitions)`, `down: no reply within 500ms (1 transition)`.
pub fn health_text(h: &HealthStats) -> String {
    let mut text = h.state.clone();
    match (&h.last_error, h.last_rtt_us) {
        (Some(err), _) => {
            let _ = write!(text, ": {err}");
        }
        (None, Some(us)) => {
            let _ = write!(text, " {:.1}ms", us as f64 / 1000.0);
        }
        (None, None) => {}
    }
    let plural = if h.transitions == 1 { "" } else { "s" };
    let _ = write!(text, " ({} transition{plural})", h.transitions);
    text
}

/// The text form. With `previous` (from `--watch`), adds packets per second.
pub fn render(now: &Snapshot, previous: Option<(&Snapshot, Duration)>) -> String {
    let rate = |old: Option<u64>, new: u64| -> String {
        match (previous, old) {
            (Some((_, dt)), Some(old)) if dt.as_secs_f64() > 0.0 => {
                format!(
                    "{:>10.0}/s",
                    new.saturating_sub(old) as f64 / dt.as_secs_f64()
                )
            }
            _ => String::new(),
        }
    };
    let mut s = String::new();
    let state = match (now.running, now.persistent) {
        (true, true) => " (persistent)",
        (true, false) => "",
        (false, true) => " — NO LOADER: the persistent data path steers on its own",
        (false, false) => " — NOT RUNNING, counters from pins left behind",
    };
    let _ = writeln!(s, "dnsteer on {} ({} CPUs){state}", now.interface, now.cpus);
    for (i, svc) in now.services.iter().enumerate() {
        let old = previous.and_then(|(p, _)| p.services.get(i));
        let _ = writeln!(
            s,
            "\nservice {}  {}  select {}  listen {}{}",
            svc.name,
            svc.protocol,
            svc.select,
            svc.listen.join(", "),
            if svc.fail_open {
                "  FAILING OPEN: every backend is down, all take new flows"
            } else {
                ""
            }
        );
        let checked = svc.backends.iter().any(|b| b.health.is_some());
        let w = address_width(svc.backends.iter().map(|b| b.address.as_str()));
        let _ = writeln!(
            s,
            "  {:<w$} {:<8} {:>6} {:>12} {:>14} {:>7} {:>10}{}",
            "backend",
            "state",
            "weight",
            "packets",
            "bytes",
            "share",
            "new flows",
            if checked { "  health" } else { "" }
        );
        for (j, b) in svc.backends.iter().enumerate() {
            let share = if svc.packets == 0 {
                0.0
            } else {
                100.0 * b.packets as f64 / svc.packets as f64
            };
            let old = old.and_then(|o| o.backends.get(j)).map(|o| o.packets);
            let health = match &b.health {
                Some(h) => format!("  {}", health_text(h)),
                None if checked => "  -".to_owned(),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "  {:<w$} {:<8} {:>6} {:>12} {:>14} {:>6.1}% {:>10}{}{}",
                b.address,
                b.state,
                b.weight,
                b.packets,
                b.bytes,
                share,
                b.new_flows,
                health,
                rate(old, b.packets)
            );
            if let Some(cpus) = &b.per_cpu {
                for (cpu, c) in cpus.iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "    cpu{cpu:<cw$} {:>12} {:>14} {:>18}",
                        c.packets,
                        c.bytes,
                        c.new_flows,
                        cw = w + 12
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "  {:<tw$} {:>12} {:>14}{}",
            "total",
            svc.packets,
            svc.bytes,
            rate(old.map(|o| o.packets), svc.packets),
            tw = w + 15
        );
    }
    let _ = writeln!(s, "\nreasons");
    for (name, count) in &now.reasons {
        let old = previous.and_then(|(p, _)| p.reasons.get(name).copied());
        let _ = write!(s, "  {name:<16} {count:>12}{}", rate(old, *count));
        if let Some(cpus) = now.reasons_per_cpu.as_ref().and_then(|m| m.get(name)) {
            let _ = write!(s, "   per CPU {cpus:?}");
        }
        s.push('\n');
    }
    let f = &now.flows;
    let _ = writeln!(
        s,
        "\nflows  {} of {} records  hits {}  misses {}  expired {}  backend_gone {}  evictions {}  (inserted {}, deleted {})",
        f.entries,
        f.capacity,
        f.hits,
        f.misses,
        f.expired,
        f.backend_gone,
        f.evictions,
        f.inserted,
        f.deleted
    );
    let q = &now.queries;
    let _ = writeln!(
        s,
        "queries  {} in flight of {} (peak {})  answered {}  timed out {}  insert failed {}  (inserted {}, retransmitted {}, fragment unmatched {})",
        q.in_flight,
        q.capacity,
        q.peak_in_flight,
        q.answered,
        q.timed_out,
        q.insert_failed,
        q.inserted,
        q.retransmitted,
        q.fragment_unmatched
    );
    if now.forward.mode == "redirect" {
        let events: Vec<String> = now
            .forward
            .events
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "forward redirect  {}", events.join("  "));
    }
    let c = &now.capacity;
    let _ = writeln!(
        s,
        "capacity  services {}  listeners {}  backends/service {}  flow records {}",
        c.services, c.listeners, c.backends_per_service, c.flow_records
    );
    let mut maps: Vec<&MapStats> = now.maps.iter().collect();
    maps.sort_by_key(|m| std::cmp::Reverse(m.memory_bytes));
    let each: Vec<String> = maps
        .iter()
        .map(|m| format!("{} {}", m.name, bytes_text(m.memory_bytes)))
        .collect();
    let _ = writeln!(
        s,
        "memory  {} in {} maps: {}",
        bytes_text(now.memory_bytes),
        now.maps.len(),
        each.join(", ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(address: &str, state: &str, health: Option<HealthStats>) -> BackendStats {
        BackendStats {
            address: address.to_owned(),
            state: state.to_owned(),
            weight: 1,
            packets: 10,
            bytes: 740,
            new_flows: 10,
            health,
            per_cpu: None,
        }
    }

    fn health(state: &str, rtt: Option<u64>, error: Option<&str>, transitions: u64) -> HealthStats {
        HealthStats {
            state: state.to_owned(),
            last_rtt_us: rtt,
            last_error: error.map(str::to_owned),
            transitions,
            probes_ok: 5,
            probes_failed: 3,
        }
    }

    #[test]
    fn health_reads_as_state_rtt_or_error_and_transitions() {
        assert_eq!(
            health_text(&health("up", Some(412), None, 0)),
            "up 0.4ms (0 transitions)"
        );
        assert_eq!(
            health_text(&health("down", Some(412), Some("no reply within 500ms"), 1)),
            "down: no reply within 500ms (1 transition)"
        );
        assert_eq!(
            health_text(&health("up", None, None, 2)),
            "up (2 transitions)"
        );
    }

    #[test]
    fn add_health_matches_members_by_address_and_skips_removed_slots() {
        let mut service = ServiceStats {
            name: "dns".to_owned(),
            protocol: "udp".to_owned(),
            select: "nth".to_owned(),
            listen: vec!["192.0.2.10:53".to_owned()],
            packets: 20,
            bytes: 1480,
            fail_open: false,
            backends: vec![
                backend("10.0.0.2:53", "active", None),
                backend("10.0.0.3:53", "removed", None),
                backend("10.0.0.4:53", "down", None),
            ],
        };
        let view = |address: &str, state: &str, h: HealthStats| BackendView {
            address: address.to_owned(),
            weight: 1,
            state: state.to_owned(),
            health: Some(h),
        };
        let views = [
            view("10.0.0.2:53", "active", health("up", Some(300), None, 0)),
            view("10.0.0.3:53", "active", health("up", Some(300), None, 0)),
            view(
                "10.0.0.4:53",
                "down",
                health("down", None, Some("refused"), 1),
            ),
        ];
        add_health(&mut service, true, &views);
        assert!(service.fail_open);
        let states: Vec<Option<&str>> = service
            .backends
            .iter()
            .map(|b| b.health.as_ref().map(|h| h.state.as_str()))
            .collect();
        assert_eq!(states, [Some("up"), None, Some("down")]);

        let snapshot = Snapshot {
            version: JSON_VERSION,
            interface: "eth3".to_owned(),
            running: true,
            persistent: false,
            forward: ForwardStats::default(),
            capacity: Capacity::default(),
            maps: Vec::new(),
            memory_bytes: 0,
            cpus: 2,
            services: vec![service],
            reasons: BTreeMap::new(),
            reasons_per_cpu: None,
            flows: FlowStats::default(),
            queries: QueryStats::default(),
        };
        let text = render(&snapshot, None);
        assert!(text.contains("FAILING OPEN"), "{text}");
        let line = |address: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(address))
                .unwrap_or_else(|| panic!("no line for {address}: {text}"))
                .to_owned()
        };
        assert!(
            line("10.0.0.2:53").ends_with("  up 0.3ms (0 transitions)"),
            "{text}"
        );
        assert!(line("10.0.0.3:53").ends_with("  -"), "{text}");
        assert!(
            line("10.0.0.4:53").ends_with("  down: refused (1 transition)"),
            "{text}"
        );
        assert!(text.contains("new flows  health"), "{text}");
    }

    #[test]
    fn ipv6_addresses_read_in_brackets_and_widen_the_table() {
        let endpoint = |ip: &str| {
            Endpoint::new(
                xdp_common::addr_of(ip.parse().unwrap()),
                53u16.to_be_bytes(),
                xdp_common::PROTO_UDP,
            )
        };
        assert_eq!(endpoint_string(&endpoint("0.0.0.0")), "*:53");
        assert_eq!(endpoint_string(&endpoint("::")), "[::]:53");
        assert_eq!(endpoint_string(&endpoint("192.0.2.10")), "192.0.2.10:53");
        assert_eq!(
            endpoint_string(&endpoint("2001:db8::10")),
            "[2001:db8::10]:53"
        );
        let long = "[2001:db8:ffff:ffff:ffff:ffff:ffff:1]:53";
        let service = ServiceStats {
            name: "dns6".to_owned(),
            protocol: "udp".to_owned(),
            select: "nth".to_owned(),
            listen: vec!["[2001:db8::10]:53".to_owned()],
            packets: 20,
            bytes: 1480,
            fail_open: false,
            backends: vec![
                backend(long, "active", None),
                backend("[2001:db8::2]:53", "active", None),
            ],
        };
        let snapshot = Snapshot {
            version: JSON_VERSION,
            interface: "eth3".to_owned(),
            running: true,
            persistent: false,
            cpus: 1,
            services: vec![service],
            reasons: BTreeMap::new(),
            reasons_per_cpu: None,
            flows: FlowStats::default(),
            queries: QueryStats::default(),
            forward: ForwardStats::default(),
            capacity: Capacity::default(),
            maps: Vec::new(),
            memory_bytes: 0,
        };
        let text = render(&snapshot, None);
        let column = |needle: &str| {
            let line = text.lines().find(|l| l.contains(needle)).unwrap();
            line.find(" active")
                .or_else(|| line.find(" state"))
                .unwrap()
        };
        assert_eq!(column(long), column("[2001:db8::2]:53"), "{text}");
        assert_eq!(column(long), column("backend "), "{text}");
        assert!(text.contains("listen [2001:db8::10]:53"), "{text}");
    }
}
