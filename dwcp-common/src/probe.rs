//! The link probe: a small UDP datagram sent by the agent on every underlay link, reflected in
//! place by the remote gateway's XDP program and measured by the local one.
//!
//! Layout (network byte order), 40 bytes after the UDP header:
//! `magic u32 | version u8 | kind u8 | flags u16 | link_id u32 | seq u32 |
//!  tx_ns u64 (sender clock) | rx_ns u64 (reflector clock) | reserved u64`

/// UDP port the probes are sent to (and reflected from).
pub const PROBE_PORT: u16 = 4790;
/// "DWCP" in ASCII.
pub const PROBE_MAGIC: u32 = 0x4457_4350;
pub const PROBE_VERSION: u8 = 1;
pub const PROBE_KIND_REQUEST: u8 = 1;
pub const PROBE_KIND_REPLY: u8 = 2;
pub const PROBE_LEN: usize = 40;

/// Decoded probe header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeHeader {
    pub kind: u8,
    pub flags: u16,
    pub link_id: u32,
    pub seq: u32,
    pub tx_ns: u64,
    pub rx_ns: u64,
}

/// Why a probe was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    TooShort,
    BadMagic,
    BadVersion,
    BadKind,
}

impl ProbeHeader {
    pub fn encode(&self, out: &mut [u8; PROBE_LEN]) {
        out[0..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
        out[4] = PROBE_VERSION;
        out[5] = self.kind;
        out[6..8].copy_from_slice(&self.flags.to_be_bytes());
        out[8..12].copy_from_slice(&self.link_id.to_be_bytes());
        out[12..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.tx_ns.to_be_bytes());
        out[24..32].copy_from_slice(&self.rx_ns.to_be_bytes());
        out[32..40].copy_from_slice(&[0u8; 8]);
    }

    pub fn decode(b: &[u8]) -> Result<ProbeHeader, ProbeError> {
        if b.len() < PROBE_LEN {
            return Err(ProbeError::TooShort);
        }
        if u32::from_be_bytes([b[0], b[1], b[2], b[3]]) != PROBE_MAGIC {
            return Err(ProbeError::BadMagic);
        }
        if b[4] != PROBE_VERSION {
            return Err(ProbeError::BadVersion);
        }
        let kind = b[5];
        if kind != PROBE_KIND_REQUEST && kind != PROBE_KIND_REPLY {
            return Err(ProbeError::BadKind);
        }
        let u64at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        Ok(ProbeHeader {
            kind,
            flags: u16::from_be_bytes([b[6], b[7]]),
            link_id: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            seq: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            tx_ns: u64at(16),
            rx_ns: u64at(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let h = ProbeHeader {
            kind: PROBE_KIND_REQUEST,
            flags: 0,
            link_id: 7,
            seq: 42,
            tx_ns: 123_456_789,
            rx_ns: 0,
        };
        let mut b = [0u8; PROBE_LEN];
        h.encode(&mut b);
        assert_eq!(ProbeHeader::decode(&b), Ok(h));
        assert_eq!(
            ProbeHeader::decode(&b[..PROBE_LEN - 1]),
            Err(ProbeError::TooShort)
        );
        let mut bad = b;
        bad[0] = 0;
        assert_eq!(ProbeHeader::decode(&bad), Err(ProbeError::BadMagic));
        let mut bad = b;
        bad[4] = 9;
        assert_eq!(ProbeHeader::decode(&bad), Err(ProbeError::BadVersion));
        let mut bad = b;
        bad[5] = 0;
        assert_eq!(ProbeHeader::decode(&bad), Err(ProbeError::BadKind));
    }

    /// Probe headers and their bytes, written down by hand from the layout in the module doc
    /// (network byte order), never printed from `encode`: agents and reflectors of different
    /// versions must keep understanding each other. Every multi-byte field has distinct bytes,
    /// so a swapped field, a wrong offset or a little-endian write shows.
    #[rustfmt::skip]
    const GOLDEN: [(ProbeHeader, [u8; PROBE_LEN]); 2] = [
        (
            ProbeHeader {
                kind: PROBE_KIND_REQUEST,
                flags: 0x0102,
                link_id: 0x0304_0506,
                seq: 0x0708_090a,
                tx_ns: 0x1112_1314_1516_1718,
                rx_ns: 0x2122_2324_2526_2728,
            },
            [
                0x44, 0x57, 0x43, 0x50, // magic "DWCP"
                0x01, // version
                0x01, // kind: request
                0x01, 0x02, // flags
                0x03, 0x04, 0x05, 0x06, // link_id
                0x07, 0x08, 0x09, 0x0a, // seq
                0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // tx_ns
                0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, // rx_ns
                0, 0, 0, 0, 0, 0, 0, 0, // reserved
            ],
        ),
        (
            ProbeHeader {
                kind: PROBE_KIND_REPLY,
                flags: 0,
                link_id: 7,
                seq: u32::MAX,
                tx_ns: 123_456_789, // 0x075b_cd15
                rx_ns: u64::MAX,
            },
            [
                0x44, 0x57, 0x43, 0x50, // magic "DWCP"
                0x01, // version
                0x02, // kind: reply
                0x00, 0x00, // flags
                0x00, 0x00, 0x00, 0x07, // link_id
                0xff, 0xff, 0xff, 0xff, // seq
                0x00, 0x00, 0x00, 0x00, 0x07, 0x5b, 0xcd, 0x15, // tx_ns
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // rx_ns
                0, 0, 0, 0, 0, 0, 0, 0, // reserved
            ],
        ),
    ];

    #[test]
    fn golden_bytes() {
        for (i, (h, bytes)) in GOLDEN.iter().enumerate() {
            let mut b = [0xeeu8; PROBE_LEN]; // not zeroes: encode must write every byte
            h.encode(&mut b);
            assert_eq!(&b, bytes, "golden probe {i}: encode");
            assert_eq!(
                ProbeHeader::decode(bytes),
                Ok(*h),
                "golden probe {i}: decode"
            );
        }
    }
}
