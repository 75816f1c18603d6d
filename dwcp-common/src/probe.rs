//! The link probe: a small UDP datagram sent by the agent on every underlay link, reflected in
//! place by the remote gateway's XDP program and measured by the local one.
//!
//! Layout (network byte order), 40 bytes after the UDP header:
//! `magic u32 | version u8 | kind u8 | flags u16 | link_id u32 | seq u32 |
//!  tx_ns u64 (sender clock) | token u64 | mac u64`
//!
//! Version 2 (version 1 carried the reflector's clock where `token` is now, and no token).
//! Both directions travel with IPv4 TTL 255 (RFC 5881's GTSM: a packet that crossed a router
//! arrives with less).
//!
//! `token` authenticates the request to its own sender: [`probe_token`], a SipHash-2-4 of
//! `link_id`, `seq` and `tx_ns` under the link's [`ProbeKey`], which only this gateway knows
//! (the sender writes it into `PROBE_KEYS`, the underlay program checks replies against it).
//! The reflector copies it back untouched, so it needs no key. A forged reply needs the key; a
//! reply seen on the wire authenticates only its own `tx_ns`, which the kernel accepts once and
//! only while it is recent, so neither a dead link can be kept alive nor an RTT set by
//! replaying or editing replies.
//!
//! `mac` is zero unless the link has a key both ends share (`auth_key_file`, `LINK_F_AUTH`):
//! then it is [`probe_mac`] under that key, made by the sender of a request and again by the
//! reflector for its reply (the kind differs). The reflector reflects only requests with a
//! valid MAC, the sender measures only replies with a valid MAC and token: someone who can
//! reach the underlay but has not the key can neither use the gateway as a reflector nor
//! feed it replies, even from the peer's address.

/// UDP port the probes are sent to (and reflected from).
pub const PROBE_PORT: u16 = 4790;
/// "DWCP" in ASCII.
pub const PROBE_MAGIC: u32 = 0x4457_4350;
pub const PROBE_VERSION: u8 = 2;
pub const PROBE_KIND_REQUEST: u8 = 1;
pub const PROBE_KIND_REPLY: u8 = 2;
pub const PROBE_LEN: usize = 40;
/// IPv4 TTL every probe is sent with, and, on a directly connected link, arrives with.
pub const PROBE_TTL: u8 = 255;
/// A reply whose request left longer ago than this is refused (no WAN link has such an RTT;
/// older replies are replays or lost in queues).
pub const PROBE_MAX_AGE_NS: u64 = 2_000_000_000;

/// A link's probe key (`PROBE_KEYS`): 128 random bits from the sender, per link.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeKey {
    pub k0: u64,
    pub k1: u64,
}

/// Never printed: a key in a log would let its reader forge replies.
impl core::fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ProbeKey(..)")
    }
}

/// The token of a request (see the module documentation).
#[inline(always)]
pub const fn probe_token(key: &ProbeKey, link_id: u32, seq: u32, tx_ns: u64) -> u64 {
    siphash24(key, ((link_id as u64) << 32) | seq as u64, tx_ns)
}

/// The MAC of a probe under its link's shared key: SipHash-2-4 of every field before `mac`
/// (kind, flags, link id, sequence, send time, token).
#[inline(always)]
pub const fn probe_mac(
    key: &ProbeKey,
    kind: u8,
    flags: u16,
    link_id: u32,
    seq: u32,
    tx_ns: u64,
    token: u64,
) -> u64 {
    let head = ((kind as u64) << 48) | ((flags as u64) << 32) | link_id as u64;
    siphash24_words(key, [head, seq as u64, tx_ns, token])
}

/// SipHash-2-4 (Aumasson and Bernstein, 2012) of a 16-byte message, the little-endian bytes
/// of `m0` then `m1`. Straight-line 64-bit arithmetic, so the verifier walks it once.
#[inline(always)]
pub const fn siphash24(key: &ProbeKey, m0: u64, m1: u64) -> u64 {
    siphash24_words(key, [m0, m1])
}

/// SipHash-2-4 of any bytes (the agent's link-state messages; the programs use the
/// fixed-size forms above).
pub fn siphash24_bytes(key: &ProbeKey, msg: &[u8]) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f_6d65_7073_6575,
        key.k1 ^ 0x646f_7261_6e64_6f6d,
        key.k0 ^ 0x6c79_6765_6e65_7261,
        key.k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut compress = |m: u64| {
        v[3] ^= m;
        v = sip_rounds(v, 2);
        v[0] ^= m;
    };
    let mut chunks = msg.chunks_exact(8);
    for c in &mut chunks {
        compress(u64::from_le_bytes([
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
        ]));
    }
    let mut last = (msg.len() as u64 & 0xff) << 56;
    for (i, &b) in chunks.remainder().iter().enumerate() {
        last |= (b as u64) << (8 * i);
    }
    compress(last);
    v[2] ^= 0xff;
    v = sip_rounds(v, 4);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// SipHash-2-4 of the little-endian bytes of `N` words (`8 N` bytes, `N` < 32).
#[inline(always)]
const fn siphash24_words<const N: usize>(key: &ProbeKey, words: [u64; N]) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f_6d65_7073_6575,
        key.k1 ^ 0x646f_7261_6e64_6f6d,
        key.k0 ^ 0x6c79_6765_6e65_7261,
        key.k1 ^ 0x7465_6462_7974_6573,
    ];
    // The message words, then the final word: the length in bytes in the top byte.
    let mut w = 0;
    while w <= N {
        let m = if w < N {
            words[w]
        } else {
            ((8 * N) as u64) << 56
        };
        v[3] ^= m;
        v = sip_rounds(v, 2);
        v[0] ^= m;
        w += 1;
    }
    v[2] ^= 0xff;
    v = sip_rounds(v, 4);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
const fn sip_rounds(mut v: [u64; 4], n: usize) -> [u64; 4] {
    let mut i = 0;
    while i < n {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
        i += 1;
    }
    v
}

/// Decoded probe header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeHeader {
    pub kind: u8,
    pub flags: u16,
    pub link_id: u32,
    pub seq: u32,
    pub tx_ns: u64,
    pub token: u64,
    /// [`probe_mac`] under the link's shared key, or 0 on a link without one.
    pub mac: u64,
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
    /// A request of link `link_id` with its token under `key` (no MAC: see [`Self::signed`]).
    pub const fn request(key: &ProbeKey, link_id: u32, seq: u32, tx_ns: u64) -> ProbeHeader {
        ProbeHeader {
            kind: PROBE_KIND_REQUEST,
            flags: 0,
            link_id,
            seq,
            tx_ns,
            token: probe_token(key, link_id, seq, tx_ns),
            mac: 0,
        }
    }

    /// This probe with its MAC under the link's shared key `auth`, when it has one.
    pub const fn signed(self, auth: Option<&ProbeKey>) -> ProbeHeader {
        let mac = match auth {
            Some(k) => probe_mac(
                k,
                self.kind,
                self.flags,
                self.link_id,
                self.seq,
                self.tx_ns,
                self.token,
            ),
            None => 0,
        };
        ProbeHeader { mac, ..self }
    }

    pub fn encode(&self, out: &mut [u8; PROBE_LEN]) {
        out[0..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
        out[4] = PROBE_VERSION;
        out[5] = self.kind;
        out[6..8].copy_from_slice(&self.flags.to_be_bytes());
        out[8..12].copy_from_slice(&self.link_id.to_be_bytes());
        out[12..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.tx_ns.to_be_bytes());
        out[24..32].copy_from_slice(&self.token.to_be_bytes());
        out[32..40].copy_from_slice(&self.mac.to_be_bytes());
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
            token: u64at(24),
            mac: u64at(32),
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
            token: 0x55,
            mac: 0x66,
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
        bad[4] = 1; // version 1: the reflector's clock where the token is
        assert_eq!(ProbeHeader::decode(&bad), Err(ProbeError::BadVersion));
        let mut bad = b;
        bad[5] = 0;
        assert_eq!(ProbeHeader::decode(&bad), Err(ProbeError::BadKind));
    }

    /// The paper's test key (bytes 00..0f) and message (bytes 00..0f): the published output
    /// (appendix A of "SipHash: a fast short-input PRF", bytes db 9b c2 57 7f cc 2a 3f).
    #[test]
    fn siphash_matches_the_reference_vector() {
        let key = ProbeKey {
            k0: u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]),
            k1: u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]),
        };
        let m0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let m1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(
            siphash24(&key, m0, m1).to_le_bytes(),
            [0xdb, 0x9b, 0xc2, 0x57, 0x7f, 0xcc, 0x2a, 0x3f]
        );
    }

    /// The byte form agrees with the word form (the paper's 16-byte vector) and with the
    /// reference implementation's vector for the empty message.
    #[test]
    fn siphash_of_bytes_matches_the_reference() {
        let key = ProbeKey {
            k0: u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]),
            k1: u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]),
        };
        let msg: [u8; 16] = core::array::from_fn(|i| i as u8);
        let m0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let m1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(siphash24_bytes(&key, &msg), siphash24(&key, m0, m1));
        assert_eq!(siphash24_bytes(&key, &[]), 0x726f_db47_dd0e_0e31);
    }

    /// The token covers every field a forger would change, and the key.
    #[test]
    fn token_depends_on_key_link_seq_and_send_time() {
        let key = ProbeKey { k0: 1, k1: 2 };
        let t = probe_token(&key, 3, 4, 5);
        for other in [
            probe_token(&ProbeKey { k0: 1, k1: 3 }, 3, 4, 5),
            probe_token(&key, 4, 4, 5),
            probe_token(&key, 3, 5, 5),
            probe_token(&key, 3, 4, 6),
        ] {
            assert_ne!(t, other);
        }
        let r = ProbeHeader::request(&key, 3, 4, 5);
        assert_eq!((r.kind, r.token), (PROBE_KIND_REQUEST, t));
        extern crate std;
        assert_eq!(std::format!("{key:?}"), "ProbeKey(..)");
    }

    /// The MAC covers every field before it and the key; a request's and its reply's differ
    /// (the kind), so a reflector cannot be made to sign a reply by echoing a request.
    #[test]
    fn mac_depends_on_key_and_every_field() {
        let key = ProbeKey { k0: 9, k1: 10 };
        let req = ProbeHeader::request(&ProbeKey { k0: 1, k1: 2 }, 3, 4, 5);
        let m = req.signed(Some(&key)).mac;
        assert_ne!(m, 0);
        assert_eq!(req.signed(None).mac, 0);
        let variants = [
            req.signed(Some(&ProbeKey { k0: 9, k1: 11 })),
            ProbeHeader {
                kind: PROBE_KIND_REPLY,
                ..req
            }
            .signed(Some(&key)),
            ProbeHeader { flags: 1, ..req }.signed(Some(&key)),
            ProbeHeader { link_id: 4, ..req }.signed(Some(&key)),
            ProbeHeader { seq: 5, ..req }.signed(Some(&key)),
            ProbeHeader { tx_ns: 6, ..req }.signed(Some(&key)),
            ProbeHeader {
                token: req.token ^ 1,
                ..req
            }
            .signed(Some(&key)),
        ];
        for v in variants {
            assert_ne!(v.mac, m, "{v:?}");
        }
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
                token: 0x2122_2324_2526_2728,
                mac: 0,
            },
            [
                0x44, 0x57, 0x43, 0x50, // magic "DWCP"
                0x02, // version
                0x01, // kind: request
                0x01, 0x02, // flags
                0x03, 0x04, 0x05, 0x06, // link_id
                0x07, 0x08, 0x09, 0x0a, // seq
                0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // tx_ns
                0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, // token
                0, 0, 0, 0, 0, 0, 0, 0, // mac: none (a link without a shared key)
            ],
        ),
        (
            ProbeHeader {
                kind: PROBE_KIND_REPLY,
                flags: 0,
                link_id: 7,
                seq: u32::MAX,
                tx_ns: 123_456_789, // 0x075b_cd15
                token: u64::MAX,
                mac: 0x3132_3334_3536_3738,
            },
            [
                0x44, 0x57, 0x43, 0x50, // magic "DWCP"
                0x02, // version
                0x02, // kind: reply
                0x00, 0x00, // flags
                0x00, 0x00, 0x00, 0x07, // link_id
                0xff, 0xff, 0xff, 0xff, // seq
                0x00, 0x00, 0x00, 0x00, 0x07, 0x5b, 0xcd, 0x15, // tx_ns
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // token
                0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, // mac
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
