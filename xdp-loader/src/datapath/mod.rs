//! The kernel side as userspace sees it: the compiled object, loading it,
//! attaching and pinning its programs, adopting a persistent data path, and
//! the map store, the only code that writes the maps.

mod attach;
pub mod caps;
pub mod expiry;
mod lifecycle;
pub mod maps;
pub mod memory;
pub mod pins;
pub mod route;
pub mod sockdiag;
pub mod sockets;
pub mod uplink;

pub use lifecycle::Datapath;

/// The compiled kernel side (both programs and their maps), built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf"));

/// The XDP program's name in `EBPF_OBJECT`.
pub const XDP_PROGRAM: &str = "dnsteer_steer";
/// The TC egress program's name in `EBPF_OBJECT`.
pub const TC_PROGRAM: &str = "dnsteer_reply";
/// The fast path's TC ingress program's name in `EBPF_OBJECT`.
pub const REPLY_IN_PROGRAM: &str = "dnsteer_reply_in";
