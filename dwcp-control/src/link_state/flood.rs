//! Flooding: one gateway's side of the protocol, as a pure state machine. It originates our
//! record from local liveness ([`super::origin`]), installs what neighbours send
//! ([`Database`]), passes every new record on to every neighbour but the one it came from,
//! acknowledges what it receives, and sends again what a neighbour has not acknowledged
//! within `retransmit_interval` (OSPF's retransmission lists over an unreliable datagram
//! channel).
//!
//! A neighbour is the gateway at the far end of one of our links, while the link is up (the
//! probes answer): each link is an adjacency of its own, and messages from a link that is not
//! up are ignored. When a link comes up, our whole database is sent over it; so is it when the
//! far end's incarnation changes (its agent restarted while the link stayed up, which the
//! probes, answered in the kernel, do not show). Sending everything rather than a summary
//! first (OSPF's database description, IS-IS's CSNP): a database holds one record of about a
//! hundred bytes per gateway, 5 KB for 50 gateways, so a summary would save little and cost a
//! round trip before the first record moves. Duplicates are acknowledged and go no further;
//! where the neighbour's copy is the newer, it answers with it.
//!
//! No sockets and no clock: inputs come with their time, and the machine answers with
//! [`Action`]s (datagrams to send, "the database changed", when to call [`Flooder::tick`]).
use std::collections::BTreeMap;

use thiserror::Error;
use tracing::warn;

use crate::topology::LinkId;

use super::config::{LinkStateConfig, LinkStateConfigError};
use super::database::{Database, Install};
use super::digest::TopologyDigest;
use super::origin::{Observation, Originator};
use super::record::{Origin, RecordKey, MAX_RECORD_LINKS};
use super::wire::{Advert, Body, Message};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `message` (`message.encode()`, one datagram) to the neighbour over `link`.
    Send { link: LinkId, message: Message },
    /// The database changed: routing's view ([`Database::topology_updates`]) may have.
    DatabaseChanged,
    /// Call [`Flooder::tick`] at this time (the earliest deadline pending; a later call to
    /// any method may move it).
    Wake { at_ns: u64 },
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum LinkStateError {
    #[error(transparent)]
    Config(#[from] LinkStateConfigError),
    #[error("this gateway terminates {0} links: a record holds at most {MAX_RECORD_LINKS}")]
    TooManyLinks(usize),
}

/// What a flooder has done since it started, for the operator: records received from
/// neighbours (duplicates included), records sent to them (retransmissions included), records
/// removed because their origin stopped refreshing them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodCounts {
    pub received: u64,
    pub flooded: u64,
    pub aged_out: u64,
}

#[derive(Clone, Debug)]
pub struct Flooder {
    config: LinkStateConfig,
    incarnation: u64,
    db: Database,
    originator: Originator,
    /// Links that are up, with what we owe the neighbour over each.
    neighbours: BTreeMap<LinkId, Neighbour>,
    /// When our record was last originated: it is refreshed `refresh_interval` later.
    originated_ns: Option<u64>,
    counts: FloodCounts,
}

#[derive(Clone, Debug, Default)]
struct Neighbour {
    /// The neighbour's incarnation, once it has sent something.
    incarnation: Option<u64>,
    /// Records the neighbour has not acknowledged: by origin, the sequence number sent and
    /// when (`None`: not sent yet). The database holds the record itself.
    unacked: BTreeMap<Origin, (u64, Option<u64>)>,
}

impl Flooder {
    /// Gateway `me`, running a topology of `digest` and terminating `links`. `incarnation`
    /// must differ at each start of the gateway (its start time in ns since the epoch will
    /// do), so that neighbours notice a restart.
    pub fn new(
        config: LinkStateConfig,
        me: Origin,
        digest: TopologyDigest,
        incarnation: u64,
        links: &[LinkId],
    ) -> Result<Flooder, LinkStateError> {
        config.validate()?;
        if links.len() > MAX_RECORD_LINKS {
            return Err(LinkStateError::TooManyLinks(links.len()));
        }
        Ok(Flooder {
            config,
            incarnation,
            db: Database::new(me, digest, config.max_age),
            originator: Originator::new(config, links),
            neighbours: BTreeMap::new(),
            originated_ns: None,
            counts: FloodCounts::default(),
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The links whose neighbour is up, by id.
    pub fn neighbours(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.neighbours.keys().copied()
    }

    pub fn counts(&self) -> FloodCounts {
        self.counts
    }

    /// How long ago `origin` made its current record: ours from our clock; another's from
    /// the lifetime left, taking its `max_age` to be ours (as every gateway's configuration
    /// should have it), so it is the time since origination less the time spent in flight.
    pub fn record_age_ns(&self, origin: &Origin, now_ns: u64) -> Option<u64> {
        if origin == self.db.me() {
            return self.originated_ns.map(|t| now_ns.saturating_sub(t));
        }
        let left_ns = u64::from(self.db.advert(origin, now_ns)?.lifetime_ms) * 1_000_000;
        Some(ns(self.config.max_age).saturating_sub(left_ns))
    }

    /// Records sent and not yet acknowledged, over all neighbours.
    pub fn unacknowledged(&self) -> usize {
        self.neighbours.values().map(|n| n.unacked.len()).sum()
    }

    /// What local liveness says of one of our links. The announcement goes out at the next
    /// [`Flooder::tick`] (asked for with a `Wake` at `now_ns` when due at once), so that the
    /// changes of one instant make one record.
    pub fn observe(&mut self, link: LinkId, observation: Observation, now_ns: u64) -> Vec<Action> {
        if self.originator.terminates(link) {
            self.originator.observe(link, observation, now_ns);
        } else {
            warn!(%link, "link state of a link this gateway does not terminate: ignored");
        }
        self.finish(now_ns, Vec::new())
    }

    /// The link to a neighbour is up: flooding over it starts with our whole database. A
    /// gateway that has not originated yet does so now, so the neighbour always hears our
    /// incarnation (and answers a restart with what we missed).
    pub fn neighbour_up(&mut self, link: LinkId, now_ns: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.originator.terminates(link) {
            warn!(%link, "neighbour over a link this gateway does not terminate: ignored");
            return self.finish(now_ns, out);
        }
        self.neighbours.insert(link, Neighbour::default());
        if self.db.get(self.db.me()).is_none() {
            self.originator.advance(now_ns);
            self.originate(now_ns, &mut out);
        }
        self.send_all(link);
        self.flush(now_ns, &mut out);
        self.finish(now_ns, out)
    }

    /// The link is down: nothing more goes over it, and what is owed is forgotten (the whole
    /// database goes when it is back up).
    pub fn neighbour_down(&mut self, link: LinkId) {
        self.neighbours.remove(&link);
    }

    /// A message that came over `link`.
    pub fn handle(&mut self, link: LinkId, message: Message, now_ns: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(neighbour) = self.neighbours.get_mut(&link) else {
            return self.finish(now_ns, out);
        };
        let incarnation = message.incarnation();
        if neighbour
            .incarnation
            .replace(incarnation)
            .is_some_and(|before| before != incarnation)
        {
            // The neighbour restarted: it lost its database.
            self.send_all(link);
        }
        self.expire(now_ns, &mut out);
        match message.into_body() {
            Body::Update(adverts) => self.receive(link, adverts, now_ns, &mut out),
            Body::Ack(keys) => {
                for key in &keys {
                    self.acknowledged(link, key);
                }
            }
        }
        self.flush(now_ns, &mut out);
        self.finish(now_ns, out)
    }

    /// Timers: records aged out, announcements due, our refresh, retransmissions.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.expire(now_ns, &mut out);
        let refresh = self
            .originated_ns
            .is_some_and(|t| now_ns >= t.saturating_add(ns(self.config.refresh_interval)));
        if self.originator.advance(now_ns) || refresh {
            self.originate(now_ns, &mut out);
        }
        self.flush(now_ns, &mut out);
        self.finish(now_ns, out)
    }

    fn receive(&mut self, link: LinkId, adverts: Vec<Advert>, now_ns: u64, out: &mut Vec<Action>) {
        let mut acks = Vec::new();
        let mut reoriginate = false;
        self.counts.received += adverts.len() as u64;
        for advert in adverts {
            let key = advert.record.key();
            match self.db.install(&advert, now_ns) {
                Install::Installed => {
                    self.acknowledged(link, &key);
                    self.enqueue(Some(link), &key);
                    out.push(Action::DatabaseChanged);
                    acks.push(key);
                }
                Install::Duplicate => {
                    self.acknowledged(link, &key);
                    acks.push(key);
                }
                Install::Older => {
                    if let Some(ours) = self.db.get(&key.origin).map(|r| r.key()) {
                        self.enqueue_to(link, &ours);
                    }
                }
                Install::OwnNewer => {
                    reoriginate = true;
                    acks.push(key);
                }
            }
        }
        if reoriginate {
            self.originate(now_ns, out);
        }
        out.extend(
            Message::acks(self.incarnation, acks)
                .into_iter()
                .map(|message| Action::Send { link, message }),
        );
    }

    /// Our record, new from what we announce, installed and queued for every neighbour.
    fn originate(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        let record = self
            .db
            .originate(self.originator.reports())
            .expect("our reports are valid: few links (checked in new), sorted, clamped");
        self.originated_ns = Some(now_ns);
        self.enqueue(None, &record.key());
        out.push(Action::DatabaseChanged);
    }

    /// Queues a record for every neighbour but `except`, replacing any older copy queued.
    fn enqueue(&mut self, except: Option<LinkId>, key: &RecordKey) {
        let links: Vec<LinkId> = self
            .neighbours
            .keys()
            .copied()
            .filter(|&l| Some(l) != except)
            .collect();
        for link in links {
            self.enqueue_to(link, key);
        }
    }

    fn enqueue_to(&mut self, link: LinkId, key: &RecordKey) {
        if let Some(n) = self.neighbours.get_mut(&link) {
            n.unacked.insert(key.origin.clone(), (key.seq, None));
        }
    }

    fn send_all(&mut self, link: LinkId) {
        let keys: Vec<RecordKey> = self.db.records().map(|r| r.key()).collect();
        for key in &keys {
            self.enqueue_to(link, key);
        }
    }

    /// The neighbour over `link` has the record `key` (it acknowledged or sent it): what we
    /// queued for it of that origin is done unless it is newer.
    fn acknowledged(&mut self, link: LinkId, key: &RecordKey) {
        if let Some(n) = self.neighbours.get_mut(&link) {
            if n.unacked
                .get(&key.origin)
                .is_some_and(|&(seq, _)| seq <= key.seq)
            {
                n.unacked.remove(&key.origin);
            }
        }
    }

    fn expire(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        let gone = self.db.expire(now_ns);
        if gone.is_empty() {
            return;
        }
        self.counts.aged_out += gone.len() as u64;
        for n in self.neighbours.values_mut() {
            for origin in &gone {
                n.unacked.remove(origin);
            }
        }
        out.push(Action::DatabaseChanged);
    }

    /// Sends what is queued and not sent yet, and what waited `retransmit_interval` for its
    /// acknowledgement: one update (or as few as it fits) per neighbour.
    fn flush(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        let retransmit = ns(self.config.retransmit_interval);
        for (&link, n) in &mut self.neighbours {
            let mut adverts = Vec::new();
            for (origin, (_, sent)) in &mut n.unacked {
                if sent.is_some_and(|t| now_ns < t.saturating_add(retransmit)) {
                    continue;
                }
                if let Some(advert) = self.db.advert(origin, now_ns) {
                    *sent = Some(now_ns);
                    adverts.push(advert);
                }
            }
            self.counts.flooded += adverts.len() as u64;
            out.extend(
                Message::updates(self.incarnation, adverts)
                    .into_iter()
                    .map(|message| Action::Send { link, message }),
            );
        }
    }

    /// One `DatabaseChanged` at most, then when to wake (`now_ns` for what is due already).
    fn finish(&self, now_ns: u64, mut out: Vec<Action>) -> Vec<Action> {
        let changed = out.contains(&Action::DatabaseChanged);
        out.retain(|a| *a != Action::DatabaseChanged);
        if changed {
            out.push(Action::DatabaseChanged);
        }
        if let Some(at_ns) = self.next_deadline() {
            out.push(Action::Wake {
                at_ns: at_ns.max(now_ns),
            });
        }
        out
    }

    fn next_deadline(&self) -> Option<u64> {
        let retransmit = ns(self.config.retransmit_interval);
        let resend = self
            .neighbours
            .values()
            .flat_map(|n| n.unacked.values())
            .map(|&(_, sent)| sent.map_or(0, |t| t.saturating_add(retransmit)))
            .min();
        let refresh = self
            .originated_ns
            .map(|t| t.saturating_add(ns(self.config.refresh_interval)));
        [
            resend,
            refresh,
            self.db.next_expiry(),
            self.originator.next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

fn ns(d: std::time::Duration) -> u64 {
    d.as_nanos() as u64
}

#[cfg(test)]
mod tests;
