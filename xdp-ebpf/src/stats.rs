//! Per-CPU counters: plain adds, no atomics, summed by userspace.

use xdp_common::{FlowEvent, ForwardEvent, QueryEvent, Reason};

use crate::maps::{BACKEND_STATS, FLOW_EVENTS, FORWARD_EVENTS, QUERY_EVENTS, REASONS};

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
