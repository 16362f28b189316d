//! Map layouts shared by `xdp-ebpf` and `xdp-loader`.
//!
//! Addresses and ports are kept in network byte order exactly as they sit in the
//! packet, so the kernel side copies them without swapping. Every type carries a
//! size assertion: a layout change is a compile error on both sides at once.
//!
//! One set of maps serves both families: an address is 16 bytes ([`Addr`], four
//! 32-bit words), an IPv4 address stored as its IPv4-mapped form
//! `::ffff:a.b.c.d` (RFC 4291 2.5.5.2), as Katran's and Cilium's 16-byte
//! address unions do. The parser
//! refuses IPv6 packets that carry a mapped address, so the two never meet.

/// Map names, as the kernel side declares them and the loader pins them.
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    pub const SERVICE_CONF: &str = "SERVICE_CONF";
    pub const RINGS: &str = "RINGS";
    pub const ACTIVE_RING: &str = "ACTIVE_RING";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const BACKEND_SOURCES: &str = "BACKEND_SOURCES";
    pub const NTH_STATE: &str = "NTH_STATE";
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_SETTINGS: &str = "FLOW_SETTINGS";
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    pub const REASONS: &str = "REASONS";
    pub const FORWARD: &str = "FORWARD";
    pub const FORWARD_EVENTS: &str = "FORWARD_EVENTS";
    pub const QUERIES: &str = "QUERIES";
    pub const AFFINITY: &str = "AFFINITY";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const QUERY_EVENTS: &str = "QUERY_EVENTS";
    pub const BACKEND_DNS: &str = "BACKEND_DNS";
    pub const OUTSTANDING: &str = "OUTSTANDING";
    // The kernel keeps 15 bytes of a map's name, which is how stats finds a
    // map through an attached program: keep every name within them.
    pub const TIMED_OUT: &str = "TIMED_OUT";
    pub const SOCK_REVERSE: &str = "SOCK_REVERSE";
    pub const SOCK_STATS: &str = "SOCK_STATS";

    const _: () = {
        let mut i = 0;
        while i < ALL.len() {
            assert!(
                ALL[i].len() <= 15,
                "a map name longer than the kernel keeps"
            );
            i += 1;
        }
    };

    /// Every map the loader pins, in a fixed order.
    pub const ALL: [&str; 23] = [
        SERVICES,
        SERVICE_CONF,
        RINGS,
        ACTIVE_RING,
        BACKENDS,
        BACKEND_STATS,
        BACKEND_SOURCES,
        NTH_STATE,
        FLOWS,
        FLOW_SETTINGS,
        FLOW_EVENTS,
        REASONS,
        FORWARD,
        FORWARD_EVENTS,
        QUERIES,
        AFFINITY,
        FRAGMENTS,
        QUERY_EVENTS,
        BACKEND_DNS,
        OUTSTANDING,
        TIMED_OUT,
        SOCK_REVERSE,
        SOCK_STATS,
    ];
}

/// Services (named groups of listen addresses sharing one backend set).
pub const MAX_SERVICES: u32 = 256;
/// Listen entries (address, port, protocol) over all services.
pub const MAX_LISTENERS: u32 = 1024;
/// Backends one service can hold, counting removed ones whose slot is not reused yet.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 64;
/// Backend slots: service `id` owns slots `id * MAX_BACKENDS_PER_SERVICE ..`.
pub const BACKEND_SLOTS: u32 = MAX_SERVICES * MAX_BACKENDS_PER_SERVICE;
/// Distinct backend endpoints whose replies the TC side recognises.
pub const MAX_BACKEND_SOURCES: u32 = BACKEND_SLOTS;
/// Entries of one selection ring: 64 backends at the largest weight fit.
pub const RING_SIZE: u32 = 8192;
/// The largest backend weight; `MAX_BACKENDS_PER_SERVICE * MAX_WEIGHT <= RING_SIZE`.
pub const MAX_WEIGHT: u32 = 100;
const _: () = assert!(MAX_BACKENDS_PER_SERVICE * MAX_WEIGHT <= RING_SIZE);
/// Two rings (generations) per service.
pub const RING_ENTRIES: u32 = MAX_SERVICES * 2;
/// Default capacity of each state table (`[flows] size`): UDP queries in
/// flight, UDP flow affinity records, TCP connection records (two per connection).
pub const FLOW_CAPACITY: u32 = 65536;
/// Fragmented answers whose later fragments are being translated at once.
pub const FRAGMENT_CAPACITY: u32 = 8192;
/// Sockets of the node's own clients whose service address the socket
/// programs remember (`SOCK_REVERSE`), one entry per socket and backend.
pub const SOCK_CAPACITY: u32 = 65536;
/// Bytes of a service name kept in the kernel, NUL-padded.
pub const SERVICE_NAME_LEN: usize = 32;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An IPv4 or IPv6 address as the maps hold it: four 32-bit words, each the
/// four address bytes as they sit in the packet (network byte order in memory,
/// `u32::from_ne_bytes`), like Katran's `__be32 srcv6[4]`; IPv4 as
/// `::ffff:a.b.c.d`. Words rather than 16 bytes: the BPF backend moves and
/// compares a byte array a byte at a time, and spills each byte to a stack slot
/// of its own, which a 512-byte stack cannot afford.
pub type Addr = [u32; 4];

/// The third word of an IPv4-mapped address: bytes `00 00 ff ff`.
const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// `::ffff:0.0.0.0`: a `*` (any IPv4 address) listen entry in `SERVICES`.
pub const ANY_IPV4: Addr = ipv4_mapped([0; 4]);
/// `::`: a `[::]` (any IPv6 address) listen entry in `SERVICES`.
pub const ANY_IPV6: Addr = [0; 4];

/// The wildcard listen address of a family: `ANY_IPV6` or `ANY_IPV4`.
#[inline(always)]
pub const fn any_addr(ipv6: bool) -> Addr {
    // One word differs; written so, the BPF backend stores four words rather
    // than branching to a `memset` call for the all-zero one.
    [0, 0, if ipv6 { 0 } else { MAPPED }, 0]
}

/// The IPv4-mapped form of an IPv4 address.
#[inline(always)]
pub const fn ipv4_mapped(a: [u8; 4]) -> Addr {
    [0, 0, MAPPED, u32::from_ne_bytes(a)]
}

/// Whether `a` is an IPv4 address (IPv4-mapped).
#[inline(always)]
pub const fn is_ipv4_mapped(a: &Addr) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == MAPPED
}

/// The IPv4 address in the last word of an IPv4-mapped `a`.
#[inline(always)]
pub const fn ipv4_of(a: &Addr) -> [u8; 4] {
    a[3].to_ne_bytes()
}

/// `a == b`, word by word: an array compare may become a call to `bcmp`,
/// which BPF programs cannot make.
#[inline(always)]
pub const fn same_addr(a: &Addr, b: &Addr) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// The address whose 16 bytes, in packet order, are `o`.
#[inline(always)]
pub const fn addr_from_octets(o: [u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The 16 bytes of `a`, in packet order.
#[inline(always)]
pub const fn octets(a: &Addr) -> [u8; 16] {
    let [w0, w1, w2, w3] = [
        a[0].to_ne_bytes(),
        a[1].to_ne_bytes(),
        a[2].to_ne_bytes(),
        a[3].to_ne_bytes(),
    ];
    [
        w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3], w3[0],
        w3[1], w3[2], w3[3],
    ]
}

/// An address as the maps hold it.
pub fn addr_of(ip: core::net::IpAddr) -> Addr {
    match ip {
        core::net::IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        core::net::IpAddr::V6(v6) => addr_from_octets(v6.octets()),
    }
}

/// The address the maps hold: IPv4 for an IPv4-mapped one, IPv6 otherwise.
pub fn ip_of(a: Addr) -> core::net::IpAddr {
    if is_ipv4_mapped(&a) {
        core::net::IpAddr::V4(ipv4_of(&a).into())
    } else {
        core::net::IpAddr::V6(octets(&a).into())
    }
}

/// The slot of backend `index` of service `service_id` in `BACKENDS` and `BACKEND_STATS`.
#[inline(always)]
pub const fn backend_slot(service_id: u32, index: u32) -> u32 {
    service_id * MAX_BACKENDS_PER_SERVICE + index
}

/// The `RINGS` index of generation `generation` (0 or 1) of service `service_id`.
#[inline(always)]
pub const fn ring_key(service_id: u32, generation: u32) -> u32 {
    service_id * 2 + (generation & 1)
}

/// An (address, port, protocol) triple: a listen address in `SERVICES`, a backend's
/// reply source in `BACKEND_SOURCES`. In `SERVICES`, `ANY_IPV4` means "any IPv4
/// address arriving on the interface" (a `*` listen) and `ANY_IPV6` any IPv6 one
/// (a `[::]` listen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Addr,
    /// Port, network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);

impl Endpoint {
    #[inline(always)]
    pub const fn new(addr: Addr, port: [u8; 2], proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// How a service picks a backend for a new flow.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectMode {
    /// Per-CPU round robin over the ring: the `--every n --packet 0` cascade,
    /// smooth weighted round robin when weights differ.
    Nth = 0,
    /// A uniform draw over the ring: each backend in proportion to its weight.
    Random = 1,
    /// The backend with the fewest UDP queries in flight for its weight
    /// (`OUTSTANDING`), ties to the heavier backend, then in turn.
    LeastOutstanding = 2,
}

/// `SERVICE_CONF[id]`: the service's name and protocols, for `dnsteer stats`. The
/// name lives here rather than in a map of its own so that every map stats reads
/// is reachable from the attached program (by id), also from a mount namespace
/// that cannot see the pins. The data path reads only `in_use`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceConf {
    /// `PROTO_MASK_*` bits: the transports the service balances.
    pub protocols: u8,
    /// 1 while the id is in use.
    pub in_use: u8,
    pub _pad: [u8; 6],
    /// UTF-8, NUL-padded.
    pub name: [u8; SERVICE_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<ServiceConf>() == 40);

impl ServiceConf {
    /// The name's bytes, without the NUL padding.
    pub fn name_bytes(&self) -> &[u8] {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        &self.name[..end]
    }
}

pub const PROTO_MASK_UDP: u8 = 1;
pub const PROTO_MASK_TCP: u8 = 2;

impl Default for ServiceConf {
    fn default() -> Self {
        Self {
            protocols: 0,
            in_use: 0,
            _pad: [0; 6],
            name: [0; SERVICE_NAME_LEN],
        }
    }
}

/// `RINGS[ring_key(id, generation)]`: the backends new flows of service `id` are
/// spread over. Each backend's local index (its slot minus the service's first
/// slot) appears `weight` times, in smooth weighted round robin order; `nth`
/// walks it with a per-CPU cursor, `random` draws an entry.
///
/// Only the generation named by `ACTIVE_RING[id]` is read; the loader writes the
/// other one and then flips the index (see `xdp-loader/src/live.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    /// Entries in use, `0..=RING_SIZE`; 0 means no backend takes new flows.
    pub len: u32,
    /// A `SelectMode` discriminant.
    pub select: u32,
    pub slots: [u8; RING_SIZE as usize],
}
const _: () = assert!(core::mem::size_of::<Ring>() == 8 + RING_SIZE as usize);

impl Default for Ring {
    fn default() -> Self {
        Self {
            len: 0,
            select: SelectMode::Nth as u32,
            slots: [0; RING_SIZE as usize],
        }
    }
}

/// The lifecycle of a backend slot.
pub mod backend_state {
    /// Never used.
    pub const EMPTY: u8 = 0;
    /// Takes new flows (it is in the active ring) and keeps its flows.
    pub const ACTIVE: u8 = 1;
    /// Weight 0: takes no new flows, keeps its flows until they go idle.
    pub const DRAINING: u8 = 2;
    /// Removed: its flows move on their next packet; counters kept for stats
    /// until the slot is reused.
    pub const REMOVED: u8 = 3;
    /// Failed its health checks: takes no new flows and its flows move on their
    /// next packet, like `REMOVED`, but it stays a member and comes back when
    /// the probes succeed again.
    pub const DOWN: u8 = 4;
}

/// `BACKENDS[slot]`: where a steered packet goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    /// Port, network byte order.
    pub port: [u8; 2],
    /// A `backend_state` value.
    pub state: u8,
    pub _pad: u8,
    /// The configured weight (informational: the ring carries the selection).
    pub weight: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

impl Backend {
    /// Whether flows recorded for this backend may keep using it.
    #[inline(always)]
    pub const fn keeps_flows(&self) -> bool {
        self.state == backend_state::ACTIVE || self.state == backend_state::DRAINING
    }
}

/// `SOCK_REVERSE` key: a socket (its cookie) that the socket programs sent
/// to a backend in place of a service address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockKey {
    pub cookie: u64,
    /// The backend's address.
    pub addr: Addr,
    /// The backend's port, network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 32);

impl SockKey {
    #[inline(always)]
    pub const fn new(cookie: u64, addr: Addr, port: [u8; 2]) -> Self {
        Self {
            cookie,
            addr,
            port,
            _pad: [0; 6],
        }
    }
}

/// `SOCK_STATS[slot]`: a backend's choices by the socket programs, shared by
/// all CPUs (atomic adds: one per `sendmsg` or `connect`, not per packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockCounter {
    /// Unconnected UDP sends drawn for this backend.
    pub sendmsg: u64,
    /// UDP sockets connected to it.
    pub connect_udp: u64,
    /// TCP connections made to it.
    pub connect_tcp: u64,
}
const _: () = assert!(core::mem::size_of::<SockCounter>() == 24);

/// Per backend, one per CPU: packets and bytes steered there, and flows started there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendCounter {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<BackendCounter>() == 24);

/// Buckets of the answer latency histogram: bucket `k` (0..=18) counts
/// answers within `LATENCY_BASE_NS << k` of their query (16.4 µs to 4.3 s,
/// doubling), the last one everything slower.
pub const LATENCY_BUCKETS: usize = 20;
/// The first bucket's upper bound: 2^14 ns.
pub const LATENCY_BASE_NS: u64 = 1 << 14;

/// The histogram bucket of an answer `ns` after its query.
#[inline(always)]
pub const fn latency_bucket(ns: u64) -> usize {
    // ceil(log2(ns / base)), no loop: the BPF backend expands leading_zeros.
    let units = (ns.saturating_sub(1)) >> 14;
    let k = if units == 0 {
        0
    } else {
        64 - units.leading_zeros() as usize
    };
    if k < LATENCY_BUCKETS - 1 {
        k
    } else {
        LATENCY_BUCKETS - 1
    }
}

/// An answer's RCODE class, as `DnsStats::rcodes` counts them.
pub mod rcode_class {
    pub const NOERROR: usize = 0;
    pub const NXDOMAIN: usize = 1;
    pub const SERVFAIL: usize = 2;
    pub const REFUSED: usize = 3;
    pub const OTHER: usize = 4;
    pub const COUNT: usize = 5;
    pub const NAMES: [&str; COUNT] = ["noerror", "nxdomain", "servfail", "refused", "other"];

    /// The class of the 4-bit RCODE in a DNS header (RFC 1035 4.1.1).
    #[inline(always)]
    pub const fn of(rcode: u8) -> usize {
        match rcode & 0x0f {
            0 => NOERROR,
            3 => NXDOMAIN,
            2 => SERVFAIL,
            5 => REFUSED,
            _ => OTHER,
        }
    }
}

/// `BACKEND_DNS[slot]`, one per CPU: what a backend did with the UDP queries
/// steered to it, as the kernel sees them pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Query records written for it.
    pub queries: u64,
    /// Answers that found their query's record.
    pub answers: u64,
    /// Those answers by RCODE class (`rcode_class`).
    pub rcodes: [u64; rcode_class::COUNT],
    /// Their latency, bucketed by `latency_bucket`.
    pub latency: [u64; LATENCY_BUCKETS],
    /// The sum of their latencies, for the mean.
    pub latency_sum_ns: u64,
}
const _: () =
    assert!(core::mem::size_of::<DnsStats>() == 8 * (3 + rcode_class::COUNT + LATENCY_BUCKETS));

impl DnsStats {
    /// Adds `other`'s counts: one CPU's, when summing over CPUs.
    pub fn add(&mut self, other: &DnsStats) {
        self.queries += other.queries;
        self.answers += other.answers;
        self.latency_sum_ns += other.latency_sum_ns;
        for (sum, n) in self.rcodes.iter_mut().zip(other.rcodes) {
            *sum += n;
        }
        for (sum, n) in self.latency.iter_mut().zip(other.latency) {
            *sum += n;
        }
    }
}

/// Which way a `FLOWS` record is looked up.
pub mod direction {
    /// Client -> service address: the key of a query, the value names the backend.
    pub const QUERY: u8 = 0;
    /// Backend -> client: the key of a reply, the value names the service address.
    pub const REPLY: u8 = 1;
}

/// `FLOWS` key: a packet's 5-tuple as it is seen, and which way it goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: Addr,
    pub dst_addr: Addr,
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub proto: u8,
    /// A `direction` value.
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The key of a packet from `src:sport` to `dst:dport`, looked up as `direction`.
    #[inline(always)]
    pub const fn new(src: (Addr, [u8; 2]), dst: (Addr, [u8; 2]), proto: u8, direction: u8) -> Self {
        Self {
            src_addr: src.0,
            dst_addr: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            proto,
            direction,
            _pad: [0; 2],
        }
    }
}

/// `FLOWS` value. For a query record `addr:port` is the backend; for a reply
/// record it is the service address the client asked, which the reply must come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// `bpf_ktime_get_ns` of the flow's last query packet.
    pub last_seen: u64,
    pub addr: Addr,
    pub port: [u8; 2],
    /// `FLOW_CLOSING` once a FIN was seen.
    pub flags: u8,
    pub _pad: u8,
    /// The backend's slot.
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 32);

impl FlowValue {
    /// A fresh record naming `addr:port` (backend slot `slot`), seen at `now`.
    #[inline(always)]
    pub const fn new(now: u64, addr: Addr, port: [u8; 2], slot: u32) -> Self {
        Self {
            last_seen: now,
            addr,
            port,
            flags: 0,
            _pad: 0,
            slot,
        }
    }
}

/// A TCP flow that saw a FIN: kept only for `tcp_closing_ns` after its last packet.
pub const FLOW_CLOSING: u8 = 1;

/// `FLOW_SETTINGS[0]`: idle timeouts, in nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSettings {
    pub udp_idle_ns: u64,
    pub tcp_idle_ns: u64,
    pub tcp_closing_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowSettings>() == 24);

/// `QUERIES` key: a UDP query in flight, as its answer will be seen (backend
/// to client), told apart from other queries on the same ports by its DNS
/// message ID. The answer consumes the record, so the table holds only the
/// queries a backend has not answered yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueryKey {
    pub backend: Addr,
    pub client: Addr,
    pub backend_port: [u8; 2],
    pub client_port: [u8; 2],
    /// The DNS message ID as it sits in the packet; 0 for a datagram too
    /// short to carry one.
    pub id: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<QueryKey>() == 40);

impl QueryKey {
    #[inline(always)]
    pub const fn new(backend: (Addr, [u8; 2]), client: (Addr, [u8; 2]), id: [u8; 2]) -> Self {
        Self {
            backend: backend.0,
            client: client.0,
            backend_port: backend.1,
            client_port: client.1,
            id,
            _pad: [0; 2],
        }
    }
}

/// `QUERIES` value: where the answer must appear to come from, and when the
/// query was sent on (for the query timeout and the answer's latency).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryValue {
    /// `bpf_ktime_get_ns` when the query was steered.
    pub sent_ns: u64,
    /// The service address the client asked.
    pub asked: Addr,
    pub asked_port: [u8; 2],
    pub _pad: [u8; 2],
    /// The backend's slot.
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<QueryValue>() == 32);

/// `FRAGMENTS` key: one fragmented datagram, as its later fragments (which
/// carry no ports) identify it: source, destination and fragment ID (IPv4's
/// 16 bits, IPv6's 32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FragmentKey>() == 40);

/// `FRAGMENTS` value: the source address the datagram's first fragment was
/// given, which every later fragment gets too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentValue {
    pub src: Addr,
}
const _: () = assert!(core::mem::size_of::<FragmentValue>() == 16);

/// What happened to a UDP query's record: the index into the per-CPU
/// `QUERY_EVENTS` counters. Queries in flight are `inserted - answered -
/// timed_out` (the loader removes and counts records past the query timeout).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryEvent {
    /// A query's record was written: it is in flight.
    Inserted = 0,
    /// An answer found its query's record and consumed it.
    Answered = 1,
    /// A query found a record under its key already (a retransmission with
    /// the same ID from the same port): the record was rewritten, nothing added.
    Retransmitted = 2,
    /// The table was full: the query was steered without a record, so its
    /// answer leaves untranslated (and counts as `reply_no_flow`).
    InsertFailed = 3,
    /// A later fragment of an answer whose first fragment was not seen (or
    /// whose fragment record was evicted): left untranslated.
    FragmentUnmatched = 4,
    /// Kept by the loader (CPU 0's slot): records it removed unanswered
    /// after the query timeout.
    TimedOut = 5,
    /// Kept by the loader (CPU 0's slot): the most queries in flight it has
    /// seen (sampled every 100 ms), a gauge rather than a count.
    PeakInFlight = 6,
}

pub const QUERY_EVENT_COUNT: u32 = 7;

impl QueryEvent {
    pub const ALL: [QueryEvent; QUERY_EVENT_COUNT as usize] = [
        QueryEvent::Inserted,
        QueryEvent::Answered,
        QueryEvent::Retransmitted,
        QueryEvent::InsertFailed,
        QueryEvent::FragmentUnmatched,
        QueryEvent::TimedOut,
        QueryEvent::PeakInFlight,
    ];

    /// The stable name used in `dnsteer stats` text and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            QueryEvent::Inserted => "inserted",
            QueryEvent::Answered => "answered",
            QueryEvent::Retransmitted => "retransmitted",
            QueryEvent::InsertFailed => "insert_failed",
            QueryEvent::FragmentUnmatched => "fragment_unmatched",
            QueryEvent::TimedOut => "timed_out",
            QueryEvent::PeakInFlight => "peak_in_flight",
        }
    }
}

/// What happened to a flow record: the index into the per-CPU `FLOW_EVENTS` counters.
///
/// The kernel does not report LRU evictions; `dnsteer stats` derives them as
/// `inserted - deleted - entries present`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    /// A query found its flow's record and kept its backend.
    Hit = 0,
    /// A query had no record.
    Miss = 1,
    /// A query's record had been idle too long (or its TCP flow had closed).
    Expired = 2,
    /// A query's record named a backend that is gone.
    BackendGone = 3,
    /// A record was created under a key that was not in the table.
    Inserted = 4,
    /// A record was deleted because its TCP flow was reset.
    Deleted = 5,
}

pub const FLOW_EVENT_COUNT: u32 = 6;

/// `FORWARD[0]`: how steered packets leave the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardConf {
    /// `forward::STACK` or `forward::REDIRECT`.
    pub mode: u32,
    /// The steering interface: where the reply fast path sends translated replies.
    pub client_ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<ForwardConf>() == 8);

/// `ForwardConf::mode` values.
pub mod forward {
    /// `XDP_PASS` every steered query; the stack routes it and the replies.
    pub const STACK: u32 = 0;
    /// Forward without the stack where the kernel's FIB knows the way: queries
    /// with `XDP_REDIRECT`/`XDP_TX`, replies with `bpf_redirect_neigh`.
    pub const REDIRECT: u32 = 1;
}

/// What the fast path did (`FORWARD_EVENTS`, per CPU), on top of the packet's reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardEvent {
    /// A steered query sent out another interface with `XDP_REDIRECT`.
    Redirected = 0,
    /// A steered query sent back out the interface it came in on with `XDP_TX`.
    Transmitted = 1,
    /// A steered query handed to the stack: the FIB had no answer yet (no
    /// neighbour entry, no route, MTU exceeded) or the frame was VLAN-tagged.
    Passed = 2,
    /// A steered query whose TTL would expire, handed to the stack to answer.
    TtlExpired = 3,
    /// A translated reply sent straight out the steering interface.
    ReplyRedirected = 4,
    /// A translated reply the redirect failed for, left to the stack.
    ReplyPassed = 5,
}

pub const FORWARD_EVENT_COUNT: u32 = 6;

impl ForwardEvent {
    pub const ALL: [ForwardEvent; FORWARD_EVENT_COUNT as usize] = [
        ForwardEvent::Redirected,
        ForwardEvent::Transmitted,
        ForwardEvent::Passed,
        ForwardEvent::TtlExpired,
        ForwardEvent::ReplyRedirected,
        ForwardEvent::ReplyPassed,
    ];

    /// The stable name used in `dnsteer stats` text and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            ForwardEvent::Redirected => "redirected",
            ForwardEvent::Transmitted => "transmitted",
            ForwardEvent::Passed => "passed",
            ForwardEvent::TtlExpired => "ttl_expired",
            ForwardEvent::ReplyRedirected => "reply_redirected",
            ForwardEvent::ReplyPassed => "reply_passed",
        }
    }
}

impl FlowEvent {
    pub const ALL: [FlowEvent; FLOW_EVENT_COUNT as usize] = [
        FlowEvent::Hit,
        FlowEvent::Miss,
        FlowEvent::Expired,
        FlowEvent::BackendGone,
        FlowEvent::Inserted,
        FlowEvent::Deleted,
    ];

    /// The stable name used in `dnsteer stats` text and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            FlowEvent::Hit => "hits",
            FlowEvent::Miss => "misses",
            FlowEvent::Expired => "expired",
            FlowEvent::BackendGone => "backend_gone",
            FlowEvent::Inserted => "inserted",
            FlowEvent::Deleted => "deleted",
        }
    }
}

/// Why a packet took the path it took: the index into the per-CPU `REASONS` counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A query rewritten towards a backend.
    Steered = 0,
    /// Not a UDP or TCP packet to a configured listen address (left alone).
    NotService = 1,
    /// Matched a service that has no backend (left alone).
    NoBackend = 2,
    /// Truncated or inconsistent headers (left alone).
    Malformed = 3,
    /// An IPv4 fragment: the ports are not in every fragment (left alone). IPv6
    /// fragments carry a fragment header: `Ipv6Ext`.
    Fragment = 4,
    /// A backend's reply whose source was rewritten to the service address.
    ReplyRewritten = 5,
    /// A packet from a backend address with no flow record (left alone).
    ReplyNoFlow = 6,
    /// A TCP segment other than a SYN with no flow record (left alone).
    TcpNoFlow = 7,
    /// An ICMP error about a steered flow, translated like its reply: the
    /// quoted packet's destination and the outer source set to the service address.
    IcmpRewritten = 8,
    /// An IPv6 packet with an extension header (or AH, ESP) before its transport
    /// header: not parsed further (left alone).
    Ipv6Ext = 9,
    /// A later fragment of a translated answer, given the source its first
    /// fragment was given.
    ReplyFragment = 10,
    /// An ICMP or ICMPv6 error about an answer (fragmentation needed, packet
    /// too big, ..) sent to a service address, translated towards the backend
    /// that sent the answer.
    IcmpToBackend = 11,
}

pub const REASON_COUNT: u32 = 12;

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Steered,
        Reason::NotService,
        Reason::NoBackend,
        Reason::Malformed,
        Reason::Fragment,
        Reason::ReplyRewritten,
        Reason::ReplyNoFlow,
        Reason::TcpNoFlow,
        Reason::IcmpRewritten,
        Reason::Ipv6Ext,
        Reason::ReplyFragment,
        Reason::IcmpToBackend,
    ];

    /// The stable name used in `dnsteer stats` text and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Steered => "steered",
            Reason::NotService => "not_service",
            Reason::NoBackend => "no_backend",
            Reason::Malformed => "malformed",
            Reason::Fragment => "fragment",
            Reason::ReplyRewritten => "reply_rewritten",
            Reason::ReplyNoFlow => "reply_no_flow",
            Reason::TcpNoFlow => "tcp_no_flow",
            Reason::IcmpRewritten => "icmp_rewritten",
            Reason::Ipv6Ext => "ipv6_ext",
            Reason::ReplyFragment => "reply_fragment",
            Reason::IcmpToBackend => "icmp_to_backend",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `#[repr(C)]`, `Copy`, made only of integers and byte
    // arrays, with explicit padding fields, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::SockCounter {}
    unsafe impl aya::Pod for super::ServiceConf {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::Ring {}
    unsafe impl aya::Pod for super::BackendCounter {}
    unsafe impl aya::Pod for super::ForwardConf {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::FlowSettings {}
    unsafe impl aya::Pod for super::QueryKey {}
    unsafe impl aya::Pod for super::QueryValue {}
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentValue {}
    unsafe impl aya::Pod for super::DnsStats {}
}

#[cfg(test)]
mod tests {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn addresses_round_trip_and_ipv4_is_mapped() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(
            octets(&addr_of(v4)),
            Ipv4Addr::new(192, 0, 2, 10).to_ipv6_mapped().octets()
        );
        assert!(is_ipv4_mapped(&addr_of(v4)));
        assert_eq!(ipv4_of(&addr_of(v4)), [192, 0, 2, 10]);
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        assert!(!is_ipv4_mapped(&addr_of(v6)));
        for ip in [
            v4,
            v6,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            assert_eq!(ip_of(addr_of(ip)), ip);
        }
        // The two wildcards are distinct keys, each the unspecified address of its family.
        assert_eq!(addr_of(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), ANY_IPV4);
        assert_eq!(addr_of(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), ANY_IPV6);
        assert!(!same_addr(&ANY_IPV4, &ANY_IPV6));
        assert_eq!((any_addr(false), any_addr(true)), (ANY_IPV4, ANY_IPV6));
        // Almost mapped: not IPv4.
        let mut a = octets(&ANY_IPV4);
        a[9] = 1;
        assert!(!is_ipv4_mapped(&addr_from_octets(a)));
        let mut a = octets(&ANY_IPV4);
        a[10] = 0xfe;
        assert!(!is_ipv4_mapped(&addr_from_octets(a)));
    }

    #[test]
    fn latency_buckets_double_from_16_us() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(LATENCY_BASE_NS), 0, "bounds are inclusive");
        assert_eq!(latency_bucket(LATENCY_BASE_NS + 1), 1);
        assert_eq!(latency_bucket(2 * LATENCY_BASE_NS), 1);
        assert_eq!(latency_bucket(2 * LATENCY_BASE_NS + 1), 2);
        for k in 0..LATENCY_BUCKETS - 1 {
            let bound = LATENCY_BASE_NS << k;
            assert_eq!(latency_bucket(bound), k, "{bound} ns");
            assert_eq!(latency_bucket(bound + 1), k + 1, "{bound} + 1 ns");
        }
        assert_eq!(latency_bucket(5_000_000_000), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        // 500 µs and 500 ms, as a DNS client would see them.
        assert_eq!(LATENCY_BASE_NS << latency_bucket(500_000), 524_288);
        assert_eq!(LATENCY_BASE_NS << latency_bucket(500_000_000), 536_870_912);
    }

    #[test]
    fn rcode_classes() {
        use rcode_class::*;
        assert_eq!(
            [of(0), of(3), of(2), of(5), of(1), of(4), of(9)],
            [NOERROR, NXDOMAIN, SERVFAIL, REFUSED, OTHER, OTHER, OTHER]
        );
        assert_eq!(of(0x80 | 3), NXDOMAIN, "only the low four bits");
    }

    #[test]
    fn same_addr_compares_every_byte() {
        let a = addr_from_octets(core::array::from_fn(|i| i as u8 + 1));
        assert_eq!(octets(&a), core::array::from_fn(|i| i as u8 + 1));
        assert!(same_addr(&a, &a));
        for i in 0..16 {
            let mut b = octets(&a);
            b[i] ^= 0x80;
            assert!(!same_addr(&a, &addr_from_octets(b)), "byte {i}");
        }
    }
}
