//! The kernel programs run through BPF_PROG_TEST_RUN, not attached anywhere: a
//! table of input packets, the action expected, the packet expected out, the one
//! `REASONS` counter it moves and the `FLOW_EVENTS` it causes.
//! Needs root (loading BPF programs); no namespaces, no traffic.
//!
//! Flows are sticky: a packet whose 5-tuple was seen before follows its first
//! backend. A case that means "a new flow" therefore has a client port of its
//! own, and each packet is built once, its expected output derived from it.

mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::Path,
    thread,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use common::{l4_checksum, moved, pin_to_cpu0};
use dnsteer::{
    REPLY_IN_PROGRAM, TC_PROGRAM, XDP_PROGRAM, config,
    datapath::maps::{self, KernelMaps},
    live::{Change, Live},
};
use xdp_common::{
    Addr, Backend, BackendCounter, DnsStats, Endpoint, FlowEvent, FlowKey, FlowValue, ForwardConf,
    ForwardEvent, LATENCY_BUCKETS, MAX_BACKENDS_PER_SERVICE, PROTO_TCP, PROTO_UDP, QueryEvent,
    QueryKey, QueryValue, Reason, Ring, SelectMode, ServiceConf, addr_of, backend_slot,
    backend_state, csum, direction, forward, names,
    parse::{icmp, icmp6, ipv6, tcp},
    ring_key,
    select::smooth_ring,
};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
/// TCP's push flag (`xdp_common::parse::tcp` names only those the kernel reads).
const PSH: u8 = 0x08;

const CONFIG: &str = r#"
interface = "lo"

[[service]]
name = "dns"
listen = ["192.0.2.10:53", "192.0.2.11:53"]
select = "nth"
backends = ["10.100.13.2:53", "10.100.13.3:53", "10.100.13.4:53", "10.100.13.5:53"]

[[service]]
name = "anycast"
listen = ["*:5300"]
backends = ["10.100.14.9:5353"]

[[service]]
name = "rand"
listen = ["192.0.2.20:53"]
select = "random"
backends = ["10.100.15.2:53", "10.100.15.3:53", "10.100.15.4:53", "10.100.15.5:53"]

[[service]]
name = "both"
protocol = "udp+tcp"
listen = ["192.0.2.40:53"]
backends = ["10.100.16.2:53", "10.100.16.3:53"]

[[service]]
name = "tcp"
protocol = "tcp"
listen = ["192.0.2.41:53"]
backends = ["10.100.17.2:5353"]

[[service]]
name = "weighted"
listen = ["192.0.2.50:53"]
select = "nth"
backends = [{ addr = "10.100.18.2:53", weight = 3 }, "10.100.18.3:53"]

[[service]]
name = "weighted-random"
listen = ["192.0.2.51:53"]
select = "random"
backends = [{ addr = "10.100.19.2:53", weight = 3 }, "10.100.19.3:53"]

[[service]]
name = "dns6"
protocol = "udp+tcp"
listen = ["[2001:db8::10]:53", "[2001:db8::11]:53"]
select = "nth"
backends = ["[2001:db8:13::2]:53", "[2001:db8:13::3]:53", "[2001:db8:13::4]:53", "[2001:db8:13::5]:53"]

[[service]]
name = "anycast6"
listen = ["[::]:5301"]
backends = ["[2001:db8:14::9]:5353"]
"#;

/// Service ids: the loader numbers services in config order.
const DNS_ID: u32 = 0;
const RAND_ID: u32 = 2;
const WEIGHTED_ID: u32 = 5;
const DNS6_ID: u32 = 7;

const fn sock(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const VIP: SocketAddrV4 = sock(192, 0, 2, 10, 53);
const ALIAS: SocketAddrV4 = sock(192, 0, 2, 11, 53);
const WILD: SocketAddrV4 = sock(198, 51, 100, 7, 5300);
const B: [SocketAddrV4; 4] = [
    sock(10, 100, 13, 2, 53),
    sock(10, 100, 13, 3, 53),
    sock(10, 100, 13, 4, 53),
    sock(10, 100, 13, 5, 53),
];
const WILD_BACKEND: SocketAddrV4 = sock(10, 100, 14, 9, 5353);
const RAND_VIP: SocketAddrV4 = sock(192, 0, 2, 20, 53);
const BOTH_VIP: SocketAddrV4 = sock(192, 0, 2, 40, 53);
const T: [SocketAddrV4; 2] = [sock(10, 100, 16, 2, 53), sock(10, 100, 16, 3, 53)];
const TCP_VIP: SocketAddrV4 = sock(192, 0, 2, 41, 53);
const TCP_BACKEND: SocketAddrV4 = sock(10, 100, 17, 2, 5353);
const WEIGHTED_VIP: SocketAddrV4 = sock(192, 0, 2, 50, 53);
const W: [SocketAddrV4; 2] = [sock(10, 100, 18, 2, 53), sock(10, 100, 18, 3, 53)];
const WEIGHTED_RANDOM_VIP: SocketAddrV4 = sock(192, 0, 2, 51, 53);
const WR: [SocketAddrV4; 2] = [sock(10, 100, 19, 2, 53), sock(10, 100, 19, 3, 53)];

const fn sock6(segments: [u16; 8], port: u16) -> SocketAddrV6 {
    let [a, b, c, d, e, f, g, h] = segments;
    SocketAddrV6::new(Ipv6Addr::new(a, b, c, d, e, f, g, h), port, 0, 0)
}

const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const VIP6: SocketAddrV6 = sock6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10], 53);
const ALIAS6: SocketAddrV6 = sock6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11], 53);
/// Any IPv6 address to port 5301 (`[::]:5301`); IPv4's `*` is on 5300 only.
const WILD6: SocketAddrV6 = sock6([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 7], 5301);
const WILD6_BACKEND: SocketAddrV6 = sock6([0x2001, 0xdb8, 0x14, 0, 0, 0, 0, 9], 5353);
const B6: [SocketAddrV6; 4] = [
    sock6([0x2001, 0xdb8, 0x13, 0, 0, 0, 0, 2], 53),
    sock6([0x2001, 0xdb8, 0x13, 0, 0, 0, 0, 3], 53),
    sock6([0x2001, 0xdb8, 0x13, 0, 0, 0, 0, 4], 53),
    sock6([0x2001, 0xdb8, 0x13, 0, 0, 0, 0, 5], 53),
];

/// An address as the maps hold it.
fn a(ip: impl Into<IpAddr>) -> Addr {
    addr_of(ip.into())
}

/// A DNS query for whoami.example. A; the programs read only its ID.
const DNS_QUERY: &[u8] =
    b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06whoami\x07example\x00\x00\x01\x00\x01";
/// `DNS_QUERY`'s message ID, as it sits in the packet.
const DNS_QUERY_ID: [u8; 2] = [0xab, 0xcd];

/// A frame under construction: Ethernet, VLAN tags, IPv4 (+options) or IPv6
/// (+ one extension header), UDP or TCP. The family is the addresses'.
#[derive(Clone)]
struct Pkt {
    tags: Vec<u16>,
    /// The ethertype, when not the family's own.
    ethertype: Option<u16>,
    /// IPv4 only.
    options: usize,
    proto: u8,
    /// IPv4 only.
    frag: u16,
    /// IPv6 only: an 8-byte extension header of this type before the transport header.
    ext: Option<u8>,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    zero_udp_csum: bool,
    /// TCP only: the flags byte and the sequence and acknowledgement numbers.
    flags: u8,
    seq: u32,
    ack: u32,
    payload: Vec<u8>,
}

/// A UDP query from the client's port 40000 (its IPv4 or IPv6 address, as `dst`) to `dst`.
fn query(dst: impl Into<SocketAddr>) -> Pkt {
    let dst = dst.into();
    let src = match dst {
        SocketAddr::V4(_) => IpAddr::V4(CLIENT),
        SocketAddr::V6(_) => IpAddr::V6(CLIENT6),
    };
    Pkt {
        tags: vec![],
        ethertype: None,
        options: 0,
        proto: PROTO_UDP,
        frag: 0x4000, // DF
        ext: None,
        src,
        dst: dst.ip(),
        sport: 40000,
        dport: dst.port(),
        zero_udp_csum: false,
        flags: 0,
        seq: 0,
        ack: 0,
        payload: DNS_QUERY.to_vec(),
    }
}

/// A TCP segment without payload from the client's port 40000 to `dst`.
fn segment(dst: impl Into<SocketAddr>, flags: u8) -> Pkt {
    Pkt {
        proto: PROTO_TCP,
        flags,
        seq: 0x1000_0000,
        ack: if flags & tcp::ACK != 0 {
            0x2000_0001
        } else {
            0
        },
        payload: vec![],
        ..query(dst)
    }
}

impl Pkt {
    /// Serializes with correct checksums computed from scratch.
    fn bytes(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for tpid in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0, 100]);
        }
        let l4_hlen = if self.proto == PROTO_TCP { 20 } else { 8 };
        let l4_len = l4_hlen + self.payload.len();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                f.extend_from_slice(&self.ethertype.unwrap_or(0x0800).to_be_bytes());
                let l3 = f.len();
                let ihl = 20 + self.options;
                f.push(0x40 | (ihl / 4) as u8);
                f.push(0);
                f.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
                f.extend_from_slice(&[0x12, 0x34]);
                f.extend_from_slice(&self.frag.to_be_bytes());
                f.extend_from_slice(&[64, self.proto, 0, 0]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                f.extend(std::iter::repeat_n(1u8, self.options));
                let ip_csum = csum::ipv4_header(&f[l3..l3 + ihl]);
                f[l3 + 10..l3 + 12].copy_from_slice(&ip_csum.to_be_bytes());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                f.extend_from_slice(&self.ethertype.unwrap_or(0x86dd).to_be_bytes());
                let ext_len = if self.ext.is_some() { 8 } else { 0 };
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((ext_len + l4_len) as u16).to_be_bytes());
                f.extend_from_slice(&[self.ext.unwrap_or(self.proto), 64]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                if self.ext.is_some() {
                    f.extend_from_slice(&[self.proto, 0, 0, 0, 0, 0, 0, 0]);
                }
            }
            (src, dst) => panic!("{src} and {dst} are not one family"),
        }
        let l4 = f.len();
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == PROTO_TCP {
            f.extend_from_slice(&self.seq.to_be_bytes());
            f.extend_from_slice(&self.ack.to_be_bytes());
            f.extend_from_slice(&[0x50, self.flags]); // data offset 5: no options
            f.extend_from_slice(&65535u16.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            f.extend_from_slice(&self.payload);
            let c = l4_checksum(self.src, self.dst, PROTO_TCP, &f[l4..]);
            f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        } else {
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&self.payload);
            if self.proto == PROTO_UDP && !self.zero_udp_csum {
                let c = match l4_checksum(self.src, self.dst, PROTO_UDP, &f[l4..]) {
                    0 => 0xffff,
                    c => c,
                };
                f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
            }
        }
        f
    }

    fn to(mut self, dst: impl Into<SocketAddr>) -> Self {
        let dst = dst.into();
        (self.dst, self.dport) = (dst.ip(), dst.port());
        self
    }

    fn from(mut self, src: impl Into<SocketAddr>) -> Self {
        let src = src.into();
        (self.src, self.sport) = (src.ip(), src.port());
        self
    }

    /// IPv6: an extension header of type `next` before the transport header.
    fn ext(mut self, next: u8) -> Self {
        self.ext = Some(next);
        self
    }

    fn tagged(mut self, tags: &[u16]) -> Self {
        self.tags = tags.to_vec();
        self
    }

    /// The client's source port: a port of its own makes a flow of its own.
    fn sport(mut self, sport: u16) -> Self {
        self.sport = sport;
        self
    }

    fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    /// A DNS query over TCP: the message after its two-byte length.
    fn with_tcp_query(mut self) -> Self {
        self.payload = (DNS_QUERY.len() as u16).to_be_bytes().to_vec();
        self.payload.extend_from_slice(DNS_QUERY);
        self
    }

    /// The same UDP query with DNS message ID `id`.
    fn id(mut self, id: u16) -> Self {
        self.payload[..2].copy_from_slice(&id.to_be_bytes());
        self
    }

    /// The same answer with RCODE `rcode` (the low four bits of the DNS
    /// header's fourth byte).
    fn rcode(mut self, rcode: u8) -> Self {
        self.payload[3] = (self.payload[3] & 0xf0) | rcode;
        self
    }

    /// The answer to this packet: addresses and ports swapped.
    fn answer(&self) -> Self {
        let mut a = self.clone();
        (a.src, a.dst, a.sport, a.dport) = (self.dst, self.src, self.dport, self.sport);
        a
    }

    fn truncated(&self, len: usize) -> Vec<u8> {
        self.bytes()[..len].to_vec()
    }
}

/// Where a steered untagged frame without IPv4 options or IPv6 extension
/// headers now goes.
fn destination(frame: &[u8]) -> SocketAddr {
    if frame[12..14] == [0x86, 0xdd] {
        let dst: [u8; 16] = frame[38..54].try_into().unwrap();
        SocketAddr::new(
            IpAddr::from(dst),
            u16::from_be_bytes([frame[56], frame[57]]),
        )
    } else {
        SocketAddr::new(
            IpAddr::from([frame[30], frame[31], frame[32], frame[33]]),
            u16::from_be_bytes([frame[36], frame[37]]),
        )
    }
}

/// A flow event and by how much it moves.
type Events = &'static [(FlowEvent, u64)];

/// No flow lookup at all: not for a service, or not parsed.
const NO_EVENTS: Events = &[];
/// A new UDP flow: no affinity record, then one inserted.
const NEW_FLOW: Events = &[(FlowEvent::Miss, 1), (FlowEvent::Inserted, 1)];
/// A new TCP connection: no record, then its query and reply records inserted.
const NEW_CONNECTION: Events = &[(FlowEvent::Miss, 1), (FlowEvent::Inserted, 2)];
/// A packet of a known flow.
const HIT: Events = &[(FlowEvent::Hit, 1)];
/// A lookup that found no record and created none.
const MISS: Events = &[(FlowEvent::Miss, 1)];
/// A reset: the flow found, then both its records deleted.
const HIT_AND_DELETED: Events = &[(FlowEvent::Hit, 1), (FlowEvent::Deleted, 2)];
/// Both records of a flow deleted by a reset seen on the reply path.
const DELETED: Events = &[(FlowEvent::Deleted, 2)];
/// A stale UDP affinity record (idle, or its backend gone) re-pointed at
/// another backend: overwritten, not counted as inserted.
const EXPIRED_REBALANCED: Events = &[(FlowEvent::Expired, 1)];
const GONE_REBALANCED: Events = &[(FlowEvent::BackendGone, 1)];
/// The same for a TCP connection's idle record: the query record is
/// overwritten (not counted), the reply record for the new backend is new.
const EXPIRED_RECONNECTED: Events = &[(FlowEvent::Expired, 1), (FlowEvent::Inserted, 1)];

/// What a case expects out of the program.
enum Out {
    Unchanged,
    /// Exactly this packet (checksums computed from scratch).
    Packet(Vec<u8>),
}

struct Case {
    what: String,
    program: &'static str,
    input: Vec<u8>,
    action: u32,
    out: Out,
    reason: Option<Reason>,
    events: Events,
}

/// A packet through the XDP program.
fn case(
    what: impl Into<String>,
    input: Vec<u8>,
    out: Out,
    reason: Option<Reason>,
    events: Events,
) -> Case {
    Case {
        what: what.into(),
        program: XDP_PROGRAM,
        input,
        action: XDP_PASS,
        out,
        reason,
        events,
    }
}

/// A packet through the TC egress program.
fn tc(
    what: impl Into<String>,
    input: Vec<u8>,
    out: Out,
    reason: Option<Reason>,
    events: Events,
) -> Case {
    Case {
        program: TC_PROGRAM,
        action: TC_ACT_OK,
        ..case(what, input, out, reason, events)
    }
}

/// XDP: `p` steered to `backend`.
fn steered(
    what: impl Into<String>,
    p: &Pkt,
    backend: impl Into<SocketAddr>,
    events: Events,
) -> Case {
    let out = Out::Packet(p.clone().to(backend).bytes());
    case(what, p.bytes(), out, Some(Reason::Steered), events)
}

/// XDP: `p` left alone, for `reason`.
fn passed(what: impl Into<String>, input: Vec<u8>, reason: Reason, events: Events) -> Case {
    case(what, input, Out::Unchanged, Some(reason), events)
}

/// TC: the reply `p` given the source `asked`.
fn replied(what: impl Into<String>, p: &Pkt, asked: impl Into<SocketAddr>, events: Events) -> Case {
    let out = Out::Packet(p.clone().from(asked).bytes());
    tc(what, p.bytes(), out, Some(Reason::ReplyRewritten), events)
}

/// A loaded object with its maps filled from a config, as `dnsteer run` fills them.
struct Loaded {
    live: Live<KernelMaps>,
}

impl Loaded {
    fn new(text: &str) -> Self {
        let config = config::parse(text, Path::new("prog_table.toml")).expect("test config");
        let ebpf = maps::load(config.flows.size).expect("loading the object (run as root)");
        let mut live = Live::new(KernelMaps::new(ebpf));
        live.apply(&config).expect("filling maps");
        let ebpf = &mut live.store_mut().ebpf;
        let xdp: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
        xdp.load().expect("verifier accepts the XDP program");
        let tc: &mut SchedClassifier = ebpf.program_mut(TC_PROGRAM).unwrap().try_into().unwrap();
        tc.load().expect("verifier accepts the TC program");
        Loaded { live }
    }

    fn ebpf(&self) -> &Ebpf {
        &self.live.store().ebpf
    }

    fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.live.store_mut().ebpf
    }

    fn change(&mut self, service: &str, change: Change) {
        self.live
            .change(service, &change)
            .unwrap_or_else(|e| panic!("{change:?} on {service}: {e:#}"));
    }

    fn counters(&self, name: &str, count: usize) -> Vec<u64> {
        common::counters(self.ebpf(), name, count)
    }

    fn reasons(&self) -> Vec<u64> {
        self.counters(names::REASONS, Reason::ALL.len())
    }

    fn events(&self) -> Vec<u64> {
        self.counters(names::FLOW_EVENTS, FlowEvent::ALL.len())
    }

    fn event(&self, event: FlowEvent) -> u64 {
        self.events()[event as usize]
    }

    /// The counters of `backend`, found by its address among service `service`'s
    /// slots (a removed one keeps its address until its slot is reused).
    fn backend_stats(&self, service: u32, backend: impl Into<SocketAddr>) -> BackendCounter {
        let slot = self.slot(service, backend);
        let stats: PerCpuArray<_, BackendCounter> =
            PerCpuArray::try_from(self.ebpf().map(names::BACKEND_STATS).unwrap()).unwrap();
        stats
            .get(&slot, 0)
            .unwrap()
            .iter()
            .fold(BackendCounter::default(), |sum, c| BackendCounter {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
                new_flows: sum.new_flows + c.new_flows,
            })
    }

    /// A backend's DNS counters, summed over CPUs, and its queries in flight
    /// as the kernel counts them (`OUTSTANDING`; the loader's `TIMED_OUT` is 0 here).
    fn dns_stats(&self, service: u32, backend: impl Into<SocketAddr>) -> (DnsStats, u64) {
        let slot = self.slot(service, backend);
        let stats: PerCpuArray<_, DnsStats> =
            PerCpuArray::try_from(self.ebpf().map(names::BACKEND_DNS).unwrap()).unwrap();
        let mut sum = DnsStats::default();
        for c in stats.get(&slot, 0).unwrap().iter() {
            sum.add(c);
        }
        let outstanding: Array<_, u64> =
            Array::try_from(self.ebpf().map(names::OUTSTANDING).unwrap()).unwrap();
        (sum, outstanding.get(&slot, 0).unwrap())
    }

    /// The one slot of `service` that holds `backend`.
    fn slot(&self, service: u32, backend: impl Into<SocketAddr>) -> u32 {
        let backend = backend.into();
        let backends: Array<_, Backend> =
            Array::try_from(self.ebpf().map(names::BACKENDS).unwrap()).unwrap();
        let slots: Vec<u32> = (0..MAX_BACKENDS_PER_SERVICE)
            .map(|i| backend_slot(service, i))
            .filter(|slot| {
                let b = backends.get(slot, 0).unwrap();
                b.state != backend_state::EMPTY
                    && (b.addr, b.port) == (a(backend.ip()), backend.port().to_be_bytes())
            })
            .collect();
        let [slot] = slots[..] else {
            panic!("{backend} is in slots {slots:?} of service {service}, want exactly one");
        };
        slot
    }

    fn active_ring(&self, service: u32) -> u32 {
        let map: Array<_, u32> =
            Array::try_from(self.ebpf().map(names::ACTIVE_RING).unwrap()).unwrap();
        map.get(&service, 0).unwrap()
    }

    /// A TCP connection's record.
    fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        let map: HashMap<_, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf().map(names::FLOWS).unwrap()).unwrap();
        map.get(key, 0).ok()
    }

    /// A UDP flow's affinity record.
    fn affinity(&self, key: &FlowKey) -> Option<FlowValue> {
        let map: HashMap<_, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf().map(names::AFFINITY).unwrap()).unwrap();
        map.get(key, 0).ok()
    }

    /// A UDP query's record, while it is in flight.
    fn query_record(&self, key: &QueryKey) -> Option<QueryValue> {
        let map: HashMap<_, QueryKey, QueryValue> =
            HashMap::try_from(self.ebpf().map(names::QUERIES).unwrap()).unwrap();
        map.get(key, 0).ok()
    }

    fn query_events(&self) -> Vec<u64> {
        self.counters(names::QUERY_EVENTS, QueryEvent::ALL.len())
    }

    fn run(&self, program: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let result = match program {
            XDP_PROGRAM => {
                let p: &Xdp = self.ebpf().program(program).unwrap().try_into().unwrap();
                p.test_run(opts)
            }
            _ => {
                let p: &SchedClassifier = self.ebpf().program(program).unwrap().try_into().unwrap();
                p.test_run(opts)
            }
        }
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program}: {e}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Steers `p` (a new flow or not) and returns where it went.
    fn steer(&self, p: &Pkt) -> SocketAddr {
        let (action, out) = self.run(XDP_PROGRAM, &p.bytes());
        assert_eq!(action, XDP_PASS);
        destination(&out)
    }

    fn check(&self, cases: &[Case]) {
        for c in cases {
            // Shown only when a test fails: which case a failed test run was.
            println!("case: {}", c.what);
            let (reasons, events) = (self.reasons(), self.events());
            let (action, out) = self.run(c.program, &c.input);
            assert_eq!(action, c.action, "{}: action", c.what);
            match &c.out {
                Out::Unchanged => {
                    assert_eq!(out, c.input, "{}: packet must pass untouched", c.what)
                }
                Out::Packet(want) => assert_eq!(&out, want, "{}: output packet", c.what),
            }
            assert_eq!(
                moved(&Reason::ALL, &reasons, &self.reasons()),
                c.reason.map(|r| (r, 1)).into_iter().collect::<Vec<_>>(),
                "{}: exactly one REASONS counter, once",
                c.what
            );
            let mut want = c.events.to_vec();
            want.sort_by_key(|(e, _)| *e as u32);
            assert_eq!(
                moved(&FlowEvent::ALL, &events, &self.events()),
                want,
                "{}: FLOW_EVENTS",
                c.what
            );
        }
    }
}

/// How many new flows went to each backend.
fn tally<T: Ord>(picks: impl IntoIterator<Item = T>) -> BTreeMap<T, u32> {
    let mut hits = BTreeMap::new();
    for p in picks {
        *hits.entry(p).or_insert(0) += 1;
    }
    hits
}

#[test]
fn xdp_table_steers_new_flows_and_leaves_the_rest_alone() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let q = |port| query(VIP).sport(port);
    let first = q(40001);
    let alias = query(ALIAS).sport(40002);
    let mut opts = q(40003);
    opts.options = 12;
    let mut vlan = q(40004);
    vlan.tags = vec![0x8100];
    let mut qinq = q(40005);
    qinq.tags = vec![0x88a8, 0x8100];
    let mut nosum = q(40006);
    nosum.zero_udp_csum = true;
    let wild = query(WILD).sport(40007);
    let mut v4_in_v6 = q(40001);
    v4_in_v6.ethertype = Some(0x86dd);
    let mut icmp = q(40001);
    icmp.proto = 1;
    let mut mf = q(40001);
    mf.frag = 0x2000;
    let mut offset = q(40001);
    offset.frag = 0x0010;
    let syn = segment(BOTH_VIP, tcp::SYN).sport(40008);
    let mut doff4 = syn.bytes();
    doff4[34 + 12] = 0x40;

    // The nth cursor starts at backend 0 and advances only on new flows.
    let cases = [
        steered("query to the service address", &first, B[0], NEW_FLOW),
        steered("query to the alias address", &alias, B[1], NEW_FLOW),
        steered("the first flow again keeps its backend", &first, B[0], HIT),
        passed(
            "other address",
            query(sock(192, 0, 2, 99, 53)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "other port",
            query(sock(192, 0, 2, 10, 54)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "TCP SYN to a UDP-only service",
            segment(VIP, tcp::SYN).sport(40001).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "an IPv4 packet in the IPv6 ethertype",
            v4_in_v6.bytes(),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed("ICMP", icmp.bytes(), Reason::NotService, NO_EVENTS),
        passed(
            "multicast destination",
            query(sock(224, 0, 0, 53, 53)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "broadcast destination",
            query(sock(255, 255, 255, 255, 53)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, so that
        // cut is covered by xdp-common's parser tests only.
        passed(
            "runt: Ethernet header only",
            first.truncated(14),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "truncated VLAN tag",
            vlan.truncated(17),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "truncated IPv4 header",
            first.truncated(33),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "truncated IPv4 options",
            opts.truncated(40),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "truncated UDP header",
            first.truncated(41),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "truncated TCP header",
            syn.truncated(53),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed("TCP data offset 4", doff4, Reason::Malformed, NO_EVENTS),
        steered("IPv4 options", &opts, B[2], NEW_FLOW),
        steered("802.1Q tag", &vlan, B[3], NEW_FLOW),
        steered("QinQ tags", &qinq, B[0], NEW_FLOW),
        passed(
            "more-fragments set",
            mf.bytes(),
            Reason::Fragment,
            NO_EVENTS,
        ),
        passed(
            "fragment offset",
            offset.bytes(),
            Reason::Fragment,
            NO_EVENTS,
        ),
        steered("UDP checksum zero stays zero", &nosum, B[1], NEW_FLOW),
        steered(
            "wildcard listen, backend on another port",
            &wild,
            WILD_BACKEND,
            NEW_FLOW,
        ),
        passed(
            "wildcard listen, other port",
            query(sock(198, 51, 100, 7, 5301)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
    ];
    prog.check(&cases);
}

#[test]
fn xdp_service_without_backends_passes_with_no_backend() {
    pin_to_cpu0();
    let mut prog = Loaded::new(CONFIG);
    // Live refuses a service without an active backend; the data path must still
    // cope, so write such services straight into the maps: 9 and 10 with an empty
    // ring (nth, random), 11 with a ring naming a slot that holds no backend;
    // 12 (IPv4) and 13 (IPv6) with rings naming an active backend of the other
    // family, which live refuses too and a packet cannot be rewritten to.
    let ebpf = prog.ebpf_mut();
    let mut confs: Array<_, ServiceConf> = maps::typed(ebpf, names::SERVICE_CONF).unwrap();
    for id in 9..14 {
        confs
            .set(
                id,
                ServiceConf {
                    in_use: 1,
                    ..Default::default()
                },
                0,
            )
            .unwrap();
    }
    let mut rings: Array<_, Ring> = maps::typed(ebpf, names::RINGS).unwrap();
    let random = Ring {
        select: SelectMode::Random as u32,
        ..Ring::default()
    };
    rings.set(ring_key(9, 1), Ring::default(), 0).unwrap();
    rings.set(ring_key(10, 1), random, 0).unwrap();
    for id in 11..14 {
        rings
            .set(
                ring_key(id, 1),
                Ring {
                    len: 1,
                    ..Ring::default()
                },
                0,
            )
            .unwrap();
    }
    let mut backends: Array<_, Backend> = maps::typed(ebpf, names::BACKENDS).unwrap();
    let active_at = |addr: IpAddr| Backend {
        addr: a(addr),
        port: 53u16.to_be_bytes(),
        state: backend_state::ACTIVE,
        _pad: 0,
        weight: 1,
    };
    let (b4, b6) = (*B[0].ip(), *B6[0].ip());
    backends
        .set(backend_slot(12, 0), active_at(b6.into()), 0)
        .unwrap();
    backends
        .set(backend_slot(13, 0), active_at(b4.into()), 0)
        .unwrap();
    let mut active: Array<_, u32> = maps::typed(ebpf, names::ACTIVE_RING).unwrap();
    for id in 9..14 {
        active.set(id, 1, 0).unwrap();
    }
    let mut services: HashMap<_, Endpoint, u32> = maps::typed(ebpf, names::SERVICES).unwrap();
    let listen =
        |id: u32, proto| Endpoint::new(a([192, 0, 2, 21 + id as u8]), 53u16.to_be_bytes(), proto);
    for id in 9..13 {
        services.insert(listen(id, PROTO_UDP), id, 0).unwrap();
        services.insert(listen(id, PROTO_TCP), id, 0).unwrap();
    }
    let v6_listen = sock6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x33], 53);
    services
        .insert(
            Endpoint::new(a(*v6_listen.ip()), 53u16.to_be_bytes(), PROTO_UDP),
            13,
            0,
        )
        .unwrap();
    let to = |id: u8| sock(192, 0, 2, 21 + id, 53);
    prog.check(&[
        passed(
            "nth service with an empty ring",
            query(to(9)).bytes(),
            Reason::NoBackend,
            MISS,
        ),
        passed(
            "random service with an empty ring",
            query(to(10)).bytes(),
            Reason::NoBackend,
            MISS,
        ),
        passed(
            "ring naming a slot without an active backend",
            query(to(11)).bytes(),
            Reason::NoBackend,
            MISS,
        ),
        passed(
            "IPv4 service whose ring names an IPv6 backend",
            query(to(12)).bytes(),
            Reason::NoBackend,
            MISS,
        ),
        passed(
            "IPv6 service whose ring names an IPv4 backend",
            query(v6_listen).bytes(),
            Reason::NoBackend,
            MISS,
        ),
        passed(
            "TCP SYN to a service with an empty ring",
            segment(to(9), tcp::SYN).bytes(),
            Reason::NoBackend,
            MISS,
        ),
        passed(
            "TCP ACK to a service with an empty ring: no flow comes first",
            segment(to(9), tcp::ACK).bytes(),
            Reason::TcpNoFlow,
            MISS,
        ),
    ]);
}

#[test]
fn nth_walks_backends_in_order_and_random_is_uniform() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let nth: Vec<SocketAddr> = (0..8)
        .map(|i| prog.steer(&query(VIP).sport(41000 + i)))
        .collect();
    let want: Vec<SocketAddr> = B.iter().chain(B.iter()).map(|&b| b.into()).collect();
    assert_eq!(nth, want, "nth walks the backends in order");

    let draws = 4000;
    let hits = tally((0..draws).map(|i| prog.steer(&query(RAND_VIP).sport(20000 + i))));
    assert_eq!(hits.len(), 4, "random reaches every backend: {hits:?}");
    let counts: Vec<usize> = hits.values().map(|&h| h as usize).collect();
    let chi2 = testbed::chi_square_uniform(&counts);
    assert!(
        chi2 < testbed::CHI_SQUARE_3DF_P001,
        "random split {hits:?} fails chi-square at p = 0.001: {chi2:.2}"
    );
    for (backend, n) in &hits {
        let stats = prog.backend_stats(RAND_ID, *backend);
        assert_eq!(
            (stats.packets, stats.new_flows),
            (*n as u64, *n as u64),
            "{backend}: one packet and one new flow per pick"
        );
    }
}

#[test]
fn nth_weights_follow_the_smooth_ring_order() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let mut ring = [0u8; 8];
    let len = smooth_ring(&[3, 1], &mut ring).unwrap();
    assert_eq!(&ring[..len], &[0, 0, 1, 0], "smooth WRR for 3:1 is a a b a");
    let cases: Vec<Case> = ring[..len]
        .iter()
        .cycle()
        .take(8)
        .enumerate()
        .map(|(i, &k)| {
            let p = query(WEIGHTED_VIP).sport(41000 + i as u16);
            steered(
                format!("new flow {i} of weights 3:1"),
                &p,
                W[k as usize],
                NEW_FLOW,
            )
        })
        .collect();
    prog.check(&cases);
    let flows = |b| prog.backend_stats(WEIGHTED_ID, b).new_flows;
    assert_eq!((flows(W[0]), flows(W[1])), (6, 2));
}

#[test]
fn random_weights_split_new_flows_in_proportion() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let n = 8000u16;
    let hits = tally((0..n).map(|i| prog.steer(&query(WEIGHTED_RANDOM_VIP).sport(20000 + i))));
    assert_eq!(
        hits.keys().copied().collect::<Vec<_>>(),
        WR.map(SocketAddr::V4),
        "{hits:?}"
    );
    // Binomial: the heavy backend's count is within 6 sigma of n * 3/4 but by
    // chance once in 5e8 runs; 6 sigma is 232 flows, 2.9 % of n.
    let (n, p) = (n as f64, 0.75);
    let sigma = (n * p * (1.0 - p)).sqrt();
    let heavy = hits[&WR[0].into()] as f64;
    assert!(
        (heavy - n * p).abs() <= 6.0 * sigma,
        "weights 3:1 split {hits:?}: {heavy} is more than 6 sigma ({sigma:.1}) off {}",
        n * p
    );
    assert!(
        (heavy / n - p).abs() < 0.03,
        "{hits:?} is within 3 % of 75 %/25 %"
    );
}

#[test]
fn packets_of_a_flow_stick_to_its_backend() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let flow = query(VIP).sport(42000);
    // Ten packets of one flow, a new flow between each two: the new flows walk
    // on (B1, B2, B3, B0, ..) while the flow stays on B0.
    let mut cases = vec![steered("first packet of the flow", &flow, B[0], NEW_FLOW)];
    for i in 1..10u16 {
        let other = query(VIP).sport(42000 + i);
        let next = B[i as usize % 4];
        cases.push(steered(format!("new flow {i}"), &other, next, NEW_FLOW));
        cases.push(steered(
            format!("packet {} of the flow", i + 1),
            &flow,
            B[0],
            HIT,
        ));
    }
    cases.push(steered(
        "the same ports to the alias address are another flow",
        &query(ALIAS).sport(42000),
        B[2],
        NEW_FLOW,
    ));
    prog.check(&cases);

    // B0: the flow's ten packets and the new flows 4 and 8.
    let len = flow.bytes().len() as u64;
    assert_eq!(
        prog.backend_stats(DNS_ID, B[0]),
        BackendCounter {
            packets: 12,
            bytes: 12 * len,
            new_flows: 3
        }
    );
    assert_eq!(
        (prog.event(FlowEvent::Hit), prog.event(FlowEvent::Miss)),
        (9, 11)
    );
    assert_eq!(
        prog.event(FlowEvent::Inserted),
        11,
        "one affinity record per flow"
    );
    // Every packet is a query in flight: the flow's nine repeats carry its
    // first one's DNS ID, so they rewrite its record rather than add one.
    let queries = prog.query_events();
    assert_eq!(
        (
            queries[QueryEvent::Inserted as usize],
            queries[QueryEvent::Retransmitted as usize],
            queries[QueryEvent::InsertFailed as usize]
        ),
        (11, 9, 0)
    );

    // The affinity record names the backend, the query's record the address asked.
    let affinity_key = FlowKey {
        src_addr: a(CLIENT),
        dst_addr: a(*VIP.ip()),
        src_port: 42000u16.to_be_bytes(),
        dst_port: 53u16.to_be_bytes(),
        proto: PROTO_UDP,
        direction: direction::QUERY,
        _pad: [0; 2],
    };
    let record = prog.affinity(&affinity_key).expect("the affinity record");
    assert_eq!(
        (record.addr, record.port, record.slot, record.flags),
        (
            a(*B[0].ip()),
            53u16.to_be_bytes(),
            backend_slot(DNS_ID, 0),
            0
        )
    );
    assert_eq!(prog.flow(&affinity_key), None, "UDP keeps no TCP records");
    let query_key = QueryKey::new(
        (a(*B[0].ip()), 53u16.to_be_bytes()),
        (a(CLIENT), 42000u16.to_be_bytes()),
        DNS_QUERY_ID,
    );
    let record = prog.query_record(&query_key).expect("the query's record");
    assert_eq!(
        (record.asked, record.asked_port, record.slot),
        (a(*VIP.ip()), 53u16.to_be_bytes(), backend_slot(DNS_ID, 0))
    );
}

#[test]
fn a_retransmission_keeps_its_record_and_takes_the_latest_address_asked() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    // nth walks B0..B3, so the fifth new flow, the same port asking the alias
    // address with the same DNS ID, lands on B0 again: the same query record.
    let mut cases = Vec::new();
    for i in 0..4u16 {
        let flow = query(VIP).sport(44000 + i);
        cases.push(steered(
            format!("new flow {i}"),
            &flow,
            B[i as usize],
            NEW_FLOW,
        ));
    }
    prog.check(&cases);
    let key = QueryKey::new(
        (a(*B[0].ip()), 53u16.to_be_bytes()),
        (a(CLIENT), 44000u16.to_be_bytes()),
        DNS_QUERY_ID,
    );
    let first = prog.query_record(&key).expect("the first query's record");
    assert_eq!(first.asked, a(*VIP.ip()));

    let alias = query(ALIAS).sport(44000);
    prog.check(&[steered(
        "the same port and ID to the alias",
        &alias,
        B[0],
        NEW_FLOW,
    )]);
    let record = prog
        .query_record(&key)
        .expect("the retransmission's record");
    assert_eq!(
        (record.asked, record.asked_port, record.slot),
        (a(*ALIAS.ip()), 53u16.to_be_bytes(), backend_slot(DNS_ID, 0)),
        "the record names the latest address asked"
    );
    assert!(record.sent_ns >= first.sent_ns);

    let again = query(VIP).sport(44000);
    prog.check(&[steered(
        "the same query to the service again",
        &again,
        B[0],
        HIT,
    )]);
    let latest = prog
        .query_record(&key)
        .expect("the record after a plain retransmission");
    assert_eq!(latest.asked, a(*VIP.ip()), "and back");
    assert!(latest.sent_ns >= record.sent_ns);

    let queries = prog.query_events();
    assert_eq!(
        (
            queries[QueryEvent::Inserted as usize],
            queries[QueryEvent::Retransmitted as usize]
        ),
        (4, 2)
    );
}

#[test]
fn tc_reply_table_translates_from_the_query_record() {
    pin_to_cpu0();
    let mut prog = Loaded::new(CONFIG);
    // Flows: client:40000 to the alias (B0) and to the wildcard listen, client:40010 to VIP (B1).
    let alias = query(ALIAS);
    let wild = query(WILD);
    let second = query(VIP).sport(40010);
    prog.check(&[
        steered("flow to the alias", &alias, B[0], NEW_FLOW),
        steered("flow to the wildcard listen", &wild, WILD_BACKEND, NEW_FLOW),
        steered("flow of another client port", &second, B[1], NEW_FLOW),
    ]);
    let answer = alias.clone().to(B[0]).answer();
    let mut nosum = answer.clone();
    nosum.zero_udp_csum = true;
    let other_client = answer.clone().to(SocketAddrV4::new(CLIENT, 40001));
    let wild_answer = wild.clone().to(WILD_BACKEND).answer();
    let mut wild_nosum = wild_answer.clone();
    wild_nosum.zero_udp_csum = true;
    let mut options = answer.clone();
    options.options = 8;
    // Each answer consumes its query's record: the next one needs the query again.
    let again = |what: &str, p: &Pkt, backend: SocketAddr| {
        steered(format!("{what}: asked again"), p, backend, HIT)
    };
    let cases = [
        replied("answer from the backend", &answer, ALIAS, NO_EVENTS),
        tc(
            "the same answer again: its query's record is consumed",
            answer.bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
        again("zero UDP checksum", &alias, B[0].into()),
        replied("zero UDP checksum stays zero", &nosum, ALIAS, NO_EVENTS),
        replied("port translated back too", &wild_answer, WILD, NO_EVENTS),
        again("wildcard", &wild, WILD_BACKEND.into()),
        replied(
            "zero UDP checksum stays zero, port translated back",
            &wild_nosum,
            WILD,
            NO_EVENTS,
        ),
        again("IPv4 options", &alias, B[0].into()),
        tc(
            "an answer with another DNS ID",
            answer.clone().id(0x1234).bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
        replied("IPv4 options in the answer", &options, ALIAS, NO_EVENTS),
        replied(
            "the other flow's answer from its own backend",
            &second.clone().to(B[1]).answer(),
            VIP,
            NO_EVENTS,
        ),
        again("another backend", &alias, B[0].into()),
        tc(
            "another backend of the service answering the first flow's port",
            answer.clone().from(B[1]).bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
        tc(
            "backend packet with no flow",
            other_client.bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
        tc(
            "not from a backend",
            answer.clone().from(sock(192, 0, 2, 1, 53)).bytes(),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
        tc(
            "from a backend address, other port",
            answer.clone().from(sock(10, 100, 13, 2, 54)).bytes(),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
        tc(
            "TCP from a UDP-only backend",
            segment(SocketAddrV4::new(CLIENT, 40000), tcp::SYN | tcp::ACK)
                .from(B[0])
                .bytes(),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
    ];
    prog.check(&cases);

    // Without its record the answer is not translated; the query asked again
    // writes it again, and its answer is.
    let mut queries: HashMap<_, QueryKey, QueryValue> =
        maps::typed(prog.ebpf_mut(), names::QUERIES).unwrap();
    let key = QueryKey::new(
        (a(*B[0].ip()), 53u16.to_be_bytes()),
        (a(CLIENT), 40000u16.to_be_bytes()),
        DNS_QUERY_ID,
    );
    queries.remove(&key).expect("the alias query's record");
    prog.check(&[
        tc(
            "answer whose query's record is gone",
            answer.bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
        again("record gone", &alias, B[0].into()),
        replied(
            "and its answer is translated again",
            &answer,
            ALIAS,
            NO_EVENTS,
        ),
    ]);

    // One client port asking two addresses whose flows share a backend, both
    // in flight at once: the answers share a 5-tuple, and the DNS ID tells
    // which address each must come from.
    let to_vip = query(VIP).sport(40030).id(0x1111);
    let to_alias = query(ALIAS).sport(40030).id(0x2222);
    let mut cases = vec![steered("client port 40030 to VIP", &to_vip, B[2], NEW_FLOW)];
    for (port, b) in [(40031, B[3]), (40032, B[0]), (40033, B[1])] {
        cases.push(steered(
            "another flow",
            &query(VIP).sport(port),
            b,
            NEW_FLOW,
        ));
    }
    cases.extend([
        steered(
            "client port 40030 to the alias, on the same backend",
            &to_alias,
            B[2],
            NEW_FLOW,
        ),
        replied(
            "the VIP query's answer, asked first",
            &to_vip.clone().to(B[2]).answer(),
            VIP,
            NO_EVENTS,
        ),
        replied(
            "the alias query's answer, asked last",
            &to_alias.clone().to(B[2]).answer(),
            ALIAS,
            NO_EVENTS,
        ),
    ]);
    prog.check(&cases);
}

const IDLE_CONFIG: &str = r#"
interface = "lo"

[flows]
udp_idle_timeout = "100ms"
tcp_idle_timeout = "10s"
tcp_closing_timeout = "100ms"

[[service]]
name = "dns"
protocol = "udp+tcp"
listen = ["192.0.2.10:53"]
backends = ["10.100.13.2:53", "10.100.13.3:53"]
"#;

#[test]
fn idle_flows_expire_and_are_rebalanced() {
    pin_to_cpu0();
    let prog = Loaded::new(IDLE_CONFIG);
    let udp = query(VIP).sport(43000);
    let open = segment(VIP, tcp::SYN).sport(43001);
    let closing = segment(VIP, tcp::SYN).sport(43002);
    let ack = |p: &Pkt| p.clone().flags(tcp::ACK);
    prog.check(&[
        steered("UDP flow", &udp, B[0], NEW_FLOW),
        steered("TCP flow", &open, B[1], NEW_CONNECTION),
        steered("TCP flow to be closed", &closing, B[0], NEW_CONNECTION),
        steered(
            "its FIN",
            &closing.clone().flags(tcp::FIN | tcp::ACK),
            B[0],
            HIT,
        ),
        steered("UDP flow within its timeout", &udp, B[0], HIT),
    ]);
    let before = prog.backend_stats(DNS_ID, B[1]);
    // Past the UDP and closing timeouts (100 ms), well within the TCP one (10 s).
    thread::sleep(Duration::from_millis(250));
    prog.check(&[
        steered(
            "UDP flow after its idle timeout: rebalanced",
            &udp,
            B[1],
            EXPIRED_REBALANCED,
        ),
        steered("the rebalanced flow stays", &udp, B[1], HIT),
        steered(
            "open TCP flow within its idle timeout",
            &ack(&open),
            B[1],
            HIT,
        ),
        passed(
            "closed TCP flow after its closing timeout",
            ack(&closing).bytes(),
            Reason::TcpNoFlow,
            &[(FlowEvent::Expired, 1)],
        ),
        // Back to B0, whose reply record for this port is still there: nothing new inserted.
        steered(
            "a new SYN on the closed flow's ports",
            &closing,
            B[0],
            &[(FlowEvent::Expired, 1)],
        ),
    ]);
    let after = prog.backend_stats(DNS_ID, B[1]);
    assert_eq!(
        (
            after.new_flows - before.new_flows,
            after.packets - before.packets
        ),
        (1, 3),
        "B1 took the expired UDP flow as a new flow"
    );
}

#[test]
fn tcp_flows_start_at_syn_and_end_at_rst_or_fin() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let syn = |port| segment(BOTH_VIP, tcp::SYN).sport(port);
    let ack = |port| segment(BOTH_VIP, tcp::ACK).sport(port);
    // The backend's segment of flow `port`, as it leaves towards the client.
    let from_backend =
        |backend, port, flags| segment(BOTH_VIP, flags).sport(port).to(backend).answer();
    let syn_ack = tcp::SYN | tcp::ACK;
    let rst = tcp::RST | tcp::ACK;
    let fin = tcp::FIN | tcp::ACK;
    let udp_same_ports = query(BOTH_VIP).sport(44000);

    // New flows of "both" alternate T0, T1 (nth); other packets leave the cursor alone.
    let cases = [
        steered("SYN opens a flow", &syn(44000), T[0], NEW_CONNECTION),
        steered("ACK of that flow follows it", &ack(44000), T[0], HIT),
        steered(
            "the query segment follows it",
            &ack(44000).flags(tcp::ACK | PSH).with_tcp_query(),
            T[0],
            HIT,
        ),
        passed(
            "ACK of an unknown flow",
            ack(44001).bytes(),
            Reason::TcpNoFlow,
            MISS,
        ),
        passed(
            "SYN+ACK does not open a flow",
            syn(44002).flags(syn_ack).bytes(),
            Reason::TcpNoFlow,
            MISS,
        ),
        steered(
            "UDP on the same ports is a flow of its own",
            &udp_same_ports,
            T[1],
            NEW_FLOW,
        ),
        steered(
            "SYN to a tcp-only service, backend on another port",
            &segment(TCP_VIP, tcp::SYN).sport(44003),
            TCP_BACKEND,
            NEW_CONNECTION,
        ),
        passed(
            "UDP to a tcp-only service",
            query(TCP_VIP).sport(44003).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        replied(
            "SYN-ACK from the backend",
            &from_backend(T[0], 44000, syn_ack),
            BOTH_VIP,
            NO_EVENTS,
        ),
        replied(
            "answer segment from the backend",
            &from_backend(T[0], 44000, tcp::ACK | PSH).with_tcp_query(),
            BOTH_VIP,
            NO_EVENTS,
        ),
        replied(
            "SYN-ACK with the port translated back",
            &segment(TCP_VIP, syn_ack)
                .sport(44003)
                .to(TCP_BACKEND)
                .answer(),
            TCP_VIP,
            NO_EVENTS,
        ),
        replied(
            "UDP answer of the UDP flow on the same ports",
            &udp_same_ports.clone().to(T[1]).answer(),
            BOTH_VIP,
            NO_EVENTS,
        ),
        // RST from the client: steered, then both records are gone.
        steered(
            "SYN of a flow the client resets",
            &syn(44010),
            T[0],
            NEW_CONNECTION,
        ),
        steered(
            "the client's RST still reaches the backend",
            &syn(44010).flags(rst),
            T[0],
            HIT_AND_DELETED,
        ),
        passed(
            "ACK after the client's RST",
            ack(44010).bytes(),
            Reason::TcpNoFlow,
            MISS,
        ),
        tc(
            "backend segment after the client's RST",
            from_backend(T[0], 44010, tcp::ACK).bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
        // RST from the backend: translated, then both records are gone.
        steered(
            "SYN of a flow the backend resets",
            &syn(44011),
            T[1],
            NEW_CONNECTION,
        ),
        replied(
            "the backend's RST is translated",
            &from_backend(T[1], 44011, rst),
            BOTH_VIP,
            DELETED,
        ),
        passed(
            "ACK after the backend's RST",
            ack(44011).bytes(),
            Reason::TcpNoFlow,
            MISS,
        ),
        // FIN from the client: the flow goes on until it closes; a SYN is a new flow.
        steered(
            "SYN of a flow the client closes",
            &syn(44012),
            T[0],
            NEW_CONNECTION,
        ),
        steered("the client's FIN", &syn(44012).flags(fin), T[0], HIT),
        steered(
            "ACK of the closing flow, within its closing timeout",
            &ack(44012),
            T[0],
            HIT,
        ),
        steered(
            "a new SYN on the closing flow's ports",
            &syn(44012),
            T[1],
            EXPIRED_RECONNECTED,
        ),
        steered("the new connection's ACK", &ack(44012), T[1], HIT),
        // FIN from the backend marks the client's record too.
        steered(
            "SYN of a flow the backend closes",
            &syn(44013),
            T[0],
            NEW_CONNECTION,
        ),
        replied(
            "the backend's FIN is translated",
            &from_backend(T[0], 44013, fin),
            BOTH_VIP,
            NO_EVENTS,
        ),
        steered(
            "a new SYN after the backend's FIN",
            &syn(44013),
            T[1],
            EXPIRED_RECONNECTED,
        ),
    ];
    prog.check(&cases);
}

#[test]
fn generation_flips_move_new_flows_and_keep_or_move_old_ones() {
    pin_to_cpu0();
    let mut prog = Loaded::new(CONFIG);
    let e = sock(10, 100, 13, 6, 53);
    let old: Vec<Pkt> = (0..4).map(|i| query(VIP).sport(45000 + i)).collect();
    let cases: Vec<Case> = old
        .iter()
        .zip(B)
        .map(|(p, b)| steered(format!("flow to {b} before the change"), p, b, NEW_FLOW))
        .collect();
    prog.check(&cases);

    // B1 removed, E added, B2 drained: each change flips the ring's generation.
    for change in [
        Change::Remove(B[1].into()),
        Change::Add(e.into(), 1),
        Change::Drain(B[2].into()),
    ] {
        let generation = prog.active_ring(DNS_ID);
        prog.change("dns", change);
        assert_ne!(
            prog.active_ring(DNS_ID),
            generation,
            "a change flips the generation"
        );
    }
    let fresh = tally((0..42).map(|i| prog.steer(&query(VIP).sport(45100 + i))));
    assert_eq!(
        fresh,
        BTreeMap::from([(B[0], 14), (B[3], 14), (e, 14)].map(|(b, n)| (b.into(), n))),
        "new flows go to the new set only, in turns"
    );
    assert_eq!(prog.backend_stats(DNS_ID, e).new_flows, 14);

    let drained = prog.backend_stats(DNS_ID, B[2]);
    // The nth cursor is back at the ring's start (42 = 14 rounds of 3): B0.
    prog.check(&[
        steered("flow of a kept backend", &old[0], B[0], HIT),
        steered("flow of the draining backend stays", &old[2], B[2], HIT),
        steered("flow of a kept backend", &old[3], B[3], HIT),
        steered(
            "flow of the removed backend moves",
            &old[1],
            B[0],
            GONE_REBALANCED,
        ),
        steered("the moved flow stays", &old[1], B[0], HIT),
    ]);
    let now = prog.backend_stats(DNS_ID, B[2]);
    assert_eq!(
        (
            now.packets - drained.packets,
            now.new_flows - drained.new_flows
        ),
        (1, 0),
        "the draining backend gets its flow's packet but no new flow"
    );

    // B1 back: it takes new flows again.
    let generation = prog.active_ring(DNS_ID);
    prog.change("dns", Change::Add(B[1].into(), 1));
    assert_ne!(prog.active_ring(DNS_ID), generation);
    let fresh = tally((0..40).map(|i| prog.steer(&query(VIP).sport(45200 + i))));
    assert_eq!(
        fresh,
        BTreeMap::from([(B[0], 10), (B[1], 10), (B[3], 10), (e, 10)].map(|(b, n)| (b.into(), n))),
        "the re-added backend takes its share of new flows"
    );

    // Removing the draining backend moves its flow too. The ring (B0 B1 B3 E)
    // is unchanged and the cursor, at 1 since the moved flow, is again: B1.
    prog.change("dns", Change::Remove(B[2].into()));
    prog.check(&[
        steered(
            "flow of the drained backend, once removed, moves",
            &old[2],
            B[1],
            GONE_REBALANCED,
        ),
        steered("flow moved earlier stays", &old[1], B[0], HIT),
    ]);
}

#[test]
fn late_fin_or_rst_from_a_former_backend_leaves_the_new_flow_alone() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let syn = segment(BOTH_VIP, tcp::SYN).sport(44100);
    let from_t0 = |flags| syn.clone().flags(flags).to(T[0]).answer();
    let query_key = FlowKey {
        src_addr: a(CLIENT),
        dst_addr: a(*BOTH_VIP.ip()),
        src_port: 44100u16.to_be_bytes(),
        dst_port: 53u16.to_be_bytes(),
        proto: PROTO_TCP,
        direction: direction::QUERY,
        _pad: [0; 2],
    };
    // A connection on T0 closes; the client reuses its port for a new one, which
    // (its record closing) is balanced anew, to T1.
    prog.check(&[
        steered("first connection", &syn, T[0], NEW_CONNECTION),
        replied(
            "T0 closes it",
            &from_t0(tcp::FIN | tcp::ACK),
            BOTH_VIP,
            NO_EVENTS,
        ),
        steered(
            "second connection on the same ports",
            &syn,
            T[1],
            EXPIRED_RECONNECTED,
        ),
    ]);
    // A retransmitted FIN of the first connection still has T0's reply record,
    // but must not mark the second connection, on T1, closing.
    prog.check(&[replied(
        "T0's FIN again, late",
        &from_t0(tcp::FIN | tcp::ACK),
        BOTH_VIP,
        NO_EVENTS,
    )]);
    let record = prog
        .flow(&query_key)
        .expect("the second connection's record");
    assert_eq!(
        (record.addr, record.flags),
        (a(*T[1].ip()), 0),
        "a former backend's FIN marked the new flow on T1 closing"
    );
    // Nor may a late RST from T0 delete it. Only T0's own reply record may go.
    prog.check(&[
        replied(
            "T0's RST, late",
            &from_t0(tcp::RST | tcp::ACK),
            BOTH_VIP,
            &[(FlowEvent::Deleted, 1)],
        ),
        steered(
            "the second connection's ACK still follows it",
            &syn.clone().flags(tcp::ACK),
            T[1],
            HIT,
        ),
    ]);
}

/// An ICMP error from `from` to the client, `icmp_type`/`code` with `rest`
/// (unused, or the next-hop MTU), quoting `quote`: an IPv4 packet, as much of it
/// as the sender kept. Checksums from scratch.
fn icmp_error(from: Ipv4Addr, icmp_type: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    icmp_error_to(from, CLIENT, icmp_type, code, rest, quote)
}

/// The same, from `from` to `to`.
fn icmp_error_to(
    from: Ipv4Addr,
    to: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0xc0]);
    f.extend_from_slice(&((20 + 8 + quote.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0x56, 0x78, 0, 0, 64, icmp::PROTO, 0, 0]);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(&to.octets());
    let c = csum::ipv4_header(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&[icmp_type, code, 0, 0]);
    f.extend_from_slice(&rest);
    f.extend_from_slice(quote);
    let c = !csum::fold(csum::sum_bytes(0, &f[34..]));
    f[36..38].copy_from_slice(&c.to_be_bytes());
    f
}

/// The IPv4 packet `p` as its backend got it: the query steered there.
fn as_forwarded(p: &Pkt, backend: SocketAddrV4) -> Vec<u8> {
    p.clone().to(backend).bytes()[14..].to_vec()
}

/// `quote` pointed back at `asked`, its IPv4 header checksum from scratch; its
/// UDP or TCP checksum stays as the backend got it.
fn quote_as_asked(quote: &[u8], asked: SocketAddrV4) -> Vec<u8> {
    let mut q = quote.to_vec();
    let ihl = (q[0] & 0x0f) as usize * 4;
    q[16..20].copy_from_slice(&asked.ip().octets());
    q[ihl + 2..ihl + 4].copy_from_slice(&asked.port().to_be_bytes());
    q[10..12].copy_from_slice(&[0, 0]);
    let c = csum::ipv4_header(&q[..ihl]);
    q[10..12].copy_from_slice(&c.to_be_bytes());
    q
}

/// Every checksum of an untagged ICMP error frame verifies from scratch: the
/// outer IPv4 header, the ICMP message, the quoted IPv4 header.
fn assert_icmp_checksums(what: &str, f: &[u8]) {
    let outer = (f[14] & 0x0f) as usize * 4;
    let icmp_at = 14 + outer;
    let quoted = icmp_at + 8;
    let inner = (f[quoted] & 0x0f) as usize * 4;
    assert_eq!(csum::ipv4_header(&f[14..icmp_at]), 0, "{what}: outer IPv4");
    assert_eq!(
        !csum::fold(csum::sum_bytes(0, &f[icmp_at..])),
        0,
        "{what}: ICMP"
    );
    assert_eq!(
        csum::ipv4_header(&f[quoted..quoted + inner]),
        0,
        "{what}: quoted IPv4"
    );
}

#[test]
fn tc_icmp_errors_about_steered_flows_are_translated_like_replies() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let udp = query(VIP).sport(46000);
    let wild = query(WILD).sport(46001);
    let syn = segment(TCP_VIP, tcp::SYN).sport(46002);
    let mut opts = query(VIP).sport(46003);
    opts.options = 8;
    prog.check(&[
        steered("UDP flow", &udp, B[0], NEW_FLOW),
        steered(
            "UDP flow, backend on another port",
            &wild,
            WILD_BACKEND,
            NEW_FLOW,
        ),
        steered(
            "TCP flow, backend on another port",
            &syn,
            TCP_BACKEND,
            NEW_CONNECTION,
        ),
        steered("UDP flow with IPv4 options", &opts, B[1], NEW_FLOW),
    ]);
    let router = Ipv4Addr::new(10, 100, 13, 1);
    let no_mtu = [0; 4];
    let mtu_1400 = [0, 0, 0x05, 0x78];
    let (udp_q, wild_q) = (as_forwarded(&udp, B[0]), as_forwarded(&wild, WILD_BACKEND));
    let (syn_q, opts_q) = (as_forwarded(&syn, TCP_BACKEND), as_forwarded(&opts, B[1]));
    // (what, from, type, code, rest, quote, the address the client asked)
    let translated = [
        (
            "port unreachable from the backend",
            *B[0].ip(),
            icmp::DEST_UNREACH,
            icmp::PORT_UNREACH,
            no_mtu,
            udp_q.clone(),
            VIP,
        ),
        (
            "port unreachable from a backend on another port",
            *WILD_BACKEND.ip(),
            icmp::DEST_UNREACH,
            icmp::PORT_UNREACH,
            no_mtu,
            wild_q.clone(),
            WILD,
        ),
        (
            "fragmentation needed from the backend",
            *B[0].ip(),
            icmp::DEST_UNREACH,
            icmp::FRAG_NEEDED,
            mtu_1400,
            udp_q.clone(),
            VIP,
        ),
        (
            "fragmentation needed from a router: sent from the service address too",
            router,
            icmp::DEST_UNREACH,
            icmp::FRAG_NEEDED,
            mtu_1400,
            wild_q.clone(),
            WILD,
        ),
        (
            "time exceeded from a router",
            router,
            icmp::TIME_EXCEEDED,
            0,
            no_mtu,
            udp_q.clone(),
            VIP,
        ),
        (
            "quote of the IPv4 header, 8 UDP bytes and the DNS ID",
            *WILD_BACKEND.ip(),
            icmp::DEST_UNREACH,
            icmp::PORT_UNREACH,
            no_mtu,
            wild_q[..30].to_vec(),
            WILD,
        ),
        (
            "quoted query with IPv4 options",
            *B[1].ip(),
            icmp::DEST_UNREACH,
            icmp::PORT_UNREACH,
            no_mtu,
            opts_q.clone(),
            VIP,
        ),
        (
            "host unreachable from a router, TCP quoted whole",
            router,
            icmp::DEST_UNREACH,
            icmp::HOST_UNREACH,
            no_mtu,
            syn_q.clone(),
            TCP_VIP,
        ),
        (
            "fragmentation needed, TCP quoted to its first 8 bytes",
            *TCP_BACKEND.ip(),
            icmp::DEST_UNREACH,
            icmp::FRAG_NEEDED,
            mtu_1400,
            syn_q[..28].to_vec(),
            TCP_VIP,
        ),
    ];
    let mut cases: Vec<Case> = translated
        .iter()
        .map(|(what, from, ty, code, rest, quote, asked)| {
            let want = icmp_error(
                *asked.ip(),
                *ty,
                *code,
                *rest,
                &quote_as_asked(quote, *asked),
            );
            tc(
                *what,
                icmp_error(*from, *ty, *code, *rest, quote),
                Out::Packet(want),
                Some(Reason::IcmpRewritten),
                NO_EVENTS,
            )
        })
        .collect();

    let mut fragment = icmp_error(
        *B[0].ip(),
        icmp::DEST_UNREACH,
        icmp::PORT_UNREACH,
        no_mtu,
        &udp_q,
    );
    fragment[20] = 0x20; // MF
    fragment[24..26].copy_from_slice(&[0, 0]);
    let c = csum::ipv4_header(&fragment[14..34]);
    fragment[24..26].copy_from_slice(&c.to_be_bytes());
    let mut about_icmp = query(B[0]);
    about_icmp.proto = icmp::PROTO;
    let untouched = [
        (
            "port unreachable about a client port with no flow",
            icmp_error(
                *B[0].ip(),
                icmp::DEST_UNREACH,
                icmp::PORT_UNREACH,
                no_mtu,
                &as_forwarded(&query(VIP).sport(46099), B[0]),
            ),
        ),
        (
            "port unreachable about the flow's ports on another backend",
            icmp_error(
                *B[1].ip(),
                icmp::DEST_UNREACH,
                icmp::PORT_UNREACH,
                no_mtu,
                &as_forwarded(&udp, B[1]),
            ),
        ),
        (
            // A UDP query is found by its DNS ID, past the 8 bytes RFC 792
            // requires (RFC 1812 routers and Linux quote up to 576 bytes).
            "UDP quote of the IPv4 header and 8 bytes only",
            icmp_error(
                *WILD_BACKEND.ip(),
                icmp::DEST_UNREACH,
                icmp::PORT_UNREACH,
                no_mtu,
                &wild_q[..28],
            ),
        ),
        (
            "quote cut inside the UDP header",
            icmp_error(
                *B[0].ip(),
                icmp::DEST_UNREACH,
                icmp::PORT_UNREACH,
                no_mtu,
                &udp_q[..24],
            ),
        ),
        (
            "quote cut inside the IPv4 header",
            icmp_error(
                *B[0].ip(),
                icmp::DEST_UNREACH,
                icmp::PORT_UNREACH,
                no_mtu,
                &udp_q[..16],
            ),
        ),
        (
            "echo reply from the backend",
            icmp_error(
                *B[0].ip(),
                icmp::ECHO_REPLY,
                0,
                [0x12, 0x34, 0, 1],
                b"ping payload",
            ),
        ),
        (
            "redirect from a router quoting the flow",
            icmp_error(router, icmp::REDIRECT, 1, [10, 100, 13, 254], &udp_q),
        ),
        (
            "port unreachable about an ICMP packet",
            icmp_error(
                *B[0].ip(),
                icmp::DEST_UNREACH,
                icmp::PROTO_UNREACH,
                no_mtu,
                &about_icmp.bytes()[14..],
            ),
        ),
        ("a fragment of an ICMP error", fragment),
    ];
    cases.extend(
        untouched
            .into_iter()
            .map(|(what, input)| tc(what, input, Out::Unchanged, None, NO_EVENTS)),
    );
    prog.check(&cases);

    // The output itself, checked field by field rather than against a packet
    // built the same way.
    for (what, from, ty, code, rest, quote, asked) in &translated {
        let (_, out) = prog.run(TC_PROGRAM, &icmp_error(*from, *ty, *code, *rest, quote));
        assert_icmp_checksums(what, &out);
        assert_eq!(&out[26..30], &asked.ip().octets(), "{what}: outer source");
        assert_eq!(&out[30..34], &CLIENT.octets(), "{what}: outer destination");
        let inner = 42;
        let l4 = inner + (out[inner] & 0x0f) as usize * 4;
        assert_eq!(
            &out[inner + 16..inner + 20],
            &asked.ip().octets(),
            "{what}: quoted destination"
        );
        assert_eq!(
            &out[l4 + 2..l4 + 4],
            &asked.port().to_be_bytes(),
            "{what}: quoted port"
        );
    }
}

/// `p`'s datagram (untagged, IPv4 without options or IPv6 without extension
/// headers) cut after `first_len` payload bytes (a multiple of 8) into two
/// fragments, as a backend's stack sends a large answer: IPv4 with
/// identification `id`, IPv6 with a fragment header carrying it.
fn fragmented(p: &Pkt, id: u32, first_len: usize) -> [Vec<u8>; 2] {
    let f = p.bytes();
    let ipv6 = f[12..14] == [0x86, 0xdd];
    let (l3, l4) = if ipv6 { (14, 54) } else { (14, 34) };
    let payload = &f[l4..];
    let pieces = [
        (0, &payload[..first_len], true),
        (first_len, &payload[first_len..], false),
    ];
    pieces.map(|(offset, chunk, more)| {
        let mut out = f[..l4].to_vec();
        if ipv6 {
            out[l3 + 4..l3 + 6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
            out[l3 + ipv6::NEXT] = ipv6::FRAGMENT;
            out.extend_from_slice(&[PROTO_UDP, 0]);
            let word = ((offset / 8) as u16) << 3 | more as u16;
            out.extend_from_slice(&word.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        } else {
            out[l3 + 2..l3 + 4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
            out[l3 + 4..l3 + 6].copy_from_slice(&(id as u16).to_be_bytes());
            let word = (more as u16) << 13 | (offset / 8) as u16;
            out[l3 + 6..l3 + 8].copy_from_slice(&word.to_be_bytes());
            out[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = csum::ipv4_header(&out[l3..l4]);
            out[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        out.extend_from_slice(chunk);
        out
    })
}

/// The same answer, 2000 bytes longer: it no longer fits one frame.
fn large(p: Pkt) -> Pkt {
    let mut p = p;
    p.payload.extend(std::iter::repeat_n(b'x', 2000));
    p
}

/// Fragmented answers (EDNS buffers over the MTU): the first fragment is
/// translated from its query's record like a whole answer, later ones from
/// the record it leaves, IPv4 and IPv6.
#[test]
fn tc_fragmented_answers_are_translated_from_their_first_fragment() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let q4 = query(VIP).sport(47000);
    let q6 = query(ALIAS6).sport(47001);
    prog.check(&[
        steered("IPv4 query", &q4, B[0], NEW_FLOW),
        steered("IPv6 query", &q6, B6[0], NEW_FLOW),
    ]);
    let a4 = large(q4.clone().to(B[0]).answer());
    let a6 = large(q6.clone().to(B6[0]).answer());
    let (f4, want4) = (
        fragmented(&a4, 0x4242, 1480),
        fragmented(&a4.clone().from(VIP), 0x4242, 1480),
    );
    let (f6, want6) = (
        fragmented(&a6, 0x0102_0304, 1448),
        fragmented(&a6.clone().from(ALIAS6), 0x0102_0304, 1448),
    );
    let queries = prog.query_events();
    let [first4, second4] = f4.clone();
    let [first6, second6] = f6.clone();
    let [want_first4, want_second4] = want4;
    let [want_first6, want_second6] = want6;
    prog.check(&[
        tc(
            "a later fragment before its first",
            second4.clone(),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
        tc(
            "first fragment of an IPv4 answer",
            first4.clone(),
            Out::Packet(want_first4),
            Some(Reason::ReplyRewritten),
            NO_EVENTS,
        ),
        tc(
            "its last fragment",
            second4.clone(),
            Out::Packet(want_second4.clone()),
            Some(Reason::ReplyFragment),
            NO_EVENTS,
        ),
        tc(
            "the last fragment again (a duplicate)",
            second4.clone(),
            Out::Packet(want_second4),
            Some(Reason::ReplyFragment),
            NO_EVENTS,
        ),
        tc(
            "the first fragment again: its query's record is consumed",
            first4,
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
        tc(
            "a later fragment of another datagram",
            fragmented(&a4, 0x4243, 1480)[1].clone(),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
        tc(
            "first fragment of an IPv6 answer",
            first6,
            Out::Packet(want_first6),
            Some(Reason::ReplyRewritten),
            NO_EVENTS,
        ),
        tc(
            "its last fragment",
            second6,
            Out::Packet(want_second6),
            Some(Reason::ReplyFragment),
            NO_EVENTS,
        ),
    ]);
    let now = prog.query_events();
    let moved = |e: QueryEvent| now[e as usize] - queries[e as usize];
    assert_eq!(
        (
            moved(QueryEvent::Answered),
            moved(QueryEvent::FragmentUnmatched)
        ),
        (2, 2),
        "two answers; two later fragments without their first"
    );
    // A TCP segment is never fragmented by a stack that does PMTU discovery;
    // fragments of other protocols are not ours.
    let mut tcp_fragment = f4[1].clone();
    tcp_fragment[14 + 9] = PROTO_TCP;
    tcp_fragment[24..26].copy_from_slice(&[0, 0]);
    let c = csum::ipv4_header(&tcp_fragment[14..34]);
    tcp_fragment[24..26].copy_from_slice(&c.to_be_bytes());
    prog.check(&[tc(
        "a TCP fragment",
        tcp_fragment,
        Out::Unchanged,
        None,
        NO_EVENTS,
    )]);
}

/// An ICMPv6 error from `from` to `to`, `icmp_type`/`code` with `rest`, quoting
/// `quote` (an IPv6 packet, as much as the sender kept). Checksum from scratch.
fn icmp6_error(
    from: Ipv6Addr,
    to: Ipv6Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((8 + quote.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[icmp6::PROTO, 64]);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(&to.octets());
    f.extend_from_slice(&[icmp_type, code, 0, 0]);
    f.extend_from_slice(&rest);
    f.extend_from_slice(quote);
    let c = csum::ipv6_l4(from.octets(), to.octets(), icmp6::PROTO, &f[54..]);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f
}

/// An IPv4 `quote` made to come from `backend`, its IPv4 header checksum from
/// scratch; its UDP or TCP checksum stays as the answer left.
fn quote_from(quote: &[u8], backend: SocketAddrV4) -> Vec<u8> {
    let mut q = quote.to_vec();
    let ihl = (q[0] & 0x0f) as usize * 4;
    q[12..16].copy_from_slice(&backend.ip().octets());
    q[ihl..ihl + 2].copy_from_slice(&backend.port().to_be_bytes());
    q[10..12].copy_from_slice(&[0, 0]);
    let c = csum::ipv4_header(&q[..ihl]);
    q[10..12].copy_from_slice(&c.to_be_bytes());
    q
}

/// An IPv6 `quote`'s source (`source`) or destination set to `to`.
fn quote6_with(quote: &[u8], to: SocketAddrV6, source: bool) -> Vec<u8> {
    let mut q = quote.to_vec();
    let (addr, port) = if source { (8, 40) } else { (24, 42) };
    q[addr..addr + 16].copy_from_slice(&to.ip().octets());
    q[port..port + 2].copy_from_slice(&to.port().to_be_bytes());
    q
}

/// Path MTU discovery through dnsteer: an error about an answer, sent by a
/// router on the client's side to the service address the answer came from,
/// goes on to the backend that sent it, as if the answer had come from there.
#[test]
fn xdp_icmp_errors_about_answers_are_translated_towards_the_backend() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let udp = query(VIP).sport(47200);
    let syn = segment(TCP_VIP, tcp::SYN).sport(47201);
    let udp6 = query(VIP6).sport(47202);
    prog.check(&[
        steered("UDP flow", &udp, B[0], NEW_FLOW),
        steered("TCP connection", &syn, TCP_BACKEND, NEW_CONNECTION),
        steered("IPv6 UDP flow", &udp6, B6[0], NEW_FLOW),
    ]);
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let router6 = Ipv6Addr::new(0x2001, 0xdb8, 0xfe, 0, 0, 0, 0, 1);
    let mtu = [0, 0, 0x05, 0x00];
    // The answers as they left: service address to client.
    let answer = udp.answer().bytes()[14..].to_vec();
    let tcp_answer = syn.clone().flags(tcp::ACK | PSH).answer().bytes()[14..].to_vec();
    let answer6 = udp6.answer().bytes()[14..].to_vec();
    let to_vip = |quote: &[u8]| {
        icmp_error_to(
            router,
            *VIP.ip(),
            icmp::DEST_UNREACH,
            icmp::FRAG_NEEDED,
            mtu,
            quote,
        )
    };
    let translated = |what: &str, input: Vec<u8>, want: Vec<u8>| {
        case(
            what,
            input,
            Out::Packet(want),
            Some(Reason::IcmpToBackend),
            NO_EVENTS,
        )
    };
    let untouched = |what: &str, input: Vec<u8>| passed(what, input, Reason::NotService, NO_EVENTS);
    prog.check(&[
        translated(
            "fragmentation needed about a UDP answer",
            to_vip(&answer),
            icmp_error_to(
                router,
                *B[0].ip(),
                icmp::DEST_UNREACH,
                icmp::FRAG_NEEDED,
                mtu,
                &quote_from(&answer, B[0]),
            ),
        ),
        translated(
            "fragmentation needed about a TCP answer, its first 8 bytes quoted",
            icmp_error_to(
                router,
                *TCP_VIP.ip(),
                icmp::DEST_UNREACH,
                icmp::FRAG_NEEDED,
                mtu,
                &tcp_answer[..28],
            ),
            icmp_error_to(
                router,
                *TCP_BACKEND.ip(),
                icmp::DEST_UNREACH,
                icmp::FRAG_NEEDED,
                mtu,
                &quote_from(&tcp_answer[..28], TCP_BACKEND),
            ),
        ),
        translated(
            "packet too big about an IPv6 answer",
            icmp6_error(router6, *VIP6.ip(), icmp6::PACKET_TOO_BIG, 0, mtu, &answer6),
            icmp6_error(
                router6,
                *B6[0].ip(),
                icmp6::PACKET_TOO_BIG,
                0,
                mtu,
                &quote6_with(&answer6, B6[0], true),
            ),
        ),
        untouched(
            "about a client port with no flow",
            to_vip(&query(VIP).sport(47299).answer().bytes()[14..]),
        ),
        untouched(
            "sent to another address than the quote's source",
            icmp_error_to(
                router,
                *ALIAS.ip(),
                icmp::DEST_UNREACH,
                icmp::FRAG_NEEDED,
                mtu,
                &answer,
            ),
        ),
        untouched(
            "an echo request to the service address",
            icmp_error_to(router, *VIP.ip(), 8, 0, [0, 1, 0, 1], b"ping payload"),
        ),
        untouched(
            "an IPv6 quote cut inside its UDP header",
            icmp6_error(
                router6,
                *VIP6.ip(),
                icmp6::PACKET_TOO_BIG,
                0,
                mtu,
                &answer6[..44],
            ),
        ),
    ]);

    // And towards the client, ICMPv6 as ICMP: the backend's port unreachable
    // about the query it got (the query's record found by its DNS ID).
    let forwarded6 = udp6.clone().to(B6[0]).bytes()[14..].to_vec();
    let unreachable = |from: Ipv6Addr, quote: &[u8]| {
        icmp6_error(from, CLIENT6, icmp6::DEST_UNREACH, 4, [0; 4], quote)
    };
    prog.check(&[
        tc(
            "ICMPv6 port unreachable from the backend",
            unreachable(*B6[0].ip(), &forwarded6),
            Out::Packet(unreachable(
                *VIP6.ip(),
                &quote6_with(&forwarded6, VIP6, false),
            )),
            Some(Reason::IcmpRewritten),
            NO_EVENTS,
        ),
        tc(
            "ICMPv6 time exceeded from a router, quote cut after the DNS ID",
            icmp6_error(
                router6,
                CLIENT6,
                icmp6::TIME_EXCEEDED,
                0,
                [0; 4],
                &forwarded6[..50],
            ),
            Out::Packet(icmp6_error(
                *VIP6.ip(),
                CLIENT6,
                icmp6::TIME_EXCEEDED,
                0,
                [0; 4],
                &quote6_with(&forwarded6, VIP6, false)[..50],
            )),
            Some(Reason::IcmpRewritten),
            NO_EVENTS,
        ),
        tc(
            "ICMPv6 quoting 8 UDP bytes: no DNS ID to find the query by",
            unreachable(*B6[0].ip(), &forwarded6[..48]),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
        tc(
            "ICMPv6 about another client port",
            unreachable(
                *B6[0].ip(),
                &query(VIP6).sport(47298).to(B6[0]).bytes()[14..],
            ),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
    ]);
}

/// The UDP or TCP checksum of an untagged IPv6 frame without extension headers,
/// from scratch: 0 when valid.
fn ipv6_l4_checksum(frame: &[u8]) -> u16 {
    let src: [u8; 16] = frame[22..38].try_into().unwrap();
    let dst: [u8; 16] = frame[38..54].try_into().unwrap();
    let len = u16::from_be_bytes([frame[18], frame[19]]) as usize;
    csum::ipv6_l4(src, dst, frame[20], &frame[54..54 + len])
}

#[test]
fn xdp_ipv6_table_steers_new_flows_and_leaves_the_rest_alone() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let q = |port| query(VIP6).sport(port);
    let first = q(50001);
    let syn = segment(VIP6, tcp::SYN).sport(50002);
    let mut nosum = q(50003);
    nosum.zero_udp_csum = true;
    let mut long_payload = q(50004).bytes();
    long_payload[18..20].copy_from_slice(&500u16.to_be_bytes());
    let mut short_payload = q(50004).bytes();
    short_payload[19] -= 1;
    let mut v6_version_4 = q(50004).bytes();
    v6_version_4[14] = 0x40;
    let mut doff4 = syn.bytes();
    doff4[54 + 12] = 0x40;
    let mut icmp6 = q(50005);
    icmp6.proto = 58;
    let mapped = SocketAddrV6::new(Ipv4Addr::new(192, 0, 2, 10).to_ipv6_mapped(), 53, 0, 0);
    let mut from_mapped = q(50006);
    from_mapped.src = IpAddr::V6(CLIENT.to_ipv6_mapped());

    // The dns6 service's nth cursor starts at its backend 0 and advances on new
    // flows of either protocol.
    let mut cases = vec![
        steered("UDP query to the service address", &first, B6[0], NEW_FLOW),
        steered(
            "UDP query to the second address",
            &query(ALIAS6).sport(50010),
            B6[1],
            NEW_FLOW,
        ),
        steered("the first flow again keeps its backend", &first, B6[0], HIT),
        steered("TCP SYN", &syn, B6[2], NEW_CONNECTION),
        steered(
            "the TCP query segment follows it",
            &syn.clone().flags(tcp::ACK | PSH).with_tcp_query(),
            B6[2],
            HIT,
        ),
        steered("802.1Q tag", &q(50011).tagged(&[0x8100]), B6[3], NEW_FLOW),
        steered(
            "QinQ tags",
            &q(50012).tagged(&[0x88a8, 0x8100]),
            B6[0],
            NEW_FLOW,
        ),
        steered(
            "[::] wildcard listen, backend on another port",
            &query(WILD6).sport(50013),
            WILD6_BACKEND,
            NEW_FLOW,
        ),
        passed(
            "[::] wildcard listen, other port (IPv4's * is there)",
            query(sock6([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 7], 5300)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "IPv4's * does not listen on [::]'s port",
            query(sock(198, 51, 100, 7, 5301)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "other address",
            query(sock6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99], 53)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "other port",
            query(sock6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10], 54)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "the IPv4-mapped form of an IPv4 listen address",
            query(mapped).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "from an IPv4-mapped source",
            from_mapped.bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "multicast destination",
            query(sock6([0xff02, 0, 0, 0, 0, 0, 0, 0xfb], 53)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed(
            "unspecified destination",
            query(sock6([0; 8], 53)).bytes(),
            Reason::NotService,
            NO_EVENTS,
        ),
        passed("ICMPv6", icmp6.bytes(), Reason::NotService, NO_EVENTS),
        passed(
            "UDP checksum zero",
            nosum.bytes(),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "payload length past the frame",
            long_payload,
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "payload length short of the UDP length",
            short_payload,
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "version 4 in the IPv6 ethertype",
            v6_version_4,
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "runt: Ethernet header only",
            first.truncated(14),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "truncated IPv6 header",
            first.truncated(14 + 39),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "IPv6 header without its addresses",
            first.truncated(14 + 8),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "truncated UDP header",
            first.truncated(54 + 7),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed(
            "truncated TCP header",
            syn.truncated(54 + 19),
            Reason::Malformed,
            NO_EVENTS,
        ),
        passed("TCP data offset 4", doff4, Reason::Malformed, NO_EVENTS),
        passed(
            "TCP SYN+ACK does not open a flow",
            segment(VIP6, tcp::SYN | tcp::ACK).sport(50014).bytes(),
            Reason::TcpNoFlow,
            MISS,
        ),
    ];
    // Every extension header, before UDP or TCP, to a listen address: untouched.
    for next in ipv6::EXTENSION_HEADERS {
        cases.push(passed(
            format!("extension header {next} before UDP"),
            q(50020).ext(next).bytes(),
            Reason::Ipv6Ext,
            NO_EVENTS,
        ));
        cases.push(passed(
            format!("extension header {next} before TCP"),
            syn.clone().ext(next).bytes(),
            Reason::Ipv6Ext,
            NO_EVENTS,
        ));
    }
    cases.push(passed(
        "extension header behind a VLAN tag",
        q(50021).tagged(&[0x8100]).ext(44).bytes(),
        Reason::Ipv6Ext,
        NO_EVENTS,
    ));
    // The nth cursor did not move on any of those: the next new flow is B6[1].
    cases.push(steered("the next new flow", &q(50022), B6[1], NEW_FLOW));
    prog.check(&cases);

    // The rewritten packets' checksums verify from scratch, not only against
    // a packet built the same way.
    for p in [q(50030), segment(VIP6, tcp::SYN).sport(50031)] {
        let (_, out) = prog.run(XDP_PROGRAM, &p.bytes());
        assert_eq!(ipv6_l4_checksum(&out), 0, "checksum of {:02x?}", out);
        assert_ne!(&out[56..58], [0, 0], "UDP checksum 0 is not sent over IPv6");
    }
    assert_eq!(
        (
            prog.backend_stats(DNS6_ID, B6[0]).new_flows,
            prog.backend_stats(DNS6_ID, B6[2]).packets
        ),
        (2, 3),
        "B6[0]: flows 50001 and 50012; B6[2]: the SYN, its query, and flow 50030"
    );
}

/// An address-only change in the top or bottom word, where the incremental
/// update must carry: a UDP checksum that comes out as 0 is sent as 0xffff.
#[test]
fn xdp_ipv6_checksums_stay_valid_for_any_payload() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let mut zeros = 0;
    for i in 0..512u16 {
        let mut p = query(VIP6).sport(51000 + i);
        // Payloads that walk the checksum through all its values' neighbourhood.
        p.payload = DNS_QUERY.to_vec();
        p.payload
            .extend_from_slice(&i.wrapping_mul(0x9e37).to_be_bytes());
        let (action, out) = prog.run(XDP_PROGRAM, &p.bytes());
        assert_eq!(action, XDP_PASS);
        assert_eq!(ipv6_l4_checksum(&out), 0, "flow {i}");
        zeros += usize::from(out[60..62] == [0xff, 0xff]);
        let t = segment(VIP6, tcp::SYN).sport(52000 + i);
        let (_, out) = prog.run(XDP_PROGRAM, &t.bytes());
        assert_eq!(ipv6_l4_checksum(&out), 0, "TCP flow {i}");
    }
    // Not a proof, a smoke test: 0xffff is as likely as any other value.
    println!("{zeros} of 512 rewritten UDP checksums were 0xffff");
}

#[test]
fn tc_ipv6_replies_are_translated_from_the_reply_record() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let udp = query(VIP6).sport(53000);
    let alias = query(ALIAS6).sport(53001);
    let wild = query(WILD6).sport(53002);
    let syn = segment(VIP6, tcp::SYN).sport(53003);
    let reset = segment(ALIAS6, tcp::SYN).sport(53004);
    prog.check(&[
        steered("UDP flow", &udp, B6[0], NEW_FLOW),
        steered("UDP flow to the second address", &alias, B6[1], NEW_FLOW),
        steered("wildcard flow", &wild, WILD6_BACKEND, NEW_FLOW),
        steered("TCP flow", &syn, B6[2], NEW_CONNECTION),
        steered("TCP flow the backend resets", &reset, B6[3], NEW_CONNECTION),
    ]);
    let answer = udp.clone().to(B6[0]).answer();
    let syn_ack = syn.clone().flags(tcp::SYN | tcp::ACK).to(B6[2]).answer();
    let cases = [
        replied("answer from the backend", &answer, VIP6, NO_EVENTS),
        replied(
            "answer to the second address",
            &alias.clone().to(B6[1]).answer(),
            ALIAS6,
            NO_EVENTS,
        ),
        replied(
            "port translated back too",
            &wild.clone().to(WILD6_BACKEND).answer(),
            WILD6,
            NO_EVENTS,
        ),
        replied("TCP SYN-ACK", &syn_ack, VIP6, NO_EVENTS),
        replied(
            "TCP answer segment",
            &syn.clone()
                .flags(tcp::ACK | PSH)
                .with_tcp_query()
                .to(B6[2])
                .answer(),
            VIP6,
            NO_EVENTS,
        ),
        tc(
            "the same answer again: its query's record is consumed",
            answer.bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
        steered("the query asked again", &udp, B6[0], HIT),
        replied(
            "answer behind a VLAN tag",
            &answer.clone().tagged(&[0x8100]),
            VIP6,
            NO_EVENTS,
        ),
        replied(
            "the backend's RST is translated and ends the flow",
            &reset.clone().flags(tcp::RST | tcp::ACK).to(B6[3]).answer(),
            ALIAS6,
            DELETED,
        ),
        tc(
            "another backend answering the flow's port",
            answer.clone().from(B6[1]).bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
        tc(
            "not from a backend",
            answer
                .clone()
                .from(sock6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 53))
                .bytes(),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
        tc(
            "an answer behind an extension header",
            answer.clone().ext(60).bytes(),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
        tc(
            "an answer with UDP checksum 0",
            {
                let mut p = answer.clone();
                p.zero_udp_csum = true;
                p.bytes()
            },
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
        // BPF_PROG_TEST_RUN refuses an skb cut inside its IPv6 header; the
        // parser's unit tests cover those cuts.
        tc(
            "an answer cut inside its UDP header",
            answer.truncated(54 + 4),
            Out::Unchanged,
            None,
            NO_EVENTS,
        ),
    ];
    prog.check(&cases);
    prog.check(&[steered("the query asked again", &udp, B6[0], HIT)]);
    for p in [&answer, &syn_ack] {
        let (_, out) = prog.run(TC_PROGRAM, &p.bytes());
        assert_eq!(ipv6_l4_checksum(&out), 0, "reply checksum from scratch");
        assert_eq!(&out[22..38], &VIP6.ip().octets(), "source");
    }
}

/// One loaded program, both families: their flows, cursors and records never mix.
#[test]
fn ipv4_and_ipv6_flows_share_one_run_and_stick() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let flow4 = query(VIP).sport(54000);
    let flow6 = query(VIP6).sport(54000);
    let mut cases = vec![
        steered("IPv4 flow", &flow4, B[0], NEW_FLOW),
        steered("IPv6 flow on the same ports", &flow6, B6[0], NEW_FLOW),
    ];
    for i in 1..8u16 {
        cases.push(steered(
            format!("IPv4 new flow {i}"),
            &query(VIP).sport(54000 + i),
            B[i as usize % 4],
            NEW_FLOW,
        ));
        cases.push(steered(
            format!("IPv6 new flow {i}"),
            &query(VIP6).sport(54000 + i),
            B6[i as usize % 4],
            NEW_FLOW,
        ));
        cases.push(steered(
            format!("IPv4 flow, packet {}", i + 1),
            &flow4,
            B[0],
            HIT,
        ));
        cases.push(steered(
            format!("IPv6 flow, packet {}", i + 1),
            &flow6,
            B6[0],
            HIT,
        ));
    }
    cases.push(replied(
        "IPv6 answer",
        &flow6.clone().to(B6[0]).answer(),
        VIP6,
        NO_EVENTS,
    ));
    cases.push(replied(
        "IPv4 answer",
        &flow4.clone().to(B[0]).answer(),
        VIP,
        NO_EVENTS,
    ));
    prog.check(&cases);

    // The IPv6 flow's affinity record and its query's record, keyed by
    // 16-byte addresses.
    let affinity_key = FlowKey::new(
        (a(CLIENT6), 54000u16.to_be_bytes()),
        (a(*VIP6.ip()), 53u16.to_be_bytes()),
        PROTO_UDP,
        direction::QUERY,
    );
    let record = prog
        .affinity(&affinity_key)
        .expect("the IPv6 affinity record");
    assert_eq!(
        (record.addr, record.port, record.slot),
        (
            a(*B6[0].ip()),
            53u16.to_be_bytes(),
            backend_slot(DNS6_ID, 0)
        )
    );
    let query_key = QueryKey::new(
        (a(*B6[0].ip()), 53u16.to_be_bytes()),
        (a(CLIENT6), 54000u16.to_be_bytes()),
        DNS_QUERY_ID,
    );
    assert_eq!(
        prog.query_record(&query_key),
        None,
        "consumed by the answer"
    );
    prog.check(&[steered("IPv6 flow, asked again", &flow6, B6[0], HIT)]);
    let record = prog
        .query_record(&query_key)
        .expect("the IPv6 query's record");
    assert_eq!(
        (record.asked, record.asked_port, record.slot),
        (a(*VIP6.ip()), 53u16.to_be_bytes(), backend_slot(DNS6_ID, 0))
    );
    let len = flow6.bytes().len() as u64;
    assert_eq!(
        prog.backend_stats(DNS6_ID, B6[0]),
        BackendCounter {
            packets: 10,
            bytes: 10 * len,
            new_flows: 2
        },
        "the flow's nine packets and new flow 4"
    );
}

/// Backends whose addresses differ from their service's from the first byte
/// on, as unique local backends behind a global address do.
const FAST_PATH_CONFIG: &str = r#"
interface = "lo"

[[service]]
name = "dns"
listen = ["192.0.2.10:53"]
backends = ["10.66.0.2:53"]

[[service]]
name = "dns6"
listen = ["[2001:db8::10]:53"]
backends = ["[fd00:66::2]:53"]
"#;

/// `frame` (untagged, IPv4 without options or IPv6) with its TTL or hop limit
/// one lower, the IPv4 header checksum computed again from scratch.
fn hop_taken(mut frame: Vec<u8>) -> Vec<u8> {
    if frame[12..14] == [0x86, 0xdd] {
        frame[14 + ipv6::HOP_LIMIT] -= 1;
    } else {
        frame[14 + 8] -= 1;
        frame[24..26].fill(0);
        let c = csum::ipv4_header(&frame[14..34]);
        frame[24..26].copy_from_slice(&c.to_be_bytes());
    }
    frame
}

/// The fast path's reply program (`dnsteer_reply_in`, on the ingress of the
/// backends' interfaces): a reply translated as on egress, its TTL or hop
/// limit one lower and nothing else changed (IPv6's source address, which
/// follows the hop limit, included), then redirected.
#[test]
fn tc_reply_in_translates_takes_a_hop_and_redirects() {
    pin_to_cpu0();
    let mut prog = Loaded::new(FAST_PATH_CONFIG);
    let reply_in: &mut SchedClassifier = prog
        .ebpf_mut()
        .program_mut(REPLY_IN_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    reply_in
        .load()
        .expect("verifier accepts the reply_in program");
    let vip4 = sock(192, 0, 2, 10, 53);
    let vip6 = sock6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10], 53);
    let backend4 = sock(10, 66, 0, 2, 53);
    let backend6 = sock6([0xfd00, 0x66, 0, 0, 0, 0, 0, 2], 53);
    // Steered with the fast path off: the flows' records are what matters.
    let (q4, q6) = (query(vip4).sport(56000), query(vip6).sport(56001));
    prog.check(&[
        steered("IPv4 query", &q4, backend4, NEW_FLOW),
        steered("IPv6 query", &q6, backend6, NEW_FLOW),
    ]);
    maps::write_forward(
        prog.ebpf_mut(),
        &ForwardConf {
            mode: forward::REDIRECT,
            client_ifindex: 1,
        },
    )
    .expect("FORWARD");

    let forward_events =
        |prog: &Loaded| prog.counters(names::FORWARD_EVENTS, ForwardEvent::ALL.len());
    for (answer, asked) in [
        (q4.clone().to(backend4).answer(), SocketAddr::from(vip4)),
        (q6.clone().to(backend6).answer(), SocketAddr::from(vip6)),
    ] {
        let what = format!("reply from {} to {}", answer.src, answer.dst);
        let (reasons, events) = (prog.reasons(), forward_events(&prog));
        let (action, out) = prog.run(REPLY_IN_PROGRAM, &answer.bytes());
        assert_eq!(action, TC_ACT_REDIRECT, "{what}: action");
        assert_eq!(
            out,
            hop_taken(answer.clone().from(asked).bytes()),
            "{what}: translated, one hop taken, nothing else changed"
        );
        assert_eq!(
            moved(&Reason::ALL, &reasons, &prog.reasons()),
            [(Reason::ReplyRewritten, 1)],
            "{what}: REASONS"
        );
        assert_eq!(
            moved(&ForwardEvent::ALL, &events, &forward_events(&prog)),
            [(ForwardEvent::ReplyRedirected, 1)],
            "{what}: FORWARD_EVENTS"
        );
    }
    prog.check(&[steered("IPv6 query again", &q6, backend6, HIT)]);
    let (_, out) = prog.run(REPLY_IN_PROGRAM, &q6.clone().to(backend6).answer().bytes());
    assert_eq!(&out[22..38], &vip6.ip().octets(), "IPv6 source");
    assert_eq!(
        ipv6_l4_checksum(&out),
        0,
        "IPv6 reply checksum from scratch"
    );

    // A reply with one hop left is the stack's (it sends the time exceeded),
    // untouched here and counted by no one.
    let mut last_hop = q6.clone().to(backend6).answer().bytes();
    last_hop[14 + ipv6::HOP_LIMIT] = 1;
    let reasons = prog.reasons();
    let (action, out) = prog.run(REPLY_IN_PROGRAM, &last_hop);
    assert_eq!((action, &out), (TC_ACT_OK, &last_hop), "hop limit 1");
    assert_eq!(prog.reasons(), reasons, "hop limit 1: REASONS");
}

const SMALL_CONFIG: &str = r#"
interface = "lo"

[flows]
size = 1024

[[service]]
name = "dns"
listen = ["192.0.2.10:53"]
backends = ["10.100.13.2:53", "10.100.13.3:53"]
"#;

/// The query table holds exactly `[flows] size` queries in flight, written
/// and answered on both CPUs: a plain hash's capacity is global (the LRU the
/// table replaced kept per-CPU free lists and evicted long before it was
/// full). One query more is steered without a record, counted, and its
/// answer leaves untranslated; an answer frees a place.
#[test]
fn query_table_holds_its_size_across_cpus_and_counts_what_does_not_fit() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let prog = Loaded::new(SMALL_CONFIG);
    let size = 1024u16;
    let asked = |i: u16| query(VIP).sport(20000 + i).id(i);
    // Round robin over two backends, whichever CPU runs the query.
    let backend = |p: &Pkt| prog.steer(p);
    let mut answers = Vec::new();
    for i in 0..size {
        common::pin_to_cpu(usize::from(i) % cpus);
        let q = asked(i);
        let to = backend(&q);
        answers.push(q.to(to).answer());
    }
    let events = prog.query_events();
    assert_eq!(
        (
            events[QueryEvent::Inserted as usize],
            events[QueryEvent::InsertFailed as usize]
        ),
        (u64::from(size), 0),
        "{size} queries in flight fit a table of {size}"
    );
    // One more: steered all the same, without a record.
    common::pin_to_cpu(0);
    let extra = asked(size);
    let to = backend(&extra);
    let extra_answer = extra.clone().to(to).answer();
    assert_eq!(prog.query_events()[QueryEvent::InsertFailed as usize], 1);
    prog.check(&[tc(
        "the answer to the query that found the table full",
        extra_answer.bytes(),
        Out::Unchanged,
        Some(Reason::ReplyNoFlow),
        NO_EVENTS,
    )]);
    // Answered on the other CPU than their queries: every record is found.
    for (i, answer) in answers.iter().enumerate() {
        common::pin_to_cpu((i + 1) % cpus);
        let (_, out) = prog.run(TC_PROGRAM, &answer.bytes());
        assert_eq!(
            out,
            answer.clone().from(VIP).bytes(),
            "answer {i}: translated"
        );
    }
    let events = prog.query_events();
    assert_eq!(
        events[QueryEvent::Answered as usize],
        u64::from(size),
        "every answer consumed its record"
    );
    // The table is empty again: the next query fits.
    common::pin_to_cpu(1 % cpus);
    prog.steer(&asked(size + 1));
    assert_eq!(
        prog.query_events()[QueryEvent::Inserted as usize],
        u64::from(size) + 1
    );
}

const LEAST_OUTSTANDING_CONFIG: &str = r#"
interface = "lo"

[[service]]
name = "lo"
listen = ["192.0.2.60:53"]
select = "least_outstanding"
backends = ["10.100.20.2:53", "10.100.20.3:53"]
"#;

/// `least_outstanding` over a backend that answers every query and one that
/// answers none: the silent one's queries pile up, so it wins a pick only
/// when the first draw names it and so do the second and its three redraws,
/// 1/32 of the time (nth would give it half, two draws with replacement a
/// quarter). The kernel's count of each backend's queries in flight is exact.
#[test]
fn least_outstanding_steers_around_a_backend_whose_queries_pile_up() {
    pin_to_cpu0();
    let prog = Loaded::new(LEAST_OUTSTANDING_CONFIG);
    let vip = sock(192, 0, 2, 60, 53);
    let (answers, silent) = (sock(10, 100, 20, 2, 53), sock(10, 100, 20, 3, 53));
    let n = 400u16;
    let mut to = BTreeMap::<SocketAddr, u64>::new();
    for i in 0..n {
        let q = query(vip).sport(30000 + i);
        let backend = prog.steer(&q);
        *to.entry(backend).or_default() += 1;
        if backend == answers.into() {
            let (_, out) = prog.run(TC_PROGRAM, &q.clone().to(answers).answer().bytes());
            assert_eq!(out, q.to(answers).answer().from(vip).bytes(), "answer {i}");
        }
    }
    let (to_silent, to_answers) = (to[&silent.into()], to[&answers.into()]);
    // Binomial(400, 1/32): 12.5 ± 3.5 (the first pick, a tie at nothing in
    // flight, may add one); 40 is almost eight sigma above, and a quarter (two
    // draws with replacement) would be 100.
    assert!(
        (1..=40).contains(&to_silent),
        "the silent backend got {to_silent} of {n} (want about 1/32): {to:?}"
    );
    let (dns, outstanding) = prog.dns_stats(0, silent);
    assert_eq!(
        (dns.queries, dns.answers, outstanding),
        (to_silent, 0, to_silent)
    );
    let (dns, outstanding) = prog.dns_stats(0, answers);
    assert_eq!(
        (dns.queries, dns.answers, outstanding),
        (to_answers, to_answers, 0)
    );
}

/// Every answer that finds its query is counted for its backend: by RCODE
/// class, in the latency histogram and its sum, and no longer in flight.
#[test]
fn answers_are_counted_per_backend_by_rcode_and_latency() {
    pin_to_cpu0();
    let prog = Loaded::new(CONFIG);
    let q = |port| query(VIP).sport(port);
    prog.check(&[
        steered("a query", &q(31000), B[0], NEW_FLOW),
        steered("another", &q(31001), B[1], NEW_FLOW),
        steered("a third", &q(31002), B[2], NEW_FLOW),
        steered("a fourth", &q(31003).id(7), B[3], NEW_FLOW),
    ]);
    let (before, in_flight) = prog.dns_stats(DNS_ID, B[0]);
    assert_eq!((before.queries, before.answers, in_flight), (1, 0, 1));
    thread::sleep(Duration::from_millis(20));
    prog.check(&[
        replied(
            "a SERVFAIL answer",
            &q(31000).to(B[0]).answer().rcode(2),
            VIP,
            NO_EVENTS,
        ),
        replied(
            "an NXDOMAIN answer",
            &q(31001).to(B[1]).answer().rcode(3),
            VIP,
            NO_EVENTS,
        ),
        replied(
            "a REFUSED answer",
            &q(31002).to(B[2]).answer().rcode(5),
            VIP,
            NO_EVENTS,
        ),
        tc(
            "a second answer to the first query counts nothing",
            q(31000).to(B[0]).answer().bytes(),
            Out::Unchanged,
            Some(Reason::ReplyNoFlow),
            NO_EVENTS,
        ),
    ]);
    let (b0, in_flight) = prog.dns_stats(DNS_ID, B[0]);
    assert_eq!((b0.queries, b0.answers, in_flight), (1, 1, 0));
    assert_eq!(b0.rcodes, [0, 0, 1, 0, 0], "SERVFAIL");
    // 20 ms or a little more between query and answer: bucket 11 (16.8 ms to 33.6 ms)
    // or, on a slow machine, the next.
    let bucket = b0.latency.iter().position(|&n| n == 1).unwrap();
    assert_eq!(b0.latency.iter().sum::<u64>(), 1);
    assert!((11..=13).contains(&bucket), "bucket {bucket}: {b0:?}");
    assert!(b0.latency_sum_ns >= 20_000_000, "{b0:?}");
    assert_eq!(prog.dns_stats(DNS_ID, B[1]).0.rcodes, [0, 1, 0, 0, 0]);
    assert_eq!(prog.dns_stats(DNS_ID, B[2]).0.rcodes, [0, 0, 0, 1, 0]);
    // The fourth query is still in flight on B3, unanswered, in no bucket.
    let (b3, in_flight) = prog.dns_stats(DNS_ID, B[3]);
    assert_eq!((b3.queries, b3.answers, in_flight), (1, 0, 1));
    assert_eq!(b3.latency, [0; LATENCY_BUCKETS]);
}
