//! Map layouts shared by `xdp-ebpf` and `xdp-loader`.
//!
//! Addresses and ports are kept in network byte order exactly as they sit in the
//! packet, so the kernel side copies them without swapping. Every type carries a
//! size assertion: a layout change is a compile error on both sides at once.

/// Map names, as the kernel side declares them and the loader pins them.
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    pub const SERVICE_CONF: &str = "SERVICE_CONF";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const BACKEND_SOURCES: &str = "BACKEND_SOURCES";
    pub const NTH_STATE: &str = "NTH_STATE";
    pub const FLOWS: &str = "FLOWS";
    pub const REASONS: &str = "REASONS";

    /// Every map the loader pins, in a fixed order.
    pub const ALL: [&str; 8] = [
        SERVICES,
        SERVICE_CONF,
        BACKENDS,
        BACKEND_STATS,
        BACKEND_SOURCES,
        NTH_STATE,
        FLOWS,
        REASONS,
    ];
}

/// Services (named groups of listen addresses sharing one backend set).
pub const MAX_SERVICES: u32 = 256;
/// Listen entries (address, port, protocol) over all services.
pub const MAX_LISTENERS: u32 = 1024;
/// Backends one service can hold.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 64;
/// Backend slots: service `id` owns slots `id * MAX_BACKENDS_PER_SERVICE ..`.
pub const BACKEND_SLOTS: u32 = MAX_SERVICES * MAX_BACKENDS_PER_SERVICE;
/// Distinct backend endpoints whose replies the TC side translates.
pub const MAX_BACKEND_SOURCES: u32 = BACKEND_SLOTS;
/// Flow records (client, backend) -> service address, LRU-evicted.
pub const FLOW_CAPACITY: u32 = 65536;
/// Bytes of a service name kept in the kernel, NUL-padded.
pub const SERVICE_NAME_LEN: usize = 32;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The slot of backend `index` of service `service_id` in `BACKENDS` and `BACKEND_STATS`.
#[inline(always)]
pub const fn backend_slot(service_id: u32, index: u32) -> u32 {
    service_id * MAX_BACKENDS_PER_SERVICE + index
}

/// An (address, port, protocol) triple: a listen address in `SERVICES`, a backend's
/// reply source in `BACKEND_SOURCES`. `addr == 0` in `SERVICES` means "any address
/// arriving on the interface" (a `*` listen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// IPv4 address, network byte order.
    pub addr: [u8; 4],
    /// Port, network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 8);

impl Endpoint {
    #[inline(always)]
    pub const fn new(addr: [u8; 4], port: [u8; 2], proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// How a service picks a backend for a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectMode {
    /// Per-CPU round robin: the `--every n --packet 0` cascade.
    Nth = 0,
    /// Uniform random draw: the `--probability 1/n, 1/(n-1), ..` cascade.
    Random = 1,
}

/// `SERVICE_CONF[id]`: what the data path needs to select a backend, and the
/// service's name for `dnsteer stats`. The name lives here rather than in a map of
/// its own so that every map stats reads is reachable from the attached program
/// (by id), also from a mount namespace that cannot see the pins.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceConf {
    /// Backends in slots `backend_slot(id, 0..backend_count)`.
    pub backend_count: u32,
    /// A `SelectMode` discriminant.
    pub select: u32,
    /// The `PROTO_*` the service balances.
    pub proto: u8,
    /// 1 while the id is in use.
    pub in_use: u8,
    pub _pad: [u8; 6],
    /// UTF-8, NUL-padded.
    pub name: [u8; SERVICE_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<ServiceConf>() == 48);

impl Default for ServiceConf {
    fn default() -> Self {
        Self {
            backend_count: 0,
            select: 0,
            proto: 0,
            in_use: 0,
            _pad: [0; 6],
            name: [0; SERVICE_NAME_LEN],
        }
    }
}

/// `BACKENDS[slot]`: where a steered packet goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: [u8; 4],
    /// Port, network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Backend>() == 8);

/// Packets and bytes, one per CPU in a per-CPU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// `FLOWS` key, as seen on a reply: backend (source) and client (destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub backend_addr: [u8; 4],
    pub client_addr: [u8; 4],
    pub backend_port: [u8; 2],
    pub client_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

/// `FLOWS` value: the address and port the client asked, which its reply must come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub service_addr: [u8; 4],
    pub service_port: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 8);

/// Why a packet took the path it took: the index into the per-CPU `REASONS` counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A query rewritten towards a backend.
    Steered = 0,
    /// Not a UDP packet to a configured listen address (left alone).
    NotService = 1,
    /// Matched a service that has no backend (left alone).
    NoBackend = 2,
    /// Truncated or inconsistent headers (left alone).
    Malformed = 3,
    /// An IPv4 fragment: the ports are not in every fragment (left alone).
    Fragment = 4,
    /// A backend's reply whose source was rewritten to the service address.
    ReplyRewritten = 5,
    /// A packet from a backend address with no flow record (left alone).
    ReplyNoFlow = 6,
}

pub const REASON_COUNT: u32 = 7;

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
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `#[repr(C)]`, `Copy`, made only of integers and byte
    // arrays, with explicit padding fields, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ServiceConf {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
}
