//! The fast path (`forward = "redirect"`): a steered query leaves through the
//! FIB's next hop without the node's IP stack (`bpf_fib_lookup`, then
//! `XDP_REDIRECT`, or `XDP_TX` when the backend is back out the same
//! interface), and a translated reply goes straight out the steering interface
//! (`bpf_redirect_neigh`). Whatever the FIB cannot answer yet (no neighbour
//! entry, no route, a packet over the MTU) goes to the stack as before.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_REDIRECT, bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};
use xdp_common::{
    ForwardEvent, csum,
    forward::REDIRECT,
    ipv4_of,
    parse::{ETH_HLEN, Headers, Packet as _, ipv4, ipv6, udp},
};

use crate::{
    maps::FORWARD,
    packet::{self, ptr_at},
    stats,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The steering interface's ifindex when the fast path is on.
#[inline(always)]
pub fn enabled() -> Option<u32> {
    let conf = FORWARD.get(0)?;
    (conf.mode == REDIRECT).then_some(conf.client_ifindex)
}

/// Where the TTL (IPv4, with the protocol after it: one checksummed word) or
/// the hop limit (IPv6, with the source address's first byte after it) sits.
#[inline(always)]
fn hops_at(pkt: &Headers) -> usize {
    if pkt.ipv6 {
        pkt.l3 + ipv6::HOP_LIMIT
    } else {
        pkt.l3 + ipv4::TTL
    }
}

/// Where a query steered by `nat::to_backend` goes: out through the FIB's next
/// hop, or `XDP_PASS` to the stack.
#[inline(always)]
pub fn query(ctx: &XdpContext, pkt: &Headers) -> u32 {
    if enabled().is_none() {
        return xdp_action::XDP_PASS;
    }
    let (action, event) = match redirect_query(ctx, pkt) {
        Ok(sent) => sent,
        Err(event) => (xdp_action::XDP_PASS, event),
    };
    stats::forward(event);
    action
}

#[inline(always)]
fn redirect_query(ctx: &XdpContext, pkt: &Headers) -> Result<(u32, ForwardEvent), ForwardEvent> {
    // A VLAN tag belongs to the side it came in on; the stack handles those.
    if pkt.l3 != ETH_HLEN {
        return Err(ForwardEvent::Passed);
    }
    let dport = ptr_at::<[u8; 2]>(ctx, pkt.l4 + udp::DPORT).ok_or(ForwardEvent::Passed)?;
    let dmac = ptr_at::<[u8; 6]>(ctx, 0).ok_or(ForwardEvent::Passed)?;
    let smac = ptr_at::<[u8; 6]>(ctx, 6).ok_or(ForwardEvent::Passed)?;
    let hops = ptr_at::<[u8; 2]>(ctx, hops_at(pkt)).ok_or(ForwardEvent::Passed)?;
    // SAFETY: every pointer was bounds checked by `ptr_at`; byte arrays, alignment 1.
    let (word, dport) = unsafe { (*hops, *dport) };
    if word[0] <= 1 {
        // The stack sends the time-exceeded error.
        return Err(ForwardEvent::TtlExpired);
    }
    // SAFETY: an xdp_md context, read by the kernel.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: a plain C struct; all zeros is a valid value.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.l4_protocol = pkt.proto;
    params.sport = u16::from_ne_bytes(pkt.sport);
    params.dport = u16::from_ne_bytes(dport);
    params.ifindex = ingress;
    // The MTU check takes the length in host order, the addresses and ports in
    // network order (the maps' address words are in packet order already).
    if pkt.ipv6 {
        let payload =
            ptr_at::<[u8; 2]>(ctx, pkt.l3 + ipv6::PAYLOAD_LEN).ok_or(ForwardEvent::Passed)?;
        // SAFETY: as above.
        let payload = u16::from_be_bytes(unsafe { *payload });
        params.family = AF_INET6;
        params.__bindgen_anon_1.tot_len = payload.saturating_add(ipv6::HLEN as u16);
        params.__bindgen_anon_3.ipv6_src = pkt.src;
    } else {
        let tot_len = ptr_at::<[u8; 2]>(ctx, pkt.l3 + ipv4::TOT_LEN).ok_or(ForwardEvent::Passed)?;
        let tos = ptr_at::<u8>(ctx, pkt.l3 + 1).ok_or(ForwardEvent::Passed)?;
        // SAFETY: as above.
        let (tot_len, tos) = unsafe { (*tot_len, *tos) };
        params.family = AF_INET;
        params.__bindgen_anon_1.tot_len = u16::from_be_bytes(tot_len);
        params.__bindgen_anon_2.tos = tos;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ipv4_of(&pkt.src));
    }
    // The destination is the backend's now: `pkt.dst` still holds the service
    // address it was parsed with.
    if pkt.ipv6 {
        let dst = ptr_at::<[u32; 4]>(ctx, pkt.l3 + ipv6::DST).ok_or(ForwardEvent::Passed)?;
        // SAFETY: as above; read unaligned, the frame gives no alignment.
        params.__bindgen_anon_4.ipv6_dst = unsafe { dst.read_unaligned() };
    } else {
        let dst = ptr_at::<[u8; 4]>(ctx, pkt.l3 + ipv4::DST).ok_or(ForwardEvent::Passed)?;
        // SAFETY: as above.
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(unsafe { *dst });
    }
    // SAFETY: the helper reads and writes `params`, of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(ForwardEvent::Passed);
    }
    // Forwarding decrements the TTL or hop limit, as the stack would; only
    // IPv4 has a header checksum to follow.
    let new = [word[0] - 1, word[1]];
    if !pkt.ipv6 {
        let check = ptr_at::<[u8; 2]>(ctx, pkt.l3 + ipv4::CHECK).ok_or(ForwardEvent::Passed)?;
        // SAFETY: as above.
        unsafe {
            let sum = u16::from_be_bytes(*check);
            *check = csum::replace16(sum, u16::from_be_bytes(word), u16::from_be_bytes(new))
                .to_be_bytes();
        }
    }
    // SAFETY: as above.
    unsafe {
        *hops = new;
        *dmac = params.dmac;
        *smac = params.smac;
    }
    if params.ifindex == ingress {
        return Ok((xdp_action::XDP_TX, ForwardEvent::Transmitted));
    }
    // SAFETY: a helper call with plain integers.
    let action = unsafe { bpf_redirect(params.ifindex, 0) } as u32;
    if action == xdp_action::XDP_REDIRECT {
        Ok((action, ForwardEvent::Redirected))
    } else {
        // The frame is already rewritten for the next hop; the stack still
        // routes it by its IP header.
        Err(ForwardEvent::Passed)
    }
}

/// The packet's TTL or hop limit (and the byte after it), when it may be
/// forwarded once more.
#[inline(always)]
pub fn ttl_left(ctx: &TcContext, pkt: &Headers) -> Option<[u8; 2]> {
    let word: [u8; 2] = packet::Tc(ctx).bytes(hops_at(pkt))?;
    (word[0] > 1).then_some(word)
}

/// Sends a translated reply (whose TTL word was `word`) straight out the
/// steering interface `client_ifindex`; the action for the program to return.
#[inline(always)]
pub fn reply(ctx: &TcContext, pkt: &Headers, word: [u8; 2], client_ifindex: u32) -> i32 {
    let new = [word[0] - 1, word[1]];
    let (from, to) = (
        u16::from_ne_bytes(word) as u64,
        u16::from_ne_bytes(new) as u64,
    );
    let checked = pkt.ipv6
        || ctx
            .l3_csum_replace(pkt.l3 + ipv4::CHECK, from, to, 2)
            .is_ok();
    // Only the TTL or hop limit byte goes back: the byte after IPv6's hop
    // limit is the source address's first, which the translation has changed
    // since `word` was read.
    if !checked || ctx.store(hops_at(pkt), &new[0], 0).is_err() {
        stats::forward(ForwardEvent::ReplyPassed);
        return TC_ACT_OK;
    }
    // SAFETY: a helper call; no neighbour parameters (the FIB picks the next hop).
    let rc = unsafe { bpf_redirect_neigh(client_ifindex, core::ptr::null_mut(), 0, 0) };
    if rc == TC_ACT_REDIRECT as i64 {
        stats::forward(ForwardEvent::ReplyRedirected);
        TC_ACT_REDIRECT
    } else {
        stats::forward(ForwardEvent::ReplyPassed);
        TC_ACT_OK
    }
}
