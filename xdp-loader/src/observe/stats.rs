//! `dnsteer stats`: where every packet went, as read from a running
//! instance's pinned maps.
//!
//! The JSON form (`--json`) is a stable interface; `Snapshot` is its schema and
//! README.md documents it. Fields are only ever added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::{
    read::read,
    text::{address_width, bytes_text, health_text, render},
};
use crate::control::BackendView;
pub use crate::{control::KubernetesStats, health::HealthStats};

/// Version of the JSON shape; bumped only for incompatible changes.
pub const JSON_VERSION: u32 = 1;

/// Everything `dnsteer stats` reports, as one consistent-enough read of the maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The upper bounds, in seconds, of the answer latency buckets
    /// (`backends[].dns.latency_buckets`), 16.384 µs doubling to 4.29 s.
    #[serde(default)]
    pub latency_bucket_le_seconds: Vec<f64>,
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

// Its floats are fixed bounds and sums of whole nanoseconds, never NaN.
impl Eq for Snapshot {}

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

/// The affinity tables (UDP flows, TCP connections): their size and what
/// happened to their records, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    /// Records the tables hold at most (one per UDP flow, two per TCP connection).
    pub capacity: u32,
    /// Records present now, from the counters: `inserted - deleted`, at most
    /// `capacity` (the table is not walked).
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
    /// Records the full table dropped to make room: `inserted - deleted - entries`.
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
    /// The Kubernetes watch feeding the service; null for a service with
    /// `backends` in the config (and without a daemon to ask).
    #[serde(default)]
    pub kubernetes: Option<KubernetesStats>,
    /// The socket programs' choices for the node's own clients (`[sockets]`);
    /// null when the instance has no socket counters.
    #[serde(default)]
    pub sockets: Option<SocketStats>,
}

/// A service's choices by the socket programs: counted once per `connect()`
/// or unconnected `sendmsg()`, where the XDP counters count packets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketStats {
    /// Sums over the backends.
    pub choices: u64,
    pub sendmsg: u64,
    pub connect_udp: u64,
    pub connect_tcp: u64,
    /// Backends with at least one choice, in slot order.
    pub backends: Vec<SocketBackend>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketBackend {
    /// `ADDR:PORT`, `[ADDR]:PORT` for IPv6.
    pub address: String,
    pub sendmsg: u64,
    pub connect_udp: u64,
    pub connect_tcp: u64,
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
    /// Its UDP queries and their answers, as the kernel saw them pass.
    #[serde(default)]
    pub dns: BackendDns,
    /// One entry per possible CPU; only with `--per-cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_cpu: Option<Vec<CpuCounter>>,
}

/// What a backend did with the UDP queries steered to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendDns {
    /// Query records written for it.
    pub queries: u64,
    /// Answers that found their query's record.
    pub answers: u64,
    /// Queries removed unanswered after `[flows] query_timeout`.
    pub timeouts: u64,
    /// Queries in flight: `queries - answers - timeouts`.
    pub in_flight: u64,
    /// Answers by RCODE: `noerror`, `nxdomain`, `servfail`, `refused`, `other`.
    pub rcodes: BTreeMap<String, u64>,
    /// Answers by latency: entry `k` counts those within
    /// `latency_bucket_le_seconds[k]` of their query (and above the bound
    /// before); the last entry, one more than the bounds, the slower ones.
    pub latency_buckets: Vec<u64>,
    /// The answers' latencies summed, in seconds.
    pub latency_sum_seconds: f64,
}

// Sums of whole nanoseconds, never NaN.
impl Eq for BackendDns {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuCounter {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
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
