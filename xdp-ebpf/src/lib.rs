#![no_std]
//! The kernel program is the `xdp-ebpf` binary; this empty library lets xdp-loader
//! name the crate as a build dependency so cargo rebuilds the object when it changes.
