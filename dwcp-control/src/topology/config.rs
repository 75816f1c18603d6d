//! The TOML schema of the topology: `[[region]]`, `[[link]]`, `[[edge]]`.
//!
//! The daemon embeds [`TopologyConfig`] as a section of the agent's config file. Every entry is
//! wrapped in [`toml::Spanned`] so validation errors can name the config line of the offending
//! entry; built programmatically (tests, synthetic topologies), the span is simply empty.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::error::{line_of, TopologyError};
use super::model::{RoutingHealth, TunnelKind};

/// The whole topology as configured: the same file on every gateway.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    #[serde(default, rename = "region")]
    pub regions: Vec<Spanned<RegionConfig>>,
    #[serde(default, rename = "link")]
    pub links: Vec<Spanned<LinkConfig>>,
    #[serde(default, rename = "edge")]
    pub edges: Vec<Spanned<EdgeConfig>>,
}

/// A region: a site with one or more gateways.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Stable name used everywhere else ("us-east-1").
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub latitude: f64,
    pub longitude: f64,
    /// ISO 3166-1 alpha-2 code, used by compliance constraints.
    pub country: String,
    pub provider: String,
    /// Egress capacity of the region's gateways together.
    pub capacity_mbps: f64,
    #[serde(default)]
    pub gateways: Vec<GatewayConfig>,
}

/// A gateway host of a region.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub name: String,
    /// Underlay address the tunnels of other regions reach it at.
    pub underlay: IpAddr,
}

/// A bidirectional inter-region link.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Index of the link in the fast path's `LINK_CONFIG` / `LINK_STATE` maps.
    pub link_id: u32,
    pub name: String,
    /// Region names of the two ends.
    pub a: String,
    pub b: String,
    #[serde(default)]
    pub kind: TunnelKind,
    pub capacity_mbps: f64,
    /// Fraction of the capacity in use, 0..=1.
    #[serde(default)]
    pub utilisation: f64,
    #[serde(default)]
    pub cost_per_gb: f64,
    /// Round-trip latency; absent = estimated from the great-circle distance of the ends.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    #[serde(default)]
    pub jitter_ms: f64,
    /// Packet loss fraction, 0..1.
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub health: RoutingHealth,
}

/// An edge node: a site attached to exactly one region (never a transit hop).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub name: String,
    pub region: String,
    #[serde(default)]
    pub latitude: Option<f64>,
    #[serde(default)]
    pub longitude: Option<f64>,
    /// Round-trip latency between the edge node and its region's gateways; absent = estimated
    /// from the coordinates when both are known, else 0.
    #[serde(default)]
    pub access_latency_ms: Option<f64>,
}

impl TopologyConfig {
    /// Parses a topology from TOML text (the `[[region]]`, `[[link]]`, `[[edge]]` tables).
    pub fn from_toml_str(source: &str) -> Result<Self, TopologyError> {
        toml::from_str(source).map_err(|e| TopologyError::Parse {
            line: e.span().map(|s| line_of(source, s.start)),
            message: e.message().to_string(),
        })
    }

    /// What replacing `self` by `new` changes, one line per entry: `+ region x`, `- link 3
    /// n (a -- b)`, `~ link 1 n (a -- b): capacity_mbps 1000.0 -> 2000.0`. Regions and edges are matched by
    /// name, links by id. Empty when they say the same.
    pub fn diff(&self, new: &TopologyConfig) -> Vec<String> {
        let mut out = Vec::new();
        let regions = |t: &TopologyConfig| -> Vec<(String, String, toml::Value)> {
            t.regions
                .iter()
                .map(|r| {
                    let r = r.get_ref();
                    (r.name.clone(), format!("region {}", r.name), entry_value(r))
                })
                .collect()
        };
        let links = |t: &TopologyConfig| -> Vec<(String, String, toml::Value)> {
            t.links
                .iter()
                .map(|l| {
                    let l = l.get_ref();
                    (
                        format!("{:010}", l.link_id),
                        format!("link {} {} ({} -- {})", l.link_id, l.name, l.a, l.b),
                        entry_value(l),
                    )
                })
                .collect()
        };
        let edges = |t: &TopologyConfig| -> Vec<(String, String, toml::Value)> {
            t.edges
                .iter()
                .map(|e| {
                    let e = e.get_ref();
                    (e.name.clone(), format!("edge {}", e.name), entry_value(e))
                })
                .collect()
        };
        diff_entries(&regions(self), &regions(new), &mut out);
        diff_entries(&links(self), &links(new), &mut out);
        diff_entries(&edges(self), &edges(new), &mut out);
        out
    }

    /// Wraps entries built in code (they have no config line).
    pub fn from_entries(
        regions: Vec<RegionConfig>,
        links: Vec<LinkConfig>,
        edges: Vec<EdgeConfig>,
    ) -> Self {
        TopologyConfig {
            regions: regions.into_iter().map(unspanned).collect(),
            links: links.into_iter().map(unspanned).collect(),
            edges: edges.into_iter().map(unspanned).collect(),
        }
    }
}

pub(crate) fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

impl LinkConfig {
    /// A healthy, idle, free link with a latency prior; tests and generators adjust the rest.
    pub fn new(link_id: u32, a: &str, b: &str, capacity_mbps: f64) -> Self {
        LinkConfig {
            link_id,
            name: format!("{a}--{b}"),
            a: a.to_string(),
            b: b.to_string(),
            kind: TunnelKind::default(),
            capacity_mbps,
            utilisation: 0.0,
            cost_per_gb: 0.0,
            latency_ms: None,
            jitter_ms: 0.0,
            loss: 0.0,
            health: RoutingHealth::Up,
        }
    }
}

fn entry_value<T: Serialize>(entry: &T) -> toml::Value {
    toml::Value::try_from(entry).unwrap_or_else(|e| toml::Value::String(e.to_string()))
}

/// Entries keyed (key, label, fields), compared field by field.
fn diff_entries(
    old: &[(String, String, toml::Value)],
    new: &[(String, String, toml::Value)],
    out: &mut Vec<String>,
) {
    use std::collections::BTreeMap;
    let old: BTreeMap<&str, (&str, &toml::Value)> = old
        .iter()
        .map(|(k, l, v)| (k.as_str(), (l.as_str(), v)))
        .collect();
    let new: BTreeMap<&str, (&str, &toml::Value)> = new
        .iter()
        .map(|(k, l, v)| (k.as_str(), (l.as_str(), v)))
        .collect();
    for (key, (label, value)) in &old {
        match new.get(key) {
            None => out.push(format!("- {label}")),
            Some((new_label, new_value)) if value != new_value => {
                let fields = |v: &toml::Value| v.as_table().cloned().unwrap_or_default();
                let (a, b) = (fields(value), fields(new_value));
                let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
                names.sort();
                names.dedup();
                let changes: Vec<String> = names
                    .into_iter()
                    .filter(|n| a.get(*n) != b.get(*n))
                    .map(|n| {
                        let show = |v: Option<&toml::Value>| {
                            v.map_or_else(|| "(none)".to_string(), |v| v.to_string())
                        };
                        format!("{n} {} -> {}", show(a.get(n)), show(b.get(n)))
                    })
                    .collect();
                out.push(format!("~ {new_label}: {}", changes.join(", ")));
            }
            Some(_) => {}
        }
    }
    for (key, (label, _)) in &new {
        if !old.contains_key(key) {
            out.push(format!("+ {label}"));
        }
    }
}
