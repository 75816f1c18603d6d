//! The link-state database: the newest record of every origin, each aged out when its origin
//! stops refreshing it, and the link state routing applies, derived from all of them.
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topology::{LinkId, RoutingHealth, Topology, TopologyUpdate};

use super::digest::TopologyDigest;
use super::record::{Figures, LinkReport, Origin, Record, RecordError};
use super::wire::Advert;

/// What [`Database::install`] did with a record, which says what the flooder owes the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Newer than our copy, or the first of its origin: installed. Acknowledge, flood on.
    Installed,
    /// The copy we have: acknowledge, nothing else.
    Duplicate,
    /// Older than our copy: send ours back instead.
    Older,
    /// A copy of our own record that is newer than ours, or as new with other content: we
    /// restarted and lost our counter. Ours stays; our next sequence number is now above it,
    /// so re-originate.
    OwnNewer,
}

#[derive(Clone, Debug)]
struct Entry {
    record: Arc<Record>,
    /// `None` for our own record: we refresh it, it never ages out here.
    expires_ns: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Database {
    me: Origin,
    digest: TopologyDigest,
    max_age: Duration,
    /// Sequence number of our next record: 1 at start, then above every copy of ours seen.
    next_seq: u64,
    entries: BTreeMap<Origin, Entry>,
}

impl Database {
    /// The database of gateway `me`, running a topology of `digest`, whose own records live
    /// `max_age` elsewhere.
    pub fn new(me: Origin, digest: TopologyDigest, max_age: Duration) -> Database {
        Database {
            me,
            digest,
            max_age,
            next_seq: 1,
            entries: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &Origin {
        &self.me
    }

    /// Digest of the topology we run with.
    pub fn digest(&self) -> TopologyDigest {
        self.digest
    }

    /// The newest record of every origin, ours included, by origin.
    pub fn records(&self) -> impl Iterator<Item = &Arc<Record>> {
        self.entries.values().map(|e| &e.record)
    }

    pub fn get(&self, origin: &Origin) -> Option<&Arc<Record>> {
        self.entries.get(origin).map(|e| &e.record)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The newer record of an origin replaces the older; an older or equal one is ignored
    /// (equal sequence numbers are the same record: only a restarted origin reuses one, and
    /// it jumps above it as soon as it sees it, see [`Install::OwnNewer`]).
    pub fn install(&mut self, advert: &Advert, now_ns: u64) -> Install {
        let record = &advert.record;
        let current = self.entries.get(record.origin()).map(|e| &e.record);
        if *record.origin() == self.me {
            return match current {
                Some(ours) if ours.seq() > record.seq() => Install::Older,
                Some(ours) if **ours == **record => Install::Duplicate,
                _ => {
                    self.next_seq = self.next_seq.max(record.seq().saturating_add(1));
                    Install::OwnNewer
                }
            };
        }
        match current {
            Some(c) if c.seq() > record.seq() => Install::Older,
            Some(c) if c.seq() == record.seq() => Install::Duplicate,
            _ => {
                let lifetime_ns = u64::from(advert.lifetime_ms) * 1_000_000;
                self.entries.insert(
                    record.origin().clone(),
                    Entry {
                        record: record.clone(),
                        expires_ns: Some(now_ns.saturating_add(lifetime_ns)),
                    },
                );
                Install::Installed
            }
        }
    }

    /// Our new record, with the next sequence number, installed.
    pub fn originate(&mut self, links: Vec<LinkReport>) -> Result<Arc<Record>, RecordError> {
        let record = Arc::new(Record::new(
            self.me.clone(),
            self.next_seq,
            self.digest,
            links,
        )?);
        self.next_seq = self.next_seq.saturating_add(1);
        self.entries.insert(
            self.me.clone(),
            Entry {
                record: record.clone(),
                expires_ns: None,
            },
        );
        Ok(record)
    }

    /// The current record of `origin` as sent now: with its remaining lifetime (ours: the
    /// whole `max_age`).
    pub fn advert(&self, origin: &Origin, now_ns: u64) -> Option<Advert> {
        let e = self.entries.get(origin)?;
        let lifetime_ns = match e.expires_ns {
            None => self.max_age.as_nanos() as u64,
            Some(t) => t.saturating_sub(now_ns),
        };
        Some(Advert {
            lifetime_ms: (lifetime_ns / 1_000_000).min(u32::MAX.into()) as u32,
            record: e.record.clone(),
        })
    }

    /// Removes the records whose lifetime has run out by `now_ns`; returns their origins.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Origin> {
        let gone: Vec<Origin> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_ns.is_some_and(|t| t <= now_ns))
            .map(|(o, _)| o.clone())
            .collect();
        for o in &gone {
            self.entries.remove(o);
        }
        gone
    }

    pub fn next_expiry(&self) -> Option<u64> {
        self.entries.values().filter_map(|e| e.expires_ns).min()
    }

    /// Records of gateways that run another topology file than ours (shown, never applied).
    pub fn foreign(&self) -> impl Iterator<Item = &Arc<Record>> {
        self.records().filter(|r| r.digest() != self.digest)
    }

    /// The link state routing applies, link by link. A link is as bad as the worse of its
    /// reports (down if either end says down), and each figure the worse of those reported:
    /// both ends measure the same link, and routing around the worse view is the safe side.
    /// Every record counts, ours too (damped like the others), so that every gateway computes
    /// on the same view; records of another topology file do not (their link ids may mean
    /// other links). By link id.
    pub fn reported_links(&self) -> Vec<ReportedLink> {
        let mut links: BTreeMap<LinkId, ReportedLink> = BTreeMap::new();
        for record in self.records().filter(|r| r.digest() == self.digest) {
            for r in record.links() {
                let l = links.entry(r.link).or_insert_with(|| ReportedLink {
                    link: r.link,
                    health: r.health,
                    figures: Figures::default(),
                    reported_by: Vec::new(),
                });
                match r.health.severity().cmp(&l.health.severity()) {
                    Ordering::Greater => {
                        l.health = r.health;
                        l.reported_by = vec![record.origin().clone()];
                    }
                    Ordering::Equal => l.reported_by.push(record.origin().clone()),
                    Ordering::Less => {}
                }
                let f = &mut l.figures;
                *f = Figures {
                    rtt_us: f.rtt_us.max(r.figures.rtt_us),
                    jitter_us: f.jitter_us.max(r.figures.jitter_us),
                    loss: f.loss.max(r.figures.loss),
                    utilisation: f.utilisation.max(r.figures.utilisation),
                };
            }
        }
        for l in links
            .values_mut()
            .filter(|l| l.health == RoutingHealth::Down)
        {
            // A dead link's figures mean nothing to routing; leaving them out keeps the view
            // still when the second end's report of a cut comes in.
            l.figures = Figures::default();
        }
        links.into_values().collect()
    }

    /// [`Database::reported_links`] as updates of `topology`: health, then the figures (none
    /// for a link down). Links no record reports keep `topology`'s state, and figures no
    /// report carries `topology`'s figures. Links `topology` does not know are left out.
    pub fn topology_updates(&self, topology: &Topology) -> Vec<TopologyUpdate> {
        let mut updates = Vec::new();
        for reported in self.reported_links() {
            let Some(link) = topology.link(reported.link) else {
                continue;
            };
            updates.push(TopologyUpdate::LinkHealth {
                link_id: reported.link,
                health: reported.health,
            });
            if reported.health != RoutingHealth::Down {
                updates.extend(reported.figures.updates_of(link));
            }
        }
        updates
    }
}

/// A link as the records report it ([`Database::reported_links`]): what routing applies, and
/// what the state owner is given (`Input::LinkStateView`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedLink {
    pub link: LinkId,
    /// The worse of the reports.
    pub health: RoutingHealth,
    /// The worse of each figure reported; none for a link down.
    pub figures: Figures,
    /// The gateways whose report says `health`, by name.
    pub reported_by: Vec<Origin>,
}

impl ReportedLink {
    /// "gw-a, gw-b": who reported it, for the operator.
    pub fn reporters(&self) -> String {
        let names: Vec<&str> = self.reported_by.iter().map(Origin::as_str).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{LinkConfig, RegionConfig, TopologyConfig};

    const MS: u64 = 1_000_000;
    const DIGEST: TopologyDigest = TopologyDigest(7);

    fn origin(name: &str) -> Origin {
        Origin::new(name).unwrap()
    }

    fn report(link: u32, health: RoutingHealth, figures: Figures) -> LinkReport {
        LinkReport {
            link: LinkId(link),
            health,
            figures,
        }
    }

    fn advert(name: &str, seq: u64, lifetime_ms: u32, links: Vec<LinkReport>) -> Advert {
        advert_of(name, seq, lifetime_ms, DIGEST, links)
    }

    fn advert_of(
        name: &str,
        seq: u64,
        lifetime_ms: u32,
        digest: TopologyDigest,
        links: Vec<LinkReport>,
    ) -> Advert {
        Advert {
            lifetime_ms,
            record: Arc::new(Record::new(origin(name), seq, digest, links).unwrap()),
        }
    }

    fn db() -> Database {
        Database::new(origin("gw-me"), DIGEST, Duration::from_secs(60))
    }

    #[test]
    fn newer_replaces_older_and_equal_are_ignored() {
        let mut db = db();
        assert_eq!(
            db.install(&advert("gw-b", 5, 1000, vec![]), 0),
            Install::Installed
        );
        assert_eq!(
            db.install(&advert("gw-b", 5, 1000, vec![]), 0),
            Install::Duplicate
        );
        assert_eq!(
            db.install(&advert("gw-b", 4, 1000, vec![]), 0),
            Install::Older
        );
        let down = vec![report(1, RoutingHealth::Down, Figures::default())];
        assert_eq!(
            db.install(&advert("gw-b", 6, 1000, down), 0),
            Install::Installed
        );
        assert_eq!(db.get(&origin("gw-b")).unwrap().seq(), 6);
        assert_eq!(db.len(), 1);
    }

    #[test]
    fn records_age_out_with_the_lifetime_they_came_with() {
        let mut db = db();
        db.install(&advert("gw-b", 1, 1000, vec![]), 0);
        db.install(&advert("gw-c", 1, 500, vec![]), 100 * MS);
        db.originate(vec![]).unwrap();
        assert_eq!(db.next_expiry(), Some(600 * MS));
        assert_eq!(
            db.advert(&origin("gw-b"), 250 * MS).unwrap().lifetime_ms,
            750,
            "sent on with what is left"
        );
        assert_eq!(
            db.advert(&origin("gw-me"), 250 * MS).unwrap().lifetime_ms,
            60_000
        );
        assert!(db.expire(599 * MS).is_empty());
        assert_eq!(db.expire(600 * MS), vec![origin("gw-c")]);
        assert_eq!(db.expire(10_000 * MS), vec![origin("gw-b")]);
        assert!(
            db.get(&origin("gw-me")).is_some(),
            "ours never ages out here"
        );
        assert_eq!(db.next_expiry(), None);
        // Gone, so any copy is new again (its origin is back).
        assert_eq!(
            db.install(&advert("gw-b", 1, 1000, vec![]), 0),
            Install::Installed
        );
    }

    #[test]
    fn a_restarted_gateway_jumps_above_its_old_sequence() {
        let mut db = db();
        assert_eq!(db.originate(vec![]).unwrap().seq(), 1);
        // Our record from before the restart comes back from a neighbour.
        let old = advert("gw-me", 57, 60_000, vec![]);
        assert_eq!(db.install(&old, 0), Install::OwnNewer);
        assert_eq!(db.get(&origin("gw-me")).unwrap().seq(), 1, "ours stays");
        assert_eq!(db.originate(vec![]).unwrap().seq(), 58);
        // Our own copies coming back: the same is a duplicate, an older one is answered.
        assert_eq!(
            db.install(&advert("gw-me", 58, 60_000, vec![]), 0),
            Install::Duplicate
        );
        assert_eq!(db.install(&old, 0), Install::Older);
        // As new but different: only a restart makes one; jump again.
        let other = vec![report(1, RoutingHealth::Up, Figures::default())];
        assert_eq!(
            db.install(&advert("gw-me", 58, 60_000, other), 0),
            Install::OwnNewer
        );
        assert_eq!(db.originate(vec![]).unwrap().seq(), 59);
    }

    #[test]
    fn before_originating_any_copy_of_ours_moves_the_sequence() {
        let mut db = db();
        assert_eq!(
            db.install(&advert("gw-me", 3, 60_000, vec![]), 0),
            Install::OwnNewer
        );
        assert!(db.get(&origin("gw-me")).is_none());
        assert_eq!(db.originate(vec![]).unwrap().seq(), 4);
    }

    fn topology() -> Topology {
        let region = |name: &str, lon: f64| RegionConfig {
            name: name.into(),
            description: String::new(),
            latitude: 0.0,
            longitude: lon,
            country: "US".into(),
            provider: "aws".into(),
            capacity_mbps: 1000.0,
            gateways: Vec::new(),
        };
        let mut l1 = LinkConfig::new(1, "a", "b", 1000.0);
        l1.latency_ms = Some(50.0);
        l1.loss = 0.01;
        let l2 = LinkConfig::new(2, "b", "c", 1000.0);
        let config = TopologyConfig::from_entries(
            vec![region("a", 0.0), region("b", 10.0), region("c", 20.0)],
            vec![l1, l2],
            vec![],
        );
        Topology::from_config(&config, None).unwrap()
    }

    #[test]
    fn a_link_is_down_if_either_end_says_so_with_the_worse_figures() {
        let mut db = db();
        let up = |rtt_ms, util| Figures::quantise(Some(rtt_ms), Some(1.0), None, Some(util));
        db.install(
            &advert(
                "gw-a",
                1,
                1000,
                vec![report(1, RoutingHealth::Up, up(60.0, 0.2))],
            ),
            0,
        );
        db.install(
            &advert(
                "gw-b",
                1,
                1000,
                vec![report(1, RoutingHealth::Up, up(62.5, 0.1))],
            ),
            0,
        );
        let updates = db.topology_updates(&topology());
        assert_eq!(
            updates,
            vec![
                TopologyUpdate::LinkHealth {
                    link_id: LinkId(1),
                    health: RoutingHealth::Up
                },
                TopologyUpdate::LinkMeasurement {
                    link_id: LinkId(1),
                    latency_ms: 62.5,
                    jitter_ms: 1.0,
                    loss: 0.01,
                },
                TopologyUpdate::LinkUtilisation {
                    link_id: LinkId(1),
                    utilisation: 0.2
                },
            ],
            "the worse of each figure; loss nobody measured keeps the topology's"
        );
        let down = report(1, RoutingHealth::Down, Figures::default());
        db.install(&advert("gw-b", 2, 1000, vec![down]), 0);
        let one_end_down = db.topology_updates(&topology());
        assert_eq!(
            one_end_down,
            [TopologyUpdate::LinkHealth {
                link_id: LinkId(1),
                health: RoutingHealth::Down
            }],
            "no figures for a dead link"
        );
        let reporters = |db: &Database| -> Vec<String> {
            let links = db.reported_links();
            assert_eq!(links.len(), 1);
            links[0].reported_by.iter().map(|o| o.to_string()).collect()
        };
        assert_eq!(reporters(&db), ["gw-b"], "who says it is down");
        db.install(&advert("gw-a", 2, 1000, vec![down]), 0);
        assert_eq!(
            db.topology_updates(&topology()),
            one_end_down,
            "the second end's word changes nothing routing sees"
        );
        assert_eq!(reporters(&db), ["gw-a", "gw-b"]);
        assert!(topology().apply(&db.topology_updates(&topology())).is_ok());
    }

    #[test]
    fn records_of_another_topology_and_unknown_links_are_not_applied() {
        let mut db = db();
        let down = |link| vec![report(link, RoutingHealth::Down, Figures::default())];
        db.install(&advert_of("gw-x", 1, 1000, TopologyDigest(8), down(1)), 0);
        db.install(&advert("gw-b", 1, 1000, down(9)), 0);
        assert!(db.topology_updates(&topology()).is_empty());
        let foreign: Vec<_> = db.foreign().map(|r| r.origin().to_string()).collect();
        assert_eq!(foreign, ["gw-x"]);
    }
}
