//! dnsteer's userspace: configuration, the live backend state and how it reaches
//! the maps, the running instance (persistent or not), its control socket,
//! health probes, stats and Prometheus metrics.
//!
//! The binary (`src/main.rs`) is a thin CLI over these modules; the tests crate
//! uses them directly to load the same object and fill maps the same way.

pub mod caps;
pub mod config;
pub mod control;
pub mod expiry;
pub mod health;
pub mod kubernetes;
pub mod live;
pub mod maps;
pub mod metrics;
pub mod pins;
pub mod probe;
pub mod route;
pub mod run;
pub mod stats;

/// The compiled kernel side (both programs and their maps), built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf"));

/// The XDP program's name in `EBPF_OBJECT`.
pub const XDP_PROGRAM: &str = "dnsteer_steer";
/// The TC egress program's name in `EBPF_OBJECT`.
pub const TC_PROGRAM: &str = "dnsteer_reply";
/// The fast path's TC ingress program's name in `EBPF_OBJECT`.
pub const REPLY_IN_PROGRAM: &str = "dnsteer_reply_in";
