//! `dnsteer doctor`, and the note `dnsteer run` logs at start: what on this
//! host makes a backend drop queries that dnsteer steered.
//!
//! A query that native XDP passes on a veth reaches the backend in a
//! page-pool buffer: veth copies nearly every skb (a kmalloc'd head, a clone,
//! fragments, or less than 256 bytes of headroom: `veth_convert_skb_to_xdp_buff`)
//! into one before the program runs, and the skb built from it is
//! charged 1075 bytes (its truesize) against the backend's socket receive
//! buffer, where the stack's own skb is charged 832 (docs/BENCHMARKS.md, "How
//! many queries a backend's socket holds"). With the default 212992-byte
//! buffer a BIND socket then holds 198 queries instead of 256, and drops
//! (`Udp: RcvbufErrors`) the rest while named waits for a CPU. BIND's
//! `udp-receive-buffer` (or the host's `net.core.rmem_default`) gives the
//! socket its queries back; dnsteer cannot, so it says so.

use std::{ffi::CString, path::Path};

use crate::config::{self, XdpModeSetting};

/// Bytes a query's skb is charged at the backend's socket, measured on veth
/// (kernel 6.18): built by the stack, and built from native XDP's page-pool
/// buffer.
pub const STACK_TRUESIZE: u64 = 832;
pub const XDP_VETH_TRUESIZE: u64 = 1075;
/// The mean in skb (generic) mode on a veth, measured the same way.
pub const SKB_MODE_TRUESIZE: u64 = 1006;

/// The `udp-receive-buffer` for BIND that holds as many XDP-passed queries as
/// `rmem_default` holds of the stack's: SO_RCVBUF is doubled by the kernel.
pub fn buffer_for(rmem_default: u64) -> u64 {
    (rmem_default * XDP_VETH_TRUESIZE).div_ceil(STACK_TRUESIZE * 2)
}

/// A value under /proc/sys, when readable.
fn sysctl(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The interface's driver name (`ethtool -i`), through SIOCETHTOOL.
pub fn driver(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    let name = CString::new(iface).ok()?;
    if name.as_bytes().len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid DrvInfo and ifreq (plain integers, arrays, a pointer).
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a datagram socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: req names the interface and points at info, both alive for the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &raw mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// `Udp: RcvbufErrors` of this network namespace.
fn rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
}

/// UDP sockets bound to port 53 in this namespace: (local address, bytes
/// queued, drops), from /proc/net/udp and udp6.
fn dns_sockets() -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(queues), Some(drops)) = (f.get(1), f.get(4), f.last()) else {
                continue;
            };
            if !local.ends_with(":0035") {
                continue;
            }
            let rx = queues
                .split(':')
                .nth(1)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            out.push(((*local).to_owned(), rx, drops.parse().unwrap_or(0)));
        }
    }
    out
}

/// Whether XDP on `iface` in `mode` builds the skbs a backend receives.
fn native(mode: XdpModeSetting) -> bool {
    !matches!(mode, XdpModeSetting::Skb)
}

/// The receive-buffer note for `iface` in `mode`, if it applies: a veth in
/// native (or auto) mode.
pub fn receive_buffer_note(iface: &str, mode: XdpModeSetting) -> Option<String> {
    if !native(mode) || driver(iface).as_deref() != Some("veth") {
        return None;
    }
    let rmem = sysctl("/proc/sys/net/core/rmem_default").unwrap_or(212_992);
    Some(format!(
        "receive buffers: with native XDP on the veth {iface}, a query reaches its backend charged {XDP_VETH_TRUESIZE} bytes \
         (its skb's truesize) instead of {STACK_TRUESIZE}: a socket with net.core.rmem_default = {rmem} holds {} queries, not {}, \
         and BIND drops the rest (Udp: RcvbufErrors) while named waits for a CPU. Give BIND `udp-receive-buffer {};` or more \
         (net.core.rmem_max must allow it); xdp_mode = \"skb\" gets part of the way ({SKB_MODE_TRUESIZE} bytes a query). \
         `dnsteer doctor` and README \"Receive buffers on the backends\" say more",
        rmem / XDP_VETH_TRUESIZE,
        rmem / STACK_TRUESIZE,
        buffer_for(rmem)
    ))
}

/// Logs the receive-buffer note for the interface and mode `dnsteer run`
/// will use (the config's, with the command line's overrides). Says nothing
/// when the config cannot be read: `run` reports that.
pub fn log_at_start(config_path: &Path, iface: Option<&str>, mode: Option<XdpModeSetting>) {
    let Ok(config) = config::load_with(config_path, iface) else {
        return;
    };
    let iface = if config.interface == config::AUTO_INTERFACE {
        match crate::datapath::uplink::choose(&config) {
            Ok((iface, _)) => iface,
            Err(_) => return,
        }
    } else {
        config.interface.clone()
    };
    if let Some(note) = receive_buffer_note(&iface, mode.unwrap_or(config.xdp_mode)) {
        log::warn!("{note}");
    }
}

/// `dnsteer doctor`: the interface, the receive buffers, and the DNS sockets
/// and their drops in this network namespace, as lines to print.
pub fn report(iface: Option<&str>, mode: XdpModeSetting) -> Vec<String> {
    let mut out = Vec::new();
    let rmem = sysctl("/proc/sys/net/core/rmem_default");
    let rmem_max = sysctl("/proc/sys/net/core/rmem_max");
    if let Some(iface) = iface {
        let drv = driver(iface);
        out.push(format!(
            "interface {iface}: driver {}, xdp_mode {mode}",
            drv.as_deref()
                .unwrap_or("unknown (no such interface here?)")
        ));
        match (drv.as_deref(), native(mode)) {
            (Some("veth"), true) => out.push(format!(
                "  native XDP on a veth: queries reach the backends charged {XDP_VETH_TRUESIZE} bytes each, not {STACK_TRUESIZE} (see below)"
            )),
            (Some("veth"), false) => out.push(format!(
                "  skb mode on a veth: queries reach the backends charged {SKB_MODE_TRUESIZE} bytes each on average, not {STACK_TRUESIZE}"
            )),
            (Some(_), true) => out.push(
                "  native XDP: the driver builds the skbs of passed packets from its XDP buffers, and some charge a page or half a page per packet; \
                 measure on a backend: `ss -uamn` with named stopped (SIGSTOP), skmem r / Recv-Q packets"
                    .to_owned(),
            ),
            _ => {}
        }
    }
    match (rmem, rmem_max) {
        (Some(rmem), Some(max)) => {
            out.push(format!(
                "receive buffers (this namespace): net.core.rmem_default {rmem}, net.core.rmem_max {max}"
            ));
            out.push(format!(
                "  a socket with the default buffer holds {} queries charged {STACK_TRUESIZE} bytes (no XDP), {} charged {XDP_VETH_TRUESIZE} (native XDP on a veth), {} charged {SKB_MODE_TRUESIZE} (skb mode on a veth, mean)",
                rmem / STACK_TRUESIZE,
                rmem / XDP_VETH_TRUESIZE,
                rmem / SKB_MODE_TRUESIZE
            ));
            let want = buffer_for(rmem);
            out.push(format!(
                "  BIND: `udp-receive-buffer {want};` (or more) in options {{ }} holds as many as before; the kernel doubles it to {} bytes{}",
                want * 2,
                if max < want {
                    format!(", but caps the request at net.core.rmem_max = {max}: raise it on the host")
                } else {
                    String::new()
                }
            ));
        }
        _ => out.push("receive buffers: /proc/sys/net/core/rmem_* unreadable".to_owned()),
    }
    let sockets = dns_sockets();
    if sockets.is_empty() {
        out.push(
            "no UDP socket on port 53 in this namespace (run `dnsteer doctor` in a backend's namespace to see its drops)"
                .to_owned(),
        );
    }
    for (local, queued, drops) in sockets {
        out.push(format!(
            "socket {local} (hex): {queued} bytes queued, {drops} dropped since it opened"
        ));
    }
    if let Some(errors) = rcvbuf_errors() {
        out.push(format!(
            "Udp RcvbufErrors (this namespace): {errors}{}",
            if errors > 0 {
                ": queries dropped at full sockets; give the DNS server a bigger receive buffer"
            } else {
                ""
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_that_holds_as_many_queries() {
        let want = buffer_for(212_992);
        assert_eq!(want, 137_600);
        // Doubled by the kernel, it holds what the default held at 832 bytes.
        assert!(want * 2 / XDP_VETH_TRUESIZE >= 212_992 / STACK_TRUESIZE);
    }

    #[test]
    fn loopback_is_not_a_veth() {
        assert_eq!(receive_buffer_note("lo", XdpModeSetting::Auto), None);
        assert_eq!(
            receive_buffer_note("no-such-if0", XdpModeSetting::Driver),
            None
        );
    }
}
