//! Which service a packet is for, and which of its backends gets it.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use xdp_common::{
    Backend, Endpoint, MAX_BACKENDS_PER_SERVICE, PROTO_UDP, SelectMode, backend_slot, parse::Udp4,
    select,
};

use crate::maps::{BACKEND_SOURCES, BACKENDS, NTH_STATE, SERVICE_CONF, SERVICES};

/// The service listening on the packet's destination: the exact address first,
/// then a `*` listen on the same port.
#[inline(always)]
pub fn service(udp: &Udp4) -> Option<u32> {
    let exact = Endpoint::new(udp.dst, udp.dport, PROTO_UDP);
    let any = Endpoint::new([0; 4], udp.dport, PROTO_UDP);
    // SAFETY: ids are plain u32s copied out at once.
    unsafe { SERVICES.get(exact).or_else(|| SERVICES.get(any)).copied() }
}

/// The backend for one packet of `service`, and its slot (for its counters).
#[inline(always)]
pub fn backend(service: u32) -> Option<(u32, Backend)> {
    let conf = SERVICE_CONF.get(service)?;
    let n = conf.backend_count;
    if n > MAX_BACKENDS_PER_SERVICE {
        return None;
    }
    let index = if conf.select == SelectMode::Random as u32 {
        // SAFETY: a plain helper call with no arguments.
        select::random(unsafe { bpf_get_prandom_u32() }, n)?
    } else {
        let cursor = NTH_STATE.get_ptr_mut(service)?;
        // SAFETY: per-CPU slot: nothing else touches it while this program runs here.
        let (index, next) = select::nth(unsafe { *cursor }, n)?;
        unsafe { *cursor = next };
        index
    };
    let slot = backend_slot(service, index);
    Some((slot, *BACKENDS.get(slot)?))
}

/// Whether the packet's source is a backend, i.e. whether it may be an answer.
#[inline(always)]
pub fn backend_source(udp: &Udp4) -> Option<()> {
    let source = Endpoint::new(udp.src, udp.sport, PROTO_UDP);
    BACKEND_SOURCES.get_ptr(source).map(|_| ())
}
