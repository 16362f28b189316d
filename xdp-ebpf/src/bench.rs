//! Programs for `cargo xtask bench` only, built into an object of their own
//! (`xdp-ebpf-bench`, next to `xdp-ebpf` in xdp-loader's OUT_DIR), so the
//! object `dnsteer run` loads holds none of them.
//!
//! - `bench_pass`: returns XDP_PASS and touches nothing, the floor that
//!   BPF_PROG_TEST_RUN costs of `dnsteer_steer` are put next to. On the node's
//!   backend-facing veths it also makes the kernel take the XDP_TX frames of the
//!   responders (a veth only receives XDP frames when its own end has an XDP
//!   program or GRO).
//! - `bench_responder`: on a backend's interface, turns a DNS query to UDP port 53
//!   into its answer in place (`A` = the address the query was sent to) and sends
//!   it back with XDP_TX, so capacity runs measure the steering, not a DNS server.

#![no_std]
#![no_main]

#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the bench programs use ptr_at only")
)]
#[path = "packet.rs"]
mod packet;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_tail, macros::xdp, programs::XdpContext,
};
use xdp_common::{
    PROTO_UDP, csum,
    parse::{ETH_HLEN, IPV4_MIN_HLEN, UDP_HLEN, ipv4, udp},
};

use crate::packet::ptr_at;

const ETH_P_IP: u16 = 0x0800;
const DNS_PORT: u16 = 53;
const DNS_HLEN: usize = 12;
/// The answer appended to a plain query: a pointer to the question's name
/// (offset 12), type A, class IN, TTL 60, 4 bytes of address.
const ANSWER_LEN: usize = 16;
const ANSWER_HEAD: [u16; 6] = [0xc00c, 1, 1, 0, 60, 4];
/// Queries with longer messages are answered without an answer record; the
/// bound also keeps the append offset small enough for the verifier.
const MAX_QUERY_LEN: usize = 512;
/// QR (response) and AA (authoritative) in the DNS flags word.
const QR_AA: u16 = 0x8400;
const REPLY_TTL: u8 = 64;
const UDP_L4: usize = ETH_HLEN + IPV4_MIN_HLEN;
const DNS_OFF: usize = UDP_L4 + UDP_HLEN;

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_responder(ctx: XdpContext) -> u32 {
    match respond(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

/// The query's fields the reply is built from, read before the frame grows
/// (growing it invalidates every pointer into it).
struct Query {
    ip_len: u16,
    udp_len: u16,
    flags: u16,
    answer: bool,
    addr: [u8; 4],
}

#[inline(always)]
fn respond(ctx: &XdpContext) -> Option<()> {
    let query = read_query(ctx)?;
    let grown = query.answer
        // SAFETY: a helper call on this program's own context.
        && unsafe { bpf_xdp_adjust_tail(ctx.ctx, ANSWER_LEN as i32) } == 0;
    if grown {
        write_answer(ctx, &query)?;
    }
    let added = if grown { ANSWER_LEN as u16 } else { 0 };
    rewrite_headers(ctx, &query, added)
}

/// Only untagged IPv4 without options, UDP to port 53, a query (QR clear)
/// filling the frame exactly: anything else goes to the stack untouched.
#[inline(always)]
fn read_query(ctx: &XdpContext) -> Option<Query> {
    let eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0)?;
    let ip = ptr_at::<[u8; IPV4_MIN_HLEN]>(ctx, ETH_HLEN)?;
    let l4 = ptr_at::<[u8; UDP_HLEN]>(ctx, UDP_L4)?;
    let dns = ptr_at::<[u8; DNS_HLEN]>(ctx, DNS_OFF)?;
    // SAFETY: every pointer was bounds checked by `ptr_at`; byte arrays have alignment 1.
    let (eth, ip, l4, dns) = unsafe { (*eth, *ip, *l4, *dns) };
    let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let ip_len = be16(&ip, ipv4::TOT_LEN);
    let udp_len = be16(&l4, udp::LEN);
    let frame = ctx.data_end() - ctx.data();
    let plain = be16(&eth, 12) == ETH_P_IP
        && ip[0] == 0x45
        && ip[ipv4::PROTO] == PROTO_UDP
        && be16(&ip, ipv4::FRAG) & ipv4::FRAG_MASK == 0
        && be16(&l4, udp::DPORT) == DNS_PORT
        && usize::from(ip_len) == frame - ETH_HLEN
        && usize::from(udp_len) == usize::from(ip_len) - IPV4_MIN_HLEN
        && dns[2] & 0x80 == 0;
    if !plain {
        return None;
    }
    let counts = [be16(&dns, 4), be16(&dns, 6), be16(&dns, 8), be16(&dns, 10)];
    Some(Query {
        ip_len,
        udp_len,
        flags: be16(&dns, 2),
        answer: counts == [1, 0, 0, 0] && usize::from(udp_len) <= MAX_QUERY_LEN,
        addr: [ip[16], ip[17], ip[18], ip[19]],
    })
}

/// Writes the answer record into the `ANSWER_LEN` bytes the frame just grew by.
#[inline(always)]
fn write_answer(ctx: &XdpContext, query: &Query) -> Option<()> {
    // Bounded again for the verifier: it cannot know the frame grew by exactly this.
    let at = (ETH_HLEN + usize::from(query.ip_len)) & 0x3ff;
    let out = ptr_at::<[u8; ANSWER_LEN]>(ctx, at)?;
    let mut answer = [0u8; ANSWER_LEN];
    for (i, word) in ANSWER_HEAD.iter().enumerate() {
        answer[2 * i..2 * i + 2].copy_from_slice(&word.to_be_bytes());
    }
    answer[12..].copy_from_slice(&query.addr);
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *out = answer };
    Some(())
}

/// Swaps MACs, addresses and ports, sets TTL, lengths, QR/AA and ANCOUNT, and
/// updates both checksums incrementally (RFC 1624): swapping two fields leaves
/// a one's complement sum as it was, so only the changed words enter.
#[inline(always)]
fn rewrite_headers(ctx: &XdpContext, query: &Query, added: u16) -> Option<()> {
    let eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0)?;
    let ip = ptr_at::<[u8; IPV4_MIN_HLEN]>(ctx, ETH_HLEN)?;
    let l4 = ptr_at::<[u8; UDP_HLEN]>(ctx, UDP_L4)?;
    let dns = ptr_at::<[u8; DNS_HLEN]>(ctx, DNS_OFF)?;
    let ip_len = query.ip_len + added;
    let udp_len = query.udp_len + added;
    let flags = (query.flags | QR_AA) & !0x000f;
    // SAFETY: every pointer was bounds checked by `ptr_at` after the frame grew;
    // byte arrays have alignment 1 and do not overlap.
    unsafe {
        let (eth, ip, l4, dns) = (&mut *eth, &mut *ip, &mut *l4, &mut *dns);
        let (dst, src) = eth.split_at_mut(6);
        dst.swap_with_slice(&mut src[..6]);

        let old_ttl_proto = u16::from_be_bytes([ip[ipv4::TTL], ip[ipv4::PROTO]]);
        ip[ipv4::TTL] = REPLY_TTL;
        let (saddr, daddr) = ip[ipv4::SRC..ipv4::SRC + 8].split_at_mut(4);
        saddr.swap_with_slice(daddr);
        ip[ipv4::TOT_LEN..ipv4::TOT_LEN + 2].copy_from_slice(&ip_len.to_be_bytes());
        let mut check = u16::from_be_bytes([ip[ipv4::CHECK], ip[ipv4::CHECK + 1]]);
        check = csum::replace16(
            check,
            old_ttl_proto,
            u16::from_be_bytes([REPLY_TTL, PROTO_UDP]),
        );
        check = csum::replace16(check, query.ip_len, ip_len);
        ip[ipv4::CHECK..ipv4::CHECK + 2].copy_from_slice(&check.to_be_bytes());

        let (sport, dport) = l4[..4].split_at_mut(2);
        sport.swap_with_slice(dport);
        l4[udp::LEN..udp::LEN + 2].copy_from_slice(&udp_len.to_be_bytes());
        dns[2..4].copy_from_slice(&flags.to_be_bytes());
        if added > 0 {
            dns[6..8].copy_from_slice(&1u16.to_be_bytes());
        }

        let old = u16::from_be_bytes([l4[udp::CHECK], l4[udp::CHECK + 1]]);
        // Zero means "no checksum" (RFC 768) and stays zero.
        if old != 0 {
            // The length is in the header and in the pseudo header: twice.
            let mut check = csum::replace16(old, query.udp_len, udp_len);
            check = csum::replace16(check, query.udp_len, udp_len);
            check = csum::replace16(check, query.flags, flags);
            if added > 0 {
                check = csum::replace16(check, 0, 1);
                check = csum::replace16(check, 0, answer_sum(query));
            }
            let check = if check == 0 { 0xffff } else { check };
            l4[udp::CHECK..udp::CHECK + 2].copy_from_slice(&check.to_be_bytes());
        }
    }
    Some(())
}

/// The one's complement sum of the answer's words as they sit in the UDP
/// datagram: starting at an odd offset, each byte pairs with its neighbour in
/// the other half of a word, which byte-swaps the folded sum (RFC 1071, 2.(B)).
#[inline(always)]
fn answer_sum(query: &Query) -> u16 {
    let mut sum: u32 = ANSWER_HEAD.iter().map(|w| u32::from(*w)).sum();
    sum += u32::from(u16::from_be_bytes([query.addr[0], query.addr[1]]));
    sum += u32::from(u16::from_be_bytes([query.addr[2], query.addr[3]]));
    let sum = csum::fold(sum);
    if query.udp_len % 2 == 1 {
        sum.swap_bytes()
    } else {
        sum
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
