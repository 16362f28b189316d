//! Helpers of the tests that run the kernel programs through BPF_PROG_TEST_RUN
//! (`prog_table.rs`, `differential.rs`): counters, CPU pinning, checksums.

use std::net::IpAddr;

use aya::{Ebpf, maps::PerCpuArray};
use xdp_common::csum;

/// Each of `count` per-CPU u64 counters of map `name`, summed over CPUs.
pub fn counters(ebpf: &Ebpf, name: &str, count: usize) -> Vec<u64> {
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(name).unwrap()).unwrap();
    (0..count as u32)
        .map(|i| map.get(&i, 0).unwrap().iter().sum())
        .collect()
}

/// `(item, delta)` for every counter that moved.
pub fn moved<T: Copy>(all: &[T], before: &[u64], after: &[u64]) -> Vec<(T, u64)> {
    all.iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a != b)
        .map(|(item, (b, a))| (*item, a.wrapping_sub(*b)))
        .collect()
}

/// Keeps this thread on one CPU, so per-CPU state (the nth cursor, the
/// counters read back) is one sequence.
pub fn pin_to_cpu0() {
    pin_to_cpu(0);
}

/// Runs the calling thread on CPU `cpu` only: BPF_PROG_TEST_RUN runs the
/// program there, with that CPU's per-CPU map slots.
#[allow(dead_code, reason = "not every test binary runs on more than one CPU")]
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// The UDP or TCP checksum of `data` (header and payload) from scratch, with
/// the pseudo-header of `src` and `dst`: RFC 768 and RFC 9293 3.1 for IPv4
/// (12 bytes), RFC 8200 8.1 for IPv6 (both 16-byte addresses, a 32-bit
/// length, three zero bytes and the next header). 0 when valid.
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, data: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(data.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&(data.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("{src} and {dst} are not one family"),
    }
    !csum::fold(csum::sum_bytes(csum::sum_bytes(0, &pseudo), data))
}
