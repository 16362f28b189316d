//! The program's maps. Layouts and capacities live in `xdp-common`; the loader
//! fills the configuration maps, changes them live, and pins all of them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use xdp_common::{
    BACKEND_SLOTS, Backend, BackendCounter, DnsStats, Endpoint, FLOW_CAPACITY, FLOW_EVENT_COUNT,
    FORWARD_EVENT_COUNT, FRAGMENT_CAPACITY, FlowKey, FlowSettings, FlowValue, ForwardConf,
    FragmentKey, FragmentValue, MAX_BACKEND_SOURCES, MAX_LISTENERS, MAX_SERVICES,
    QUERY_EVENT_COUNT, QueryKey, QueryValue, REASON_COUNT, RING_ENTRIES, Ring, SOCK_CAPACITY,
    ServiceConf, SockCounter, SockKey,
};

/// Listen address (or `*`, address 0), port and protocol -> service id.
#[map]
pub static SERVICES: HashMap<Endpoint, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// Service id -> name and protocols (for stats), and whether the id is in use.
#[map]
pub static SERVICE_CONF: Array<ServiceConf> = Array::with_max_entries(MAX_SERVICES, 0);

/// `ring_key(service, generation)` -> the backends new flows are spread over.
#[map]
pub static RINGS: Array<Ring> = Array::with_max_entries(RING_ENTRIES, 0);

/// Service id -> the generation of its ring in use (0 or 1).
#[map]
pub static ACTIVE_RING: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

/// `backend_slot(service, i)` -> backend address, port, state and weight.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(BACKEND_SLOTS, 0);

/// `backend_slot(service, i)` -> packets, bytes and new flows, per CPU.
#[map]
pub static BACKEND_STATS: PerCpuArray<BackendCounter> =
    PerCpuArray::with_max_entries(BACKEND_SLOTS, 0);

/// Backend (address, port, protocol) -> number of slots using it: tells a reply
/// that lost its flow record (`reply_no_flow`) from unrelated egress traffic.
#[map]
pub static BACKEND_SOURCES: HashMap<Endpoint, u32> =
    HashMap::with_max_entries(MAX_BACKEND_SOURCES, 0);

/// Service id -> the `nth` cursor into its ring, per CPU so no two CPUs contend.
#[map]
pub static NTH_STATE: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// TCP connections: one record per direction, for affinity and reply
/// translation. Shared by all CPUs, since a reply may leave on another CPU
/// than its query arrived on. The loader sets the capacity from `[flows] size`.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(FLOW_CAPACITY, 0);

/// UDP flow affinity: which backend a client port's queries to a service
/// address go to while it keeps asking. Losing a record costs only a new pick,
/// never an answer, so an LRU fits.
#[map]
pub static AFFINITY: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(FLOW_CAPACITY, 0);

/// UDP queries in flight, each consumed by its answer. A plain hash, not an
/// LRU: a full table refuses a new query's record (counted) rather than evict
/// one whose answer is still coming. The loader removes records older than
/// the query timeout.
#[map]
pub static QUERIES: HashMap<QueryKey, QueryValue> = HashMap::with_max_entries(FLOW_CAPACITY, 0);

/// Later fragments of a translated answer -> the source its first fragment got.
#[map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentValue> =
    LruHashMap::with_max_entries(FRAGMENT_CAPACITY, 0);

/// `QueryEvent` -> count, per CPU.
#[map]
pub static QUERY_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(QUERY_EVENT_COUNT, 0);

/// `[0]`: the idle timeouts.
#[map]
pub static FLOW_SETTINGS: Array<FlowSettings> = Array::with_max_entries(1, 0);

/// `FlowEvent` -> count, per CPU.
#[map]
pub static FLOW_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FLOW_EVENT_COUNT, 0);

/// `Reason` -> packets, per CPU.
#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// `[0]`: `forward = "stack"` or `"redirect"`, and where replies go.
#[map]
pub static FORWARD: Array<ForwardConf> = Array::with_max_entries(1, 0);

/// `ForwardEvent` -> count, per CPU.
#[map]
pub static FORWARD_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FORWARD_EVENT_COUNT, 0);

/// `backend_slot(service, i)` -> queries, answers by RCODE class and answer
/// latency, per CPU.
#[map]
pub static BACKEND_DNS: PerCpuArray<DnsStats> = PerCpuArray::with_max_entries(BACKEND_SLOTS, 0);

/// `backend_slot(service, i)` -> UDP query records written for it less the
/// answers that consumed them: one counter shared by all CPUs, changed with
/// atomic adds (a query and its answer may run on different CPUs). Less
/// `TIMED_OUT`, the backend's queries in flight.
#[map]
pub static OUTSTANDING: Array<u64> = Array::with_max_entries(BACKEND_SLOTS, 0);

/// `backend_slot(service, i)` -> records the loader removed unanswered after
/// the query timeout. Written by the loader only.
#[map]
pub static TIMED_OUT: Array<u64> = Array::with_max_entries(BACKEND_SLOTS, 0);

/// (socket cookie, backend) -> the service address and port the socket asked
/// for: what `recvmsg` and `getpeername` hand back in place of the backend's.
/// An LRU: a socket long closed makes room for a new one.
#[map]
pub static SOCK_REVERSE: LruHashMap<SockKey, Endpoint> =
    LruHashMap::with_max_entries(SOCK_CAPACITY, 0);

/// `backend_slot(service, i)` -> the socket programs' choices of it.
#[map]
pub static SOCK_STATS: Array<SockCounter> = Array::with_max_entries(BACKEND_SLOTS, 0);
