//! Which interface the kernel routes an address through, asked of the kernel
//! itself with an RTM_GETROUTE request for that destination (what `ip route
//! get` does), so policy routing (`ip rule`, other tables) is covered. The fast
//! path attaches its reply program to the ingress of these interfaces:
//! backends' replies come back through them.

use std::{
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The interface the kernel sends `addr` through, if it has a route there.
pub fn interface_for(addr: IpAddr) -> Result<Option<String>> {
    let Some(index) =
        route_get(addr).with_context(|| format!("asking the kernel for the route to {addr}"))?
    else {
        return Ok(None);
    };
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname writes at most.
    if unsafe { libc::if_indextoname(index, name.as_mut_ptr()) }.is_null() {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("naming interface {index}, the route to {addr}"));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `name`.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) };
    Ok(Some(name.to_string_lossy().into_owned()))
}

/// The output interface index of the kernel's route to `addr`; None when the
/// kernel has no route there (unreachable, prohibited, blackholed).
fn route_get(addr: IpAddr) -> Result<Option<u32>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket.bind_auto().context("binding a netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting a netlink socket to the kernel")?;

    let mut request = RouteMessage::default();
    let (family, bits) = match addr {
        IpAddr::V4(_) => (AddressFamily::Inet, Ipv4Addr::BITS),
        IpAddr::V6(_) => (AddressFamily::Inet6, Ipv6Addr::BITS),
    };
    request.header.address_family = family;
    request.header.destination_prefix_length = bits as u8;
    request
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetRoute(request)),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).context("sending RTM_GETROUTE")?;

    let mut answer = vec![0; 8192];
    let size = socket
        .recv(&mut &mut answer[..], 0)
        .context("reading the answer to RTM_GETROUTE")?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[..size])
        .context("decoding the answer to RTM_GETROUTE")?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
            Ok(route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            }))
        }
        NetlinkPayload::Error(err) if err.code.is_some() => {
            let err = err.to_io();
            match err.raw_os_error() {
                Some(
                    libc::ENETUNREACH
                    | libc::EHOSTUNREACH
                    | libc::EACCES
                    | libc::EPERM
                    | libc::EINVAL,
                ) => Ok(None),
                _ => Err(err).context("the kernel refused RTM_GETROUTE"),
            }
        }
        other => bail!("unexpected answer to RTM_GETROUTE: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_hosts_table_reads() {
        // Whatever routes this host has, the kernel answers.
        assert!(interface_for(Ipv4Addr::new(192, 0, 2, 1).into()).is_ok());
        assert!(interface_for("2001:db8::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn loopback_is_routed_through_lo() {
        assert_eq!(
            interface_for(Ipv4Addr::LOCALHOST.into())
                .unwrap()
                .as_deref(),
            Some("lo")
        );
    }
}
