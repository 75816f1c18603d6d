//! Map names, sizes, keys and values of the fast path. The agent owns the configuration maps
//! (routes, groups, next hops, neighbours, classifier, QoS policy, link config); the XDP
//! programs own the state maps (link state, counters). No map is written by both.

/// Map names. They are also the file names under the pin directory (default `/sys/fs/bpf/dwcp`)
/// and must stay within the kernel's 15-character object names.
pub mod names {
    pub const CONFIG: &str = "DWCP_CONFIG";
    pub const ROUTES_V4: &str = "ROUTES_V4";
    pub const ROUTES_V6: &str = "ROUTES_V6";
    /// Group tables, two slots per group (see [`super::group_slot`]).
    pub const NH_GROUPS: &str = "NH_GROUPS";
    /// Which of its two slots is each group's table in force.
    pub const NH_ACTIVE: &str = "NH_ACTIVE";
    pub const NEXTHOPS: &str = "NEXTHOPS";
    pub const NEIGHBOURS: &str = "NEIGHBOURS";
    pub const TX_PORTS: &str = "TX_PORTS";
    /// The LAN interfaces (ifindex -> [`super::LanPort`]): where decapsulated traffic may be
    /// redirected, and the MAC a LAN frame must be addressed to.
    pub const LAN_PORTS: &str = "LAN_PORTS";
    pub const LINK_CONFIG: &str = "LINK_CONFIG";
    pub const LINK_STATE: &str = "LINK_STATE";
    pub const CLASSIFIER: &str = "CLASSIFIER";
    pub const CLASS_PORTS: &str = "CLASS_PORTS";
    pub const QOS_POLICY: &str = "QOS_POLICY";
    pub const POLICERS: &str = "POLICERS";
    pub const VNIS: &str = "VNIS";
    /// Link id -> [`crate::probe::ProbeKey`], written by the probe sender (the agent's or
    /// `dwcp-prober`), read by the underlay program to check replies.
    pub const PROBE_KEYS: &str = "PROBE_KEYS";
    pub const NH_STATS: &str = "NH_STATS";
    pub const CLASS_STATS: &str = "CLASS_STATS";
    pub const REASON_STATS: &str = "REASON_STATS";
    /// Sampled packets (ring buffer; not pinned: each agent reads its own program's).
    pub const FLOW_SAMPLES: &str = "FLOW_SAMPLES";
    /// Flow -> hand-off mark, written by the LAN XDP program, read by the LAN tc program.
    /// Pinned, so the programs of a restarted agent share it with those still attached.
    pub const HANDOFF_FLOWS: &str = "HANDOFF_FLOWS";
    /// One bit per link the link-state records say is down anywhere in the network (a
    /// [`super::LinksDown`]), written by the agent as records arrive.
    pub const LINKS_DOWN: &str = "LINKS_DOWN";
    /// Exit number -> link id: where a transit packet's source route sends it on (see
    /// [`super::MemberPath::route`]).
    pub const TRANSIT_EXITS: &str = "TRANSIT_EXITS";
    /// Every map, for pinning and cleanup.
    pub const ALL: [&str; 23] = [
        CONFIG,
        ROUTES_V4,
        ROUTES_V6,
        NH_GROUPS,
        NH_ACTIVE,
        NEXTHOPS,
        NEIGHBOURS,
        TX_PORTS,
        LAN_PORTS,
        LINK_CONFIG,
        LINK_STATE,
        CLASSIFIER,
        CLASS_PORTS,
        QOS_POLICY,
        POLICERS,
        VNIS,
        PROBE_KEYS,
        NH_STATS,
        HANDOFF_FLOWS,
        CLASS_STATS,
        REASON_STATS,
        LINKS_DOWN,
        TRANSIT_EXITS,
    ];
}

/// Program names in the eBPF object.
pub mod programs {
    /// XDP on the LAN side: classify, mark, hash, encapsulate, redirect.
    pub const LAN_INGRESS: &str = "dwcp_lan";
    /// XDP on the underlay side: reflect/measure probes, decapsulate.
    pub const UNDERLAY_INGRESS: &str = "dwcp_underlay";
    /// tc ingress (SchedClassifier) on the LAN side: sets `skb->mark` to the hand-off mark the
    /// LAN XDP program recorded for the packet's flow (the WireGuard hand-off).
    pub const LAN_HANDOFF_TC: &str = "dwcp_lan_tc";
    /// tc ingress (SchedClassifier) on a WireGuard device: reflects and measures the probes
    /// that travel inside the tunnel.
    pub const WG_PROBE_TC: &str = "dwcp_wg_tc";
}

pub const MAX_ROUTES: u32 = 16_384;
pub const MAX_GROUPS: u32 = 1_024;
pub const MAX_NEXTHOPS: u32 = 1_024;
pub const MAX_LINKS: u32 = 1_024;
pub const MAX_NEIGHBOURS: u32 = 4_096;
pub const MAX_PORTS: u32 = 64;
pub const MAX_CLASSIFIER_RULES: u32 = 4_096;
pub const MAX_VNIS: u32 = 4_096;
/// Next hops in one group (primary + up to 3 secondaries, each possibly ECMP'd, fits easily).
pub const MAX_GROUP_MEMBERS: usize = 8;
/// Slots per group in `NH_GROUPS`: the table in force and the one being written.
pub const GROUP_SLOTS: u32 = 2;
/// Entries of `NH_GROUPS`.
pub const GROUP_TABLE_ENTRIES: u32 = MAX_GROUPS * GROUP_SLOTS;

/// Index in `NH_GROUPS` of slot `slot` (0 or 1; `NH_ACTIVE[group]` says which is in force) of
/// group `group`.
///
/// Double buffering: the agent writes a group's new table into the slot not in force (no
/// packet reads it), then flips `NH_ACTIVE[group]` with one 4-byte write. A packet reads the
/// active index once, then only that slot, so it sees the old table or the new one, never a
/// mix. The slot a packet may still be reading after a flip is not written again before a
/// guard time has passed (see the agent's `dataplane` module), far longer than one run of
/// an XDP program.
#[inline(always)]
pub const fn group_slot(group: u32, slot: u32) -> u32 {
    group * GROUP_SLOTS + (slot & 1)
}

/// Buckets of a group's weighted table. Prime, as Maglev recommends, and large enough that one
/// bucket is 0.1 % of a group's traffic.
pub const NHG_BUCKETS: usize = 1021;

/// The bucket of a group's table a flow with hash `hash` ([`crate::flow_hash`]) falls in. Part
/// of the wire format with the hash: the agent predicts paths with it.
#[inline(always)]
pub const fn bucket_of(hash: u32) -> usize {
    (hash % NHG_BUCKETS as u32) as usize
}

/// `GatewayConfig.flags`: the agent has finished programming; until then the LAN program
/// passes everything up.
pub const CONFIG_F_READY: u32 = 1;
/// `GatewayConfig.flags`: some policer is configured (else the lookups are skipped).
pub const CONFIG_F_POLICING: u32 = 2;

/// Global settings of this gateway. One entry in `DWCP_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Seed of the flow hash: the same on every gateway so flows hash alike everywhere.
    pub hash_seed: u32,
    pub flags: u32,
    /// Flow sampling: a forwarded packet goes to `FLOW_SAMPLES` when a random 32-bit number
    /// is below this. 0 = off; [`sample_threshold`] gives one packet in N.
    pub sample_threshold: u32,
    pub _pad: u32,
}

/// `GatewayConfig.sample_threshold` for sampling one packet in `every` (0 = off).
pub const fn sample_threshold(every: u32) -> u32 {
    match u32::MAX.checked_div(every) {
        Some(t) => t,
        None => 0,
    }
}

/// One sampled packet, as the LAN program writes it to the `FLOW_SAMPLES` ring buffer: the
/// traffic as offered (classified, before the policer).
/// Explicit padding: the record is copied whole from the program's stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSampleRecord {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub class: u8,
    /// 1 for IPv6 (addresses in four host-order words), 0 for IPv4 (the first word).
    pub v6: u8,
    pub _pad: u8,
    /// Length of the frame as it arrived.
    pub bytes: u32,
    pub nexthop: u32,
    /// The route's next-hop group: which destination the packet was for.
    pub group: u32,
    pub _pad2: u32,
}

/// Size of the `FLOW_SAMPLES` ring buffer: 4,096 records of 56 bytes (+ 8 of header); at one
/// sample in 1,000 packets that is 4 million packets between two reads.
pub const FLOW_SAMPLES_BYTES: u32 = 256 * 1024;

/// Value of the route LPM tries: which next-hop group serves the prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub group_id: u32,
    /// QoS class for traffic that matches no classifier rule.
    pub default_class: u8,
    pub _pad: [u8; 3],
}

/// Links a member's path may cross: ours, then the exit of each of up to four transit
/// gateways (the source route's four bytes).
pub const MAX_PATH_LINKS: usize = 5;
/// Exits a gateway can number in a source route (a byte; 0 ends the route).
pub const MAX_TRANSIT_EXITS: u32 = 255;

/// The whole path of a group member. The ingress gateway picks the path and the transit
/// gateways follow it (they never route a transit packet on their own), so gateways whose
/// views differ during convergence cannot send a packet in a circle.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberPath {
    /// Every link of the path, ours first (`link_count` of them, the slots after them repeat
    /// the first, so the fast path checks all five without a branch): the LAN program skips
    /// the member while any of them is down in `LINKS_DOWN`. An empty path checks none.
    pub links: [u16; MAX_PATH_LINKS],
    pub link_count: u8,
    pub _pad: u8,
    /// The source route the member's packets carry in their VXLAN header
    /// ([`crate::wire::vxlan_route`]): the exit each transit gateway takes, in order, as the
    /// link's number among its region's links (from 1); 0 ends the route (deliver here).
    pub route: [u8; 4],
}

/// One group's weighted bucket table. Buckets hold member indexes (into `nexthops`), so a
/// dead member's flows can move to the next live member while the others stay put.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHopTable {
    /// Members in `nexthops`: the first `active_count` own the buckets; the rest are standbys
    /// (secondary paths), taken only when active members' links are dead.
    pub member_count: u16,
    pub active_count: u16,
    pub nexthops: [u32; MAX_GROUP_MEMBERS],
    /// `paths[i]` is the whole path of member `nexthops[i]`.
    pub paths: [MemberPath; MAX_GROUP_MEMBERS],
    pub buckets: [u8; NHG_BUCKETS],
    pub _pad: [u8; 3],
}

impl Default for NextHopTable {
    fn default() -> Self {
        NextHopTable {
            member_count: 0,
            active_count: 0,
            nexthops: [0; MAX_GROUP_MEMBERS],
            paths: [MemberPath::default(); MAX_GROUP_MEMBERS],
            buckets: [0; NHG_BUCKETS],
            _pad: [0; 3],
        }
    }
}

/// Words of [`LinksDown`].
pub const LINKS_DOWN_WORDS: usize = (MAX_LINKS / 64) as usize;

/// The value of `LINKS_DOWN`: bit `l % 64` of word `l / 64` set = link `l` is down for
/// routing (either end's record says so, or the operator took it down).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinksDown {
    pub words: [u64; LINKS_DOWN_WORDS],
    /// How many bits are set: the fast path looks at paths only while it is not 0.
    pub count: u64,
}

impl LinksDown {
    /// The bitmap of `links`; ids beyond [`MAX_LINKS`] are left out (no such link exists in a
    /// topology the agent accepts).
    pub fn of(links: impl IntoIterator<Item = u32>) -> LinksDown {
        let mut d = LinksDown::default();
        for l in links {
            if l < MAX_LINKS && !d.contains(l) {
                d.words[(l / 64) as usize] |= 1 << (l % 64);
                d.count += 1;
            }
        }
        d
    }

    #[inline(always)]
    pub const fn contains(&self, link: u32) -> bool {
        self.words[((link / 64) as usize) & (LINKS_DOWN_WORDS - 1)] & (1 << (link % 64)) != 0
    }

    /// The links set, in order.
    pub fn links(&self) -> impl Iterator<Item = u32> + '_ {
        (0..MAX_LINKS).filter(|&l| self.contains(l))
    }
}

/// `NextHop.flags`
pub const NH_F_VALID: u32 = 1;
/// `NextHop.flags`: a hand-off next hop (a WireGuard tunnel, which XDP cannot encrypt). The
/// LAN program rewrites the DSCP as usual but does not encapsulate: it records the mark
/// (carried in `vni`, see [`NextHop::handoff_mark`]) for the packet's flow in
/// `HANDOFF_FLOWS` and passes the packet up; the LAN tc program finds the flow there and sets
/// `skb->mark`, and the kernel's policy routing (`ip rule fwmark M lookup T`) sends it into
/// the tunnel.
pub const NH_F_HANDOFF: u32 = 2;

/// Flows `HANDOFF_FLOWS` remembers (least recently used evicted first).
pub const MAX_HANDOFF_FLOWS: u32 = 65_536;

/// The key of `HANDOFF_FLOWS`: a `FlowKey` with its padding spelled out, so the XDP program
/// that writes an entry and the tc program that looks it up hash the same 40 bytes.
///
/// Why a map and not the XDP metadata area: some kernels (this project's CI machines among
/// them) refuse `bpf_xdp_adjust_meta` to XDP programs, and a per-CPU slot would be
/// overwritten by the next packet before GRO hands the first to tc. A flow's entry is
/// rewritten by each of its packets, so the mark tc reads is the latest decision for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandoffFlow {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl HandoffFlow {
    #[inline(always)]
    pub const fn of(k: &crate::FlowKey) -> HandoffFlow {
        HandoffFlow {
            src: k.src,
            dst: k.dst,
            src_port: k.src_port,
            dst_port: k.dst_port,
            proto: k.proto,
            _pad: [0; 3],
        }
    }
}

/// A next hop: a VXLAN tunnel endpoint on one underlay link, or (with [`NH_F_HANDOFF`]) a
/// WireGuard tunnel reached through the kernel's policy routing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub flags: u32,
    /// Underlay link (index into `LINK_CONFIG` / `LINK_STATE`) this next hop rides on.
    pub link_id: u32,
    /// Underlay interface to send on (key of `TX_PORTS` and of the neighbour entry).
    pub ifindex: u32,
    /// VXLAN network identifier = path id. For a hand-off next hop ([`NH_F_HANDOFF`]): the
    /// fwmark (the field is re-used so the map's value size, and pinned maps, stay as they
    /// were).
    pub vni: u32,
    /// Outer source and destination IPv4 address, network byte order as bytes. For a hand-off
    /// next hop: the link's tunnel addresses, between which it is probed (unspecified when it
    /// is not).
    pub local_ip4: [u8; 4],
    pub remote_ip4: [u8; 4],
    /// Underlay neighbour to send to (the remote gateway, or a router in between).
    pub via_ip4: [u8; 4],
    /// Largest encapsulated IP packet the underlay carries (its MTU).
    pub mtu: u32,
    /// Destination MAC of the inner frame (the peer's VXLAN device MAC, for interop).
    pub inner_dst_mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl NextHop {
    /// A hand-off next hop: packets for it get `mark` and go to the kernel (policy routing
    /// into the WireGuard device `ifindex`). `link_id` ties it to a link's liveness like any
    /// next hop (an unmonitored link is always usable).
    pub const fn handoff(link_id: u32, ifindex: u32, mark: u32) -> NextHop {
        NextHop {
            flags: NH_F_VALID | NH_F_HANDOFF,
            link_id,
            ifindex,
            vni: mark,
            local_ip4: [0; 4],
            remote_ip4: [0; 4],
            via_ip4: [0; 4],
            mtu: 0,
            inner_dst_mac: [0; 6],
            _pad: [0; 2],
        }
    }

    /// This next hop with its link's probe endpoints: for a hand-off next hop, the tunnel
    /// addresses its probes go between (what `dwcp-prober` probes while the agent is down);
    /// nothing is sent to them by the fast path.
    pub const fn with_ends(self, local_ip4: [u8; 4], remote_ip4: [u8; 4]) -> NextHop {
        NextHop {
            local_ip4,
            remote_ip4,
            ..self
        }
    }

    pub const fn is_handoff(&self) -> bool {
        self.flags & NH_F_HANDOFF != 0
    }

    /// The fwmark of a hand-off next hop, `None` for a VXLAN one.
    pub const fn handoff_mark(&self) -> Option<u32> {
        if self.is_handoff() {
            Some(self.vni)
        } else {
            None
        }
    }
}

/// Key of `NEIGHBOURS`: an IPv4 neighbour on an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighbourKey {
    pub ifindex: u32,
    pub ip4: [u8; 4],
}

/// Value of `NEIGHBOURS`, filled by the agent from the kernel's neighbour table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: [u8; 6],
    /// MAC of our interface `ifindex` (the source of frames sent there).
    pub if_mac: [u8; 6],
    pub _pad: [u8; 4],
}

/// `LinkConfig.flags`: the link is probed, so its liveness decides whether it is used.
pub const LINK_F_MONITORED: u32 = 1;
/// `LinkConfig.flags`: administratively down (`dwcp link down`).
pub const LINK_F_ADMIN_DOWN: u32 = 2;
/// `LinkConfig.flags`: the link's probes carry a MAC under `LinkConfig.auth_key`, the key
/// both ends share (`auth_key_file`); probes without a valid one are dropped.
pub const LINK_F_AUTH: u32 = 4;

/// Agent-owned settings of an underlay link: its liveness rule and what a packet of the link
/// looks like on arrival (the peer's address, ours, the interface), which the underlay
/// program checks before it decapsulates, reflects or measures anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkConfig {
    pub flags: u32,
    /// Good replies needed after an outage before the link is used again (hysteresis).
    pub up_after: u32,
    /// No reply for this long means the link is dead (detect multiplier x probe interval).
    pub detect_ns: u64,
    /// The peer gateway's underlay address (network order as bytes): the only source of the
    /// link's VXLAN packets and probes.
    pub peer_ip4: [u8; 4],
    /// Our underlay address on the link: probe requests must be addressed to it (the reply
    /// leaves from it).
    pub local_ip4: [u8; 4],
    /// The underlay interface the link's packets must arrive on.
    pub ifindex: u32,
    /// Least IPv4 TTL a probe may arrive with: [`crate::probe::PROBE_TTL`] for a directly
    /// connected peer (GTSM), 0 (no check) when the link crosses routers (`via_ip`).
    pub probe_min_ttl: u8,
    pub _pad: [u8; 3],
    /// Probe requests of the peer are reflected at most once per `reflect_gap_ns` on
    /// average, with bursts of `reflect_burst` (a GCRA in `LinkState.reflect_tat_ns`); 0:
    /// none.
    pub reflect_gap_ns: u32,
    pub reflect_burst: u32,
    /// The key both ends of the link share, when `flags` has [`LINK_F_AUTH`]
    /// ([`crate::probe::probe_mac`]); zero otherwise.
    pub auth_key: crate::probe::ProbeKey,
}

/// Kernel-owned measurements of an underlay link, updated by the underlay program from probe
/// replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// `bpf_ktime_get_ns` of the last valid reply; 0 = never.
    pub last_reply_ns: u64,
    /// Consecutive replies since the last gap longer than `detect_ns`.
    pub good_streak: u32,
    pub last_seq: u32,
    pub last_rtt_ns: u64,
    /// Smoothed RTT (RFC 6298 alpha = 1/8).
    pub srtt_ns: u64,
    /// Interarrival jitter of the RTT (RFC 3550: J += (|D| - J) / 16).
    pub jitter_ns: u64,
    pub replies: u64,
    /// Requests of the peer reflected by us on this link.
    pub reflected: u64,
    /// Sender clock (`tx_ns`) of the last reply accepted: a reply must be newer.
    pub last_tx_ns: u64,
    /// The reflection limiter's theoretical arrival time (GCRA): a request is reflected
    /// while this is at most `reflect_burst - 1` gaps ahead of now.
    pub reflect_tat_ns: u64,
}

/// Classifier rule direction: match the destination or the source port.
pub const CLASSIFY_DST_PORT: u8 = 0;
pub const CLASSIFY_SRC_PORT: u8 = 1;

/// Key of `CLASSIFIER`: protocol (0 = any) + port. Looked up for the destination port, then
/// the source port, each first with the packet's protocol and then with protocol 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClassifierKey {
    pub proto: u8,
    pub direction: u8,
    pub port: u16,
}

/// `CLASS_PORTS` has one bit per port number (1,024 words of 64 bits): set when some
/// classifier rule names that port, so the fast path skips the hash lookups for other ports.
pub const CLASS_PORT_WORDS: u32 = 1024;

/// Value of `CLASSIFIER`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassifierRule {
    pub class: u8,
    pub _pad: [u8; 3],
}

/// `QosPolicy.flags`: rewrite the DSCP of this class's packets.
pub const QOS_F_REWRITE: u8 = 1;

/// Per-class policy, indexed by class id in `QOS_POLICY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosPolicy {
    pub dscp: u8,
    pub flags: u8,
    pub _pad: [u8; 6],
}

pub const MAX_POLICERS: u32 = 4_096;
/// `PolicerKey.group_id` of a per-class policer (all destinations).
pub const POLICER_ANY_GROUP: u32 = u32::MAX;
/// `Policer.action`: over-rate packets are re-marked to best effort.
pub const POLICE_REMARK: u8 = 0;
/// `Policer.action`: over-rate packets are dropped.
pub const POLICE_DROP: u8 = 1;

/// Key of `POLICERS`: traffic of `class` towards next-hop group `group_id` (a destination's
/// reservations), or of `class` to anywhere with `POLICER_ANY_GROUP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicerKey {
    pub group_id: u32,
    pub class: u8,
    pub _pad: [u8; 3],
}

/// A token bucket. The agent writes rate, burst and action (and a full bucket); the XDP
/// program then owns `tokens`, `last_ns` and the two counters. Updates from several CPUs are
/// not serialised: a bucket may admit a few packets too many under contention (the gateway's
/// LAN queue is usually served by one CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policer {
    pub rate_bytes_per_s: u64,
    pub burst_bytes: u64,
    pub tokens: u64,
    pub last_ns: u64,
    pub conformed: u64,
    pub exceeded: u64,
    pub action: u8,
    pub _pad: [u8; 7],
}

/// Value of `VNIS`: a VNI that terminates on this gateway.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VniEntry {
    /// The link the VNI is bound to: its packets are decapsulated only when they come from
    /// that link's peer on its interface (`LINK_CONFIG`).
    pub link_id: u32,
    pub flags: u32,
}

/// Value of `LAN_PORTS` (key: the interface's ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LanPort {
    /// The interface's MAC: the LAN program forwards only frames addressed to it.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Packet and byte counters (per CPU in the maps; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// What the fast path did with a packet, counted per CPU in `REASON_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    LanForwarded = 0,
    LanPassNotIp = 1,
    LanPassMalformed = 2,
    LanPassFragment = 3,
    LanPassNoRoute = 4,
    LanPassNoGroup = 5,
    LanPassNoLiveNextHop = 6,
    LanPassNoNeighbour = 7,
    LanPassTtlExceeded = 8,
    LanPassTooBig = 9,
    LanPassNoHeadroom = 10,
    LanRedirectFailed = 11,
    LanFailover = 12,
    LanPassNotReady = 13,
    UnderlayDecapRedirected = 14,
    UnderlayDecapPassed = 15,
    UnderlayPassOther = 16,
    UnderlayPassUnknownVni = 17,
    UnderlayPassMalformed = 18,
    UnderlayProbeReflected = 19,
    UnderlayProbeReply = 20,
    UnderlayProbeBad = 21,
    PolicerRemarked = 22,
    PolicerDropped = 23,
    UnderlayTransit = 24,
    /// LAN packet for a hand-off (WireGuard) next hop: DSCP set, mark recorded for its flow,
    /// passed to the kernel.
    HandoffWireGuard = 25,
    /// Hand-off next hop, but the flow's mark could not be recorded in `HANDOFF_FLOWS`:
    /// passed up unmarked.
    HandoffNoEntry = 26,
    /// A transit packet whose source route exits on a hand-off (WireGuard) link: dropped. XDP
    /// cannot encrypt it, and the kernel would route it unmarked, in clear text (fail closed).
    HandoffTransit = 27,
    /// Counted by the LAN tc program: a packet whose flow has a hand-off mark in
    /// `HANDOFF_FLOWS` got it as `skb->mark`.
    HandoffMarked = 28,
    /// No member of the group was usable; the flow took one that answers probes but is still
    /// held down after an outage (fewer than `up_after` good replies).
    LanHeldDownFallback = 29,
    /// A LAN frame not addressed to the MAC of the port it arrived on (or on a port that is
    /// not a LAN port): the kernel's.
    LanPassOtherMac = 30,
    /// 802.1Q / 802.1ad tagged: VLANs are the kernel's (never merged into untagged traffic).
    LanPassVlan = 31,
    /// IPv4 with options (source routes among them): the kernel's.
    LanPassIpOptions = 32,
    /// IPv6 with more extension headers than the fast path walks (4), or a transport header
    /// beyond the first 256 bytes: the kernel's.
    LanPassExtHeaders = 33,
    /// VXLAN for a VNI of ours from an address other than its link's peer: dropped.
    UnderlayDecapWrongSource = 34,
    /// VXLAN for a VNI of ours on another interface than its link's: dropped.
    UnderlayDecapWrongInterface = 35,
    /// Decapsulated, and the kernel's FIB routes it to a port that is not a LAN port (back
    /// towards the underlay): dropped.
    UnderlayDecapNotLan = 36,
    /// A probe that arrived with a TTL below its link's `probe_min_ttl` (not sent by a
    /// neighbour): dropped.
    UnderlayProbeTtl = 37,
    /// A probe of an unknown link, or not from its peer, to its local address, on its
    /// interface: dropped (never reflected).
    UnderlayProbeStranger = 38,
    /// A request over its link's reflection rate: dropped.
    UnderlayProbeRateLimited = 39,
    /// A reply whose token is not ours (forged, or its link has no key): dropped.
    UnderlayProbeBadToken = 40,
    /// A reply with a valid token but sent too long ago, in the future, or not after the
    /// last one accepted (a replay): dropped.
    UnderlayProbeStale = 41,
    /// A member was passed over because a link further along its path is down
    /// (`LINKS_DOWN`): a remote failure moved the flow (also counted as `LanFailover`).
    LanRemoteLinkDown = 42,
    /// A transit packet whose source route names an exit this gateway does not have, or the
    /// link it came in on: dropped.
    TransitNoExit = 43,
    /// A transit packet whose exit link is dead or down: dropped (the ingress gateway moves
    /// its flows to another path when the link's record reaches it; a transit gateway never
    /// picks a path of its own).
    TransitExitDown = 44,
    /// A transit packet whose exit has no resolved neighbour: dropped.
    TransitNoNeighbour = 45,
    /// A transit packet larger than its exit link's MTU: dropped.
    TransitTooBig = 46,
    /// No member of a WireGuard hand-off group usable: handed off to the hashed member's
    /// tunnel anyway (WireGuard encrypts it or its table's unreachable default drops it),
    /// never passed up unmarked to the main table, which might route it in clear text.
    HandoffNoLiveNextHop = 47,
    /// A probe of a link with a shared key (`LINK_F_AUTH`) whose MAC is missing or wrong: a
    /// request is not reflected, a reply not measured.
    UnderlayProbeBadMac = 48,
}

pub const REASON_COUNT: u32 = 64;

impl Reason {
    pub const ALL: [Reason; 49] = [
        Reason::LanForwarded,
        Reason::LanPassNotIp,
        Reason::LanPassMalformed,
        Reason::LanPassFragment,
        Reason::LanPassNoRoute,
        Reason::LanPassNoGroup,
        Reason::LanPassNoLiveNextHop,
        Reason::LanPassNoNeighbour,
        Reason::LanPassTtlExceeded,
        Reason::LanPassTooBig,
        Reason::LanPassNoHeadroom,
        Reason::LanRedirectFailed,
        Reason::LanFailover,
        Reason::LanPassNotReady,
        Reason::UnderlayDecapRedirected,
        Reason::UnderlayDecapPassed,
        Reason::UnderlayPassOther,
        Reason::UnderlayPassUnknownVni,
        Reason::UnderlayPassMalformed,
        Reason::UnderlayProbeReflected,
        Reason::UnderlayProbeReply,
        Reason::UnderlayProbeBad,
        Reason::PolicerRemarked,
        Reason::PolicerDropped,
        Reason::UnderlayTransit,
        Reason::HandoffWireGuard,
        Reason::HandoffNoEntry,
        Reason::HandoffTransit,
        Reason::HandoffMarked,
        Reason::LanHeldDownFallback,
        Reason::LanPassOtherMac,
        Reason::LanPassVlan,
        Reason::LanPassIpOptions,
        Reason::LanPassExtHeaders,
        Reason::UnderlayDecapWrongSource,
        Reason::UnderlayDecapWrongInterface,
        Reason::UnderlayDecapNotLan,
        Reason::UnderlayProbeTtl,
        Reason::UnderlayProbeStranger,
        Reason::UnderlayProbeRateLimited,
        Reason::UnderlayProbeBadToken,
        Reason::UnderlayProbeStale,
        Reason::LanRemoteLinkDown,
        Reason::TransitNoExit,
        Reason::TransitExitDown,
        Reason::TransitNoNeighbour,
        Reason::TransitTooBig,
        Reason::HandoffNoLiveNextHop,
        Reason::UnderlayProbeBadMac,
    ];

    /// Stable snake_case name, used as a metric label and in the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::LanForwarded => "lan_forwarded",
            Reason::LanPassNotIp => "lan_pass_not_ip",
            Reason::LanPassMalformed => "lan_pass_malformed",
            Reason::LanPassFragment => "lan_pass_fragment",
            Reason::LanPassNoRoute => "lan_pass_no_route",
            Reason::LanPassNoGroup => "lan_pass_no_group",
            Reason::LanPassNoLiveNextHop => "lan_pass_no_live_nexthop",
            Reason::LanPassNoNeighbour => "lan_pass_no_neighbour",
            Reason::LanPassTtlExceeded => "lan_pass_ttl_exceeded",
            Reason::LanPassTooBig => "lan_pass_too_big",
            Reason::LanPassNoHeadroom => "lan_pass_no_headroom",
            Reason::LanRedirectFailed => "lan_redirect_failed",
            Reason::LanFailover => "lan_failover",
            Reason::LanPassNotReady => "lan_pass_not_ready",
            Reason::UnderlayDecapRedirected => "underlay_decap_redirected",
            Reason::UnderlayDecapPassed => "underlay_decap_passed",
            Reason::UnderlayPassOther => "underlay_pass_other",
            Reason::UnderlayPassUnknownVni => "underlay_pass_unknown_vni",
            Reason::UnderlayPassMalformed => "underlay_pass_malformed",
            Reason::UnderlayProbeReflected => "underlay_probe_reflected",
            Reason::UnderlayProbeReply => "underlay_probe_reply",
            Reason::UnderlayProbeBad => "underlay_probe_bad",
            Reason::PolicerRemarked => "policer_remarked",
            Reason::PolicerDropped => "policer_dropped",
            Reason::UnderlayTransit => "underlay_transit",
            Reason::HandoffWireGuard => "handoff_wireguard",
            Reason::HandoffNoEntry => "handoff_no_entry",
            Reason::HandoffTransit => "handoff_transit",
            Reason::HandoffNoLiveNextHop => "handoff_no_live_nexthop",
            Reason::UnderlayProbeBadMac => "underlay_probe_bad_mac",
            Reason::HandoffMarked => "handoff_marked",
            Reason::LanHeldDownFallback => "lan_held_down_fallback",
            Reason::LanPassOtherMac => "lan_pass_other_mac",
            Reason::LanPassVlan => "lan_pass_vlan",
            Reason::LanPassIpOptions => "lan_pass_ip_options",
            Reason::LanPassExtHeaders => "lan_pass_ext_headers",
            Reason::UnderlayDecapWrongSource => "underlay_decap_wrong_source",
            Reason::UnderlayDecapWrongInterface => "underlay_decap_wrong_interface",
            Reason::UnderlayDecapNotLan => "underlay_decap_not_lan",
            Reason::UnderlayProbeTtl => "underlay_probe_ttl",
            Reason::UnderlayProbeStranger => "underlay_probe_stranger",
            Reason::UnderlayProbeRateLimited => "underlay_probe_rate_limited",
            Reason::UnderlayProbeBadToken => "underlay_probe_bad_token",
            Reason::UnderlayProbeStale => "underlay_probe_stale",
            Reason::LanRemoteLinkDown => "lan_remote_link_down",
            Reason::TransitNoExit => "transit_no_exit",
            Reason::TransitExitDown => "transit_exit_down",
            Reason::TransitNoNeighbour => "transit_no_neighbour",
            Reason::TransitTooBig => "transit_too_big",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for GatewayConfig {}
    unsafe impl aya::Pod for FlowSampleRecord {}
    unsafe impl aya::Pod for Route {}
    unsafe impl aya::Pod for NextHopTable {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for NeighbourKey {}
    unsafe impl aya::Pod for Neighbour {}
    unsafe impl aya::Pod for LinkConfig {}
    unsafe impl aya::Pod for LinkState {}
    unsafe impl aya::Pod for ClassifierKey {}
    unsafe impl aya::Pod for ClassifierRule {}
    unsafe impl aya::Pod for QosPolicy {}
    unsafe impl aya::Pod for VniEntry {}
    unsafe impl aya::Pod for LanPort {}
    unsafe impl aya::Pod for crate::probe::ProbeKey {}
    unsafe impl aya::Pod for PolicerKey {}
    unsafe impl aya::Pod for Policer {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for HandoffFlow {}
    unsafe impl aya::Pod for LinksDown {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// Asserts a record's size and every field's offset, as literals. These bytes cross the
    /// kernel/user boundary (map values and keys, the sample ring buffer), outlive the
    /// agent in pinned maps, and are what `bpftool` prints: a reordered or resized field must
    /// fail here. Computing the expectations from the types would pass whatever they say.
    macro_rules! layout {
        ($t:ty, $size:literal { $($f:ident: $off:literal),* $(,)? }) => {
            assert_eq!(size_of::<$t>(), $size, "size of {}", stringify!($t));
            $(assert_eq!(offset_of!($t, $f), $off, "{}.{}", stringify!($t), stringify!($f));)*
        };
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        layout!(GatewayConfig, 16 { hash_seed: 0, flags: 4, sample_threshold: 8, _pad: 12 });
        layout!(FlowSampleRecord, 56 {
            src: 0, dst: 16, src_port: 32, dst_port: 34, proto: 36, class: 37, v6: 38, _pad: 39,
            bytes: 40, nexthop: 44, group: 48, _pad2: 52,
        });
        layout!(Route, 8 { group_id: 0, default_class: 4, _pad: 5 });
        layout!(MemberPath, 16 { links: 0, link_count: 10, _pad: 11, route: 12 });
        layout!(NextHopTable, 1188 {
            member_count: 0, active_count: 2, nexthops: 4, paths: 36, buckets: 164, _pad: 1185,
        });
        layout!(LinksDown, 136 { words: 0, count: 128 });
        layout!(NextHop, 40 {
            flags: 0, link_id: 4, ifindex: 8, vni: 12, local_ip4: 16, remote_ip4: 20,
            via_ip4: 24, mtu: 28, inner_dst_mac: 32, _pad: 38,
        });
        layout!(HandoffFlow, 40 {
            src: 0, dst: 16, src_port: 32, dst_port: 34, proto: 36, _pad: 37,
        });
        layout!(NeighbourKey, 8 { ifindex: 0, ip4: 4 });
        layout!(Neighbour, 16 { mac: 0, if_mac: 6, _pad: 12 });
        layout!(LinkConfig, 56 {
            flags: 0, up_after: 4, detect_ns: 8, peer_ip4: 16, local_ip4: 20, ifindex: 24,
            probe_min_ttl: 28, _pad: 29, reflect_gap_ns: 32, reflect_burst: 36, auth_key: 40,
        });
        layout!(LinkState, 72 {
            last_reply_ns: 0, good_streak: 8, last_seq: 12, last_rtt_ns: 16, srtt_ns: 24,
            jitter_ns: 32, replies: 40, reflected: 48, last_tx_ns: 56, reflect_tat_ns: 64,
        });
        layout!(ClassifierKey, 4 { proto: 0, direction: 1, port: 2 });
        layout!(ClassifierRule, 4 { class: 0, _pad: 1 });
        layout!(QosPolicy, 8 { dscp: 0, flags: 1, _pad: 2 });
        layout!(PolicerKey, 8 { group_id: 0, class: 4, _pad: 5 });
        layout!(Policer, 56 {
            rate_bytes_per_s: 0, burst_bytes: 8, tokens: 16, last_ns: 24, conformed: 32,
            exceeded: 40, action: 48, _pad: 49,
        });
        layout!(VniEntry, 8 { link_id: 0, flags: 4 });
        layout!(LanPort, 8 { mac: 0, _pad: 6 });
        layout!(crate::probe::ProbeKey, 16 { k0: 0, k1: 8 });
        layout!(Counters, 16 { packets: 0, bytes: 8 });
    }

    #[test]
    fn sample_threshold_handoff_and_reasons() {
        assert_eq!(sample_threshold(0), 0);
        assert_eq!(sample_threshold(1), u32::MAX);
        assert_eq!(sample_threshold(1_000), 4_294_967);
        let h = NextHop::handoff(3, 9, 0x64);
        assert_eq!(h.handoff_mark(), Some(0x64));
        assert_eq!(NextHop::default().handoff_mark(), None);
        assert!(Reason::ALL.len() as u32 <= REASON_COUNT);
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
