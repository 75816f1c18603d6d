//! The fast path from userspace: load the eBPF object, pin its maps, attach its XDP programs,
//! and program routes, next-hop groups, next hops, neighbours, classifier rules and QoS policy
//! through a typed API. Counters and link state are read back from the per-CPU / state maps.
//!
//! Maps are pinned by name under the pin directory (default `/sys/fs/bpf/dwcp`); loading again
//! re-uses pinned maps, so a restarted agent finds the state the fast path kept using.

mod batch;
mod compat;
mod fast_path;
pub mod links;
mod pinned;
mod probe_keys;
mod readback;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, RingBuf,
    },
    programs::{
        tc::{qdisc_add_clsact, SchedClassifierLinkId},
        xdp::XdpLinkId,
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use dwcp_common::{
    maps::{names, programs},
    probe::ProbeKey,
    ClassifierKey, ClassifierRule, Counters, GatewayConfig, HandoffFlow, LanPort, LinkConfig,
    LinkState, LinksDown, Neighbour, NeighbourKey, NextHop, NextHopTable, Policer, PolicerKey,
    QosPolicy, Reason, Route, VniEntry, MAX_GROUPS, MAX_LINKS, MAX_NEXTHOPS,
};
use thiserror::Error;
use tracing::{info, warn};

pub use batch::{GroupWrite, SlotGuardStats, SLOT_REUSE_GUARD};
pub use compat::{pin_mismatches, MapShape, PinMismatch};
pub use dwcp_control::nhg_table::{build_table, GroupError, Member};
pub use fast_path::LinkStateMap;
pub use links::{link_pin_path, tc_link_pin_path, unpin_links, LinkAdoption};
pub use pinned::{PinnedMapError, PinnedMaps};
pub use probe_keys::ProbeKeys;

/// The eBPF object built by build.rs (dwcp-ebpf, with BTF).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dwcp"));

pub use dwcp_control::config::DEFAULT_PIN_DIR;

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<MapError>,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to {ifname}: native XDP failed ({native}) and generic XDP failed too ({generic})")]
    Attach {
        program: &'static str,
        ifname: String,
        native: Box<ProgramError>,
        generic: Box<ProgramError>,
    },
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {id} is out of range (maximum {max})")]
    OutOfRange {
        what: &'static str,
        id: u32,
        max: u32,
    },
    #[error("prefix length {len} is too long for {addr}")]
    PrefixLength { addr: IpAddr, len: u8 },
    #[error("next-hop group {group}: {source}")]
    Group { group: u32, source: GroupError },
    #[error("adding interface {ifindex} to the redirect map: {detail}")]
    Port { ifindex: u32, detail: String },
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("XDP link on {ifname}: {detail}")]
    PinnedLink { ifname: String, detail: String },
    #[error("the maps pinned under {} do not fit this eBPF object (pinned by an incompatible version of dwcp-agent): {}; they cannot be adopted; nothing was changed. Remove the old fast path with `dwcp-agent --remove` (detaches the old programs and removes the pins: forwarding stops until the agent starts again), then start the agent", dir.display(), mismatches.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; "))]
    IncompatiblePins {
        dir: PathBuf,
        mismatches: Vec<PinMismatch>,
    },
    #[error("attaching the hand-off tc program {program} to {ifname} (ingress): {detail}")]
    TcAttach {
        program: &'static str,
        ifname: String,
        detail: String,
    },
    #[error("drawing a probe key (getrandom): {0}")]
    Random(std::io::Error),
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn prog_err(program: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program {
        program,
        source: Box::new(source),
    }
}

pub fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        map,
        source: Box::new(source),
    }
}

/// A failed system call on map `map`, as aya reports its own.
pub fn syscall_err(
    map: &'static str,
    call: &'static str,
    io_error: std::io::Error,
) -> DataplaneError {
    map_err(map)(MapError::SyscallError(aya::sys::SyscallError {
        call,
        io_error,
    }))
}

/// One bpf(2) command that aya has no wrapper for; `attr` is that command's prefix of
/// `union bpf_attr`. Returns the call's non-negative result.
///
/// # Safety
/// Every pointer and descriptor in `attr` must be valid for the command for the duration of
/// the call.
pub unsafe fn sys_bpf<A>(cmd: libc::c_long, attr: &A) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`'s contents; its size is passed with it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const A,
            std::mem::size_of::<A>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// Attaches the loaded XDP program `prog` (named `name`) to `ifname` in the calling thread's
/// network namespace: native XDP, or generic XDP with a warning when the driver has no native
/// support. The link lives as long as `prog` is loaded.
pub fn attach_xdp(
    prog: &mut Xdp,
    name: &'static str,
    ifname: &str,
) -> Result<(XdpLinkId, AttachMode)> {
    match prog.attach(ifname, XdpMode::Driver) {
        Ok(id) => {
            info!(program = name, ifname, "attached in native XDP mode");
            Ok((id, AttachMode::Native))
        }
        Err(native) => match prog.attach(ifname, XdpMode::Skb) {
            Ok(id) => {
                warn!(program = name, ifname, error = %native, "native XDP not available; attached in generic (skb) mode, which is several times slower");
                Ok((id, AttachMode::Generic))
            }
            Err(generic) => Err(DataplaneError::Attach {
                program: name,
                ifname: ifname.into(),
                native: Box::new(native),
                generic: Box::new(generic),
            }),
        },
    }
}

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

/// Where the maps live.
#[derive(Clone, Debug)]
pub enum Pinning {
    /// Pin (and re-use) maps under this bpffs directory.
    Dir(PathBuf),
    /// No pins: the maps live as long as this process (fixture tests, benchmarks).
    None,
}

/// The loaded fast path and typed handles to its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    config: Array<MapData, GatewayConfig>,
    routes_v4: LpmTrie<MapData, [u8; 4], Route>,
    routes_v6: LpmTrie<MapData, [u8; 16], Route>,
    /// Two slots per group (`dwcp_common::group_slot`).
    groups: Array<MapData, NextHopTable>,
    /// The slot in force per group.
    group_active: Array<MapData, u32>,
    /// When each group's active slot last flipped (or when this process loaded the maps:
    /// a previous agent may have flipped just before). See [`SLOT_REUSE_GUARD`].
    flipped_at: Vec<Instant>,
    /// The slot in force per group as this process last read or flipped it (it is the only
    /// writer of `NH_ACTIVE`, the guard above rests on that too): a batch of group writes
    /// does not read the index of each group back first.
    slot_in_force: Vec<Option<u8>>,
    /// Descriptors of `NH_GROUPS` and `NH_ACTIVE` for batch updates (aya has none): a link
    /// event writes a dozen groups in two calls instead of two dozen.
    groups_fd: std::os::fd::OwnedFd,
    active_fd: std::os::fd::OwnedFd,
    guard: SlotGuardStats,
    nexthops: Array<MapData, NextHop>,
    neighbours: HashMap<MapData, NeighbourKey, Neighbour>,
    tx_ports: DevMapHash<MapData>,
    lan_ports: HashMap<MapData, u32, LanPort>,
    link_config: Array<MapData, LinkConfig>,
    link_state: Array<MapData, LinkState>,
    classifier: HashMap<MapData, ClassifierKey, ClassifierRule>,
    class_ports: Array<MapData, u64>,
    qos: Array<MapData, QosPolicy>,
    policers: HashMap<MapData, PolicerKey, Policer>,
    vnis: HashMap<MapData, u32, VniEntry>,
    probe_keys: HashMap<MapData, u32, ProbeKey>,
    nh_stats: PerCpuArray<MapData, Counters>,
    class_stats: PerCpuArray<MapData, Counters>,
    reason_stats: PerCpuArray<MapData, u64>,
    /// Until the agent takes it for its reader task.
    flow_samples: Option<RingBuf<MapData>>,
    handoff_flows: HashMap<MapData, HandoffFlow, u32>,
    links_down: Array<MapData, LinksDown>,
    transit_exits: HashMap<MapData, u32, u32>,
}

macro_rules! take {
    ($ebpf:expr, $name:expr) => {{
        let map = $ebpf.take_map($name).ok_or(DataplaneError::Map {
            map: $name,
            source: Box::new(MapError::InvalidName { name: $name.into() }),
        })?;
        map.try_into().map_err(map_err($name))?
    }};
}

impl Dataplane {
    /// Loads the embedded object. With [`Pinning::Dir`] the maps are pinned there (created if
    /// absent, re-used if present).
    pub fn load(pinning: Pinning) -> Result<Dataplane> {
        Self::load_object(EBPF_OBJECT, pinning)
    }

    pub fn load_object(object: &[u8], pinning: Pinning) -> Result<Dataplane> {
        let mut loader = EbpfLoader::new();
        let pin_dir = match &pinning {
            Pinning::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
                    path: dir.clone(),
                    source,
                })?;
                Some(dir.clone())
            }
            Pinning::None => None,
        };
        let paths: Vec<(&'static str, PathBuf)> = match &pin_dir {
            Some(dir) => names::ALL.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        if let Some(dir) = &pin_dir {
            compat::check_pins(object, dir)?;
        }
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        for name in [programs::LAN_INGRESS, programs::UNDERLAY_INGRESS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Program {
                    program: name,
                    source: Box::new(ProgramError::NotLoaded),
                })?
                .try_into()
                .map_err(prog_err(name))?;
            prog.load().map_err(prog_err(name))?;
        }
        for name in [programs::LAN_HANDOFF_TC, programs::WG_PROBE_TC] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Program {
                    program: name,
                    source: Box::new(ProgramError::NotLoaded),
                })?
                .try_into()
                .map_err(prog_err(name))?;
            prog.load().map_err(prog_err(name))?;
        }
        let groups_fd = batch::array_fd(&ebpf, names::NH_GROUPS)?;
        let active_fd = batch::array_fd(&ebpf, names::NH_ACTIVE)?;
        Ok(Dataplane {
            config: take!(ebpf, names::CONFIG),
            routes_v4: take!(ebpf, names::ROUTES_V4),
            routes_v6: take!(ebpf, names::ROUTES_V6),
            groups: take!(ebpf, names::NH_GROUPS),
            group_active: take!(ebpf, names::NH_ACTIVE),
            flipped_at: vec![Instant::now(); MAX_GROUPS as usize],
            slot_in_force: vec![None; MAX_GROUPS as usize],
            groups_fd,
            active_fd,
            guard: SlotGuardStats::default(),
            nexthops: take!(ebpf, names::NEXTHOPS),
            neighbours: take!(ebpf, names::NEIGHBOURS),
            tx_ports: take!(ebpf, names::TX_PORTS),
            lan_ports: take!(ebpf, names::LAN_PORTS),
            link_config: take!(ebpf, names::LINK_CONFIG),
            link_state: take!(ebpf, names::LINK_STATE),
            classifier: take!(ebpf, names::CLASSIFIER),
            class_ports: take!(ebpf, names::CLASS_PORTS),
            qos: take!(ebpf, names::QOS_POLICY),
            policers: take!(ebpf, names::POLICERS),
            vnis: take!(ebpf, names::VNIS),
            probe_keys: take!(ebpf, names::PROBE_KEYS),
            nh_stats: take!(ebpf, names::NH_STATS),
            class_stats: take!(ebpf, names::CLASS_STATS),
            reason_stats: take!(ebpf, names::REASON_STATS),
            flow_samples: Some(take!(ebpf, names::FLOW_SAMPLES)),
            handoff_flows: take!(ebpf, names::HANDOFF_FLOWS),
            links_down: take!(ebpf, names::LINKS_DOWN),
            transit_exits: take!(ebpf, names::TRANSIT_EXITS),
            ebpf,
            pin_dir,
        })
    }

    /// The ring buffer of sampled packets (`GatewayConfig.sample_threshold`), for one reader:
    /// the first call has it, later ones get `None`. Records decode with [`decode_sample`].
    pub fn take_flow_samples(&mut self) -> Option<RingBuf<MapData>> {
        self.flow_samples.take()
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// The loaded XDP program `name` (one of `dwcp_common::maps::programs`), e.g. for
    /// BPF_PROG_TEST_RUN.
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Program {
                program: name,
                source: Box::new(ProgramError::NotLoaded),
            })?
            .try_into()
            .map_err(prog_err(name))
    }

    /// Attaches program `name` to `ifname` (in the calling thread's network namespace), as
    /// [`attach_xdp`] does.
    pub fn attach(&mut self, name: &'static str, ifname: &str) -> Result<(XdpLinkId, AttachMode)> {
        attach_xdp(self.program(name)?, name, ifname)
    }

    /// The loaded tc program `name`: `programs::LAN_HANDOFF_TC` (the WireGuard hand-off) or
    /// `programs::WG_PROBE_TC` (the probes inside a WireGuard tunnel).
    pub fn tc_program(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Program {
                program: name,
                source: Box::new(ProgramError::NotLoaded),
            })?
            .try_into()
            .map_err(prog_err(name))
    }

    /// Attaches tc program `name` to `ifname`'s ingress (in the calling thread's network
    /// namespace): through tcx (a `bpf_link`) on kernels >= 6.6, else as a direct-action
    /// `cls_bpf` filter under a `clsact` qdisc, added if missing. The link lives as long as
    /// this `Dataplane` (see [`Dataplane::attach_tc_pinned`] for one that outlives the agent).
    pub fn attach_tc(&mut self, name: &'static str, ifname: &str) -> Result<SchedClassifierLinkId> {
        let tc_err = |detail: String| DataplaneError::TcAttach {
            program: name,
            ifname: ifname.to_string(),
            detail,
        };
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !tcx {
            match qdisc_add_clsact(ifname) {
                Ok(()) => {}
                // EEXIST: the qdisc is there already.
                Err(aya::programs::tc::TcError::NetlinkError(e))
                    if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(tc_err(format!("adding the clsact qdisc: {e}"))),
            }
        }
        let id = self
            .tc_program(name)?
            .attach(ifname, TcAttachType::Ingress)
            .map_err(|e| tc_err(e.to_string()))?;
        info!(program = name, ifname, "tc program attached (ingress)");
        Ok(id)
    }

    /// Detaches what [`Dataplane::attach_tc`] attached.
    pub fn detach_tc(&mut self, name: &'static str, id: SchedClassifierLinkId) -> Result<()> {
        self.tc_program(name)?.detach(id).map_err(prog_err(name))
    }

    pub fn set_config(&mut self, cfg: GatewayConfig) -> Result<()> {
        self.config.set(0, cfg, 0).map_err(map_err(names::CONFIG))
    }

    pub fn config(&self) -> Result<GatewayConfig> {
        self.config.get(&0, 0).map_err(map_err(names::CONFIG))
    }

    /// Adds or replaces the route for `addr/len`.
    pub fn set_route(&mut self, addr: IpAddr, len: u8, route: Route) -> Result<()> {
        match addr {
            IpAddr::V4(a) => {
                if len > 32 {
                    return Err(DataplaneError::PrefixLength { addr, len });
                }
                self.routes_v4
                    .insert(&Key::new(len as u32, a.octets()), route, 0)
                    .map_err(map_err(names::ROUTES_V4))
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return Err(DataplaneError::PrefixLength { addr, len });
                }
                self.routes_v6
                    .insert(&Key::new(len as u32, a.octets()), route, 0)
                    .map_err(map_err(names::ROUTES_V6))
            }
        }
    }

    pub fn remove_route(&mut self, addr: IpAddr, len: u8) -> Result<()> {
        match addr {
            IpAddr::V4(a) => self
                .routes_v4
                .remove(&Key::new(len as u32, a.octets()))
                .map_err(map_err(names::ROUTES_V4)),
            IpAddr::V6(a) => self
                .routes_v6
                .remove(&Key::new(len as u32, a.octets()))
                .map_err(map_err(names::ROUTES_V6)),
        }
    }

    /// All IPv4 and IPv6 routes currently programmed.
    pub fn routes(&self) -> Result<Vec<(IpAddr, u8, Route)>> {
        let mut out = Vec::new();
        for item in self.routes_v4.iter() {
            let (k, v) = item.map_err(map_err(names::ROUTES_V4))?;
            out.push((IpAddr::from(k.data()), k.prefix_len() as u8, v));
        }
        for item in self.routes_v6.iter() {
            let (k, v) = item.map_err(map_err(names::ROUTES_V6))?;
            out.push((IpAddr::from(k.data()), k.prefix_len() as u8, v));
        }
        Ok(out)
    }

    /// Replaces group `group`'s table atomically: the new table goes into the group's slot
    /// not in force, then the group's active index flips to it (see [`SLOT_REUSE_GUARD`]).
    pub fn set_group_table(&mut self, group: u32, table: &NextHopTable) -> Result<()> {
        self.set_group_tables(&[(group, *table)]).map(|_| ())
    }

    /// Builds group `group`'s table from members and weights, keeping buckets of the table in
    /// force where the weights allow (see `dwcp_control::nhg_table`), and installs it atomically.
    pub fn set_group(&mut self, group: u32, members: &[Member]) -> Result<NextHopTable> {
        let previous = self.group_table(group)?;
        let table = build_table(members, previous.as_ref())
            .map_err(|source| DataplaneError::Group { group, source })?;
        self.set_group_table(group, &table)?;
        Ok(table)
    }

    /// The table in force for `group` (all zeroes, `member_count == 0`, if the group was
    /// never written or was removed); `None` only for compatibility with callers that
    /// distinguish "no table": every group id in range has one.
    pub fn group_table(&self, group: u32) -> Result<Option<NextHopTable>> {
        check_range("next-hop group", group, MAX_GROUPS)?;
        let slot = self.active_slot(group)?;
        let t = self
            .groups
            .get(&dwcp_common::group_slot(group, slot), 0)
            .map_err(map_err(names::NH_GROUPS))?;
        Ok(Some(t))
    }

    /// The slot (0 or 1) of group `group` in force.
    pub fn active_slot(&self, group: u32) -> Result<u32> {
        check_range("next-hop group", group, MAX_GROUPS)?;
        let s = self
            .group_active
            .get(&group, 0)
            .map_err(map_err(names::NH_ACTIVE))?;
        Ok(s & 1)
    }

    /// How often and how long group writes waited for [`SLOT_REUSE_GUARD`].
    pub fn slot_guard_stats(&self) -> SlotGuardStats {
        self.guard
    }

    pub fn set_nexthop(&mut self, id: u32, nh: NextHop) -> Result<()> {
        check_range("next hop", id, MAX_NEXTHOPS)?;
        self.nexthops
            .set(id, nh, 0)
            .map_err(map_err(names::NEXTHOPS))
    }

    pub fn nexthop(&self, id: u32) -> Result<NextHop> {
        check_range("next hop", id, MAX_NEXTHOPS)?;
        self.nexthops.get(&id, 0).map_err(map_err(names::NEXTHOPS))
    }

    pub fn set_neighbour(&mut self, key: NeighbourKey, n: Neighbour) -> Result<()> {
        self.neighbours
            .insert(key, n, 0)
            .map_err(map_err(names::NEIGHBOURS))
    }

    pub fn remove_neighbour(&mut self, key: &NeighbourKey) -> Result<()> {
        match self.neighbours.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::NEIGHBOURS)(e)),
        }
    }

    pub fn neighbours(&self) -> Result<Vec<(NeighbourKey, Neighbour)>> {
        self.neighbours
            .iter()
            .map(|r| r.map_err(map_err(names::NEIGHBOURS)))
            .collect()
    }

    /// Lets the fast path redirect to interface `ifindex`.
    pub fn add_port(&mut self, ifindex: u32) -> Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::Port {
                ifindex,
                detail: e.to_string(),
            })
    }

    /// Makes `ifindex` a LAN port with MAC `port.mac`: the LAN program forwards frames sent to
    /// that MAC, decapsulated traffic may be redirected there. Redirecting also needs the
    /// port in the redirect map ([`Dataplane::add_port`]).
    pub fn set_lan_port(&mut self, ifindex: u32, port: LanPort) -> Result<()> {
        self.lan_ports
            .insert(ifindex, port, 0)
            .map_err(map_err(names::LAN_PORTS))
    }

    /// Link `link`'s probe key: the one in `PROBE_KEYS`, else a new one (see [`ProbeKeys`]).
    pub fn probe_key(&mut self, link: u32) -> Result<ProbeKey> {
        probe_keys::key_of(&mut self.probe_keys, link)
    }

    pub fn set_link_config(&mut self, link: u32, cfg: LinkConfig) -> Result<()> {
        check_range("link", link, MAX_LINKS)?;
        self.link_config
            .set(link, cfg, 0)
            .map_err(map_err(names::LINK_CONFIG))
    }

    pub fn link_config(&self, link: u32) -> Result<LinkConfig> {
        check_range("link", link, MAX_LINKS)?;
        self.link_config
            .get(&link, 0)
            .map_err(map_err(names::LINK_CONFIG))
    }

    /// What the underlay program measured on `link`.
    pub fn link_state(&self, link: u32) -> Result<LinkState> {
        check_range("link", link, MAX_LINKS)?;
        self.link_state
            .get(&link, 0)
            .map_err(map_err(names::LINK_STATE))
    }

    /// Adds or replaces a classifier rule. The rule goes in before its port's bit, so a packet
    /// that sees the bit finds the rule.
    pub fn set_classifier_rule(&mut self, key: ClassifierKey, rule: ClassifierRule) -> Result<()> {
        self.classifier
            .insert(key, rule, 0)
            .map_err(map_err(names::CLASSIFIER))?;
        self.set_port_bit(key.port, true)
    }

    /// Removes a rule, and its port's bit when no other rule names that port.
    pub fn remove_classifier_rule(&mut self, key: &ClassifierKey) -> Result<()> {
        match self.classifier.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::CLASSIFIER)(e)),
        }
        let still_used = self
            .classifier
            .keys()
            .filter_map(|k| k.ok())
            .any(|k| k.port == key.port);
        if !still_used {
            self.set_port_bit(key.port, false)?;
        }
        Ok(())
    }

    pub fn classifier_rules(&self) -> Result<Vec<(ClassifierKey, ClassifierRule)>> {
        self.classifier
            .iter()
            .map(|r| r.map_err(map_err(names::CLASSIFIER)))
            .collect()
    }

    fn set_port_bit(&mut self, port: u16, on: bool) -> Result<()> {
        let word = (port >> 6) as u32;
        let bit = 1u64 << (port & 63);
        let old = self
            .class_ports
            .get(&word, 0)
            .map_err(map_err(names::CLASS_PORTS))?;
        let new = if on { old | bit } else { old & !bit };
        self.class_ports
            .set(word, new, 0)
            .map_err(map_err(names::CLASS_PORTS))
    }

    pub fn set_qos_policy(&mut self, class: u8, p: QosPolicy) -> Result<()> {
        self.qos
            .set(class as u32, p, 0)
            .map_err(map_err(names::QOS_POLICY))
    }

    /// Installs or replaces a token-bucket policer (bucket starts full) and turns policing on.
    pub fn set_policer(
        &mut self,
        key: PolicerKey,
        rate_bytes_per_s: u64,
        burst_bytes: u64,
        action: u8,
    ) -> Result<()> {
        let p = Policer {
            rate_bytes_per_s,
            burst_bytes,
            tokens: burst_bytes,
            action,
            ..Default::default()
        };
        self.policers
            .insert(key, p, 0)
            .map_err(map_err(names::POLICERS))?;
        let mut cfg = self.config()?;
        cfg.flags |= dwcp_common::CONFIG_F_POLICING;
        self.set_config(cfg)
    }

    /// Removes a policer; policing is turned off with the last one.
    pub fn remove_policer(&mut self, key: &PolicerKey) -> Result<()> {
        match self.policers.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::POLICERS)(e)),
        }
        if self.policers.keys().next().is_none() {
            let mut cfg = self.config()?;
            cfg.flags &= !dwcp_common::CONFIG_F_POLICING;
            self.set_config(cfg)?;
        }
        Ok(())
    }

    /// Writes a policer entry as is, leaving the global flags alone (the agent's plan sets
    /// `CONFIG_F_POLICING` itself, in the order that keeps packets safe).
    pub fn put_policer(&mut self, key: PolicerKey, p: Policer) -> Result<()> {
        self.policers
            .insert(key, p, 0)
            .map_err(map_err(names::POLICERS))
    }

    /// Deletes a policer entry (absent is fine), leaving the global flags alone.
    pub fn delete_policer(&mut self, key: &PolicerKey) -> Result<()> {
        match self.policers.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::POLICERS)(e)),
        }
    }

    /// Every policer with its counters.
    pub fn policers(&self) -> Result<Vec<(PolicerKey, Policer)>> {
        self.policers
            .iter()
            .map(|r| r.map_err(map_err(names::POLICERS)))
            .collect()
    }

    /// The flows the LAN program handed off, with the mark it recorded for each (what the
    /// LAN tc program sets as `skb->mark`).
    pub fn handoff_flows(&self) -> Result<Vec<(HandoffFlow, u32)>> {
        self.handoff_flows
            .iter()
            .map(|r| r.map_err(map_err(names::HANDOFF_FLOWS)))
            .collect()
    }

    /// A policer with its counters.
    pub fn policer(&self, key: &PolicerKey) -> Result<Option<Policer>> {
        match self.policers.get(key, 0) {
            Ok(p) => Ok(Some(p)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::POLICERS)(e)),
        }
    }

    /// Terminates `vni` here: the traffic of `entry.link_id`'s peer is decapsulated.
    pub fn add_vni(&mut self, vni: u32, entry: VniEntry) -> Result<()> {
        check_range("VNI", vni, dwcp_common::wire::VNI_MAX + 1)?;
        self.vnis
            .insert(vni, entry, 0)
            .map_err(map_err(names::VNIS))
    }

    /// The network's links down, one bit each (what the LAN program skips members for).
    pub fn set_links_down(&mut self, down: LinksDown) -> Result<()> {
        self.links_down
            .set(0, down, 0)
            .map_err(map_err(names::LINKS_DOWN))
    }

    pub fn links_down(&self) -> Result<LinksDown> {
        self.links_down
            .get(&0, 0)
            .map_err(map_err(names::LINKS_DOWN))
    }

    /// Transit packets whose source route names `exit` leave on `link`.
    pub fn set_transit_exit(&mut self, exit: u32, link: u32) -> Result<()> {
        check_range("transit exit", exit, dwcp_common::MAX_TRANSIT_EXITS + 1)?;
        self.transit_exits
            .insert(exit, link, 0)
            .map_err(map_err(names::TRANSIT_EXITS))
    }

    pub fn remove_transit_exit(&mut self, exit: u32) -> Result<()> {
        match self.transit_exits.remove(&exit) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::TRANSIT_EXITS)(e)),
        }
    }

    pub fn transit_exits(&self) -> Result<Vec<(u32, u32)>> {
        self.transit_exits
            .iter()
            .map(|r| r.map_err(map_err(names::TRANSIT_EXITS)))
            .collect()
    }

    pub fn nexthop_counters(&self, id: u32) -> Result<Counters> {
        sum_counters(&self.nh_stats, id, names::NH_STATS)
    }

    pub fn class_counters(&self, class: u8) -> Result<Counters> {
        sum_counters(&self.class_stats, class as u32, names::CLASS_STATS)
    }

    pub fn reason_count(&self, reason: Reason) -> Result<u64> {
        let v = self
            .reason_stats
            .get(&(reason as u32), 0)
            .map_err(map_err(names::REASON_STATS))?;
        Ok(v.iter().sum())
    }

    /// Every reason with its count (summed over CPUs).
    pub fn reason_counts(&self) -> Result<Vec<(Reason, u64)>> {
        Reason::ALL
            .iter()
            .map(|&r| Ok((r, self.reason_count(r)?)))
            .collect()
    }
}

fn check_range(what: &'static str, id: u32, max: u32) -> Result<()> {
    if id >= max {
        return Err(DataplaneError::OutOfRange {
            what,
            id,
            max: max - 1,
        });
    }
    Ok(())
}

fn sum_counters(
    map: &PerCpuArray<MapData, Counters>,
    idx: u32,
    name: &'static str,
) -> Result<Counters> {
    let v = map.get(&idx, 0).map_err(map_err(name))?;
    Ok(v.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    }))
}

/// Removes the pinned maps under `dir` (and the directory if it is then empty).
pub fn unpin_all(dir: &Path) -> std::io::Result<()> {
    for name in names::ALL {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// A `FLOW_SAMPLES` record; `None` if it is too short (a different object's layout).
pub fn decode_sample(bytes: &[u8]) -> Option<dwcp_common::FlowSampleRecord> {
    if bytes.len() < std::mem::size_of::<dwcp_common::FlowSampleRecord>() {
        return None;
    }
    // SAFETY: long enough, and every bit pattern is a valid record (plain integers).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

#[cfg(test)]
mod sample_tests {
    use dwcp_common::FlowSampleRecord;

    use super::decode_sample;

    #[test]
    fn a_short_record_is_refused() {
        assert!(decode_sample(&[0u8; 55]).is_none());
        let r = FlowSampleRecord {
            src: [0x0a00_0001, 0, 0, 0],
            dst: [0x0a01_0005, 0, 0, 0],
            bytes: 1_400,
            ..Default::default()
        };
        // SAFETY: plain integers, read as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&r as *const FlowSampleRecord).cast::<u8>(),
                std::mem::size_of::<FlowSampleRecord>(),
            )
        };
        assert_eq!(decode_sample(bytes), Some(r));
    }
}
