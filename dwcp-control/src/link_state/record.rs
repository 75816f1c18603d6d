//! A gateway's link-state record: what it says about the links it terminates, numbered so that
//! a newer record replaces an older one everywhere.
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::topology::{Link, LinkId, RoutingHealth, TopologyUpdate};

use super::digest::TopologyDigest;

/// Longest gateway name a record carries (bytes of UTF-8).
pub const MAX_ORIGIN_LEN: usize = 64;
/// Links one record may list, so that a record always fits one datagram (98 bytes of
/// headers + 64 reports of 17 = 1,186 <= [`super::wire::MAX_MESSAGE_LEN`]).
pub const MAX_RECORD_LINKS: usize = 64;
/// Loss and utilisation are carried in 1/10,000 (0.01 %).
pub const FRACTION_QUANTUM: f64 = 10_000.0;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    #[error("gateway name of {0} bytes: must be 1 to {MAX_ORIGIN_LEN}")]
    OriginLength(usize),
    #[error("{0} links in one record: at most {MAX_RECORD_LINKS}")]
    TooManyLinks(usize),
    #[error("link {0} listed twice or out of order (links go in increasing id order)")]
    LinkOrder(LinkId),
    #[error("link {link}: loss {value}/10000 must be below 10000 (a dead link is reported down)")]
    Loss { link: LinkId, value: u16 },
    #[error("link {link}: utilisation {value}/10000 above 10000")]
    Utilisation { link: LinkId, value: u16 },
}

/// Who originated a record: the gateway's name (`[gateway] name` of agent.toml). Names, not
/// topology indices: a region may have several gateways, a region's gateway list may be empty,
/// and a name means the same on gateways whose topology files differ (which the digest
/// reveals). Gateway names must be unique across the network. (De)serialised as the name,
/// checked as [`Origin::new`] checks it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin(Arc<str>);

impl Origin {
    pub fn new(name: &str) -> Result<Origin, RecordError> {
        if name.is_empty() || name.len() > MAX_ORIGIN_LEN {
            return Err(RecordError::OriginLength(name.len()));
        }
        Ok(Origin(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Origin {
    type Error = RecordError;

    fn try_from(name: String) -> Result<Origin, RecordError> {
        Origin::new(&name)
    }
}

impl From<Origin> for String {
    fn from(o: Origin) -> String {
        o.0.to_string()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A link's measured figures as carried: quantised, `None` where not measured (yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Round-trip time, µs.
    pub rtt_us: Option<u32>,
    /// RTT jitter, µs.
    pub jitter_us: Option<u32>,
    /// Loss fraction in 1/10,000, below 10,000.
    pub loss: Option<u16>,
    /// Fraction of the capacity in use, in 1/10,000, at most 10,000.
    pub utilisation: Option<u16>,
}

impl Figures {
    /// Quantises measured figures (ms and fractions); a negative or non-finite one is unknown.
    pub fn quantise(
        rtt_ms: Option<f64>,
        jitter_ms: Option<f64>,
        loss: Option<f64>,
        utilisation: Option<f64>,
    ) -> Figures {
        let valid = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
        let micros =
            |ms: Option<f64>| valid(ms).map(|ms| (ms * 1e3).round().min(u32::MAX as f64) as u32);
        let fraction = |v: Option<f64>, max: u16| {
            valid(v).map(|v| ((v * FRACTION_QUANTUM).round() as u16).min(max))
        };
        Figures {
            rtt_us: micros(rtt_ms),
            jitter_us: micros(jitter_ms),
            loss: fraction(loss, 9_999),
            utilisation: fraction(utilisation, 10_000),
        }
    }

    pub fn rtt_ms(&self) -> Option<f64> {
        self.rtt_us.map(|us| us as f64 / 1e3)
    }

    pub fn jitter_ms(&self) -> Option<f64> {
        self.jitter_us.map(|us| us as f64 / 1e3)
    }

    pub fn loss_fraction(&self) -> Option<f64> {
        self.loss.map(|v| v as f64 / FRACTION_QUANTUM)
    }

    pub fn utilisation_fraction(&self) -> Option<f64> {
        self.utilisation.map(|v| v as f64 / FRACTION_QUANTUM)
    }

    /// These figures as updates of `link`, a figure not carried taking `link`'s (pass the
    /// topology file's link for what routing assumes where nobody measured).
    pub fn updates_of(&self, link: &Link) -> [TopologyUpdate; 2] {
        [
            TopologyUpdate::LinkMeasurement {
                link_id: link.id,
                latency_ms: self.rtt_ms().unwrap_or(link.latency_ms),
                jitter_ms: self.jitter_ms().unwrap_or(link.jitter_ms),
                loss: self.loss_fraction().unwrap_or(link.loss),
            },
            TopologyUpdate::LinkUtilisation {
                link_id: link.id,
                utilisation: self.utilisation_fraction().unwrap_or(link.utilisation),
            },
        ]
    }
}

/// What a gateway says about one of its links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkReport {
    pub link: LinkId,
    pub health: RoutingHealth,
    pub figures: Figures,
}

/// The (origin, sequence) pair that names one record: what an acknowledgement carries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub origin: Origin,
    pub seq: u64,
}

/// One record: its origin's links as the origin last announced them. Immutable; built only
/// through [`Record::new`], so every record in a database is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    origin: Origin,
    seq: u64,
    digest: TopologyDigest,
    links: Vec<LinkReport>,
}

impl Record {
    /// `links` in increasing link id order, each once.
    pub fn new(
        origin: Origin,
        seq: u64,
        digest: TopologyDigest,
        links: Vec<LinkReport>,
    ) -> Result<Record, RecordError> {
        if links.len() > MAX_RECORD_LINKS {
            return Err(RecordError::TooManyLinks(links.len()));
        }
        for pair in links.windows(2) {
            if pair[0].link >= pair[1].link {
                return Err(RecordError::LinkOrder(pair[1].link));
            }
        }
        for r in &links {
            if let Some(value) = r.figures.loss.filter(|&v| v >= 10_000) {
                return Err(RecordError::Loss {
                    link: r.link,
                    value,
                });
            }
            if let Some(value) = r.figures.utilisation.filter(|&v| v > 10_000) {
                return Err(RecordError::Utilisation {
                    link: r.link,
                    value,
                });
            }
        }
        Ok(Record {
            origin,
            seq,
            digest,
            links,
        })
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Digest of the topology its origin runs with.
    pub fn digest(&self) -> TopologyDigest {
        self.digest
    }

    /// By increasing link id.
    pub fn links(&self) -> &[LinkReport] {
        &self.links
    }

    pub fn link(&self, link: LinkId) -> Option<&LinkReport> {
        self.links
            .binary_search_by_key(&link, |r| r.link)
            .ok()
            .map(|i| &self.links[i])
    }

    pub fn key(&self) -> RecordKey {
        RecordKey {
            origin: self.origin.clone(),
            seq: self.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(link: u32) -> LinkReport {
        LinkReport {
            link: LinkId(link),
            health: RoutingHealth::Up,
            figures: Figures::default(),
        }
    }

    fn origin() -> Origin {
        Origin::new("gw-a").unwrap()
    }

    #[test]
    fn origin_names_are_one_to_64_bytes() {
        assert_eq!(Origin::new(""), Err(RecordError::OriginLength(0)));
        assert!(Origin::new(&"g".repeat(64)).is_ok());
        assert_eq!(
            Origin::new(&"g".repeat(65)),
            Err(RecordError::OriginLength(65))
        );
        // A recording holds names: read back under the same rule.
        assert_eq!(serde_json::to_string(&origin()).unwrap(), "\"gw-a\"");
        assert_eq!(
            serde_json::from_str::<Origin>("\"gw-a\"").unwrap(),
            origin()
        );
        assert!(serde_json::from_str::<Origin>("\"\"").is_err());
    }

    #[test]
    fn links_must_be_sorted_unique_and_few() {
        let d = TopologyDigest(0);
        assert!(Record::new(origin(), 1, d, vec![report(1), report(2)]).is_ok());
        assert_eq!(
            Record::new(origin(), 1, d, vec![report(2), report(1)]),
            Err(RecordError::LinkOrder(LinkId(1)))
        );
        assert_eq!(
            Record::new(origin(), 1, d, vec![report(2), report(2)]),
            Err(RecordError::LinkOrder(LinkId(2)))
        );
        let many = (0..65).map(report).collect();
        assert_eq!(
            Record::new(origin(), 1, d, many),
            Err(RecordError::TooManyLinks(65))
        );
    }

    #[test]
    fn fractions_stay_in_range() {
        let d = TopologyDigest(0);
        let mut r = report(3);
        r.figures.loss = Some(10_000);
        assert_eq!(
            Record::new(origin(), 1, d, vec![r]),
            Err(RecordError::Loss {
                link: LinkId(3),
                value: 10_000
            })
        );
        r.figures.loss = None;
        r.figures.utilisation = Some(10_001);
        assert!(matches!(
            Record::new(origin(), 1, d, vec![r]),
            Err(RecordError::Utilisation { .. })
        ));
    }

    #[test]
    fn quantisation_rounds_to_the_quanta_and_clamps() {
        let f = Figures::quantise(Some(80.0004), Some(1.2346), Some(0.00125), Some(0.5));
        assert_eq!(f.rtt_us, Some(80_000));
        assert_eq!(f.jitter_us, Some(1_235));
        assert_eq!(f.loss, Some(13));
        assert_eq!(f.utilisation, Some(5_000));
        assert_eq!(f.rtt_ms(), Some(80.0));
        let f = Figures::quantise(Some(-1.0), Some(f64::NAN), Some(1.0), Some(1.5));
        assert_eq!((f.rtt_us, f.jitter_us), (None, None));
        assert_eq!(f.loss, Some(9_999), "a live link's loss stays below 1");
        assert_eq!(f.utilisation, Some(10_000));
    }
}
