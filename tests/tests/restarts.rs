//! End to end, restarts: `dnsteer run --persist` under a steady query load is
//! restarted twenty times, alternating SIGTERM and `kill -9`, each time started
//! again at once. The data path outlives every loader, so no query may go
//! unanswered, and the maps (flows, counters) carry over. `dnsteer stop`
//! removes it at the end.

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use dnsteer::observe::stats::Snapshot;
use testbed::{
    Topology, TopologyConfig, WHOAMI_NAME, dns,
    dnsteer::{Dnsteer, Launch, binary, service_config},
    load::{self, Answer, PacedLoad, QueryRecord},
};

const RATE: u32 = 2000;
const RUN: Duration = Duration::from_secs(30);
const RESTARTS: usize = 20;
/// Load before the first restart, and the pause between one start and the
/// next stop.
const SETTLE: Duration = Duration::from_millis(500);
/// How long no loader runs at each restart.
const GAP: Duration = Duration::from_millis(200);

fn snapshot(dnsteer: &Dnsteer) -> Snapshot {
    let json = dnsteer.stats(&["--json"]).expect("dnsteer stats --json");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("stats JSON ({e}): {json}"))
}

fn steered(s: &Snapshot) -> u64 {
    s.reasons["steered"]
}

#[test]
fn twenty_restarts_of_a_persistent_loader_lose_nothing() {
    let topo = Topology::build(TopologyConfig {
        node_iface: "rs0".to_owned(),
        client_addr: Ipv4Addr::new(203, 0, 113, 100),
        service_addrs: vec![
            Ipv4Addr::new(203, 0, 113, 53),
            Ipv4Addr::new(203, 0, 113, 54),
        ],
        backend_base: Ipv4Addr::new(10, 88, 0, 2),
        node_backend_addr: Ipv4Addr::new(10, 88, 0, 1),
        ..Default::default()
    })
    .expect("test bed");
    let iface = topo.config.node_iface.clone();
    let config = service_config(
        &iface,
        "nth",
        &topo.service_targets(),
        &topo.backend_targets(),
    );
    // Shared mounts: the pins must outlive each loader, so they cannot live in
    // the private /sys that `ip netns exec` gives every command.
    let mut dnsteer = Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config,
        &["--persist"],
    )
    .expect("dnsteer");
    let before = snapshot(&dnsteer);
    // The pins (maps and links) are root's alone.
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&dnsteer.pin_dir()), 0o700);
    for entry in std::fs::read_dir(dnsteer.pin_dir()).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }

    let load = PacedLoad::new(topo.service_targets(), WHOAMI_NAME, RATE, RUN);
    let start = Instant::now();
    let mut restarts: Vec<(&str, Duration, Duration)> = Vec::new();
    let records: Vec<QueryRecord> = thread::scope(|scope| {
        let load = scope.spawn(|| {
            let progress = |sent: usize, total: usize| {
                if sent % (RATE as usize * 5) < RATE as usize {
                    eprintln!("load: {sent} of {total} sent");
                }
            };
            load::run_paced(&topo.client, &load, Some(&progress)).expect("query load")
        });
        for k in 0..RESTARTS {
            thread::sleep(SETTLE);
            let how = if k % 2 == 0 {
                dnsteer.stop().expect("SIGTERM");
                "SIGTERM"
            } else {
                dnsteer.kill();
                "kill -9"
            };
            let down = Instant::now();
            thread::sleep(GAP);
            dnsteer
                .restart()
                .unwrap_or_else(|e| panic!("restart {k} after {how}: {e:#}"));
            restarts.push((how, down - start, down.elapsed()));
        }
        load.join().expect("load thread")
    });
    let last = restarts.last().map(|r| r.1 + r.2).unwrap_or_default();
    assert!(
        last < RUN,
        "the restarts took {last:?}, longer than the load ({RUN:?}); the test proves nothing past it"
    );

    let summary = load::summarize(&records);
    eprintln!("load: {summary}");
    eprintln!(
        "{} restarts between {:.1} s and {:.1} s of the load, each {:.2} s to {:.2} s without a loader",
        restarts.len(),
        restarts[0].1.as_secs_f64(),
        last.as_secs_f64(),
        restarts
            .iter()
            .map(|r| r.2.as_secs_f64())
            .fold(f64::MAX, f64::min),
        restarts
            .iter()
            .map(|r| r.2.as_secs_f64())
            .fold(0.0, f64::max),
    );
    let failed: Vec<&QueryRecord> = records
        .iter()
        .filter(|r| !matches!(r.answer, Answer::Answered(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} queries failed across the restarts, e.g. {:?}",
        failed.len(),
        records.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        summary.achieved_rate >= RATE as f64 * 0.98,
        "the load ran at {:.0} q/s, below {RATE}",
        summary.achieved_rate
    );

    // The maps carried over: every query is counted once, across all loaders.
    let after = snapshot(&dnsteer);
    assert_eq!(
        steered(&after) - steered(&before),
        records.len() as u64,
        "steered counter across the restarts"
    );
    let log = dnsteer.log();
    assert_eq!(
        log.matches("adopted the data path pinned under").count(),
        RESTARTS,
        "{log}"
    );
    assert!(!log.contains("removing "), "a restart removed pins: {log}");

    // A crashed loader's data path keeps answering, until `dnsteer stop`.
    dnsteer.kill();
    let target = topo.service_targets()[0];
    let asked = || dns::kdig(&topo.client, target, WHOAMI_NAME);
    let answer = asked().expect("kdig with no loader running");
    assert!(!answer.is_empty(), "no answer with no loader running");
    let orphan = snapshot(&dnsteer);
    assert!(!orphan.running && orphan.persistent, "{orphan:?}");
    assert_eq!(
        steered(&orphan),
        steered(&after) + 1,
        "the kdig query, steered"
    );
    let out = dnsteer.stop_command().expect("dnsteer stop");
    assert!(out.contains("detached"), "{out}");
    let link = topo.node.run(&["ip", "link", "show", &iface]).unwrap();
    assert!(
        !link.contains("xdp"),
        "dnsteer stop left XDP attached: {link}"
    );
    assert!(!dnsteer.pin_dir().exists(), "dnsteer stop left its pins");
    let unsteered = asked();
    assert!(
        unsteered.as_ref().map_or(true, Vec::is_empty),
        "answered after dnsteer stop: {unsteered:?}"
    );

    // `ip netns exec` gives the loader a /sys, and a BPF filesystem, that die
    // with it: --persist is refused there rather than silently lost.
    let err = Dnsteer::start_with_args(
        Launch::IpNetnsExec,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config,
        &["--persist"],
    )
    .err()
    .expect("--persist under ip netns exec must be refused");
    assert!(
        format!("{err:#}").contains("own mount namespace"),
        "{err:#}"
    );
    let link = topo.node.run(&["ip", "link", "show", &iface]).unwrap();
    assert!(
        !link.contains("xdp"),
        "a refused start left XDP attached: {link}"
    );
}

/// A dnsteer whose maps have another layout than the pinned ones (as across the
/// upgrade that widened addresses for IPv6) refuses to adopt them, and the data
/// path it found keeps steering until `dnsteer stop`.
#[test]
fn adopting_maps_of_another_layout_is_refused_and_the_data_path_stays() {
    testbed::require_root_tools(&["bpftool"]).unwrap_or_else(|e| panic!("{e:#}"));
    let topo = Topology::build(TopologyConfig {
        node_iface: "rs1".to_owned(),
        backends: 2,
        ..Default::default()
    })
    .expect("test bed");
    let iface = topo.config.node_iface.clone();
    let config = service_config(
        &iface,
        "nth",
        &topo.service_targets(),
        &topo.backend_targets(),
    );
    let mut dnsteer = Dnsteer::start_with_args(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config,
        &["--persist"],
    )
    .expect("dnsteer");
    dnsteer.kill();
    // The running program keeps its SERVICES map; the pin now names one with
    // the 8-byte keys of the IPv4-only layout.
    let services = dnsteer.pin_dir().join("SERVICES");
    std::fs::remove_file(&services).unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&services)
        .args([
            "type", "hash", "key", "8", "value", "4", "entries", "1024", "name", "SERVICES",
        ])
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool: {out:?}");

    let err = dnsteer
        .restart()
        .expect_err("adopting maps of another layout must be refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("map SERVICES is laid out by another dnsteer version (8-byte keys, 4-byte values; this one uses 20 and 4)")
            && msg.contains("`dnsteer stop` it"),
        "{msg}"
    );
    let target = topo.service_targets()[0];
    let answer = dns::kdig(&topo.client, target, WHOAMI_NAME).expect("kdig after the refusal");
    assert!(!answer.is_empty(), "the old data path stopped steering");
    let out = dnsteer.stop_command().expect("dnsteer stop");
    assert!(out.contains("detached"), "{out}");
    let link = topo.node.run(&["ip", "link", "show", &iface]).unwrap();
    assert!(
        !link.contains("xdp"),
        "dnsteer stop left XDP attached: {link}"
    );
}

/// Adoption compares pinned maps with `maps::layouts`: it must describe the
/// object this build loads, map for map.
#[test]
fn adoption_layouts_describe_the_loaded_object() {
    use dnsteer::{config::Limits, datapath::maps};

    let limits = Limits {
        services: 300,
        listeners: 700,
    };
    // Pinned by the loader, as a persistent instance's are, and read back.
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/dnsteer-test-layouts-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a directory on the BPF filesystem");
    let ebpf = maps::load_pinned(&limits, 4096, Some(&dir));
    let read = |name: &str| aya::maps::MapInfo::from_pin(dir.join(name));
    let found: Vec<_> = maps::layouts(&limits, 4096)
        .into_iter()
        .map(|(name, key, value, entries)| {
            let info = read(name).map(|i| {
                (
                    i.key_size() as usize,
                    i.value_size() as usize,
                    i.max_entries(),
                )
            });
            (name, info.ok(), (key, value, entries))
        })
        .collect();
    drop(ebpf);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.len(), xdp_common::names::ALL.len());
    for (name, pinned, wanted) in found {
        assert_eq!(pinned, Some(wanted), "{name}");
    }
}
