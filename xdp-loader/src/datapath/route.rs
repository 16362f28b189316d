//! Which interface the kernel routes an address through, from
//! `/proc/net/route` and `/proc/net/ipv6_route` (the main tables): the longest
//! matching prefix, then the lowest metric. The fast path attaches its reply program to the ingress of
//! these interfaces: backends' replies come back through them.
//!
//! Policy routing (other tables, `ip rule`) is not consulted; a backend routed
//! that way is found through the main table or not at all (its replies then
//! take the stack and the egress program, as with `forward = "stack"`).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};

/// `RTF_UP` and `RTF_REJECT` from linux/route.h.
const RTF_UP: u32 = 0x0001;
const RTF_REJECT: u32 = 0x0200;

/// The interface the main routing table sends `addr` through, if any.
pub fn interface_for(addr: IpAddr) -> Result<Option<String>> {
    let path = match addr {
        IpAddr::V4(_) => "/proc/net/route",
        IpAddr::V6(_) => "/proc/net/ipv6_route",
    };
    let table = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(match addr {
        IpAddr::V4(a) => lookup(&table, a),
        IpAddr::V6(a) => lookup6(&table, a),
    })
}

/// `addr`'s route in a `/proc/net/ipv6_route` table: destination, prefix
/// length, source, source prefix length, next hop, metric, references, use,
/// flags, interface; all but the last in hex.
fn lookup6(table: &str, addr: Ipv6Addr) -> Option<String> {
    let addr = u128::from(addr);
    let mut best: Option<(u32, u32, &str)> = None;
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [
            dest,
            plen,
            _src,
            _splen,
            _nexthop,
            metric,
            _refcnt,
            _use,
            flags,
            iface,
        ] = f[..]
        else {
            continue;
        };
        let (Ok(dest), Ok(plen), Ok(metric), Ok(flags)) = (
            u128::from_str_radix(dest, 16),
            u32::from_str_radix(plen, 16),
            u32::from_str_radix(metric, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        let mask = u128::MAX.checked_shl(128 - plen.min(128)).unwrap_or(0);
        if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || addr & mask != dest & mask {
            continue;
        }
        let better = best.is_none_or(|(p, m, _)| plen > p || (plen == p && metric < m));
        if better {
            best = Some((plen, metric, iface));
        }
    }
    best.map(|(_, _, iface)| iface.to_owned())
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
    fn ipv6_longest_prefix_then_lowest_metric() {
        let row = |dest: &str, plen: u32, metric: u32, flags: u32, iface: &str| {
            let dest = u128::from(dest.parse::<Ipv6Addr>().unwrap());
            format!(
                "{dest:032x} {plen:02x} {:032x} 00 {:032x} {metric:08x} 00000001 00000000 {flags:08x} {iface:>8}",
                0, 0
            )
        };
        let table = [
            row("::", 0, 1024, 0x3, "eth0"),
            row("2001:db8:13::", 64, 256, 0x1, "be9"),
            row("2001:db8:13::2", 128, 1024, 0x1, "be0"),
            row("2001:db8:13::", 64, 100, 0x1, "be1"),
            row("2001:db8:14::", 64, 0, 0x0, "down0"),
            row("2001:db8:15::", 64, 0, 0x201, "lo"),
        ]
        .join("\n");
        let at = |a: &str| lookup6(&table, a.parse().unwrap());
        assert_eq!(at("2001:db8:13::2").as_deref(), Some("be0"));
        assert_eq!(at("2001:db8:13::3").as_deref(), Some("be1"), "lower metric");
        assert_eq!(at("2001:db8:14::1").as_deref(), Some("eth0"));
        assert_eq!(at("2001:db8:15::1").as_deref(), Some("eth0"));
    }

    #[test]
    fn this_hosts_table_reads() {
        // Whatever routes this host has, its table reads.
        assert!(interface_for(Ipv4Addr::new(192, 0, 2, 1).into()).is_ok());
        assert!(interface_for("2001:db8::1".parse().unwrap()).is_ok());
    }
}
