//! Which service a packet is for, and which of its backends a new flow gets.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use xdp_common::{
    Addr, Backend, Endpoint, RING_SIZE, Ring, SelectMode, any_addr, backend_slot, backend_state,
    is_ipv4_mapped, parse::Headers, ring_key, select,
};

use crate::maps::{
    ACTIVE_RING, BACKEND_SOURCES, BACKENDS, NTH_STATE, OUTSTANDING, RINGS, SERVICE_CONF, SERVICES,
    TIMED_OUT,
};

/// The service listening on the packet's destination: the exact address first,
/// then a wildcard listen of the packet's family (`*` for IPv4, `[::]` for
/// IPv6) on the same port and protocol. A service the loader is tearing down
/// (`in_use` cleared) is not one.
#[inline(always)]
pub fn service(pkt: &Headers) -> Option<u32> {
    let exact = Endpoint::new(pkt.dst, pkt.dport, pkt.proto);
    let any = Endpoint::new(any_addr(pkt.ipv6), pkt.dport, pkt.proto);
    // SAFETY: ids are plain u32s copied out at once.
    let id = unsafe { SERVICES.get(exact).or_else(|| SERVICES.get(any)).copied() }?;
    (SERVICE_CONF.get(id)?.in_use != 0).then_some(id)
}

/// The service listening on exactly `addr`, `port` and `proto`: the socket
/// programs' lookup. A wildcard listen names the addresses packets arrive for
/// on the interface, not every address a local socket may send to, so it is
/// never one here.
#[inline(always)]
pub fn service_at(addr: Addr, port: [u8; 2], proto: u8) -> Option<u32> {
    // SAFETY: ids are plain u32s copied out at once.
    let id = unsafe { SERVICES.get(Endpoint::new(addr, port, proto)).copied() }?;
    (SERVICE_CONF.get(id)?.in_use != 0).then_some(id)
}

/// The backend for a new flow of `service` whose packets are IPv6 (`ipv6`) or
/// IPv4, and its slot.
///
/// The generation index is read once; the ring it names is never written
/// while a program may still be reading it (the loader waits an RCU grace
/// period before reusing a generation), so the whole pick sees one backend set.
#[inline(always)]
pub fn backend(service: u32, ipv6: bool) -> Option<(u32, Backend)> {
    let generation = *ACTIVE_RING.get(service)?;
    let ring = RINGS.get(ring_key(service, generation))?;
    let n = ring.len;
    if n > RING_SIZE {
        return None;
    }
    let index = if ring.select == SelectMode::Random as u32 {
        // SAFETY: a plain helper call with no arguments.
        select::random(unsafe { bpf_get_prandom_u32() }, n)?
    } else if ring.select == SelectMode::LeastOutstanding as u32 {
        least_outstanding(service, ring)?
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
    // The ring only names active backends of the service's one family (the
    // rewrite is in place: it cannot change the family); this guards against a
    // loader bug, and against the moment a reload that changes a service's
    // family has written its backends but not yet its listen entries.
    (backend.state == backend_state::ACTIVE && is_ipv4_mapped(&backend.addr) != ipv6)
        .then_some((slot, backend))
}

/// `least_outstanding`: of two ring entries drawn at random (so in
/// proportion to their weights) for two different backends, the one whose
/// backend has fewer UDP queries in flight for its weight; a tie goes to the
/// heavier backend, then to the first draw. The power of two choices
/// (Mitzenmacher; Envoy's LEAST_REQUEST, nginx's `random two least_conn`):
/// constant work per query, where a scan of every backend is a loop the
/// verifier cannot prune. The second draw is made again, up to
/// `REDRAWS` times, while it names the first's backend: a slow backend, its
/// queries piling up, then loses every comparison, rather than winning the
/// draws that name it twice (1/n² of them: too many for the 99th percentile).
#[inline(always)]
fn least_outstanding(service: u32, ring: &Ring) -> Option<u32> {
    const REDRAWS: usize = 3;
    let n = ring.len;
    // SAFETY: plain helper calls with no arguments.
    let first = select::random(unsafe { bpf_get_prandom_u32() }, n)?;
    let a = *ring.slots.get(first as usize)?;
    let mut second = select::random(unsafe { bpf_get_prandom_u32() }, n)?;
    let mut b = *ring.slots.get(second as usize)?;
    for _ in 0..REDRAWS {
        if b != a {
            break;
        }
        second = select::random(unsafe { bpf_get_prandom_u32() }, n)?;
        b = *ring.slots.get(second as usize)?;
    }
    let (load_a, weight_a) = load(service, a)?;
    let (load_b, weight_b) = load(service, b)?;
    // load / weight, compared without division.
    let (a, b) = (load_a * weight_b, load_b * weight_a);
    Some(if b < a || (b == a && weight_b > weight_a) {
        second
    } else {
        first
    })
}

/// A backend's UDP queries in flight (records written less answers, shared
/// and atomic, less the records the loader removed unanswered; a transient
/// below zero reads as none) and its weight (at least 1).
#[inline(always)]
fn load(service: u32, local: u8) -> Option<(u64, u64)> {
    let slot = backend_slot(service, local as u32);
    let weight = BACKENDS.get(slot)?.weight;
    let written = OUTSTANDING.get(slot).copied().unwrap_or(0);
    let timed_out = TIMED_OUT.get(slot).copied().unwrap_or(0);
    let load = written.wrapping_sub(timed_out);
    let load = if (load as i64) < 0 { 0 } else { load };
    Some((load, if weight == 0 { 1 } else { weight as u64 }))
}

/// Whether the packet's source is a backend, i.e. whether it may be an answer.
#[inline(always)]
pub fn backend_source(pkt: &Headers) -> bool {
    let source = Endpoint::new(pkt.src, pkt.sport, pkt.proto);
    BACKEND_SOURCES.get_ptr(source).is_some()
}
