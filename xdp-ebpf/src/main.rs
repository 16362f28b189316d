//! dnsteer's kernel side.
//!
//! - `dnsteer_steer` (XDP, ingress of the configured interface): rewrites the
//!   destination of a UDP query to a listen address towards one backend, records
//!   the flow and hands the packet to the stack (XDP_PASS), which forwards it.
//! - `dnsteer_reply` (TC, egress of the same interface): rewrites the source of a
//!   backend's answer back to the address the client asked, using that record.
//!
//! Every packet leaves unchanged unless it is fully understood, and bumps exactly
//! one `REASONS` counter saying why it went the way it went.
#![no_std]
#![no_main]

mod maps;
mod nat;
mod packet;
mod select;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use xdp_common::{
    FlowKey, FlowValue, PROTO_UDP, Reason,
    parse::{self, Packet as _},
};

#[xdp]
pub fn dnsteer_steer(ctx: XdpContext) -> u32 {
    stats::count(steer(&ctx));
    xdp_action::XDP_PASS
}

#[classifier]
pub fn dnsteer_reply(ctx: TcContext) -> i32 {
    if let Some(reason) = reply(&ctx) {
        stats::count(reason);
    }
    TC_ACT_OK
}

#[inline(always)]
fn steer(ctx: &XdpContext) -> Reason {
    let udp = match parse::udp4(&packet::Xdp(ctx)) {
        Ok(udp) => udp,
        Err(skip) => return skip.reason(),
    };
    let Some(service) = select::service(&udp) else {
        return Reason::NotService;
    };
    let Some((slot, backend)) = select::backend(service) else {
        return Reason::NoBackend;
    };
    // The record is written before the rewrite so the answer can never overtake it.
    let key = FlowKey {
        backend_addr: backend.addr,
        client_addr: udp.src,
        backend_port: backend.port,
        client_port: udp.sport,
        proto: PROTO_UDP,
        _pad: [0; 3],
    };
    let asked = FlowValue {
        service_addr: udp.dst,
        service_port: udp.dport,
        _pad: [0; 2],
    };
    // An LRU map evicts instead of failing when full; an error here would only cost
    // this query its reply translation, so it is not worth dropping the query for.
    let _ = maps::FLOWS.insert(key, asked, 0);
    if nat::to_backend(ctx, &udp, &backend).is_none() {
        return Reason::Malformed;
    }
    stats::backend(slot, packet::Xdp(ctx).len() as u64);
    Reason::Steered
}

#[inline(always)]
fn reply(ctx: &TcContext) -> Option<Reason> {
    // Anything that is not a well-formed IPv4 UDP packet from a backend is not a
    // reply of ours and is not counted here: egress carries all of the node's traffic.
    let udp = parse::udp4(&packet::Tc(ctx)).ok()?;
    select::backend_source(&udp)?;
    let key = FlowKey {
        backend_addr: udp.src,
        client_addr: udp.dst,
        backend_port: udp.sport,
        client_port: udp.dport,
        proto: PROTO_UDP,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out at once; a concurrent LRU eviction can at
    // worst hand us a record being reused, which is still a valid service address.
    let Some(asked) = (unsafe { maps::FLOWS.get(key) }).copied() else {
        return Some(Reason::ReplyNoFlow);
    };
    Some(match nat::to_service(ctx, &udp, &asked) {
        Ok(()) => Reason::ReplyRewritten,
        Err(_) => Reason::Malformed,
    })
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
