//! `cargo xtask demo`: a client, a node running dnsteer on `eth3` (with an
//! `eth3:1` alias address) and four BIND backends, all in throwaway network
//! namespaces; shows the split in nth mode, then in random mode.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Result, bail};
use testbed::{
    Topology, TopologyConfig, WHOAMI_NAME, dns,
    dnsteer::{Dnsteer, service_config},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Stops between steps after Ctrl-C, so every namespace and process is torn
/// down by the drops on the way out.
fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the topology was torn down");
    }
    Ok(())
}

pub fn run(bin: &Path, queries: usize) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    println!("demo: building namespaces: client, node (eth3 + alias eth3:1), 4 BIND backends");
    let topo = Topology::build(TopologyConfig::default())?;
    check_interrupt()?;
    let node_iface = topo.config.node_iface.clone();
    let services = topo.service_targets();
    let backends = topo.backend_targets();
    println!("demo: service addresses {}", list(&services));
    println!("demo: backends          {}", list(&backends));
    for select in ["nth", "random"] {
        println!("\n=== select = \"{select}\" ===");
        let config = service_config(&node_iface, select, &services, &backends);
        let mut dnsteer = Dnsteer::start(&topo.node, bin, &node_iface, &config)?;
        check_interrupt()?;
        println!(
            "demo: dnsteer runs on {node_iface}; sending {queries} queries for {WHOAMI_NAME} A from the client, a fresh source port each"
        );
        let outcome = dns::query_load(
            &topo.client,
            &dns::Load::new(services.clone(), WHOAMI_NAME, queries),
        )?;
        check_interrupt()?;
        print_split(&outcome.by_answer, outcome.answered);
        println!(
            "answered {} of {} ({} unanswered, {} from a wrong source address, {} other errors)",
            outcome.answered,
            queries,
            outcome.unanswered,
            outcome.wrong_source,
            outcome.other_errors
        );
        println!("\n$ dnsteer stats --iface {node_iface}");
        print!("{}", dnsteer.stats(&[])?);
        dnsteer.stop()?;
    }
    println!("\ndemo: done; tearing down the namespaces");
    Ok(())
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_split(by_answer: &BTreeMap<Ipv4Addr, usize>, answered: usize) {
    println!("{:<16} {:>8} {:>7}", "answered by", "queries", "share");
    for (backend, count) in by_answer {
        let share = 100.0 * *count as f64 / answered.max(1) as f64;
        println!("{backend:<16} {count:>8} {share:>6.1}%");
    }
}
