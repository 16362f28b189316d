//! dnsteer's kernel side.
//!
//! - `dnsteer_steer` (XDP, ingress of the configured interface): rewrites the
//!   destination of an IPv4 or IPv6 UDP or TCP packet to a listen address towards its flow's
//!   backend (a new flow picks one from the service's ring) and hands it to the
//!   stack (XDP_PASS), which forwards it.
//! - `dnsteer_reply` (TC, egress of the same interface): rewrites the source of a
//!   backend's reply back to the address the client asked, from the flow's record,
//!   and translates ICMP errors about a steered flow the same way.
//!
//! Every packet leaves unchanged unless it is fully understood, and bumps exactly
//! one `REASONS` counter saying why it went the way it went.
#![no_std]
#![no_main]

mod flow;
mod icmp;
mod maps;
mod nat;
mod packet;
mod select;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use xdp_common::{
    Reason,
    parse::{self, Packet as _, Skip},
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
    let pkt = match parse::headers(&packet::Xdp(ctx)) {
        Ok(pkt) => pkt,
        Err(skip) => return skip.reason(),
    };
    let Some(service) = select::service(&pkt) else {
        return Reason::NotService;
    };
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let target = match flow::query(&pkt, service, now) {
        Ok(target) => target,
        Err(reason) => return reason,
    };
    if nat::to_backend(ctx, &pkt, &target.addr, target.port).is_none() {
        return Reason::Malformed;
    }
    stats::backend(target.slot, packet::Xdp(ctx).len() as u64, target.new_flow);
    Reason::Steered
}

#[inline(always)]
fn reply(ctx: &TcContext) -> Option<Reason> {
    // Anything that is not a well-formed IPv4 or IPv6 UDP or TCP packet (or an
    // ICMP error about an IPv4 one) is not a reply of ours and is not counted
    // here: egress carries all of the node's traffic.
    let pkt = match parse::headers(&packet::Tc(ctx)) {
        Ok(pkt) => pkt,
        Err(Skip::NotUdpOrTcp) => return icmp::error(ctx),
        Err(_) => return None,
    };
    let Some(asked) = flow::reply(&pkt) else {
        return select::backend_source(&pkt).then_some(Reason::ReplyNoFlow);
    };
    Some(match nat::to_service(ctx, &pkt, &asked.addr, asked.port) {
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
