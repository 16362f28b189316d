//! The memory figure `dnsteer doctor` prints (and README's formula), computed
//! from the object's map definitions, against what the kernel charges for
//! each map once loaded (its fdinfo `memlock`, in `stats --json`), on this
//! machine's CPUs, for the default table sizes and small ones.

use std::collections::BTreeMap;

use dnsteer::{
    config::Limits,
    datapath::memory::{estimate, possible_cpus},
};
use serde_json::Value;
use testbed::{
    Topology, TopologyConfig,
    dnsteer::{Dnsteer, binary, service_config},
};

/// The kernel's bytes per map of a running instance.
fn charged(dnsteer: &Dnsteer) -> BTreeMap<String, u64> {
    let json = dnsteer.stats(&["--json"]).expect("stats --json");
    let v: Value = serde_json::from_str(&json).unwrap();
    v["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["memory_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn check(extra: &str, limits: &Limits, flows: u32) {
    let topo = Topology::build(TopologyConfig {
        backends: 1,
        dns: false,
        ..TopologyConfig::default()
    })
    .unwrap();
    let iface = topo.config.node_iface.clone();
    let text = service_config(
        &iface,
        "nth",
        &topo.service_targets(),
        &topo.backend_targets(),
    )
    .replacen('\n', &format!("\n{extra}"), 1);
    let dnsteer = Dnsteer::start(&topo.node, &binary().unwrap(), &iface, &text).unwrap();
    let kernel = charged(&dnsteer);
    let ours = estimate(limits, flows, possible_cpus().unwrap()).unwrap();
    let (mut kernel_total, mut our_total) = (0u64, 0u64);
    for m in &ours {
        let k = *kernel
            .get(m.name)
            .unwrap_or_else(|| panic!("stats has no map {}", m.name));
        eprintln!("{:<14} kernel {k:>10} estimate {:>10}", m.name, m.bytes);
        kernel_total += k;
        our_total += m.bytes;
        // Each map within 2% (or 4 KiB, the kernel's own header and
        // rounding, for the small ones) of the kernel's.
        let diff = k.abs_diff(m.bytes);
        assert!(
            diff <= 4096 || diff * 50 <= k,
            "{}: the kernel charges {k} bytes, the estimate says {}",
            m.name,
            m.bytes
        );
    }
    eprintln!("total kernel {kernel_total} estimate {our_total}");
    assert!(
        kernel_total.abs_diff(our_total) * 100 <= kernel_total,
        "total: the kernel charges {kernel_total}, the estimate says {our_total}"
    );
}

#[test]
fn the_estimate_matches_what_the_kernel_charges() {
    check("", &Limits::default(), 65536);
}

#[test]
fn the_estimate_follows_the_table_sizes() {
    let limits = Limits {
        services: 8,
        listeners: 16,
    };
    check(
        "[limits]\nservices = 8\nlisteners = 16\n[flows]\nsize = 4096\n",
        &limits,
        4096,
    );
}
