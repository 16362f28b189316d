//! Bounds-checked packet access: the only place that turns offsets into pointers.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::{TcContext, XdpContext},
};
use xdp_common::{Addr, parse::Packet};

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

    #[inline(always)]
    fn addr(&self, offset: usize) -> Option<Addr> {
        // SAFETY: as above; the words are in packet order, as `Addr` holds them.
        ptr_at::<Addr>(self.0, offset).map(|p| unsafe { p.read_unaligned() })
    }
}

/// An skb, read directly where the bytes lie in its linear part (the headers
/// of nearly every packet), else through `bpf_skb_load_bytes`, so non-linear
/// data reads too. A direct read costs a bounds check where the helper costs a
/// call; only reads are direct, since a direct write would make the verifier
/// add an unclone call to every run.
pub struct Tc<'a>(pub &'a TcContext);

impl Tc<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let start = self.0.data();
        if start + offset + size_of::<T>() <= self.0.data_end() {
            // SAFETY: the check above keeps all of the `T` inside the linear
            // data; read unaligned, the packet gives no alignment.
            return Some(unsafe { ((start + offset) as *const T).read_unaligned() });
        }
        self.0.load::<T>(offset).ok()
    }
}

impl Packet for Tc<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.read(offset)
    }

    #[inline(always)]
    fn addr(&self, offset: usize) -> Option<Addr> {
        self.read(offset)
    }
}

/// An XDP frame read and written through `bpf_xdp_load_bytes` and
/// `bpf_xdp_store_bytes` (Linux 5.18) into aligned buffers: slower than
/// direct access, but an address read this way costs four stack words rather
/// than sixteen bytes, which the rare paths' frames need.
pub struct XdpCopy<'a>(pub &'a XdpContext);

impl XdpCopy<'_> {
    /// A `T` read at `offset`.
    #[inline(always)]
    pub fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let mut value = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly `size_of::<T>()` bytes into `value`
        // or fails; any bit pattern is a valid `T` for the plain types read here.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.0.ctx,
                offset as u32,
                value.as_mut_ptr() as *mut c_void,
                size_of::<T>() as u32,
            )
        };
        // SAFETY: written in full when the helper succeeds.
        (rc == 0).then(|| unsafe { value.assume_init() })
    }

    /// Writes `value` at `offset`.
    #[inline(always)]
    pub fn store<T: Copy>(&self, offset: usize, value: &T) -> Option<()> {
        // SAFETY: the helper reads `size_of::<T>()` bytes from `value`.
        let rc = unsafe {
            bpf_xdp_store_bytes(
                self.0.ctx,
                offset as u32,
                value as *const T as *mut c_void,
                size_of::<T>() as u32,
            )
        };
        (rc == 0).then_some(())
    }
}

impl Packet for XdpCopy<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.load(offset)
    }

    #[inline(always)]
    fn addr(&self, offset: usize) -> Option<Addr> {
        self.load(offset)
    }
}
