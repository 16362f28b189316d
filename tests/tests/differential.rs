//! Differential test: the XDP program, run through BPF_PROG_TEST_RUN, against
//! the host build of the parser it is made from (`xdp_common::parse::headers`),
//! on random mutations of valid IPv4 and IPv6 queries.
//!
//! For every packet: the program rewrites it only when the host parser accepts
//! it and its destination is a listen entry of its family and protocol, and
//! then changes nothing but the destination address and port (now a backend of
//! that service) and the checksums (IPv4's header checksum and the transport
//! checksum; IPv6 has only the latter), each exactly as valid as it was; any
//! other packet passes byte for byte unchanged; the one `REASONS` counter that
//! moves is the host's verdict. Frames shorter than an Ethernet header, which
//! BPF_PROG_TEST_RUN refuses, go through the host parser only.
//!
//! Deterministic: the seed is printed first; `DNSTEER_DIFF_SEED` overrides it
//! and `DNSTEER_DIFF_PACKETS` the count (default 100,000, about half of them
//! IPv6). Needs root (loading BPF programs); no namespaces, no traffic.

mod common;

use std::{
    collections::HashMap as StdHashMap,
    env, fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::HashMap,
    programs::{TestRun, TestRunOptions, Xdp},
};
use common::{l4_checksum, moved, pin_to_cpu0};
use dnsteer::{
    XDP_PROGRAM,
    config::{self, Config},
    datapath::maps::{self, KernelMaps},
    live::Live,
};
use xdp_common::{
    FLOW_CLOSING, FlowEvent, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP, Reason, csum, direction,
    ip_of, ipv4_of, names, octets,
    parse::{ETH_HLEN, Headers, Skip, headers, ipv4, ipv6, tcp, udp},
};

const XDP_PASS: u32 = 2;
/// TCP's push flag (`xdp_common::parse::tcp` names only those the kernel reads).
const PSH: u8 = 0x08;
const DEFAULT_SEED: u64 = 0x00d1_ff5e_ed00_0001;
const DEFAULT_PACKETS: u64 = 100_000;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ TPID: a tag dnsteer does not read.
const ETH_P_QINQ_OLD: u16 = 0x9100;

/// IPv6 next headers, from IANA's registries: the extension headers (RFC 8200
/// 4, RFC 7045: hop-by-hop, routing, fragment, ESP, AH, destination options,
/// mobility, HIP, shim6, two experimental values), then ICMPv6 and "no next
/// header", which are not.
const HOP_BY_HOP: u8 = 0;
const FRAGMENT: u8 = 44;
const ESP: u8 = 50;
const AH: u8 = 51;
const EXTENSION_HEADERS: [u8; 11] = [
    HOP_BY_HOP, 43, FRAGMENT, ESP, AH, 60, 135, 139, 140, 253, 254,
];
const ICMPV6: u8 = 58;
const NO_NEXT_HEADER: u8 = 59;

/// Every kind of listen entry, in both families: exact, `*` and `[::]`, UDP,
/// TCP and both, an exact address shadowing a wildcard on the same port, UDP
/// and TCP services sharing an address and port, backends on other ports; the
/// two wildcards on one port for different services (5300), and each alone on
/// a port of its own (`*:853`, `[::]:8853`). Flow timeouts are far longer than
/// the run, so a flow's record decides alone whether a segment follows it.
const CONFIG: &str = r#"
interface = "lo"

[flows]
size = 65536
udp_idle_timeout = "24h"
tcp_idle_timeout = "24h"
tcp_closing_timeout = "24h"

[[service]]
name = "dns"
listen = ["192.0.2.10:53", "192.0.2.11:53"]
select = "nth"
backends = ["10.100.13.2:53", "10.100.13.3:53", "10.100.13.4:53", "10.100.13.5:53"]

[[service]]
name = "dns-tcp"
protocol = "tcp"
listen = ["192.0.2.10:53"]
select = "random"
backends = ["10.100.17.2:5353", "10.100.17.3:53"]

[[service]]
name = "both"
protocol = "udp+tcp"
listen = ["192.0.2.40:53", "192.0.2.40:5353"]
select = "random"
backends = [{ addr = "10.100.16.2:53", weight = 3 }, "10.100.16.3:53"]

[[service]]
name = "anycast"
listen = ["*:5300"]
backends = ["10.100.14.9:5353"]

[[service]]
name = "anycast-exact"
listen = ["198.51.100.7:5300"]
backends = ["10.100.14.10:53"]

[[service]]
name = "dot"
protocol = "tcp"
listen = ["*:853"]
select = "nth"
backends = ["10.100.19.2:853", "10.100.19.3:8853"]

[[service]]
name = "dns6"
listen = ["[2001:db8::10]:53", "[2001:db8::11]:53"]
select = "nth"
backends = ["[2001:db8:13::2]:53", "[2001:db8:13::3]:53", "[2001:db8:13::4]:53"]

[[service]]
name = "dns6-tcp"
protocol = "tcp"
listen = ["[2001:db8::10]:53"]
select = "random"
backends = ["[2001:db8:17::2]:5353", "[2001:db8:17::3]:53"]

[[service]]
name = "both6"
protocol = "udp+tcp"
listen = ["[2001:db8::40]:53", "[2001:db8::40]:5353"]
select = "random"
backends = [{ addr = "[2001:db8:16::2]:53", weight = 3 }, "[2001:db8:16::3]:53"]

[[service]]
name = "anycast6"
listen = ["[::]:5300"]
backends = ["[2001:db8:14::9]:5353"]

[[service]]
name = "anycast6-exact"
listen = ["[2001:db8:100::7]:5300"]
backends = ["[2001:db8:14::10]:53"]

[[service]]
name = "dot6"
protocol = "tcp"
listen = ["[::]:8853"]
select = "nth"
backends = ["[2001:db8:19::2]:853", "[2001:db8:19::3]:8853"]
"#;

/// Addresses a `*` listen is sent to: few, so TCP flows recur.
const WILDCARD_ADDRS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(198, 51, 100, 8),
    Ipv4Addr::new(203, 0, 113, 1),
    Ipv4Addr::new(192, 0, 2, 99),
];

/// Addresses a `[::]` listen is sent to.
const WILDCARD_ADDRS6: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7),
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 8),
    Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x53),
];

/// SplitMix64: small, seedable, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn u8(&mut self) -> u8 {
        self.next() as u8
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.u8()).collect()
    }

    fn addr(&mut self) -> Ipv4Addr {
        Ipv4Addr::from(self.next() as u32)
    }

    fn addr6(&mut self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.next()) << 64 | u128::from(self.next()))
    }

    /// An address that is neither multicast nor broadcast.
    fn unicast(&mut self) -> Ipv4Addr {
        let a = self.addr();
        if a.is_multicast() || a.is_broadcast() {
            let [_, b, c, d] = a.octets();
            return Ipv4Addr::new(10, b, c, d);
        }
        a
    }

    /// An IPv6 address a query may have: not multicast, unspecified or IPv4-mapped.
    fn unicast6(&mut self) -> Ipv6Addr {
        let a = self.addr6();
        if a.is_multicast() || a.is_unspecified() || a.to_ipv4_mapped().is_some() {
            let mut o = a.octets();
            (o[0], o[1]) = (0x20, 0x01);
            return o.into();
        }
        a
    }

    /// An 802.1Q or 802.1ad tag: (TPID, TCI).
    fn tag(&mut self) -> (u16, u16) {
        (self.pick(&[ETH_P_8021Q, ETH_P_8021AD]), self.u16())
    }

    /// Up to `max` 32-bit words (IPv4 or TCP options): NOPs or arbitrary bytes.
    fn option_words(&mut self, max: usize) -> Vec<u8> {
        let len = 4 * (1 + self.below(max));
        if self.percent(50) {
            vec![1; len]
        } else {
            self.bytes(len)
        }
    }
}

/// A valid Ethernet + VLAN + IPv4 or IPv6 + UDP/TCP frame, before any mutation.
#[derive(Clone, Debug)]
struct Query {
    macs: [u8; 12],
    /// (TPID, TCI), outermost first.
    tags: Vec<(u16, u16)>,
    ethertype: u16,
    /// IPv4's type of service, IPv6's traffic class.
    tos: u8,
    /// IPv6's flow label (20 bits).
    flow_label: u32,
    id: u16,
    frag: u16,
    /// IPv4's TTL, IPv6's hop limit.
    ttl: u8,
    ip_options: Vec<u8>,
    /// IPv6 extension headers before the transport header: (type, length).
    extensions: Vec<(u8, usize)>,
    /// UDP or TCP: the header written, and the IPv4 protocol (IPv6 next header).
    proto: u8,
    /// Both of one family, which decides the IP header's.
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    zero_udp_csum: bool,
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    tcp_options: Vec<u8>,
    payload: Vec<u8>,
    /// Ethernet padding after the datagram.
    padding: Vec<u8>,
}

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

/// The source and destination addresses of the IPv4 or (`v6`) IPv6 header at
/// `l3`, when they fit in the frame.
fn addresses(f: &[u8], l3: usize, v6: bool) -> Option<(IpAddr, IpAddr)> {
    if v6 {
        let src: [u8; 16] = f
            .get(l3 + ipv6::SRC..l3 + ipv6::SRC + 16)?
            .try_into()
            .ok()?;
        let dst: [u8; 16] = f
            .get(l3 + ipv6::DST..l3 + ipv6::DST + 16)?
            .try_into()
            .ok()?;
        Some((src.into(), dst.into()))
    } else {
        let src: [u8; 4] = f.get(l3 + ipv4::SRC..l3 + ipv4::SRC + 4)?.try_into().ok()?;
        let dst: [u8; 4] = f.get(l3 + ipv4::DST..l3 + ipv4::DST + 4)?.try_into().ok()?;
        Some((src.into(), dst.into()))
    }
}

impl Query {
    fn ipv6(&self) -> bool {
        self.dst.is_ipv6()
    }

    fn l3(&self) -> usize {
        ETH_HLEN + 4 * self.tags.len()
    }

    fn l4(&self) -> usize {
        let ext: usize = self.extensions.iter().map(|(_, len)| len).sum();
        self.l3()
            + if self.ipv6() {
                ipv6::HLEN + ext
            } else {
                20 + self.ip_options.len()
            }
    }

    fn is_tcp(&self) -> bool {
        self.proto == PROTO_TCP
    }

    /// Serialized with valid checksums (a UDP one zero when asked).
    fn bytes(&self) -> Vec<u8> {
        let mut f = self.macs.to_vec();
        for (tpid, tci) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        let (l3, l4) = (f.len(), self.l4());
        let l4_len = if self.is_tcp() {
            20 + self.tcp_options.len()
        } else {
            8
        } + self.payload.len();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ihl = l4 - l3;
                f.extend_from_slice(&[0x40 | (ihl / 4) as u8, self.tos]);
                f.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
                f.extend_from_slice(&self.id.to_be_bytes());
                f.extend_from_slice(&self.frag.to_be_bytes());
                f.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                f.extend_from_slice(&self.ip_options);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let first = 6 << 28 | u32::from(self.tos) << 20 | self.flow_label & 0xf_ffff;
                f.extend_from_slice(&first.to_be_bytes());
                f.extend_from_slice(&((l4 - l3 - ipv6::HLEN + l4_len) as u16).to_be_bytes());
                let next = self.extensions.first().map_or(self.proto, |(t, _)| *t);
                f.extend_from_slice(&[next, self.ttl]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                for (i, &(kind, len)) in self.extensions.iter().enumerate() {
                    let next = self.extensions.get(i + 1).map_or(self.proto, |(t, _)| *t);
                    f.extend_from_slice(&extension(kind, len, next));
                }
            }
            _ => panic!("{} and {} are not one family", self.src, self.dst),
        }
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        if self.is_tcp() {
            f.extend_from_slice(&self.seq.to_be_bytes());
            f.extend_from_slice(&self.ack.to_be_bytes());
            let doff = (20 + self.tcp_options.len()) / 4;
            f.extend_from_slice(&[(doff as u8) << 4, self.tcp_flags]);
            f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
            f.extend_from_slice(&self.tcp_options);
        } else {
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend_from_slice(&self.payload);
        refresh_checksums(&mut f, l3, l4, self.is_tcp(), self.ipv6());
        if self.zero_udp_csum && !self.is_tcp() {
            put(&mut f, l4 + udp::CHECK, &[0, 0]);
        }
        f.extend_from_slice(&self.padding);
        f
    }
}

/// An IPv6 extension header of type `kind` and `len` bytes (a multiple of 8)
/// followed by `next`, laid out as RFC 8200 4 and RFC 4302/4303 have it.
fn extension(kind: u8, len: usize, next: u8) -> Vec<u8> {
    let mut h = vec![0u8; len];
    match kind {
        // SPI and sequence number, then ciphertext: no next header in front.
        ESP => h.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8 | 1),
        // Payload length in 4-byte words, minus 2.
        AH => (h[0], h[1]) = (next, (len / 4 - 2) as u8),
        // Reserved, then offset, M and identification: a first fragment.
        FRAGMENT => (h[0], h[3], h[7]) = (next, 1, 0x2a),
        // Length in 8-byte units after the first 8; PadN options fill it.
        _ => {
            (h[0], h[1]) = (next, (len / 8 - 1) as u8);
            if kind == HOP_BY_HOP || kind == 60 {
                (h[2], h[3]) = (1, (len - 4) as u8);
            }
        }
    }
    h
}

/// Sets `bytes` at `at` where they fit in the frame.
fn put(f: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = f.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// The IPv4 header checksum from scratch, over the IHL the frame now has.
fn refresh_ip_checksum(f: &mut [u8], l3: usize) {
    let Some(&vihl) = f.get(l3) else { return };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 || l3 + ihl > f.len() {
        return;
    }
    put(f, l3 + ipv4::CHECK, &[0, 0]);
    let c = csum::ipv4_header(&f[l3..l3 + ihl]);
    put(f, l3 + ipv4::CHECK, &c.to_be_bytes());
}

/// The checksums from scratch (IPv4's header checksum, and the transport
/// checksum over either family's pseudo-header), over the lengths the (maybe
/// mutated) frame now states, as far as they fit in it. The family is the
/// query's, whatever its ethertype or version now say.
fn refresh_checksums(f: &mut [u8], l3: usize, l4: usize, is_tcp: bool, v6: bool) {
    if !v6 {
        refresh_ip_checksum(f, l3);
    }
    let Some((src, dst)) = addresses(f, l3, v6) else {
        return;
    };
    if f.len() < l4 + 8 {
        return;
    }
    let end = if v6 {
        l3 + ipv6::HLEN + be16(&f[l3 + ipv6::PAYLOAD_LEN..])
    } else {
        l3 + be16(&f[l3 + ipv4::TOT_LEN..])
    }
    .clamp(l4, f.len());
    if is_tcp {
        if end < l4 + 20 {
            return;
        }
        put(f, l4 + tcp::CHECK, &[0, 0]);
        let c = l4_checksum(src, dst, PROTO_TCP, &f[l4..end]);
        put(f, l4 + tcp::CHECK, &c.to_be_bytes());
    } else {
        let end = (l4 + be16(&f[l4 + udp::LEN..])).clamp(l4 + 8, f.len());
        put(f, l4 + udp::CHECK, &[0, 0]);
        let c = match l4_checksum(src, dst, PROTO_UDP, &f[l4..end]) {
            0 => 0xffff,
            c => c,
        };
        put(f, l4 + udp::CHECK, &c.to_be_bytes());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: &[Family] = &[Family::V4, Family::V6];

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// What was done to a valid query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Nothing: valid, with 0-2 tags, options and padding.
    Valid,
    /// Cut short at a random offset.
    Truncated,
    /// An IHL other than the header's.
    WrongIhl,
    /// A total length that disagrees with the header or the frame.
    TotalLength,
    /// An IPv6 payload length that disagrees with the headers or the frame.
    PayloadLength,
    /// A UDP length that disagrees with the datagram.
    UdpLength,
    /// An IP version other than the ethertype's.
    BadVersion,
    /// MF and/or a fragment offset (or DF / the reserved bit, which are not).
    Fragment,
    /// 0-4 tags of 802.1Q, 802.1ad and the old 0x9100 TPID.
    VlanStack,
    /// Multicast, broadcast, unspecified and near-miss destinations.
    Destination,
    /// IPv4-mapped source or destination (and near misses) in an IPv6 header.
    Mapped,
    /// A zero or wrong IPv4 or transport checksum.
    Checksum,
    /// A UDP datagram whose checksum comes out 0 after the rewrite, which
    /// must then be sent as 0xffff (RFC 768; RFC 8200 8.1 has an IPv6
    /// receiver discard a 0).
    ZeroAfterRewrite,
    /// A TCP segment with an arbitrary data offset and flags.
    TcpHeader,
    /// Not the family's ethertype.
    Ethertype,
    /// An IPv4 protocol or IPv6 next header other than the header's.
    Protocol,
    /// 1-2 IPv6 extension headers before the transport header.
    Extension,
    /// Random header bytes overwritten.
    Bytes,
}

impl Kind {
    /// Each kind with its share of the cases and the families it applies to
    /// (an equal share each).
    const WEIGHTED: [(Kind, usize, &[Family]); 18] = [
        (Kind::Valid, 8, Family::BOTH),
        (Kind::Truncated, 12, Family::BOTH),
        (Kind::WrongIhl, 7, &[Family::V4]),
        (Kind::TotalLength, 8, &[Family::V4]),
        (Kind::PayloadLength, 8, &[Family::V6]),
        (Kind::UdpLength, 7, Family::BOTH),
        (Kind::BadVersion, 5, Family::BOTH),
        (Kind::Fragment, 7, &[Family::V4]),
        (Kind::VlanStack, 8, Family::BOTH),
        (Kind::Destination, 7, Family::BOTH),
        (Kind::Mapped, 6, &[Family::V6]),
        (Kind::Checksum, 8, Family::BOTH),
        (Kind::ZeroAfterRewrite, 4, Family::BOTH),
        (Kind::TcpHeader, 8, Family::BOTH),
        (Kind::Ethertype, 4, Family::BOTH),
        (Kind::Protocol, 5, Family::BOTH),
        (Kind::Extension, 6, &[Family::V6]),
        (Kind::Bytes, 8, Family::BOTH),
    ];

    /// Index of (kind, family) into the tallies.
    fn index(self, family: Family) -> usize {
        2 * Self::WEIGHTED
            .iter()
            .position(|(k, ..)| *k == self)
            .unwrap()
            + family as usize
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Truncated => "truncated",
            Kind::WrongIhl => "wrong IHL",
            Kind::TotalLength => "total length",
            Kind::PayloadLength => "payload length",
            Kind::UdpLength => "UDP length",
            Kind::BadVersion => "bad version",
            Kind::Fragment => "fragment",
            Kind::VlanStack => "VLAN stack",
            Kind::Destination => "mcast/bcast dst",
            Kind::Mapped => "mapped address",
            Kind::Checksum => "checksum",
            Kind::ZeroAfterRewrite => "UDP csum to 0",
            Kind::TcpHeader => "TCP header",
            Kind::Ethertype => "ethertype",
            Kind::Protocol => "protocol",
            Kind::Extension => "extension hdr",
            Kind::Bytes => "random bytes",
        }
    }
}

/// A listen entry: address (a family's unspecified one for its wildcard),
/// port, IP protocol.
type Target = (IpAddr, u16, u8);

/// The listen entries and backends of the config, as the README defines
/// matching: the exact address, else the wildcard of the packet's family
/// (`*` for IPv4, `[::]` for IPv6), on the port and protocol.
struct Model {
    listens: StdHashMap<Target, usize>,
    backends: Vec<Vec<SocketAddr>>,
    names: Vec<String>,
}

impl Model {
    fn new(config: &Config) -> Self {
        let mut listens = StdHashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            for l in &s.listen {
                for &proto in s.protocol.ip_protos() {
                    let key = (l.addr, l.port, proto);
                    assert!(listens.insert(key, i).is_none(), "{key:?} listed twice");
                }
            }
        }
        Model {
            listens,
            backends: config
                .services
                .iter()
                .map(|s| s.backends.iter().map(|b| b.addr).collect())
                .collect(),
            names: config.services.iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// The service a parsed packet is for. The family is the header's, not the
    /// address's: an IPv6 packet is never matched against IPv4 entries.
    fn service(&self, h: &Headers) -> Option<usize> {
        let (dst, any): (IpAddr, IpAddr) = if h.ipv6 {
            (
                Ipv6Addr::from(octets(&h.dst)).into(),
                Ipv6Addr::UNSPECIFIED.into(),
            )
        } else {
            (
                Ipv4Addr::from(ipv4_of(&h.dst)).into(),
                Ipv4Addr::UNSPECIFIED.into(),
            )
        };
        let port = u16::from_be_bytes(h.dport);
        let exact = self.listens.get(&(dst, port, h.proto));
        exact
            .or_else(|| self.listens.get(&(any, port, h.proto)))
            .copied()
    }

    /// Every listen entry of `family`, for generating queries.
    fn targets(&self, family: Family) -> Vec<Target> {
        let mut t: Vec<_> = self
            .listens
            .keys()
            .filter(|(a, ..)| a.is_ipv6() == (family == Family::V6))
            .copied()
            .collect();
        t.sort();
        t
    }
}

/// Makes the packets: a valid query, then one kind of mutation.
struct Generator {
    rng: Rng,
    /// Listen entries of each family.
    targets: [Vec<Target>; 2],
    /// The one backend of each family's wildcard UDP service on port 5300.
    wildcard_backend: [SocketAddr; 2],
}

impl Generator {
    fn kind(&mut self) -> (Kind, Family) {
        let total: usize = Kind::WEIGHTED.iter().map(|(_, w, _)| w).sum();
        let mut n = self.rng.below(total);
        for (kind, weight, families) in Kind::WEIGHTED {
            if n < weight {
                return (kind, self.rng.pick(families));
            }
            n -= weight;
        }
        unreachable!()
    }

    /// A valid query: mostly to a listen entry of its family (sometimes over
    /// the other protocol), else to an address or port nothing listens on.
    fn query(&mut self, family: Family, proto: Option<u8>) -> Query {
        let rng = &mut self.rng;
        let v6 = family == Family::V6;
        let targets = &self.targets[family as usize];
        let (dst, dport, mut p) = if rng.percent(75) {
            let (addr, port, p) = rng.pick(targets);
            let addr = match addr {
                IpAddr::V4(a) if a.is_unspecified() => rng.pick(&WILDCARD_ADDRS).into(),
                IpAddr::V6(a) if a.is_unspecified() => rng.pick(&WILDCARD_ADDRS6).into(),
                a => a,
            };
            let p = match rng.percent(15) {
                true if p == PROTO_UDP => PROTO_TCP,
                true => PROTO_UDP,
                false => p,
            };
            (addr, port, p)
        } else {
            let (addr, _, _) = rng.pick(targets);
            let any = rng.u16();
            let port = rng.pick(&[53, 54, 853, 5300, 5353, 8853, any]);
            let addr = match addr {
                a if !a.is_unspecified() && rng.percent(50) => a,
                _ if v6 => rng.unicast6().into(),
                _ => rng.unicast().into(),
            };
            (addr, port, rng.pick(&[PROTO_UDP, PROTO_TCP]))
        };
        if let Some(forced) = proto {
            p = forced;
        }
        // Few clients and ports, so TCP segments meet the flows their SYNs opened.
        let (src, sport): (IpAddr, u16) = if rng.percent(85) {
            let (c, d) = (rng.below(4) as u8, rng.below(64) as u8);
            let src = if v6 {
                Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, c.into(), d.into()).into()
            } else {
                Ipv4Addr::new(172, 16, c, d).into()
            };
            (src, 40000 + rng.below(16) as u16)
        } else if v6 {
            let a = rng.addr6();
            let a = if a.to_ipv4_mapped().is_some() {
                rng.unicast6()
            } else {
                a
            };
            (a.into(), rng.u16())
        } else {
            (rng.addr().into(), rng.u16())
        };
        let tags = match rng.below(10) {
            0..=6 => 0,
            7 | 8 => 1,
            _ => 2,
        };
        let tags = (0..tags).map(|_| rng.tag()).collect();
        let tcp_flags = {
            use tcp::{ACK, FIN, RST, SYN};
            let any = rng.u8();
            rng.pick(&[
                SYN,
                SYN,
                SYN,
                ACK,
                ACK,
                ACK | PSH,
                FIN | ACK,
                RST | ACK,
                SYN | ACK,
                any,
            ])
        };
        // Bare segments, DNS-sized messages, and a few up to a full Ethernet frame.
        let payload_len = match rng.below(20) {
            _ if p == PROTO_TCP && rng.percent(50) => 0,
            0 => 256 + rng.below(1200),
            _ => 12 + rng.below(49),
        };
        let payload = rng.bytes(payload_len);
        Query {
            macs: rng.bytes(12).try_into().unwrap(),
            tags,
            ethertype: if v6 { ETH_P_IPV6 } else { ETH_P_IPV4 },
            tos: rng.u8(),
            flow_label: rng.next() as u32 & 0xf_ffff,
            id: rng.u16(),
            frag: if !v6 && rng.percent(50) { 0x4000 } else { 0 },
            ttl: rng.u8(),
            ip_options: if v6 || rng.percent(70) {
                vec![]
            } else {
                rng.option_words(10)
            },
            extensions: vec![],
            proto: p,
            src,
            dst,
            sport,
            dport,
            // IPv4 only: over IPv6 a zero UDP checksum is a mutation (`Checksum`).
            zero_udp_csum: !v6 && rng.percent(15),
            tcp_flags,
            seq: rng.next() as u32,
            ack: rng.next() as u32,
            tcp_options: if rng.percent(60) {
                vec![]
            } else {
                rng.option_words(10)
            },
            payload,
            padding: if rng.percent(25) {
                let len = 1 + rng.below(16);
                rng.bytes(len)
            } else {
                vec![]
            },
        }
    }

    /// Checksums fixed after a byte patch half of the time, so both valid and
    /// invalid ones reach the rewrite.
    fn maybe_refresh(&mut self, f: &mut [u8], q: &Query) {
        if self.rng.percent(50) {
            refresh_checksums(f, q.l3(), q.l4(), q.is_tcp(), q.ipv6());
        }
    }

    /// A destination for the `Destination` kind: multicast, broadcast,
    /// unspecified, or a near miss that is unicast as far as dnsteer can tell.
    fn odd_destination(&mut self, family: Family) -> IpAddr {
        let r = self.rng.next().to_be_bytes();
        match family {
            Family::V4 => self
                .rng
                .pick(&[
                    [224 + (r[0] & 0x0f), r[1], r[2], r[3]],
                    [224, 0, 0, r[1]],
                    [239, 255, 255, 255],
                    [255, 255, 255, 255],
                    // Near misses.
                    [223, 255, 255, 255],
                    [240, 0, 0, r[3]],
                    [255, 255, 255, 254],
                    [192, 0, 2, 255],
                    [0, 0, 0, 0],
                ])
                .into(),
            Family::V6 => {
                let low = u128::from(self.rng.next());
                self.rng
                    .pick(&[
                        Ipv6Addr::from(0xff << 120 | u128::from(r[0]) << 112 | low),
                        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2),
                        Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 1, 3),
                        Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0xfb),
                        Ipv6Addr::UNSPECIFIED,
                        // Near misses: loopback, link-local, site-local, the
                        // last address before ff00::/8, ff in the wrong byte.
                        Ipv6Addr::LOCALHOST,
                        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
                        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 1),
                        Ipv6Addr::from((0xfeff_u128 << 112) | ((1 << 112) - 1)),
                        Ipv6Addr::new(0x00ff, 0, 0, 0, 0, 0, 0, 1),
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xffff),
                    ])
                    .into()
            }
        }
    }

    /// An IPv6 query carrying an IPv4-mapped address (`::ffff:a.b.c.d`), most
    /// often to an IPv4 listen entry's address and port, which the maps hold
    /// in exactly that form; or a near miss outside `::ffff:0:0/96`.
    fn mapped(&mut self) -> Query {
        let (addr, port, p) = self.rng.pick(&self.targets[Family::V4 as usize]);
        let IpAddr::V4(v4) = addr else {
            unreachable!("IPv4 targets")
        };
        let mut q = self.query(Family::V6, Some(p));
        match self.rng.below(6) {
            0 | 1 => (q.dst, q.dport) = (v4.to_ipv6_mapped().into(), port),
            2 => q.src = self.rng.addr().to_ipv6_mapped().into(),
            3 => {
                q.src = Ipv4Addr::new(172, 16, 0, 1).to_ipv6_mapped().into();
                (q.dst, q.dport) = (v4.to_ipv6_mapped().into(), port);
            }
            _ => {
                let a = u128::from(v4.to_bits());
                // IPv4-compatible (deprecated), SIIT's ::ffff:0:a.b.c.d, NAT64's
                // 64:ff9b::a.b.c.d, and a mapped prefix one bit off.
                q.dst = Ipv6Addr::from(self.rng.pick(&[
                    a,
                    0xffff << 48 | a,
                    0x0064_ff9b << 96 | a,
                    0x1_ffff << 32 | a,
                ]))
                .into();
            }
        }
        q
    }

    fn case(&mut self) -> (Kind, Family, Vec<u8>) {
        let (kind, family) = self.kind();
        let v6 = family == Family::V6;
        let proto = match kind {
            Kind::UdpLength | Kind::ZeroAfterRewrite => Some(PROTO_UDP),
            Kind::TcpHeader => Some(PROTO_TCP),
            _ => None,
        };
        let mut q = match kind {
            Kind::Mapped => self.mapped(),
            _ => self.query(family, proto),
        };
        let (l3, l4) = (q.l3(), q.l4());
        let frame = match kind {
            Kind::Valid | Kind::Mapped => q.bytes(),
            Kind::Truncated => {
                let mut f = q.bytes();
                let ip_hlen = if v6 { ipv6::HLEN } else { 20 };
                let boundaries = [12, l3, l3 + ip_hlen, l4, l4 + 8, l4 + 20, f.len()];
                let cut = if self.rng.percent(50) {
                    self.rng.below(f.len())
                } else {
                    // Near a header boundary.
                    let b = self.rng.pick(&boundaries) + self.rng.below(9);
                    b.saturating_sub(4).min(f.len() - 1)
                };
                f.truncate(cut);
                f
            }
            Kind::WrongIhl => {
                let mut f = q.bytes();
                let ihl = (f[l3] & 0x0f) as usize;
                let wrong = (ihl + 1 + self.rng.below(15)) % 16;
                f[l3] = 0x40 | wrong as u8;
                self.maybe_refresh(&mut f, &q);
                f
            }
            Kind::TotalLength => {
                let mut f = q.bytes();
                let (ihl, total) = (l4 - l3, be16(&f[l3 + ipv4::TOT_LEN..]));
                let room = f.len() - l3;
                let candidates = [
                    0,
                    ihl - 1 - self.rng.below(ihl),
                    ihl,
                    ihl + 1 + self.rng.below(total - ihl),
                    total - 1,
                    total + 1,
                    room,
                    room + 1 + self.rng.below(64),
                    0xffff,
                    self.rng.u16() as usize,
                ];
                let v = self.rng.pick(&candidates) as u16;
                put(&mut f, l3 + ipv4::TOT_LEN, &v.to_be_bytes());
                self.maybe_refresh(&mut f, &q);
                f
            }
            Kind::PayloadLength => {
                let mut f = q.bytes();
                let payload = be16(&f[l3 + ipv6::PAYLOAD_LEN..]);
                let room = f.len() - l3 - ipv6::HLEN;
                let candidates = [
                    0,
                    self.rng.below(8),
                    self.rng.below(20),
                    payload - 1,
                    payload - 1 - self.rng.below(payload),
                    payload + 1,
                    room,
                    room + 1 + self.rng.below(64),
                    0xffff,
                    self.rng.u16() as usize,
                ];
                let v = self.rng.pick(&candidates) as u16;
                put(&mut f, l3 + ipv6::PAYLOAD_LEN, &v.to_be_bytes());
                self.maybe_refresh(&mut f, &q);
                f
            }
            Kind::UdpLength => {
                let mut f = q.bytes();
                let ulen = be16(&f[l4 + udp::LEN..]);
                let ip_payload = if v6 {
                    be16(&f[l3 + ipv6::PAYLOAD_LEN..])
                } else {
                    be16(&f[l3 + ipv4::TOT_LEN..]) - (l4 - l3)
                };
                let candidates = [
                    self.rng.below(8),
                    8,
                    ulen - 1,
                    ulen + 1,
                    ip_payload + 1 + self.rng.below(64),
                    f.len() - l4,
                    0xffff,
                    self.rng.u16() as usize,
                ];
                let v = self.rng.pick(&candidates) as u16;
                put(&mut f, l4 + udp::LEN, &v.to_be_bytes());
                self.maybe_refresh(&mut f, &q);
                f
            }
            Kind::BadVersion => {
                let mut f = q.bytes();
                let own = if v6 { 6 } else { 4 };
                let version = (own + 1 + self.rng.below(15)) % 16;
                f[l3] = (version as u8) << 4 | (f[l3] & 0x0f);
                self.maybe_refresh(&mut f, &q);
                f
            }
            Kind::Fragment => {
                let offset = 1 + self.rng.below(0x1fff) as u16;
                q.frag = self.rng.pick(&[
                    0x2000,
                    0x6000, // DF and MF
                    offset,
                    0x2000 | offset,
                    0x4000 | offset,
                    0x8000, // the reserved bit: not a fragment
                    0x8000 | 0x2000,
                    0x4000,
                ]);
                q.bytes()
            }
            Kind::VlanStack => {
                let n = self.rng.pick(&[1, 2, 2, 3, 3, 4]);
                q.tags = (0..n)
                    .map(|_| {
                        let tpid = self.rng.pick(&[
                            ETH_P_8021Q,
                            ETH_P_8021AD,
                            ETH_P_8021Q,
                            ETH_P_8021AD,
                            ETH_P_QINQ_OLD,
                        ]);
                        (tpid, self.rng.u16())
                    })
                    .collect();
                q.bytes()
            }
            Kind::Destination => {
                q.dst = self.odd_destination(family);
                q.bytes()
            }
            Kind::Checksum => {
                let mut f = q.bytes();
                let l4_check = l4 + if q.is_tcp() { tcp::CHECK } else { udp::CHECK };
                let wrong = (self.rng.u16() | 1).to_be_bytes();
                if v6 {
                    // No header checksum; a zero UDP checksum is malformed,
                    // a zero TCP one merely wrong.
                    match self.rng.below(4) {
                        0 | 1 => put(&mut f, l4_check, &[0, 0]),
                        2 => {
                            let c = be16(&f[l4_check..]) as u16 ^ u16::from_be_bytes(wrong);
                            put(&mut f, l4_check, &c.to_be_bytes());
                        }
                        _ => put(&mut f, l4_check, &[0xff, 0xff]),
                    }
                } else {
                    match self.rng.below(5) {
                        0 => put(&mut f, l3 + ipv4::CHECK, &[0, 0]),
                        1 => {
                            let c = be16(&f[l3 + ipv4::CHECK..]) as u16 ^ u16::from_be_bytes(wrong);
                            put(&mut f, l3 + ipv4::CHECK, &c.to_be_bytes());
                        }
                        2 => put(&mut f, l4_check, &[0, 0]),
                        3 => put(&mut f, l4_check, &wrong),
                        _ => {
                            put(&mut f, l3 + ipv4::CHECK, &wrong);
                            put(&mut f, l4_check, &[0xff, 0xff]);
                        }
                    }
                }
                f
            }
            Kind::ZeroAfterRewrite => {
                // To the wildcard service, whose one backend is known ahead.
                let backend = self.wildcard_backend[family as usize];
                q.dst = if v6 {
                    self.rng.pick(&WILDCARD_ADDRS6[1..]).into()
                } else {
                    self.rng.pick(&WILDCARD_ADDRS[1..]).into()
                };
                q.dport = 5300;
                let mut f = q.bytes();
                let end = l4 + be16(&f[l4 + udp::LEN..]);
                // The datagram as it will leave, checksum and first payload
                // word zero: the word that makes its sum 0xffff makes its
                // checksum come out 0.
                let mut out = f[l4..end].to_vec();
                out[udp::DPORT..udp::DPORT + 2].copy_from_slice(&backend.port().to_be_bytes());
                out[udp::CHECK..udp::CHECK + 4].fill(0);
                let sum = !l4_checksum(q.src, backend.ip(), PROTO_UDP, &out);
                put(&mut f, l4 + 8, &(0xffff - sum).to_be_bytes());
                refresh_checksums(&mut f, l3, l4, false, v6);
                f
            }
            Kind::TcpHeader => {
                let mut f = q.bytes();
                let doff = self.rng.below(16) as u8;
                f[l4 + tcp::DOFF] = doff << 4 | (f[l4 + tcp::DOFF] & 0x0f);
                if self.rng.percent(50) {
                    f[l4 + tcp::FLAGS] = self.rng.u8();
                }
                self.maybe_refresh(&mut f, &q);
                f
            }
            Kind::Ethertype => {
                q.ethertype = if v6 {
                    self.rng.pick(&[ETH_P_IPV4, 0x0806, 0x88cc, 0x86de, 0x8847])
                } else {
                    self.rng.pick(&[ETH_P_IPV6, 0x0806, 0x88cc, 0x8847, 0x0801])
                };
                q.bytes()
            }
            Kind::Protocol => {
                let mut f = q.bytes();
                let other = if q.is_tcp() { PROTO_UDP } else { PROTO_TCP };
                if v6 {
                    let next = if self.rng.percent(40) {
                        self.rng.pick(&EXTENSION_HEADERS)
                    } else {
                        self.rng
                            .pick(&[ICMPV6, NO_NEXT_HEADER, 1, 4, 41, 132, 255, other, other])
                    };
                    f[l3 + ipv6::NEXT] = next;
                } else {
                    let p = self
                        .rng
                        .pick(&[1, 0, 2, 41, 47, 132, 136, 255, other, other]);
                    f[l3 + ipv4::PROTO] = p;
                }
                self.maybe_refresh(&mut f, &q);
                f
            }
            Kind::Extension => {
                let n = self.rng.pick(&[1, 1, 2]);
                q.extensions = (0..n)
                    .map(|_| {
                        let kind = self.rng.pick(&EXTENSION_HEADERS);
                        let len = match kind {
                            FRAGMENT => 8,
                            ESP => 8 * (2 + self.rng.below(4)),
                            _ => 8 * (1 + self.rng.below(4)),
                        };
                        (kind, len)
                    })
                    .collect();
                q.bytes()
            }
            Kind::Bytes => {
                let mut f = q.bytes();
                let span = f.len().min(l4 + 24);
                for _ in 0..1 + self.rng.below(3) {
                    let at = self.rng.below(span);
                    f[at] = self.rng.u8();
                }
                self.maybe_refresh(&mut f, &q);
                f
            }
        };
        (kind, family, frame)
    }
}

/// The loaded object, maps filled from `CONFIG` as `dnsteer run` fills them.
struct Loaded {
    live: Live<KernelMaps>,
}

impl Loaded {
    fn new(config: &Config) -> Self {
        let ebpf = maps::load(config.flows.size).expect("loading the object (run as root)");
        let mut live = Live::new(KernelMaps::new(ebpf));
        live.apply(config).expect("filling maps");
        let xdp: &mut Xdp = live
            .store_mut()
            .ebpf
            .program_mut(XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        xdp.load().expect("verifier accepts the XDP program");
        Loaded { live }
    }

    fn ebpf(&self) -> &Ebpf {
        &self.live.store().ebpf
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

    fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        let map: HashMap<_, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf().map(names::FLOWS).unwrap()).unwrap();
        map.get(key, 0).ok()
    }

    fn run(&self, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let p: &Xdp = self
            .ebpf()
            .program(XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let result = p
            .test_run(opts)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {}-byte frame: {e}", input.len()));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }
}

/// What the host side says must happen to a packet.
#[derive(Debug)]
enum Expect {
    /// Passed byte for byte, counted as this.
    Pass(Reason),
    /// Rewritten towards a backend of this service: its flow's, when it has one.
    Steer {
        service: usize,
        flow: Option<SocketAddr>,
    },
}

impl Expect {
    fn reason(&self) -> Reason {
        match self {
            Expect::Pass(r) => *r,
            Expect::Steer { .. } => Reason::Steered,
        }
    }
}

fn expect(prog: &Loaded, model: &Model, host: &Result<Headers, Skip>) -> Expect {
    let h = match host {
        Err(skip) => return Expect::Pass(skip.reason()),
        Ok(h) => h,
    };
    let Some(service) = model.service(h) else {
        return Expect::Pass(Reason::NotService);
    };
    let key = FlowKey::new(
        (h.src, h.sport),
        (h.dst, h.dport),
        h.proto,
        direction::QUERY,
    );
    // Timeouts outlast the run and backends never change, so a record is
    // followed unless it is a closed TCP flow that a new SYN reopens.
    match prog.flow(&key) {
        Some(r) if !(r.flags & FLOW_CLOSING != 0 && h.is_syn()) => Expect::Steer {
            service,
            flow: Some(SocketAddr::new(ip_of(r.addr), u16::from_be_bytes(r.port))),
        },
        _ if h.is_tcp() && !h.is_syn() => Expect::Pass(Reason::TcpNoFlow),
        _ => Expect::Steer {
            service,
            flow: None,
        },
    }
}

/// Equal as one's complement numbers, where 0x0000 and 0xffff are both zero.
fn ones_eq(a: u16, b: u16) -> bool {
    a == b || matches!((a, b), (0, 0xffff) | (0xffff, 0))
}

/// How far from valid a frame's checksums are, from scratch with the addresses
/// the frame now holds: 0 (or 0xffff) when valid. The IPv4 header checksum
/// (`None` over IPv6, which has none), and the transport checksum (`None` for
/// a UDP datagram without one, which only IPv4 allows).
fn residuals(f: &[u8], h: &Headers) -> (Option<u16>, Option<u16>) {
    let (src, dst) = addresses(f, h.l3, h.ipv6).unwrap();
    let (ip, end) = if h.ipv6 {
        let payload = be16(&f[h.l3 + ipv6::PAYLOAD_LEN..]);
        (None, h.l3 + ipv6::HLEN + payload)
    } else {
        let ihl = usize::from(f[h.l3] & 0x0f) * 4;
        let ip = csum::ipv4_header(&f[h.l3..h.l3 + ihl]);
        (Some(ip), h.l3 + be16(&f[h.l3 + ipv4::TOT_LEN..]))
    };
    let l4 = if h.is_tcp() {
        Some(l4_checksum(src, dst, PROTO_TCP, &f[h.l4..end]))
    } else if be16(&f[h.l4 + udp::CHECK..]) == 0 {
        None
    } else {
        // RFC 8200 8.1: UDP's own length, not the IPv6 payload length.
        let len = be16(&f[h.l4 + udp::LEN..]);
        Some(l4_checksum(src, dst, PROTO_UDP, &f[h.l4..h.l4 + len]))
    };
    (ip, l4)
}

/// Checks a rewritten frame against its input: the destination set to a
/// backend of `service` (its flow's when given), checksums exactly as valid as
/// before, nothing else changed. Returns the backend.
fn check_rewrite(
    input: &[u8],
    out: &[u8],
    h: &Headers,
    backends: &[SocketAddr],
    flow: Option<SocketAddr>,
) -> Result<SocketAddr, String> {
    if out.len() != input.len() {
        return Err(format!("length {} -> {}", input.len(), out.len()));
    }
    let dst = if h.ipv6 {
        h.l3 + ipv6::DST..h.l3 + ipv6::DST + 16
    } else {
        h.l3 + ipv4::DST..h.l3 + ipv4::DST + 4
    };
    let mut rewritten = vec![
        dst.clone(),
        h.l4 + udp::DPORT..h.l4 + udp::DPORT + 2,
        h.l4_check()..h.l4_check() + 2,
    ];
    if !h.ipv6 {
        rewritten.push(h.l3 + ipv4::CHECK..h.l3 + ipv4::CHECK + 2);
    }
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if a != b && !rewritten.iter().any(|r| r.contains(&i)) {
            return Err(format!("byte {i} changed: {a:02x} -> {b:02x}"));
        }
    }
    let addr: IpAddr = if h.ipv6 {
        <[u8; 16]>::try_from(&out[dst]).unwrap().into()
    } else {
        <[u8; 4]>::try_from(&out[dst]).unwrap().into()
    };
    let port = be16(&out[h.l4 + udp::DPORT..]) as u16;
    let backend = SocketAddr::new(addr, port);
    if !backends.contains(&backend) {
        return Err(format!("sent to {backend}, not a backend of the service"));
    }
    if flow.is_some_and(|f| f != backend) {
        return Err(format!("sent to {backend}, its flow's backend is {flow:?}"));
    }
    let (ip_in, l4_in) = residuals(input, h);
    let (ip_out, l4_out) = residuals(out, h);
    for (what, before, after) in [("IPv4", ip_in, ip_out), ("transport", l4_in, l4_out)] {
        match (before, after) {
            (Some(a), Some(b)) if ones_eq(a, b) => {}
            (None, None) => {}
            (a, b) => {
                return Err(format!(
                    "{what} checksum off by {a:04x?} before, {b:04x?} after"
                ));
            }
        }
    }
    Ok(backend)
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Per kind and family: cases, and how many ended with each `Reason`.
#[derive(Default, Clone)]
struct Tally {
    cases: usize,
    host_only: usize,
    tcp: usize,
    reasons: [usize; Reason::ALL.len()],
}

impl Tally {
    fn of(&self, r: Reason) -> usize {
        self.reasons[r as usize]
    }
}

/// A number from the environment, decimal or 0x-prefixed hex.
fn env_u64(name: &str, default: u64) -> u64 {
    env::var(name).map_or(default, |v| {
        let v = v.trim();
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        }
        .unwrap_or_else(|e| panic!("{name}={v}: {e}"))
    })
}

#[test]
fn xdp_program_agrees_with_the_host_parser_on_mutated_queries() {
    pin_to_cpu0();
    let seed = env_u64("DNSTEER_DIFF_SEED", DEFAULT_SEED);
    let packets = env_u64("DNSTEER_DIFF_PACKETS", DEFAULT_PACKETS) as usize;
    println!("differential: seed {seed:#x} (DNSTEER_DIFF_SEED), {packets} packets");

    let config = config::parse(CONFIG, Path::new("differential.toml")).expect("test config");
    let model = Model::new(&config);
    let prog = Loaded::new(&config);
    let wildcard_backend = |any: IpAddr| {
        let service = model.listens[&(any, 5300, PROTO_UDP)];
        let [backend] = model.backends[service][..] else {
            panic!("{any}:5300 has one backend");
        };
        backend
    };
    let mut generator = Generator {
        rng: Rng(seed),
        targets: [model.targets(Family::V4), model.targets(Family::V6)],
        wildcard_backend: [
            wildcard_backend(Ipv4Addr::UNSPECIFIED.into()),
            wildcard_backend(Ipv6Addr::UNSPECIFIED.into()),
        ],
    };

    let mut tallies = vec![Tally::default(); 2 * Kind::WEIGHTED.len()];
    // Truncations at every offset up to past the transport header's start.
    let mut cuts_seen = [vec![false; 64], vec![false; 80]];
    let mut steered_valid_csums = [0; 2];
    let mut backends_hit: StdHashMap<SocketAddr, usize> = StdHashMap::new();
    let mut disagreements: Vec<String> = Vec::new();
    let (mut reasons, mut events) = (prog.reasons(), prog.events());
    let start = Instant::now();

    for n in 0..packets {
        let (kind, family, input) = generator.case();
        let what = format!("{} {}", family.name(), kind.name());
        let tally = &mut tallies[kind.index(family)];
        tally.cases += 1;
        let cuts = &mut cuts_seen[family as usize];
        if kind == Kind::Truncated && input.len() < cuts.len() {
            cuts[input.len()] = true;
        }
        let host = headers(input.as_slice());
        if input.len() < ETH_HLEN {
            // BPF_PROG_TEST_RUN refuses it (EINVAL); the host must call it truncated.
            tally.host_only += 1;
            tally.reasons[Reason::Malformed as usize] += 1;
            if host != Err(Skip::Malformed) {
                disagreements.push(format!(
                    "#{n} {what}: {}-byte runt: host {host:?}",
                    input.len()
                ));
            }
            continue;
        }
        if let Ok(h) = &host
            && h.is_tcp()
        {
            tally.tcp += 1;
        }
        let want = expect(&prog, &model, &host);
        let (action, out) = prog.run(&input);
        let (reasons_now, events_now) = (prog.reasons(), prog.events());
        let moved_reasons = moved(&Reason::ALL, &reasons, &reasons_now);
        let moved_events = moved(&FlowEvent::ALL, &events, &events_now);
        (reasons, events) = (reasons_now, events_now);
        for (r, _) in &moved_reasons {
            tally.reasons[*r as usize] += 1;
        }

        let mut wrong = Vec::new();
        if action != XDP_PASS {
            wrong.push(format!("action {action}, not XDP_PASS"));
        }
        if moved_reasons != [(want.reason(), 1)] {
            wrong.push(format!(
                "REASONS moved {moved_reasons:?}, want ({:?}, 1)",
                want.reason()
            ));
        }
        match &want {
            Expect::Pass(reason) => {
                if out != input {
                    wrong.push("frame changed".to_owned());
                }
                // Only a segment to a service looks its flow up (and finds none).
                let want_events: &[_] = if *reason == Reason::TcpNoFlow {
                    &[(FlowEvent::Miss, 1)]
                } else {
                    &[]
                };
                if moved_events != want_events {
                    wrong.push(format!("FLOW_EVENTS moved {moved_events:?}"));
                }
            }
            Expect::Steer { service, flow } => {
                let h = host.as_ref().unwrap();
                match check_rewrite(&input, &out, h, &model.backends[*service], *flow) {
                    Ok(backend) => {
                        *backends_hit.entry(backend).or_default() += 1;
                        let check = &out[h.l4_check()..h.l4_check() + 2];
                        if kind == Kind::ZeroAfterRewrite && check != [0xff, 0xff] {
                            wrong
                                .push(format!("UDP checksum that came out 0 sent as {check:02x?}"));
                        }
                        let (ip, l4) = residuals(&input, h);
                        if ip.is_none_or(|c| ones_eq(c, 0)) && l4.is_none_or(|c| ones_eq(c, 0)) {
                            steered_valid_csums[family as usize] += 1;
                        }
                    }
                    Err(e) => wrong.push(format!("service {}: {e}", model.names[*service])),
                }
            }
        }
        if !wrong.is_empty() {
            disagreements.push(format!(
                "#{n} {what}: {}\n  input  {}\n  output {}\n  host {host:?}, expected {want:?}",
                wrong.join("; "),
                Hex(&input),
                Hex(&out)
            ));
        }
    }

    let elapsed = start.elapsed();
    let total = |r: Reason| tallies.iter().map(|t| t.of(r)).sum::<usize>();
    let t = |k: Kind, f: Family| &tallies[k.index(f)];
    let of_family = |f: Family| {
        Kind::WEIGHTED
            .iter()
            .map(|(k, ..)| t(*k, f).cases)
            .sum::<usize>()
    };
    println!(
        "differential: {packets} packets ({} IPv4, {} IPv6) in {elapsed:.1?} ({:.0}/s)",
        of_family(Family::V4),
        of_family(Family::V6),
        packets as f64 / elapsed.as_secs_f64()
    );
    for (kind, _, families) in Kind::WEIGHTED {
        for &family in families {
            let t = t(kind, family);
            let by_reason: Vec<String> = Reason::ALL
                .iter()
                .filter(|r| t.of(**r) > 0)
                .map(|r| format!("{} {}", r.name(), t.of(*r)))
                .collect();
            println!(
                "  {:<16} {} {:>6} ({} host only, {} TCP parsed): {}",
                kind.name(),
                family.name(),
                t.cases,
                t.host_only,
                t.tcp,
                by_reason.join(", ")
            );
        }
    }
    let mut hit: Vec<_> = backends_hit.into_iter().collect();
    hit.sort();
    println!("  backends: {hit:?}");
    let steered = total(Reason::Steered);
    let host_only: usize = tallies.iter().map(|t| t.host_only).sum();
    println!(
        "differential: {packets} packets: {steered} steered ({} IPv4 and {} IPv6 with valid \
         checksums), {} passed unchanged ({} not_service, {} malformed, {} fragment, {} \
         tcp_no_flow, {} ipv6_ext), {host_only} host only, {} disagreements",
        steered_valid_csums[0],
        steered_valid_csums[1],
        packets - steered - host_only,
        total(Reason::NotService),
        total(Reason::Malformed),
        total(Reason::Fragment),
        total(Reason::TcpNoFlow),
        total(Reason::Ipv6Ext),
        disagreements.len()
    );
    for d in disagreements.iter().take(20) {
        println!("DISAGREEMENT {d}");
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements between the XDP program and the host parser (seed {seed:#x}); the first:\n{}",
        disagreements.len(),
        disagreements[0]
    );

    // Every kind ran in each of its families, and reached the verdicts it exists for.
    for (kind, _, families) in Kind::WEIGHTED {
        for &family in families {
            assert!(
                t(kind, family).cases >= packets / 100,
                "{} {}: only {} cases",
                family.name(),
                kind.name(),
                t(kind, family).cases
            );
        }
    }
    if packets >= 10_000 {
        use Family::{V4, V6};
        let reached = [
            (Kind::Valid, V4, Reason::Steered),
            (Kind::Valid, V4, Reason::NotService),
            (Kind::Valid, V4, Reason::TcpNoFlow),
            (Kind::Truncated, V4, Reason::Malformed),
            (Kind::WrongIhl, V4, Reason::Malformed),
            (Kind::TotalLength, V4, Reason::Malformed),
            (Kind::TotalLength, V4, Reason::Steered),
            (Kind::UdpLength, V4, Reason::Malformed),
            (Kind::UdpLength, V4, Reason::Steered),
            (Kind::BadVersion, V4, Reason::Malformed),
            (Kind::Fragment, V4, Reason::Fragment),
            (Kind::Fragment, V4, Reason::Steered),
            (Kind::VlanStack, V4, Reason::NotService),
            (Kind::VlanStack, V4, Reason::Steered),
            (Kind::Destination, V4, Reason::NotService),
            (Kind::Destination, V4, Reason::Steered),
            (Kind::Checksum, V4, Reason::Steered),
            (Kind::ZeroAfterRewrite, V4, Reason::Steered),
            (Kind::TcpHeader, V4, Reason::Steered),
            (Kind::TcpHeader, V4, Reason::Malformed),
            (Kind::TcpHeader, V4, Reason::TcpNoFlow),
            (Kind::Ethertype, V4, Reason::NotService),
            (Kind::Protocol, V4, Reason::NotService),
            (Kind::Protocol, V4, Reason::Malformed),
            (Kind::Bytes, V4, Reason::Malformed),
            (Kind::Valid, V6, Reason::Steered),
            (Kind::Valid, V6, Reason::NotService),
            (Kind::Valid, V6, Reason::TcpNoFlow),
            (Kind::Truncated, V6, Reason::Malformed),
            (Kind::PayloadLength, V6, Reason::Malformed),
            (Kind::PayloadLength, V6, Reason::Steered),
            (Kind::UdpLength, V6, Reason::Malformed),
            (Kind::UdpLength, V6, Reason::Steered),
            (Kind::BadVersion, V6, Reason::Malformed),
            (Kind::VlanStack, V6, Reason::NotService),
            (Kind::VlanStack, V6, Reason::Steered),
            (Kind::Destination, V6, Reason::NotService),
            (Kind::Destination, V6, Reason::Steered),
            (Kind::Mapped, V6, Reason::NotService),
            (Kind::Mapped, V6, Reason::Steered),
            (Kind::Checksum, V6, Reason::Steered),
            (Kind::Checksum, V6, Reason::Malformed),
            (Kind::ZeroAfterRewrite, V6, Reason::Steered),
            (Kind::TcpHeader, V6, Reason::Steered),
            (Kind::TcpHeader, V6, Reason::Malformed),
            (Kind::TcpHeader, V6, Reason::TcpNoFlow),
            (Kind::Ethertype, V6, Reason::NotService),
            (Kind::Protocol, V6, Reason::NotService),
            (Kind::Protocol, V6, Reason::Ipv6Ext),
            (Kind::Protocol, V6, Reason::Malformed),
            (Kind::Extension, V6, Reason::Ipv6Ext),
            (Kind::Bytes, V6, Reason::Malformed),
        ];
        for (kind, family, reason) in reached {
            assert!(
                t(kind, family).of(reason) > 0,
                "no {} {} case ended {}",
                family.name(),
                kind.name(),
                reason.name()
            );
        }
        for k in [Kind::Valid, Kind::TcpHeader] {
            for f in [V4, V6] {
                assert!(
                    t(k, f).tcp > 0,
                    "{} {}: no TCP segment parsed",
                    f.name(),
                    k.name()
                );
            }
        }
        for (f, cuts) in [V4, V6].iter().zip(&cuts_seen) {
            let missing: Vec<usize> = (0..cuts.len()).filter(|&c| !cuts[c]).collect();
            assert!(
                missing.is_empty(),
                "no {} truncation at {missing:?}",
                f.name()
            );
        }
        for f in [V4, V6] {
            assert!(
                steered_valid_csums[f as usize] > 0,
                "no steered {} packet had valid checksums",
                f.name()
            );
        }
    }
}
