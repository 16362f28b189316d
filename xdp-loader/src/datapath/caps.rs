//! The capabilities `dnsteer run` needs, checked before it touches anything, so
//! a missing one is named instead of surfacing as EPERM from some bpf() call.
//!
//! Loading and attaching need CAP_BPF, CAP_PERFMON (the verifier's pointer
//! arithmetic on packets and maps) and CAP_NET_ADMIN (XDP and TC attach).
//! CAP_BPF and CAP_PERFMON were split out of CAP_SYS_ADMIN in Linux 5.8;
//! CAP_SYS_ADMIN still grants what they do.

use anyhow::{Context as _, Result, bail};
use caps::{CapSet, Capability, CapsHashSet};

/// The process's effective capability set (capget(2)).
pub fn effective() -> Result<CapsHashSet> {
    caps::read(None, CapSet::Effective).context("reading this process's effective capabilities")
}

/// What `dnsteer run` lacks in `set`: CAP_NET_ADMIN, and CAP_BPF and
/// CAP_PERFMON unless CAP_SYS_ADMIN stands in for them.
pub fn missing_for_run(set: &CapsHashSet) -> Vec<Capability> {
    let mut missing = Vec::new();
    for cap in [
        Capability::CAP_BPF,
        Capability::CAP_NET_ADMIN,
        Capability::CAP_PERFMON,
    ] {
        let covered = cap != Capability::CAP_NET_ADMIN && set.contains(&Capability::CAP_SYS_ADMIN);
        if !set.contains(&cap) && !covered {
            missing.push(cap);
        }
    }
    missing
}

/// Fails, naming what is missing, unless this process may run the data path.
pub fn require_for_run() -> Result<()> {
    let missing = missing_for_run(&effective()?);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
    bail!(
        "dnsteer run needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN in place of the first and last); this process lacks {}. Run it as root, or grant them, e.g. `setcap cap_bpf,cap_net_admin,cap_perfmon+ep dnsteer`",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use caps::Capability::{CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN};

    use super::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn reads_the_effective_set() {
        // This process's own set reads, whatever it holds.
        assert!(effective().is_ok());
    }

    #[test]
    fn run_needs_bpf_net_admin_and_perfmon_or_sys_admin() {
        assert_eq!(missing_for_run(&caps::all()), []);
        assert_eq!(
            missing_for_run(&set(&[])),
            [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]
        );
        assert_eq!(
            missing_for_run(&set(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON])),
            []
        );
        assert_eq!(
            missing_for_run(&set(&[CAP_BPF, CAP_NET_ADMIN])),
            [CAP_PERFMON]
        );
        // Before 5.8 CAP_SYS_ADMIN was the only way; it still covers both.
        assert_eq!(missing_for_run(&set(&[CAP_SYS_ADMIN, CAP_NET_ADMIN])), []);
        assert_eq!(missing_for_run(&set(&[CAP_SYS_ADMIN])), [CAP_NET_ADMIN]);
        // A root shell without CAP_SYS_ADMIN.
        let mut no_sys_admin = caps::all();
        no_sys_admin.remove(&CAP_SYS_ADMIN);
        assert_eq!(missing_for_run(&no_sys_admin), []);
    }
}
