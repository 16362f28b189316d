//! dnsteer's test bed: network namespaces wired as client / node / backends, real BIND
//! on the backends, and a DNS client to drive load through whatever runs on the node.
//!
//! Everything is created inside namespaces named `dnst-*` and torn down on drop (also
//! when a test panics); nothing touches the root namespace.

mod bind;
pub mod cgroup;
pub mod dns;
pub mod dnsteer;
pub mod kubeapi;
pub mod kubetls;
pub mod load;
mod netns;
pub mod responder;
pub mod tap;
mod tempdir;
mod tools;
mod topology;

pub use bind::{
    BIG_NAME, BIG_TXT_MIN_BYTES, BIG_TXT_RECORDS, DNS_PORT, HEALTH_NAME, HUGE_NAME, HUGE_TXT_BYTES,
    WHOAMI_NAME, ZONE, huge_txt,
};
pub use netns::NetNs;
pub use tempdir::TempDir;
pub use tools::require_root_tools;
pub use topology::{
    BACKEND_IFACE, BackendHost, CLIENT_IFACE, DnsControl, Topology, TopologyConfig,
};

/// Pearson's chi-square statistic of `counts` against a uniform split.
pub fn chi_square_uniform(counts: &[usize]) -> f64 {
    let expected = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    counts
        .iter()
        .map(|&o| (o as f64 - expected).powi(2) / expected)
        .sum()
}

/// The chi-square critical value for 3 degrees of freedom (four backends) at p = 0.001.
pub const CHI_SQUARE_3DF_P001: f64 = 16.266;
