//! dnsteer's kernel side.
//!
//! - `dnsteer_steer` (XDP, ingress of the configured interface): rewrites the
//!   destination of an IPv4 or IPv6 UDP or TCP packet to a listen address towards its flow's
//!   backend (a new flow picks one from the service's ring), records a UDP
//!   query until its answer comes, and hands it to the stack (XDP_PASS), which
//!   forwards it. ICMP errors about answers are translated towards their backend.
//! - `dnsteer_reply` (TC, egress of the same interface): rewrites the source of a
//!   backend's reply back to the address the client asked, from the query's
//!   record (UDP, fragmented answers included) or the connection's (TCP), and
//!   translates ICMP errors about a steered query the same way.
//! - With `forward = "redirect"`, steered queries leave through the FIB's next
//!   hop without the stack, and `dnsteer_reply_in` (TC, ingress of the
//!   interfaces the backends are routed through) translates replies there and
//!   sends them straight out the steering interface. See `forward.rs`.
//!
//! - `dnsteer_conn4/6`, `dnsteer_send4/6`, `dnsteer_recv4/6`, `dnsteer_peer4/6`
//!   (cgroup v2 `sock_addr` hooks): the node's own clients, which no
//!   interface hook sees, steered at their sockets. See `sock.rs`.
//!
//! Every packet leaves unchanged unless it is fully understood, and bumps exactly
//! one `REASONS` counter saying why it went the way it went.
#![no_std]
#![no_main]
// `atomic_xadd`: the bpf target has no atomic types with read-modify-write
// methods, but LLVM lowers the intrinsic to BPF_ATOMIC (an add whose result is
// unused needs no kernel newer than 3.18).
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd, see above")]

mod flow;
mod forward;
mod fragment;
mod icmp;
mod maps;
mod nat;
mod packet;
mod query;
mod select;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, xdp_action, xdp_md},
    helpers::bpf_ktime_get_ns,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use xdp_common::{
    Addr, Reason,
    parse::{self, Headers, Packet as _, Skip},
};

#[xdp]
pub fn dnsteer_steer(ctx: XdpContext) -> u32 {
    let (reason, action) = match steer(ctx.ctx) {
        Rest::Done(done) => done,
        Rest::Icmp | Rest::Fragment => (
            icmp_in(ctx.ctx).unwrap_or(Reason::NotService),
            xdp_action::XDP_PASS,
        ),
    };
    stats::count(reason);
    action
}

#[classifier]
pub fn dnsteer_reply(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let reason = match reply(skb) {
        Rest::Done(reason) => reason,
        Rest::Icmp => icmp_out(skb),
        Rest::Fragment => fragment_out(skb),
    };
    if let Some(reason) = reason {
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

#[cgroup_sock_addr(connect4)]
pub fn dnsteer_conn4(ctx: SockAddrContext) -> i32 {
    sock::connect::<false>(ctx.sock_addr)
}

#[cgroup_sock_addr(connect6)]
pub fn dnsteer_conn6(ctx: SockAddrContext) -> i32 {
    sock::connect::<true>(ctx.sock_addr)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn dnsteer_send4(ctx: SockAddrContext) -> i32 {
    sock::sendmsg::<false>(ctx.sock_addr)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn dnsteer_send6(ctx: SockAddrContext) -> i32 {
    sock::sendmsg::<true>(ctx.sock_addr)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn dnsteer_recv4(ctx: SockAddrContext) -> i32 {
    sock::reverse_of::<false>(ctx.sock_addr)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn dnsteer_recv6(ctx: SockAddrContext) -> i32 {
    sock::reverse_of::<true>(ctx.sock_addr)
}

#[cgroup_sock_addr(getpeername4)]
pub fn dnsteer_peer4(ctx: SockAddrContext) -> i32 {
    sock::reverse_of::<false>(ctx.sock_addr)
}

#[cgroup_sock_addr(getpeername6)]
pub fn dnsteer_peer6(ctx: SockAddrContext) -> i32 {
    sock::reverse_of::<true>(ctx.sock_addr)
}

/// What a program's main path leaves to a rarer one.
///
/// The rare paths run as BPF-to-BPF calls from a thin entry point: each
/// subprogram has a stack frame of its own, and the verifier's 512 bytes bound
/// the deepest call chain, not the sum of every path inlined into one frame.
enum Rest<T> {
    Done(T),
    /// Not UDP or TCP: perhaps an ICMP or ICMPv6 error about a flow.
    Icmp,
    /// A fragment: perhaps of an answer.
    Fragment,
}

/// The reason to count and the action: `XDP_PASS` unless the fast path sent it.
#[inline(never)]
fn steer(ctx: *mut xdp_md) -> Rest<(Reason, u32)> {
    let ctx = &XdpContext::new(ctx);
    let pass = |reason| Rest::Done((reason, xdp_action::XDP_PASS));
    let pkt = match parse::headers(&packet::Xdp(ctx)) {
        Ok(pkt) => pkt,
        Err(Skip::NotUdpOrTcp) => return Rest::Icmp,
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
    if !pkt.is_tcp() {
        let id = parse::dns_id(&packet::Xdp(ctx), &pkt);
        query::track(&pkt, id, (target.addr, target.port), target.slot, now);
    }
    if nat::to_backend(ctx, &pkt, &target.addr, target.port).is_none() {
        return pass(Reason::Malformed);
    }
    stats::backend(target.slot, packet::Xdp(ctx).len() as u64, target.new_flow);
    Rest::Done((Reason::Steered, forward::query(ctx, &pkt)))
}

/// The fast path's reply side; `None` leaves the packet to the stack and the
/// egress program, uncounted here.
#[inline(always)]
fn reply_in(ctx: &TcContext) -> Option<(Reason, i32)> {
    let client_ifindex = forward::enabled()?;
    let pkt = parse::headers(&packet::Tc(ctx)).ok()?;
    // Checked before the record is read: a FIN or RST acts on it once, and
    // an answer consumes its query's record.
    let word = forward::ttl_left(ctx, &pkt)?;
    let (addr, port) = asked(ctx, &pkt)?;
    if nat::to_service(ctx, &pkt, &addr, port).is_err() {
        return Some((Reason::Malformed, TC_ACT_OK));
    }
    Some((
        Reason::ReplyRewritten,
        forward::reply(ctx, &pkt, word, client_ifindex),
    ))
}

#[inline(never)]
fn reply(skb: *mut __sk_buff) -> Rest<Option<Reason>> {
    let ctx = &TcContext::new(skb);
    // Anything that is not a well-formed IPv4 or IPv6 UDP or TCP packet, a
    // fragment of one, or an ICMP error about one is not a reply of ours and
    // is not counted here: egress carries all of the node's traffic.
    let p = packet::Tc(ctx);
    let pkt = match parse::headers(&p) {
        Ok(pkt) => pkt,
        Err(Skip::NotUdpOrTcp) => return Rest::Icmp,
        Err(Skip::Fragment | Skip::Ipv6Ext) => return Rest::Fragment,
        Err(_) => return Rest::Done(None),
    };
    let Some((addr, port)) = asked(ctx, &pkt) else {
        return Rest::Done(select::backend_source(&pkt).then_some(Reason::ReplyNoFlow));
    };
    Rest::Done(Some(match nat::to_service(ctx, &pkt, &addr, port) {
        Ok(()) => Reason::ReplyRewritten,
        Err(_) => Reason::Malformed,
    }))
}

/// The service address and port a backend's packet must come from: a TCP
/// segment's from its connection's reply record, a UDP answer's from its
/// query's record, which the answer consumes.
#[inline(always)]
fn asked(ctx: &TcContext, pkt: &Headers) -> Option<(Addr, [u8; 2])> {
    if pkt.is_tcp() {
        let record = flow::reply(pkt)?;
        return Some((record.addr, record.port));
    }
    let (id, rcode) = parse::dns_id_rcode(&packet::Tc(ctx), pkt);
    let record = query::answer(pkt, id, rcode)?;
    Some((record.asked, record.asked_port))
}

/// An ICMP or ICMPv6 error arriving for a service address.
#[inline(always)]
fn icmp_in(ctx: *mut xdp_md) -> Option<Reason> {
    icmp_in4(ctx).or_else(|| icmp_in6(ctx))
}

#[inline(never)]
fn icmp_in4(ctx: *mut xdp_md) -> Option<Reason> {
    icmp::to_backend4(&XdpContext::new(ctx))
}

#[inline(never)]
fn icmp_in6(ctx: *mut xdp_md) -> Option<Reason> {
    icmp::to_backend6(&XdpContext::new(ctx))
}

/// An ICMP or ICMPv6 error leaving for a client.
#[inline(always)]
fn icmp_out(skb: *mut __sk_buff) -> Option<Reason> {
    icmp_out4(skb).or_else(|| icmp_out6(skb))
}

#[inline(never)]
fn icmp_out4(skb: *mut __sk_buff) -> Option<Reason> {
    icmp::error4(&TcContext::new(skb))
}

#[inline(never)]
fn icmp_out6(skb: *mut __sk_buff) -> Option<Reason> {
    icmp::error6(&TcContext::new(skb))
}

/// A fragment leaving for a client.
#[inline(never)]
fn fragment_out(skb: *mut __sk_buff) -> Option<Reason> {
    let ctx = TcContext::new(skb);
    let frag = parse::fragment(&packet::Tc(&ctx))?;
    fragment::reply(&ctx, &frag)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
