//! dnsteer's kernel side.
//!
//! - `dnsteer_steer` (XDP, ingress of the configured interface): rewrites the
//!   destination of an IPv4 or IPv6 UDP or TCP packet to a listen address towards its flow's
//!   backend (a new flow picks one from the service's ring) and hands it to the
//!   stack (XDP_PASS), which forwards it.
//! - `dnsteer_reply` (TC, egress of the same interface): rewrites the source of a
//!   backend's reply back to the address the client asked, from the flow's record,
//!   and translates ICMP errors about a steered flow the same way.
//! - With `forward = "redirect"`, steered queries leave through the FIB's next
//!   hop without the stack, and `dnsteer_reply_in` (TC, ingress of the
//!   interfaces the backends are routed through) translates replies there and
//!   sends them straight out the steering interface. See `forward.rs`.
//!
//! Every packet leaves unchanged unless it is fully understood, and bumps exactly
//! one `REASONS` counter saying why it went the way it went.
#![no_std]
#![no_main]

mod flow;
mod forward;
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
    let (reason, action) = steer(&ctx);
    stats::count(reason);
    action
}
#[classifier]
pub fn dnsteer_reply(ctx: TcContext) -> i32 {
    if let Some(reason) = reply(&ctx) {
        stats::count(reason);
    }
    TC_ACT_OK
}

#[classifier]
pub fn dnsteer_reply_in(ctx: TcContext) -> i32 {
    match reply_in(&ctx) {
        Some((reason, action)) => {
            stats::count(reason);
            action
        }
        None => TC_ACT_OK,
    }
}

/// The reason to count and the action: `XDP_PASS` unless the fast path sent it.
#[inline(always)]
fn steer(ctx: &XdpContext) -> (Reason, u32) {
    let pass = |reason| (reason, xdp_action::XDP_PASS);
    let pkt = match parse::headers(&packet::Xdp(ctx)) {
        Ok(pkt) => pkt,
        Err(skip) => return pass(skip.reason()),
    };
    let Some(service) = select::service(&pkt) else {
        return pass(Reason::NotService);
    };
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let target = match flow::query(&pkt, service, now) {
        Ok(target) => target,
        Err(reason) => return pass(reason),
    };
    if nat::to_backend(ctx, &pkt, &target.addr, target.port).is_none() {
        return pass(Reason::Malformed);
    }
    stats::backend(target.slot, packet::Xdp(ctx).len() as u64, target.new_flow);
    (Reason::Steered, forward::query(ctx, &pkt))
}

/// The fast path's reply side; `None` leaves the packet to the stack and the
/// egress program, uncounted here.
#[inline(always)]
fn reply_in(ctx: &TcContext) -> Option<(Reason, i32)> {
    let client_ifindex = forward::enabled()?;
    let pkt = parse::headers(&packet::Tc(ctx)).ok()?;
    // Checked before the record is read: a FIN or RST acts on it once.
    let word = forward::ttl_left(ctx, &pkt)?;
    let asked = flow::reply(&pkt)?;
    if nat::to_service(ctx, &pkt, &asked.addr, asked.port).is_err() {
        return Some((Reason::Malformed, TC_ACT_OK));
    }
    Some((
        Reason::ReplyRewritten,
        forward::reply(ctx, &pkt, word, client_ifindex),
    ))
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
