//! End to end, issue 21 item 1: reads (`dnsteer backends list`, `dnsteer
//! stats --json`) answer while a change is in flight instead of queueing behind
//! its RCU grace periods. A change streams in after another; reads run back to
//! back beside them, and each change's window (request sent to acknowledgement)
//! must hold several reads that started and finished inside it, which cannot
//! happen if a read waits for the change ahead of it. The test bed's grace
//! periods take milliseconds, so the daemon runs with `DNSTEER_SLOW_GRACE_MS`
//! making each one as long as on a busy host. The read latencies are printed
//! (p50/p99), not asserted.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use testbed::{
    Topology, TopologyConfig,
    dnsteer::{Dnsteer, binary, service_config},
};

const CHANGES: usize = 10;
/// Each grace period's extra length: about what issue 21 measured.
const SLOW_GRACE_MS: &str = "800";
/// Reads that must fit inside every change's window. A read queued behind the
/// change could only finish inside it if it was answered before the change
/// reached the daemon, which at most the first one of a window can be.
const READS_INSIDE: usize = 3;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn reads_do_not_wait_for_a_change_in_flight() {
    let topo = Topology::build(TopologyConfig::default()).expect("test bed");
    let iface = &topo.config.node_iface;
    let b = topo.backend_targets();
    // SAFETY: this file's only test sets it before starting any thread; the
    // daemon it launches inherits it.
    unsafe { std::env::set_var("DNSTEER_SLOW_GRACE_MS", SLOW_GRACE_MS) };
    let config = service_config(iface, "nth", &topo.service_targets(), &b[..2]);
    let dnsteer = Dnsteer::start(&topo.node, &binary().unwrap(), iface, &config).expect("dnsteer");
    let extra = b[2].to_string();

    let done = AtomicBool::new(false);
    let (changes, reads) = thread::scope(|scope| {
        let changer = scope.spawn(|| {
            let mut windows = Vec::new();
            for i in 0..CHANGES {
                let op = if i.is_multiple_of(2) { "add" } else { "remove" };
                let started = Instant::now();
                dnsteer
                    .backends(&[op, &extra])
                    .unwrap_or_else(|e| panic!("backends {op} {extra}: {e:#}"));
                windows.push((started, Instant::now()));
            }
            done.store(true, Ordering::SeqCst);
            windows
        });
        let mut reads = Vec::new();
        let mut n = 0usize;
        while !done.load(Ordering::SeqCst) {
            let started = Instant::now();
            if n.is_multiple_of(2) {
                dnsteer.backends(&["list"]).expect("backends list");
            } else {
                let json = dnsteer.stats(&["--json"]).expect("stats --json");
                assert!(json.contains("\"services\""), "stats JSON: {json}");
            }
            reads.push((started, Instant::now()));
            n += 1;
        }
        (changer.join().expect("the changes"), reads)
    });

    let mut latencies: Vec<Duration> = reads.iter().map(|(s, e)| *e - *s).collect();
    latencies.sort();
    let mut change_times: Vec<Duration> = changes.iter().map(|(s, e)| *e - *s).collect();
    change_times.sort();
    println!(
        "{} reads beside {CHANGES} changes: read p50 {:?}, p99 {:?}, max {:?}; change p50 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
        percentile(&change_times, 0.5),
        change_times.last().unwrap(),
    );
    for (i, (from, to)) in changes.iter().enumerate() {
        let inside = reads.iter().filter(|(s, e)| s >= from && e <= to).count();
        println!("change {i}: {:?}, {inside} read(s) inside", *to - *from);
        assert!(
            inside >= READS_INSIDE,
            "change {i} took {:?} and only {inside} read(s) started and finished while it was in flight; reads wait for changes",
            *to - *from
        );
    }
    // The last change removed the extra backend: a read after its
    // acknowledgement sees that.
    let listed = dnsteer.backends(&["list"]).expect("backends list");
    assert!(!listed.contains(&extra), "{extra} still listed: {listed}");
}
