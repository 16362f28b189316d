//! End to end: a client, a node running dnsteer on `eth3` with two listen
//! addresses (`eth3` and its alias `eth3:1`), four real BIND 9 backends. Every
//! query must be answered, by the service address it was sent to, and the
//! counters must match what the backends answered.

use std::{collections::BTreeMap, net::Ipv4Addr};

use dnsteer::observe::stats::{CpuCounter, Snapshot};
use testbed::{
    CHI_SQUARE_3DF_P001, Topology, TopologyConfig, WHOAMI_NAME, chi_square_uniform, dns,
    dnsteer::{Dnsteer, Launch, binary, service_config},
};

const QUERIES: usize = 2000;

fn snapshot(dnsteer: &Dnsteer) -> Snapshot {
    let json = dnsteer
        .stats(&["--json", "--per-cpu"])
        .expect("dnsteer stats --json");
    serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("stats JSON does not parse ({e}): {json}"))
}

/// Per-backend `count` per CPU between two snapshots.
fn per_cpu_delta(
    before: &Snapshot,
    after: &Snapshot,
    count: fn(&CpuCounter) -> u64,
) -> BTreeMap<Ipv4Addr, Vec<u64>> {
    let (old, new) = (&before.services[0], &after.services[0]);
    new.backends
        .iter()
        .zip(&old.backends)
        .map(|(n, o)| {
            let addr = n.address.split(':').next().unwrap().parse().unwrap();
            let (n, o) = (n.per_cpu.as_ref().unwrap(), o.per_cpu.as_ref().unwrap());
            (
                addr,
                n.iter().zip(o).map(|(n, o)| count(n) - count(o)).collect(),
            )
        })
        .collect()
}

fn reason_delta(before: &Snapshot, after: &Snapshot, reason: &str) -> u64 {
    after.reasons[reason] - before.reasons[reason]
}

/// Runs one mode: queries from the client, then checks answers against counters.
fn run_mode(topo: &Topology, select: &str, launch: Launch) -> BTreeMap<Ipv4Addr, usize> {
    let iface = &topo.config.node_iface;
    let services = topo.service_targets();
    let config = service_config(iface, select, &services, &topo.backend_targets());
    let mut dnsteer = Dnsteer::start_with(launch, &topo.node, &binary().unwrap(), iface, &config)
        .expect("dnsteer run");
    // Pins are visible only where `run` and `stats` share their mounts.
    let pins = dnsteer.pin_dir();
    assert_eq!(
        pins.exists(),
        launch == Launch::SharedMounts,
        "pins at {}",
        pins.display()
    );

    // A real resolver accepts the answers: each comes from the address it asked.
    for target in &services {
        let answer = dns::kdig(&topo.client, *target, WHOAMI_NAME)
            .unwrap_or_else(|e| panic!("kdig @{target}: {e:#}"));
        assert!(
            answer.len() == 1 && topo.backend_addrs().contains(&answer[0]),
            "kdig @{target} answered {answer:?}, not one backend"
        );
    }

    let before = snapshot(&dnsteer);
    let outcome = dns::query_load(
        &topo.client,
        &dns::Load::new(services.clone(), WHOAMI_NAME, QUERIES),
    )
    .unwrap();
    let after = snapshot(&dnsteer);
    println!("{select}: {outcome}");
    assert_eq!(
        outcome.answered, QUERIES,
        "{select}: every query answered: {outcome}"
    );
    assert_eq!(
        outcome.wrong_source + outcome.other_errors,
        0,
        "{select}: {outcome}"
    );

    // The counters say exactly what the backends answered.
    let per_cpu = per_cpu_delta(&before, &after, |c| c.packets);
    let steered: BTreeMap<Ipv4Addr, usize> = per_cpu
        .iter()
        .map(|(a, c)| (*a, c.iter().sum::<u64>() as usize))
        .collect();
    let answered: BTreeMap<Ipv4Addr, usize> = topo
        .backend_addrs()
        .iter()
        .map(|a| (*a, outcome.by_answer.get(a).copied().unwrap_or(0)))
        .collect();
    assert_eq!(
        steered, answered,
        "{select}: stats per backend vs answers per backend"
    );
    assert_eq!(reason_delta(&before, &after, "steered"), QUERIES as u64);
    assert_eq!(
        reason_delta(&before, &after, "reply_rewritten"),
        QUERIES as u64
    );
    assert_eq!(reason_delta(&before, &after, "reply_no_flow"), 0);
    assert_eq!(
        after.services[0].listen,
        vec!["192.0.2.10:53".to_owned(), "192.0.2.11:53".to_owned()]
    );

    if select == "nth" {
        // Round robin per CPU over new flows (a query whose source port came back
        // within the idle timeout continues its flow): on each CPU the backends'
        // counts differ by at most one.
        let new_flows = per_cpu_delta(&before, &after, |c| c.new_flows);
        for cpu in 0..after.cpus {
            let counts: Vec<u64> = new_flows.values().map(|c| c[cpu]).collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(
                max - min <= 1,
                "nth split on CPU {cpu} is not round robin: {counts:?}"
            );
        }
    }
    assert!(after.running);
    dnsteer.stop().expect("clean stop");
    assert!(!pins.exists(), "pins left at {}", pins.display());
    let link = topo.node.run(&["ip", "link", "show", iface]).unwrap();
    assert!(
        !link.contains("xdp"),
        "XDP still attached after stop: {link}"
    );
    answered
}

#[test]
fn steers_every_query_and_counts_it() {
    let topo = Topology::build(TopologyConfig::default()).expect("topology");
    // One mode with each way of entering the namespace: stats through the pins,
    // then through the attached programs.
    run_mode(&topo, "nth", Launch::SharedMounts);
    let split = run_mode(&topo, "random", Launch::IpNetnsExec);
    let chi2 = chi_square_uniform(&split.values().copied().collect::<Vec<_>>());
    assert!(
        chi2 < CHI_SQUARE_3DF_P001,
        "random split {split:?} fails chi-square at p = 0.001: {chi2:.2}"
    );
}

#[test]
fn refuses_a_second_instance_and_bad_configs() {
    let cfg = TopologyConfig {
        node_iface: "ens7".into(),
        dns: false,
        ..TopologyConfig::default()
    };
    let topo = Topology::build(cfg).expect("topology");
    let iface = &topo.config.node_iface;
    let bin = binary().unwrap();
    let config = service_config(
        iface,
        "nth",
        &topo.service_targets(),
        &topo.backend_targets(),
    );
    let mut first = Dnsteer::start(&topo.node, &bin, iface, &config).expect("first instance");
    let second = Dnsteer::start(&topo.node, &bin, iface, &config)
        .err()
        .expect("a second instance must be refused");
    assert!(
        format!("{second:#}").contains("already running on ens7"),
        "{second:#}"
    );
    first.stop().unwrap();

    // A bad config attaches nothing and names the file, the field and the value.
    let bad = config.replace("10.100.13.3:53", "10.100.13.3:0");
    let err = Dnsteer::start(&topo.node, &bin, iface, &bad)
        .err()
        .expect("port 0 must be refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("dnsteer.toml")
            && msg.contains("backends[1]")
            && msg.contains("10.100.13.3:0"),
        "{msg}"
    );
    let unknown = config.replace(&format!("interface = \"{iface}\""), "interface = \"eth9\"");
    let err = Dnsteer::start(&topo.node, &bin, iface, &unknown)
        .err()
        .expect("unknown interface must be refused");
    assert!(format!("{err:#}").contains("eth9"), "{err:#}");

    // Root without CAP_BPF and CAP_PERFMON (as in a restricted container): named.
    let path = std::env::temp_dir().join(format!("dnsteer-caps-{}.toml", std::process::id()));
    std::fs::write(&path, &config).unwrap();
    let out = topo
        .node
        .command("setpriv")
        .args([
            "--bounding-set=-bpf,-perfmon,-sys_admin",
            "--inh-caps=-all",
            "--",
        ])
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("running dnsteer under setpriv");
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without CAP_BPF: {stderr}");
    assert!(
        stderr.contains("lacks CAP_BPF, CAP_PERFMON") && !stderr.contains("lacks CAP_NET_ADMIN"),
        "{stderr}"
    );

    let link = topo.node.run(&["ip", "link", "show", iface]).unwrap();
    assert!(
        !link.contains("xdp"),
        "a refused config left XDP attached: {link}"
    );
}

#[test]
fn limits_size_the_maps_and_stats_report_their_memory() {
    let topo = Topology::build(TopologyConfig {
        node_iface: "lm0".into(),
        dns: false,
        ..TopologyConfig::default()
    })
    .expect("topology");
    let iface = &topo.config.node_iface;
    let bin = binary().unwrap();
    let config = service_config(
        iface,
        "nth",
        &topo.service_targets(),
        &topo.backend_targets(),
    );
    let rings = |s: &Snapshot| {
        s.maps
            .iter()
            .find(|m| m.name == "RINGS")
            .expect("RINGS in stats")
            .clone()
    };

    let mut dnsteer = Dnsteer::start(&topo.node, &bin, iface, &config).expect("dnsteer");
    let small = snapshot(&dnsteer);
    dnsteer.stop().unwrap();
    assert_eq!(
        (
            small.capacity.services,
            small.capacity.listeners,
            small.capacity.backends_per_service,
            small.capacity.flow_records
        ),
        (256, 1024, 64, 65536)
    );
    assert_eq!(
        small.maps.len(),
        xdp_common::names::ALL.len(),
        "{:?}",
        small.maps
    );
    assert!(
        small.maps.iter().all(|m| m.memory_bytes > 0),
        "{:?}",
        small.maps
    );
    assert_eq!(
        small.memory_bytes,
        small.maps.iter().map(|m| m.memory_bytes).sum::<u64>()
    );
    // Two rings of 8 KiB per service, at least.
    let ring = rings(&small);
    assert_eq!(ring.max_entries, 512);
    assert!(
        ring.memory_bytes >= 512 * u64::from(ring.value_size),
        "{ring:?}"
    );

    let raised = format!("{config}\n[limits]\nservices = 2048\nlisteners = 4096\n");
    let dnsteer = Dnsteer::start(&topo.node, &bin, iface, &raised).expect("dnsteer, raised limits");
    let big = snapshot(&dnsteer);
    assert_eq!(
        (big.capacity.services, big.capacity.listeners),
        (2048, 4096)
    );
    assert_eq!(rings(&big).max_entries, 4096);
    assert!(
        big.memory_bytes > small.memory_bytes + 3584 * 8192,
        "{} vs {}",
        big.memory_bytes,
        small.memory_bytes
    );
    let text = dnsteer.stats(&[]).unwrap();
    assert!(
        text.contains("capacity  services 2048  listeners 4096  backends/service 64"),
        "{text}"
    );
    assert!(text.contains("memory  "), "{text}");
}
