//! dnsteer's userspace, one folder per concern, with the dependency arrows
//! pointing one way:
//!
//! - [`config`]: the TOML schema, parsing and validation. Depends on nothing else here.
//! - [`live`]: the reconciler. Desired backend sets from every source go in;
//!   it diffs them against what the maps hold and changes each service with
//!   one atomic flip, through the [`live::Store`] trait.
//! - [`datapath`]: the kernel side as userspace sees it: loading, attaching,
//!   pinning and adopting the programs, and the map store (the one writer,
//!   implementing [`live::Store`]).
//! - [`health`]: DNS probes and the up/down state machine (a source).
//! - [`control`]: the control socket's protocol, its client (`dnsteer
//!   backends`) and its server (a source).
//! - [`observe`]: stats, their JSON and text forms, and Prometheus metrics;
//!   they only read.
//! - [`daemon`]: `dnsteer run`'s event loop: where the sources feed the
//!   reconciler (see [`daemon::sources`]).
//!
//! The binary (`src/main.rs`) is a thin CLI over these modules; the tests crate
//! uses them directly to load the same object and fill maps the same way.

pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod doctor;
pub mod health;
pub mod kubernetes;
pub mod live;
pub mod observe;

pub use datapath::{EBPF_OBJECT, REPLY_IN_PROGRAM, TC_PROGRAM, XDP_PROGRAM};
