//! UDP queries in flight: the record an answer needs to leave from the address
//! the client asked.
//!
//! Each steered UDP query writes one `QUERIES` record keyed by what its answer
//! will carry (backend and client address and port, and the DNS message ID);
//! the answer reads it and deletes it. The table so holds only unanswered
//! queries, and a plain hash (not an LRU) guarantees that every one of them
//! keeps its record while fewer than `[flows] size` are in flight. When the
//! table is full the query still goes to its backend, without a record: counted
//! as `insert_failed`, its answer as `reply_no_flow`. Records nobody answered
//! are removed by the loader once older than the query timeout.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
};
use xdp_common::{Addr, QueryEvent, QueryKey, QueryValue, parse::Headers, same_addr};

use crate::{maps::QUERIES, stats};

/// `-EEXIST`: `BPF_NOEXIST` found the key present.
const EEXIST: i32 = -17;

/// Records the query `pkt` (DNS ID `id`) steered to `backend` at `now`, before
/// it is rewritten, so its answer can never overtake the record.
#[inline(always)]
pub fn track(pkt: &Headers, id: [u8; 2], backend: (Addr, [u8; 2]), slot: u32, now: u64) {
    let key = QueryKey::new(backend, (pkt.src, pkt.sport), id);
    let value = QueryValue {
        sent_ns: now,
        asked: pkt.dst,
        asked_port: pkt.dport,
        _pad: [0; 2],
        slot,
    };
    match QUERIES.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => {
            stats::query(QueryEvent::Inserted);
            stats::dns_query(slot);
        }
        Err(EEXIST) => {
            retransmitted(&key, &value);
            stats::query(QueryEvent::Retransmitted);
        }
        Err(_) => stats::query(QueryEvent::InsertFailed),
    }
}

/// The same question again from the same port: its record takes the latest
/// send time and, should it differ, the latest address asked (one port may ask
/// two addresses sharing a backend).
///
/// Nearly always only the time changes: that is one aligned store into the
/// record found by a lookup, where a map update takes the bucket's lock and
/// swaps in a new element. Anything else is rewritten whole by the update, so
/// an answer read on another CPU never sees half of an address.
#[inline(always)]
fn retransmitted(key: &QueryKey, value: &QueryValue) {
    if let Some(record) = QUERIES.get_ptr_mut(key) {
        // SAFETY: reads of the map's value, and an aligned u64 store into it,
        // valid for this program run.
        unsafe {
            let same = same_addr(&(*record).asked, &value.asked)
                && (*record).asked_port == value.asked_port
                && (*record).slot == value.slot;
            if same {
                (*record).sent_ns = value.sent_ns;
                return;
            }
        }
    }
    let _ = QUERIES.insert(key, value, BPF_ANY as u64);
}

/// The record of the query the UDP datagram `pkt` (DNS ID `id`, RCODE
/// `rcode`) answers, consumed: a second answer to one query finds nothing.
/// The answer is counted for its backend, with its latency.
#[inline(always)]
pub fn answer(pkt: &Headers, id: [u8; 2], rcode: u8) -> Option<QueryValue> {
    let key = QueryKey::new((pkt.src, pkt.sport), (pkt.dst, pkt.dport), id);
    // SAFETY: copied out at once.
    let value = unsafe { QUERIES.get(key) }.copied()?;
    // Counted only by the CPU whose delete took it, should two race.
    if QUERIES.remove(key).is_ok() {
        stats::query(QueryEvent::Answered);
        // SAFETY: a plain helper call with no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        stats::dns_answer(value.slot, now.saturating_sub(value.sent_ns), rcode);
    }
    Some(value)
}

/// The record of a query in flight, left in place: for ICMP errors about it.
#[inline(always)]
pub fn peek(backend: (Addr, [u8; 2]), client: (Addr, [u8; 2]), id: [u8; 2]) -> Option<QueryValue> {
    let key = QueryKey::new(backend, client, id);
    // SAFETY: copied out at once.
    unsafe { QUERIES.get(key) }.copied()
}
