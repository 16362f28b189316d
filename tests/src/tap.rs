//! A packet tap on one interface of a test namespace: which DNS queries reached a
//! host and which it answered, seen on the wire rather than inferred from the
//! client. An `AF_PACKET` socket copies every frame; it changes nothing on the path.

use std::{
    ffi::CString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{bind::DNS_PORT, netns::NetNs};

/// Which way a DNS message crossed the tapped interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A query arriving (destination port 53).
    Query,
    /// An answer leaving (source port 53).
    Answer,
}

/// One DNS message on the tapped interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// When the tap read it (a little after it crossed the interface).
    pub at: Instant,
    pub direction: Direction,
    /// The far end: the client's address and port as the host saw them.
    pub peer: SocketAddr,
    pub id: u16,
}

/// Records the DNS messages on one interface until [`Tap::finish`].
pub struct Tap {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<Seen>>>>,
}

impl Tap {
    /// Starts tapping `iface` inside `ns`. The socket lives in `ns`, so the tap must
    /// be finished (or dropped) before the namespace is deleted.
    pub fn start(ns: &NetNs, iface: &str) -> Result<Self> {
        let socket = ns.enter(|| open(iface))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("tap-{iface}"))
            .spawn(move || read_until(&socket, &flag))
            .context("starting the tap thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the tap; every DNS message it saw, in the order it read them.
    pub fn finish(mut self) -> Result<Vec<Seen>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().expect("finished once").join() {
            Ok(seen) => seen,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// A cooked (`SOCK_DGRAM`) packet socket bound to `iface`: frames arrive without their
/// link header, and `sll_pkttype` tells incoming from outgoing.
fn open(iface: &str) -> Result<OwnedFd> {
    let name = CString::new(iface).context("an interface name with a NUL")?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("no interface {iface}"));
    }
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(all)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening an AF_PACKET socket");
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = i32::try_from(index).context("interface index out of range")?;
    // SAFETY: addr is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("binding the tap to {iface}"));
    }
    // A read wakes at least every 50 ms to look at the stop flag.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: timeout is a valid timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting the tap's read timeout");
    }
    Ok(socket)
}

fn read_until(socket: &OwnedFd, stop: &AtomicBool) -> Result<Vec<Seen>> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sockaddr_ll is plain data; recvfrom fills it.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and from are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        };
        let at = Instant::now();
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                _ => bail!("reading the tap: {e}"),
            }
        }
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        let len = usize::try_from(n).expect("checked non-negative");
        if let Some(message) = dns_message(&buf[..len], outgoing, at) {
            seen.push(message);
        }
    }
    Ok(seen)
}

/// A UDP DNS query in, or answer out, of an IPv4 or IPv6 packet (first fragments only).
fn dns_message(packet: &[u8], outgoing: bool, at: Instant) -> Option<Seen> {
    let (src, dst, udp) = match packet.first()? >> 4 {
        4 => {
            let header = usize::from(packet[0] & 0x0f) * 4;
            let fragment_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
            if *packet.get(9)? != 17 || fragment_offset != 0 {
                return None;
            }
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (
                IpAddr::from(Ipv4Addr::from(src)),
                IpAddr::from(Ipv4Addr::from(dst)),
                packet.get(header..)?,
            )
        }
        // No extension headers: the test bed's answers and queries carry none.
        6 if *packet.get(6)? == 17 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (
                IpAddr::from(Ipv6Addr::from(src)),
                IpAddr::from(Ipv6Addr::from(dst)),
                packet.get(40..)?,
            )
        }
        _ => return None,
    };
    let port = |at: usize| Some(u16::from_be_bytes([*udp.get(at)?, *udp.get(at + 1)?]));
    let (sport, dport) = (port(0)?, port(2)?);
    let id = u16::from_be_bytes([*udp.get(8)?, *udp.get(9)?]);
    let (direction, peer) = match (outgoing, sport, dport) {
        (false, _, DNS_PORT) => (Direction::Query, SocketAddr::new(src, sport)),
        (true, DNS_PORT, _) => (Direction::Answer, SocketAddr::new(dst, dport)),
        _ => return None,
    };
    Some(Seen {
        at,
        direction,
        peer,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, id: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0, 20, 0, 0]);
        p.extend(id.to_be_bytes());
        p.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn queries_in_and_answers_out_are_told_apart() {
        let at = Instant::now();
        let query = udp4([198, 51, 100, 7], [10, 0, 0, 2], 40000, 53, 0xbeef);
        let seen = dns_message(&query, false, at).expect("a query");
        assert_eq!(seen.direction, Direction::Query);
        assert_eq!(seen.peer, "198.51.100.7:40000".parse().unwrap());
        assert_eq!(seen.id, 0xbeef);

        let answer = udp4([10, 0, 0, 2], [198, 51, 100, 7], 53, 40000, 0xbeef);
        let seen = dns_message(&answer, true, at).expect("an answer");
        assert_eq!(seen.direction, Direction::Answer);
        assert_eq!(seen.peer, "198.51.100.7:40000".parse().unwrap());

        // The host's own queries out (a resolver's) and answers in are neither.
        assert_eq!(dns_message(&query, true, at), None);
        assert_eq!(dns_message(&answer, false, at), None);
        let mut tcp = query.clone();
        tcp[9] = 6;
        assert_eq!(dns_message(&tcp, false, at), None);
        let mut later_fragment = query;
        later_fragment[7] = 1;
        assert_eq!(dns_message(&later_fragment, false, at), None);
    }
}
