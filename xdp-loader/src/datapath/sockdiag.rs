//! Closing connected UDP sockets whose backend left, through `sock_diag`
//! (`SOCK_DESTROY`, `CONFIG_INET_DIAG_DESTROY`): the socket is disconnected
//! with `ECONNABORTED`, so its owner's next receive or send fails at once and
//! a resolver reconnects, which draws a live backend. Without it, a socket
//! connected to a backend that is gone would be silent until it closed.
//!
//! `sock_diag` sees the sockets of this network namespace only.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, sockid.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 48;
/// `TCP_ESTABLISHED`: a connected UDP socket.
const ESTABLISHED: u32 = 1;

/// One connected UDP socket as `sock_diag` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connected {
    pub family: u8,
    pub cookie: u64,
    pub peer: SocketAddr,
    /// The kernel's `inet_diag_sockid`, handed back to destroy it.
    id: [u8; SOCKID_LEN],
}

/// A `NETLINK_SOCK_DIAG` socket.
pub struct SockDiag(OwnedFd);

impl SockDiag {
    pub fn open() -> io::Result<Self> {
        // SAFETY: a plain syscall; the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The connected UDP sockets of both families.
    pub fn connected_udp(&self) -> io::Result<Vec<Connected>> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.send(
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST | NLM_F_DUMP,
                &request(family, 1 << ESTABLISHED, &[0; SOCKID_LEN]),
            )?;
            'dump: loop {
                let buf = self.recv()?;
                for (kind, body) in messages(&buf) {
                    match kind {
                        NLMSG_DONE => break 'dump,
                        NLMSG_ERROR => return Err(error_of(body)),
                        SOCK_DIAG_BY_FAMILY => out.extend(parse_msg(body)),
                        _ => {}
                    }
                }
            }
        }
        Ok(out)
    }

    /// Disconnects `sock` with `ECONNABORTED`.
    pub fn destroy(&self, sock: &Connected) -> io::Result<()> {
        self.send(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            &request(sock.family, u32::MAX, &sock.id),
        )?;
        let buf = self.recv()?;
        match messages(&buf).next() {
            Some((NLMSG_ERROR, body)) => match error_of(body) {
                e if e.raw_os_error() == Some(0) => Ok(()),
                e => Err(e),
            },
            _ => Err(io::Error::other("no acknowledgement from sock_diag")),
        }
    }

    fn send(&self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&[0; 8]);
        msg.extend_from_slice(body);
        // SAFETY: sends a buffer of the length given (to the kernel: a
        // netlink socket that is not bound sends to pid 0).
        let n = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 32 * 1024];
        // SAFETY: reads into a buffer of the length given.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }
}

fn request(family: u8, states: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let mut req = Vec::with_capacity(REQ_LEN);
    req.extend_from_slice(&[family, libc::IPPROTO_UDP as u8, 0, 0]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(id);
    req
}

/// The (type, body) of each netlink message in one datagram.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
        let body = buf.get(NLMSG_HDRLEN..len)?;
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, body))
    })
}

fn error_of(body: &[u8]) -> io::Error {
    let errno = body
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map_or(libc::EPROTO, i32::from_ne_bytes);
    io::Error::from_raw_os_error(-errno)
}

/// One `struct inet_diag_msg`: family, state, timer, retrans, then the sockid.
fn parse_msg(body: &[u8]) -> Option<Connected> {
    let family = *body.first()?;
    let id: [u8; SOCKID_LEN] = body.get(4..4 + SOCKID_LEN)?.try_into().ok()?;
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let dst: [u8; 16] = id[20..36].try_into().ok()?;
    let ip = if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]))
    } else {
        let v6 = Ipv6Addr::from(dst);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    };
    let cookie = u64::from(u32::from_ne_bytes(id[40..44].try_into().ok()?))
        | u64::from(u32::from_ne_bytes(id[44..48].try_into().ok()?)) << 32;
    Some(Connected {
        family,
        cookie,
        peer: SocketAddr::new(ip, dport),
        id,
    })
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn finds_a_connected_socket_and_destroys_it() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let diag = SockDiag::open().unwrap();
        let found: Vec<Connected> = diag
            .connected_udp()
            .unwrap()
            .into_iter()
            .filter(|c| c.peer == server.local_addr().unwrap())
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_ne!(found[0].cookie, 0);
        diag.destroy(&found[0]).unwrap();
        client.set_nonblocking(true).unwrap();
        let err = client.recv(&mut [0; 8]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        assert!(
            !diag
                .connected_udp()
                .unwrap()
                .iter()
                .any(|c| c.peer == server.local_addr().unwrap()),
            "disconnected"
        );
    }
}
