//! Which interface `interface = "auto"` names on this node: the one holding
//! a listen address of the config, else the one holding the default route
//! (IPv4 first, then IPv6), so one config fits nodes whose uplinks differ.

use std::{ffi::CStr, fs, net::IpAddr};

use anyhow::{Result, bail};

use crate::config::Config;

/// The interface `auto` stands for, and why it was chosen (for the log).
pub fn choose(config: &Config) -> Result<(String, String)> {
    let held = addresses();
    for service in &config.services {
        for listen in service.listen.iter().filter(|l| !l.is_wildcard()) {
            if let Some((name, _)) = held.iter().find(|(_, addr)| *addr == listen.addr) {
                let name = name.split(':').next().unwrap_or(name).to_owned();
                let why = format!(
                    "it holds {}, a listen address of service {}",
                    listen.addr, service.name
                );
                return Ok((name, why));
            }
        }
    }
    let v4 = fs::read_to_string("/proc/net/route").unwrap_or_default();
    if let Some(name) = default_route_v4(&v4) {
        return Ok((name, "it holds the IPv4 default route".to_owned()));
    }
    let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    if let Some(name) = default_route_v6(&v6) {
        return Ok((name, "it holds the IPv6 default route".to_owned()));
    }
    bail!(
        "no interface holds a listen address of the config or a default route (see `ip addr` and `ip route`); name the interface in `interface` or with --iface / DNSTEER_IFACE"
    )
}

/// The interface of the IPv4 default route with the lowest metric, from
/// `/proc/net/route` (Iface Destination Gateway Flags RefCnt Use Metric Mask ...).
fn default_route_v4(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let up = u32::from_str_radix(f.get(3)?, 16).ok()? & 1 != 0;
            let default = *f.get(1)? == "00000000" && *f.get(7)? == "00000000";
            let metric: u32 = f.get(6)?.parse().ok()?;
            (up && default).then(|| (metric, f[0].to_owned()))
        })
        .min()
        .map(|(_, name)| name)
}

/// The interface of the IPv6 default route with the lowest metric, from
/// `/proc/net/ipv6_route` (dest plen src splen nexthop metric refcnt use flags
/// iface); the kernel's unreachable defaults on `lo` are not routes out.
fn default_route_v6(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let default = f.first()?.bytes().all(|b| b == b'0') && *f.get(1)? == "00";
            let metric = u32::from_str_radix(f.get(5)?, 16).ok()?;
            let name = *f.get(9)?;
            (default && name != "lo").then(|| (metric, name.to_owned()))
        })
        .min()
        .map(|(_, name)| name)
}

/// Every address on this host with the interface (or `eth0:1` label) holding it.
pub fn addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut next = list;
    while !next.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*next };
        next = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr points at a sockaddr of the family it says.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let addr = u32::from_be(sin.sin_addr.s_addr).to_be_bytes();
                out.push((name, IpAddr::from(addr)));
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push((name, IpAddr::from(sin6.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_v4_takes_the_lowest_metric_of_the_up_defaults() {
        let table = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth9\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t00000000\t0102000A\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth2\t00000000\t0101000A\t0002\t0\t0\t1\t00000000\t0\t0\t0
";
        assert_eq!(default_route_v4(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_v4("Iface\tDestination\n"), None);
    }

    #[test]
    fn default_route_v6_skips_the_unreachable_ones_on_lo() {
        let zero = "00000000000000000000000000000000";
        let table = format!(
            "{zero} 00 {zero} 00 {zero} ffffffff 00000001 00000000 00200200       lo\n\
             20010db8000000000000000000000000 40 {zero} 00 {zero} 00000100 00000001 00000000 00000001     eth0\n\
             {zero} 00 {zero} 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     ens5\n"
        );
        assert_eq!(default_route_v6(&table).as_deref(), Some("ens5"));
    }

    #[test]
    fn addresses_lists_loopback() {
        assert!(
            addresses()
                .iter()
                .any(|(name, addr)| name == "lo" && *addr == IpAddr::from([127, 0, 0, 1]))
        );
    }
}
