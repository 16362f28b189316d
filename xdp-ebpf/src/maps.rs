//! The program's maps. Layouts and capacities live in `xdp-common`; the loader
//! fills the configuration maps and pins all of them for `dnsteer stats`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use xdp_common::{
    BACKEND_SLOTS, Backend, Counter, Endpoint, FLOW_CAPACITY, FlowKey, FlowValue,
    MAX_BACKEND_SOURCES, MAX_LISTENERS, MAX_SERVICES, REASON_COUNT, ServiceConf,
};

/// Listen address (or `*`, address 0) -> service id.
#[map]
pub static SERVICES: HashMap<Endpoint, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// Service id -> backend count, selection mode and name.
#[map]
pub static SERVICE_CONF: Array<ServiceConf> = Array::with_max_entries(MAX_SERVICES, 0);

/// `backend_slot(service, i)` -> backend address and port.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(BACKEND_SLOTS, 0);

/// `backend_slot(service, i)` -> packets and bytes steered there, per CPU.
#[map]
pub static BACKEND_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(BACKEND_SLOTS, 0);

/// Backend (address, port, protocol) -> number of slots using it: the sources
/// whose packets the TC side treats as replies.
#[map]
pub static BACKEND_SOURCES: HashMap<Endpoint, u32> =
    HashMap::with_max_entries(MAX_BACKEND_SOURCES, 0);

/// Service id -> the `nth` cursor, per CPU so no two CPUs ever contend for it.
#[map]
pub static NTH_STATE: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// (backend, client) -> the address the client asked. Shared by all CPUs: the
/// answer may leave on another CPU than the query arrived on.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(FLOW_CAPACITY, 0);

/// `Reason` -> packets, per CPU.
#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
