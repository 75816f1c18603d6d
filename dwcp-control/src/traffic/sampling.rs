//! Packets the fast path samples (`FLOW_SAMPLES`, one in `[flows] sample_every`), as the
//! agent receives them, and their way into the top-flows table and the demand estimate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dwcp_common::{FlowKey, FlowSampleRecord, QosClass};
use serde::{Deserialize, Serialize};

use super::{FlowSample, TopFlow};

/// One sampled packet (a recorded input of the agent: replayable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampledPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub class: u8,
    /// Frame length as it arrived.
    pub bytes: u32,
    pub nexthop: u32,
    /// Next-hop group of the packet's route (its destination).
    #[serde(default)]
    pub group: u32,
}

impl From<&FlowSampleRecord> for SampledPacket {
    fn from(r: &FlowSampleRecord) -> Self {
        SampledPacket {
            src: flow_address(r.src, r.v6 != 0),
            dst: flow_address(r.dst, r.v6 != 0),
            proto: r.proto,
            src_port: r.src_port,
            dst_port: r.dst_port,
            class: r.class,
            bytes: r.bytes,
            nexthop: r.nexthop,
            group: r.group,
        }
    }
}

/// An address as the fast path's flow key holds it: four host-order words, IPv4 in the first.
fn words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(v4) => [u32::from(v4), 0, 0, 0],
        IpAddr::V6(v6) => {
            let x = u128::from(v6);
            [
                (x >> 96) as u32,
                (x >> 64) as u32,
                (x >> 32) as u32,
                x as u32,
            ]
        }
    }
}

/// A flow key's address words as an address, given the family (the inverse of `words`).
pub fn flow_address(w: [u32; 4], v6: bool) -> IpAddr {
    if v6 {
        let x = w
            .iter()
            .fold(0u128, |x, &word| (x << 32) | u128::from(word));
        IpAddr::V6(Ipv6Addr::from(x))
    } else {
        IpAddr::V4(Ipv4Addr::from(w[0]))
    }
}

impl SampledPacket {
    /// The flow as the fast path hashes it (`dwcp_common::FlowKey`).
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src: words(self.src),
            dst: words(self.dst),
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
        }
    }

    pub fn sample(&self) -> FlowSample {
        FlowSample {
            key: self.key(),
            bytes: u64::from(self.bytes),
            class: self.class,
        }
    }
}

/// A flow of the top-flows table, for the API and the CLI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopFlowView {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub protocol: String,
    pub src_port: u16,
    pub dst_port: u16,
    /// Estimated bytes in the window (samples scaled by the sampling rate).
    pub bytes: u64,
    /// How much `bytes` may overestimate (Space-Saving's bound).
    pub error_bytes: u64,
    /// Share of all sampled bytes in the window.
    pub share: f64,
    /// QoS class of the flow's last sample.
    pub class: Option<String>,
}

/// The flows table as the operator sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowsView {
    /// One packet in this many is sampled (0 = sampling off).
    pub sample_every: u32,
    pub window_seconds: u64,
    /// Start of the current window.
    pub window_started_unix_ms: u64,
    pub samples: u64,
    /// Sampled bytes scaled by the sampling rate.
    pub bytes: u64,
    pub flows: Vec<TopFlowView>,
}

impl TopFlowView {
    /// An IPv4 flow is told from an IPv6 one by its addresses (the key keeps no family):
    /// three zero words are IPv4.
    pub fn new(flow: &TopFlow, total: u64) -> Self {
        let k = &flow.key;
        let v6 = k.src[1..] != [0, 0, 0] || k.dst[1..] != [0, 0, 0];
        TopFlowView {
            src: flow_address(k.src, v6),
            dst: flow_address(k.dst, v6),
            protocol: match k.proto {
                6 => "tcp".into(),
                17 => "udp".into(),
                1 => "icmp".into(),
                58 => "icmpv6".into(),
                p => p.to_string(),
            },
            src_port: k.src_port,
            dst_port: k.dst_port,
            bytes: flow.bytes,
            error_bytes: flow.error,
            share: if total > 0 {
                flow.bytes as f64 / total as f64
            } else {
                0.0
            },
            class: QosClass::from_id(flow.class).map(|c| c.name().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v6: bool) -> FlowSampleRecord {
        FlowSampleRecord {
            src: if v6 {
                [0x2001_0db8, 1, 0, 5]
            } else {
                [u32::from(Ipv4Addr::new(10, 1, 0, 5)), 0, 0, 0]
            },
            dst: if v6 {
                [0x2001_0db8, 2, 0, 9]
            } else {
                [u32::from(Ipv4Addr::new(10, 2, 0, 9)), 0, 0, 0]
            },
            src_port: 40_000,
            dst_port: 5004,
            proto: 17,
            class: 1,
            v6: v6 as u8,
            _pad: 0,
            bytes: 1_000,
            nexthop: 3,
            group: 2,
            _pad2: 0,
        }
    }

    #[test]
    fn records_round_trip_to_the_fast_paths_key_and_back_to_addresses() {
        for v6 in [false, true] {
            let r = record(v6);
            let p = SampledPacket::from(&r);
            assert_eq!(p.group, 2);
            assert_eq!(p.key().src, r.src);
            assert_eq!(p.key().dst, r.dst);
            let want_src: IpAddr = if v6 {
                "2001:db8:0:1::5".parse().unwrap()
            } else {
                "10.1.0.5".parse().unwrap()
            };
            assert_eq!(p.src, want_src);
            let flow = TopFlow {
                key: p.key(),
                bytes: 4_000,
                error: 0,
                class: p.class,
            };
            let v = TopFlowView::new(&flow, 8_000);
            assert_eq!(v.src, want_src);
            assert_eq!((v.protocol.as_str(), v.dst_port), ("udp", 5004));
            assert_eq!(v.share, 0.5);
            assert_eq!(v.class.as_deref(), Some("realtime"));
        }
    }
}
