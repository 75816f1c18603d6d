//! The cluster store (issue 18), its pure parts: which store an agent uses (`[store]`), where
//! each thing lives under the key prefix, and what a gateway's membership entry holds. The
//! etcd client is `dwcp-agent`'s (`store/`); the ledgers' rules are `bandwidth::ledger`'s.
//!
//! Keys, under the prefix (`/dwcp/v1` by default):
//! - `<prefix>/ledgers/<link id, 10 digits>`: the link's [`Ledger`](crate::bandwidth::Ledger)
//! - `<prefix>/reservations/<id, 20 digits>`: a [`Reservation`](crate::bandwidth::Reservation)
//! - `<prefix>/gateways/<name>`: a [`GatewayRecord`], on the gateway's lease
//! - `<prefix>/topology`: the [`PublishedTopology`] every gateway runs
//! - `<prefix>/figures/<name>`: the [`StoredFigures`](crate::link_state::StoredFigures) a
//!   gateway measured on its links (one key per gateway, no lease: see `link_state::stored`)
//! - `<prefix>/removed/<id, 20 digits>`: a [`Removal`], written with a cancel or a preemption
//!   (so that every gateway tells a preemption apart), until the reservation's end
//! - `<prefix>/requests/<request id>`: an [`AdmissionRecord`], the first admission of a
//!   client's `request_id`, until its end
//! - `<prefix>/admission-leader`: the gateway that decides every gateway's admissions, on its
//!   lease
//! - `<prefix>/admission-queue/<admitter>/<id, 20 digits>`: a [`QueuedAdmission`] another
//!   gateway asks the leader to decide, until decided
//! - `<prefix>/admission-verdicts/<unix s, 12 digits>/<admitter>/<id, 20 digits>`: the
//!   leader's [`AdmissionVerdict`], for a few seconds (time first: one range delete sweeps
//!   them)
//!
//! Fixed-width numbers so that keys sort as their numbers do.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bandwidth::{
    Admission, BandwidthError, BatchOutcome, Reservation, ReservationId, ReservationRequest,
    UnixSeconds,
};
use crate::topology::{
    error::line_of, EdgeConfig, LinkConfig, LinkId, RegionConfig, Topology, TopologyConfig,
    TopologyError,
};

pub const DEFAULT_PREFIX: &str = "/dwcp/v1";

/// Where an agent keeps what gateways must agree on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// Its own files: one gateway, or a small fixed set up (today's behaviour).
    #[default]
    File,
    Etcd(EtcdConfig),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, at least one.
    pub endpoints: Vec<String>,
    /// Starts with `/`, no trailing `/`.
    pub prefix: String,
    pub tls: Option<EtcdTls>,
}

/// PEM files: the CA that signed the members' certificates, and this gateway's client
/// certificate and key (etcd's `--client-cert-auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The keys of one deployment (one prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// `prefix` as validated by the configuration (a trailing `/` is dropped).
    pub fn new(prefix: &str) -> KeyLayout {
        KeyLayout {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn ledgers(&self) -> String {
        format!("{}/ledgers/", self.prefix)
    }

    pub fn ledger(&self, link: LinkId) -> String {
        format!("{}{:010}", self.ledgers(), link.0)
    }

    /// The link of a ledger key.
    pub fn ledger_link(&self, key: &str) -> Option<LinkId> {
        let digits = key.strip_prefix(&self.ledgers())?;
        (digits.len() == 10).then(|| digits.parse().ok().map(LinkId))?
    }

    pub fn reservations(&self) -> String {
        format!("{}/reservations/", self.prefix)
    }

    pub fn reservation(&self, id: ReservationId) -> String {
        format!("{}{:020}", self.reservations(), id.0)
    }

    /// Written once per admission: its revision, unique in the cluster, is the new
    /// reservation's id (gateways never pick the same one).
    pub fn reservation_ids(&self) -> String {
        format!("{}/reservation-ids", self.prefix)
    }

    /// Held (on a short lease) by the one gateway whose admissions go next, once it lost the
    /// race for its links a few times; the others' writes wait while it is there.
    pub fn admission_turn(&self) -> String {
        format!("{}/admission-turn", self.prefix)
    }

    /// Held, on its lease, by the gateway whose batches decide every gateway's admissions
    /// (`admission_queue`): with one writer the gateways no longer race for the ledgers.
    pub fn admission_leader(&self) -> String {
        format!("{}/admission-leader", self.prefix)
    }

    pub fn admission_queue(&self) -> String {
        format!("{}/admission-queue/", self.prefix)
    }

    /// `admitter`: the asking connection's token (no `/`).
    pub fn queued_admission(&self, admitter: &str, id: ReservationId) -> String {
        format!("{}{admitter}/{:020}", self.admission_queue(), id.0)
    }

    /// The asking connection and the reservation of a queued admission's key.
    pub fn queued_for<'k>(&self, key: &'k str) -> Option<(&'k str, ReservationId)> {
        let rest = key.strip_prefix(&self.admission_queue())?;
        let (admitter, id) = rest.split_once('/')?;
        Some((admitter, fixed_width_id(id)?))
    }

    pub fn verdicts(&self) -> String {
        format!("{}/admission-verdicts/", self.prefix)
    }

    pub fn verdict(&self, decided_at: UnixSeconds, admitter: &str, id: ReservationId) -> String {
        format!(
            "{}{decided_at:012}/{admitter}/{:020}",
            self.verdicts(),
            id.0
        )
    }

    /// The end of the range of verdicts decided before `t` (they sort by time).
    pub fn verdicts_before(&self, t: UnixSeconds) -> String {
        format!("{}{t:012}", self.verdicts())
    }

    /// The asking connection and the reservation of a verdict's key.
    pub fn verdict_for<'k>(&self, key: &'k str) -> Option<(&'k str, ReservationId)> {
        let rest = key.strip_prefix(&self.verdicts())?;
        let mut parts = rest.split('/');
        let (_, admitter, id) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some((admitter, fixed_width_id(id)?))
    }

    pub fn removals(&self) -> String {
        format!("{}/removed/", self.prefix)
    }

    pub fn removal(&self, id: ReservationId) -> String {
        format!("{}{:020}", self.removals(), id.0)
    }

    pub fn requests(&self) -> String {
        format!("{}/requests/", self.prefix)
    }

    /// `request_id` as checked by `bandwidth::check_request_id` (no `/`).
    pub fn request(&self, request_id: &str) -> String {
        format!("{}{request_id}", self.requests())
    }

    pub fn gateways(&self) -> String {
        format!("{}/gateways/", self.prefix)
    }

    pub fn gateway(&self, name: &str) -> String {
        format!("{}{name}", self.gateways())
    }

    pub fn topology(&self) -> String {
        format!("{}/topology", self.prefix)
    }

    pub fn figures(&self) -> String {
        format!("{}/figures/", self.prefix)
    }

    pub fn figures_of(&self, gateway: &str) -> String {
        format!("{}{gateway}", self.figures())
    }
}

/// Why a reservation left the store before its end, written in the transaction that removed
/// it: a mirror that sees the key go tells its owner "preempted" rather than "cancelled", and
/// a retried request does not book again what was undone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removal {
    /// The reservation's end: the mark is of no use after it (the expiry removes it).
    pub end: UnixSeconds,
    /// The higher-priority reservation that took its place; `None`: cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted_by: Option<ReservationId>,
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.preempted_by {
            Some(by) => write!(f, "preempted by reservation {by}"),
            None => f.write_str("cancelled"),
        }
    }
}

/// A client's request as first admitted under its `request_id`. The key's creation revision
/// is the reservation's id, so a retry admits the same reservation (the admission's write
/// holds only while that id is free: it is booked once) or finds it there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionRecord {
    /// The request as the client sent it: a retry must send the same.
    pub request: ReservationRequest,
    /// What the first attempt validated it as (its start, when it said "now"), id aside.
    pub candidate: Reservation,
}

impl AdmissionRecord {
    /// What a retry of `request` admits: the first attempt's candidate under `id`, or
    /// `RequestIdReused` if `request` is another request under the same id.
    pub fn retry(
        &self,
        request: &ReservationRequest,
        id: ReservationId,
    ) -> Result<Reservation, BandwidthError> {
        if *request != self.request {
            return Err(BandwidthError::RequestIdReused {
                request_id: request.request_id.clone().unwrap_or_default(),
                id,
            });
        }
        Ok(Reservation {
            id,
            ..self.candidate.clone()
        })
    }
}

/// A reservation id written in 20 digits, as keys have it.
fn fixed_width_id(digits: &str) -> Option<ReservationId> {
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(ReservationId))?
}

/// An admission a gateway queued for the admission leader: the candidate as the asking
/// gateway validated it, and the reservable bit/s of each link of its path as its topology
/// has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuedAdmission {
    pub reservation: Reservation,
    pub reservable: Vec<(LinkId, u64)>,
}

impl QueuedAdmission {
    /// A queued admission as read from the store, checked as the leader must (another
    /// gateway wrote it): a reservation that validation could have admitted, whose every link
    /// has a reservable figure.
    pub fn decode(bytes: &[u8]) -> Result<QueuedAdmission, String> {
        let queued: QueuedAdmission = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        queued.reservation.check()?;
        if let Some(link) = queued
            .reservation
            .path
            .iter()
            .find(|l| !queued.reservable.iter().any(|(r, _)| r == *l))
        {
            return Err(format!(
                "reservation {}: no reservable figure for link {link} of its path",
                queued.reservation.id
            ));
        }
        Ok(queued)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a queued admission serialises")
    }
}

/// What the admission leader decided for a queued admission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum AdmissionVerdict {
    Admitted(Admission),
    /// `BandwidthError::InsufficientBandwidth`'s figures.
    Refused {
        link: LinkId,
        requested_bps: u64,
        free_bps: u64,
        reservable_bps: u64,
        start: UnixSeconds,
        end: UnixSeconds,
    },
    /// Another reservation is stored under its id.
    IdTaken,
    /// Not a queued admission the leader could decide (why).
    Invalid(String),
}

impl AdmissionVerdict {
    /// The verdict on an outcome of a batch; `None` for one left for a later batch.
    pub fn of(outcome: &BatchOutcome) -> Option<AdmissionVerdict> {
        Some(match outcome {
            BatchOutcome::Admitted(a) => AdmissionVerdict::Admitted(a.clone()),
            BatchOutcome::Refused(BandwidthError::InsufficientBandwidth {
                link,
                requested_bps,
                free_bps,
                reservable_bps,
                start,
                end,
            }) => AdmissionVerdict::Refused {
                link: *link,
                requested_bps: *requested_bps,
                free_bps: *free_bps,
                reservable_bps: *reservable_bps,
                start: *start,
                end: *end,
            },
            BatchOutcome::Refused(other) => AdmissionVerdict::Invalid(other.to_string()),
            BatchOutcome::IdTaken => AdmissionVerdict::IdTaken,
            BatchOutcome::Deferred => return None,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a verdict serialises")
    }
}

/// The topology of every gateway in etcd mode (`dwcp topology push`): `[[region]]`,
/// `[[link]]` and `[[edge]]` tables as TOML, and its generation (1, 2, ... one per push).
/// What only one gateway knows (its interfaces, keys, store endpoints) is never in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTopology {
    pub generation: u64,
    pub source: String,
}

impl PublishedTopology {
    /// The topology tables of `text` (a whole agent.toml, or a file of only those tables),
    /// validated with errors naming `text`'s lines, as the TOML to publish. Every other table
    /// of `text` is left out.
    pub fn source_of(text: &str) -> Result<(TopologyConfig, String), TopologyError> {
        /// The topology's tables; the others are not looked at.
        #[derive(Deserialize)]
        struct Tables {
            #[serde(default)]
            region: Vec<toml::Spanned<RegionConfig>>,
            #[serde(default)]
            link: Vec<toml::Spanned<LinkConfig>>,
            #[serde(default)]
            edge: Vec<toml::Spanned<EdgeConfig>>,
        }
        let tables: Tables = toml::from_str(text).map_err(|e| TopologyError::Parse {
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().to_string(),
        })?;
        let config = TopologyConfig {
            regions: tables.region,
            links: tables.link,
            edges: tables.edge,
        };
        if config.regions.is_empty() {
            return Err(TopologyError::Parse {
                line: None,
                message: "no [[region]]: nothing to publish".into(),
            });
        }
        Topology::from_config(&config, Some(text))?;
        let source = toml::to_string(&config).map_err(|e| TopologyError::Parse {
            line: None,
            message: format!("writing the topology as TOML: {e}"),
        })?;
        Ok((config, source))
    }
}

/// A gateway's membership entry: kept while its lease is renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    pub name: String,
    pub region: String,
    /// Where its API or underlay can be reached, as the operator reads it.
    pub address: String,
    pub version: String,
    /// The generation of the published topology it runs; 0 while it runs its file's.
    pub topology_generation: u64,
}

/// A registered gateway as listed (`GET /v1/gateways`, `dwcp show gateways`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayView {
    #[serde(flatten)]
    pub record: GatewayRecord,
    /// Seconds since its lease was last renewed (whole seconds: etcd's TTL resolution);
    /// `None` when the lease had gone by the time it was asked.
    pub last_contact_seconds: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_as_their_numbers_and_parse_back() {
        let k = KeyLayout::new("/dwcp/v1/");
        assert_eq!(k.ledger(LinkId(7)), "/dwcp/v1/ledgers/0000000007");
        assert!(k.ledger(LinkId(9)) < k.ledger(LinkId(10)));
        assert!(k.reservation(ReservationId(9)) < k.reservation(ReservationId(10)));
        assert_eq!(
            k.ledger_link(&k.ledger(LinkId(u32::MAX))),
            Some(LinkId(u32::MAX))
        );
        assert_eq!(k.ledger_link("/dwcp/v1/ledgers/7"), None);
        assert_eq!(k.ledger_link("/other/ledgers/0000000007"), None);
        assert_eq!(k.gateway("gw-a"), "/dwcp/v1/gateways/gw-a");
        assert_eq!(k.topology(), "/dwcp/v1/topology");
        assert_eq!(k.figures_of("gw-a"), "/dwcp/v1/figures/gw-a");
    }

    #[test]
    fn admission_queue_and_verdict_keys_parse_back_and_verdicts_sort_by_time() {
        let k = KeyLayout::new("/dwcp/v1");
        let queued = k.queued_admission("7-1-0", ReservationId(42));
        assert_eq!(
            queued,
            "/dwcp/v1/admission-queue/7-1-0/00000000000000000042"
        );
        assert_eq!(k.queued_for(&queued), Some(("7-1-0", ReservationId(42))));
        assert_eq!(k.queued_for("/dwcp/v1/admission-queue/7-1-0/42"), None);
        assert_eq!(k.queued_for("/dwcp/v1/admission-queue/x"), None);
        // 20 digits past u64::MAX, +1 as a sign: not an id.
        assert_eq!(
            k.queued_for("/dwcp/v1/admission-queue/a/99999999999999999999"),
            None
        );
        assert_eq!(
            k.queued_for("/dwcp/v1/admission-queue/a/+0000000000000000001"),
            None
        );
        let verdict = k.verdict(1_700_000_000, "7-1-0", ReservationId(42));
        assert_eq!(k.verdict_for(&verdict), Some(("7-1-0", ReservationId(42))));
        assert_eq!(k.verdict_for("/dwcp/v1/admission-verdicts/1/a/1"), None);
        assert_eq!(k.verdict_for(&format!("{verdict}/more")), None);
        // A range delete up to `verdicts_before(t)` takes every verdict before t, none after.
        assert!(k.verdict(999, "z", ReservationId(u64::MAX)) < k.verdicts_before(1_000));
        assert!(k.verdict(1_000, "0", ReservationId(0)) >= k.verdicts_before(1_000));
        assert!(k.verdicts_before(1_000) > k.verdicts());
    }

    #[test]
    fn a_queued_admission_is_checked_as_from_another_gateway() {
        let reservation = Reservation {
            id: ReservationId(5),
            owner: "t".into(),
            source: "a".into(),
            destination: "b".into(),
            class: dwcp_common::QosClass::Bulk,
            rate_bps: 10_000_000,
            start: 1000,
            end: 2000,
            priority: 2,
            path: vec![LinkId(1), LinkId(2)],
        };
        let good = QueuedAdmission {
            reservation: reservation.clone(),
            reservable: vec![(LinkId(1), 800), (LinkId(2), 800)],
        };
        assert_eq!(QueuedAdmission::decode(&good.encode()), Ok(good.clone()));
        let missing = QueuedAdmission {
            reservable: vec![(LinkId(1), 800)],
            ..good.clone()
        };
        assert!(QueuedAdmission::decode(&missing.encode())
            .unwrap_err()
            .contains("link 2"));
        let repeated = QueuedAdmission {
            reservation: Reservation {
                path: vec![LinkId(1), LinkId(1)],
                ..reservation
            },
            ..good
        };
        assert!(QueuedAdmission::decode(&repeated.encode())
            .unwrap_err()
            .contains("repeats"));
        assert!(QueuedAdmission::decode(b"{\"reservation\": 1}").is_err());
        assert!(QueuedAdmission::decode(&[0xff; 40]).is_err());
    }

    #[test]
    fn verdicts_carry_each_outcome_and_a_deferred_one_has_none() {
        let refusal = BandwidthError::InsufficientBandwidth {
            link: LinkId(3),
            requested_bps: 10,
            free_bps: 4,
            reservable_bps: 8,
            start: 1,
            end: 2,
        };
        let verdict = AdmissionVerdict::of(&BatchOutcome::Refused(refusal)).unwrap();
        let back: AdmissionVerdict = serde_json::from_slice(&verdict.encode()).unwrap();
        assert_eq!(back, verdict);
        assert!(matches!(
            back,
            AdmissionVerdict::Refused {
                link: LinkId(3),
                free_bps: 4,
                ..
            }
        ));
        assert_eq!(
            AdmissionVerdict::of(&BatchOutcome::IdTaken),
            Some(AdmissionVerdict::IdTaken)
        );
        assert_eq!(AdmissionVerdict::of(&BatchOutcome::Deferred), None);
    }

    #[test]
    fn a_retry_admits_the_first_attempts_terms_and_another_request_is_refused() {
        let k = KeyLayout::new("/dwcp/v1");
        assert_eq!(k.request("ab-1"), "/dwcp/v1/requests/ab-1");
        assert_eq!(
            k.removal(ReservationId(3)),
            "/dwcp/v1/removed/00000000000000000003"
        );
        let request: ReservationRequest = serde_json::from_str(
            r#"{"source":"a","destination":"b","class":"bulk","rate":"10M","end":2000,
                "path":[1],"request_id":"ab-1"}"#,
        )
        .unwrap();
        let candidate = Reservation {
            id: ReservationId(0),
            owner: String::new(),
            source: "a".into(),
            destination: "b".into(),
            class: dwcp_common::QosClass::Bulk,
            rate_bps: 10_000_000,
            // "now" when the first attempt was validated; a retry validates a later one.
            start: 1000,
            end: 2000,
            priority: 2,
            path: vec![LinkId(1)],
        };
        let record = AdmissionRecord {
            request: request.clone(),
            candidate: candidate.clone(),
        };
        let back: AdmissionRecord =
            serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        let again = back.retry(&request, ReservationId(77)).unwrap();
        assert_eq!(
            again,
            Reservation {
                id: ReservationId(77),
                ..candidate
            }
        );
        let other = ReservationRequest {
            rate: crate::bandwidth::RawNumber::Text("20M".into()),
            ..request
        };
        let e = back.retry(&other, ReservationId(77)).unwrap_err();
        assert_eq!(e.http_status(), 409);
        assert!(
            e.to_string()
                .contains("request_id ab-1 was used for another request (reservation 77)"),
            "{e}"
        );
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(crate::bandwidth::check_request_id(bad).is_err(), "{bad:?}");
        }
        crate::bandwidth::check_request_id("0f3a-B_9.x").unwrap();
    }

    const AGENT_TOML: &str = concat!(
        "[gateway]\nname = \"gw\"\nregion = \"us-east-1\"\nlan_interfaces = [\"lan0\"]\n\n",
        include_str!("../../tests/fixtures/three_regions.toml")
    );

    #[test]
    fn the_published_source_is_the_topology_alone_and_reads_back_the_same() {
        let (config, source) = PublishedTopology::source_of(AGENT_TOML).unwrap();
        assert!(!source.contains("[gateway]") && !source.contains("lan0"));
        let back = TopologyConfig::from_toml_str(&source).unwrap();
        assert!(config.diff(&back).is_empty(), "{:?}", config.diff(&back));
        assert_eq!(Topology::from_config(&back, None).unwrap().links().len(), 3);
    }

    #[test]
    fn a_bad_topology_is_refused_with_the_files_line() {
        let bad = AGENT_TOML.replace("capacity_mbps = 900", "capacity_mbps = -900");
        let line = bad
            .lines()
            .position(|l| l.contains("-900"))
            .map(|i| i + 1)
            .unwrap();
        let e = PublishedTopology::source_of(&bad).unwrap_err().to_string();
        // The entry's line: the [[link]] header or one of its keys, at or before the value.
        let named: Vec<usize> = e
            .split("line ")
            .skip(1)
            .filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        assert!(named.iter().any(|l| *l <= line && line - *l < 12), "{e}");
        assert!(PublishedTopology::source_of("[gateway]\nname = \"x\"\n").is_err());
        assert!(PublishedTopology::source_of("[[region]\n").is_err());
    }

    #[test]
    fn diff_names_what_a_push_would_change() {
        let (old, _) = PublishedTopology::source_of(AGENT_TOML).unwrap();
        let changed = AGENT_TOML
            .replace("capacity_mbps = 900", "capacity_mbps = 2000")
            .replace("country = \"IN\"", "country = \"IN\"\ndescription2 = 1");
        // An unknown key is a parse error, not a change.
        assert!(PublishedTopology::source_of(&changed).is_err());
        let changed = AGENT_TOML.replace("capacity_mbps = 900", "capacity_mbps = 2000");
        let (new, _) = PublishedTopology::source_of(&changed).unwrap();
        assert_eq!(
            old.diff(&new),
            ["~ link 2 euw1-aps1 (eu-west-1 -- ap-south-1): capacity_mbps 900.0 -> 2000.0"]
        );
        let mut fewer = new.clone();
        fewer.links.pop();
        let d = old.diff(&fewer);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[1].starts_with("- link 3 "), "{d:?}");
        assert!(new.diff(&new).is_empty());
    }
}
