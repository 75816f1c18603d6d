//! `dwcp maps`: the pinned maps of the fast path, decoded with their real types from
//! `dwcp-common`, beside the `bpftool` command that dumps the same map.
//!
//! The JSON form keeps bpftool's shape for each entry (`key` and `value` with the BTF field
//! names, byte arrays as arrays of numbers, per-CPU maps with `values: [{cpu, value}]`) so the
//! two can be compared field by field; the text form prints addresses, MACs, flags, classes
//! and reasons the way an operator reads them. Maps are opened from their pins and only read.
//! Zero entries of arrays are left out (an array always holds `max_entries` entries).

use std::path::{Path, PathBuf};

use aya::maps::{lpm_trie::LpmTrie, Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray};
use dwcp_common::{
    maps::names, probe::ProbeKey, ClassifierKey, ClassifierRule, Counters, GatewayConfig,
    HandoffFlow, LanPort, LinkConfig, LinkState, LinksDown, MemberPath, Neighbour, NeighbourKey,
    NextHop, NextHopTable, Policer, PolicerKey, QosClass, QosPolicy, Reason, Route, VniEntry,
    GROUP_SLOTS, MAX_GROUPS, POLICER_ANY_GROUP, POLICE_DROP,
};
use dwcp_control::traffic::flow_address;
use dwcp_dataplane::{PinnedMapError, PinnedMaps};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("{0} (is the agent loaded with pinning, and is this the pin directory?)")]
    NotPinned(PinnedMapError),
    #[error(transparent)]
    Pinned(PinnedMapError),
    #[error("map {name}: reading entries: {source}")]
    Read {
        name: &'static str,
        source: Box<MapError>,
    },
}

impl From<PinnedMapError> for MapsError {
    /// A missing pin gets the operator's likely causes.
    fn from(e: PinnedMapError) -> MapsError {
        match e {
            PinnedMapError::Open { .. } => MapsError::NotPinned(e),
            PinnedMapError::Type { .. } => MapsError::Pinned(e),
        }
    }
}

/// One pinned map and its entries.
#[derive(Clone, Debug, Serialize)]
pub struct MapDump {
    pub name: &'static str,
    pub kind: String,
    pub id: u32,
    pub max_entries: u32,
    pub pinned: PathBuf,
    /// The command that shows the same map.
    pub bpftool: String,
    /// Which entries are listed.
    pub shown: &'static str,
    pub entries: Vec<Entry>,
    /// Text lines of the entries, for the human-readable view.
    #[serde(skip)]
    pub lines: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub key: Value,
    /// The value (summed over CPUs for per-CPU maps).
    pub value: Value,
    /// Per-CPU maps: each CPU's value, as bpftool lists them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
}

fn read_err(name: &'static str) -> impl Fn(MapError) -> MapsError {
    move |e| MapsError::Read {
        name,
        source: Box::new(e),
    }
}

fn ip4(b: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(b).to_string()
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn class_name(id: u8) -> String {
    QosClass::from_id(id).map_or_else(|| format!("class {id}"), |c| c.name().to_string())
}

fn u32_key(k: u32) -> Value {
    json!(k)
}

/// `NH_ACTIVE`: the slot in force of every group.
fn active_slots(maps: &PinnedMaps) -> Result<Vec<u32>, MapsError> {
    let name = names::NH_ACTIVE;
    let a: Array<MapData, u32> = maps.map(name)?;
    a.iter()
        .map(|s| s.map(|s| s & 1).map_err(read_err(name)))
        .collect()
}

/// Reads every dwcp map pinned under `dir`.
pub fn dump_pinned(dir: &Path) -> Result<Vec<MapDump>, MapsError> {
    names::ALL.iter().map(|name| dump_one(dir, name)).collect()
}

/// The links of a member's path, ours first.
fn path_links(p: &MemberPath) -> Vec<u16> {
    p.links[..(p.link_count as usize).min(p.links.len())].to_vec()
}

/// "nexthop 1 path 1-7-8 route [4, 2, 0, 0]", or "nexthop 1" for a member without a path.
fn member_label(t: &NextHopTable, m: usize) -> String {
    let links = path_links(&t.paths[m]);
    if links.is_empty() {
        return format!("nexthop {}", t.nexthops[m]);
    }
    let path: Vec<String> = links.iter().map(u16::to_string).collect();
    format!(
        "nexthop {} path {} route {:?}",
        t.nexthops[m],
        path.join("-"),
        t.paths[m].route
    )
}

/// Reads the pinned map `name` (one of `dwcp_common::maps::names::ALL`).
pub fn dump_one(dir: &Path, name: &'static str) -> Result<MapDump, MapsError> {
    let maps = PinnedMaps::new(dir);
    let info = maps.info(name)?;
    let max_entries = info.max_entries();
    let rd = read_err(name);
    let mut entries = Vec::new();
    let mut lines = Vec::new();
    let mut shown = "all entries";
    let mut push = |key: Value, value: Value, values: Option<Vec<Value>>, line: String| {
        entries.push(Entry { key, value, values });
        lines.push(line);
    };
    match name {
        names::CONFIG => {
            let a: Array<MapData, GatewayConfig> = maps.map(name)?;
            let c = a.get(&0, 0).map_err(&rd)?;
            push(
                u32_key(0),
                json!({"hash_seed": c.hash_seed, "flags": c.flags,
                    "sample_threshold": c.sample_threshold, "_pad": c._pad}),
                None,
                format!(
                    "hash_seed {:#010x} flags {:#x}{} sample_threshold {:#x} ({})",
                    c.hash_seed,
                    c.flags,
                    if c.flags & dwcp_common::CONFIG_F_READY != 0 {
                        " (ready)"
                    } else {
                        " (not ready: LAN traffic passes to the kernel)"
                    },
                    c.sample_threshold,
                    match c.sample_threshold {
                        0 => "flow sampling off".to_string(),
                        t => format!("flow sampling 1 in {}", u32::MAX / t),
                    }
                ),
            );
        }
        names::ROUTES_V4 => {
            let t: LpmTrie<MapData, [u8; 4], Route> = maps.map(name)?;
            for item in t.iter() {
                let (k, r) = item.map_err(&rd)?;
                push(
                    json!({"prefix_len": k.prefix_len(), "data": k.data()}),
                    route_json(&r),
                    None,
                    format!(
                        "{}/{} -> group {} default class {}",
                        ip4(k.data()),
                        k.prefix_len(),
                        r.group_id,
                        class_name(r.default_class)
                    ),
                );
            }
        }
        names::ROUTES_V6 => {
            let t: LpmTrie<MapData, [u8; 16], Route> = maps.map(name)?;
            for item in t.iter() {
                let (k, r) = item.map_err(&rd)?;
                push(
                    json!({"prefix_len": k.prefix_len(), "data": k.data()}),
                    route_json(&r),
                    None,
                    format!(
                        "{}/{} -> group {} default class {}",
                        std::net::Ipv6Addr::from(k.data()),
                        k.prefix_len(),
                        r.group_id,
                        class_name(r.default_class)
                    ),
                );
            }
        }
        names::NH_GROUPS => {
            shown = "slots in force with a table";
            let tables: Array<MapData, NextHopTable> = maps.map(name)?;
            let active = active_slots(&maps)?;
            for g in 0..MAX_GROUPS.min(max_entries / GROUP_SLOTS) {
                let slot = active.get(g as usize).copied().unwrap_or(0);
                let index = dwcp_common::group_slot(g, slot);
                let t = tables.get(&index, 0).map_err(&rd)?;
                if t.member_count == 0 {
                    continue;
                }
                let members = (t.member_count as usize).min(t.nexthops.len());
                let share: Vec<usize> = (0..members)
                    .map(|m| t.buckets.iter().filter(|&&b| b as usize == m).count())
                    .collect();
                push(
                    u32_key(index),
                    json!({
                        "group": g,
                        "slot": slot,
                        "member_count": t.member_count,
                        "active_count": t.active_count,
                        "nexthops": &t.nexthops[..members],
                        "paths": t.paths[..members].iter().map(path_links).collect::<Vec<_>>(),
                        "routes": t.paths[..members].iter().map(|p| p.route).collect::<Vec<_>>(),
                        "buckets_per_member": share,
                    }),
                    None,
                    format!(
                        "group {g} (slot {slot}): {}",
                        (0..members)
                            .map(|m| if m < t.active_count as usize {
                                format!(
                                    "{} ({} of {} buckets)",
                                    member_label(&t, m),
                                    share[m],
                                    t.buckets.len()
                                )
                            } else {
                                format!("{} (standby)", member_label(&t, m))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        names::NH_ACTIVE => {
            shown = "groups whose table in force is slot 1";
            let a: Array<MapData, u32> = maps.map(name)?;
            for (g, s) in a.iter().enumerate() {
                let s = s.map_err(&rd)?;
                if s == 0 {
                    continue;
                }
                push(
                    u32_key(g as u32),
                    json!(s),
                    None,
                    format!("group {g}: slot {s}"),
                );
            }
        }
        names::NEXTHOPS => {
            shown = "non-zero entries";
            let a: Array<MapData, NextHop> = maps.map(name)?;
            for (i, nh) in a.iter().enumerate() {
                let nh = nh.map_err(&rd)?;
                if nh == NextHop::default() {
                    continue;
                }
                push(
                    u32_key(i as u32),
                    json!({
                        "flags": nh.flags, "link_id": nh.link_id, "ifindex": nh.ifindex,
                        "vni": nh.vni, "local_ip4": nh.local_ip4, "remote_ip4": nh.remote_ip4,
                        "via_ip4": nh.via_ip4, "mtu": nh.mtu, "inner_dst_mac": nh.inner_dst_mac,
                    }),
                    None,
                    format!(
                        "nexthop {i}: {} link {} if {} vni {} {} -> {} via {} mtu {} inner dst {}",
                        if nh.flags & dwcp_common::NH_F_VALID != 0 {
                            "valid"
                        } else {
                            "invalid"
                        },
                        nh.link_id,
                        nh.ifindex,
                        nh.vni,
                        ip4(nh.local_ip4),
                        ip4(nh.remote_ip4),
                        ip4(nh.via_ip4),
                        nh.mtu,
                        mac(nh.inner_dst_mac)
                    ),
                );
            }
        }
        names::NEIGHBOURS => {
            let h: HashMap<MapData, NeighbourKey, Neighbour> = maps.map(name)?;
            for item in h.iter() {
                let (k, n) = item.map_err(&rd)?;
                push(
                    json!({"ifindex": k.ifindex, "ip4": k.ip4}),
                    json!({"mac": n.mac, "if_mac": n.if_mac}),
                    None,
                    format!(
                        "if {} {} lladdr {} (from {})",
                        k.ifindex,
                        ip4(k.ip4),
                        mac(n.mac),
                        mac(n.if_mac)
                    ),
                );
            }
        }
        names::TX_PORTS => {
            let d: DevMapHash<MapData> = maps.map(name)?;
            for item in d.iter() {
                let (k, v) = item.map_err(&rd)?;
                push(
                    u32_key(k),
                    json!({"ifindex": v.if_index}),
                    None,
                    format!("if {k} -> redirect to if {}", v.if_index),
                );
            }
        }
        names::LAN_PORTS => {
            let h: HashMap<MapData, u32, LanPort> = maps.map(name)?;
            for item in h.iter() {
                let (k, p) = item.map_err(&rd)?;
                push(
                    u32_key(k),
                    json!({"mac": p.mac}),
                    None,
                    format!("if {k}: LAN port, forwards frames to {}", mac(p.mac)),
                );
            }
        }
        names::LINK_CONFIG => {
            shown = "non-zero entries";
            let a: Array<MapData, LinkConfig> = maps.map(name)?;
            for (i, c) in a.iter().enumerate() {
                let c = c.map_err(&rd)?;
                if c == LinkConfig::default() {
                    continue;
                }
                let mut flags = Vec::new();
                if c.flags & dwcp_common::LINK_F_MONITORED != 0 {
                    flags.push("monitored");
                }
                if c.flags & dwcp_common::LINK_F_ADMIN_DOWN != 0 {
                    flags.push("admin-down");
                }
                push(
                    u32_key(i as u32),
                    json!({
                        "flags": c.flags, "up_after": c.up_after, "detect_ns": c.detect_ns,
                        "peer_ip4": c.peer_ip4, "local_ip4": c.local_ip4, "ifindex": c.ifindex,
                        "probe_min_ttl": c.probe_min_ttl, "reflect_gap_ns": c.reflect_gap_ns,
                        "reflect_burst": c.reflect_burst,
                    }),
                    None,
                    format!(
                        "link {i}: {} up after {} replies, dead after {} ms without one; \
                         from {} to {} on if {}, probes with TTL >= {}, reflected every {} us \
                         (burst {})",
                        if flags.is_empty() {
                            "unmonitored".to_string()
                        } else {
                            flags.join(",")
                        },
                        c.up_after,
                        c.detect_ns as f64 / 1e6,
                        ip4(c.peer_ip4),
                        ip4(c.local_ip4),
                        c.ifindex,
                        c.probe_min_ttl,
                        c.reflect_gap_ns as f64 / 1e3,
                        c.reflect_burst
                    ),
                );
            }
        }
        names::LINK_STATE => {
            shown = "non-zero entries";
            let a: Array<MapData, LinkState> = maps.map(name)?;
            for (i, s) in a.iter().enumerate() {
                let s = s.map_err(&rd)?;
                if s == LinkState::default() {
                    continue;
                }
                push(
                    u32_key(i as u32),
                    json!({
                        "last_reply_ns": s.last_reply_ns, "good_streak": s.good_streak,
                        "last_seq": s.last_seq, "last_rtt_ns": s.last_rtt_ns,
                        "srtt_ns": s.srtt_ns, "jitter_ns": s.jitter_ns,
                        "replies": s.replies, "reflected": s.reflected,
                        "last_tx_ns": s.last_tx_ns, "reflect_tat_ns": s.reflect_tat_ns,
                    }),
                    None,
                    format!(
                        "link {i}: srtt {:.3} ms jitter {:.3} ms last rtt {:.3} ms, {} replies \
                         (streak {}, last seq {}), {} reflected",
                        s.srtt_ns as f64 / 1e6,
                        s.jitter_ns as f64 / 1e6,
                        s.last_rtt_ns as f64 / 1e6,
                        s.replies,
                        s.good_streak,
                        s.last_seq,
                        s.reflected
                    ),
                );
            }
        }
        names::CLASSIFIER => {
            let h: HashMap<MapData, ClassifierKey, ClassifierRule> = maps.map(name)?;
            for item in h.iter() {
                let (k, r) = item.map_err(&rd)?;
                push(
                    json!({"proto": k.proto, "direction": k.direction, "port": k.port}),
                    json!({"class": r.class}),
                    None,
                    format!(
                        "{} {} port {} -> {}",
                        match k.proto {
                            0 => "any".to_string(),
                            6 => "tcp".to_string(),
                            17 => "udp".to_string(),
                            p => format!("proto {p}"),
                        },
                        if k.direction == dwcp_common::CLASSIFY_SRC_PORT {
                            "source"
                        } else {
                            "destination"
                        },
                        k.port,
                        class_name(r.class)
                    ),
                );
            }
        }
        names::CLASS_PORTS => {
            shown = "ports named by a classifier rule";
            let a: Array<MapData, u64> = maps.map(name)?;
            let mut ports = Vec::new();
            for (word, bits) in a.iter().enumerate() {
                let bits = bits.map_err(&rd)?;
                if bits == 0 {
                    continue;
                }
                push(u32_key(word as u32), json!(bits), None, String::new());
                ports.extend(
                    (0..64)
                        .filter(|b| bits & (1 << b) != 0)
                        .map(|b| word * 64 + b),
                );
            }
            // One line for the whole bitmap; the JSON keeps bpftool's words.
            lines.clear();
            if !ports.is_empty() {
                lines.push(format!(
                    "ports {}",
                    ports
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        names::POLICERS => {
            let h: HashMap<MapData, PolicerKey, Policer> = maps.map(name)?;
            for item in h.iter() {
                let (k, p) = item.map_err(&rd)?;
                push(
                    json!({"group_id": k.group_id, "class": k.class}),
                    json!({
                        "rate_bytes_per_s": p.rate_bytes_per_s, "burst_bytes": p.burst_bytes,
                        "tokens": p.tokens, "last_ns": p.last_ns, "conformed": p.conformed,
                        "exceeded": p.exceeded, "action": p.action,
                    }),
                    None,
                    format!(
                        "{} to {}: {} bit/s burst {} B, over rate {}; {} conformed, {} exceeded",
                        class_name(k.class),
                        if k.group_id == POLICER_ANY_GROUP {
                            "any destination".to_string()
                        } else {
                            format!("group {}", k.group_id)
                        },
                        p.rate_bytes_per_s * 8,
                        p.burst_bytes,
                        if p.action == POLICE_DROP {
                            "dropped"
                        } else {
                            "re-marked best effort"
                        },
                        p.conformed,
                        p.exceeded
                    ),
                );
            }
        }
        names::QOS_POLICY => {
            shown = "non-zero entries";
            let a: Array<MapData, QosPolicy> = maps.map(name)?;
            for (i, p) in a.iter().enumerate() {
                let p = p.map_err(&rd)?;
                if p == QosPolicy::default() {
                    continue;
                }
                push(
                    u32_key(i as u32),
                    json!({"dscp": p.dscp, "flags": p.flags}),
                    None,
                    format!(
                        "{}: dscp {}{}",
                        class_name(i as u8),
                        p.dscp,
                        if p.flags & dwcp_common::QOS_F_REWRITE != 0 {
                            " (rewritten)"
                        } else {
                            " (kept)"
                        }
                    ),
                );
            }
        }
        names::VNIS => {
            let h: HashMap<MapData, u32, VniEntry> = maps.map(name)?;
            for item in h.iter() {
                let (k, v) = item.map_err(&rd)?;
                push(
                    u32_key(k),
                    json!({"link_id": v.link_id, "flags": v.flags}),
                    None,
                    format!("vni {k} -> decapsulate from link {}'s peer", v.link_id),
                );
            }
        }
        names::LINKS_DOWN => {
            shown = "links down in the network";
            let a: Array<MapData, LinksDown> = maps.map(name)?;
            let down = a.get(&0, 0).map_err(&rd)?;
            for l in down.links() {
                push(u32_key(l), json!(true), None, format!("link {l}: down"));
            }
        }
        names::TRANSIT_EXITS => {
            let h: HashMap<MapData, u32, u32> = maps.map(name)?;
            for item in h.iter() {
                let (exit, link) = item.map_err(&rd)?;
                push(
                    u32_key(exit),
                    json!(link),
                    None,
                    format!("transit exit {exit} -> link {link}"),
                );
            }
        }
        names::PROBE_KEYS => {
            shown = "links with a key (the keys are not shown)";
            let h: HashMap<MapData, u32, ProbeKey> = maps.map(name)?;
            for k in h.keys() {
                let k = k.map_err(&rd)?;
                push(u32_key(k), Value::Null, None, format!("link {k}: key set"));
            }
        }
        names::NH_STATS | names::CLASS_STATS => {
            shown = "non-zero entries, summed over CPUs";
            let a: PerCpuArray<MapData, Counters> = maps.map(name)?;
            for (i, per_cpu) in a.iter().enumerate() {
                let per_cpu = per_cpu.map_err(&rd)?;
                let sum = per_cpu.iter().fold(Counters::default(), |a, c| Counters {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                });
                if sum == Counters::default() {
                    continue;
                }
                let label = if name == names::CLASS_STATS {
                    class_name(i as u8)
                } else {
                    format!("nexthop {i}")
                };
                push(
                    u32_key(i as u32),
                    json!({"packets": sum.packets, "bytes": sum.bytes}),
                    Some(
                        per_cpu
                            .iter()
                            .enumerate()
                            .map(|(cpu, c)| json!({"cpu": cpu, "value": {"packets": c.packets, "bytes": c.bytes}}))
                            .collect(),
                    ),
                    format!("{label}: {} packets, {} bytes", sum.packets, sum.bytes),
                );
            }
        }
        names::HANDOFF_FLOWS => {
            let h: HashMap<MapData, HandoffFlow, u32> = maps.map(name)?;
            for item in h.iter() {
                let (k, mark) = item.map_err(&rd)?;
                // An IPv4 flow uses the first word only (the key carries no family).
                let v6 = k.src[1..].iter().chain(&k.dst[1..]).any(|w| *w != 0);
                let (src, dst) = (flow_address(k.src, v6), flow_address(k.dst, v6));
                push(
                    json!({
                        "src": src.to_string(), "dst": dst.to_string(), "proto": k.proto,
                        "src_port": k.src_port, "dst_port": k.dst_port,
                    }),
                    json!(mark),
                    None,
                    format!(
                        "{src}:{} -> {dst}:{} proto {}: mark {mark:#x}",
                        k.src_port, k.dst_port, k.proto
                    ),
                );
            }
        }
        names::REASON_STATS => {
            shown = "non-zero entries, summed over CPUs";
            let a: PerCpuArray<MapData, u64> = maps.map(name)?;
            for (i, per_cpu) in a.iter().enumerate() {
                let per_cpu = per_cpu.map_err(&rd)?;
                let sum: u64 = per_cpu.iter().sum();
                if sum == 0 {
                    continue;
                }
                let reason = Reason::ALL
                    .get(i)
                    .map_or_else(|| format!("reason {i}"), |r| r.name().to_string());
                push(
                    u32_key(i as u32),
                    json!(sum),
                    Some(
                        per_cpu
                            .iter()
                            .enumerate()
                            .map(|(cpu, v)| json!({"cpu": cpu, "value": v}))
                            .collect(),
                    ),
                    format!("{reason}: {sum}"),
                );
            }
        }
        _ => unreachable!("every name of names::ALL is handled"),
    }
    let pinned = maps.path(name);
    Ok(MapDump {
        name,
        kind: info
            .map_type()
            .map_or_else(|_| "unknown".into(), |t| format!("{t:?}")),
        id: info.id(),
        max_entries,
        bpftool: format!("bpftool map dump pinned {}", pinned.display()),
        pinned,
        shown,
        entries,
        lines,
    })
}

fn route_json(r: &Route) -> Value {
    json!({"group_id": r.group_id, "default_class": r.default_class})
}

/// The human-readable view: a header per map with the bpftool command, then its entries.
pub fn render(dumps: &[MapDump]) -> String {
    let mut out = String::new();
    for d in dumps {
        out.push_str(&format!(
            "{} ({}, id {}, {} of {} entries; {})\n  $ {}\n",
            d.name,
            d.kind,
            d.id,
            d.entries.len(),
            d.max_entries,
            d.shown,
            d.bpftool
        ));
        for l in &d.lines {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}
