//! Everything dnsteer's kernel side and user side must agree on: map key and value
//! layouts, map capacities, counter indices, and the pure packet helpers (header
//! parsing, incremental checksums, backend selection) that both sides run, so the
//! host can unit-test exactly the code the kernel executes.
#![no_std]

pub mod csum;
pub mod maps;
pub mod parse;
pub mod select;

pub use maps::*;
