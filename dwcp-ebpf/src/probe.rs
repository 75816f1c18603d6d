//! The probe rules shared by the two places a probe arrives: the underlay (XDP, behind an
//! Ethernet header) and the inside of a WireGuard tunnel (tc on the WireGuard device, an L3
//! device: the IP header comes first). A probe is taken only from its link's peer, to our
//! address on the link, on the link's interface, with the link's TTL (GTSM); a request may
//! then be reflected (rate-limited), a reply is measured into `LINK_STATE` if its token is
//! ours and its send time fresh. Both places therefore keep a link's RTT, jitter and liveness
//! with the same code, and the LAN program judges both kinds of link alike.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use dwcp_common::{probe::*, wire::UDP_HLEN, LinkConfig, LinkState, Reason, LINK_F_AUTH};

use crate::{
    headers::{csum_replace2, ptr_at, Frame, Ipv4Hdr, UdpHdr},
    maps::{LINK_CONFIG, LINK_STATE, PROBE_KEYS},
    stats::count,
};

/// What became of a probe of one of our links; the caller turns a request around.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A request of the peer, within the reflection budget: to be sent back as a reply.
    Reflect,
    /// Consumed (a reply measured) or refused (counted): to be dropped.
    Drop,
}

/// The probe whose UDP header is at `l4` (its IPv4 header `ip`, arrived on `ifindex`), with
/// its body. `Err`: not a probe of ours at all (malformed, another version), to be passed on
/// and counted by the caller.
#[inline(always)]
pub fn take<C: Frame>(
    ctx: &C,
    l4: usize,
    ifindex: u32,
    ip: &Ipv4Hdr,
) -> Result<(*mut [u8; PROBE_LEN], Taken), Reason> {
    let body: *mut [u8; PROBE_LEN] = ptr_at(ctx, l4 + UDP_HLEN).ok_or(Reason::UnderlayProbeBad)?;
    // SAFETY: bounds-checked pointer into the packet.
    let b = unsafe { &*body };
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != PROBE_MAGIC
        || b[4] != PROBE_VERSION
        || ctx.data_end() - ctx.data() != l4 + UDP_HLEN + PROBE_LEN
    {
        return Err(Reason::UnderlayProbeBad);
    }
    let drop = |reason| {
        count(reason);
        Ok((body, Taken::Drop))
    };
    let link_id = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    let Some(cfg) = LINK_CONFIG.get(link_id) else {
        return drop(Reason::UnderlayProbeStranger);
    };
    if ip.src != u32::from_ne_bytes(cfg.peer_ip4)
        || ip.dst != u32::from_ne_bytes(cfg.local_ip4)
        || ifindex != cfg.ifindex
    {
        return drop(Reason::UnderlayProbeStranger);
    }
    if ip.ttl < cfg.probe_min_ttl {
        return drop(Reason::UnderlayProbeTtl);
    }
    let kind = b[5];
    let flags = u16::from_be_bytes([b[6], b[7]]);
    let seq = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
    let tx_ns = be64(b, 16);
    let token = be64(b, 24);
    let auth = cfg.flags & LINK_F_AUTH != 0;
    if auth && probe_mac(&cfg.auth_key, kind, flags, link_id, seq, tx_ns, token) != be64(b, 32) {
        return drop(Reason::UnderlayProbeBadMac);
    }
    let Some(st) = LINK_STATE.get_ptr_mut(link_id) else {
        return drop(Reason::UnderlayProbeStranger);
    };
    // SAFETY: the map value the lookup returned; concurrent updates only blur statistics.
    let st = unsafe { &mut *st };
    let now = unsafe { bpf_ktime_get_ns() };
    match kind {
        PROBE_KIND_REQUEST => {
            if !reflect_allowed(st, cfg, now) {
                return drop(Reason::UnderlayProbeRateLimited);
            }
            st.reflected += 1;
            if auth {
                let mac = probe_mac(
                    &cfg.auth_key,
                    PROBE_KIND_REPLY,
                    flags,
                    link_id,
                    seq,
                    tx_ns,
                    token,
                );
                // SAFETY: the bounds-checked probe body; `b` is not read after this.
                let out = unsafe { &mut *body };
                out[32..40].copy_from_slice(&mac.to_be_bytes());
            }
            Ok((body, Taken::Reflect))
        }
        PROBE_KIND_REPLY => {
            let Some(key) = (unsafe { PROBE_KEYS.get(link_id) }) else {
                return drop(Reason::UnderlayProbeBadToken);
            };
            if probe_token(key, link_id, seq, tx_ns) != token {
                return drop(Reason::UnderlayProbeBadToken);
            }
            // Sent by us (the token says so) recently, and after the last reply taken: an
            // old reply replayed, or one reflected twice, is not a sign of life.
            if tx_ns > now || now - tx_ns > PROBE_MAX_AGE_NS || tx_ns <= st.last_tx_ns {
                return drop(Reason::UnderlayProbeStale);
            }
            st.last_tx_ns = tx_ns;
            measure(st, now, now - tx_ns, seq, cfg.detect_ns);
            count(Reason::UnderlayProbeReply);
            Ok((body, Taken::Drop))
        }
        _ => Err(Reason::UnderlayProbeBad),
    }
}

/// Turns a request around in place: swapped IPs and ports (the IPv4 checksum is a sum,
/// unchanged by the swap), TTL 255 again (the reply is a probe sent by us), kind = reply, UDP
/// checksum cleared. Nothing of ours goes in: the RTT is the sender's clock minus its own
/// `tx_ns`, and the token goes back as it came (with, on a keyed link, the reply's MAC that
/// [`take`] wrote).
#[inline(always)]
pub fn turn_around(ip: &mut Ipv4Hdr, udp: &mut UdpHdr, b: &mut [u8; PROBE_LEN]) {
    core::mem::swap(&mut ip.src, &mut ip.dst);
    let words = ip as *mut Ipv4Hdr as *mut u16;
    // SAFETY: word 4 (TTL and protocol) of the 20-byte header we hold.
    unsafe {
        let old = *words.add(4);
        ip.ttl = PROBE_TTL;
        ip.check = csum_replace2(ip.check, old, *words.add(4));
    }
    core::mem::swap(&mut udp.sport, &mut udp.dport);
    udp.check = 0;
    b[5] = PROBE_KIND_REPLY;
}

#[inline(always)]
fn be64(b: &[u8; PROBE_LEN], at: usize) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < 8 {
        v = (v << 8) | b[at + i] as u64;
        i += 1;
    }
    v
}

/// The reflection limiter, a GCRA (the virtual-scheduling form of a token bucket): a request
/// passes while the theoretical arrival time is at most `reflect_burst - 1` gaps ahead of now.
#[inline(always)]
fn reflect_allowed(st: &mut LinkState, cfg: &LinkConfig, now: u64) -> bool {
    let gap = cfg.reflect_gap_ns as u64;
    if gap == 0 {
        return false;
    }
    let tat = if st.reflect_tat_ns > now {
        st.reflect_tat_ns
    } else {
        now
    };
    if tat - now > gap * cfg.reflect_burst.saturating_sub(1) as u64 {
        return false;
    }
    st.reflect_tat_ns = tat + gap;
    true
}

/// Turns one reply into link state. RTT smoothing as TCP (RFC 6298, alpha 1/8), jitter as
/// RTP (RFC 3550: J += (|D| - J) / 16, D the change of RTT between consecutive replies).
#[inline(always)]
fn measure(st: &mut LinkState, now: u64, rtt: u64, seq: u32, detect_ns: u64) {
    let gap = st.last_reply_ns == 0 || now - st.last_reply_ns > detect_ns;
    st.good_streak = if gap {
        1
    } else {
        st.good_streak.saturating_add(1)
    };
    if st.srtt_ns == 0 {
        st.srtt_ns = rtt;
    } else {
        st.srtt_ns = st.srtt_ns - (st.srtt_ns >> 3) + (rtt >> 3);
        let d = rtt.abs_diff(st.last_rtt_ns);
        if d > st.jitter_ns {
            st.jitter_ns += (d - st.jitter_ns) >> 4;
        } else {
            st.jitter_ns -= (st.jitter_ns - d) >> 4;
        }
    }
    st.last_rtt_ns = rtt;
    st.last_seq = seq;
    st.replies += 1;
    st.last_reply_ns = now;
}
