//! Differential test: the XDP program, run through BPF_PROG_TEST_RUN, against
//! the host build of the parser it is made from (`xdp_common::parse::headers4`),
//! on random mutations of valid queries.
//!
//! For every packet: the program rewrites it only when the host parser accepts
//! it and its destination is a listen entry of its protocol, and then changes
//! nothing but the destination address and port (now a backend of that
//! service) and the two checksums, each exactly as valid as it was; any other
//! packet passes byte for byte unchanged; the one `REASONS` counter that moves
//! is the host's verdict. Frames shorter than an Ethernet header, which
//! BPF_PROG_TEST_RUN refuses, go through the host parser only.
//!
//! Deterministic: the seed is printed first; `DNSTEER_DIFF_SEED` overrides it
//! and `DNSTEER_DIFF_PACKETS` the count (default 100,000). Needs root (loading
//! BPF programs); no namespaces, no traffic.

use std::{
    collections::HashMap as StdHashMap,
    env, fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use dnsteer::{
    XDP_PROGRAM,
    config::{self, Config},
    live::Live,
    maps::{self, KernelMaps},
};
use xdp_common::{
    FLOW_CLOSING, FlowEvent, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP, Reason, csum, direction,
    names,
    parse::{ETH_HLEN, Headers4, Skip, headers4, ipv4, tcp, udp},
};

const XDP_PASS: u32 = 2;
/// TCP's push flag (`xdp_common::parse::tcp` names only those the kernel reads).
const PSH: u8 = 0x08;
const DEFAULT_SEED: u64 = 0x00d1_ff5e_ed00_0001;
const DEFAULT_PACKETS: u64 = 100_000;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ TPID: a tag dnsteer does not read.
const ETH_P_QINQ_OLD: u16 = 0x9100;

/// Every kind of listen entry: exact and `*`, UDP, TCP and both, an exact
/// address shadowing a `*` on the same port, UDP and TCP services sharing an
/// address and port, backends on other ports. Flow timeouts are far longer than
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
"#;

/// Addresses a `*` listen is sent to: few, so TCP flows recur.
const WILDCARD_ADDRS: [[u8; 4]; 4] = [
    [198, 51, 100, 7],
    [198, 51, 100, 8],
    [203, 0, 113, 1],
    [192, 0, 2, 99],
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

    fn addr(&mut self) -> [u8; 4] {
        self.bytes(4).try_into().unwrap()
    }

    /// An address that is neither multicast nor broadcast.
    fn unicast(&mut self) -> [u8; 4] {
        let mut a = self.addr();
        if Ipv4Addr::from(a).is_multicast() || a == [255; 4] {
            a[0] = 10;
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

/// A valid Ethernet + VLAN + IPv4 + UDP/TCP frame, before any mutation.
#[derive(Clone, Debug)]
struct Query {
    macs: [u8; 12],
    /// (TPID, TCI), outermost first.
    tags: Vec<(u16, u16)>,
    ethertype: u16,
    tos: u8,
    id: u16,
    frag: u16,
    ttl: u8,
    ip_options: Vec<u8>,
    /// UDP or TCP: the header written, and the IPv4 protocol.
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
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

/// The TCP checksum of `segment` (header and payload) from scratch, with the
/// pseudo header of `src` and `dst` (RFC 9293 3.1); 0 for a valid segment.
fn tcp_checksum(src: [u8; 4], dst: [u8; 4], segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = PROTO_TCP;
    pseudo[10..].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    !csum::fold(csum::sum_bytes(csum::sum_bytes(0, &pseudo), segment))
}

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

impl Query {
    fn l3(&self) -> usize {
        ETH_HLEN + 4 * self.tags.len()
    }

    fn l4(&self) -> usize {
        self.l3() + 20 + self.ip_options.len()
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
        let l3 = f.len();
        let ihl = 20 + self.ip_options.len();
        let l4_len = if self.is_tcp() {
            20 + self.tcp_options.len()
        } else {
            8
        } + self.payload.len();
        f.extend_from_slice(&[0x40 | (ihl / 4) as u8, self.tos]);
        f.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&self.id.to_be_bytes());
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.ip_options);
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
        refresh_checksums(&mut f, l3, l3 + ihl, self.is_tcp());
        if self.zero_udp_csum && !self.is_tcp() {
            put(&mut f, l3 + ihl + udp::CHECK, &[0, 0]);
        }
        f.extend_from_slice(&self.padding);
        f
    }
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

/// Both checksums from scratch, over the lengths the (maybe mutated) frame
/// now states, as far as they fit in it; a zero UDP checksum stays zero.
fn refresh_checksums(f: &mut [u8], l3: usize, l4: usize, is_tcp: bool) {
    refresh_ip_checksum(f, l3);
    if f.len() < l3 + 20 || f.len() < l4 + 8 {
        return;
    }
    let src: [u8; 4] = f[l3 + ipv4::SRC..][..4].try_into().unwrap();
    let dst: [u8; 4] = f[l3 + ipv4::DST..][..4].try_into().unwrap();
    let end = (l3 + be16(&f[l3 + ipv4::TOT_LEN..])).clamp(l4, f.len());
    if is_tcp {
        if end < l4 + 20 {
            return;
        }
        put(f, l4 + tcp::CHECK, &[0, 0]);
        let c = tcp_checksum(src, dst, &f[l4..end]);
        put(f, l4 + tcp::CHECK, &c.to_be_bytes());
    } else {
        let end = (l4 + be16(&f[l4 + udp::LEN..])).clamp(l4 + 8, f.len());
        put(f, l4 + udp::CHECK, &[0, 0]);
        let c = match csum::udp(src, dst, &f[l4..end]) {
            0 => 0xffff,
            c => c,
        };
        put(f, l4 + udp::CHECK, &c.to_be_bytes());
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
    /// A UDP length that disagrees with the datagram.
    UdpLength,
    /// An IP version other than 4.
    BadVersion,
    /// MF and/or a fragment offset (or DF / the reserved bit, which are not).
    Fragment,
    /// 0-4 tags of 802.1Q, 802.1ad and the old 0x9100 TPID.
    VlanStack,
    /// Multicast, broadcast and near-miss destinations.
    Destination,
    /// A zero or wrong IPv4 or transport checksum.
    Checksum,
    /// A TCP segment with an arbitrary data offset and flags.
    TcpHeader,
    /// Not IPv4 at the ethertype.
    Ethertype,
    /// An IPv4 protocol other than the header's.
    Protocol,
    /// Random header bytes overwritten.
    Bytes,
}

impl Kind {
    /// Each kind with its share of the cases.
    const WEIGHTED: [(Kind, usize); 14] = [
        (Kind::Valid, 8),
        (Kind::Truncated, 12),
        (Kind::WrongIhl, 7),
        (Kind::TotalLength, 8),
        (Kind::UdpLength, 7),
        (Kind::BadVersion, 5),
        (Kind::Fragment, 7),
        (Kind::VlanStack, 8),
        (Kind::Destination, 7),
        (Kind::Checksum, 8),
        (Kind::TcpHeader, 8),
        (Kind::Ethertype, 4),
        (Kind::Protocol, 5),
        (Kind::Bytes, 8),
    ];

    fn index(self) -> usize {
        Self::WEIGHTED.iter().position(|(k, _)| *k == self).unwrap()
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Truncated => "truncated",
            Kind::WrongIhl => "wrong IHL",
            Kind::TotalLength => "total length",
            Kind::UdpLength => "UDP length",
            Kind::BadVersion => "bad version",
            Kind::Fragment => "fragment",
            Kind::VlanStack => "VLAN stack",
            Kind::Destination => "mcast/bcast dst",
            Kind::Checksum => "checksum",
            Kind::TcpHeader => "TCP header",
            Kind::Ethertype => "ethertype",
            Kind::Protocol => "protocol",
            Kind::Bytes => "random bytes",
        }
    }
}

/// The listen entries and backends of the config, as the README defines
/// matching: the exact address, else `*`, on the port and protocol.
struct Model {
    listens: StdHashMap<(Option<[u8; 4]>, u16, u8), usize>,
    backends: Vec<Vec<SocketAddrV4>>,
    names: Vec<String>,
}

impl Model {
    fn new(config: &Config) -> Self {
        let mut listens = StdHashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            for l in &s.listen {
                for &proto in s.protocol.ip_protos() {
                    let key = (l.addr.map(|a| a.octets()), l.port, proto);
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

    fn service(&self, h: &Headers4) -> Option<usize> {
        let port = u16::from_be_bytes(h.dport);
        let exact = self.listens.get(&(Some(h.dst), port, h.proto));
        exact
            .or_else(|| self.listens.get(&(None, port, h.proto)))
            .copied()
    }

    /// (address, port, protocol) of every listen entry, for generating queries.
    fn targets(&self) -> Vec<(Option<[u8; 4]>, u16, u8)> {
        let mut t: Vec<_> = self.listens.keys().copied().collect();
        t.sort();
        t
    }
}

/// Makes the packets: a valid query, then one kind of mutation.
struct Generator {
    rng: Rng,
    targets: Vec<(Option<[u8; 4]>, u16, u8)>,
}

impl Generator {
    fn kind(&mut self) -> Kind {
        let total: usize = Kind::WEIGHTED.iter().map(|(_, w)| w).sum();
        let mut n = self.rng.below(total);
        for (kind, weight) in Kind::WEIGHTED {
            if n < weight {
                return kind;
            }
            n -= weight;
        }
        unreachable!()
    }

    /// A valid query: mostly to a listen entry (sometimes over the other
    /// protocol), else to an address or port nothing listens on.
    fn query(&mut self, proto: Option<u8>) -> Query {
        let rng = &mut self.rng;
        let (dst, dport, mut p) = if rng.percent(75) {
            let (addr, port, p) = rng.pick(&self.targets);
            let addr = addr.unwrap_or_else(|| rng.pick(&WILDCARD_ADDRS));
            let p = match rng.percent(15) {
                true if p == PROTO_UDP => PROTO_TCP,
                true => PROTO_UDP,
                false => p,
            };
            (addr, port, p)
        } else {
            let (addr, _, _) = rng.pick(&self.targets);
            let any = rng.u16();
            let port = rng.pick(&[53, 54, 853, 5300, 5353, any]);
            let addr = match addr {
                Some(a) if rng.percent(50) => a,
                _ => rng.unicast(),
            };
            (addr, port, rng.pick(&[PROTO_UDP, PROTO_TCP]))
        };
        if let Some(forced) = proto {
            p = forced;
        }
        // Few clients and ports, so TCP segments meet the flows their SYNs opened.
        let (src, sport) = if rng.percent(85) {
            (
                [172, 16, rng.below(4) as u8, rng.below(64) as u8],
                40000 + rng.below(16) as u16,
            )
        } else {
            (rng.addr(), rng.u16())
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
            ethertype: ETH_P_IPV4,
            tos: rng.u8(),
            id: rng.u16(),
            frag: if rng.percent(50) { 0x4000 } else { 0 },
            ttl: rng.u8(),
            ip_options: if rng.percent(70) {
                vec![]
            } else {
                rng.option_words(10)
            },
            proto: p,
            src,
            dst,
            sport,
            dport,
            zero_udp_csum: rng.percent(15),
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
            refresh_checksums(f, q.l3(), q.l4(), q.is_tcp());
        }
    }

    fn case(&mut self) -> (Kind, Vec<u8>) {
        let kind = self.kind();
        let proto = match kind {
            Kind::UdpLength => Some(PROTO_UDP),
            Kind::TcpHeader => Some(PROTO_TCP),
            _ => None,
        };
        let mut q = self.query(proto);
        let (l3, l4) = (q.l3(), q.l4());
        let frame = match kind {
            Kind::Valid => q.bytes(),
            Kind::Truncated => {
                let mut f = q.bytes();
                let boundaries = [12, l3, l3 + 20, l4, l4 + 8, l4 + 20, f.len()];
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
            Kind::UdpLength => {
                let mut f = q.bytes();
                let ulen = be16(&f[l4 + udp::LEN..]);
                let ip_payload = be16(&f[l3 + ipv4::TOT_LEN..]) - (l4 - l3);
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
                let version = (4 + 1 + self.rng.below(15)) % 16;
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
                let r = self.rng.next().to_be_bytes();
                q.dst = self.rng.pick(&[
                    [224 + (r[0] & 0x0f), r[1], r[2], r[3]],
                    [224, 0, 0, r[1]],
                    [239, 255, 255, 255],
                    [255, 255, 255, 255],
                    // Near misses, all unicast as far as dnsteer can tell.
                    [223, 255, 255, 255],
                    [240, 0, 0, r[3]],
                    [255, 255, 255, 254],
                    [192, 0, 2, 255],
                    [0, 0, 0, 0],
                ]);
                q.bytes()
            }
            Kind::Checksum => {
                let mut f = q.bytes();
                let l4_check = l4 + if q.is_tcp() { tcp::CHECK } else { udp::CHECK };
                let wrong = (self.rng.u16() | 1).to_be_bytes();
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
                q.ethertype = self.rng.pick(&[0x86dd, 0x0806, 0x88cc, 0x8847, 0x0801]);
                q.bytes()
            }
            Kind::Protocol => {
                let mut f = q.bytes();
                let other = if q.is_tcp() { PROTO_UDP } else { PROTO_TCP };
                let p = self
                    .rng
                    .pick(&[1, 0, 2, 41, 47, 132, 136, 255, other, other]);
                f[l3 + ipv4::PROTO] = p;
                self.maybe_refresh(&mut f, &q);
                f
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
        (kind, frame)
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

    /// Each of `count` per-CPU counters of map `name`, summed over CPUs.
    fn counters(&self, name: &str, count: usize) -> Vec<u64> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf().map(name).unwrap()).unwrap();
        (0..count as u32)
            .map(|i| map.get(&i, 0).unwrap().iter().sum())
            .collect()
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

/// Keeps this thread on one CPU, so the per-CPU counters read are the ones it moved.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
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
        flow: Option<SocketAddrV4>,
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

fn expect(prog: &Loaded, model: &Model, host: &Result<Headers4, Skip>) -> Expect {
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
            flow: Some(SocketAddrV4::new(r.addr.into(), u16::from_be_bytes(r.port))),
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

/// How far from valid a frame's checksums are: 0 (or 0xffff) when valid.
/// `None` for a UDP datagram without a checksum.
fn residuals(f: &[u8], h: &Headers4) -> (u16, Option<u16>) {
    let ihl = usize::from(f[h.l3] & 0x0f) * 4;
    let ip = csum::ipv4_header(&f[h.l3..h.l3 + ihl]);
    let end = h.l3 + be16(&f[h.l3 + ipv4::TOT_LEN..]);
    let l4 = if h.is_tcp() {
        Some(tcp_checksum(h.src, h.dst, &f[h.l4..end]))
    } else if be16(&f[h.l4 + udp::CHECK..]) == 0 {
        None
    } else {
        let len = be16(&f[h.l4 + udp::LEN..]);
        Some(csum::udp(h.src, h.dst, &f[h.l4..h.l4 + len]))
    };
    (ip, l4)
}

/// Checks a rewritten frame against its input: the destination set to a
/// backend of `service` (its flow's when given), checksums exactly as valid as
/// before, nothing else changed. Returns the backend.
fn check_rewrite(
    input: &[u8],
    out: &[u8],
    h: &Headers4,
    backends: &[SocketAddrV4],
    flow: Option<SocketAddrV4>,
) -> Result<SocketAddrV4, String> {
    if out.len() != input.len() {
        return Err(format!("length {} -> {}", input.len(), out.len()));
    }
    let rewritten = [
        h.l3 + ipv4::CHECK..h.l3 + ipv4::CHECK + 2,
        h.l3 + ipv4::DST..h.l3 + ipv4::DST + 4,
        h.l4 + udp::DPORT..h.l4 + udp::DPORT + 2,
        h.l4_check()..h.l4_check() + 2,
    ];
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if a != b && !rewritten.iter().any(|r| r.contains(&i)) {
            return Err(format!("byte {i} changed: {a:02x} -> {b:02x}"));
        }
    }
    let addr: [u8; 4] = out[h.l3 + ipv4::DST..][..4].try_into().unwrap();
    let port = be16(&out[h.l4 + udp::DPORT..]) as u16;
    let backend = SocketAddrV4::new(addr.into(), port);
    if !backends.contains(&backend) {
        return Err(format!("sent to {backend}, not a backend of the service"));
    }
    if flow.is_some_and(|f| f != backend) {
        return Err(format!("sent to {backend}, its flow's backend is {flow:?}"));
    }
    let after = Headers4 {
        dst: addr,
        dport: port.to_be_bytes(),
        ..*h
    };
    let (ip_in, l4_in) = residuals(input, h);
    let (ip_out, l4_out) = residuals(out, &after);
    if !ones_eq(ip_in, ip_out) {
        return Err(format!(
            "IPv4 checksum off by {ip_in:#06x} before, {ip_out:#06x} after"
        ));
    }
    match (l4_in, l4_out) {
        (Some(a), Some(b)) if ones_eq(a, b) => {}
        (None, None) => {}
        (a, b) => {
            return Err(format!(
                "transport checksum off by {a:04x?} before, {b:04x?} after"
            ));
        }
    }
    Ok(backend)
}

/// `(item, delta)` for every counter that moved.
fn moved<T: Copy>(all: &[T], before: &[u64], after: &[u64]) -> Vec<(T, u64)> {
    all.iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a != b)
        .map(|(item, (b, a))| (*item, a.wrapping_sub(*b)))
        .collect()
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Per kind: cases, and how many ended with each `Reason`.
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
    let mut generator = Generator {
        rng: Rng(seed),
        targets: model.targets(),
    };

    let mut tallies = vec![Tally::default(); Kind::WEIGHTED.len()];
    let mut cuts_seen = [false; 64];
    let mut steered_valid_csums = 0;
    let mut backends_hit: StdHashMap<SocketAddrV4, usize> = StdHashMap::new();
    let mut disagreements: Vec<String> = Vec::new();
    let (mut reasons, mut events) = (prog.reasons(), prog.events());
    let start = Instant::now();

    for n in 0..packets {
        let (kind, input) = generator.case();
        let tally = &mut tallies[kind.index()];
        tally.cases += 1;
        if kind == Kind::Truncated && input.len() < cuts_seen.len() {
            cuts_seen[input.len()] = true;
        }
        let host = headers4(input.as_slice());
        if input.len() < ETH_HLEN {
            // BPF_PROG_TEST_RUN refuses it (EINVAL); the host must call it truncated.
            tally.host_only += 1;
            tally.reasons[Reason::Malformed as usize] += 1;
            if host != Err(Skip::Malformed) {
                disagreements.push(format!(
                    "#{n} {}: {}-byte runt: host {host:?}",
                    kind.name(),
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
                        let (ip, l4) = residuals(&input, h);
                        if ones_eq(ip, 0) && l4.is_none_or(|c| ones_eq(c, 0)) {
                            steered_valid_csums += 1;
                        }
                    }
                    Err(e) => wrong.push(format!("service {}: {e}", model.names[*service])),
                }
            }
        }
        if !wrong.is_empty() {
            disagreements.push(format!(
                "#{n} {}: {}\n  input  {}\n  output {}\n  host {host:?}, expected {want:?}",
                kind.name(),
                wrong.join("; "),
                Hex(&input),
                Hex(&out)
            ));
        }
    }

    let elapsed = start.elapsed();
    let total = |r: Reason| tallies.iter().map(|t| t.of(r)).sum::<usize>();
    println!(
        "differential: {packets} packets in {elapsed:.1?} ({:.0}/s)",
        packets as f64 / elapsed.as_secs_f64()
    );
    for (kind, _) in Kind::WEIGHTED {
        let t = &tallies[kind.index()];
        let by_reason: Vec<String> = Reason::ALL
            .iter()
            .filter(|r| t.of(**r) > 0)
            .map(|r| format!("{} {}", r.name(), t.of(*r)))
            .collect();
        println!(
            "  {:<16} {:>6} ({} host only, {} TCP parsed): {}",
            kind.name(),
            t.cases,
            t.host_only,
            t.tcp,
            by_reason.join(", ")
        );
    }
    let mut hit: Vec<_> = backends_hit.into_iter().collect();
    hit.sort();
    println!("  backends: {hit:?}");
    let steered = total(Reason::Steered);
    let host_only: usize = tallies.iter().map(|t| t.host_only).sum();
    println!(
        "differential: {packets} packets: {steered} steered ({steered_valid_csums} with valid \
         checksums), {} passed unchanged ({} not_service, {} malformed, {} fragment, {} \
         tcp_no_flow), {host_only} host only, {} disagreements",
        packets - steered - host_only,
        total(Reason::NotService),
        total(Reason::Malformed),
        total(Reason::Fragment),
        total(Reason::TcpNoFlow),
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

    // Every kind ran, and reached the verdicts it exists for.
    let t = |k: Kind| &tallies[k.index()];
    for (kind, _) in Kind::WEIGHTED {
        assert!(
            t(kind).cases >= packets / 100,
            "{}: only {} cases",
            kind.name(),
            t(kind).cases
        );
    }
    if packets >= 10_000 {
        let reached = [
            (Kind::Valid, Reason::Steered),
            (Kind::Valid, Reason::NotService),
            (Kind::Valid, Reason::TcpNoFlow),
            (Kind::Truncated, Reason::Malformed),
            (Kind::WrongIhl, Reason::Malformed),
            (Kind::TotalLength, Reason::Malformed),
            (Kind::TotalLength, Reason::Steered),
            (Kind::UdpLength, Reason::Malformed),
            (Kind::UdpLength, Reason::Steered),
            (Kind::BadVersion, Reason::Malformed),
            (Kind::Fragment, Reason::Fragment),
            (Kind::Fragment, Reason::Steered),
            (Kind::VlanStack, Reason::NotService),
            (Kind::VlanStack, Reason::Steered),
            (Kind::Destination, Reason::NotService),
            (Kind::Destination, Reason::Steered),
            (Kind::Checksum, Reason::Steered),
            (Kind::TcpHeader, Reason::Steered),
            (Kind::TcpHeader, Reason::Malformed),
            (Kind::TcpHeader, Reason::TcpNoFlow),
            (Kind::Ethertype, Reason::NotService),
            (Kind::Protocol, Reason::NotService),
            (Kind::Protocol, Reason::Malformed),
            (Kind::Bytes, Reason::Malformed),
        ];
        for (kind, reason) in reached {
            assert!(
                t(kind).of(reason) > 0,
                "no {} case ended {}",
                kind.name(),
                reason.name()
            );
        }
        for k in [Kind::Valid, Kind::TcpHeader] {
            assert!(t(k).tcp > 0, "{}: no TCP segment parsed", k.name());
        }
        let missing: Vec<usize> = (0..cuts_seen.len()).filter(|&c| !cuts_seen[c]).collect();
        assert!(missing.is_empty(), "no truncation at {missing:?}");
        assert!(
            steered_valid_csums > 0,
            "no steered packet had valid checksums"
        );
    }
}
