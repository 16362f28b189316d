//! Socket-level steering for the node's own clients (cgroup v2 `sock_addr`
//! hooks, as Cilium's socket load balancer): a query from a process on the
//! node never crosses the interface's XDP hook, so the backend is chosen
//! before a packet exists, at `connect()` or per unconnected `sendmsg()`, from
//! the same rings, weights and health as the XDP path. `recvmsg()` and
//! `getpeername()` hand back the service address, so a resolver sees its
//! answer come from the address it asked.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie};
use xdp_common::{
    Addr, Endpoint, PROTO_TCP, PROTO_UDP, SockKey, ipv4_mapped, ipv4_of, is_ipv4_mapped,
};

use crate::{
    maps::{SOCK_REVERSE, SOCK_STATS},
    select,
};

/// What the hooks return to let the call go on.
const ALLOW: i32 = 1;

/// Which call a choice was made for, for `SOCK_STATS`.
#[derive(Clone, Copy)]
enum Call {
    Sendmsg,
    ConnectUdp,
    ConnectTcp,
}

/// The destination the socket asked for, from the hook's context.
#[inline(always)]
fn destination<const IPV6: bool>(ctx: *mut bpf_sock_addr) -> (Addr, [u8; 2]) {
    // SAFETY: `ctx` is the hook's context; these fields are readable in
    // every sock_addr hook, as 32-bit loads.
    unsafe {
        let addr = if IPV6 {
            [
                (*ctx).user_ip6[0],
                (*ctx).user_ip6[1],
                (*ctx).user_ip6[2],
                (*ctx).user_ip6[3],
            ]
        } else {
            ipv4_mapped((*ctx).user_ip4.to_ne_bytes())
        };
        (addr, ((*ctx).user_port as u16).to_ne_bytes())
    }
}

/// Rewrites the context's address and port (the kernel's copy of the
/// caller's `sockaddr`).
#[inline(always)]
fn set_destination<const IPV6: bool>(ctx: *mut bpf_sock_addr, addr: &Addr, port: [u8; 2]) {
    // SAFETY: as above; these fields are writable in every sock_addr hook.
    unsafe {
        if IPV6 {
            (*ctx).user_ip6[0] = addr[0];
            (*ctx).user_ip6[1] = addr[1];
            (*ctx).user_ip6[2] = addr[2];
            (*ctx).user_ip6[3] = addr[3];
        } else {
            (*ctx).user_ip4 = u32::from_ne_bytes(ipv4_of(addr));
        }
        (*ctx).user_port = u16::from_ne_bytes(port) as u32;
    }
}

/// `connect()` (UDP or TCP) or an unconnected UDP `sendmsg()` to a service
/// address: sent to a backend the service's `select` draws, remembered per
/// socket for the way back.
#[inline(always)]
fn steer<const IPV6: bool>(ctx: *mut bpf_sock_addr, call: Option<Call>) -> i32 {
    // SAFETY: readable in every sock_addr hook.
    let protocol = unsafe { (*ctx).protocol } as u8;
    let call = match (call, protocol) {
        (Some(call), PROTO_UDP) => call,
        (None, PROTO_UDP) => Call::ConnectUdp,
        (None, PROTO_TCP) => Call::ConnectTcp,
        _ => return ALLOW,
    };
    let (addr, port) = destination::<IPV6>(ctx);
    let Some(service) = select::service_at(addr, port, protocol) else {
        return ALLOW;
    };
    // An IPv6 socket asking for an IPv4-mapped address reaches IPv4 backends.
    let Some((slot, backend)) = select::backend(service, !is_ipv4_mapped(&addr)) else {
        return ALLOW;
    };
    // SAFETY: a helper every sock_addr hook may call with its context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.cast()) };
    let key = SockKey::new(cookie, backend.addr, backend.port);
    // Without the record the answer would come from the backend's address,
    // which a resolver drops: no record, no rewrite (the query goes to the
    // service address and finds no one, as it did before dnsteer).
    if SOCK_REVERSE
        .insert(&key, &Endpoint::new(addr, port, protocol), 0)
        .is_err()
    {
        return ALLOW;
    }
    set_destination::<IPV6>(ctx, &backend.addr, backend.port);
    count(slot, call);
    ALLOW
}

/// `recvmsg()` or `getpeername()` on a socket the hooks above sent to a
/// backend: the backend's address becomes the service's.
#[inline(always)]
fn reverse<const IPV6: bool>(ctx: *mut bpf_sock_addr) -> i32 {
    let (addr, port) = destination::<IPV6>(ctx);
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.cast()) };
    // SAFETY: the value is copied out at once.
    if let Some(asked) = unsafe { SOCK_REVERSE.get(&SockKey::new(cookie, addr, port)) }.copied() {
        set_destination::<IPV6>(ctx, &asked.addr, asked.port);
    }
    ALLOW
}

#[inline(always)]
fn count(slot: u32, call: Call) {
    let Some(counter) = SOCK_STATS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a pointer into the map's value, shared by all CPUs: atomic adds.
    unsafe {
        let field = match call {
            Call::Sendmsg => &raw mut (*counter).sendmsg,
            Call::ConnectUdp => &raw mut (*counter).connect_udp,
            Call::ConnectTcp => &raw mut (*counter).connect_tcp,
        };
        atomic_xadd::<_, _, { AtomicOrdering::Relaxed }>(field, 1u64);
    }
}

// The family is a constant of each hook: a branch on it at run time lets the
// compiler compute a context field's offset, and the verifier refuses a load
// through a modified context pointer.

/// `connect()` of an IPv6 (`IPV6`) or IPv4 socket.
#[inline(always)]
pub fn connect<const IPV6: bool>(ctx: *mut bpf_sock_addr) -> i32 {
    steer::<IPV6>(ctx, None)
}

/// An unconnected `sendmsg()`.
#[inline(always)]
pub fn sendmsg<const IPV6: bool>(ctx: *mut bpf_sock_addr) -> i32 {
    steer::<IPV6>(ctx, Some(Call::Sendmsg))
}

/// `recvmsg()` and `getpeername()`.
#[inline(always)]
pub fn reverse_of<const IPV6: bool>(ctx: *mut bpf_sock_addr) -> i32 {
    reverse::<IPV6>(ctx)
}
