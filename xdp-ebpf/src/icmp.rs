//! ICMP errors about steered flows, translated like their replies (IPv4 only:
//! ICMPv6 errors about IPv6 flows leave untranslated).
//!
//! A backend that cannot take a steered query (port unreachable), or a router
//! on the way to it (fragmentation needed, time exceeded), reports it to the
//! client with an ICMP error that quotes the query as it was forwarded: client
//! to backend. On egress the quote's destination is set back to the service
//! address and port the client asked, from the flow's reply record, so that
//! the client's stack finds the socket it belongs to.
//!
//! The outer source becomes the service address too, whoever sent the error,
//! as netfilter's DNAT (`nf_nat_icmp_reply_translation`, what the iptables rules
//! dnsteer replaces do) and IPVS (`ip_vs_nat_icmp`) do: the client matches an
//! error by its quote alone, and a router's address (often private) would
//! show the network behind the node and be dropped by anti-spoofing filters.
//!
//! Checksums are updated with RFC 1624 arithmetic (`xdp_common::csum`) and
//! stored as they are: IPv4 header checksums and ICMP's (no pseudo-header) are
//! never CHECKSUM_PARTIAL, a locally made error is complete (`icmp_push_reply`)
//! and forwarding drops CHECKSUM_COMPLETE (`skb_forward_csum`), so the fields
//! hold plain numbers, unlike a reply's UDP or TCP checksum (see `nat.rs`).

use aya_ebpf::{cty::c_long, programs::TcContext};
use xdp_common::{
    Reason, csum, ipv4_mapped, ipv4_of, is_ipv4_mapped,
    parse::{self, IcmpError4, icmp, ipv4, udp},
};

use crate::{flow, packet};

/// Translates an ICMP error about a steered flow. Anything else, an error about
/// a flow without a record included, is left alone and not counted.
#[inline(always)]
pub fn error(ctx: &TcContext) -> Option<Reason> {
    let error = parse::icmp_error4(&packet::Tc(ctx)).ok()?;
    let quoted = &error.quoted;
    // The quote goes client -> backend: the reply record's key turned around.
    let asked = flow::asked(
        (ipv4_mapped(quoted.dst), quoted.dport),
        (ipv4_mapped(quoted.src), quoted.sport),
        quoted.proto,
    )?;
    // An IPv4 flow's record names an IPv4 address; anything else is not ours to use.
    if !is_ipv4_mapped(&asked.addr) {
        return None;
    }
    Some(
        match to_service(ctx, &error, ipv4_of(&asked.addr), asked.port) {
            Ok(()) => Reason::IcmpRewritten,
            Err(_) => Reason::Malformed,
        },
    )
}

/// Points the quote back at `addr:port` and sends the error from `addr`.
#[inline(always)]
fn to_service(
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
    // The quoted UDP or TCP checksum stays as the backend got it, as in IPVS and
    // Katran: TCP's is past the 8 bytes an error must quote, and no stack checks it.
    ctx.store(quoted.l4 + udp::DPORT, &port, 0)?;
    ctx.store(error.icmp + icmp::CHECK, &icmp_check.to_be_bytes(), 0)?;
    Ok(())
}
