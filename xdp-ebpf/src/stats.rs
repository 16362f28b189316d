//! Per-CPU counters: plain adds, no atomics, summed by userspace.

use xdp_common::Reason;

use crate::maps::{BACKEND_STATS, REASONS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(counter) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: this CPU's slot; the program is not re-entered on one CPU.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn backend(slot: u32, bytes: u64) {
    if let Some(counter) = BACKEND_STATS.get_ptr_mut(slot) {
        // SAFETY: as above.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
