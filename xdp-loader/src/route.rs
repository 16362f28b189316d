//! Which interface the kernel routes an IPv4 address through, from
//! `/proc/net/route` (the main table): the longest matching prefix, then the
//! lowest metric. The fast path attaches its reply program to the ingress of
//! these interfaces: backends' replies come back through them.
//!
//! Policy routing (other tables, `ip rule`) is not consulted; a backend routed
//! that way is found through the main table or not at all (its replies then
//! take the stack and the egress program, as with `forward = "stack"`).

use std::{fs, net::Ipv4Addr};

use anyhow::{Context as _, Result};

/// `RTF_UP` and `RTF_REJECT` from linux/route.h.
const RTF_UP: u32 = 0x0001;
const RTF_REJECT: u32 = 0x0200;

/// The interface `/proc/net/route` sends `addr` through, if any.
pub fn interface_for(addr: Ipv4Addr) -> Result<Option<String>> {
    let table = fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    Ok(lookup(&table, addr))
}

/// `addr`'s route in a `/proc/net/route` table.
fn lookup(table: &str, addr: Ipv4Addr) -> Option<String> {
    let addr = u32::from(addr);
    // (prefix length, metric, interface)
    let mut best: Option<(u32, u32, &str)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [
            iface,
            dest,
            _gateway,
            flags,
            _refcnt,
            _use,
            metric,
            mask,
            ..,
        ] = f[..]
        else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(flags), Some(mask)) = (hex(dest), hex(flags), hex(mask)) else {
            continue;
        };
        let metric = metric.parse().unwrap_or(u32::MAX);
        // The kernel prints the network-order bytes as a native integer.
        let dest = u32::from_be_bytes(dest.to_ne_bytes());
        let mask = u32::from_be_bytes(mask.to_ne_bytes());
        if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || addr & mask != dest & mask {
            continue;
        }
        let prefix = mask.count_ones();
        let better = best.is_none_or(|(p, m, _)| prefix > p || (prefix == p && metric < m));
        if better {
            best = Some((prefix, metric, iface));
        }
    }
    best.map(|(_, _, iface)| iface.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats a route as the kernel does on this (little- or big-endian) host.
    fn row(iface: &str, dest: [u8; 4], mask: [u8; 4], flags: u32, metric: u32) -> String {
        let native = |b: [u8; 4]| u32::from_ne_bytes(b);
        format!(
            "{iface}\t{:08X}\t00000000\t{flags:04X}\t0\t0\t{metric}\t{:08X}\t0\t0\t0",
            native(dest),
            native(mask)
        )
    }

    #[test]
    fn longest_prefix_then_lowest_metric() {
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT";
        let table = [
            header.to_owned(),
            row("eth0", [0, 0, 0, 0], [0, 0, 0, 0], 0x3, 0),
            row("eth3", [192, 0, 2, 0], [255, 255, 255, 0], 0x1, 0),
            row("be0", [10, 100, 13, 2], [255, 255, 255, 255], 0x1, 0),
            row("be1", [10, 100, 13, 0], [255, 255, 255, 0], 0x1, 10),
            row("be9", [10, 100, 13, 0], [255, 255, 255, 0], 0x1, 5),
            row("down0", [10, 100, 14, 0], [255, 255, 255, 0], 0x0, 0),
            row("rej0", [10, 100, 15, 0], [255, 255, 255, 0], 0x201, 0),
            "garbage line".to_owned(),
        ]
        .join("\n");
        let at = |a: [u8; 4]| lookup(&table, Ipv4Addr::from(a));
        assert_eq!(at([10, 100, 13, 2]).as_deref(), Some("be0"));
        assert_eq!(at([10, 100, 13, 3]).as_deref(), Some("be9"), "lower metric");
        assert_eq!(at([192, 0, 2, 77]).as_deref(), Some("eth3"));
        // A route that is down or a reject route is skipped: the default wins.
        assert_eq!(at([10, 100, 14, 1]).as_deref(), Some("eth0"));
        assert_eq!(at([10, 100, 15, 1]).as_deref(), Some("eth0"));
        let no_default = table.replace(&row("eth0", [0, 0, 0, 0], [0, 0, 0, 0], 0x3, 0), "");
        assert_eq!(lookup(&no_default, Ipv4Addr::new(198, 51, 100, 1)), None);
    }

    #[test]
    fn this_hosts_table_reads() {
        // Whatever routes this host has, its table reads.
        assert!(interface_for(Ipv4Addr::new(192, 0, 2, 1)).is_ok());
    }
}
