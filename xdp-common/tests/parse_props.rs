//! Property tests of the host-side header parser, `xdp_common::parse::headers`,
//! the same code the XDP program runs, over IPv4 and IPv6.
//!
//! Four properties, each over `DNSTEER_PROPTEST_CASES` cases (default 100,000,
//! IPv4 and IPv6 frames about half each) from a fixed seed
//! (`DNSTEER_PROPTEST_SEED` overrides it):
//!
//! - arbitrary bytes, and valid frames with random field and byte mutations,
//!   never panic and get the verdict an independent validator (`oracle`,
//!   written from RFC 791, 768, 9293, 8200 and 4291 and the README's rules)
//!   gives;
//! - a valid generated frame parses to exactly the fields it was built with;
//! - every `Ok` reports offsets inside the frame, consistent with its IP header;
//! - a valid frame cut short of its datagram is malformed at every length, and
//!   parses to the same fields at every length from there on (Ethernet padding).

use std::{
    env,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use proptest::{
    collection::vec,
    prelude::*,
    test_runner::{Config, RngAlgorithm, RngSeed, TestRunner},
};
use xdp_common::{
    PROTO_TCP, PROTO_UDP, addr_of, ipv4_of, is_ipv4_mapped, octets,
    parse::{Headers, Skip, headers},
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ TPID: not a tag dnsteer knows.
const ETH_P_QINQ_OLD: u16 = 0x9100;
const ETH_P_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
/// IPv6's "no next header" (RFC 8200 4.7): not an extension header.
const NO_NEXT_HEADER: u8 = 59;

/// IPv6 extension headers, from IANA's "IPv6 Extension Header Types" registry
/// (RFC 7045 and RFC 8200 4): hop-by-hop options, routing, fragment, ESP,
/// AH, destination options, mobility (RFC 6275), HIP (RFC 7401), shim6
/// (RFC 5533), and the two values RFC 3692 sets aside for experiments.
const IPV6_EXTENSION_HEADERS: [u8; 11] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];

const DEFAULT_CASES: u32 = 100_000;
const DEFAULT_SEED: u64 = 0x646e_7374_6565_7231;

/// A runner with the configured case count and seed, and no regression files:
/// a failure prints its seed and minimal input instead. XorShift, not the
/// default ChaCha: ChaCha's SIMD unoptimized is most of a debug build's time.
fn runner(property: &str) -> TestRunner {
    let cases = env::var("DNSTEER_PROPTEST_CASES")
        .map(|v| {
            v.parse()
                .expect("DNSTEER_PROPTEST_CASES: a number of cases")
        })
        .unwrap_or(DEFAULT_CASES);
    let seed = env::var("DNSTEER_PROPTEST_SEED")
        .map(|v| v.parse().expect("DNSTEER_PROPTEST_SEED: a u64"))
        .unwrap_or(DEFAULT_SEED);
    println!("{property}: {cases} cases, seed {seed} (DNSTEER_PROPTEST_SEED)");
    TestRunner::new(Config {
        rng_algorithm: RngAlgorithm::XorShift,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::with_cases(cases)
    })
}

fn run<S: Strategy>(
    property: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let start = Instant::now();
    if let Err(e) = runner(property).run(&strategy, test) {
        panic!("{property}: {e}");
    }
    println!("{property}: passed in {:.1?}", start.elapsed());
}

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

fn v4(b: &[u8]) -> Ipv4Addr {
    <[u8; 4]>::try_from(b).unwrap().into()
}

fn v6(b: &[u8]) -> Ipv6Addr {
    <[u8; 16]>::try_from(b).unwrap().into()
}

/// What the IPv4 or IPv6 header said, for the transport checks.
struct Network<'a> {
    l4: usize,
    ipv6: bool,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    /// The datagram after the IP header, as its lengths give it.
    payload: &'a [u8],
}

/// The verdict the rules give a frame, derived from the standards and the
/// README, not from `parse.rs`:
///
/// - Ethernet II (6 + 6 address bytes, a 2-byte ethertype); 802.1Q (0x8100)
///   and 802.1ad (0x88a8) tags are 4 bytes each (TPID, TCI) and followed by
///   the inner ethertype. Two tags are read; a third is not, so the packet is
///   not IP as far as dnsteer knows. Any ethertype but 0x0800 (IPv4) and
///   0x86dd (IPv6) is not IP.
/// - IPv4 (RFC 791): see `oracle4`. IPv6 (RFC 8200): see `oracle6`.
/// - The transport header must lie inside the datagram: UDP (RFC 768) its 8
///   bytes, with a length from 8 up to the IP payload (a shorter one leaves
///   trailing bytes, which the stack trims; a longer one is truncated); TCP
///   (RFC 9293) its 20 bytes, with a data offset from 5 words up to the
///   payload. Over IPv6 a UDP checksum of 0 is malformed: RFC 8200 8.1 has
///   receivers discard it (IPv4's "no checksum" does not exist there).
fn oracle(frame: &[u8]) -> Result<Headers, Skip> {
    let ethertype_at = |at: usize| frame.get(at..at + 2).map(be16).ok_or(Skip::Malformed);
    let mut ethertype = ethertype_at(12)?;
    let mut l3 = 14;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q as usize && ethertype != ETH_P_8021AD as usize {
            break;
        }
        ethertype = ethertype_at(l3 + 2)?;
        l3 += 4;
    }
    let ip = match ethertype as u16 {
        ETH_P_IPV4 => oracle4(frame, l3)?,
        ETH_P_IPV6 => oracle6(frame, l3)?,
        _ => return Err(Skip::NotIp),
    };

    let payload = ip.payload;
    let tcp_flags = if ip.proto == PROTO_UDP {
        if payload.len() < 8 {
            return Err(Skip::Malformed);
        }
        let length = be16(&payload[4..6]);
        if !(8..=payload.len()).contains(&length) {
            return Err(Skip::Malformed);
        }
        if ip.ipv6 && payload[6..8] == [0, 0] {
            return Err(Skip::Malformed);
        }
        0
    } else {
        if payload.len() < 20 {
            return Err(Skip::Malformed);
        }
        let data_offset = usize::from(payload[12] >> 4) * 4;
        if !(20..=payload.len()).contains(&data_offset) {
            return Err(Skip::Malformed);
        }
        payload[13]
    };
    Ok(Headers {
        l3,
        l4: ip.l4,
        ipv6: ip.ipv6,
        proto: ip.proto,
        tcp_flags,
        src: addr_of(ip.src),
        dst: addr_of(ip.dst),
        sport: payload[0..2].try_into().unwrap(),
        dport: payload[2..4].try_into().unwrap(),
    })
}

/// IPv4 (RFC 791): the fixed 20 bytes present, version 4, IHL >= 5, total
/// length from IHL * 4 up to what the frame holds after the Ethernet header
/// (more is Ethernet padding). Otherwise malformed. The header checksum,
/// options and the reserved flag are not looked at. Then the header's fields
/// in wire order: a fragment (MF set, or a non-zero offset) is a fragment
/// whatever it carries; a protocol other than UDP (17) or TCP (6) is not one;
/// nor is a multicast (224/4) or limited broadcast destination (the README:
/// they never match a listen).
fn oracle4(frame: &[u8], l3: usize) -> Result<Network<'_>, Skip> {
    let after_eth = &frame[l3..];
    if after_eth.len() < 20 {
        return Err(Skip::Malformed);
    }
    let (version, ihl) = (after_eth[0] >> 4, usize::from(after_eth[0] & 0x0f) * 4);
    let total = be16(&after_eth[2..4]);
    if version != 4 || ihl < 20 || total < ihl || total > after_eth.len() {
        return Err(Skip::Malformed);
    }
    let datagram = &after_eth[..total];
    let (header, payload) = datagram.split_at(ihl);
    let flags_offset = be16(&header[6..8]);
    let more_fragments = flags_offset & 0x2000 != 0;
    let offset = flags_offset & 0x1fff;
    if more_fragments || offset != 0 {
        return Err(Skip::Fragment);
    }
    let proto = header[9];
    if proto != PROTO_UDP && proto != PROTO_TCP {
        return Err(Skip::NotUdpOrTcp);
    }
    let dst = v4(&header[16..20]);
    if dst.is_multicast() || dst.is_broadcast() {
        return Err(Skip::NotUnicast);
    }
    Ok(Network {
        l4: l3 + ihl,
        ipv6: false,
        proto,
        src: v4(&header[12..16]).into(),
        dst: dst.into(),
        payload,
    })
}

/// IPv6 (RFC 8200 3): the fixed 40 bytes present, version 6, and a payload
/// length that fits in what the frame holds after the fixed header (more is
/// Ethernet padding; a jumbogram's 0 leaves no room for a transport header).
/// Otherwise malformed. Traffic class, flow label and hop limit are not looked
/// at. Then:
/// - the next header: UDP or TCP goes on; an extension header (which dnsteer
///   does not walk) is `Ipv6Ext`; anything else (ICMPv6, no next header, ..)
///   is not UDP or TCP;
/// - the destination: multicast (ff00::/8, RFC 4291 2.7) or unspecified
///   (`::`, RFC 4291 2.5.2, never a destination) is never a query;
/// - an IPv4-mapped address (`::ffff:0:0/96`, RFC 4291 2.5.5.2) as source or
///   destination is `Mapped`: the README's maps hold IPv4 that way, so the
///   two families would meet. Where the destination is both multicast or
///   unspecified and the source mapped, the destination decides: both are
///   `not_service`, and a packet to a multicast group is that first.
fn oracle6(frame: &[u8], l3: usize) -> Result<Network<'_>, Skip> {
    let after_eth = &frame[l3..];
    if after_eth.len() < 40 {
        return Err(Skip::Malformed);
    }
    let (header, rest) = after_eth.split_at(40);
    let payload_length = be16(&header[4..6]);
    if header[0] >> 4 != 6 || payload_length > rest.len() {
        return Err(Skip::Malformed);
    }
    let next = header[6];
    if next != PROTO_UDP && next != PROTO_TCP {
        return Err(if IPV6_EXTENSION_HEADERS.contains(&next) {
            Skip::Ipv6Ext
        } else {
            Skip::NotUdpOrTcp
        });
    }
    let (src, dst) = (v6(&header[8..24]), v6(&header[24..40]));
    if dst.is_multicast() || dst.is_unspecified() {
        return Err(Skip::NotUnicast);
    }
    if src.to_ipv4_mapped().is_some() || dst.to_ipv4_mapped().is_some() {
        return Err(Skip::Mapped);
    }
    Ok(Network {
        l4: l3 + 40,
        ipv6: true,
        proto: next,
        src: src.into(),
        dst: dst.into(),
        payload: &rest[..payload_length],
    })
}

/// What an accepted frame must satisfy, read straight off its bytes: offsets
/// inside the frame and consistent with the IP header they came from.
fn check_accepted(frame: &[u8], h: &Headers) -> Result<(), TestCaseError> {
    prop_assert!(
        [14, 18, 22].contains(&h.l3),
        "l3 {} is not after 0-2 tags",
        h.l3
    );
    prop_assert_eq!(
        be16(&frame[h.l3 - 2..]) as u16,
        if h.ipv6 { ETH_P_IPV6 } else { ETH_P_IPV4 },
        "ethertype"
    );
    let ip = &frame[h.l3..];
    let end = if h.ipv6 {
        prop_assert!(h.l3 + 40 <= frame.len());
        prop_assert_eq!(ip[0] >> 4, 6, "version");
        prop_assert_eq!(h.l4, h.l3 + 40, "l4 right after the IPv6 header");
        let end = h.l4 + be16(&ip[4..6]);
        prop_assert!(end <= frame.len(), "payload length past the frame");
        prop_assert_eq!(ip[6], h.proto, "next header");
        prop_assert_eq!(&ip[8..24], &octets(&h.src)[..]);
        prop_assert_eq!(&ip[24..40], &octets(&h.dst)[..]);
        prop_assert!(!is_ipv4_mapped(&h.src) && !is_ipv4_mapped(&h.dst));
        prop_assert!(
            ip[24] != 0xff && ip[24..40] != [0; 16],
            "a unicast destination"
        );
        end
    } else {
        prop_assert!(h.l3 + 20 <= frame.len());
        prop_assert_eq!(ip[0] >> 4, 4, "version");
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        prop_assert!(ihl >= 20, "IHL*4 = {}", ihl);
        prop_assert_eq!(h.l4, h.l3 + ihl, "l4 right after the IPv4 header");
        let end = h.l3 + be16(&ip[2..4]);
        prop_assert!(end <= frame.len(), "total length past the frame");
        prop_assert_eq!(be16(&ip[6..8]) & 0x3fff, 0, "not a fragment");
        prop_assert_eq!(ip[9], h.proto);
        prop_assert!(is_ipv4_mapped(&h.src) && is_ipv4_mapped(&h.dst));
        prop_assert_eq!(&ip[12..16], &ipv4_of(&h.src)[..]);
        prop_assert_eq!(&ip[16..20], &ipv4_of(&h.dst)[..]);
        end
    };
    let l4_hlen = if h.proto == PROTO_TCP { 20 } else { 8 };
    prop_assert!(
        h.l4 + l4_hlen <= end,
        "transport header inside the datagram"
    );
    prop_assert!(
        h.l4_check() + 2 <= end,
        "checksum field inside the datagram"
    );
    prop_assert_eq!(&frame[h.l4..h.l4 + 2], &h.sport[..]);
    prop_assert_eq!(&frame[h.l4 + 2..h.l4 + 4], &h.dport[..]);
    if h.proto == PROTO_UDP {
        prop_assert_eq!(h.tcp_flags, 0);
        let length = be16(&frame[h.l4 + 4..]);
        prop_assert!(length >= 8 && h.l4 + length <= end, "UDP length {}", length);
        prop_assert!(
            !h.ipv6 || frame[h.l4 + 6..h.l4 + 8] != [0, 0],
            "a zero UDP checksum over IPv6"
        );
    } else {
        prop_assert_eq!(h.proto, PROTO_TCP);
        prop_assert_eq!(h.tcp_flags, frame[h.l4 + 13]);
        let data_offset = usize::from(frame[h.l4 + 12] >> 4) * 4;
        prop_assert!(data_offset >= 20 && h.l4 + data_offset <= end);
    }
    Ok(())
}

/// `headers` and the oracle agree on `frame`, and an `Ok` passes `check_accepted`.
fn agrees(frame: &[u8]) -> Result<Result<Headers, Skip>, TestCaseError> {
    let got = headers(frame);
    let want = oracle(frame);
    prop_assert_eq!(got, want, "frame {:02x?}", frame);
    if let Ok(h) = &got {
        check_accepted(frame, h)?;
    }
    Ok(got)
}

/// A transport header as generated.
#[derive(Clone, Debug)]
enum L4 {
    Udp {
        /// Never 0 over IPv6.
        check: u16,
        /// Bytes inside the IP payload after the UDP datagram.
        slack: Vec<u8>,
    },
    Tcp {
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        check: u16,
        urgent: u16,
        options: Vec<u8>,
    },
}

/// An IP header as generated: its lengths and protocol come from the rest of
/// the frame.
#[derive(Clone, Debug)]
enum Ip {
    V4 {
        tos: u8,
        id: u16,
        /// The DF and reserved flags; MF and the offset stay zero.
        flags: u16,
        ttl: u8,
        check: u16,
        src: [u8; 4],
        dst: [u8; 4],
        options: Vec<u8>,
    },
    V6 {
        traffic_class: u8,
        /// 20 bits.
        flow_label: u32,
        hop_limit: u8,
        src: [u8; 16],
        dst: [u8; 16],
    },
}

/// A valid frame: Ethernet, 0-2 VLAN tags, IPv4 with options or IPv6, UDP or TCP.
#[derive(Clone, Debug)]
struct Frame {
    macs: [u8; 12],
    /// (TPID, TCI) of each tag, outermost first.
    tags: Vec<(u16, u16)>,
    ip: Ip,
    sport: u16,
    dport: u16,
    l4: L4,
    payload: Vec<u8>,
    /// Ethernet padding after the IP datagram.
    padding: Vec<u8>,
}

impl Frame {
    fn ipv6(&self) -> bool {
        matches!(self.ip, Ip::V6 { .. })
    }

    fn l3(&self) -> usize {
        14 + 4 * self.tags.len()
    }

    /// The IP header's length: 20 and options, or IPv6's 40.
    fn ip_hlen(&self) -> usize {
        match &self.ip {
            Ip::V4 { options, .. } => 20 + options.len(),
            Ip::V6 { .. } => 40,
        }
    }

    fn l4_len(&self) -> usize {
        match &self.l4 {
            L4::Udp { slack, .. } => 8 + self.payload.len() + slack.len(),
            L4::Tcp { options, .. } => 20 + options.len() + self.payload.len(),
        }
    }

    /// Where the IP datagram ends: the shortest frame that parses.
    fn needed(&self) -> usize {
        self.l3() + self.ip_hlen() + self.l4_len()
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Udp { .. } => PROTO_UDP,
            L4::Tcp { .. } => PROTO_TCP,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut f = self.macs.to_vec();
        for (tpid, tci) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        match &self.ip {
            Ip::V4 {
                tos,
                id,
                flags,
                ttl,
                check,
                src,
                dst,
                options,
            } => {
                f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                f.push(0x40 | (self.ip_hlen() / 4) as u8);
                f.push(*tos);
                f.extend_from_slice(&((self.ip_hlen() + self.l4_len()) as u16).to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
                f.extend_from_slice(&flags.to_be_bytes());
                f.extend_from_slice(&[*ttl, self.proto()]);
                f.extend_from_slice(&check.to_be_bytes());
                f.extend_from_slice(src);
                f.extend_from_slice(dst);
                f.extend_from_slice(options);
            }
            Ip::V6 {
                traffic_class,
                flow_label,
                hop_limit,
                src,
                dst,
            } => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let first = 6 << 28 | u32::from(*traffic_class) << 20 | flow_label & 0xf_ffff;
                f.extend_from_slice(&first.to_be_bytes());
                f.extend_from_slice(&(self.l4_len() as u16).to_be_bytes());
                f.extend_from_slice(&[self.proto(), *hop_limit]);
                f.extend_from_slice(src);
                f.extend_from_slice(dst);
            }
        }
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        match &self.l4 {
            L4::Udp { check, slack } => {
                f.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                f.extend_from_slice(&check.to_be_bytes());
                f.extend_from_slice(&self.payload);
                f.extend_from_slice(slack);
            }
            L4::Tcp {
                seq,
                ack,
                flags,
                window,
                check,
                urgent,
                options,
            } => {
                f.extend_from_slice(&seq.to_be_bytes());
                f.extend_from_slice(&ack.to_be_bytes());
                f.push((((20 + options.len()) / 4) as u8) << 4);
                f.push(*flags);
                f.extend_from_slice(&window.to_be_bytes());
                f.extend_from_slice(&check.to_be_bytes());
                f.extend_from_slice(&urgent.to_be_bytes());
                f.extend_from_slice(options);
                f.extend_from_slice(&self.payload);
            }
        }
        f.extend_from_slice(&self.padding);
        f
    }

    /// The fields the generator put in, as the parser must report them.
    fn expected(&self) -> Headers {
        let (src, dst): (IpAddr, IpAddr) = match self.ip {
            Ip::V4 { src, dst, .. } => (src.into(), dst.into()),
            Ip::V6 { src, dst, .. } => (src.into(), dst.into()),
        };
        Headers {
            l3: self.l3(),
            l4: self.l3() + self.ip_hlen(),
            ipv6: self.ipv6(),
            proto: self.proto(),
            tcp_flags: match self.l4 {
                L4::Udp { .. } => 0,
                L4::Tcp { flags, .. } => flags,
            },
            src: addr_of(src),
            dst: addr_of(dst),
            sport: self.sport.to_be_bytes(),
            dport: self.dport.to_be_bytes(),
        }
    }
}

/// Up to `max` bytes whose values the parser never reads (payload, options,
/// padding): a length and a seed, much cheaper to generate in a debug build
/// than a value tree per byte.
fn filler(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max, any::<u64>()).prop_map(|(len, seed)| {
        // SplitMix64's output step: any bytes will do, as long as they vary.
        (0..len as u64)
            .map(|i| {
                let mut z = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    })
}

/// Up to `max` 32-bit words of arbitrary bytes (IPv4 and TCP options).
fn words(max: usize) -> impl Strategy<Value = Vec<u8>> {
    filler(max).prop_map(|b| b.repeat(4))
}

/// A unicast destination: multicast and limited broadcast moved out of the way.
fn unicast() -> impl Strategy<Value = [u8; 4]> {
    any::<[u8; 4]>().prop_map(|mut a| {
        if Ipv4Addr::from(a).is_multicast() {
            a[0] -= 0x80;
        }
        if a == [255; 4] {
            a[3] = 254;
        }
        a
    })
}

/// 16 arbitrary address bytes (one value tree, not sixteen), never
/// IPv4-mapped.
fn addr6() -> impl Strategy<Value = [u8; 16]> {
    any::<u128>().prop_map(|a| {
        let mut a = a.to_be_bytes();
        if v6(&a).to_ipv4_mapped().is_some() {
            a[10] = 0;
        }
        a
    })
}

/// An IPv6 destination a query may have: not multicast, not unspecified, not
/// IPv4-mapped.
fn unicast6() -> impl Strategy<Value = [u8; 16]> {
    addr6().prop_map(|mut a| {
        if a[0] == 0xff {
            a[0] = 0x20;
        }
        if a == [0; 16] {
            a[15] = 1;
        }
        a
    })
}

fn l4(ipv6: bool) -> impl Strategy<Value = L4> {
    // RFC 8200 8.1: a UDP checksum over IPv6 is never 0 on the wire.
    let udp_check = if ipv6 { 1..=u16::MAX } else { 0..=u16::MAX };
    prop_oneof![
        (udp_check, filler(8)).prop_map(|(check, slack)| L4::Udp { check, slack }),
        (
            (any::<u32>(), any::<u32>(), any::<u8>()),
            (any::<u16>(), any::<u16>(), any::<u16>()),
            words(10),
        )
            .prop_map(
                |((seq, ack, flags), (window, check, urgent), options)| L4::Tcp {
                    seq,
                    ack,
                    flags,
                    window,
                    check,
                    urgent,
                    options,
                }
            ),
    ]
}

fn ip4() -> impl Strategy<Value = Ip> {
    (
        any::<(u8, u16, bool, bool, u8, u16)>(),
        any::<[u8; 4]>(),
        unicast(),
        words(10),
    )
        .prop_map(
            |((tos, id, df, reserved, ttl, check), src, dst, options)| Ip::V4 {
                tos,
                id,
                flags: u16::from(df) << 14 | u16::from(reserved) << 15,
                ttl,
                check,
                src,
                dst,
                options,
            },
        )
}

fn ip6() -> impl Strategy<Value = Ip> {
    (any::<(u8, u32, u8)>(), addr6(), unicast6()).prop_map(
        |((traffic_class, flow_label, hop_limit), src, dst)| Ip::V6 {
            traffic_class,
            flow_label: flow_label & 0xf_ffff,
            hop_limit,
            src,
            dst,
        },
    )
}

/// A valid frame of one family.
fn frame_of(ipv6: bool) -> impl Strategy<Value = Frame> {
    let tag = (
        prop_oneof![Just(ETH_P_8021Q), Just(ETH_P_8021AD)],
        any::<u16>(),
    );
    let ip = if ipv6 { ip6().boxed() } else { ip4().boxed() };
    (
        (any::<[u8; 12]>(), vec(tag, 0..=2)),
        ip,
        (any::<(u16, u16)>(), l4(ipv6)),
        (filler(64), filler(16)),
    )
        .prop_map(
            |((macs, tags), ip, ((sport, dport), l4), (payload, padding))| Frame {
                macs,
                tags,
                ip,
                sport,
                dport,
                l4,
                payload,
                padding,
            },
        )
}

/// A valid IPv4 or IPv6 frame, half each.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![frame_of(false), frame_of(true)]
}

/// One change to a valid frame, aimed at a header field or anywhere.
#[derive(Clone, Debug)]
enum Mutation {
    /// The ethertype after the tags: IPv4, IPv6, ARP, a TPID (a third tag), other.
    Ethertype(u16),
    /// Tag `i`'s TPID (when there is one).
    Tpid(usize, u16),
    /// Insert a tag with this TPID at the front.
    PushTag(u16),
    /// The IP header's first byte: version and IHL (IPv4), version and the
    /// traffic class's upper half (IPv6).
    VersionIhl(u8),
    /// `choice` picks a total length (IPv4) or payload length (IPv6) relative
    /// to the frame (`value` for random).
    TotalLength(u8, u16),
    /// IPv4's flags and fragment offset.
    FlagsOffset(u16),
    /// IPv4's protocol, IPv6's next header.
    Protocol(u8),
    Destination([u8; 4]),
    Destination6([u8; 16]),
    Source6([u8; 16]),
    /// An IPv6 extension header of this type and `8 * (1 + n)` bytes inserted
    /// before the transport header, the lengths and next headers made to agree.
    Extension(u8, u8),
    /// UDP length (or TCP's first two bytes after the ack number).
    UdpLength(u8, u16),
    DataOffsetFlags(u8, u8),
    /// The UDP or TCP checksum.
    Checksum(u16),
    /// A byte at a position scaled into the frame.
    Byte(u16, u8),
    /// Cut the frame at a position scaled into it.
    Truncate(u16),
    Append(Vec<u8>),
}

/// The mutations that apply to a frame of either family.
fn common_mutations() -> Vec<BoxedStrategy<Mutation>> {
    let ethertype = prop_oneof![
        Just(ETH_P_IPV4),
        Just(ETH_P_IPV6),
        Just(0x0806),
        Just(ETH_P_8021Q),
        Just(ETH_P_8021AD),
        Just(ETH_P_QINQ_OLD),
        any::<u16>(),
    ];
    let tpid = prop_oneof![
        Just(ETH_P_8021Q),
        Just(ETH_P_8021AD),
        Just(ETH_P_QINQ_OLD),
        Just(ETH_P_IPV4),
        Just(ETH_P_IPV6),
        any::<u16>(),
    ];
    vec![
        ethertype.prop_map(Mutation::Ethertype).boxed(),
        (0usize..2, tpid.clone())
            .prop_map(|(i, t)| Mutation::Tpid(i, t))
            .boxed(),
        tpid.prop_map(Mutation::PushTag).boxed(),
        (any::<u8>(), any::<u16>())
            .prop_map(|(c, v)| Mutation::TotalLength(c, v))
            .boxed(),
        (any::<u8>(), any::<u16>())
            .prop_map(|(c, v)| Mutation::UdpLength(c, v))
            .boxed(),
        any::<(u8, u8)>()
            .prop_map(|(d, f)| Mutation::DataOffsetFlags(d, f))
            .boxed(),
        any::<(u16, u8)>()
            .prop_map(|(at, v)| Mutation::Byte(at, v))
            .boxed(),
        any::<u16>().prop_map(Mutation::Truncate).boxed(),
        filler(8).prop_map(Mutation::Append).boxed(),
    ]
}

fn mutation4() -> impl Strategy<Value = Mutation> {
    let destination = prop_oneof![
        any::<[u8; 4]>(),
        (224u8..=239, any::<[u8; 3]>()).prop_map(|(a, r)| [a, r[0], r[1], r[2]]),
        Just([255; 4]),
        Just([0; 4]),
    ];
    let mut all = common_mutations();
    all.extend([
        any::<u8>().prop_map(Mutation::VersionIhl).boxed(),
        prop_oneof![
            Just(0x2000u16),
            Just(0x4000),
            Just(0x8000),
            Just(0x0001),
            Just(0x1fff),
            any::<u16>()
        ]
        .prop_map(Mutation::FlagsOffset)
        .boxed(),
        prop_oneof![Just(1u8), Just(PROTO_UDP), Just(PROTO_TCP), any::<u8>()]
            .prop_map(Mutation::Protocol)
            .boxed(),
        destination.prop_map(Mutation::Destination).boxed(),
        prop_oneof![Just(0u16), any::<u16>()]
            .prop_map(Mutation::Checksum)
            .boxed(),
    ]);
    proptest::strategy::Union::new(all)
}

/// `::ffff:a.b.c.d`.
fn mapped(a: [u8; 4]) -> [u8; 16] {
    Ipv4Addr::from(a).to_ipv6_mapped().octets()
}

fn mutation6() -> impl Strategy<Value = Mutation> {
    let special = prop_oneof![
        any::<u128>().prop_map(|a| a.to_be_bytes()),
        any::<u128>().prop_map(|a| (a | 0xff << 120).to_be_bytes()),
        Just(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets()),
        Just([0; 16]),
        any::<[u8; 4]>().prop_map(mapped),
        Just(mapped([0; 4])),
        // Near misses, all unicast as far as dnsteer can tell: loopback,
        // link-local, IPv4-compatible, SIIT's ::ffff:0:a.b.c.d, NAT64.
        Just(Ipv6Addr::LOCALHOST.octets()),
        Just(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets()),
        any::<u32>().prop_map(|a| u128::from(a).to_be_bytes()),
        any::<u32>().prop_map(|a| (0xffff << 48 | u128::from(a)).to_be_bytes()),
        any::<u32>().prop_map(|a| (0x0064_ff9b << 96 | u128::from(a)).to_be_bytes()),
    ];
    let next_header = prop_oneof![
        proptest::sample::select(IPV6_EXTENSION_HEADERS.to_vec()),
        Just(ICMPV6),
        Just(NO_NEXT_HEADER),
        Just(PROTO_UDP),
        Just(PROTO_TCP),
        any::<u8>(),
    ];
    let mut all = common_mutations();
    all.extend([
        prop_oneof![
            (0u8..16).prop_map(|v| v << 4),
            Just(0x45u8),
            Just(0x60),
            any::<u8>()
        ]
        .prop_map(Mutation::VersionIhl)
        .boxed(),
        next_header.prop_map(Mutation::Protocol).boxed(),
        special.clone().prop_map(Mutation::Destination6).boxed(),
        special.prop_map(Mutation::Source6).boxed(),
        (
            proptest::sample::select(IPV6_EXTENSION_HEADERS.to_vec()),
            0u8..4,
        )
            .prop_map(|(next, n)| Mutation::Extension(next, n))
            .boxed(),
        prop_oneof![Just(0u16), Just(0xffff), any::<u16>()]
            .prop_map(Mutation::Checksum)
            .boxed(),
    ]);
    proptest::strategy::Union::new(all)
}

/// Sets `bytes` at `at` when they fit in the frame.
fn put(f: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = f.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Applies `mutations` in order to the bytes of `frame`. Field offsets are the
/// generated frame's (a changed IHL or ethertype leaves them where they were;
/// an inserted tag or extension header moves them).
fn mutate(frame: &Frame, mutations: &[Mutation]) -> Vec<u8> {
    let mut f = frame.bytes();
    let ipv6 = frame.ipv6();
    let (mut l3, ip_hlen) = (frame.l3(), frame.ip_hlen());
    let mut l4 = l3 + ip_hlen;
    let mut l4_len = frame.l4_len();
    let datagram = ip_hlen + l4_len;
    for m in mutations {
        let scaled = |at: u16, len: usize| at as usize * (len + 1) / 0x1_0000;
        match m {
            Mutation::Ethertype(t) => put(&mut f, l3 - 2, &t.to_be_bytes()),
            Mutation::Tpid(i, t) if *i < (l3 - 14) / 4 => put(&mut f, 12 + 4 * i, &t.to_be_bytes()),
            Mutation::Tpid(..) => {}
            Mutation::PushTag(t) => {
                let at = 12.min(f.len());
                f.splice(at..at, t.to_be_bytes().into_iter().chain([0, 7]));
                (l3, l4) = (l3 + 4, l4 + 4);
            }
            Mutation::VersionIhl(v) => put(&mut f, l3, &[*v]),
            Mutation::TotalLength(choice, value) if ipv6 => {
                let room = f.len().saturating_sub(l3 + 40);
                let candidates = [
                    0,
                    7,
                    19,
                    l4_len - 1,
                    l4_len + 1,
                    room,
                    room + 1,
                    0xffff,
                    *value as usize,
                ];
                let length = candidates[*choice as usize % candidates.len()] as u16;
                put(&mut f, l3 + 4, &length.to_be_bytes());
            }
            Mutation::TotalLength(choice, value) => {
                let room = f.len().saturating_sub(l3);
                let candidates = [
                    0,
                    ip_hlen.saturating_sub(1),
                    ip_hlen,
                    datagram - 1,
                    datagram + 1,
                    room,
                    room + 1,
                    0xffff,
                    *value as usize,
                ];
                let total = candidates[*choice as usize % candidates.len()] as u16;
                put(&mut f, l3 + 2, &total.to_be_bytes());
            }
            Mutation::FlagsOffset(v) => put(&mut f, l3 + 6, &v.to_be_bytes()),
            Mutation::Protocol(p) => put(&mut f, l3 + if ipv6 { 6 } else { 9 }, &[*p]),
            Mutation::Destination(d) => put(&mut f, l3 + 16, d),
            Mutation::Destination6(d) => put(&mut f, l3 + 24, d),
            Mutation::Source6(s) => put(&mut f, l3 + 8, s),
            Mutation::Extension(next, n) => {
                let len = 8 * (1 + usize::from(*n));
                let mut ext = vec![0u8; len];
                // Its own next header: what the IPv6 header named so far.
                ext[0] = f.get(l3 + 6).copied().unwrap_or(PROTO_UDP);
                ext[1] = *n;
                let at = l4.min(f.len());
                f.splice(at..at, ext);
                put(&mut f, l3 + 6, &[*next]);
                if let Some(old) = f.get(l3 + 4..l3 + 6).map(be16) {
                    put(&mut f, l3 + 4, &((old + len) as u16).to_be_bytes());
                }
                (l4, l4_len) = (l4 + len, l4_len + len);
            }
            Mutation::UdpLength(choice, value) => {
                let payload = frame.l4_len();
                let candidates = [0, 7, 8, payload - 1, payload, payload + 1, *value as usize];
                let length = candidates[*choice as usize % candidates.len()] as u16;
                put(&mut f, l4 + 4, &length.to_be_bytes());
            }
            Mutation::DataOffsetFlags(d, flags) => put(&mut f, l4 + 12, &[*d, *flags]),
            Mutation::Checksum(c) => {
                let at = l4 + if frame.proto() == PROTO_TCP { 16 } else { 6 };
                put(&mut f, at, &c.to_be_bytes());
            }
            Mutation::Byte(at, v) => {
                let at = scaled(*at, f.len());
                put(&mut f, at, &[*v]);
            }
            Mutation::Truncate(at) => {
                let at = scaled(*at, f.len());
                f.truncate(at);
            }
            Mutation::Append(tail) => f.extend_from_slice(tail),
        }
    }
    f
}

/// A valid frame of either family and 1-3 mutations of its family's kinds.
fn mutated() -> impl Strategy<Value = (Frame, Vec<Mutation>)> {
    prop_oneof![
        (frame_of(false), vec(mutation4(), 1..=3)),
        (frame_of(true), vec(mutation6(), 1..=3)),
    ]
}

const VERDICTS: [&str; 8] = [
    "ok",
    "not_ip",
    "not_udp_or_tcp",
    "not_unicast",
    "mapped",
    "malformed",
    "fragment",
    "ipv6_ext",
];

fn verdict_index(verdict: &Result<Headers, Skip>) -> usize {
    match verdict {
        Ok(_) => 0,
        Err(Skip::NotIp) => 1,
        Err(Skip::NotUdpOrTcp) => 2,
        Err(Skip::NotUnicast) => 3,
        Err(Skip::Mapped) => 4,
        Err(Skip::Malformed) => 5,
        Err(Skip::Fragment) => 6,
        Err(Skip::Ipv6Ext) => 7,
    }
}

/// How many cases of each group (what they started as) ended in each verdict.
struct Verdicts<const G: usize> {
    groups: [&'static str; G],
    counts: [[AtomicU64; VERDICTS.len()]; G],
}

impl<const G: usize> Verdicts<G> {
    fn new(groups: [&'static str; G]) -> Self {
        Self {
            groups,
            counts: std::array::from_fn(|_| Default::default()),
        }
    }

    fn count(&self, group: usize, verdict: &Result<Headers, Skip>) {
        self.counts[group][verdict_index(verdict)].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, group: usize) -> [u64; VERDICTS.len()] {
        self.counts[group]
            .each_ref()
            .map(|c| c.load(Ordering::Relaxed))
    }

    fn print(&self, property: &str) {
        for (g, group) in self.groups.iter().enumerate() {
            let counts: Vec<String> = VERDICTS
                .iter()
                .zip(self.get(g))
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            println!("{property}: {group}: {}", counts.join(", "));
        }
    }

    /// Every verdict in `want` was reached by some case of `group`.
    fn assert_reached(&self, group: usize, want: &[&str]) {
        let counts = self.get(group);
        for name in want {
            let i = VERDICTS.iter().position(|v| v == name).unwrap();
            assert!(
                counts[i] > 0,
                "no {} case got the verdict {name}: {counts:?}",
                self.groups[group]
            );
        }
    }
}

/// Arbitrary bytes; or arbitrary bytes after an IPv4 or IPv6 ethertype and
/// version nibble, so the IP parsers see random headers too.
fn arbitrary() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let led = |ethertype: u16, version: u8| {
        vec(any::<u8>(), 0..=200).prop_map(move |mut b| {
            put(&mut b, 12, &ethertype.to_be_bytes());
            if let Some(first) = b.get_mut(14) {
                *first = version << 4 | (*first & 0x0f);
            }
            b
        })
    };
    prop_oneof![
        2 => vec(any::<u8>(), 0..=200).prop_map(|b| (0, b)),
        1 => led(ETH_P_IPV4, 4).prop_map(|b| (1, b)),
        1 => led(ETH_P_IPV6, 6).prop_map(|b| (2, b)),
    ]
}

#[test]
fn arbitrary_bytes_never_panic_and_agree_with_the_oracle() {
    let verdicts = Verdicts::new(["random", "IPv4-led", "IPv6-led"]);
    run("arbitrary bytes", arbitrary(), |(group, bytes)| {
        verdicts.count(group, &agrees(&bytes)?);
        Ok(())
    });
    verdicts.print("arbitrary bytes");
}

#[test]
fn mutated_frames_never_panic_and_agree_with_the_oracle() {
    let verdicts = Verdicts::new(["IPv4", "IPv6"]);
    run("mutated frames", mutated(), |(frame, mutations)| {
        let verdict = agrees(&mutate(&frame, &mutations))?;
        verdicts.count(usize::from(frame.ipv6()), &verdict);
        Ok(())
    });
    verdicts.print("mutated frames");
    // Each verdict must be reached, or the mutations are not exercising the parser.
    verdicts.assert_reached(
        0,
        &[
            "ok",
            "not_ip",
            "not_udp_or_tcp",
            "not_unicast",
            "malformed",
            "fragment",
        ],
    );
    verdicts.assert_reached(
        1,
        &[
            "ok",
            "not_ip",
            "not_udp_or_tcp",
            "not_unicast",
            "mapped",
            "malformed",
            "ipv6_ext",
        ],
    );
}

#[test]
fn valid_frames_parse_to_the_fields_they_were_built_with() {
    let verdicts = Verdicts::new(["IPv4", "IPv6"]);
    run("valid frames", frame(), |frame| {
        let bytes = frame.bytes();
        let want = frame.expected();
        let got = headers(bytes.as_slice());
        prop_assert_eq!(got, Ok(want), "frame {:?}", frame);
        check_accepted(&bytes, &want)?;
        prop_assert_eq!(oracle(&bytes), Ok(want), "the oracle disagrees");
        verdicts.count(usize::from(frame.ipv6()), &got);
        Ok(())
    });
    verdicts.print("valid frames");
    verdicts.assert_reached(0, &["ok"]);
    verdicts.assert_reached(1, &["ok"]);
}

#[test]
fn truncated_frames_are_malformed_until_the_datagram_is_whole() {
    run("truncations", frame(), |frame| {
        let bytes = frame.bytes();
        let (needed, want) = (frame.needed(), frame.expected());
        for cut in 0..=bytes.len() {
            let got = headers(&bytes[..cut]);
            if cut < needed {
                prop_assert_eq!(got, Err(Skip::Malformed), "cut at {} of {:?}", cut, frame);
            } else {
                prop_assert_eq!(got, Ok(want), "cut at {} of {:?}", cut, frame);
            }
        }
        Ok(())
    });
}
