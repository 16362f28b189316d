//! The two rewrites: a query's destination to its backend (XDP), and a reply's
//! source back to the address the client asked (TC), for IPv4 and IPv6.
//!
//! Addresses come as the maps hold them (16 bytes, IPv4 as `::ffff:a.b.c.d`);
//! an IPv4 packet gets the last four bytes. The service and its backends are one
//! family (config validation, and `select::backend` guards it), so a rewrite
//! never changes a packet's family.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    cty::c_long,
    programs::{TcContext, XdpContext},
};
use xdp_common::{
    Addr, csum, ipv4_of,
    parse::{Fragment, Headers, ipv4, ipv6, udp},
};

use crate::packet::ptr_at;

/// Points the packet at `addr:port`, fixing the checksums incrementally.
///
/// XDP sees the frame before any skb exists, so the checksums are plain numbers
/// here and the RFC 1624 arithmetic from `xdp-common` applies directly. The
/// destination port sits at the same offset in UDP and TCP.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, pkt: &Headers, addr: &Addr, port: [u8; 2]) -> Option<()> {
    if pkt.ipv6 {
        to_backend6(ctx, pkt, addr, port)
    } else {
        to_backend4(ctx, pkt, ipv4_of(addr), port)
    }
}

#[inline(always)]
fn to_backend4(ctx: &XdpContext, pkt: &Headers, addr: [u8; 4], port: [u8; 2]) -> Option<()> {
    let ip_check = ptr_at::<[u8; 2]>(ctx, pkt.l3 + ipv4::CHECK)?;
    let ip_dst = ptr_at::<[u8; 4]>(ctx, pkt.l3 + ipv4::DST)?;
    let dport = ptr_at::<[u8; 2]>(ctx, pkt.l4 + udp::DPORT)?;
    let l4_check = ptr_at::<[u8; 2]>(ctx, pkt.l4_check())?;
    let (addr_from, addr_to) = (
        u32::from_be_bytes(ipv4_of(&pkt.dst)),
        u32::from_be_bytes(addr),
    );
    let (port_from, port_to) = (u16::from_be_bytes(pkt.dport), u16::from_be_bytes(port));
    // SAFETY: each pointer was bounds checked by `ptr_at`; all are byte arrays
    // (alignment 1) inside the frame.
    unsafe {
        let check = u16::from_be_bytes(*ip_check);
        *ip_check = csum::replace32(check, addr_from, addr_to).to_be_bytes();
        *ip_dst = addr;
        let check = u16::from_be_bytes(*l4_check);
        let check = if pkt.is_tcp() {
            csum::replace16(
                csum::replace32(check, addr_from, addr_to),
                port_from,
                port_to,
            )
        } else {
            csum::udp_rewrite(check, addr_from, addr_to, port_from, port_to)
        };
        *l4_check = check.to_be_bytes();
        *dport = port;
    }
    Some(())
}

/// IPv6 has no header checksum; the destination is in the UDP or TCP
/// pseudo-header, updated word by word.
#[inline(always)]
fn to_backend6(ctx: &XdpContext, pkt: &Headers, addr: &Addr, port: [u8; 2]) -> Option<()> {
    let ip_dst = ptr_at::<Addr>(ctx, pkt.l3 + ipv6::DST)?;
    let dport = ptr_at::<[u8; 2]>(ctx, pkt.l4 + udp::DPORT)?;
    let l4_check = ptr_at::<[u8; 2]>(ctx, pkt.l4_check())?;
    let (port_from, port_to) = (u16::from_be_bytes(pkt.dport), u16::from_be_bytes(port));
    // SAFETY: as in `to_backend4`; the address may sit at any alignment.
    unsafe {
        let check = u16::from_be_bytes(*l4_check);
        let check = csum::l4_rewrite6(check, !pkt.is_tcp(), &pkt.dst, addr, port_from, port_to);
        *l4_check = check.to_be_bytes();
        ip_dst.write_unaligned(*addr);
        *dport = port;
    }
    Some(())
}

/// Gives the reply the source the client asked, through the skb checksum
/// helpers: on egress the skb may be CHECKSUM_PARTIAL (the transport field then
/// holds only the pseudo-header sum), which `bpf_l4_csum_replace` handles and
/// plain arithmetic would not.
#[inline(always)]
pub fn to_service(
    ctx: &TcContext,
    pkt: &Headers,
    addr: &Addr,
    port: [u8; 2],
) -> Result<(), c_long> {
    // UDP's zero checksum means "none" over IPv4 and must stay zero, and a
    // computed zero goes out as 0xffff (MANGLED_0); TCP has no such value.
    // (An IPv6 UDP checksum of zero never gets here: the parser refuses it.)
    let mangled_0 = if pkt.is_tcp() {
        0
    } else {
        BPF_F_MARK_MANGLED_0 as u64
    };
    let l4_check = pkt.l4_check();
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled_0 | 4;
    if pkt.ipv6 {
        // The helpers take the old and new values as they sit in memory (as
        // `Addr` words do), and change 4 bytes at most: one call per word.
        for (from, to) in pkt.src.iter().zip(addr) {
            if from != to {
                ctx.l4_csum_replace(l4_check, *from as u64, *to as u64, pseudo)?;
            }
        }
        ctx.store(pkt.l3 + ipv6::SRC, addr, 0)?;
    } else {
        let to = ipv4_of(addr);
        let (from, to) = (
            u32::from_ne_bytes(ipv4_of(&pkt.src)) as u64,
            u32::from_ne_bytes(to) as u64,
        );
        ctx.l3_csum_replace(pkt.l3 + ipv4::CHECK, from, to, 4)?;
        ctx.l4_csum_replace(l4_check, from, to, pseudo)?;
        ctx.store(pkt.l3 + ipv4::SRC, &ipv4_of(addr), 0)?;
    }
    if pkt.sport != port {
        let (from, to) = (
            u16::from_ne_bytes(pkt.sport) as u64,
            u16::from_ne_bytes(port) as u64,
        );
        ctx.l4_csum_replace(l4_check, from, to, mangled_0 | 2)?;
        ctx.store(pkt.l4 + udp::SPORT, &port, 0)?;
    }
    Ok(())
}

/// Gives a later fragment of a translated answer the source its first fragment
/// got. It carries no transport header, so only the address changes, and with
/// it IPv4's header checksum.
#[inline(always)]
pub fn fragment_to_service(ctx: &TcContext, frag: &Fragment, addr: &Addr) -> Result<(), c_long> {
    if frag.ipv6 {
        return ctx.store(frag.l3 + ipv6::SRC, addr, 0);
    }
    let (from, to) = (
        u32::from_ne_bytes(ipv4_of(&frag.src)) as u64,
        u32::from_ne_bytes(ipv4_of(addr)) as u64,
    );
    ctx.l3_csum_replace(frag.l3 + ipv4::CHECK, from, to, 4)?;
    ctx.store(frag.l3 + ipv4::SRC, &ipv4_of(addr), 0)
}
