//! The fast path's maps. BTF-defined (so `bpftool map dump` prints field names) and pinned by
//! the agent under its pin directory by name (see `dwcp_common::maps::names`).

use aya_ebpf::{
    btf_maps::{
        lpm_trie::Key, Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf,
    },
    macros::btf_map,
};
use dwcp_common::{
    probe::ProbeKey, ClassifierKey, ClassifierRule, Counters, GatewayConfig, HandoffFlow, LanPort,
    LinkConfig, LinkState, LinksDown, Neighbour, NeighbourKey, NextHop, NextHopTable, Policer,
    PolicerKey, QosPolicy, Route, VniEntry, GROUP_TABLE_ENTRIES, MAX_CLASSIFIER_RULES, MAX_GROUPS,
    MAX_HANDOFF_FLOWS, MAX_LINKS, MAX_NEIGHBOURS, MAX_NEXTHOPS, MAX_POLICERS, MAX_PORTS,
    MAX_ROUTES, MAX_TRANSIT_EXITS, MAX_VNIS, REASON_COUNT,
};

const ROUTES: usize = MAX_ROUTES as usize;

#[btf_map]
pub static DWCP_CONFIG: Array<GatewayConfig, 1> = Array::new();

#[btf_map]
pub static ROUTES_V4: LpmTrie<[u8; 4], Route, ROUTES> = LpmTrie::new();

#[btf_map]
pub static ROUTES_V6: LpmTrie<[u8; 16], Route, ROUTES> = LpmTrie::new();

/// Group tables, two slots per group (`group_slot(group, slot)`): the one in force and the
/// one the agent writes next. Writing a slot nobody reads needs no wait in the kernel (unlike
/// swapping an inner map of a map-in-map, which waits for an RCU grace period).
#[btf_map]
pub static NH_GROUPS: Array<NextHopTable, { GROUP_TABLE_ENTRIES as usize }> = Array::new();

/// Group id -> the slot (0 or 1) of `NH_GROUPS` in force. Flipped with one 4-byte write after
/// the other slot was filled, so a packet sees the old table or the new one, never a mix.
#[btf_map]
pub static NH_ACTIVE: Array<u32, { MAX_GROUPS as usize }> = Array::new();

#[btf_map]
pub static NEXTHOPS: Array<NextHop, { MAX_NEXTHOPS as usize }> = Array::new();

#[btf_map]
pub static NEIGHBOURS: HashMap<NeighbourKey, Neighbour, { MAX_NEIGHBOURS as usize }> =
    HashMap::new();

/// ifindex -> device, for `bpf_redirect_map`.
#[btf_map]
pub static TX_PORTS: DevMapHash<{ MAX_PORTS as usize }> = DevMapHash::new();

/// The LAN interfaces and their MACs: the only ports decapsulated traffic is redirected to,
/// and the address a LAN frame must carry to be forwarded.
#[btf_map]
pub static LAN_PORTS: HashMap<u32, LanPort, { MAX_PORTS as usize }> = HashMap::new();

#[btf_map]
pub static LINK_CONFIG: Array<LinkConfig, { MAX_LINKS as usize }> = Array::new();

#[btf_map]
pub static LINK_STATE: Array<LinkState, { MAX_LINKS as usize }> = Array::new();

#[btf_map]
pub static CLASSIFIER: HashMap<ClassifierKey, ClassifierRule, { MAX_CLASSIFIER_RULES as usize }> =
    HashMap::new();

/// One bit per port that some classifier rule names.
#[btf_map]
pub static CLASS_PORTS: Array<u64, { dwcp_common::CLASS_PORT_WORDS as usize }> = Array::new();

#[btf_map]
pub static QOS_POLICY: Array<QosPolicy, { dwcp_common::qos::QOS_CLASSES }> = Array::new();

#[btf_map]
pub static POLICERS: HashMap<PolicerKey, Policer, { MAX_POLICERS as usize }> = HashMap::new();

#[btf_map]
pub static VNIS: HashMap<u32, VniEntry, { MAX_VNIS as usize }> = HashMap::new();

/// Each probed link's key, written by the probe sender: a reply counts only with a token made
/// with it (`dwcp_common::probe::probe_token`).
#[btf_map]
pub static PROBE_KEYS: HashMap<u32, ProbeKey, { MAX_LINKS as usize }> = HashMap::new();

#[btf_map]
pub static NH_STATS: PerCpuArray<Counters, { MAX_NEXTHOPS as usize }> = PerCpuArray::new();

#[btf_map]
pub static CLASS_STATS: PerCpuArray<Counters, { dwcp_common::qos::QOS_CLASSES }> =
    PerCpuArray::new();

#[btf_map]
pub static REASON_STATS: PerCpuArray<u64, { REASON_COUNT as usize }> = PerCpuArray::new();

/// Per-packet scratch of `pick_nexthop`: the first held-down member, kept in memory rather
/// than in a variable so the verifier does not carry it (and double its states) through the
/// member loop. Never pinned: nothing in it outlives a packet.
#[btf_map]
pub static PICK_SCRATCH: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Sampled packets for the agent's top-flows table (see `GatewayConfig.sample_threshold`),
/// `FlowSampleRecord`s. Untyped: libbpf (bpftool) refuses a ring buffer whose BTF names a
/// value type, as a ring buffer has no value size.
#[btf_map]
pub static FLOW_SAMPLES: RingBuf<(), { dwcp_common::FLOW_SAMPLES_BYTES as usize }> = RingBuf::new();

pub type V4Key = Key<[u8; 4]>;
pub type V6Key = Key<[u8; 16]>;

/// Flow -> the fwmark of its hand-off (WireGuard) next hop: written by the LAN XDP program
/// for every hand-off packet, read by the LAN tc program to set `skb->mark`.
#[btf_map]
pub static HANDOFF_FLOWS: LruHashMap<HandoffFlow, u32, { MAX_HANDOFF_FLOWS as usize }> =
    LruHashMap::new();

/// The links down anywhere in the network, one bit each (the agent writes it from the
/// link-state records): a member whose path crosses one is skipped at once, before any route
/// is recomputed.
#[btf_map]
pub static LINKS_DOWN: Array<LinksDown, 1> = Array::new();

/// Exit number (a link's position among this region's links, from 1) -> link id: the
/// transit half of the source route.
#[btf_map]
pub static TRANSIT_EXITS: HashMap<u32, u32, { MAX_TRANSIT_EXITS as usize }> = HashMap::new();
