//! How much kernel memory the maps take on a node, from their definitions in
//! the compiled object (types, key and value sizes, capacities) and the
//! config's table sizes, without loading anything: what `dnsteer doctor`
//! prints and README's formula. Per-CPU maps hold a value per possible CPU,
//! so they dominate on large nodes.

use anyhow::{Context as _, Result, anyhow};
use aya_obj::{Object, generated::bpf_map_type};
use xdp_common::names;

use super::{EBPF_OBJECT, maps::capacities};
use crate::config::Limits;

/// What the kernel keeps per hash entry besides the key and value (`struct
/// htab_elem`: the list node, the hash and padding), rounded up.
pub const HASH_ELEM_OVERHEAD: u64 = 48;
/// A hash map's bucket (`struct bucket`: list head and lock), one per entry
/// rounded up to a power of two.
pub const HASH_BUCKET: u64 = 16;

/// One map's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapMemory {
    pub name: &'static str,
    pub per_cpu: bool,
    pub entries: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// The bytes for `cpus` CPUs.
    pub bytes: u64,
}

fn round8(n: u32) -> u64 {
    u64::from(n).div_ceil(8) * 8
}

/// The bytes of one map of `kind` on a node with `cpus` possible CPUs.
pub fn map_bytes(kind: u32, entries: u32, key: u32, value: u32, cpus: u64) -> (bool, u64) {
    let n = u64::from(entries);
    let buckets = u64::from(entries.max(1).next_power_of_two()) * HASH_BUCKET;
    match kind {
        k if k == bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32 => {
            // A pointer per entry to its per-CPU area.
            (true, n * (8 + round8(value) * cpus))
        }
        k if k == bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH as u32
            || k == bpf_map_type::BPF_MAP_TYPE_LRU_PERCPU_HASH as u32 =>
        {
            let elem = HASH_ELEM_OVERHEAD + round8(key) + 8;
            (true, n * (elem + round8(value) * cpus) + buckets)
        }
        k if k == bpf_map_type::BPF_MAP_TYPE_HASH as u32
            || k == bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32 =>
        {
            (
                false,
                n * (HASH_ELEM_OVERHEAD + round8(key) + round8(value)) + buckets,
            )
        }
        _ => (false, n * round8(value)),
    }
}

/// Every map's bytes on a node with `cpus` possible CPUs, with the tables
/// sized by `limits` and `[flows] size`.
pub fn estimate(limits: &Limits, flow_capacity: u32, cpus: u64) -> Result<Vec<MapMemory>> {
    let object = Object::parse(EBPF_OBJECT).map_err(|e| anyhow!("parsing the eBPF object: {e}"))?;
    let sized: std::collections::BTreeMap<&str, u32> =
        capacities(limits, flow_capacity).into_iter().collect();
    names::ALL
        .iter()
        .map(|&name| {
            let map = object
                .maps
                .get(name)
                .with_context(|| format!("the eBPF object has no map {name}"))?;
            let entries = sized.get(name).copied().unwrap_or(map.max_entries());
            let (per_cpu, bytes) = map_bytes(
                map.map_type(),
                entries,
                map.key_size(),
                map.value_size(),
                cpus,
            );
            Ok(MapMemory {
                name,
                per_cpu,
                entries,
                key_size: map.key_size(),
                value_size: map.value_size(),
                bytes,
            })
        })
        .collect()
}

/// This node's possible CPUs, as the kernel sizes per-CPU maps.
pub fn possible_cpus() -> Result<u64> {
    aya::util::nr_cpus()
        .map(|n| n as u64)
        .map_err(|(path, e)| anyhow!("reading {path}: {e}"))
}

/// The lines `dnsteer doctor` prints: the total and the largest maps.
pub fn report(limits: &Limits, flow_capacity: u32) -> Vec<String> {
    let cpus = match possible_cpus() {
        Ok(cpus) => cpus,
        Err(err) => return vec![format!("memory: {err:#}")],
    };
    let maps = match estimate(limits, flow_capacity, cpus) {
        Ok(maps) => maps,
        Err(err) => return vec![format!("memory: {err:#}")],
    };
    let total: u64 = maps.iter().map(|m| m.bytes).sum();
    let per_cpu: u64 = maps.iter().filter(|m| m.per_cpu).map(|m| m.bytes).sum();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut out = vec![format!(
        "memory: the maps take about {:.1} MiB on this node ({cpus} possible CPUs; {:.1} MiB of it in per-CPU maps), with {} services, {} listen entries and [flows] size {flow_capacity}; the container's memory limit must hold this and the process (about 64 MiB)",
        mib(total),
        mib(per_cpu),
        limits.services,
        limits.listeners,
    )];
    let mut largest = maps.clone();
    largest.sort_by_key(|m| std::cmp::Reverse(m.bytes));
    for m in largest.iter().take(5) {
        out.push(format!(
            "memory:   {:<14} {:>9.1} MiB  {} entries of {} bytes{}",
            m.name,
            mib(m.bytes),
            m.entries,
            m.value_size,
            if m.per_cpu { " per CPU" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_maps_grow_with_the_cpus_and_the_others_do_not() {
        let limits = Limits::default();
        let one = estimate(&limits, 65536, 1).unwrap();
        let many = estimate(&limits, 65536, 64).unwrap();
        for (a, b) in one.iter().zip(&many) {
            if a.per_cpu {
                assert!(
                    b.bytes > a.bytes * 32,
                    "{}: {} vs {}",
                    a.name,
                    a.bytes,
                    b.bytes
                );
            } else {
                assert_eq!(a.bytes, b.bytes, "{}", a.name);
            }
        }
        assert!(
            many.iter()
                .any(|m| m.name == names::BACKEND_STATS && m.per_cpu)
        );
    }

    #[test]
    fn the_tables_follow_the_config() {
        let small = Limits {
            services: 4,
            listeners: 8,
        };
        let big: u64 = estimate(&Limits::default(), 65536, 4)
            .unwrap()
            .iter()
            .map(|m| m.bytes)
            .sum();
        let little: u64 = estimate(&small, 1024, 4)
            .unwrap()
            .iter()
            .map(|m| m.bytes)
            .sum();
        assert!(little * 10 < big, "{little} vs {big}");
    }

    #[test]
    fn map_bytes_by_type() {
        let array = bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;
        let percpu = bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32;
        let hash = bpf_map_type::BPF_MAP_TYPE_HASH as u32;
        assert_eq!(map_bytes(array, 10, 4, 12, 8), (false, 160));
        assert_eq!(map_bytes(percpu, 10, 4, 12, 8), (true, 10 * (8 + 16 * 8)));
        assert_eq!(
            map_bytes(hash, 3, 4, 8, 8),
            (false, 3 * (HASH_ELEM_OVERHEAD + 16) + 4 * HASH_BUCKET)
        );
    }
}
