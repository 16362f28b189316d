//! Property tests of the host-side header parser, `xdp_common::parse::headers4`,
//! the same code the XDP program runs.
//!
//! Four properties, each over `DNSTEER_PROPTEST_CASES` cases (default 100,000)
//! from a fixed seed (`DNSTEER_PROPTEST_SEED` overrides it):
//!
//! - arbitrary bytes, and valid frames with random field and byte mutations,
//!   never panic and get the verdict an independent validator (`oracle`,
//!   written from RFC 791, 768 and 9293 and the README's rules) gives;
//! - a valid generated frame parses to exactly the fields it was built with;
//! - every `Ok` reports offsets inside the frame, consistent with its IPv4 header;
//! - a valid frame cut short of its datagram is malformed at every length, and
//!   parses to the same fields at every length from there on (Ethernet padding).

use std::{
    env,
    net::Ipv4Addr,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use proptest::{
    collection::vec,
    prelude::*,
    test_runner::{Config, RngAlgorithm, RngSeed, TestRunner},
};
use xdp_common::{
    PROTO_TCP, PROTO_UDP,
    parse::{Headers4, Skip, headers4},
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ TPID: not a tag dnsteer knows.
const ETH_P_QINQ_OLD: u16 = 0x9100;
const ETH_P_IPV6: u16 = 0x86dd;

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

/// The verdict the rules give a frame, derived from the standards and the
/// README, not from `parse.rs`:
///
/// - Ethernet II (6 + 6 address bytes, a 2-byte ethertype); 802.1Q (0x8100)
///   and 802.1ad (0x88a8) tags are 4 bytes each (TPID, TCI) and followed by
///   the inner ethertype. Two tags are read; a third is not, so the packet is
///   not IPv4 as far as dnsteer knows. Any ethertype but 0x0800 is not IPv4.
/// - IPv4 (RFC 791): the fixed 20 bytes present, version 4, IHL >= 5, total
///   length from IHL * 4 up to what the frame holds after the Ethernet header
///   (more is Ethernet padding). Otherwise malformed. The header checksum,
///   options and the reserved flag are not looked at.
/// - Then the header's fields in wire order: a fragment (MF set, or a
///   non-zero offset) is a fragment whatever it carries; a protocol other
///   than UDP (17) or TCP (6) is not one; nor is a multicast (224/4) or
///   limited broadcast destination (the README: they never match a listen).
/// - The transport header must lie inside the datagram: UDP (RFC 768) its 8
///   bytes, with a length from 8 up to the IPv4 payload (a shorter one leaves
///   trailing bytes, which the stack trims; a longer one is truncated); TCP
///   (RFC 9293) its 20 bytes, with a data offset from 5 words up to the payload.
fn oracle(frame: &[u8]) -> Result<Headers4, Skip> {
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
    if ethertype != ETH_P_IPV4 as usize {
        return Err(Skip::NotIpv4);
    }

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
    let dst: [u8; 4] = header[16..20].try_into().unwrap();
    let dst_ip = Ipv4Addr::from(dst);
    if dst_ip.is_multicast() || dst_ip.is_broadcast() {
        return Err(Skip::NotUnicast);
    }

    let tcp_flags = if proto == PROTO_UDP {
        if payload.len() < 8 {
            return Err(Skip::Malformed);
        }
        let length = be16(&payload[4..6]);
        if !(8..=payload.len()).contains(&length) {
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
    Ok(Headers4 {
        l3,
        l4: l3 + ihl,
        proto,
        tcp_flags,
        src: header[12..16].try_into().unwrap(),
        dst,
        sport: payload[0..2].try_into().unwrap(),
        dport: payload[2..4].try_into().unwrap(),
    })
}

/// What an accepted frame must satisfy, read straight off its bytes: offsets
/// inside the frame and consistent with the IPv4 header they came from.
fn check_accepted(frame: &[u8], h: &Headers4) -> Result<(), TestCaseError> {
    prop_assert!(
        [14, 18, 22].contains(&h.l3),
        "l3 {} is not after 0-2 tags",
        h.l3
    );
    prop_assert!(h.l3 + 20 <= frame.len());
    let ip = &frame[h.l3..];
    prop_assert_eq!(ip[0] >> 4, 4, "version");
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    prop_assert!(ihl >= 20, "IHL*4 = {}", ihl);
    prop_assert_eq!(h.l4, h.l3 + ihl, "l4 right after the IPv4 header");
    let total = be16(&ip[2..4]);
    let end = h.l3 + total;
    prop_assert!(end <= frame.len(), "total length {} past the frame", total);
    prop_assert_eq!(be16(&ip[6..8]) & 0x3fff, 0, "not a fragment");
    prop_assert_eq!(ip[9], h.proto);
    prop_assert_eq!(&ip[12..16], &h.src[..]);
    prop_assert_eq!(&ip[16..20], &h.dst[..]);
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
    } else {
        prop_assert_eq!(h.proto, PROTO_TCP);
        prop_assert_eq!(h.tcp_flags, frame[h.l4 + 13]);
        let data_offset = usize::from(frame[h.l4 + 12] >> 4) * 4;
        prop_assert!(data_offset >= 20 && h.l4 + data_offset <= end);
    }
    Ok(())
}

/// `headers4` and the oracle agree on `frame`, and an `Ok` passes `check_accepted`.
fn agrees(frame: &[u8]) -> Result<Result<Headers4, Skip>, TestCaseError> {
    let got = headers4(frame);
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
        check: u16,
        /// Bytes inside the IPv4 payload after the UDP datagram.
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

/// A valid frame: Ethernet, 0-2 VLAN tags, IPv4 with options, UDP or TCP.
#[derive(Clone, Debug)]
struct Frame {
    macs: [u8; 12],
    /// (TPID, TCI) of each tag, outermost first.
    tags: Vec<(u16, u16)>,
    tos: u8,
    id: u16,
    /// The DF and reserved flags; MF and the offset stay zero.
    flags: u16,
    ttl: u8,
    ip_check: u16,
    src: [u8; 4],
    dst: [u8; 4],
    ip_options: Vec<u8>,
    sport: u16,
    dport: u16,
    l4: L4,
    payload: Vec<u8>,
    /// Ethernet padding after the IPv4 datagram.
    padding: Vec<u8>,
}

impl Frame {
    fn l3(&self) -> usize {
        14 + 4 * self.tags.len()
    }

    fn ihl(&self) -> usize {
        20 + self.ip_options.len()
    }

    fn l4_len(&self) -> usize {
        match &self.l4 {
            L4::Udp { slack, .. } => 8 + self.payload.len() + slack.len(),
            L4::Tcp { options, .. } => 20 + options.len() + self.payload.len(),
        }
    }

    /// Where the IPv4 datagram ends: the shortest frame that parses.
    fn needed(&self) -> usize {
        self.l3() + self.ihl() + self.l4_len()
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
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        f.push(0x40 | (self.ihl() / 4) as u8);
        f.push(self.tos);
        f.extend_from_slice(&((self.ihl() + self.l4_len()) as u16).to_be_bytes());
        f.extend_from_slice(&self.id.to_be_bytes());
        f.extend_from_slice(&self.flags.to_be_bytes());
        f.extend_from_slice(&[self.ttl, self.proto()]);
        f.extend_from_slice(&self.ip_check.to_be_bytes());
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.ip_options);
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
    fn expected(&self) -> Headers4 {
        Headers4 {
            l3: self.l3(),
            l4: self.l3() + self.ihl(),
            proto: self.proto(),
            tcp_flags: match self.l4 {
                L4::Udp { .. } => 0,
                L4::Tcp { flags, .. } => flags,
            },
            src: self.src,
            dst: self.dst,
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

fn l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        (any::<u16>(), filler(8)).prop_map(|(check, slack)| L4::Udp { check, slack }),
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

fn frame() -> impl Strategy<Value = Frame> {
    let tag = (
        prop_oneof![Just(ETH_P_8021Q), Just(ETH_P_8021AD)],
        any::<u16>(),
    );
    (
        (any::<[u8; 12]>(), vec(tag, 0..=2)),
        (
            any::<(u8, u16, bool, bool, u8, u16)>(),
            any::<[u8; 4]>(),
            unicast(),
            words(10),
        ),
        (any::<(u16, u16)>(), l4()),
        (filler(64), filler(16)),
    )
        .prop_map(
            |(
                (macs, tags),
                ((tos, id, df, reserved, ttl, ip_check), src, dst, ip_options),
                ((sport, dport), l4),
                (payload, padding),
            )| Frame {
                macs,
                tags,
                tos,
                id,
                flags: u16::from(df) << 14 | u16::from(reserved) << 15,
                ttl,
                ip_check,
                src,
                dst,
                ip_options,
                sport,
                dport,
                l4,
                payload,
                padding,
            },
        )
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
    VersionIhl(u8),
    /// `choice` picks a total length relative to the frame (`value` for random).
    TotalLength(u8, u16),
    FlagsOffset(u16),
    Protocol(u8),
    Destination([u8; 4]),
    /// UDP length (or TCP's first two bytes after the ack number).
    UdpLength(u8, u16),
    DataOffsetFlags(u8, u8),
    /// A byte at a position scaled into the frame.
    Byte(u16, u8),
    /// Cut the frame at a position scaled into it.
    Truncate(u16),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
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
        any::<u16>(),
    ];
    let destination = prop_oneof![
        any::<[u8; 4]>(),
        (224u8..=239, any::<[u8; 3]>()).prop_map(|(a, r)| [a, r[0], r[1], r[2]]),
        Just([255; 4]),
        Just([0; 4]),
    ];
    prop_oneof![
        ethertype.clone().prop_map(Mutation::Ethertype),
        (0usize..2, tpid.clone()).prop_map(|(i, t)| Mutation::Tpid(i, t)),
        tpid.prop_map(Mutation::PushTag),
        any::<u8>().prop_map(Mutation::VersionIhl),
        (any::<u8>(), any::<u16>()).prop_map(|(c, v)| Mutation::TotalLength(c, v)),
        prop_oneof![
            Just(0x2000u16),
            Just(0x4000),
            Just(0x8000),
            Just(0x0001),
            Just(0x1fff),
            any::<u16>()
        ]
        .prop_map(Mutation::FlagsOffset),
        prop_oneof![Just(1u8), Just(PROTO_UDP), Just(PROTO_TCP), any::<u8>()]
            .prop_map(Mutation::Protocol),
        destination.prop_map(Mutation::Destination),
        (any::<u8>(), any::<u16>()).prop_map(|(c, v)| Mutation::UdpLength(c, v)),
        any::<(u8, u8)>().prop_map(|(d, f)| Mutation::DataOffsetFlags(d, f)),
        any::<(u16, u8)>().prop_map(|(at, v)| Mutation::Byte(at, v)),
        any::<u16>().prop_map(Mutation::Truncate),
        filler(8).prop_map(Mutation::Append),
    ]
}

/// Sets `bytes` at `at` when they fit in the frame.
fn put(f: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = f.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Applies `mutations` in order to the bytes of `frame`. Field offsets are the
/// generated frame's (a changed IHL or tag count leaves them where they were).
fn mutate(frame: &Frame, mutations: &[Mutation]) -> Vec<u8> {
    let mut f = frame.bytes();
    let (mut l3, ihl) = (frame.l3(), frame.ihl());
    let mut l4 = l3 + ihl;
    let datagram = ihl + frame.l4_len();
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
            Mutation::TotalLength(choice, value) => {
                let room = f.len().saturating_sub(l3);
                let candidates = [
                    0,
                    ihl.saturating_sub(1),
                    ihl,
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
            Mutation::Protocol(p) => put(&mut f, l3 + 9, &[*p]),
            Mutation::Destination(d) => put(&mut f, l3 + 16, d),
            Mutation::UdpLength(choice, value) => {
                let payload = frame.l4_len();
                let candidates = [0, 7, 8, payload - 1, payload, payload + 1, *value as usize];
                let length = candidates[*choice as usize % candidates.len()] as u16;
                put(&mut f, l4 + 4, &length.to_be_bytes());
            }
            Mutation::DataOffsetFlags(d, flags) => put(&mut f, l4 + 12, &[*d, *flags]),
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

/// How many cases ended in each verdict: `Ok`, then each `Skip`.
struct Verdicts([AtomicU64; 6]);

impl Verdicts {
    const NAMES: [&str; 6] = [
        "ok",
        "not_ipv4",
        "not_udp_or_tcp",
        "not_unicast",
        "malformed",
        "fragment",
    ];

    fn new() -> Self {
        Self(Default::default())
    }

    fn count(&self, verdict: &Result<Headers4, Skip>) {
        let i = match verdict {
            Ok(_) => 0,
            Err(Skip::NotIpv4) => 1,
            Err(Skip::NotUdpOrTcp) => 2,
            Err(Skip::NotUnicast) => 3,
            Err(Skip::Malformed) => 4,
            Err(Skip::Fragment) => 5,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> [u64; 6] {
        self.0.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    fn print(&self, property: &str) {
        let counts: Vec<String> = Self::NAMES
            .iter()
            .zip(self.get())
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        println!("{property}: verdicts: {}", counts.join(", "));
    }
}

#[test]
fn arbitrary_bytes_never_panic_and_agree_with_the_oracle() {
    let verdicts = Verdicts::new();
    run("arbitrary bytes", vec(any::<u8>(), 0..=200), |bytes| {
        verdicts.count(&agrees(&bytes)?);
        Ok(())
    });
    verdicts.print("arbitrary bytes");
}

#[test]
fn mutated_frames_never_panic_and_agree_with_the_oracle() {
    let verdicts = Verdicts::new();
    run(
        "mutated frames",
        (frame(), vec(mutation(), 1..=3)),
        |(frame, mutations)| {
            verdicts.count(&agrees(&mutate(&frame, &mutations))?);
            Ok(())
        },
    );
    verdicts.print("mutated frames");
    // Each verdict must be reached, or the mutations are not exercising the parser.
    let counts = verdicts.get();
    for (name, n) in Verdicts::NAMES.iter().zip(counts) {
        assert!(n > 0, "no mutated frame got the verdict {name}: {counts:?}");
    }
}

#[test]
fn valid_frames_parse_to_the_fields_they_were_built_with() {
    run("valid frames", frame(), |frame| {
        let bytes = frame.bytes();
        let want = frame.expected();
        prop_assert_eq!(headers4(bytes.as_slice()), Ok(want), "frame {:?}", frame);
        check_accepted(&bytes, &want)?;
        prop_assert_eq!(oracle(&bytes), Ok(want), "the oracle disagrees");
        Ok(())
    });
}

#[test]
fn truncated_frames_are_malformed_until_the_datagram_is_whole() {
    run("truncations", frame(), |frame| {
        let bytes = frame.bytes();
        let (needed, want) = (frame.needed(), frame.expected());
        for cut in 0..=bytes.len() {
            let got = headers4(&bytes[..cut]);
            if cut < needed {
                prop_assert_eq!(got, Err(Skip::Malformed), "cut at {} of {:?}", cut, frame);
            } else {
                prop_assert_eq!(got, Ok(want), "cut at {} of {:?}", cut, frame);
            }
        }
        Ok(())
    });
}
