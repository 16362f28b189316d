//! Header parsing: Ethernet, up to two VLAN tags, IPv4 (with options) or IPv6
//! (without extension headers), UDP or TCP; the DNS message ID after a UDP
//! header; fragments of an IPv4 or IPv6 datagram; and ICMP or ICMPv6 errors
//! quoting an IPv4 or IPv6 UDP or TCP packet.
//!
//! Written once over the [`Packet`] trait so the kernel side (bounds checked
//! against `data_end`) and the host (a byte slice) run the same code: what the
//! host tests accept is what the program steers.

use crate::maps::{
    Addr, PROTO_TCP, PROTO_UDP, Reason, addr_from_octets, ipv4_mapped, is_ipv4_mapped,
};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
pub const TCP_MIN_HLEN: usize = 20;
pub const ICMP_HLEN: usize = 8;
/// Transport bytes an ICMP error is sure to quote (RFC 792): both ports, and
/// UDP's length and checksum; not TCP's flags or checksum.
pub const QUOTED_L4_LEN: usize = 8;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Field offsets inside the IPv4 header.
pub mod ipv4 {
    pub const TOT_LEN: usize = 2;
    /// TTL, then the protocol: one 16-bit word of the header checksum.
    pub const TTL: usize = 8;
    pub const FRAG: usize = 6;
    pub const PROTO: usize = 9;
    pub const CHECK: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    /// More-fragments flag and fragment offset; either set means a fragment.
    pub const FRAG_MASK: u16 = 0x3fff;
    /// The "more fragments" flag and the fragment offset (in 8-byte units).
    pub const MORE_FRAGMENTS: u16 = 0x2000;
    pub const OFFSET_MASK: u16 = 0x1fff;
    pub const ID: usize = 4;
}

/// Field offsets inside the IPv6 header (RFC 8200 3), and which next-header
/// values are extension headers.
pub mod ipv6 {
    pub const PAYLOAD_LEN: usize = 4;
    pub const HOP_LIMIT: usize = 7;
    /// The fixed header's length, which the payload length does not count.
    pub const HLEN: usize = 40;
    pub const NEXT: usize = 6;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    /// The fragment header's next header value, and the header's length (RFC 8200 4.5).
    pub const FRAGMENT: u8 = 44;
    pub const FRAGMENT_HLEN: usize = 8;
    /// IANA's "IPv6 Extension Header Types" (RFC 7045 lists them): hop-by-hop
    /// options, routing, fragment, ESP, AH, destination options, mobility,
    /// HIP, shim6, and the two experimental values.
    pub const EXTENSION_HEADERS: [u8; 11] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];

    /// Whether next header `next` is one of `EXTENSION_HEADERS`.
    #[inline(always)]
    pub const fn is_extension(next: u8) -> bool {
        matches!(
            next,
            0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
        )
    }
}

/// Field offsets inside the UDP header.
pub mod udp {
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const LEN: usize = 4;
    pub const CHECK: usize = 6;
}

/// Field offsets and flags inside the TCP header.
pub mod tcp {
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const DOFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECK: usize = 16;
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Protocol number, field offsets and message types of ICMP (RFC 792).
pub mod icmp {
    pub const PROTO: u8 = 1;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECK: usize = 2;
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable; all its codes quote the packet the same way.
    pub const DEST_UNREACH: u8 = 3;
    pub const REDIRECT: u8 = 5;
    pub const TIME_EXCEEDED: u8 = 11;
    /// Destination unreachable codes.
    pub const HOST_UNREACH: u8 = 1;
    pub const PROTO_UNREACH: u8 = 2;
    pub const PORT_UNREACH: u8 = 3;
    pub const FRAG_NEEDED: u8 = 4;
}

/// ICMPv6 (RFC 4443): the error messages translated like their flows.
pub mod icmp6 {
    pub const PROTO: u8 = 58;
    pub const DEST_UNREACH: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    /// The checksum's offset, as in ICMP.
    pub const CHECK: usize = 2;
}

/// Bytes of a DNS message's ID (RFC 1035 4.1.1), the first field after the UDP header.
pub const DNS_ID_LEN: usize = 2;

/// Read access to a packet's bytes.
#[expect(
    clippy::len_without_is_empty,
    reason = "a frame is never asked whether it is empty"
)]
pub trait Packet {
    /// The packet's length in bytes (the linear part the program can read).
    fn len(&self) -> usize;
    /// `N` bytes at `offset`, or `None` when they run past the end.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// The 16 bytes at `offset` as an address's words. The kernel side reads
    /// them as words: a 16-byte array would cost the BPF stack a slot per byte.
    #[inline(always)]
    fn addr(&self, offset: usize) -> Option<Addr> {
        self.bytes::<16>(offset).map(addr_from_octets)
    }
}

impl Packet for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.get(offset..offset.checked_add(N)?)?.try_into().ok()
    }
}

/// An IPv4 or IPv6 UDP datagram or TCP segment: its 5-tuple and where its
/// headers start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// Offset of the IPv4 or IPv6 header.
    pub l3: usize,
    /// Offset of the UDP or TCP header.
    pub l4: usize,
    /// IPv6; else IPv4, whose addresses below are IPv4-mapped.
    pub ipv6: bool,
    /// `PROTO_UDP` or `PROTO_TCP`.
    pub proto: u8,
    /// TCP flags (`tcp::FIN` ..); 0 for UDP.
    pub tcp_flags: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

impl Headers {
    /// Offset of the transport checksum.
    #[inline(always)]
    pub const fn l4_check(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4 + tcp::CHECK
        } else {
            self.l4 + udp::CHECK
        }
    }

    #[inline(always)]
    pub const fn is_tcp(&self) -> bool {
        self.proto == PROTO_TCP
    }

    /// A TCP segment that opens a connection (SYN without ACK).
    #[inline(always)]
    pub const fn is_syn(&self) -> bool {
        self.is_tcp() && self.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
    }
}

/// Why a packet is not a UDP datagram or TCP segment dnsteer may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Neither IPv4 nor IPv6 (ARP, three or more VLAN tags, ..); for the
    /// IPv4-only ICMP error parser, not IPv4.
    NotIp,
    /// IP, but neither UDP nor TCP (ICMP, ICMPv6, ..).
    NotUdpOrTcp,
    /// To a multicast, broadcast or (IPv6) unspecified address: never a
    /// load-balanced query.
    NotUnicast,
    /// An IPv6 header carrying an IPv4-mapped address (`::ffff:0:0/96`), which
    /// RFC 4291 2.5.5.2 keeps off the wire and the maps use for IPv4.
    Mapped,
    /// Truncated, or lengths that disagree with each other or with the frame;
    /// also an IPv6 UDP datagram with checksum 0, which RFC 8200 8.1 forbids.
    Malformed,
    /// An IPv4 fragment.
    Fragment,
    /// An IPv6 extension header (or AH, ESP) before the transport header,
    /// fragment headers included: not walked, so not understood.
    Ipv6Ext,
}

impl Skip {
    /// The counter a skipped packet bumps.
    #[inline(always)]
    pub const fn reason(self) -> Reason {
        match self {
            Skip::NotIp | Skip::NotUdpOrTcp | Skip::NotUnicast | Skip::Mapped => Reason::NotService,
            Skip::Malformed => Reason::Malformed,
            Skip::Fragment => Reason::Fragment,
            Skip::Ipv6Ext => Reason::Ipv6Ext,
        }
    }
}

/// An ICMP error about an IPv4 UDP datagram or TCP segment: where its headers
/// start, the checksums a rewrite must update, and what the quoted packet says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError4 {
    /// Offset of the outer IPv4 header.
    pub l3: usize,
    /// Offset of the ICMP header.
    pub icmp: usize,
    /// `icmp::DEST_UNREACH` or `icmp::TIME_EXCEEDED`.
    pub icmp_type: u8,
    pub code: u8,
    /// The host reporting the error.
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// The outer IPv4 header checksum and the ICMP checksum, as they are.
    pub ip_check: [u8; 2],
    pub icmp_check: [u8; 2],
    /// Offset of the end of the outer datagram: how far the quote may be read.
    pub end: usize,
    pub quoted: Quoted4,
}

/// The packet an ICMP error quotes: its IPv4 header and first
/// `QUOTED_L4_LEN` transport bytes, which are all an error is sure to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted4 {
    /// Offset of the quoted IPv4 header.
    pub l3: usize,
    /// Offset of the quoted UDP or TCP header.
    pub l4: usize,
    /// `PROTO_UDP` or `PROTO_TCP`.
    pub proto: u8,
    /// The quoted IPv4 header checksum, as it is.
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// Why a packet is not an ICMP error dnsteer may translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpSkip {
    /// The outer packet: not IPv4 (`NotIp`, IPv6 included: ICMPv6 errors are
    /// not translated), malformed (also an ICMP header cut short), or a fragment.
    Outer(Skip),
    /// IPv4, but not an ICMP destination unreachable or time exceeded message.
    NotIcmpError,
    /// The quoted packet: cut short before its first `QUOTED_L4_LEN` transport
    /// bytes or inconsistent (`Malformed`), a fragment, or neither UDP nor TCP.
    Quoted(Skip),
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn addr(b: &[u8; IPV4_MIN_HLEN], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

/// The ethertype after at most two VLAN tags (802.1Q or 802.1ad), and the offset
/// of the header that follows.
#[inline(always)]
fn ethertype<P: Packet + ?Sized>(p: &P) -> Result<(u16, usize), Skip> {
    let mut proto = be16(p.bytes::<2>(12).ok_or(Skip::Malformed)?);
    let mut off = ETH_HLEN;
    // Unrolled, not a loop: the verifier then sees two fixed steps.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(p.bytes::<2>(off + 2).ok_or(Skip::Malformed)?);
        off += VLAN_HLEN;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(p.bytes::<2>(off + 2).ok_or(Skip::Malformed)?);
        off += VLAN_HLEN;
    }
    Ok((proto, off))
}

/// The fields of an IPv4 header the parsers use.
struct Ipv4 {
    ihl: usize,
    tot_len: usize,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

/// The IPv4 header at `off`: version 4, a header of 20 bytes or more inside a
/// total length that does not run past `end`, and not a fragment.
#[inline(always)]
fn ipv4_at<P: Packet + ?Sized>(p: &P, off: usize, end: usize) -> Result<Ipv4, Skip> {
    let ip = p.bytes::<IPV4_MIN_HLEN>(off).ok_or(Skip::Malformed)?;
    if ip[0] >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let tot_len = be16([ip[ipv4::TOT_LEN], ip[ipv4::TOT_LEN + 1]]) as usize;
    if ihl < IPV4_MIN_HLEN || tot_len < ihl || off + tot_len > end {
        return Err(Skip::Malformed);
    }
    if be16([ip[ipv4::FRAG], ip[ipv4::FRAG + 1]]) & ipv4::FRAG_MASK != 0 {
        return Err(Skip::Fragment);
    }
    Ok(Ipv4 {
        ihl,
        tot_len,
        proto: ip[ipv4::PROTO],
        check: [ip[ipv4::CHECK], ip[ipv4::CHECK + 1]],
        src: addr(&ip, ipv4::SRC),
        dst: addr(&ip, ipv4::DST),
    })
}

/// Ethernet, VLAN tags and the IPv4 header: where that header starts and what
/// it says. The part `headers` and `icmp_error4` share.
#[inline(always)]
fn outer4<P: Packet + ?Sized>(p: &P) -> Result<(usize, Ipv4), Skip> {
    let (proto, l3) = ethertype(p)?;
    if proto != ETH_P_IPV4 {
        return Err(Skip::NotIp);
    }
    // The frame may carry padding after the datagram, never less than it.
    Ok((l3, ipv4_at(p, l3, p.len())?))
}

/// What the IPv4 or IPv6 header says about the transport header after it.
struct Network {
    /// Offset of the transport header.
    l4: usize,
    /// Bytes from the transport header to the end of the datagram.
    payload: usize,
    /// The protocol (IPv4) or next header (IPv6).
    proto: u8,
    ipv6: bool,
    src: Addr,
    dst: Addr,
}

/// The IPv6 header at `off`: version 6, and a payload length that does not run
/// past the frame (which may carry padding after it).
#[inline(always)]
fn ipv6_at<P: Packet + ?Sized>(p: &P, off: usize) -> Result<Network, Skip> {
    // Read in three pieces rather than as one 40-byte copy: BPF stack is scarce.
    let head = p.bytes::<{ ipv6::SRC }>(off).ok_or(Skip::Malformed)?;
    let src = p.addr(off + ipv6::SRC).ok_or(Skip::Malformed)?;
    let dst = p.addr(off + ipv6::DST).ok_or(Skip::Malformed)?;
    if head[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let payload = be16([head[ipv6::PAYLOAD_LEN], head[ipv6::PAYLOAD_LEN + 1]]) as usize;
    let l4 = off + IPV6_HLEN;
    if l4 + payload > p.len() {
        return Err(Skip::Malformed);
    }
    Ok(Network {
        l4,
        payload,
        proto: head[ipv6::NEXT],
        ipv6: true,
        src,
        dst,
    })
}

/// Ethernet, VLAN tags and the IPv4 or IPv6 header: where it starts and what it says.
#[inline(always)]
fn network<P: Packet + ?Sized>(p: &P) -> Result<(usize, Network), Skip> {
    let (ethertype, l3) = ethertype(p)?;
    if ethertype == ETH_P_IPV6 {
        return Ok((l3, ipv6_at(p, l3)?));
    }
    if ethertype != ETH_P_IPV4 {
        return Err(Skip::NotIp);
    }
    let ip = ipv4_at(p, l3, p.len())?;
    Ok((
        l3,
        Network {
            l4: l3 + ip.ihl,
            payload: ip.tot_len - ip.ihl,
            proto: ip.proto,
            ipv6: false,
            src: ipv4_mapped(ip.src),
            dst: ipv4_mapped(ip.dst),
        },
    ))
}

/// Whether a packet to `dst` may be a query: not multicast, broadcast or
/// (IPv6) unspecified.
#[inline(always)]
fn unicast(dst: &Addr, ipv6: bool) -> bool {
    if ipv6 {
        let first = dst[0].to_ne_bytes()[0];
        first != 0xff && !crate::maps::same_addr(dst, &crate::maps::ANY_IPV6)
    } else {
        let v4 = dst[3].to_ne_bytes();
        v4[0] & 0xf0 != 0xe0 && v4 != [0xff; 4]
    }
}

/// Parses an Ethernet frame down to its UDP or TCP header, over IPv4 or IPv6.
#[inline(always)]
pub fn headers<P: Packet + ?Sized>(p: &P) -> Result<Headers, Skip> {
    let (l3, ip) = network(p)?;
    let proto = ip.proto;
    if proto != PROTO_UDP && proto != PROTO_TCP {
        return Err(if ip.ipv6 && ipv6::is_extension(proto) {
            Skip::Ipv6Ext
        } else {
            Skip::NotUdpOrTcp
        });
    }
    if !unicast(&ip.dst, ip.ipv6) {
        return Err(Skip::NotUnicast);
    }
    if ip.ipv6 && (is_ipv4_mapped(&ip.src) || is_ipv4_mapped(&ip.dst)) {
        return Err(Skip::Mapped);
    }
    let (l4, payload) = (ip.l4, ip.payload);
    // The first 20 bytes cover both a UDP header and a minimal TCP header; a
    // UDP datagram is read as far as its own 8 bytes only.
    let tcp_flags = if proto == PROTO_TCP {
        let hdr = p.bytes::<TCP_MIN_HLEN>(l4).ok_or(Skip::Malformed)?;
        let doff = (hdr[tcp::DOFF] >> 4) as usize * 4;
        if doff < TCP_MIN_HLEN || doff > payload {
            return Err(Skip::Malformed);
        }
        hdr[tcp::FLAGS]
    } else {
        let hdr = p.bytes::<UDP_HLEN>(l4).ok_or(Skip::Malformed)?;
        let udp_len = be16([hdr[udp::LEN], hdr[udp::LEN + 1]]) as usize;
        if udp_len < UDP_HLEN || udp_len > payload {
            return Err(Skip::Malformed);
        }
        // IPv4's "no checksum" does not exist in IPv6: a receiver discards it.
        if ip.ipv6 && hdr[udp::CHECK] == 0 && hdr[udp::CHECK + 1] == 0 {
            return Err(Skip::Malformed);
        }
        0
    };
    // Ports sit at the same offsets in UDP and TCP.
    let ports = p.bytes::<4>(l4).ok_or(Skip::Malformed)?;
    Ok(Headers {
        l3,
        l4,
        ipv6: ip.ipv6,
        proto,
        tcp_flags,
        src: ip.src,
        dst: ip.dst,
        sport: [ports[0], ports[1]],
        dport: [ports[2], ports[3]],
    })
}

/// Parses an Ethernet frame carrying an ICMP destination unreachable (any code)
/// or time exceeded message down to the first `QUOTED_L4_LEN` bytes of the UDP
/// datagram or TCP segment it quotes, which must lie inside the outer datagram.
#[inline(always)]
pub fn icmp_error4<P: Packet + ?Sized>(p: &P) -> Result<IcmpError4, IcmpSkip> {
    let (l3, ip) = outer4(p).map_err(IcmpSkip::Outer)?;
    if ip.proto != icmp::PROTO {
        return Err(IcmpSkip::NotIcmpError);
    }
    let at = l3 + ip.ihl;
    let end = l3 + ip.tot_len;
    let hdr = p
        .bytes::<ICMP_HLEN>(at)
        .filter(|_| at + ICMP_HLEN <= end)
        .ok_or(IcmpSkip::Outer(Skip::Malformed))?;
    let icmp_type = hdr[icmp::TYPE];
    if icmp_type != icmp::DEST_UNREACH && icmp_type != icmp::TIME_EXCEEDED {
        return Err(IcmpSkip::NotIcmpError);
    }
    let inner_l3 = at + ICMP_HLEN;
    // The quoted datagram is cut short: its total length can only be checked
    // against the transport bytes it must have had.
    let inner = ipv4_at(p, inner_l3, usize::MAX).map_err(IcmpSkip::Quoted)?;
    if inner.proto != PROTO_UDP && inner.proto != PROTO_TCP {
        return Err(IcmpSkip::Quoted(Skip::NotUdpOrTcp));
    }
    let inner_l4 = inner_l3 + inner.ihl;
    let ports = p
        .bytes::<QUOTED_L4_LEN>(inner_l4)
        .filter(|_| inner_l4 + QUOTED_L4_LEN <= end && inner.tot_len >= inner.ihl + QUOTED_L4_LEN)
        .ok_or(IcmpSkip::Quoted(Skip::Malformed))?;
    Ok(IcmpError4 {
        l3,
        icmp: at,
        icmp_type,
        code: hdr[icmp::CODE],
        src: ip.src,
        dst: ip.dst,
        ip_check: ip.check,
        icmp_check: [hdr[icmp::CHECK], hdr[icmp::CHECK + 1]],
        end,
        quoted: Quoted4 {
            l3: inner_l3,
            l4: inner_l4,
            proto: inner.proto,
            check: inner.check,
            src: inner.src,
            dst: inner.dst,
            sport: [ports[0], ports[1]],
            dport: [ports[2], ports[3]],
        },
    })
}

/// The DNS message ID of the UDP datagram `pkt`, as it sits in the packet;
/// `[0, 0]` for a datagram too short to carry one (the query and its answer
/// then share that key, as they share every other).
#[inline(always)]
pub fn dns_id<P: Packet + ?Sized>(p: &P, pkt: &Headers) -> [u8; DNS_ID_LEN] {
    match p.bytes::<{ UDP_HLEN + DNS_ID_LEN }>(pkt.l4) {
        Some(b) if be16([b[udp::LEN], b[udp::LEN + 1]]) as usize >= UDP_HLEN + DNS_ID_LEN => {
            [b[UDP_HLEN], b[UDP_HLEN + 1]]
        }
        _ => [0, 0],
    }
}

/// The DNS message ID and RCODE (the low four bits of the header's fourth
/// byte, RFC 1035 4.1.1) of the UDP datagram `pkt`; an answer too short to
/// carry a header has RCODE 15, which no server sends, and the ID `dns_id` reads.
#[inline(always)]
pub fn dns_id_rcode<P: Packet + ?Sized>(p: &P, pkt: &Headers) -> ([u8; DNS_ID_LEN], u8) {
    match p.bytes::<{ UDP_HLEN + 4 }>(pkt.l4) {
        Some(b) if be16([b[udp::LEN], b[udp::LEN + 1]]) as usize >= UDP_HLEN + 4 => {
            ([b[UDP_HLEN], b[UDP_HLEN + 1]], b[UDP_HLEN + 3] & 0x0f)
        }
        _ => (dns_id(p, pkt), 0x0f),
    }
}

/// The DNS message ID of a UDP datagram quoted by an ICMP error whose
/// transport header is at `l4`, when the quote reaches it before `end`.
#[inline(always)]
pub fn quoted_dns_id<P: Packet + ?Sized>(p: &P, l4: usize, end: usize) -> Option<[u8; 2]> {
    let at = l4 + UDP_HLEN;
    let id = p.bytes::<DNS_ID_LEN>(at)?;
    (at + DNS_ID_LEN <= end).then_some(id)
}

/// A fragment of an IPv4 datagram, or of an IPv6 one whose fragment header
/// follows the fixed header directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of the IPv4 or IPv6 header.
    pub l3: usize,
    pub ipv6: bool,
    /// The datagram's protocol: IPv4's, or the fragment header's next header.
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    /// The identification: IPv4's 16 bits or IPv6's 32.
    pub id: u32,
    /// Offset 0: the fragment that carries the transport header, at `l4`.
    pub first: bool,
    /// More fragments follow.
    pub more: bool,
    /// Offset of the fragment's payload (the transport header in the first).
    pub l4: usize,
    /// Bytes from `l4` to the end of the fragment.
    pub payload: usize,
}

/// Parses a fragment of an IPv4 or IPv6 datagram; `None` for a whole
/// datagram or anything malformed. Whole datagrams go through `headers`,
/// which refuses fragments.
#[inline(always)]
pub fn fragment<P: Packet + ?Sized>(p: &P) -> Option<Fragment> {
    let (ethertype, l3) = ethertype(p).ok()?;
    if ethertype == ETH_P_IPV6 {
        let ip = ipv6_at(p, l3).ok()?;
        if ip.proto != ipv6::FRAGMENT {
            return None;
        }
        // Read before the length check, which would let the compiler drop
        // the bounds check the verifier needs.
        let fh = p.bytes::<{ ipv6::FRAGMENT_HLEN }>(ip.l4)?;
        if ip.payload < ipv6::FRAGMENT_HLEN {
            return None;
        }
        let offset_flags = be16([fh[2], fh[3]]);
        let first = offset_flags >> 3 == 0;
        let more = offset_flags & 1 != 0;
        // An atomic fragment (offset 0, no more: RFC 6946) is a whole datagram.
        if first && !more {
            return None;
        }
        return Some(Fragment {
            l3,
            ipv6: true,
            proto: fh[0],
            src: ip.src,
            dst: ip.dst,
            id: u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]),
            first,
            more,
            l4: ip.l4 + ipv6::FRAGMENT_HLEN,
            payload: ip.payload - ipv6::FRAGMENT_HLEN,
        });
    }
    if ethertype != ETH_P_IPV4 {
        return None;
    }
    let ip = p.bytes::<IPV4_MIN_HLEN>(l3)?;
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let tot_len = be16([ip[ipv4::TOT_LEN], ip[ipv4::TOT_LEN + 1]]) as usize;
    if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HLEN || tot_len < ihl || l3 + tot_len > p.len() {
        return None;
    }
    let frag = be16([ip[ipv4::FRAG], ip[ipv4::FRAG + 1]]);
    let first = frag & ipv4::OFFSET_MASK == 0;
    let more = frag & ipv4::MORE_FRAGMENTS != 0;
    if first && !more {
        return None;
    }
    Some(Fragment {
        l3,
        ipv6: false,
        proto: ip[ipv4::PROTO],
        src: ipv4_mapped(addr(&ip, ipv4::SRC)),
        dst: ipv4_mapped(addr(&ip, ipv4::DST)),
        id: be16([ip[ipv4::ID], ip[ipv4::ID + 1]]) as u32,
        first,
        more,
        l4: l3 + ihl,
        payload: tot_len - ihl,
    })
}

/// An ICMPv6 error (destination unreachable, packet too big, time exceeded)
/// about an IPv6 UDP datagram or TCP segment whose header follows the quoted
/// fixed header directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError6 {
    /// Offset of the outer IPv6 header.
    pub l3: usize,
    /// Offset of the ICMPv6 header.
    pub icmp: usize,
    pub icmp_type: u8,
    pub code: u8,
    pub src: Addr,
    pub dst: Addr,
    /// The ICMPv6 checksum, as it is (it covers a pseudo-header with `src` and `dst`).
    pub icmp_check: [u8; 2],
    /// Offset of the end of the outer datagram: how far the quote may be read.
    pub end: usize,
    pub quoted: Quoted6,
}

/// The packet an ICMPv6 error quotes: its fixed header and first
/// `QUOTED_L4_LEN` transport bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted6 {
    pub l3: usize,
    pub l4: usize,
    /// `PROTO_UDP` or `PROTO_TCP`.
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// Parses an Ethernet frame carrying an ICMPv6 destination unreachable, packet
/// too big or time exceeded message down to the first `QUOTED_L4_LEN` bytes of
/// the UDP datagram or TCP segment it quotes.
#[inline(always)]
pub fn icmp_error6<P: Packet + ?Sized>(p: &P) -> Result<IcmpError6, IcmpSkip> {
    let (ethertype, l3) = ethertype(p).map_err(IcmpSkip::Outer)?;
    if ethertype != ETH_P_IPV6 {
        return Err(IcmpSkip::Outer(Skip::NotIp));
    }
    let ip = ipv6_at(p, l3).map_err(IcmpSkip::Outer)?;
    if ip.proto != icmp6::PROTO {
        return Err(IcmpSkip::NotIcmpError);
    }
    let at = ip.l4;
    let end = at + ip.payload;
    let hdr = p
        .bytes::<ICMP_HLEN>(at)
        .filter(|_| at + ICMP_HLEN <= end)
        .ok_or(IcmpSkip::Outer(Skip::Malformed))?;
    let icmp_type = hdr[icmp::TYPE];
    if !matches!(
        icmp_type,
        icmp6::DEST_UNREACH | icmp6::PACKET_TOO_BIG | icmp6::TIME_EXCEEDED
    ) {
        return Err(IcmpSkip::NotIcmpError);
    }
    let inner_l3 = at + ICMP_HLEN;
    let inner_l4 = inner_l3 + IPV6_HLEN;
    // Every read comes before the comparisons with `end`: from those the
    // compiler would prove the reads in bounds and drop the checks the
    // verifier needs to see. The quote is cut short: its payload length
    // cannot be checked.
    // Byte arrays become address words at once: the BPF stack cannot afford
    // a slot per byte for long.
    let head = p
        .bytes::<{ ipv6::SRC }>(inner_l3)
        .ok_or(IcmpSkip::Quoted(Skip::Malformed))?;
    let (version, proto) = (head[0] >> 4, head[ipv6::NEXT]);
    let src = p
        .addr(inner_l3 + ipv6::SRC)
        .ok_or(IcmpSkip::Quoted(Skip::Malformed))?;
    let dst = p
        .addr(inner_l3 + ipv6::DST)
        .ok_or(IcmpSkip::Quoted(Skip::Malformed))?;
    let ports = p
        .bytes::<QUOTED_L4_LEN>(inner_l4)
        .ok_or(IcmpSkip::Quoted(Skip::Malformed))?;
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    if inner_l4 + QUOTED_L4_LEN > end || version != 6 {
        return Err(IcmpSkip::Quoted(Skip::Malformed));
    }
    if proto != PROTO_UDP && proto != PROTO_TCP {
        return Err(IcmpSkip::Quoted(Skip::NotUdpOrTcp));
    }
    if is_ipv4_mapped(&src) || is_ipv4_mapped(&dst) {
        return Err(IcmpSkip::Quoted(Skip::Mapped));
    }
    Ok(IcmpError6 {
        l3,
        icmp: at,
        icmp_type,
        code: hdr[icmp::CODE],
        src: ip.src,
        dst: ip.dst,
        icmp_check: [hdr[icmp::CHECK], hdr[icmp::CHECK + 1]],
        end,
        quoted: Quoted6 {
            l3: inner_l3,
            l4: inner_l4,
            proto,
            src,
            dst,
            sport,
            dport,
        },
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// Ethernet + `tags` VLAN tags + IPv4 with `opts` option bytes + UDP + payload.
    fn frame(tags: &[u16], opts: usize, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        for &tpid in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x64]);
        }
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ihl = IPV4_MIN_HLEN + opts;
        let tot = (ihl + UDP_HLEN + payload.len()) as u16;
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&[
            0, 1, 0, 0, 64, PROTO_UDP, 0, 0, 192, 0, 2, 100, 192, 0, 2, 10,
        ]);
        f.extend(core::iter::repeat_n(1u8, opts)); // NOP options
        f.extend_from_slice(&[0x9c, 0x40, 0, 53]);
        f.extend_from_slice(&((UDP_HLEN + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn plain_query() {
        let f = frame(&[], 0, b"query");
        let u = headers(f.as_slice()).unwrap();
        assert_eq!((u.l3, u.l4), (14, 34));
        assert_eq!(
            (u.src, u.dst),
            (ipv4_mapped([192, 0, 2, 100]), ipv4_mapped([192, 0, 2, 10]))
        );
        assert!(!u.ipv6);
        assert_eq!((be16(u.sport), be16(u.dport)), (40000, 53));
    }

    #[test]
    fn vlan_qinq_and_options() {
        let u = headers(frame(&[ETH_P_8021AD, ETH_P_8021Q], 12, b"q").as_slice()).unwrap();
        assert_eq!((u.l3, u.l4), (22, 22 + 32));
        let three = frame(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], 0, b"q");
        assert_eq!(headers(three.as_slice()), Err(Skip::NotIp));
    }

    #[test]
    fn every_truncation_is_malformed() {
        let f = frame(&[ETH_P_8021Q], 4, b"");
        for cut in 0..f.len() {
            assert_eq!(headers(&f[..cut]), Err(Skip::Malformed), "cut at {cut}");
        }
        assert!(headers(f.as_slice()).is_ok());
    }

    #[test]
    fn inconsistent_lengths_and_fragments() {
        let base = frame(&[], 0, b"abcd");
        let with = |at: usize, val: &[u8]| {
            let mut f = base.clone();
            f[at..at + val.len()].copy_from_slice(val);
            headers(f.as_slice())
        };
        assert_eq!(
            with(14, &[0x65]),
            Err(Skip::Malformed),
            "version 6 in an IPv4 ethertype"
        );
        assert_eq!(with(14, &[0x44]), Err(Skip::Malformed), "IHL 4");
        assert_eq!(
            with(16, &[0x00, 0xff]),
            Err(Skip::Malformed),
            "total length past the frame"
        );
        assert_eq!(
            with(38, &[0x00, 0x07]),
            Err(Skip::Malformed),
            "UDP length below its header"
        );
        assert_eq!(
            with(38, &[0x00, 0x20]),
            Err(Skip::Malformed),
            "UDP length past the datagram"
        );
        assert_eq!(with(20, &[0x20, 0x00]), Err(Skip::Fragment), "MF");
        assert_eq!(with(20, &[0x00, 0x10]), Err(Skip::Fragment), "offset");
        assert!(with(20, &[0x40, 0x00]).is_ok(), "DF is not a fragment");
        assert_eq!(with(23, &[1]), Err(Skip::NotUdpOrTcp), "ICMP");
        assert_eq!(with(30, &[224, 0, 0, 251]), Err(Skip::NotUnicast));
        assert_eq!(with(30, &[255, 255, 255, 255]), Err(Skip::NotUnicast));
        assert_eq!(
            with(12, &[0x86, 0xdd]),
            Err(Skip::Malformed),
            "an IPv4 packet in an IPv6 ethertype"
        );
        assert_eq!(with(12, &[0x08, 0x06]), Err(Skip::NotIp), "ARP");
        let mut padded = base.clone();
        padded.extend_from_slice(&[0; 6]);
        assert!(
            headers(padded.as_slice()).is_ok(),
            "Ethernet padding after the datagram"
        );
    }

    /// A TCP segment: the UDP frame's 20 bytes after IPv4 reread as a TCP header.
    fn tcp_frame(doff_flags: [u8; 2]) -> Vec<u8> {
        let mut f = frame(&[], 0, &[0; 12]);
        f[23] = PROTO_TCP;
        f[34 + tcp::DOFF..34 + tcp::FLAGS + 1].copy_from_slice(&doff_flags);
        f
    }

    #[test]
    fn tcp_segments() {
        let syn = tcp_frame([0x50, tcp::SYN]);
        let h = headers(syn.as_slice()).unwrap();
        assert_eq!(
            (h.proto, h.tcp_flags, h.l4_check()),
            (PROTO_TCP, tcp::SYN, 34 + 16)
        );
        assert_eq!((be16(h.sport), be16(h.dport)), (40000, 53));
        assert!(h.is_syn());
        let syn_ack = tcp_frame([0x50, tcp::SYN | tcp::ACK]);
        assert!(!headers(syn_ack.as_slice()).unwrap().is_syn());
        assert_eq!(
            headers(tcp_frame([0x40, 0]).as_slice()),
            Err(Skip::Malformed),
            "data offset 4"
        );
        assert_eq!(
            headers(tcp_frame([0x60, 0]).as_slice()),
            Err(Skip::Malformed),
            "options past the segment"
        );
        for cut in 0..syn.len() {
            assert_eq!(headers(&syn[..cut]), Err(Skip::Malformed), "cut at {cut}");
        }
        let udp = headers(frame(&[], 0, b"q").as_slice()).unwrap();
        assert_eq!(
            (udp.proto, udp.tcp_flags, udp.l4_check()),
            (PROTO_UDP, 0, 34 + 6)
        );
    }

    /// Ethernet + IPv4 (no options, from a router to the client) carrying `proto`.
    fn ip_frame(proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((IPV4_MIN_HLEN + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 2, 0, 0, 64, proto, 0, 0, 10, 100, 13, 1, 192, 0, 2, 100]);
        f.extend_from_slice(payload);
        f
    }

    /// The ICMP message `icmp_type`/`code` quoting `quote`.
    fn icmp_message(icmp_type: u8, code: u8, quote: &[u8]) -> Vec<u8> {
        let mut m = std::vec![icmp_type, code, 0xab, 0xcd, 0, 0, 0x05, 0xdc];
        m.extend_from_slice(quote);
        m
    }

    fn icmp_frame(icmp_type: u8, code: u8, quote: &[u8]) -> Vec<u8> {
        ip_frame(icmp::PROTO, &icmp_message(icmp_type, code, quote))
    }

    /// The IPv4 packet inside an untagged `frame`.
    fn datagram(f: &[u8]) -> &[u8] {
        &f[ETH_HLEN..]
    }

    #[test]
    fn icmp_errors_about_udp_and_tcp() {
        let query = frame(&[], 0, b"query");
        let port = icmp_frame(icmp::DEST_UNREACH, icmp::PORT_UNREACH, datagram(&query));
        let e = icmp_error4(port.as_slice()).unwrap();
        assert_eq!(
            (e.l3, e.icmp, e.icmp_type, e.code),
            (14, 34, icmp::DEST_UNREACH, icmp::PORT_UNREACH)
        );
        assert_eq!((e.src, e.dst), ([10, 100, 13, 1], [192, 0, 2, 100]));
        assert_eq!(e.icmp_check, [0xab, 0xcd]);
        let q = e.quoted;
        assert_eq!((q.l3, q.l4, q.proto), (42, 62, PROTO_UDP));
        assert_eq!((q.src, q.dst), ([192, 0, 2, 100], [192, 0, 2, 10]));
        assert_eq!((be16(q.sport), be16(q.dport)), (40000, 53));
        assert_eq!(q.check, [query[24], query[25]]);
        assert_eq!(
            headers(port.as_slice()),
            Err(Skip::NotUdpOrTcp),
            "headers still skips ICMP"
        );

        for code in 0..16 {
            let f = icmp_frame(icmp::DEST_UNREACH, code, datagram(&query));
            assert_eq!(icmp_error4(f.as_slice()).unwrap().code, code);
        }
        let ttl = icmp_frame(icmp::TIME_EXCEEDED, 0, datagram(&query));
        assert_eq!(icmp_error4(ttl.as_slice()).unwrap().quoted, q);

        // RFC 792's minimum: the IPv4 header and 8 bytes, here after 8 option bytes.
        let opts = frame(&[], 8, b"query");
        let short = icmp_frame(
            icmp::DEST_UNREACH,
            icmp::FRAG_NEEDED,
            &datagram(&opts)[..36],
        );
        let q = icmp_error4(short.as_slice()).unwrap().quoted;
        assert_eq!((q.l3, q.l4, be16(q.dport)), (42, 42 + 28, 53));

        // A TCP segment quoted with its first 8 bytes only: no flags, no checksum.
        let syn = tcp_frame([0x50, tcp::SYN]);
        let f = icmp_frame(icmp::DEST_UNREACH, 1, &datagram(&syn)[..28]);
        let q = icmp_error4(f.as_slice()).unwrap().quoted;
        assert_eq!((q.proto, q.l4, be16(q.sport)), (PROTO_TCP, 62, 40000));

        // Tags and outer options move every offset.
        let mut tagged = port.clone();
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        let mut outer_opts = port.clone();
        outer_opts[14] = 0x46;
        outer_opts[17] += 4;
        outer_opts.splice(34..34, [1, 1, 1, 1]);
        for (f, l3, ihl) in [(tagged, 18, 20), (outer_opts, 14, 24)] {
            let e = icmp_error4(f.as_slice()).unwrap();
            assert_eq!(
                (e.l3, e.icmp, e.quoted.l3, e.quoted.l4),
                (l3, l3 + ihl, l3 + ihl + 8, l3 + ihl + 28)
            );
        }
    }

    #[test]
    fn icmp_error_cut_anywhere_is_malformed() {
        let quote = frame(&[], 4, b"");
        let message = icmp_message(icmp::DEST_UNREACH, icmp::PORT_UNREACH, datagram(&quote));
        let f = ip_frame(icmp::PROTO, &message);
        assert!(icmp_error4(f.as_slice()).is_ok());
        for cut in 0..f.len() {
            assert_eq!(
                icmp_error4(&f[..cut]),
                Err(IcmpSkip::Outer(Skip::Malformed)),
                "frame cut at {cut}"
            );
        }
        // Datagrams whose length says they end early, as a router that quotes
        // less would send them: the ICMP header, then the quote, cut.
        for len in 0..ICMP_HLEN {
            let f = ip_frame(icmp::PROTO, &message[..len]);
            assert_eq!(
                icmp_error4(f.as_slice()),
                Err(IcmpSkip::Outer(Skip::Malformed)),
                "ICMP header of {len} bytes"
            );
        }
        let whole = ICMP_HLEN + 24 + QUOTED_L4_LEN;
        for len in ICMP_HLEN..whole {
            let f = ip_frame(icmp::PROTO, &message[..len]);
            assert_eq!(
                icmp_error4(f.as_slice()),
                Err(IcmpSkip::Quoted(Skip::Malformed)),
                "ICMP message of {len} bytes"
            );
        }
        assert!(icmp_error4(ip_frame(icmp::PROTO, &message[..whole]).as_slice()).is_ok());
        // Quoted bytes in the frame's padding, past the datagram, do not count.
        let mut padded = ip_frame(icmp::PROTO, &message[..whole - 1]);
        padded.extend_from_slice(&message[whole - 1..]);
        assert_eq!(
            icmp_error4(padded.as_slice()),
            Err(IcmpSkip::Quoted(Skip::Malformed))
        );
    }

    #[test]
    fn icmp_other_messages_and_quotes_are_skipped() {
        let query = frame(&[], 0, b"query");
        let quoted = datagram(&query);
        let error = icmp_frame(icmp::DEST_UNREACH, icmp::PORT_UNREACH, quoted);
        let with = |at: usize, val: &[u8]| {
            let mut f = error.clone();
            f[at..at + val.len()].copy_from_slice(val);
            icmp_error4(f.as_slice())
        };
        assert_eq!(
            icmp_error4(query.as_slice()),
            Err(IcmpSkip::NotIcmpError),
            "UDP"
        );
        for other in [icmp::ECHO_REPLY, icmp::REDIRECT, 8, 12] {
            let f = icmp_frame(other, 0, quoted);
            assert_eq!(
                icmp_error4(f.as_slice()),
                Err(IcmpSkip::NotIcmpError),
                "type {other}"
            );
        }
        assert_eq!(with(12, &[0x86, 0xdd]), Err(IcmpSkip::Outer(Skip::NotIp)));
        assert_eq!(
            with(20, &[0x20, 0x00]),
            Err(IcmpSkip::Outer(Skip::Fragment)),
            "outer MF"
        );
        assert_eq!(
            with(20, &[0x00, 0x01]),
            Err(IcmpSkip::Outer(Skip::Fragment)),
            "outer offset"
        );
        // The quoted header starts at 42.
        assert_eq!(
            with(42 + 9, &[icmp::PROTO]),
            Err(IcmpSkip::Quoted(Skip::NotUdpOrTcp)),
            "an error about an ICMP message"
        );
        assert_eq!(
            with(42, &[0x65]),
            Err(IcmpSkip::Quoted(Skip::Malformed)),
            "quoted version 6"
        );
        assert_eq!(
            with(42, &[0x44]),
            Err(IcmpSkip::Quoted(Skip::Malformed)),
            "quoted IHL 4"
        );
        assert_eq!(
            with(42 + 2, &[0, 27]),
            Err(IcmpSkip::Quoted(Skip::Malformed)),
            "quoted total length below its header and 8 bytes"
        );
        assert!(
            with(42 + 2, &[0xff, 0xff]).is_ok(),
            "quoted total length past the quote"
        );
        assert_eq!(
            with(42 + 6, &[0x20, 0x00]),
            Err(IcmpSkip::Quoted(Skip::Fragment)),
            "quoted MF"
        );
        assert_eq!(
            with(42 + 6, &[0x00, 0x01]),
            Err(IcmpSkip::Quoted(Skip::Fragment)),
            "quoted offset"
        );
    }

    const CLIENT6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
    ];
    const VIP6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    /// Ethernet + `tags` VLAN tags + IPv6 (next header `next`) + `l4`, the
    /// transport header and payload as given.
    fn frame6(tags: &[u16], next: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        for &tpid in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x64]);
        }
        f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        f.extend_from_slice(&[next, 64]);
        f.extend_from_slice(&CLIENT6);
        f.extend_from_slice(&VIP6);
        f.extend_from_slice(l4);
        f
    }

    /// A UDP header (checksum 0x1234, never checked here) and payload.
    fn udp6(payload: &[u8]) -> Vec<u8> {
        let mut d = std::vec![0x9c, 0x40, 0, 53];
        d.extend_from_slice(&((UDP_HLEN + payload.len()) as u16).to_be_bytes());
        d.extend_from_slice(&[0x12, 0x34]);
        d.extend_from_slice(payload);
        d
    }

    /// A 20-byte TCP header, data offset and flags as given.
    fn tcp6(doff_flags: [u8; 2]) -> Vec<u8> {
        let mut t = std::vec![0x9c, 0x40, 0, 53, 0, 0, 0, 1, 0, 0, 0, 0];
        t.extend_from_slice(&doff_flags);
        t.extend_from_slice(&[0xff, 0xff, 0xab, 0xcd, 0, 0]);
        t
    }

    #[test]
    fn ipv6_udp_and_tcp() {
        let f = frame6(&[], PROTO_UDP, &udp6(b"query"));
        let h = headers(f.as_slice()).unwrap();
        assert!(h.ipv6);
        assert_eq!((h.l3, h.l4, h.proto), (14, 54, PROTO_UDP));
        assert_eq!(
            (h.src, h.dst),
            (addr_from_octets(CLIENT6), addr_from_octets(VIP6))
        );
        assert_eq!((be16(h.sport), be16(h.dport)), (40000, 53));
        assert_eq!(h.l4_check(), 54 + 6);

        let tagged = frame6(&[ETH_P_8021AD, ETH_P_8021Q], PROTO_UDP, &udp6(b"q"));
        let h = headers(tagged.as_slice()).unwrap();
        assert_eq!((h.l3, h.l4), (22, 62));

        let syn = frame6(&[], PROTO_TCP, &tcp6([0x50, tcp::SYN]));
        let h = headers(syn.as_slice()).unwrap();
        assert_eq!(
            (h.proto, h.tcp_flags, h.l4_check()),
            (PROTO_TCP, tcp::SYN, 54 + 16)
        );
        assert!(h.is_syn() && h.ipv6);
        assert_eq!(
            headers(frame6(&[], PROTO_TCP, &tcp6([0x40, 0])).as_slice()),
            Err(Skip::Malformed),
            "data offset 4"
        );
        assert_eq!(
            headers(frame6(&[], PROTO_TCP, &tcp6([0x60, 0])).as_slice()),
            Err(Skip::Malformed),
            "options past the segment"
        );
    }

    #[test]
    fn ipv6_every_truncation_is_malformed() {
        for f in [
            frame6(&[ETH_P_8021Q], PROTO_UDP, &udp6(b"")),
            frame6(&[], PROTO_TCP, &tcp6([0x50, tcp::SYN])),
        ] {
            for cut in 0..f.len() {
                assert_eq!(headers(&f[..cut]), Err(Skip::Malformed), "cut at {cut}");
            }
            assert!(headers(f.as_slice()).is_ok());
        }
    }

    #[test]
    fn ipv6_lengths_versions_and_checksum() {
        let base = frame6(&[], PROTO_UDP, &udp6(b"abcd"));
        let with = |at: usize, val: &[u8]| {
            let mut f = base.clone();
            f[at..at + val.len()].copy_from_slice(val);
            headers(f.as_slice())
        };
        assert_eq!(
            with(14, &[0x40]),
            Err(Skip::Malformed),
            "version 4 in an IPv6 ethertype"
        );
        assert_eq!(
            with(18, &[0, 13]),
            Err(Skip::Malformed),
            "payload length past the frame"
        );
        assert_eq!(
            with(18, &[0, 11]),
            Err(Skip::Malformed),
            "payload length shorter than the UDP length"
        );
        assert_eq!(with(18, &[0, 0]), Err(Skip::Malformed), "payload length 0");
        assert_eq!(
            with(54 + 4, &[0, 7]),
            Err(Skip::Malformed),
            "UDP length below its header"
        );
        assert_eq!(
            with(54 + 6, &[0, 0]),
            Err(Skip::Malformed),
            "UDP checksum 0 is not allowed over IPv6"
        );
        assert!(with(54 + 6, &[0xff, 0xff]).is_ok());
        let mut padded = base.clone();
        padded.extend_from_slice(&[0; 6]);
        assert!(
            headers(padded.as_slice()).is_ok(),
            "padding after the datagram"
        );
        // Shorter UDP length than the payload is fine (the rest is not read).
        let mut short = base.clone();
        short[54 + 5] -= 1;
        assert!(headers(short.as_slice()).is_ok());
    }

    #[test]
    fn ipv6_extension_headers_and_other_next_headers() {
        // An extension header of 8 bytes before UDP, as it would sit there.
        for next in ipv6::EXTENSION_HEADERS {
            let mut l4 = std::vec![PROTO_UDP, 0, 0, 0, 0, 0, 0, 0];
            l4.extend_from_slice(&udp6(b"q"));
            let f = frame6(&[], next, &l4);
            assert_eq!(
                headers(f.as_slice()),
                Err(Skip::Ipv6Ext),
                "next header {next}"
            );
            assert_eq!(Skip::Ipv6Ext.reason(), Reason::Ipv6Ext);
        }
        for next in 0..=255u8 {
            let want = ipv6::EXTENSION_HEADERS.contains(&next);
            assert_eq!(ipv6::is_extension(next), want, "{next}");
        }
        for (next, what) in [
            (58, "ICMPv6"),
            (59, "no next header"),
            (1, "ICMP"),
            (132, "SCTP"),
        ] {
            let f = frame6(&[], next, &udp6(b"q"));
            assert_eq!(headers(f.as_slice()), Err(Skip::NotUdpOrTcp), "{what}");
        }
        // An extension header in a packet whose lengths are wrong is malformed first.
        let mut f = frame6(&[], 0, &udp6(b"q"));
        f[18..20].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(headers(f.as_slice()), Err(Skip::Malformed));
    }

    #[test]
    fn ipv6_destinations_that_are_never_queries() {
        let base = frame6(&[], PROTO_UDP, &udp6(b"q"));
        let with = |at: usize, addr: [u8; 16]| {
            let mut f = base.clone();
            f[at..at + 16].copy_from_slice(&addr);
            headers(f.as_slice())
        };
        let (src, dst) = (14 + ipv6::SRC, 14 + ipv6::DST);
        let mut all_nodes = [0u8; 16];
        (all_nodes[0], all_nodes[1], all_nodes[15]) = (0xff, 0x02, 1);
        let mut mdns = [0u8; 16];
        (mdns[0], mdns[1], mdns[15]) = (0xff, 0x05, 0xfb);
        assert_eq!(with(dst, all_nodes), Err(Skip::NotUnicast));
        assert_eq!(with(dst, mdns), Err(Skip::NotUnicast));
        assert_eq!(with(dst, [0; 16]), Err(Skip::NotUnicast), "unspecified");
        let mapped = crate::maps::octets(&ipv4_mapped([192, 0, 2, 10]));
        assert_eq!(with(dst, mapped), Err(Skip::Mapped));
        assert_eq!(with(src, mapped), Err(Skip::Mapped));
        assert_eq!(Skip::Mapped.reason(), Reason::NotService);
        assert!(with(src, [0; 16]).is_ok(), "a source may be unspecified");
        // The ICMP error parser is IPv4 only.
        assert_eq!(
            icmp_error4(base.as_slice()),
            Err(IcmpSkip::Outer(Skip::NotIp))
        );
    }

    #[test]
    fn dns_id_after_the_udp_header_or_zero() {
        let f = frame(&[], 0, &[0xab, 0xcd, 1, 0]);
        let pkt = headers(f.as_slice()).unwrap();
        assert_eq!(dns_id(f.as_slice(), &pkt), [0xab, 0xcd]);
        // One payload byte: no ID, whatever padding follows the datagram.
        let mut short = frame(&[], 0, &[0xab]);
        short.extend_from_slice(&[0xcd; 8]);
        let pkt = headers(short.as_slice()).unwrap();
        assert_eq!(dns_id(short.as_slice(), &pkt), [0, 0]);
        let f = frame6(&[], PROTO_UDP, &udp6(&[0x12, 0x34]));
        let pkt = headers(f.as_slice()).unwrap();
        assert_eq!(dns_id(f.as_slice(), &pkt), [0x12, 0x34]);
        // The RCODE with it: SERVFAIL here; a header cut short is 15 (other).
        assert_eq!(dns_id_rcode(f.as_slice(), &pkt), ([0x12, 0x34], 15));
        let f = frame(&[], 0, &[0xab, 0xcd, 0x81, 0x82, 0, 1]);
        let pkt = headers(f.as_slice()).unwrap();
        assert_eq!(dns_id_rcode(f.as_slice(), &pkt), ([0xab, 0xcd], 2));
    }

    /// `f` (an IPv4 frame from `frame`) as a fragment: flags and offset `word`, identification `id`.
    fn as_fragment4(mut f: Vec<u8>, word: u16, id: u16) -> Vec<u8> {
        f[14 + ipv4::ID..14 + ipv4::ID + 2].copy_from_slice(&id.to_be_bytes());
        f[14 + ipv4::FRAG..14 + ipv4::FRAG + 2].copy_from_slice(&word.to_be_bytes());
        f
    }

    #[test]
    fn ipv4_fragments() {
        let f = frame(&[], 0, &[0xab, 0xcd, 1, 0]);
        assert_eq!(fragment(f.as_slice()), None, "a whole datagram");
        let first = as_fragment4(f.clone(), ipv4::MORE_FRAGMENTS, 0x4242);
        assert_eq!(headers(first.as_slice()), Err(Skip::Fragment));
        let got = fragment(first.as_slice()).unwrap();
        assert_eq!(
            (
                got.l3, got.ipv6, got.proto, got.id, got.first, got.more, got.l4
            ),
            (14, false, PROTO_UDP, 0x4242, true, true, 34)
        );
        assert_eq!(
            (got.src, got.dst, got.payload),
            (
                ipv4_mapped([192, 0, 2, 100]),
                ipv4_mapped([192, 0, 2, 10]),
                12
            )
        );
        let last = fragment(as_fragment4(f.clone(), 185, 0x4242).as_slice()).unwrap();
        assert_eq!((last.first, last.more, last.id), (false, false, 0x4242));
        let middle = fragment(as_fragment4(f.clone(), ipv4::MORE_FRAGMENTS | 1, 7).as_slice());
        assert_eq!(middle.map(|m| (m.first, m.more)), Some((false, true)));
        // DF alone is no fragment; neither is a cut or inconsistent header.
        assert_eq!(
            fragment(as_fragment4(f.clone(), 0x4000, 1).as_slice()),
            None
        );
        let cut = as_fragment4(f.clone(), ipv4::MORE_FRAGMENTS, 1);
        assert_eq!(fragment(&cut[..30]), None);
        let mut long = cut.clone();
        long[14 + ipv4::TOT_LEN + 1] += 40;
        assert_eq!(fragment(long.as_slice()), None);
    }

    /// An IPv6 frame whose fragment header (offset `offset`, more `more`,
    /// identification `id`) precedes `data`.
    fn fragment6(offset: u16, more: bool, id: u32, data: &[u8]) -> Vec<u8> {
        let mut l4 = std::vec![PROTO_UDP, 0];
        l4.extend_from_slice(&(offset << 3 | more as u16).to_be_bytes());
        l4.extend_from_slice(&id.to_be_bytes());
        l4.extend_from_slice(data);
        frame6(&[], ipv6::FRAGMENT, &l4)
    }

    #[test]
    fn ipv6_fragments() {
        let first = fragment6(0, true, 0x0102_0304, &udp6(&[0xab, 0xcd]));
        assert_eq!(headers(first.as_slice()), Err(Skip::Ipv6Ext));
        let got = fragment(first.as_slice()).unwrap();
        assert_eq!(
            (
                got.ipv6,
                got.proto,
                got.id,
                got.first,
                got.more,
                got.l4,
                got.payload
            ),
            (true, PROTO_UDP, 0x0102_0304, true, true, 62, 10)
        );
        assert_eq!(got.dst, addr_from_octets(VIP6));
        let last = fragment(fragment6(181, false, 9, b"tail").as_slice()).unwrap();
        assert_eq!(
            (last.first, last.more, last.id, last.l4),
            (false, false, 9, 62)
        );
        // An atomic fragment (RFC 6946) is a whole datagram; other extension
        // headers are not walked; a fragment header cut short is nothing.
        assert_eq!(
            fragment(fragment6(0, false, 1, &udp6(b"q")).as_slice()),
            None
        );
        assert_eq!(fragment(frame6(&[], 60, &udp6(b"q")).as_slice()), None);
        let cut = fragment6(0, true, 1, &[]);
        assert_eq!(fragment(&cut[..cut.len() - 4]), None);
    }

    /// An ICMPv6 message `icmp_type`/`code` quoting `quote`, in an IPv6 frame.
    fn icmp6_frame(icmp_type: u8, code: u8, quote: &[u8]) -> Vec<u8> {
        let mut m = std::vec![icmp_type, code, 0xaa, 0xbb, 0, 0, 0x05, 0x00];
        m.extend_from_slice(quote);
        frame6(&[], icmp6::PROTO, &m)
    }

    #[test]
    fn icmpv6_errors_about_udp_and_tcp() {
        // The quote: the answer as it left, VIP6:53 -> CLIENT6:40000.
        let mut quoted = frame6(&[], PROTO_UDP, &udp6(&[0xab, 0xcd]))[14..].to_vec();
        quoted[8..24].copy_from_slice(&VIP6);
        quoted[24..40].copy_from_slice(&CLIENT6);
        for icmp_type in [
            icmp6::DEST_UNREACH,
            icmp6::PACKET_TOO_BIG,
            icmp6::TIME_EXCEEDED,
        ] {
            let f = icmp6_frame(icmp_type, 0, &quoted);
            let e = icmp_error6(f.as_slice()).unwrap();
            assert_eq!(
                (e.l3, e.icmp, e.icmp_type, e.icmp_check),
                (14, 54, icmp_type, [0xaa, 0xbb])
            );
            assert_eq!(e.end, f.len());
            let q = &e.quoted;
            assert_eq!((q.l3, q.l4, q.proto), (62, 102, PROTO_UDP));
            assert_eq!(
                (q.src, q.dst, q.sport, q.dport),
                (
                    addr_from_octets(VIP6),
                    addr_from_octets(CLIENT6),
                    [0x9c, 0x40],
                    [0, 53]
                )
            );
            assert_eq!(quoted_dns_id(f.as_slice(), q.l4, e.end), Some([0xab, 0xcd]));
        }
        // Cut after 8 UDP bytes: parsed, but without a DNS ID.
        let f = icmp6_frame(icmp6::PACKET_TOO_BIG, 0, &quoted[..48]);
        let e = icmp_error6(f.as_slice()).unwrap();
        assert_eq!(quoted_dns_id(f.as_slice(), e.quoted.l4, e.end), None);
        for cut in [0, 8, 39, 40, 47] {
            let f = icmp6_frame(icmp6::DEST_UNREACH, 4, &quoted[..cut]);
            assert_eq!(
                icmp_error6(f.as_slice()),
                Err(IcmpSkip::Quoted(Skip::Malformed)),
                "quote cut at {cut}"
            );
        }
        let tcp = frame6(&[], PROTO_TCP, &tcp6([0x50, 0x12]))[14..].to_vec();
        let f = icmp6_frame(icmp6::DEST_UNREACH, 1, &tcp);
        assert_eq!(icmp_error6(f.as_slice()).unwrap().quoted.proto, PROTO_TCP);
        // Echo requests, ICMPv6 about ICMPv6, IPv4 and mapped quotes are not ours.
        assert_eq!(
            icmp_error6(icmp6_frame(128, 0, &quoted).as_slice()),
            Err(IcmpSkip::NotIcmpError)
        );
        let mut about_icmp = quoted.clone();
        about_icmp[6] = icmp6::PROTO;
        assert_eq!(
            icmp_error6(icmp6_frame(1, 0, &about_icmp).as_slice()),
            Err(IcmpSkip::Quoted(Skip::NotUdpOrTcp))
        );
        let mut mapped = quoted.clone();
        mapped[8..24].copy_from_slice(&crate::maps::octets(&ipv4_mapped([192, 0, 2, 10])));
        assert_eq!(
            icmp_error6(icmp6_frame(1, 0, &mapped).as_slice()),
            Err(IcmpSkip::Quoted(Skip::Mapped))
        );
        let v4 = frame(&[], 0, b"q");
        assert_eq!(
            icmp_error6(v4.as_slice()),
            Err(IcmpSkip::Outer(Skip::NotIp))
        );
    }
}
