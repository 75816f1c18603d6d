//! The seeded 5-tuple flow hash. One implementation serves the XDP program and the agent, so
//! userspace can predict which next hop a flow takes (tests, `dwcp` CLI) and every gateway with
//! the same seed picks the same bucket for the same flow.

/// A flow's identity as the fast path hashes it. Addresses are in network byte order as
/// 4 big-endian words (IPv4 uses only `src[0]`/`dst[0]`), ports in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

#[inline(always)]
const fn mix(mut h: u32, k: u32) -> u32 {
    // murmur3 32-bit block mix.
    let mut k = k.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    h ^= k;
    h = h.rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// murmur3-style hash of the 5-tuple with a seed. Stable across versions: changing it moves
/// every flow, so treat it as a wire format.
#[inline(always)]
pub const fn flow_hash(k: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(
        h,
        k.src[0] ^ k.src[1].rotate_left(8) ^ k.src[2].rotate_left(16) ^ k.src[3].rotate_left(24),
    );
    h = mix(
        h,
        k.dst[0] ^ k.dst[1].rotate_left(8) ^ k.dst[2].rotate_left(16) ^ k.dst[3].rotate_left(24),
    );
    h = mix(h, ((k.src_port as u32) << 16) | k.dst_port as u32);
    h = mix(h, k.proto as u32);
    fmix(h ^ 13)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{maps::bucket_of, wire::encap_source_port};

    const fn key(src: [u32; 4], dst: [u32; 4], src_port: u16, dst_port: u16, proto: u8) -> FlowKey {
        FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            proto,
        }
    }
    const V4_A: [u32; 4] = [0x0a00_0001, 0, 0, 0]; // 10.0.0.1
    const V4_B: [u32; 4] = [0x0a01_0001, 0, 0, 0]; // 10.1.0.1
    const V6_A: [u32; 4] = [0x2001_0db8, 0, 0, 1]; // 2001:db8::1
    const V6_B: [u32; 4] = [0x2001_0db8, 0, 0, 2]; // 2001:db8::2
    /// 2001:db8:85a3:8d3:1319:8a2e:370:7348: every word non-zero, so every rotation counts.
    const V6_FULL: [u32; 4] = [0x2001_0db8, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7348];
    const ONES: [u32; 4] = [u32::MAX; 4];

    /// (key, seed) -> (flow hash, bucket, outer UDP source port). The hash is a wire format:
    /// gateways of a mesh (and the agent predicting paths) must agree on it bit for bit.
    /// These literals were computed ONCE by an independent implementation (a throwaway Python
    /// murmur3 written from the spec, itself checked against the published MurmurHash3_x86_32
    /// vectors). NEVER regenerate them from the code under test: a mismatch here means the
    /// wire format changed, which moves every flow of every gateway not upgraded in lockstep.
    #[rustfmt::skip]
    const GOLDEN: [(FlowKey, u32, u32, usize, u16); 10] = [
        (key(V4_A, V4_B, 1000, 80, 6), 0, 0x83db_b40d, 821, 50139),
        (key(V4_A, V4_B, 1000, 80, 6), 1, 0xf859_94eb, 54, 63577),
        (key(V4_A, V4_B, 1000, 80, 6), 0xdead_beef, 0x020e_621b, 524, 49678),
        (key(V4_A, V4_B, 0, 65535, 17), 0, 0xc921_f77e, 622, 51489),
        (key(V4_A, V4_B, 0, 0, 1), 0xdead_beef, 0xd834_27e1, 247, 55348),
        (key(V6_A, V6_B, 65535, 443, 6), 0, 0x6ca8_c613, 499, 60584),
        (key(V6_A, V6_B, 0, 4789, 17), 1, 0x2da7_d97a, 286, 60839),
        (key(V6_FULL, V6_B, 0, 0, 58), 0xdead_beef, 0x3548_025c, 619, 62792),
        (key([0; 4], [0; 4], 0, 0, 0), 0, 0x11b1_771c, 559, 53681),
        (key(ONES, ONES, 65535, 65535, 17), 0xdead_beef, 0xf215_c7c8, 176, 61973),
    ];

    #[test]
    fn golden_flow_hashes() {
        for (i, (k, seed, hash, _, _)) in GOLDEN.iter().enumerate() {
            assert_eq!(
                flow_hash(k, *seed),
                *hash,
                "golden vector {i}: {k:?} seed {seed:#x}"
            );
        }
    }

    #[test]
    fn golden_buckets_and_source_ports() {
        for (i, (k, seed, _, bucket, sport)) in GOLDEN.iter().enumerate() {
            let h = flow_hash(k, *seed);
            assert_eq!(bucket_of(h), *bucket, "golden vector {i}: bucket");
            assert_eq!(
                encap_source_port(h),
                *sport,
                "golden vector {i}: source port"
            );
        }
        // The ends of the ranges and the wrap-arounds.
        let buckets = [0, 1020, 1021, u32::MAX].map(bucket_of);
        assert_eq!(buckets, [0, 1020, 0, 107]);
        let sports = [0, 0x3fff_ffff, 0x4000_0000, u32::MAX].map(encap_source_port);
        assert_eq!(sports, [49152, 65535, 49152, 65535]);
    }
}
