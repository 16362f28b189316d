//! Flow affinity: the first packet of a flow picks a backend, every later one
//! follows it; and, for TCP, the reply finds the address the client asked.
//!
//! A TCP connection has two `FLOWS` records, written when its SYN is steered:
//! the query record (client -> service address, naming the backend) and the
//! reply record (backend -> client, naming the service address). A UDP flow
//! (a client port asking a service address) has one `AFFINITY` record naming
//! its backend; its answers are translated from per-query records instead
//! (`query.rs`), so losing an affinity record costs only a new pick. A record
//! is kept while its backend exists and the flow is not idle for longer than
//! its protocol's timeout; otherwise the next packet is balanced as a new flow,
//! as iptables' `--state NEW` did. TCP flows start only at a SYN, a FIN
//! shortens the record's life to the closing timeout, and an RST ends it at once.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::LruHashMap,
};
use xdp_common::{
    Addr, FLOW_CLOSING, FlowEvent, FlowKey, FlowSettings, FlowValue, PROTO_TCP, Reason, direction,
    parse::{Headers, tcp},
    same_addr,
};

use crate::{
    maps::{AFFINITY, BACKENDS, FLOW_SETTINGS, FLOWS},
    select, stats,
};

/// Where a query goes.
pub struct Target {
    pub slot: u32,
    pub addr: Addr,
    pub port: [u8; 2],
    /// The packet started a new flow.
    pub new_flow: bool,
}

/// The backend for this query: its flow's while that is usable, else a new pick.
#[inline(always)]
pub fn query(pkt: &Headers, service: u32, now: u64) -> Result<Target, Reason> {
    if pkt.is_tcp() {
        tcp_query(pkt, service, now)
    } else {
        udp_query(pkt, service, now)
    }
}

/// A UDP query follows its flow's `AFFINITY` record while that is usable.
#[inline(always)]
fn udp_query(pkt: &Headers, service: u32, now: u64) -> Result<Target, Reason> {
    let key = query_key(pkt);
    let record = AFFINITY.get_ptr_mut(key);
    if let Some(record) = record {
        // SAFETY: a pointer into the map's value, valid for this program run.
        let value = unsafe { *record };
        match stale(&value, pkt, now) {
            None => {
                stats::flow(FlowEvent::Hit);
                unsafe { (*record).last_seen = now };
                return Ok(Target {
                    slot: value.slot,
                    addr: value.addr,
                    port: value.port,
                    new_flow: false,
                });
            }
            Some(event) => stats::flow(event),
        }
    } else {
        stats::flow(FlowEvent::Miss);
    }
    let (slot, backend) = select::backend(service, pkt.ipv6).ok_or(Reason::NoBackend)?;
    let value = FlowValue::new(now, backend.addr, backend.port, slot);
    insert(&AFFINITY, &key, &value, record.is_none());
    Ok(Target {
        slot,
        addr: backend.addr,
        port: backend.port,
        new_flow: true,
    })
}

/// A TCP segment follows its connection's `FLOWS` record; only a SYN opens one.
#[inline(always)]
fn tcp_query(pkt: &Headers, service: u32, now: u64) -> Result<Target, Reason> {
    let key = query_key(pkt);
    let record = FLOWS.get_ptr_mut(key);
    if let Some(record) = record {
        // SAFETY: a pointer into the map's value, valid for this program run;
        // copied at once, then updated field by field (aligned stores).
        let value = unsafe { *record };
        match stale(&value, pkt, now) {
            None => {
                stats::flow(FlowEvent::Hit);
                unsafe { (*record).last_seen = now };
                let reply = reply_key(pkt, value.addr, value.port);
                if pkt.tcp_flags & tcp::RST != 0 {
                    forget(&key);
                    forget(&reply);
                } else {
                    if pkt.tcp_flags & tcp::FIN != 0 {
                        unsafe { (*record).flags |= FLOW_CLOSING };
                    }
                    answer_as(&reply, pkt, value.slot, now);
                }
                return Ok(Target {
                    slot: value.slot,
                    addr: value.addr,
                    port: value.port,
                    new_flow: false,
                });
            }
            Some(event) => stats::flow(event),
        }
    } else {
        stats::flow(FlowEvent::Miss);
    }
    // A TCP segment without its flow belongs to a connection dnsteer did not
    // open: no backend has it, so it is not worth creating state for.
    if !pkt.is_syn() {
        return Err(Reason::TcpNoFlow);
    }
    let (slot, backend) = select::backend(service, pkt.ipv6).ok_or(Reason::NoBackend)?;
    // Both records are written before the rewrite, so the answer can never
    // overtake its reply record.
    let query = FlowValue::new(now, backend.addr, backend.port, slot);
    insert(&FLOWS, &key, &query, record.is_none());
    let reply = FlowValue::new(now, pkt.dst, pkt.dport, slot);
    insert(
        &FLOWS,
        &reply_key(pkt, backend.addr, backend.port),
        &reply,
        true,
    );
    Ok(Target {
        slot,
        addr: backend.addr,
        port: backend.port,
        new_flow: true,
    })
}

/// The service address a backend's TCP segment must appear to come from, if
/// it belongs to a connection dnsteer steered.
#[inline(always)]
pub fn reply(pkt: &Headers) -> Option<FlowValue> {
    let key = FlowKey::new(
        (pkt.src, pkt.sport),
        (pkt.dst, pkt.dport),
        pkt.proto,
        direction::REPLY,
    );
    // SAFETY: copied out at once.
    let value = unsafe { FLOWS.get(key) }.copied()?;
    if pkt.tcp_flags & (tcp::FIN | tcp::RST) != 0 {
        // The query record, as the client's packets key it.
        let query = FlowKey::new(
            (pkt.dst, pkt.dport),
            (value.addr, value.port),
            pkt.proto,
            direction::QUERY,
        );
        // Only while the client's flow still goes to this backend: a late FIN or
        // RST from a backend the flow has since left must not end the new one.
        if let Some(record) = FLOWS.get_ptr_mut(query) {
            // SAFETY: reads and a byte store into the map's value.
            let ours =
                unsafe { same_addr(&(*record).addr, &pkt.src) && (*record).port == pkt.sport };
            if ours && pkt.tcp_flags & tcp::RST != 0 {
                forget(&query);
            } else if ours {
                unsafe { (*record).flags |= FLOW_CLOSING };
            }
        }
        if pkt.tcp_flags & tcp::RST != 0 {
            forget(&key);
        }
    }
    Some(value)
}

/// The service address the client asked, from the reply record of the TCP
/// connection between `backend` and `client`; a lookup only, for ICMP errors
/// about it.
#[inline(always)]
pub fn asked(backend: (Addr, [u8; 2]), client: (Addr, [u8; 2])) -> Option<FlowValue> {
    let key = FlowKey::new(backend, client, PROTO_TCP, direction::REPLY);
    // SAFETY: copied out at once.
    unsafe { FLOWS.get(key) }.copied()
}

/// The backend a flow from `client` to the service address `asked` goes to,
/// from its TCP query record or UDP affinity record; a lookup only, for ICMP
/// errors about its answers.
#[inline(always)]
pub fn backend_of(client: (Addr, [u8; 2]), asked: (Addr, [u8; 2]), proto: u8) -> Option<FlowValue> {
    let key = FlowKey::new(client, asked, proto, direction::QUERY);
    // SAFETY: copied out at once.
    if proto == PROTO_TCP {
        unsafe { FLOWS.get(key) }.copied()
    } else {
        unsafe { AFFINITY.get(key) }.copied()
    }
}

/// Makes sure the connection's reply record names the address this segment asked.
///
/// It may not: a client that reuses its port for another service address
/// sharing this backend overwrote it (the reply 5-tuple is the same), or the
/// LRU evicted it. Then the reply would leave from the wrong address; rewrite it.
#[inline(always)]
fn answer_as(reply: &FlowKey, pkt: &Headers, slot: u32, now: u64) {
    if let Some(record) = FLOWS.get_ptr_mut(reply) {
        // SAFETY: a read of the map's value, valid for this program run.
        let (addr, port) = unsafe { ((*record).addr, (*record).port) };
        if same_addr(&addr, &pkt.dst) && port == pkt.dport {
            return;
        }
    }
    insert(
        &FLOWS,
        reply,
        &FlowValue::new(now, pkt.dst, pkt.dport, slot),
        true,
    );
}

/// Why a query record may not be followed, or `None` when it may.
#[inline(always)]
fn stale(value: &FlowValue, pkt: &Headers, now: u64) -> Option<FlowEvent> {
    let Some(backend) = BACKENDS.get(value.slot) else {
        return Some(FlowEvent::BackendGone);
    };
    // The address check catches a slot reused for another backend.
    if !backend.keeps_flows()
        || !same_addr(&backend.addr, &value.addr)
        || backend.port != value.port
    {
        return Some(FlowEvent::BackendGone);
    }
    let settings = FLOW_SETTINGS
        .get(0)
        .copied()
        .unwrap_or(FlowSettings::default());
    let closing = value.flags & FLOW_CLOSING != 0;
    let idle = if !pkt.is_tcp() {
        settings.udp_idle_ns
    } else if closing {
        settings.tcp_closing_ns
    } else {
        settings.tcp_idle_ns
    };
    // A SYN on a closed flow's ports is a new connection.
    if now.wrapping_sub(value.last_seen) > idle || (closing && pkt.is_syn()) {
        return Some(FlowEvent::Expired);
    }
    None
}

#[inline(always)]
fn reply_key(pkt: &Headers, backend_addr: Addr, backend_port: [u8; 2]) -> FlowKey {
    FlowKey::new(
        (backend_addr, backend_port),
        (pkt.src, pkt.sport),
        pkt.proto,
        direction::REPLY,
    )
}

/// Writes a record into `table` (`FLOWS` or `AFFINITY`), counting it as
/// inserted only when its key was new, so userspace can derive LRU evictions
/// from inserted - deleted - present.
#[inline(always)]
fn insert(
    table: &LruHashMap<FlowKey, FlowValue>,
    key: &FlowKey,
    value: &FlowValue,
    maybe_new: bool,
) {
    if maybe_new && table.insert(key, value, BPF_NOEXIST as u64).is_ok() {
        stats::flow(FlowEvent::Inserted);
        return;
    }
    // An LRU map evicts instead of failing when full (or another CPU raced
    // this one to the key); an error here would only cost this flow its
    // affinity, not worth dropping the packet for.
    let _ = table.insert(key, value, BPF_ANY as u64);
}

/// The key of the packet's flow as its queries see it: client to service address.
#[inline(always)]
fn query_key(pkt: &Headers) -> FlowKey {
    FlowKey::new(
        (pkt.src, pkt.sport),
        (pkt.dst, pkt.dport),
        pkt.proto,
        direction::QUERY,
    )
}

#[inline(always)]
fn forget(key: &FlowKey) {
    if FLOWS.remove(key).is_ok() {
        stats::flow(FlowEvent::Deleted);
    }
}
