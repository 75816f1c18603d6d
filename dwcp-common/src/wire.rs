//! Wire constants of the encapsulation and headers the fast path writes.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const ETH_P_ARP: u16 = 0x0806;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
pub const VXLAN_HLEN: usize = 8;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN flags byte: "I" bit, the VNI is valid.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// The VXLAN header of the fast path: RFC 7348's, with a source route of four exits
/// ([`crate::MemberPath::route`]) in its reserved bytes: the three after the flags, then the
/// one after the VNI. On the last link the route is all zero, so whoever delivers (a gateway,
/// or a kernel VXLAN device, which drops headers with reserved bits set) sees a plain header.
pub const fn vxlan_header(vni: u32, route: [u8; 4]) -> [u8; VXLAN_HLEN] {
    let v = vni.to_be_bytes();
    [
        VXLAN_FLAG_VNI,
        route[0],
        route[1],
        route[2],
        v[1],
        v[2],
        v[3],
        route[3],
    ]
}

/// The source route of a VXLAN header written by [`vxlan_header`].
pub const fn vxlan_route(header: &[u8; VXLAN_HLEN]) -> [u8; 4] {
    [header[1], header[2], header[3], header[7]]
}

/// The route a transit gateway sends on: its own exit (the first) taken off.
pub const fn next_route(route: [u8; 4]) -> [u8; 4] {
    [route[1], route[2], route[3], 0]
}

/// Outer Ethernet + IPv4 + UDP + VXLAN headers added in front of the inner Ethernet frame.
pub const VXLAN_ENCAP_LEN: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;
/// Outer UDP source ports are taken from this range (RFC 7348 recommends 49152-65535).
pub const ENCAP_SPORT_MIN: u16 = 49152;

/// Outer UDP source port of a flow with hash `hash` ([`crate::flow_hash`]), from its high 16
/// bits: the same for every packet of a flow (the underlay's ECMP keeps it on one path, in
/// order) and spread over the range of [`ENCAP_SPORT_MIN`].
#[inline(always)]
pub const fn encap_source_port(hash: u32) -> u16 {
    ENCAP_SPORT_MIN + ((hash >> 16) % (65536 - ENCAP_SPORT_MIN as u32)) as u16
}

/// The largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00FF_FFFF;

#[cfg(test)]
mod tests {
    use super::*;

    /// The header's bytes as they go on the wire: a change here breaks every peer.
    #[test]
    fn vxlan_header_carries_the_route_in_its_reserved_bytes() {
        let h = vxlan_header(0x0a0b0c, [1, 2, 3, 4]);
        assert_eq!(h, [0x08, 1, 2, 3, 0x0a, 0x0b, 0x0c, 4]);
        assert_eq!(vxlan_route(&h), [1, 2, 3, 4]);
        assert_eq!(next_route([1, 2, 3, 4]), [2, 3, 4, 0]);
        assert_eq!(vxlan_header(100, [0; 4]), [0x08, 0, 0, 0, 0, 0, 100, 0]);
    }
}
