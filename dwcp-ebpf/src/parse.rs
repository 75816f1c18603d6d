//! Parsing of a LAN frame into what the fast path needs: the flow key and the destination.
//! Every read is bounds-checked against `data_end` (the verifier insists, and a truncated or
//! lying header must end in `XDP_PASS` untouched, never in a redirect).
//!
//! Only untagged Ethernet with IPv4 without options or IPv6 is forwarded; VLAN-tagged frames,
//! IPv4 options (source routes among them) and fragments, also behind IPv6 extension headers,
//! go to the kernel. Every length the fast path relies on (IP, extension headers, TCP data
//! offset, UDP length) must lie within the packet.
use dwcp_common::{wire::*, FlowKey, Reason};

use crate::headers::{ptr_at, EthHdr, Frame, Ipv4Hdr, Ipv6Hdr};

pub struct Parsed {
    pub v6: bool,
    pub key: FlowKey,
    /// Raw destination address bytes, for the LPM lookup.
    pub dst4: [u8; 4],
    pub dst6: [u8; 16],
}

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// IPv6 extension headers walked in search of a fragment header and the transport header;
/// a longer chain goes to the kernel (RFC 8200's recommended order has at most four before a
/// fragment header: hop-by-hop, destination options, routing, authentication).
const MAX_EXT_HEADERS: u32 = 4;

/// Bytes of a frame its headers must fit in (up to the end of a TCP header): what the tc
/// program pulls into the skb's linear part, so that both programs see the same flow.
pub const HEADERS_DEPTH: usize = 256;

/// The frame at the start of the packet; its IP header follows the Ethernet header directly.
#[inline(always)]
pub fn parse<C: Frame>(ctx: &C) -> Result<Parsed, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::LanPassNotIp)?;
    match u16::from_be(unsafe { (*eth).proto }) {
        ETH_P_IP => parse_v4(ctx),
        ETH_P_IPV6 => parse_v6(ctx),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::LanPassVlan),
        _ => Err(Reason::LanPassNotIp),
    }
}

/// The two port fields of TCP/UDP at `l4` (0 for other protocols), once the transport
/// header is known to lie within the IP packet that ends at `ip_end`.
#[inline(always)]
fn l4_ports<C: Frame>(ctx: &C, proto: u8, l4: usize, ip_end: usize) -> Result<(u16, u16), Reason> {
    match proto {
        IPPROTO_TCP => {
            let h: *const [u8; 20] = ptr_at(ctx, l4).ok_or(Reason::LanPassMalformed)?;
            let h = unsafe { &*h };
            // Data offset: at least the 20-byte header, all of it inside the packet.
            let doff = (h[12] >> 4) as usize * 4;
            if doff < 20 || l4 + doff > ip_end {
                return Err(Reason::LanPassMalformed);
            }
            Ok((
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
            ))
        }
        IPPROTO_UDP => {
            let h: *const [u8; 8] = ptr_at(ctx, l4).ok_or(Reason::LanPassMalformed)?;
            let h = unsafe { &*h };
            let len = u16::from_be_bytes([h[4], h[5]]) as usize;
            if len < UDP_HLEN || l4 + len > ip_end {
                return Err(Reason::LanPassMalformed);
            }
            Ok((
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
            ))
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if l4 + 8 > ip_end {
                return Err(Reason::LanPassMalformed);
            }
            Ok((0, 0))
        }
        _ => Ok((0, 0)),
    }
}

/// Skips an authentication header (RFC 4302) at `off`: its next header and where that starts.
#[inline(always)]
fn skip_auth<C: Frame>(ctx: &C, off: usize, ip_end: usize) -> Result<(u8, usize), Reason> {
    let h: *const [u8; 2] = ptr_at(ctx, off).ok_or(Reason::LanPassMalformed)?;
    let h = unsafe { &*h };
    // Length in 4-byte units minus 2; the header is at least 12 bytes.
    let len = (h[1] as usize + 2) * 4;
    if h[1] == 0 || off + len > ip_end {
        return Err(Reason::LanPassMalformed);
    }
    Ok((h[0], off + len))
}

#[inline(always)]
fn parse_v4<C: Frame>(ctx: &C) -> Result<Parsed, Reason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::LanPassMalformed)?;
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Reason::LanPassMalformed);
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(Reason::LanPassMalformed);
    }
    let tot = u16::from_be(ip.tot_len) as usize;
    let avail = ctx.data_end() - ctx.data() - ETH_HLEN;
    if tot < ihl || tot > avail {
        return Err(Reason::LanPassMalformed);
    }
    if ihl != IPV4_HLEN {
        return Err(Reason::LanPassIpOptions);
    }
    // More-fragments flag or a fragment offset: no ports to hash, let the kernel handle it.
    if u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Err(Reason::LanPassFragment);
    }
    let ip_end = ETH_HLEN + tot;
    let (proto, l4) = if ip.proto == IPPROTO_AH {
        skip_auth(ctx, ETH_HLEN + IPV4_HLEN, ip_end)?
    } else {
        (ip.proto, ETH_HLEN + IPV4_HLEN)
    };
    let (sport, dport) = l4_ports(ctx, proto, l4, ip_end)?;
    let key = FlowKey {
        src: [u32::from_be(ip.src), 0, 0, 0],
        dst: [u32::from_be(ip.dst), 0, 0, 0],
        src_port: sport,
        dst_port: dport,
        proto,
    };
    Ok(Parsed {
        v6: false,
        key,
        dst4: ip.dst.to_ne_bytes(),
        dst6: [0; 16],
    })
}

/// Walks the extension headers that start at `off` with type `next`: the transport protocol
/// and where its header starts. A fragment header anywhere goes to the kernel, as does a chain
/// longer than [`MAX_EXT_HEADERS`].
#[inline(always)]
fn skip_ext_headers<C: Frame>(
    ctx: &C,
    mut next: u8,
    mut off: usize,
    ip_end: usize,
) -> Result<(u8, usize), Reason> {
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match next {
            IPPROTO_FRAGMENT => return Err(Reason::LanPassFragment),
            IPPROTO_AH => (next, off) = skip_auth(ctx, off, ip_end)?,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // Hop-by-hop options may only come first (RFC 8200, 4.3).
                if next == IPPROTO_HOPOPTS && i != 0 {
                    return Err(Reason::LanPassMalformed);
                }
                let h: *const [u8; 2] = ptr_at(ctx, off).ok_or(Reason::LanPassMalformed)?;
                let h = unsafe { &*h };
                // Length in 8-byte units, not counting the first 8.
                let len = (h[1] as usize + 1) * 8;
                if off + len > ip_end {
                    return Err(Reason::LanPassMalformed);
                }
                next = h[0];
                off += len;
            }
            _ => return transport_within_depth(next, off),
        }
        i += 1;
    }
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH | IPPROTO_DSTOPTS => {
            Err(Reason::LanPassExtHeaders)
        }
        _ => transport_within_depth(next, off),
    }
}

#[inline(always)]
fn transport_within_depth(proto: u8, off: usize) -> Result<(u8, usize), Reason> {
    if off + 20 > HEADERS_DEPTH {
        return Err(Reason::LanPassExtHeaders);
    }
    Ok((proto, off))
}

#[inline(always)]
fn parse_v6<C: Frame>(ctx: &C) -> Result<Parsed, Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::LanPassMalformed)?;
    let ip = unsafe { &*ip };
    if ip.vtc_flow[0] >> 4 != 6 {
        return Err(Reason::LanPassMalformed);
    }
    let plen = u16::from_be(ip.payload_len) as usize;
    let avail = ctx.data_end() - ctx.data() - ETH_HLEN;
    // Payload length 0 means a jumbogram (hop-by-hop option): not ours to forward.
    if plen == 0 || plen + IPV6_HLEN > avail {
        return Err(Reason::LanPassMalformed);
    }
    let ip_end = ETH_HLEN + IPV6_HLEN + plen;
    let (proto, l4) = skip_ext_headers(ctx, ip.nexthdr, ETH_HLEN + IPV6_HLEN, ip_end)?;
    let (sport, dport) = l4_ports(ctx, proto, l4, ip_end)?;
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
        proto,
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
        v6: true,
        key,
        dst4: [0; 4],
        dst6,
    })
}
