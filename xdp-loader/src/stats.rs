//! `dnsteer stats`: reads a running instance's pinned maps and says where every
//! packet went.
//!
//! The JSON form (`--json`) is a stable interface; `Snapshot` is its schema and
//! README.md documents it. Fields are only ever added.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use xdp_common::{
    Backend, Counter, Endpoint, MAX_BACKENDS_PER_SERVICE, PROTO_UDP, Reason, SelectMode,
    ServiceConf, backend_slot, names,
};

use crate::pins::Instance;

/// Version of the JSON shape; bumped only for incompatible changes.
pub const JSON_VERSION: u32 = 1;

/// Everything `dnsteer stats` reports, as one consistent-enough read of the maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub interface: String,
    /// False when the pins were left by an instance that is no longer running.
    pub running: bool,
    pub cpus: usize,
    pub services: Vec<ServiceStats>,
    /// Packets per reason (see `Reason::name`), summed over CPUs.
    pub reasons: BTreeMap<String, u64>,
    /// Packets per reason per CPU; only with `--per-cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons_per_cpu: Option<BTreeMap<String, Vec<u64>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStats {
    pub name: String,
    pub protocol: String,
    pub select: String,
    /// `ADDR:PORT`, `*:PORT` for a wildcard listen; sorted.
    pub listen: Vec<String>,
    /// Sums over the backends.
    pub packets: u64,
    pub bytes: u64,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    /// `ADDR:PORT`.
    pub address: String,
    pub packets: u64,
    pub bytes: u64,
    /// One entry per possible CPU; only with `--per-cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_cpu: Option<Vec<CpuCounter>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuCounter {
    pub packets: u64,
    pub bytes: u64,
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
    let backends: Array<MapData, Backend> = typed(instance, names::BACKENDS)?;
    let backend_stats: PerCpuArray<MapData, Counter> = typed(instance, names::BACKEND_STATS)?;
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
        let mut stats = ServiceStats {
            name: name_of(&conf),
            protocol: if conf.proto == PROTO_UDP {
                "udp"
            } else {
                "unknown"
            }
            .to_owned(),
            select: if conf.select == SelectMode::Random as u32 {
                "random"
            } else {
                "nth"
            }
            .to_owned(),
            listen: listen.remove(&id).map(sorted).unwrap_or_default(),
            packets: 0,
            bytes: 0,
            backends: Vec::new(),
        };
        for index in 0..conf.backend_count.min(MAX_BACKENDS_PER_SERVICE) {
            let slot = backend_slot(id, index);
            let backend = backends
                .get(&slot, 0)
                .with_context(|| format!("reading backend slot {slot}"))?;
            let cpus = backend_stats
                .get(&slot, 0)
                .with_context(|| format!("reading counters of slot {slot}"))?;
            let cpus: Vec<CpuCounter> = cpus
                .iter()
                .map(|c| CpuCounter {
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect();
            let (packets, bytes) = cpus
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            stats.packets += packets;
            stats.bytes += bytes;
            let address = SocketAddrV4::new(
                Ipv4Addr::from(backend.addr),
                u16::from_be_bytes(backend.port),
            )
            .to_string();
            stats.backends.push(BackendStats {
                address,
                packets,
                bytes,
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
    Ok(Snapshot {
        version: JSON_VERSION,
        interface: instance.iface.clone(),
        running: instance.live,
        cpus,
        services: out,
        reasons: totals,
        reasons_per_cpu: per_cpu.then_some(split),
    })
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn name_of(conf: &ServiceConf) -> String {
    let end = conf
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(conf.name.len());
    String::from_utf8_lossy(&conf.name[..end]).into_owned()
}

fn endpoint_string(e: &Endpoint) -> String {
    let port = u16::from_be_bytes(e.port);
    if e.addr == [0; 4] {
        format!("*:{port}")
    } else {
        format!("{}:{port}", Ipv4Addr::from(e.addr))
    }
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
    let state = if now.running {
        ""
    } else {
        " — NOT RUNNING, counters from pins left behind"
    };
    let _ = writeln!(s, "dnsteer on {} ({} CPUs){state}", now.interface, now.cpus);
    for (i, svc) in now.services.iter().enumerate() {
        let old = previous.and_then(|(p, _)| p.services.get(i));
        let _ = writeln!(
            s,
            "\nservice {}  {}  select {}  listen {}",
            svc.name,
            svc.protocol,
            svc.select,
            svc.listen.join(", ")
        );
        let _ = writeln!(
            s,
            "  {:<24} {:>12} {:>14} {:>7}",
            "backend", "packets", "bytes", "share"
        );
        for (j, b) in svc.backends.iter().enumerate() {
            let share = if svc.packets == 0 {
                0.0
            } else {
                100.0 * b.packets as f64 / svc.packets as f64
            };
            let old = old.and_then(|o| o.backends.get(j)).map(|o| o.packets);
            let _ = writeln!(
                s,
                "  {:<24} {:>12} {:>14} {:>6.1}%{}",
                b.address,
                b.packets,
                b.bytes,
                share,
                rate(old, b.packets)
            );
            if let Some(cpus) = &b.per_cpu {
                for (cpu, c) in cpus.iter().enumerate() {
                    let _ = writeln!(s, "    cpu{cpu:<19} {:>12} {:>14}", c.packets, c.bytes);
                }
            }
        }
        let _ = writeln!(
            s,
            "  {:<24} {:>12} {:>14}{}",
            "total",
            svc.packets,
            svc.bytes,
            rate(old.map(|o| o.packets), svc.packets)
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
    s
}
