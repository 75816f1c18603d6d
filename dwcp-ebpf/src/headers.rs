//! Wire headers and bounds-checked access to packet bytes.
use aya_ebpf::programs::{TcContext, XdpContext};

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

#[repr(C)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
pub struct VxlanHdr {
    pub flags: u8,
    pub reserved: [u8; 3],
    /// VNI in the upper 24 bits, network order.
    pub vni: u32,
}

/// A packet as both program kinds see it: the XDP frame, or the skb's linear part in tc.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset` into the packet, if all of it lies before `data_end`.
#[inline(always)]
pub fn ptr_at<T, C: Frame>(ctx: &C, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    // Opaque to LLVM, so the comparison below is made on the very pointer that is returned
    // (LLVM would otherwise fold it into `offset + size > end - start`, a comparison of plain
    // numbers that tells the verifier nothing about the pointer).
    let p = unsafe { core::ptr::read_volatile(&(start + offset)) };
    if p + core::mem::size_of::<T>() > end {
        return None;
    }
    Some(p as *mut T)
}

/// RFC 1624 incremental update of a one's complement checksum when a 16-bit word changes.
/// Works on words as they are stored in the packet (byte order does not matter).
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
pub fn csum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Returns `x` if `x < max`. The volatile read hides `x`'s range from LLVM, which would
/// otherwise drop the comparison as redundant (e.g. after a `%`) and leave the verifier with
/// an index it cannot bound.
#[inline(always)]
pub fn bounded(x: usize, max: usize) -> Option<usize> {
    let x = unsafe { core::ptr::read_volatile(&x) };
    if x < max {
        Some(x)
    } else {
        None
    }
}
