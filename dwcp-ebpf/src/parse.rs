//! Parsing of a LAN frame into what the fast path needs: where L3 starts, the flow key, the
//! IP total length. Every read is bounds-checked against `data_end` (the verifier insists, and
//! a truncated or lying header must end in `XDP_PASS` untouched, never in a redirect).
use dwcp_common::{wire::*, FlowKey, Reason};

use crate::headers::{ptr_at, EthHdr, Frame, Ipv4Hdr, Ipv6Hdr, VlanHdr};

pub struct Parsed {
    /// Offset of the IP header (14, 18 or 22 with up to two VLAN tags).
    pub l3_off: usize,
    pub v6: bool,
    pub key: FlowKey,
    /// Raw destination address bytes, for the LPM lookup.
    pub dst4: [u8; 4],
    pub dst6: [u8; 16],
}

/// Ethernet with up to two VLAN tags (802.1Q / 802.1ad): returns the L3 offset and ethertype.
#[inline(always)]
pub fn parse_l2<C: Frame>(ctx: &C) -> Result<(usize, u16), Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::LanPassNotIp)?;
    let mut proto = u16::from_be(unsafe { (*eth).proto });
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let v: *const VlanHdr = ptr_at(ctx, l3).ok_or(Reason::LanPassMalformed)?;
        proto = u16::from_be(unsafe { (*v).proto });
        l3 += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let v: *const VlanHdr = ptr_at(ctx, l3).ok_or(Reason::LanPassMalformed)?;
            proto = u16::from_be(unsafe { (*v).proto });
            l3 += 4;
        }
    }
    Ok((l3, proto))
}

#[inline(always)]
pub fn parse<C: Frame>(ctx: &C) -> Result<Parsed, Reason> {
    let (l3, proto) = parse_l2(ctx)?;
    match proto {
        ETH_P_IP => parse_v4(ctx, l3),
        ETH_P_IPV6 => parse_v6(ctx, l3),
        _ => Err(Reason::LanPassNotIp),
    }
}

/// Reads the two port fields of TCP/UDP at `l4` if the header (of `hdr_len` bytes) lies within
/// the IP packet that ends at `ip_end`.
#[inline(always)]
fn ports<C: Frame>(
    ctx: &C,
    l4: usize,
    hdr_len: usize,
    ip_end: usize,
) -> Result<(u16, u16), Reason> {
    if l4 + hdr_len > ip_end {
        return Err(Reason::LanPassMalformed);
    }
    let p: *const [u16; 2] = ptr_at(ctx, l4).ok_or(Reason::LanPassMalformed)?;
    let p = unsafe { *p };
    Ok((u16::from_be(p[0]), u16::from_be(p[1])))
}

#[inline(always)]
fn l4_ports<C: Frame>(ctx: &C, proto: u8, l4: usize, ip_end: usize) -> Result<(u16, u16), Reason> {
    match proto {
        IPPROTO_TCP => ports(ctx, l4, 20, ip_end),
        IPPROTO_UDP => ports(ctx, l4, 8, ip_end),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if l4 + 8 > ip_end {
                return Err(Reason::LanPassMalformed);
            }
            Ok((0, 0))
        }
        _ => Ok((0, 0)),
    }
}

#[inline(always)]
fn parse_v4<C: Frame>(ctx: &C, l3: usize) -> Result<Parsed, Reason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(Reason::LanPassMalformed)?;
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Reason::LanPassMalformed);
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(Reason::LanPassMalformed);
    }
    let tot = u16::from_be(ip.tot_len) as usize;
    let avail = ctx.data_end() - ctx.data() - l3;
    if tot < ihl || tot > avail {
        return Err(Reason::LanPassMalformed);
    }
    // More-fragments flag or a fragment offset: no ports to hash, let the kernel handle it.
    if u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Err(Reason::LanPassFragment);
    }
    let (sport, dport) = l4_ports(ctx, ip.proto, l3 + ihl, l3 + tot)?;
    let key = FlowKey {
        src: [u32::from_be(ip.src), 0, 0, 0],
        dst: [u32::from_be(ip.dst), 0, 0, 0],
        src_port: sport,
        dst_port: dport,
        proto: ip.proto,
    };
    Ok(Parsed {
        l3_off: l3,
        v6: false,
        key,
        dst4: ip.dst.to_ne_bytes(),
        dst6: [0; 16],
    })
}

#[inline(always)]
fn parse_v6<C: Frame>(ctx: &C, l3: usize) -> Result<Parsed, Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(Reason::LanPassMalformed)?;
    let ip = unsafe { &*ip };
    if ip.vtc_flow[0] >> 4 != 6 {
        return Err(Reason::LanPassMalformed);
    }
    let plen = u16::from_be(ip.payload_len) as usize;
    let avail = ctx.data_end() - ctx.data() - l3;
    // Payload length 0 means a jumbogram (hop-by-hop option): not ours to forward.
    if plen == 0 || plen + IPV6_HLEN > avail {
        return Err(Reason::LanPassMalformed);
    }
    if ip.nexthdr == 44 {
        return Err(Reason::LanPassFragment);
    }
    let ip_end = l3 + IPV6_HLEN + plen;
    let (sport, dport) = l4_ports(ctx, ip.nexthdr, l3 + IPV6_HLEN, ip_end)?;
    let s = ip.src;
    let d = ip.dst;
    let key = FlowKey {
        src: [
            u32::from_be(s[0]),
            u32::from_be(s[1]),
            u32::from_be(s[2]),
            u32::from_be(s[3]),
        ],
        dst: [
            u32::from_be(d[0]),
            u32::from_be(d[1]),
            u32::from_be(d[2]),
            u32::from_be(d[3]),
        ],
        src_port: sport,
        dst_port: dport,
        proto: ip.nexthdr,
    };
    let mut dst6 = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = d[i].to_ne_bytes();
        dst6[i * 4] = b[0];
        dst6[i * 4 + 1] = b[1];
        dst6[i * 4 + 2] = b[2];
        dst6[i * 4 + 3] = b[3];
        i += 1;
    }
    Ok(Parsed {
        l3_off: l3,
        v6: true,
        key,
        dst4: [0; 4],
        dst6,
    })
}
