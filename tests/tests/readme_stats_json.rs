//! README's `dnsteer stats --json` example against the real output of a
//! running instance (with `--per-cpu`, health probes and answered queries):
//! the same fields at every level (an array's elements as its first, an
//! object with a `"..."` key or an array ending in `"..."` shortened on
//! purpose), and the values that follow from the build and the config alone
//! (the version, the maps' types, key and value sizes and capacities, the
//! capacities, the CPU count's length of the per-CPU arrays) equal.

use std::time::Duration;

use serde_json::Value;
use testbed::{
    Topology, TopologyConfig, WHOAMI_NAME,
    dns::query_once,
    dnsteer::{Dnsteer, Launch, binary, service_config},
};

/// The JSON block under README's "### JSON (`--json`), version 1".
fn readme_example() -> Value {
    let readme = std::fs::read_to_string(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let section = readme
        .split("### JSON (`--json`), version 1")
        .nth(1)
        .expect("README's JSON section");
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a ```json block");
    serde_json::from_str(block).unwrap_or_else(|e| panic!("README's JSON example: {e}"))
}

const ELIDED: &str = "...";

/// Where `example` and `real` differ in shape, as paths.
fn differences(path: &str, example: &Value, real: &Value, out: &mut Vec<String>) {
    match (example, real) {
        (Value::Object(e), Value::Object(r)) => {
            let shortened = e.contains_key(ELIDED);
            for key in e.keys().filter(|k| *k != ELIDED) {
                match r.get(key) {
                    Some(rv) => differences(&format!("{path}.{key}"), &e[key], rv, out),
                    None => out.push(format!("{path}.{key}: in README, not in the output")),
                }
            }
            if !shortened {
                for key in r.keys().filter(|k| !e.contains_key(*k)) {
                    out.push(format!("{path}.{key}: in the output, not in README"));
                }
            }
        }
        (Value::Array(e), Value::Array(r)) => {
            if let (Some(first), Some(real_first)) = (e.first(), r.first())
                && first != &Value::String(ELIDED.to_owned())
            {
                differences(&format!("{path}[0]"), first, real_first, out);
            }
        }
        // A null in the output (no health answer yet, not a Kubernetes
        // service) is a field README may show filled.
        (_, Value::Null) | (Value::Null, _) => {}
        (Value::String(s), _) if s == ELIDED => {}
        (e, r) if std::mem::discriminant(e) != std::mem::discriminant(r) => out.push(format!(
            "{path}: README has {e}, the output a {}",
            match r {
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
                Value::Null => "null",
            }
        )),
        _ => {}
    }
}

#[test]
fn readme_stats_json_example_matches_the_output() {
    let topo = Topology::build(TopologyConfig {
        backends: 2,
        ..TopologyConfig::default()
    })
    .unwrap();
    let iface = topo.config.node_iface.clone();
    let config = format!(
        "{}\n[service.health]\nquery = \"health.example. A\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n",
        service_config(
            &iface,
            "nth",
            &topo.service_targets(),
            &topo.backend_targets()
        )
    );
    let dnsteer = Dnsteer::start_with(
        Launch::SharedMounts,
        &topo.node,
        &binary().unwrap(),
        &iface,
        &config,
    )
    .unwrap();
    for _ in 0..4 {
        query_once(
            &topo.client,
            topo.service_targets()[0],
            WHOAMI_NAME,
            Duration::from_secs(3),
        )
        .unwrap()
        .expect("an answer");
    }
    let real: Value =
        serde_json::from_str(&dnsteer.stats(&["--json", "--per-cpu"]).unwrap()).unwrap();
    let example = readme_example();

    let mut out = Vec::new();
    differences("", &example, &real, &mut out);
    assert!(
        out.is_empty(),
        "README's stats JSON example differs from the output:\n{}\n\nthe output:\n{}",
        out.join("\n"),
        serde_json::to_string_pretty(&real).unwrap()
    );

    // What the build and the config fix.
    assert_eq!(example["version"], real["version"]);
    for field in [
        "services",
        "listeners",
        "backends_per_service",
        "flow_records",
    ] {
        assert_eq!(
            example["capacity"][field], real["capacity"][field],
            "capacity.{field}"
        );
    }
    assert_eq!(example["queries"]["capacity"], real["queries"]["capacity"]);
    assert_eq!(example["flows"]["capacity"], real["flows"]["capacity"]);
    for map in example["maps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.is_object())
    {
        let name = &map["name"];
        let found = real["maps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| &m["name"] == name)
            .unwrap_or_else(|| panic!("no map {name} in the output"));
        for field in ["type", "max_entries", "key_size", "value_size"] {
            assert_eq!(map[field], found[field], "maps {name}.{field}");
        }
    }
    let cpus = real["cpus"].as_u64().unwrap() as usize;
    let per_cpu = &example["services"][0]["backends"][0]["per_cpu"];
    assert_eq!(
        per_cpu.as_array().unwrap().len(),
        cpus,
        "per_cpu: one per CPU"
    );
    assert_eq!(
        example["cpus"], real["cpus"],
        "the example is of a {cpus}-CPU machine"
    );
}
