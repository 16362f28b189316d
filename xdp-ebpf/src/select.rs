//! Which service a packet is for, and which of its backends a new flow gets.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use xdp_common::{
    Backend, Endpoint, RING_SIZE, SelectMode, backend_slot, backend_state, parse::Headers4,
    ring_key, select,
};

use crate::maps::{
    ACTIVE_RING, BACKEND_SOURCES, BACKENDS, NTH_STATE, RINGS, SERVICE_CONF, SERVICES,
};

/// The service listening on the packet's destination: the exact address first,
/// then a `*` listen on the same port and protocol. A service the loader is
/// tearing down (`in_use` cleared) is not one.
#[inline(always)]
pub fn service(pkt: &Headers4) -> Option<u32> {
    let exact = Endpoint::new(pkt.dst, pkt.dport, pkt.proto);
    let any = Endpoint::new([0; 4], pkt.dport, pkt.proto);
    // SAFETY: ids are plain u32s copied out at once.
    let id = unsafe { SERVICES.get(exact).or_else(|| SERVICES.get(any)).copied() }?;
    (SERVICE_CONF.get(id)?.in_use != 0).then_some(id)
}

/// The backend for a new flow of `service`, and its slot.
///
/// The generation index is read once; the ring it names is never written
/// while a program may still be reading it (the loader waits an RCU grace
/// period before reusing a generation), so the whole pick sees one backend set.
#[inline(always)]
pub fn backend(service: u32) -> Option<(u32, Backend)> {
    let generation = *ACTIVE_RING.get(service)?;
    let ring = RINGS.get(ring_key(service, generation))?;
    let n = ring.len;
    if n > RING_SIZE {
        return None;
    }
    let index = if ring.select == SelectMode::Random as u32 {
        // SAFETY: a plain helper call with no arguments.
        select::random(unsafe { bpf_get_prandom_u32() }, n)?
    } else {
        let cursor = NTH_STATE.get_ptr_mut(service)?;
        // SAFETY: per-CPU slot: nothing else touches it while this program runs here.
        let (index, next) = select::nth(unsafe { *cursor }, n)?;
        unsafe { *cursor = next };
        index
    };
    let local = *ring.slots.get(index as usize)?;
    let slot = backend_slot(service, local as u32);
    let backend = *BACKENDS.get(slot)?;
    // The ring only names active backends; this guards against a loader bug.
    (backend.state == backend_state::ACTIVE).then_some((slot, backend))
}

/// Whether the packet's source is a backend, i.e. whether it may be an answer.
#[inline(always)]
pub fn backend_source(pkt: &Headers4) -> bool {
    let source = Endpoint::new(pkt.src, pkt.sport, pkt.proto);
    BACKEND_SOURCES.get_ptr(source).is_some()
}
