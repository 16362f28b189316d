//! ICMP and ICMPv6 errors about steered flows, translated both ways like the
//! packets they quote.
//!
//! **Towards the client** (TC egress, `error4`, `error6`): a backend that cannot take a
//! steered query (port unreachable), or a router on the way to it
//! (fragmentation needed, packet too big, time exceeded), reports it to the
//! client with an error that quotes the query as it was forwarded: client to
//! backend. The quote's destination is set back to the service address and
//! port the client asked (from the query's record: the TCP reply record, or
//! the UDP query record found with the DNS ID the quote carries), so that the
//! client's stack finds the socket it belongs to. The outer source becomes the
//! service address too, whoever sent the error, as netfilter's DNAT
//! (`nf_nat_icmp_reply_translation`) and IPVS (`ip_vs_nat_icmp`) do: the
//! client matches an error by its quote alone, and a router's address (often
//! private) would show the network behind the node.
//!
//! **Towards the backend** (XDP ingress, `to_backend4`, `to_backend6`): a router on the
//! client's side that cannot forward an answer (fragmentation needed, packet
//! too big) reports it to the service address, quoting the answer as it left:
//! service address to client. The outer destination and the quote's source are
//! set to the backend that sent the answer (from the flow's TCP query record
//! or UDP affinity record), so its path MTU discovery works through dnsteer.
//!
//! At XDP the rare errors are read and written through helper copies
//! (`packet::XdpCopy`): direct access at offsets the quote decides lets the
//! compiler merge bounds checks the verifier must see one by one, and three
//! addresses read byte by byte overflow the frame.
//!
//! Checksums are updated with RFC 1624 arithmetic (`xdp_common::csum`) and
//! stored as they are: IPv4 header checksums and ICMP's are never
//! CHECKSUM_PARTIAL, ICMPv6's is complete in a locally made error, and
//! forwarding drops CHECKSUM_COMPLETE (`skb_forward_csum`). ICMPv6's checksum
//! covers a pseudo-header with the outer addresses; ICMP's does not. The
//! quoted UDP or TCP checksum stays as it was, as in IPVS and Katran: TCP's is
//! past the 8 bytes an error must quote, and no stack checks it.

use aya_ebpf::{
    cty::c_long,
    programs::{TcContext, XdpContext},
};
use xdp_common::{
    Addr, PROTO_TCP, Reason, csum, ipv4_mapped, ipv4_of, is_ipv4_mapped,
    parse::{self, IcmpError4, IcmpError6, icmp, icmp6, ipv4, ipv6, udp},
    same_addr,
};

use crate::{flow, packet, query};

/// Translates an ICMP error about a steered IPv4 query towards the client.
/// Anything else, an error about a query without a record included, is left
/// alone and not counted.
#[inline(always)]
pub fn error4(ctx: &TcContext) -> Option<Reason> {
    let p = packet::Tc(ctx);
    let e = parse::icmp_error4(&p).ok()?;
    let q = &e.quoted;
    let (addr, port) = asked(
        &p,
        (ipv4_mapped(q.dst), q.dport),
        (ipv4_mapped(q.src), q.sport),
        q.proto,
        (q.l4, e.end),
    )?;
    // An IPv4 flow's record names an IPv4 address; anything else is not ours.
    if !is_ipv4_mapped(&addr) {
        return None;
    }
    Some(counted(to_client4(ctx, &e, ipv4_of(&addr), port)))
}

/// The same for an ICMPv6 error about a steered IPv6 query.
#[inline(always)]
pub fn error6(ctx: &TcContext) -> Option<Reason> {
    let p = packet::Tc(ctx);
    let e = parse::icmp_error6(&p).ok()?;
    let q = &e.quoted;
    let (addr, port) = asked(
        &p,
        (q.dst, q.dport),
        (q.src, q.sport),
        q.proto,
        (q.l4, e.end),
    )?;
    if is_ipv4_mapped(&addr) {
        return None;
    }
    Some(counted(to_client6(ctx, &e, &addr, port)))
}

#[inline(always)]
fn counted(translated: Result<(), c_long>) -> Reason {
    match translated {
        Ok(()) => Reason::IcmpRewritten,
        Err(_) => Reason::Malformed,
    }
}

/// The service address and port the client asked, for a query from `client`
/// steered to `backend`: the TCP connection's reply record, or the UDP
/// query's record, found with the DNS ID the quote (transport header at
/// `quote.0`, readable up to `quote.1`) carries.
#[inline(always)]
fn asked(
    p: &packet::Tc,
    backend: (Addr, [u8; 2]),
    client: (Addr, [u8; 2]),
    proto: u8,
    quote: (usize, usize),
) -> Option<(Addr, [u8; 2])> {
    if proto == PROTO_TCP {
        let record = flow::asked(backend, client)?;
        return Some((record.addr, record.port));
    }
    let id = parse::quoted_dns_id(p, quote.0, quote.1)?;
    let record = query::peek(backend, client, id)?;
    Some((record.asked, record.asked_port))
}

/// Points an ICMP error's quote back at `addr:port` and sends it from `addr`.
#[inline(always)]
fn to_client4(
    ctx: &TcContext,
    error: &IcmpError4,
    addr: [u8; 4],
    port: [u8; 2],
) -> Result<(), c_long> {
    let quoted = &error.quoted;
    let to = u32::from_be_bytes(addr);
    let outer_check = csum::replace32(
        u16::from_be_bytes(error.ip_check),
        u32::from_be_bytes(error.src),
        to,
    );
    let from = u32::from_be_bytes(quoted.dst);
    let quoted_check = u16::from_be_bytes(quoted.check);
    let new_quoted_check = csum::replace32(quoted_check, from, to);
    // The ICMP checksum covers the quote: every word changed in it changes it.
    let icmp_check = csum::replace32(u16::from_be_bytes(error.icmp_check), from, to);
    let icmp_check = csum::replace16(icmp_check, quoted_check, new_quoted_check);
    let icmp_check = csum::replace16(
        icmp_check,
        u16::from_be_bytes(quoted.dport),
        u16::from_be_bytes(port),
    );
    ctx.store(error.l3 + ipv4::SRC, &addr, 0)?;
    ctx.store(error.l3 + ipv4::CHECK, &outer_check.to_be_bytes(), 0)?;
    ctx.store(quoted.l3 + ipv4::DST, &addr, 0)?;
    ctx.store(quoted.l3 + ipv4::CHECK, &new_quoted_check.to_be_bytes(), 0)?;
    ctx.store(quoted.l4 + udp::DPORT, &port, 0)?;
    ctx.store(error.icmp + icmp::CHECK, &icmp_check.to_be_bytes(), 0)?;
    Ok(())
}

/// The same for ICMPv6, whose checksum also covers the outer source.
#[inline(always)]
fn to_client6(
    ctx: &TcContext,
    error: &IcmpError6,
    addr: &Addr,
    port: [u8; 2],
) -> Result<(), c_long> {
    let quoted = &error.quoted;
    let check = u16::from_be_bytes(error.icmp_check);
    let check = csum::replace128(check, &error.src, addr);
    let check = csum::replace128(check, &quoted.dst, addr);
    let check = csum::replace16(
        check,
        u16::from_be_bytes(quoted.dport),
        u16::from_be_bytes(port),
    );
    ctx.store(error.l3 + ipv6::SRC, addr, 0)?;
    ctx.store(quoted.l3 + ipv6::DST, addr, 0)?;
    ctx.store(quoted.l4 + udp::DPORT, &port, 0)?;
    ctx.store(error.icmp + icmp6::CHECK, &check.to_be_bytes(), 0)?;
    Ok(())
}

/// Translates an ICMP error about an IPv4 answer, sent to the service address
/// it came from, towards the backend that sent it. `None` for anything else
/// (left alone; the caller counts it as not for a service).
#[inline(always)]
pub fn to_backend4(ctx: &XdpContext) -> Option<Reason> {
    let e = parse::icmp_error4(&packet::XdpCopy(ctx)).ok()?;
    let q = &e.quoted;
    // The quote is the answer as it left: service address to client.
    if q.src != e.dst {
        return None;
    }
    let flow = flow::backend_of(
        (ipv4_mapped(q.dst), q.dport),
        (ipv4_mapped(q.src), q.sport),
        q.proto,
    )?;
    if !is_ipv4_mapped(&flow.addr) {
        return None;
    }
    rewrite_to_backend4(ctx, &e, ipv4_of(&flow.addr), flow.port)?;
    Some(Reason::IcmpToBackend)
}

/// The same for an ICMPv6 error about an IPv6 answer.
#[inline(always)]
pub fn to_backend6(ctx: &XdpContext) -> Option<Reason> {
    let e = parse::icmp_error6(&packet::XdpCopy(ctx)).ok()?;
    let q = &e.quoted;
    if !same_addr(&q.src, &e.dst) {
        return None;
    }
    let flow = flow::backend_of((q.dst, q.dport), (q.src, q.sport), q.proto)?;
    if is_ipv4_mapped(&flow.addr) {
        return None;
    }
    rewrite_to_backend6(ctx, &e, &flow.addr, flow.port)?;
    Some(Reason::IcmpToBackend)
}

#[inline(always)]
fn rewrite_to_backend4(
    ctx: &XdpContext,
    error: &IcmpError4,
    addr: [u8; 4],
    port: [u8; 2],
) -> Option<()> {
    let quoted = &error.quoted;
    let (from, to) = (u32::from_be_bytes(quoted.src), u32::from_be_bytes(addr));
    let outer_check = csum::replace32(u16::from_be_bytes(error.ip_check), from, to);
    let old_quoted = u16::from_be_bytes(quoted.check);
    let new_quoted = csum::replace32(old_quoted, from, to);
    let check = csum::replace32(u16::from_be_bytes(error.icmp_check), from, to);
    let check = csum::replace16(check, old_quoted, new_quoted);
    let check = csum::replace16(
        check,
        u16::from_be_bytes(quoted.sport),
        u16::from_be_bytes(port),
    );
    let p = packet::XdpCopy(ctx);
    p.store(error.l3 + ipv4::DST, &addr)?;
    p.store(error.l3 + ipv4::CHECK, &outer_check.to_be_bytes())?;
    p.store(quoted.l3 + ipv4::SRC, &addr)?;
    p.store(quoted.l3 + ipv4::CHECK, &new_quoted.to_be_bytes())?;
    p.store(quoted.l4 + udp::SPORT, &port)?;
    p.store(error.icmp + icmp::CHECK, &check.to_be_bytes())
}

#[inline(always)]
fn rewrite_to_backend6(
    ctx: &XdpContext,
    error: &IcmpError6,
    addr: &Addr,
    port: [u8; 2],
) -> Option<()> {
    let quoted = &error.quoted;
    let check = u16::from_be_bytes(error.icmp_check);
    let check = csum::replace128(check, &error.dst, addr);
    let check = csum::replace128(check, &quoted.src, addr);
    let check = csum::replace16(
        check,
        u16::from_be_bytes(quoted.sport),
        u16::from_be_bytes(port),
    );
    let p = packet::XdpCopy(ctx);
    p.store(error.l3 + ipv6::DST, addr)?;
    p.store(quoted.l3 + ipv6::SRC, addr)?;
    p.store(quoted.l4 + udp::SPORT, &port)?;
    p.store(error.icmp + icmp6::CHECK, &check.to_be_bytes())
}
