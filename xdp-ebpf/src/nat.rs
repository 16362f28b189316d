//! The two rewrites: a query's destination to its backend (XDP), and an answer's
//! source back to the address the client asked (TC).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    cty::c_long,
    programs::{TcContext, XdpContext},
};
use xdp_common::{
    Backend, FlowValue, csum,
    parse::{Udp4, ipv4, udp},
};

use crate::packet::ptr_at;

/// Points the query at `backend`, fixing both checksums incrementally.
///
/// XDP sees the frame before any skb exists, so the checksums are plain numbers
/// here and the RFC 1624 arithmetic from `xdp-common` applies directly.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, pkt: &Udp4, backend: &Backend) -> Option<()> {
    let ip_check = ptr_at::<[u8; 2]>(ctx, pkt.l3 + ipv4::CHECK)?;
    let ip_dst = ptr_at::<[u8; 4]>(ctx, pkt.l3 + ipv4::DST)?;
    let dport = ptr_at::<[u8; 2]>(ctx, pkt.l4 + udp::DPORT)?;
    let udp_check = ptr_at::<[u8; 2]>(ctx, pkt.l4 + udp::CHECK)?;
    let (addr_from, addr_to) = (
        u32::from_be_bytes(pkt.dst),
        u32::from_be_bytes(backend.addr),
    );
    let (port_from, port_to) = (
        u16::from_be_bytes(pkt.dport),
        u16::from_be_bytes(backend.port),
    );
    // SAFETY: each pointer was bounds checked by `ptr_at`; all are byte arrays
    // (alignment 1) inside the frame.
    unsafe {
        let check = u16::from_be_bytes(*ip_check);
        *ip_check = csum::replace32(check, addr_from, addr_to).to_be_bytes();
        *ip_dst = backend.addr;
        let check = u16::from_be_bytes(*udp_check);
        *udp_check = csum::udp_rewrite(check, addr_from, addr_to, port_from, port_to).to_be_bytes();
        *dport = backend.port;
    }
    Some(())
}

/// Gives the answer the source the client asked, through the skb checksum
/// helpers: on egress the skb may be CHECKSUM_PARTIAL (the UDP field then holds
/// only the pseudo-header sum), which `bpf_l4_csum_replace` handles and plain
/// arithmetic would not.
#[inline(always)]
pub fn to_service(ctx: &TcContext, pkt: &Udp4, asked: &FlowValue) -> Result<(), c_long> {
    const MANGLED_0: u64 = BPF_F_MARK_MANGLED_0 as u64;
    const PSEUDO: u64 = BPF_F_PSEUDO_HDR as u64;
    let udp_check = pkt.l4 + udp::CHECK;
    // The helpers take the old and new values as they sit in memory.
    let (from, to) = (
        u32::from_ne_bytes(pkt.src) as u64,
        u32::from_ne_bytes(asked.service_addr) as u64,
    );
    ctx.l3_csum_replace(pkt.l3 + ipv4::CHECK, from, to, 4)?;
    ctx.l4_csum_replace(udp_check, from, to, PSEUDO | MANGLED_0 | 4)?;
    ctx.store(pkt.l3 + ipv4::SRC, &asked.service_addr, 0)?;
    if pkt.sport != asked.service_port {
        let (from, to) = (
            u16::from_ne_bytes(pkt.sport) as u64,
            u16::from_ne_bytes(asked.service_port) as u64,
        );
        ctx.l4_csum_replace(udp_check, from, to, MANGLED_0 | 2)?;
        ctx.store(pkt.l4 + udp::SPORT, &asked.service_port, 0)?;
    }
    Ok(())
}
