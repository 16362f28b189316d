//! Header parsing: Ethernet, up to two VLAN tags, IPv4 (with options), UDP or TCP.
//!
//! Written once over the [`Packet`] trait so the kernel side (bounds checked
//! against `data_end`) and the host (a byte slice) run the same code: what the
//! host tests accept is what the program steers.

use crate::maps::{PROTO_TCP, PROTO_UDP, Reason};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const TCP_MIN_HLEN: usize = 20;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Field offsets inside the IPv4 header.
pub mod ipv4 {
    pub const TOT_LEN: usize = 2;
    pub const FRAG: usize = 6;
    pub const PROTO: usize = 9;
    pub const CHECK: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    /// More-fragments flag and fragment offset; either set means a fragment.
    pub const FRAG_MASK: u16 = 0x3fff;
}

/// Field offsets inside the UDP header.
pub mod udp {
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const LEN: usize = 4;
    pub const CHECK: usize = 6;
}

/// Field offsets and flags inside the TCP header.
pub mod tcp {
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const DOFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECK: usize = 16;
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Read access to a packet's bytes.
#[expect(
    clippy::len_without_is_empty,
    reason = "a frame is never asked whether it is empty"
)]
pub trait Packet {
    /// The packet's length in bytes (the linear part the program can read).
    fn len(&self) -> usize;
    /// `N` bytes at `offset`, or `None` when they run past the end.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Packet for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.get(offset..offset.checked_add(N)?)?.try_into().ok()
    }
}

/// An IPv4 UDP datagram or TCP segment: its 5-tuple and where its headers start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers4 {
    /// Offset of the IPv4 header.
    pub l3: usize,
    /// Offset of the UDP or TCP header.
    pub l4: usize,
    /// `PROTO_UDP` or `PROTO_TCP`.
    pub proto: u8,
    /// TCP flags (`tcp::FIN` ..); 0 for UDP.
    pub tcp_flags: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

impl Headers4 {
    /// Offset of the transport checksum.
    #[inline(always)]
    pub const fn l4_check(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4 + tcp::CHECK
        } else {
            self.l4 + udp::CHECK
        }
    }

    #[inline(always)]
    pub const fn is_tcp(&self) -> bool {
        self.proto == PROTO_TCP
    }

    /// A TCP segment that opens a connection (SYN without ACK).
    #[inline(always)]
    pub const fn is_syn(&self) -> bool {
        self.is_tcp() && self.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
    }
}

/// Why a packet is not an IPv4 UDP datagram or TCP segment dnsteer may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not IPv4 (ARP, IPv6, three or more VLAN tags, ..).
    NotIpv4,
    /// IPv4 but neither UDP nor TCP.
    NotUdpOrTcp,
    /// To a multicast or broadcast address: never a load-balanced query.
    NotUnicast,
    /// Truncated, or lengths that disagree with each other or with the frame.
    Malformed,
    /// An IPv4 fragment.
    Fragment,
}

impl Skip {
    /// The counter a skipped packet bumps.
    #[inline(always)]
    pub const fn reason(self) -> Reason {
        match self {
            Skip::NotIpv4 | Skip::NotUdpOrTcp | Skip::NotUnicast => Reason::NotService,
            Skip::Malformed => Reason::Malformed,
            Skip::Fragment => Reason::Fragment,
        }
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// The ethertype after at most two VLAN tags (802.1Q or 802.1ad), and the offset
/// of the header that follows.
#[inline(always)]
fn ethertype<P: Packet + ?Sized>(p: &P) -> Result<(u16, usize), Skip> {
    let mut proto = be16(p.bytes::<2>(12).ok_or(Skip::Malformed)?);
    let mut off = ETH_HLEN;
    // Unrolled, not a loop: the verifier then sees two fixed steps.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(p.bytes::<2>(off + 2).ok_or(Skip::Malformed)?);
        off += VLAN_HLEN;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(p.bytes::<2>(off + 2).ok_or(Skip::Malformed)?);
        off += VLAN_HLEN;
    }
    Ok((proto, off))
}

/// Parses an Ethernet frame down to its UDP or TCP header.
#[inline(always)]
pub fn headers4<P: Packet + ?Sized>(p: &P) -> Result<Headers4, Skip> {
    let (proto, l3) = ethertype(p)?;
    if proto != ETH_P_IPV4 {
        return Err(Skip::NotIpv4);
    }
    let ip = p.bytes::<IPV4_MIN_HLEN>(l3).ok_or(Skip::Malformed)?;
    if ip[0] >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let tot_len = be16([ip[ipv4::TOT_LEN], ip[ipv4::TOT_LEN + 1]]) as usize;
    // The frame may carry padding after the datagram, never less than it.
    if ihl < IPV4_MIN_HLEN || tot_len < ihl || l3 + tot_len > p.len() {
        return Err(Skip::Malformed);
    }
    if be16([ip[ipv4::FRAG], ip[ipv4::FRAG + 1]]) & ipv4::FRAG_MASK != 0 {
        return Err(Skip::Fragment);
    }
    let proto = ip[ipv4::PROTO];
    if proto != PROTO_UDP && proto != PROTO_TCP {
        return Err(Skip::NotUdpOrTcp);
    }
    let dst = [
        ip[ipv4::DST],
        ip[ipv4::DST + 1],
        ip[ipv4::DST + 2],
        ip[ipv4::DST + 3],
    ];
    if dst[0] & 0xf0 == 0xe0 || dst == [0xff; 4] {
        return Err(Skip::NotUnicast);
    }
    let l4 = l3 + ihl;
    let payload = tot_len - ihl;
    // The first 20 bytes cover both a UDP header and a minimal TCP header; a
    // UDP datagram is read as far as its own 8 bytes only.
    let tcp_flags = if proto == PROTO_TCP {
        let hdr = p.bytes::<TCP_MIN_HLEN>(l4).ok_or(Skip::Malformed)?;
        let doff = (hdr[tcp::DOFF] >> 4) as usize * 4;
        if doff < TCP_MIN_HLEN || doff > payload {
            return Err(Skip::Malformed);
        }
        hdr[tcp::FLAGS]
    } else {
        let hdr = p.bytes::<UDP_HLEN>(l4).ok_or(Skip::Malformed)?;
        let udp_len = be16([hdr[udp::LEN], hdr[udp::LEN + 1]]) as usize;
        if udp_len < UDP_HLEN || udp_len > payload {
            return Err(Skip::Malformed);
        }
        0
    };
    // Ports sit at the same offsets in UDP and TCP.
    let ports = p.bytes::<4>(l4).ok_or(Skip::Malformed)?;
    Ok(Headers4 {
        l3,
        l4,
        proto,
        tcp_flags,
        src: [
            ip[ipv4::SRC],
            ip[ipv4::SRC + 1],
            ip[ipv4::SRC + 2],
            ip[ipv4::SRC + 3],
        ],
        dst,
        sport: [ports[0], ports[1]],
        dport: [ports[2], ports[3]],
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// Ethernet + `tags` VLAN tags + IPv4 with `opts` option bytes + UDP + payload.
    fn frame(tags: &[u16], opts: usize, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        for &tpid in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x64]);
        }
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ihl = IPV4_MIN_HLEN + opts;
        let tot = (ihl + UDP_HLEN + payload.len()) as u16;
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&[
            0, 1, 0, 0, 64, PROTO_UDP, 0, 0, 192, 0, 2, 100, 192, 0, 2, 10,
        ]);
        f.extend(core::iter::repeat_n(1u8, opts)); // NOP options
        f.extend_from_slice(&[0x9c, 0x40, 0, 53]);
        f.extend_from_slice(&((UDP_HLEN + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn plain_query() {
        let f = frame(&[], 0, b"query");
        let u = headers4(f.as_slice()).unwrap();
        assert_eq!((u.l3, u.l4), (14, 34));
        assert_eq!((u.src, u.dst), ([192, 0, 2, 100], [192, 0, 2, 10]));
        assert_eq!((be16(u.sport), be16(u.dport)), (40000, 53));
    }

    #[test]
    fn vlan_qinq_and_options() {
        let u = headers4(frame(&[ETH_P_8021AD, ETH_P_8021Q], 12, b"q").as_slice()).unwrap();
        assert_eq!((u.l3, u.l4), (22, 22 + 32));
        let three = frame(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], 0, b"q");
        assert_eq!(headers4(three.as_slice()), Err(Skip::NotIpv4));
    }

    #[test]
    fn every_truncation_is_malformed() {
        let f = frame(&[ETH_P_8021Q], 4, b"");
        for cut in 0..f.len() {
            assert_eq!(headers4(&f[..cut]), Err(Skip::Malformed), "cut at {cut}");
        }
        assert!(headers4(f.as_slice()).is_ok());
    }

    #[test]
    fn inconsistent_lengths_and_fragments() {
        let base = frame(&[], 0, b"abcd");
        let with = |at: usize, val: &[u8]| {
            let mut f = base.clone();
            f[at..at + val.len()].copy_from_slice(val);
            headers4(f.as_slice())
        };
        assert_eq!(
            with(14, &[0x65]),
            Err(Skip::Malformed),
            "version 6 in an IPv4 ethertype"
        );
        assert_eq!(with(14, &[0x44]), Err(Skip::Malformed), "IHL 4");
        assert_eq!(
            with(16, &[0x00, 0xff]),
            Err(Skip::Malformed),
            "total length past the frame"
        );
        assert_eq!(
            with(38, &[0x00, 0x07]),
            Err(Skip::Malformed),
            "UDP length below its header"
        );
        assert_eq!(
            with(38, &[0x00, 0x20]),
            Err(Skip::Malformed),
            "UDP length past the datagram"
        );
        assert_eq!(with(20, &[0x20, 0x00]), Err(Skip::Fragment), "MF");
        assert_eq!(with(20, &[0x00, 0x10]), Err(Skip::Fragment), "offset");
        assert!(with(20, &[0x40, 0x00]).is_ok(), "DF is not a fragment");
        assert_eq!(with(23, &[1]), Err(Skip::NotUdpOrTcp), "ICMP");
        assert_eq!(with(30, &[224, 0, 0, 251]), Err(Skip::NotUnicast));
        assert_eq!(with(30, &[255, 255, 255, 255]), Err(Skip::NotUnicast));
        assert_eq!(with(12, &[0x86, 0xdd]), Err(Skip::NotIpv4));
        let mut padded = base.clone();
        padded.extend_from_slice(&[0; 6]);
        assert!(
            headers4(padded.as_slice()).is_ok(),
            "Ethernet padding after the datagram"
        );
    }

    /// A TCP segment: the UDP frame's 20 bytes after IPv4 reread as a TCP header.
    fn tcp_frame(doff_flags: [u8; 2]) -> Vec<u8> {
        let mut f = frame(&[], 0, &[0; 12]);
        f[23] = PROTO_TCP;
        f[34 + tcp::DOFF..34 + tcp::FLAGS + 1].copy_from_slice(&doff_flags);
        f
    }

    #[test]
    fn tcp_segments() {
        let syn = tcp_frame([0x50, tcp::SYN]);
        let h = headers4(syn.as_slice()).unwrap();
        assert_eq!(
            (h.proto, h.tcp_flags, h.l4_check()),
            (PROTO_TCP, tcp::SYN, 34 + 16)
        );
        assert_eq!((be16(h.sport), be16(h.dport)), (40000, 53));
        assert!(h.is_syn());
        let syn_ack = tcp_frame([0x50, tcp::SYN | tcp::ACK]);
        assert!(!headers4(syn_ack.as_slice()).unwrap().is_syn());
        assert_eq!(
            headers4(tcp_frame([0x40, 0]).as_slice()),
            Err(Skip::Malformed),
            "data offset 4"
        );
        assert_eq!(
            headers4(tcp_frame([0x60, 0]).as_slice()),
            Err(Skip::Malformed),
            "options past the segment"
        );
        for cut in 0..syn.len() {
            assert_eq!(headers4(&syn[..cut]), Err(Skip::Malformed), "cut at {cut}");
        }
        let udp = headers4(frame(&[], 0, b"q").as_slice()).unwrap();
        assert_eq!(
            (udp.proto, udp.tcp_flags, udp.l4_check()),
            (PROTO_UDP, 0, 34 + 6)
        );
    }
}
