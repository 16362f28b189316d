//! The sources of desired state, and the one queue they feed.
//!
//! Every source runs as a task of its own and sends [`Event`]s; the daemon's
//! loop ([`super::run`]) takes them one at a time and applies each through the
//! reconciler ([`crate::live::Live`], owned by the data path). Sources never
//! write a map, and observers (stats, metrics) never send an event.
//!
//! Today's sources: the config file ([`config_file`]: edits and SIGHUP), the
//! control socket (`dnsteer backends`, [`crate::control::server`]), the
//! health probes ([`crate::health::Monitor`]) and a clock ([`ticks`]) on which
//! passive health judges the backends' answers. A new source, such as a
//! Kubernetes EndpointSlice watch, is a task spawned in [`super::run`] next to
//! these that sends [`Event::Change`] (e.g. `Change::Set` with the ready
//! endpoints of a service) on a clone of the [`Events`] sender; it touches no
//! map code.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    signal::unix::Signal,
    sync::{mpsc, oneshot},
};

use crate::{
    control::{Request, Response},
    health::ProbeResult,
    kubernetes::Update,
    live::Change,
};

/// What a source asks of the daemon.
#[derive(Debug)]
pub enum Event {
    /// Read the config file again and make the maps match it; says why
    /// (SIGHUP, or the file changed).
    Reload(&'static str),
    /// A `dnsteer backends` request; the answer goes back on the sender.
    Request(Request, oneshot::Sender<Response>),
    /// A change to one service's backend set from a source that needs no
    /// answer; `source` names it in the log.
    Change {
        service: String,
        change: Change,
        source: &'static str,
    },
    /// One health probe's outcome.
    Probe(ProbeResult),
    /// What a Kubernetes watch says: a service's desired backends (or listen
    /// addresses), or the watch's own state.
    Kubernetes(Update),
    /// A second passed: time to judge the backends' answers (passive health).
    Tick,
    /// An address was added to or removed from the interface (netlink).
    Addresses,
}

/// Where sources send their events.
pub type Events = mpsc::Sender<Event>;

/// How many events may wait for the daemon; a source waits when it is this far behind.
pub const QUEUE: usize = 64;

/// Passes a Kubernetes source's updates on as [`Event::Kubernetes`], until
/// the daemon is gone.
pub async fn kubernetes(mut from: mpsc::UnboundedReceiver<Update>, events: Events) {
    while let Some(update) = from.recv().await {
        if events.send(Event::Kubernetes(update)).await.is_err() {
            return;
        }
    }
}

/// Sends [`Event::Reload`] when the config file at `path` changes (checked
/// every second) or on SIGHUP, until the daemon is gone.
pub async fn config_file(path: PathBuf, mut sighup: Signal, events: Events) {
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        let why = tokio::select! {
            _ = sighup.recv() => {
                seen = stamp(&path).or(seen);
                "SIGHUP"
            }
            _ = tick.tick() => {
                let now = stamp(&path);
                // A missing file is an editor mid-save: wait for it to come back.
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                "config file changed"
            }
        };
        if events.send(Event::Reload(why)).await.is_err() {
            return;
        }
    }
}

/// Sends [`Event::Tick`] every second, until the daemon is gone.
pub async fn ticks(events: Events) {
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if events.send(Event::Tick).await.is_err() {
            return;
        }
    }
}

/// Sends [`Event::Addresses`] when an IPv4 or IPv6 address is added to or
/// removed from `interface` (rtnetlink `RTNLGRP_IPV4_IFADDR`/`IPV6_IFADDR`),
/// one event per burst, until the daemon is gone. Without the socket (logged)
/// the listen addresses are read again only on reload and Kubernetes events.
pub async fn addresses(interface: String, events: Events) {
    let socket = match netlink::AddrEvents::open() {
        Ok(s) => s,
        Err(err) => {
            log::warn!(
                "cannot watch the addresses of {interface} (netlink): {err}; a service without listen follows them only on reload"
            );
            return;
        }
    };
    // SAFETY: the AsyncFd owns the socket, so the fd stays open while registered.
    let Ok(fd) = (unsafe { tokio::io::unix::AsyncFd::register(socket) }) else {
        log::warn!(
            "cannot watch the addresses of {interface}: registering the netlink socket failed"
        );
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        // The index is read each time: the device may come back under a new one.
        let index = netlink::index_of(&interface);
        let mut mine = false;
        loop {
            match fd.get_ref().read_changes() {
                Ok(Some(changes)) => {
                    for (new, ifindex) in changes {
                        if Some(ifindex) == index {
                            log::info!(
                                "an address was {} {interface}: reading its addresses again",
                                if new { "added to" } else { "removed from" }
                            );
                            mine = true;
                        }
                    }
                }
                Ok(None) => {
                    guard.clear_ready();
                    break;
                }
                Err(err) => {
                    // ENOBUFS: events were lost; read everything again.
                    log::warn!(
                        "netlink address events on {interface}: {err}; reading its addresses again"
                    );
                    mine = true;
                }
            }
        }
        if mine && events.send(Event::Addresses).await.is_err() {
            return;
        }
    }
}

mod netlink {
    use std::{
        ffi::CString,
        io,
        os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    };

    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    const RTM_NEWADDR: u16 = 20;
    const RTM_DELADDR: u16 = 21;
    /// `struct nlmsghdr`: len u32, type u16, flags u16, seq u32, pid u32.
    const NLMSG_HDRLEN: usize = 16;
    /// `struct ifaddrmsg`: family, prefixlen, flags, scope (u8 each), index u32.
    const IFADDRMSG_LEN: usize = 8;

    /// A `NETLINK_ROUTE` socket subscribed to address events.
    pub struct AddrEvents(OwnedFd);

    impl AsRawFd for AddrEvents {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    impl AddrEvents {
        pub fn open() -> io::Result<Self> {
            // SAFETY: plain syscalls on a socket this function owns.
            unsafe {
                let fd = libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::NETLINK_ROUTE,
                );
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(fd);
                let mut addr: libc::sockaddr_nl = std::mem::zeroed();
                addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
                addr.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
                if libc::bind(
                    fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                ) < 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(Self(fd))
            }
        }

        /// One datagram's address events as (added, interface index);
        /// `None` when nothing is waiting.
        pub fn read_changes(&self) -> io::Result<Option<Vec<(bool, u32)>>> {
            let mut buf = vec![0u8; 16384];
            // SAFETY: reads into a buffer of the length given.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                return if err.kind() == io::ErrorKind::WouldBlock {
                    Ok(None)
                } else {
                    Err(err)
                };
            }
            Ok(Some(parse(&buf[..n as usize])))
        }
    }

    /// The address events in one netlink datagram.
    pub fn parse(mut buf: &[u8]) -> Vec<(bool, u32)> {
        let mut out = Vec::new();
        while buf.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
            if len < NLMSG_HDRLEN || len > buf.len() {
                break;
            }
            if (kind == RTM_NEWADDR || kind == RTM_DELADDR) && len >= NLMSG_HDRLEN + IFADDRMSG_LEN {
                let at = NLMSG_HDRLEN + 4;
                let index = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
                out.push((kind == RTM_NEWADDR, index));
            }
            let aligned = (len + 3) & !3;
            buf = &buf[aligned.min(buf.len())..];
        }
        out
    }

    /// The interface's index, if it exists.
    pub fn index_of(name: &str) -> Option<u32> {
        let name = CString::new(name).ok()?;
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        (index != 0).then_some(index)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parse_reads_new_and_deleted_addresses_and_skips_others() {
            let msg = |kind: u16, index: u32| {
                let mut m = Vec::new();
                m.extend_from_slice(&28u32.to_ne_bytes());
                m.extend_from_slice(&kind.to_ne_bytes());
                m.extend_from_slice(&[0; 10]);
                m.extend_from_slice(&[2, 24, 0, 0]);
                m.extend_from_slice(&index.to_ne_bytes());
                m.extend_from_slice(&[0; 4]);
                m
            };
            let mut buf = msg(RTM_NEWADDR, 3);
            buf.extend(msg(16, 9)); // RTM_NEWLINK
            buf.extend(msg(RTM_DELADDR, 4));
            assert_eq!(parse(&buf), vec![(true, 3), (false, 4)]);
            assert!(parse(&buf[..10]).is_empty());
        }

        #[test]
        fn index_of_knows_lo_and_not_a_missing_device() {
            assert!(index_of("lo").is_some());
            assert_eq!(index_of("no-such-if0"), None);
        }
    }
}

/// How often passive health reads the backends' answers.
const TICK_INTERVAL: Duration = crate::health::passive::TICK;

/// Passes what arrives on `from` to the daemon as `wrap` makes it, until
/// either side is gone.
pub async fn forward<T>(mut from: mpsc::Receiver<T>, events: Events, wrap: fn(T) -> Event) {
    while let Some(item) = from.recv().await {
        if events.send(wrap(item)).await.is_err() {
            return;
        }
    }
}

/// The config file's identity and contents' stamp, to notice edits (also an
/// editor's write-to-temp-and-rename, which changes the inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
    })
}

/// How often the config file is checked for edits.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
