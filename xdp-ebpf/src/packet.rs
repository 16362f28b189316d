//! Bounds-checked packet access: the only place that turns offsets into pointers.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use xdp_common::parse::Packet;

/// A pointer to a `T` at `offset` in an XDP frame, or `None` past `data_end`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// An XDP frame, read directly.
pub struct Xdp<'a>(pub &'a XdpContext);

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // SAFETY: `ptr_at` checked that all N bytes lie inside the frame.
        ptr_at::<[u8; N]>(self.0, offset).map(|p| unsafe { p.read_unaligned() })
    }
}

/// An skb, read through `bpf_skb_load_bytes` so non-linear data reads too.
pub struct Tc<'a>(pub &'a TcContext);

impl Packet for Tc<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
}
