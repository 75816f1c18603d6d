//! The validated topology: regions, inter-region links and edge nodes. A `Topology` is an
//! immutable snapshot; updates build a new one (sharing what did not change) that the store
//! swaps in atomically.
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::TopologyConfig;
use super::error::{Entry, Lines, TopologyError, ValidationError};
use super::geo::latency_prior_ms;

/// Dense index of a region in its topology (its position in the config's region list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegionId(pub u32);

/// Stable numeric id of a link: also its index in the fast path's link maps and the
/// `link_id` of its next hops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LinkId(pub u32);

/// Dense index of an edge node in its topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EdgeId(pub u32);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    #[default]
    Vxlan,
    Wireguard,
    Ipsec,
    Gre,
}

/// Health of a link as routing takes it: the probes' verdict, or the operator's (a link
/// administratively down is `Down`). `Down` links carry no route. What the operator is shown,
/// with more states, is [`crate::view::LinkHealth`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingHealth {
    #[default]
    Up,
    Degraded,
    Down,
}

impl RoutingHealth {
    /// How bad: up < degraded < down. Where several say how a link is, the worst counts.
    pub fn severity(self) -> u8 {
        match self {
            RoutingHealth::Up => 0,
            RoutingHealth::Degraded => 1,
            RoutingHealth::Down => 2,
        }
    }
}

/// Where a link's latency figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencySource {
    /// Great-circle estimate (no figure configured or measured yet).
    Prior,
    Configured,
    Measured,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gateway {
    pub name: String,
    pub underlay: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Region {
    pub id: RegionId,
    pub name: String,
    pub description: String,
    pub latitude: f64,
    pub longitude: f64,
    pub country: String,
    pub provider: String,
    pub capacity_mbps: f64,
    pub gateways: Vec<Gateway>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    pub id: LinkId,
    pub name: Arc<str>,
    pub a: RegionId,
    pub b: RegionId,
    pub kind: TunnelKind,
    pub capacity_mbps: f64,
    pub utilisation: f64,
    pub cost_per_gb: f64,
    /// Round-trip latency.
    pub latency_ms: f64,
    pub latency_source: LatencySource,
    pub jitter_ms: f64,
    pub loss: f64,
    pub health: RoutingHealth,
}

impl Link {
    /// Capacity not in use.
    pub fn available_mbps(&self) -> f64 {
        self.capacity_mbps * (1.0 - self.utilisation)
    }

    /// The end that is not `r` (`None` if `r` is not an end).
    pub fn other_end(&self, r: RegionId) -> Option<RegionId> {
        if r == self.a {
            Some(self.b)
        } else if r == self.b {
            Some(self.a)
        } else {
            None
        }
    }

    pub fn usable(&self) -> bool {
        self.health != RoutingHealth::Down
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeNode {
    pub id: EdgeId,
    pub name: String,
    pub region: RegionId,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    /// Round-trip latency between the edge node and its region's gateways.
    pub access_latency_ms: f64,
}

/// A live change to the topology, from measurements or the operator.
#[derive(Clone, Debug, PartialEq)]
pub enum TopologyUpdate {
    /// Probe results of a link (round-trip latency, jitter, loss fraction).
    LinkMeasurement {
        link_id: LinkId,
        latency_ms: f64,
        jitter_ms: f64,
        loss: f64,
    },
    /// Fraction of the link's capacity in use.
    LinkUtilisation {
        link_id: LinkId,
        utilisation: f64,
    },
    LinkHealth {
        link_id: LinkId,
        health: RoutingHealth,
    },
    LinkCost {
        link_id: LinkId,
        cost_per_gb: f64,
    },
}

impl TopologyUpdate {
    pub fn link_id(&self) -> LinkId {
        match self {
            TopologyUpdate::LinkMeasurement { link_id, .. }
            | TopologyUpdate::LinkUtilisation { link_id, .. }
            | TopologyUpdate::LinkHealth { link_id, .. }
            | TopologyUpdate::LinkCost { link_id, .. } => *link_id,
        }
    }
}

/// An immutable, validated snapshot of the global topology.
#[derive(Clone, Debug)]
pub struct Topology {
    generation: u64,
    regions: Arc<[Region]>,
    /// Sorted by link id.
    links: Arc<[Link]>,
    edges: Arc<[EdgeNode]>,
    region_by_name: Arc<HashMap<String, RegionId>>,
    link_by_name: Arc<HashMap<Arc<str>, LinkId>>,
    edge_by_name: Arc<HashMap<String, EdgeId>>,
}

impl Topology {
    /// Parses and validates a topology from TOML text.
    pub fn from_toml_str(source: &str) -> Result<Self, TopologyError> {
        let config = TopologyConfig::from_toml_str(source)?;
        Self::from_config(&config, Some(source))
    }

    /// Validates a config and builds the topology. `source` is the TOML text the config was
    /// parsed from (the whole agent config if the topology is a section of it), used to name
    /// lines in errors. Every problem is reported, not just the first.
    pub fn from_config(
        config: &TopologyConfig,
        source: Option<&str>,
    ) -> Result<Self, TopologyError> {
        let lines = source.map(Lines::new);
        let line = |span: std::ops::Range<usize>| match &lines {
            Some(lines) if span.end > span.start => Some(lines.line(span.start)),
            _ => None,
        };
        let mut errors = Vec::new();

        let mut regions = Vec::with_capacity(config.regions.len());
        let mut region_by_name: HashMap<String, RegionId> = HashMap::new();
        let mut region_entries: Vec<Entry> = Vec::new();
        for spanned in &config.regions {
            let r = spanned.get_ref();
            let entry = Entry {
                what: format!("region {:?}", r.name),
                line: line(spanned.span()),
            };
            check_region(
                &entry,
                r.latitude,
                r.longitude,
                r.capacity_mbps,
                &r.name,
                &mut errors,
            );
            if let Some(&first) = region_by_name.get(&r.name) {
                errors.push(ValidationError::Duplicate {
                    entry: entry.clone(),
                    kind: "region name",
                    key: r.name.clone(),
                    first: region_entries[first.0 as usize].to_string(),
                });
                continue;
            }
            let id = RegionId(regions.len() as u32);
            region_by_name.insert(r.name.clone(), id);
            region_entries.push(entry);
            regions.push(Region {
                id,
                name: r.name.clone(),
                description: r.description.clone(),
                latitude: r.latitude,
                longitude: r.longitude,
                country: r.country.clone(),
                provider: r.provider.clone(),
                capacity_mbps: r.capacity_mbps,
                gateways: r
                    .gateways
                    .iter()
                    .map(|g| Gateway {
                        name: g.name.clone(),
                        underlay: g.underlay,
                    })
                    .collect(),
            });
        }

        let mut links: Vec<Link> = Vec::with_capacity(config.links.len());
        let mut link_by_id: HashMap<u32, Entry> = HashMap::new();
        let mut link_by_name: HashMap<Arc<str>, LinkId> = HashMap::new();
        let mut link_name_entry: HashMap<String, Entry> = HashMap::new();
        for spanned in &config.links {
            let l = spanned.get_ref();
            let entry = Entry {
                what: format!("link {:?} (link_id {})", l.name, l.link_id),
                line: line(spanned.span()),
            };
            let before = errors.len();
            if l.link_id >= dwcp_common::MAX_LINKS {
                errors.push(invalid(
                    &entry,
                    "link_id",
                    l.link_id,
                    "must be below MAX_LINKS (1024): it indexes the fast path's link maps",
                ));
            }
            if let Some(first) = link_by_id.get(&l.link_id) {
                errors.push(ValidationError::Duplicate {
                    entry: entry.clone(),
                    kind: "link_id",
                    key: l.link_id.to_string(),
                    first: first.to_string(),
                });
            }
            if let Some(first) = link_name_entry.get(&l.name) {
                errors.push(ValidationError::Duplicate {
                    entry: entry.clone(),
                    kind: "link name",
                    key: l.name.clone(),
                    first: first.to_string(),
                });
            }
            let ends: Vec<Option<RegionId>> = [&l.a, &l.b]
                .into_iter()
                .map(|name| {
                    let id = region_by_name.get(name).copied();
                    if id.is_none() {
                        errors.push(ValidationError::UnknownRegion {
                            entry: entry.clone(),
                            region: name.clone(),
                        });
                    }
                    id
                })
                .collect();
            if l.a == l.b {
                errors.push(ValidationError::SelfLoop {
                    entry: entry.clone(),
                    region: l.a.clone(),
                });
            }
            check_link_values(
                &entry,
                LinkValues {
                    capacity_mbps: Some(l.capacity_mbps),
                    utilisation: Some(l.utilisation),
                    cost_per_gb: Some(l.cost_per_gb),
                    latency_ms: l.latency_ms,
                    jitter_ms: Some(l.jitter_ms),
                    loss: Some(l.loss),
                },
                &mut errors,
            );
            link_by_id.entry(l.link_id).or_insert_with(|| entry.clone());
            link_name_entry
                .entry(l.name.clone())
                .or_insert_with(|| entry.clone());
            if errors.len() != before {
                continue;
            }
            let (a, b) = (ends[0].expect("checked"), ends[1].expect("checked"));
            let (ra, rb) = (&regions[a.0 as usize], &regions[b.0 as usize]);
            let (latency_ms, latency_source) = match l.latency_ms {
                Some(ms) => (ms, LatencySource::Configured),
                None => (
                    latency_prior_ms(ra.latitude, ra.longitude, rb.latitude, rb.longitude),
                    LatencySource::Prior,
                ),
            };
            let name: Arc<str> = Arc::from(l.name.as_str());
            link_by_name.insert(name.clone(), LinkId(l.link_id));
            links.push(Link {
                id: LinkId(l.link_id),
                name,
                a,
                b,
                kind: l.kind,
                capacity_mbps: l.capacity_mbps,
                utilisation: l.utilisation,
                cost_per_gb: l.cost_per_gb,
                latency_ms,
                latency_source,
                jitter_ms: l.jitter_ms,
                loss: l.loss,
                health: l.health,
            });
        }
        links.sort_by_key(|l| l.id);

        let mut edges = Vec::with_capacity(config.edges.len());
        let mut edge_by_name: HashMap<String, EdgeId> = HashMap::new();
        let mut edge_entries: Vec<Entry> = Vec::new();
        for spanned in &config.edges {
            let e = spanned.get_ref();
            let entry = Entry {
                what: format!("edge {:?}", e.name),
                line: line(spanned.span()),
            };
            let before = errors.len();
            if let Some(&first) = edge_by_name.get(&e.name) {
                errors.push(ValidationError::Duplicate {
                    entry: entry.clone(),
                    kind: "edge name",
                    key: e.name.clone(),
                    first: edge_entries[first.0 as usize].to_string(),
                });
            }
            let region = region_by_name.get(&e.region).copied();
            if region.is_none() {
                errors.push(ValidationError::UnknownRegion {
                    entry: entry.clone(),
                    region: e.region.clone(),
                });
            }
            if let Some(lat) = e.latitude {
                check_range(&entry, "latitude", lat, -90.0, 90.0, &mut errors);
            }
            if let Some(lon) = e.longitude {
                check_range(&entry, "longitude", lon, -180.0, 180.0, &mut errors);
            }
            if let Some(ms) = e.access_latency_ms {
                check_non_negative(&entry, "access_latency_ms", ms, &mut errors);
            }
            if errors.len() != before {
                continue;
            }
            let region = region.expect("checked");
            let r = &regions[region.0 as usize];
            let access_latency_ms = match (e.access_latency_ms, e.latitude, e.longitude) {
                (Some(ms), _, _) => ms,
                (None, Some(lat), Some(lon)) => latency_prior_ms(lat, lon, r.latitude, r.longitude),
                _ => 0.0,
            };
            let id = EdgeId(edges.len() as u32);
            edge_by_name.insert(e.name.clone(), id);
            edge_entries.push(entry);
            edges.push(EdgeNode {
                id,
                name: e.name.clone(),
                region,
                latitude: e.latitude,
                longitude: e.longitude,
                access_latency_ms,
            });
        }

        if !errors.is_empty() {
            return Err(TopologyError::Invalid { errors });
        }
        Ok(Topology {
            generation: 1,
            regions: regions.into(),
            links: links.into(),
            edges: edges.into(),
            region_by_name: Arc::new(region_by_name),
            link_by_name: Arc::new(link_by_name),
            edge_by_name: Arc::new(edge_by_name),
        })
    }

    /// Applies a batch of updates, all or nothing: on error `self` is unchanged and the error
    /// names the first offending update. The result has the next generation.
    pub fn apply(&self, updates: &[TopologyUpdate]) -> Result<Topology, TopologyError> {
        let mut links: Vec<Link> = self.links.to_vec();
        let mut errors = Vec::new();
        for update in updates {
            let link_id = update.link_id();
            let Ok(index) = links.binary_search_by_key(&link_id, |l| l.id) else {
                return Err(TopologyError::UnknownLink { link_id: link_id.0 });
            };
            let link = &mut links[index];
            let entry = Entry {
                what: format!("update of link {:?} (link_id {})", link.name, link.id),
                line: None,
            };
            let before = errors.len();
            match *update {
                TopologyUpdate::LinkMeasurement {
                    latency_ms,
                    jitter_ms,
                    loss,
                    ..
                } => {
                    let values = LinkValues {
                        latency_ms: Some(latency_ms),
                        jitter_ms: Some(jitter_ms),
                        loss: Some(loss),
                        ..LinkValues::default()
                    };
                    check_link_values(&entry, values, &mut errors);
                    if errors.len() == before {
                        link.latency_ms = latency_ms;
                        link.latency_source = LatencySource::Measured;
                        link.jitter_ms = jitter_ms;
                        link.loss = loss;
                    }
                }
                TopologyUpdate::LinkUtilisation { utilisation, .. } => {
                    let values = LinkValues {
                        utilisation: Some(utilisation),
                        ..LinkValues::default()
                    };
                    check_link_values(&entry, values, &mut errors);
                    if errors.len() == before {
                        link.utilisation = utilisation;
                    }
                }
                TopologyUpdate::LinkCost { cost_per_gb, .. } => {
                    let values = LinkValues {
                        cost_per_gb: Some(cost_per_gb),
                        ..LinkValues::default()
                    };
                    check_link_values(&entry, values, &mut errors);
                    if errors.len() == before {
                        link.cost_per_gb = cost_per_gb;
                    }
                }
                TopologyUpdate::LinkHealth { health, .. } => link.health = health,
            }
        }
        if !errors.is_empty() {
            return Err(TopologyError::Invalid { errors });
        }
        Ok(Topology {
            generation: self.generation + 1,
            links: links.into(),
            ..self.clone()
        })
    }

    /// The same topology under another generation number (the store numbers what it holds).
    pub fn with_generation(mut self, generation: u64) -> Topology {
        self.generation = generation;
        self
    }

    /// Bumped on every change; route caches compare it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Links sorted by link id.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// A link's exit number at one of its ends: its position among that region's links (by
    /// link id, from 1). It is what a source route names at the region's gateway, so every
    /// gateway running the same topology numbers the exits alike. `None` when the link does
    /// not end there, or when it is past the 255 a route's byte can name.
    pub fn exit_number(&self, region: RegionId, link: LinkId) -> Option<u8> {
        let position = self
            .links
            .iter()
            .filter(|l| l.a == region || l.b == region)
            .position(|l| l.id == link)?;
        u8::try_from(position + 1).ok()
    }

    pub fn edges(&self) -> &[EdgeNode] {
        &self.edges
    }

    /// The edge nodes, shared (not copied).
    pub fn edges_shared(&self) -> Arc<[EdgeNode]> {
        self.edges.clone()
    }

    pub fn region(&self, id: RegionId) -> Option<&Region> {
        self.regions.get(id.0 as usize)
    }

    pub fn region_by_name(&self, name: &str) -> Option<&Region> {
        self.region_by_name
            .get(name)
            .and_then(|&id| self.region(id))
    }

    pub fn link(&self, id: LinkId) -> Option<&Link> {
        self.links
            .binary_search_by_key(&id, |l| l.id)
            .ok()
            .map(|i| &self.links[i])
    }

    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.link_by_name.get(name).and_then(|&id| self.link(id))
    }

    pub fn edge(&self, id: EdgeId) -> Option<&EdgeNode> {
        self.edges.get(id.0 as usize)
    }

    pub fn edge_by_name(&self, name: &str) -> Option<&EdgeNode> {
        self.edge_by_name.get(name).and_then(|&id| self.edge(id))
    }
}

fn invalid(
    entry: &Entry,
    field: &'static str,
    value: impl fmt::Display,
    rule: &'static str,
) -> ValidationError {
    ValidationError::InvalidValue {
        entry: entry.clone(),
        field,
        value: value.to_string(),
        rule,
    }
}

fn check_range(
    entry: &Entry,
    field: &'static str,
    v: f64,
    lo: f64,
    hi: f64,
    errors: &mut Vec<ValidationError>,
) {
    if !(v.is_finite() && (lo..=hi).contains(&v)) {
        let rule = match field {
            "latitude" => "must be within -90..=90 degrees",
            "longitude" => "must be within -180..=180 degrees",
            "utilisation" => "must be a fraction within 0..=1",
            _ => "out of range",
        };
        errors.push(invalid(entry, field, v, rule));
    }
}

fn check_non_negative(
    entry: &Entry,
    field: &'static str,
    v: f64,
    errors: &mut Vec<ValidationError>,
) {
    if !(v.is_finite() && v >= 0.0) {
        errors.push(invalid(entry, field, v, "must be a finite number >= 0"));
    }
}

fn check_positive(entry: &Entry, field: &'static str, v: f64, errors: &mut Vec<ValidationError>) {
    if !(v.is_finite() && v > 0.0) {
        errors.push(invalid(entry, field, v, "must be a finite number > 0"));
    }
}

fn check_region(
    entry: &Entry,
    lat: f64,
    lon: f64,
    capacity: f64,
    name: &str,
    errors: &mut Vec<ValidationError>,
) {
    if name.is_empty() {
        errors.push(invalid(entry, "name", "\"\"", "must not be empty"));
    }
    check_range(entry, "latitude", lat, -90.0, 90.0, errors);
    check_range(entry, "longitude", lon, -180.0, 180.0, errors);
    check_positive(entry, "capacity_mbps", capacity, errors);
}

/// Link figures to check; `None` = not part of this change.
#[derive(Default)]
struct LinkValues {
    capacity_mbps: Option<f64>,
    utilisation: Option<f64>,
    cost_per_gb: Option<f64>,
    latency_ms: Option<f64>,
    jitter_ms: Option<f64>,
    loss: Option<f64>,
}

fn check_link_values(entry: &Entry, v: LinkValues, errors: &mut Vec<ValidationError>) {
    if let Some(c) = v.capacity_mbps {
        check_positive(entry, "capacity_mbps", c, errors);
    }
    if let Some(u) = v.utilisation {
        check_range(entry, "utilisation", u, 0.0, 1.0, errors);
    }
    if let Some(c) = v.cost_per_gb {
        check_non_negative(entry, "cost_per_gb", c, errors);
    }
    if let Some(l) = v.latency_ms {
        check_non_negative(entry, "latency_ms", l, errors);
    }
    if let Some(j) = v.jitter_ms {
        check_non_negative(entry, "jitter_ms", j, errors);
    }
    if let Some(loss) = v.loss {
        // A loss of 1 would be a dead link: that is what health = down says.
        if !(loss.is_finite() && (0.0..1.0).contains(&loss)) {
            errors.push(invalid(
                entry,
                "loss",
                loss,
                "must be a fraction within 0..1 (use health = \"down\" for a dead link)",
            ));
        }
    }
}
