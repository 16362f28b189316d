//! Fragmented UDP answers (a large answer to a client that advertised a large
//! EDNS buffer), IPv4 and IPv6.
//!
//! The node forwards fragments as they come (nothing reassembles them without
//! conntrack), so each reaches the egress program on its own. The first one
//! carries the UDP header and the DNS ID: it is translated from its query's
//! record like a whole answer (the UDP checksum covers the whole datagram, but
//! an incremental update needs only the fields that change, all of which are
//! in the first fragment). It then leaves a `FRAGMENTS` record, keyed by what
//! later fragments carry (source, destination, fragment ID), naming the new
//! source, as Cilium's `IPV4_FRAG_DATAGRAMS_MAP` does for ports. A later
//! fragment that arrives before its first one finds no record and leaves
//! untranslated (counted as `fragment_unmatched`).

use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use xdp_common::{
    FragmentKey, FragmentValue, PROTO_UDP, QueryEvent, Reason,
    parse::{DNS_ID_LEN, Fragment, Headers, UDP_HLEN},
};

use crate::{maps::FRAGMENTS, nat, query, select, stats};

/// Translates a fragment of a backend's answer: `None` for a fragment that is
/// not one (left alone, uncounted unless it is a later fragment without its
/// first).
#[inline(always)]
pub fn reply(ctx: &TcContext, frag: &Fragment) -> Option<Reason> {
    if frag.proto != PROTO_UDP {
        return None;
    }
    let key = FragmentKey {
        src: frag.src,
        dst: frag.dst,
        id: frag.id,
        proto: frag.proto,
        _pad: [0; 3],
    };
    if !frag.first {
        // SAFETY: copied out at once.
        let Some(record) = (unsafe { FRAGMENTS.get(key) }).copied() else {
            stats::query(QueryEvent::FragmentUnmatched);
            return None;
        };
        return Some(match nat::fragment_to_service(ctx, frag, &record.src) {
            Ok(()) => Reason::ReplyFragment,
            Err(_) => Reason::Malformed,
        });
    }
    // The UDP header, the DNS ID and flags (with the RCODE).
    if frag.payload < UDP_HLEN + DNS_ID_LEN + 2 {
        return None;
    }
    let head: [u8; UDP_HLEN + DNS_ID_LEN + 2] = ctx.load(frag.l4).ok()?;
    let pkt = Headers {
        l3: frag.l3,
        l4: frag.l4,
        ipv6: frag.ipv6,
        proto: PROTO_UDP,
        tcp_flags: 0,
        src: frag.src,
        dst: frag.dst,
        sport: [head[0], head[1]],
        dport: [head[2], head[3]],
    };
    let (id, rcode) = (
        [head[UDP_HLEN], head[UDP_HLEN + 1]],
        head[UDP_HLEN + 3] & 0x0f,
    );
    let Some(asked) = query::answer(&pkt, id, rcode) else {
        return select::backend_source(&pkt).then_some(Reason::ReplyNoFlow);
    };
    if nat::to_service(ctx, &pkt, &asked.asked, asked.asked_port).is_err() {
        return Some(Reason::Malformed);
    }
    let record = FragmentValue { src: asked.asked };
    // An LRU: a full table evicts the oldest datagram, long since complete.
    let _ = FRAGMENTS.insert(key, record, BPF_ANY as u64);
    Some(Reason::ReplyRewritten)
}
