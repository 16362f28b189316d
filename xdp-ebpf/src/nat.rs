//! The two rewrites: a query's destination to its backend (XDP), and a reply's
//! source back to the address the client asked (TC).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    cty::c_long,
    programs::{TcContext, XdpContext},
};
use xdp_common::{
    csum,
    parse::{Headers4, ipv4, udp},
};

use crate::packet::ptr_at;

/// Points the packet at `addr:port`, fixing both checksums incrementally.
///
/// XDP sees the frame before any skb exists, so the checksums are plain numbers
/// here and the RFC 1624 arithmetic from `xdp-common` applies directly. The
/// destination port sits at the same offset in UDP and TCP.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, pkt: &Headers4, addr: [u8; 4], port: [u8; 2]) -> Option<()> {
    let ip_check = ptr_at::<[u8; 2]>(ctx, pkt.l3 + ipv4::CHECK)?;
    let ip_dst = ptr_at::<[u8; 4]>(ctx, pkt.l3 + ipv4::DST)?;
    let dport = ptr_at::<[u8; 2]>(ctx, pkt.l4 + udp::DPORT)?;
    let l4_check = ptr_at::<[u8; 2]>(ctx, pkt.l4_check())?;
    let (addr_from, addr_to) = (u32::from_be_bytes(pkt.dst), u32::from_be_bytes(addr));
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

/// Gives the reply the source the client asked, through the skb checksum
/// helpers: on egress the skb may be CHECKSUM_PARTIAL (the transport field then
/// holds only the pseudo-header sum), which `bpf_l4_csum_replace` handles and
/// plain arithmetic would not.
#[inline(always)]
pub fn to_service(
    ctx: &TcContext,
    pkt: &Headers4,
    addr: [u8; 4],
    port: [u8; 2],
) -> Result<(), c_long> {
    // UDP's zero checksum means "none" and must stay zero (MANGLED_0); TCP has no such value.
    let mangled_0 = if pkt.is_tcp() {
        0
    } else {
        BPF_F_MARK_MANGLED_0 as u64
    };
    let l4_check = pkt.l4_check();
    // The helpers take the old and new values as they sit in memory.
    let (from, to) = (
        u32::from_ne_bytes(pkt.src) as u64,
        u32::from_ne_bytes(addr) as u64,
    );
    ctx.l3_csum_replace(pkt.l3 + ipv4::CHECK, from, to, 4)?;
    ctx.l4_csum_replace(l4_check, from, to, BPF_F_PSEUDO_HDR as u64 | mangled_0 | 4)?;
    ctx.store(pkt.l3 + ipv4::SRC, &addr, 0)?;
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
