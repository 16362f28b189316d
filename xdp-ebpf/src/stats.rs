//! Per-CPU counters: plain adds, no atomics, summed by userspace; and each
//! backend's queries in flight, the one count all CPUs share.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use xdp_common::{FlowEvent, ForwardEvent, QueryEvent, Reason, latency_bucket, rcode_class};

use crate::maps::{
    BACKEND_DNS, BACKEND_STATS, FLOW_EVENTS, FORWARD_EVENTS, OUTSTANDING, QUERY_EVENTS, REASONS,
};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(counter) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: this CPU's slot; the program is not re-entered on one CPU.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn flow(event: FlowEvent) {
    if let Some(counter) = FLOW_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: as above.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn query(event: QueryEvent) {
    if let Some(counter) = QUERY_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: as above.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn forward(event: ForwardEvent) {
    if let Some(counter) = FORWARD_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: as above.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn backend(slot: u32, bytes: u64, new_flow: bool) {
    if let Some(counter) = BACKEND_STATS.get_ptr_mut(slot) {
        // SAFETY: as above.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
            (*counter).new_flows += new_flow as u64;
        }
    }
}

/// A query record written for the backend in `slot`.
#[inline(always)]
pub fn dns_query(slot: u32) {
    if let Some(counter) = BACKEND_DNS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot, as above.
        unsafe { (*counter).queries += 1 };
    }
    outstanding(slot, 1);
}

/// An answer from the backend in `slot`, `latency_ns` after its query, with `rcode`.
#[inline(always)]
pub fn dns_answer(slot: u32, latency_ns: u64, rcode: u8) {
    if let Some(counter) = BACKEND_DNS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot, as above. Both indices are in bounds by
        // construction; `get_mut` keeps the verifier sure of it.
        unsafe {
            (*counter).answers += 1;
            (*counter).latency_sum_ns += latency_ns;
            if let Some(n) = (*counter).rcodes.get_mut(rcode_class::of(rcode)) {
                *n += 1;
            }
            if let Some(n) = (*counter).latency.get_mut(latency_bucket(latency_ns)) {
                *n += 1;
            }
        }
    }
    outstanding(slot, u64::MAX);
}

/// Adds `delta` (wrapping: `u64::MAX` is -1) to the backend's queries in flight.
#[inline(always)]
fn outstanding(slot: u32, delta: u64) {
    if let Some(counter) = OUTSTANDING.get_ptr_mut(slot) {
        // SAFETY: a u64 in the map's value, aligned; shared by all CPUs, so
        // changed with an atomic add (BPF_ATOMIC), its result unused.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, delta) };
    }
}
