//! Frames built by hand for the XDP programs' fixtures, fuzz corpora and the `attacks`
//! benchmark: Ethernet, IPv4 (with options), IPv6, UDP, TCP and ICMP echo, from and to the
//! fixtures' gateway MAC.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// One's complement checksum over `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(14);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v
}

/// An 802.1Q tag: TPID 0x8100 was written as the Ethernet type before it.
pub fn vlan_tag(vid: u16, inner_type: u16) -> Vec<u8> {
    let mut v = vid.to_be_bytes().to_vec();
    v.extend_from_slice(&inner_type.to_be_bytes());
    v
}

pub struct V4 {
    pub tos: u8,
    pub ttl: u8,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub frag_off: u16,
    pub options: Vec<u8>,
}

impl V4 {
    pub fn new(proto: u8, src: &str, dst: &str) -> V4 {
        V4 {
            tos: 0,
            ttl: 64,
            proto,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            frag_off: 0,
            options: vec![],
        }
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let ihl = 5 + self.options.len() / 4;
        let total = ihl * 4 + payload.len();
        let mut h = vec![(4 << 4) | ihl as u8, self.tos];
        h.extend_from_slice(&(total as u16).to_be_bytes());
        h.extend_from_slice(&0x1234u16.to_be_bytes());
        h.extend_from_slice(&self.frag_off.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

pub fn ipv6(tc: u8, hop: u8, nexthdr: u8, src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    let dst: Ipv6Addr = dst.parse().unwrap();
    let flow = 0x12345u32;
    let w0 = (6u32 << 28) | ((tc as u32) << 20) | flow;
    let mut h = w0.to_be_bytes().to_vec();
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(nexthdr);
    h.push(hop);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = sport.to_be_bytes().to_vec();
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

pub fn tcp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = sport.to_be_bytes().to_vec();
    v.extend_from_slice(&dport.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes()); // seq
    v.extend_from_slice(&0u32.to_be_bytes()); // ack
    v.extend_from_slice(&[5 << 4, 0x02]); // data offset 5, SYN
    v.extend_from_slice(&65535u16.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    v.extend_from_slice(payload);
    v
}

pub fn icmp_echo(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![8, 0, 0, 0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(payload);
    let c = checksum(&v);
    v[2..4].copy_from_slice(&c.to_be_bytes());
    v
}

pub fn frame(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = eth(GW_MAC, HOST_MAC, ethertype);
    f.extend_from_slice(l3);
    f
}

/// Monotonic clock in ns: the same clock as the kernel's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
