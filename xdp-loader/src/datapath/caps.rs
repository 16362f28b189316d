//! The capabilities `dnsteer run` needs, checked before it touches anything, so
//! a missing one is named instead of surfacing as EPERM from some bpf() call.
//!
//! Loading and attaching need CAP_BPF, CAP_PERFMON (the verifier's pointer
//! arithmetic on packets and maps) and CAP_NET_ADMIN (XDP and TC attach).
//! CAP_BPF and CAP_PERFMON were split out of CAP_SYS_ADMIN in Linux 5.8;
//! CAP_SYS_ADMIN still grants what they do.

use std::fs;

use anyhow::{Context as _, Result, bail};

/// A capability, by its number in `linux/capability.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub name: &'static str,
    bit: u32,
}

pub const CAP_NET_ADMIN: Cap = Cap {
    name: "CAP_NET_ADMIN",
    bit: 12,
};
pub const CAP_SYS_ADMIN: Cap = Cap {
    name: "CAP_SYS_ADMIN",
    bit: 21,
};
pub const CAP_PERFMON: Cap = Cap {
    name: "CAP_PERFMON",
    bit: 38,
};
pub const CAP_BPF: Cap = Cap {
    name: "CAP_BPF",
    bit: 39,
};

/// The process's effective capability set, from `/proc/self/status`.
pub fn effective() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    parse_cap_eff(&status).context("no CapEff line in /proc/self/status")
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn has(set: u64, cap: Cap) -> bool {
    set & (1 << cap.bit) != 0
}

/// What `dnsteer run` lacks in `set`: CAP_NET_ADMIN, and CAP_BPF and
/// CAP_PERFMON unless CAP_SYS_ADMIN stands in for them.
pub fn missing_for_run(set: u64) -> Vec<Cap> {
    let mut missing = Vec::new();
    for cap in [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON] {
        let covered = cap != CAP_NET_ADMIN && has(set, CAP_SYS_ADMIN);
        if !has(set, cap) && !covered {
            missing.push(cap);
        }
    }
    missing
}

/// Fails, naming what is missing, unless this process may run the data path.
pub fn require_for_run() -> Result<()> {
    let missing = missing_for_run(effective()?);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|c| c.name).collect();
    bail!(
        "dnsteer run needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN in place of the first and last); this process lacks {}. Run it as root, or grant them, e.g. `setcap cap_bpf,cap_net_admin,cap_perfmon+ep dnsteer`",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Cap]) -> u64 {
        caps.iter().fold(0, |s, c| s | 1 << c.bit)
    }

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tdnsteer\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1fffeffffff));
        assert_eq!(parse_cap_eff("CapInh:\t0\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        // This process's own line parses, whatever it holds.
        assert!(effective().is_ok());
    }

    #[test]
    fn run_needs_bpf_net_admin_and_perfmon_or_sys_admin() {
        assert_eq!(missing_for_run(u64::MAX), []);
        assert_eq!(missing_for_run(0), [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]);
        assert_eq!(
            missing_for_run(set(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON])),
            []
        );
        assert_eq!(
            missing_for_run(set(&[CAP_BPF, CAP_NET_ADMIN])),
            [CAP_PERFMON]
        );
        // Before 5.8 CAP_SYS_ADMIN was the only way; it still covers both.
        assert_eq!(missing_for_run(set(&[CAP_SYS_ADMIN, CAP_NET_ADMIN])), []);
        assert_eq!(missing_for_run(set(&[CAP_SYS_ADMIN])), [CAP_NET_ADMIN]);
        // The root shell of this machine, with CAP_SYS_ADMIN's bit (21) cleared.
        assert_eq!(missing_for_run(0x1fffeffffff & !(1 << 21)), []);
    }
}
