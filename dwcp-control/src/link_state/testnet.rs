//! A network of flooders for the tests: gateways joined by links with fixed delays, messages
//! encoded, possibly lost, and decoded on arrival, on a simulated clock.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::topology::{LinkId, RoutingHealth};

use super::flood::{Action, Flooder};
use super::{Figures, LinkStateConfig, Message, Observation, Origin, TopologyDigest};

pub(super) const MS: u64 = 1_000_000;

pub(super) struct NetLink {
    pub a: usize,
    pub b: usize,
    pub id: LinkId,
    delay_ns: u64,
    pub up: bool,
}

enum Event {
    Deliver {
        to: usize,
        link: LinkId,
        bytes: Vec<u8>,
    },
    Wake(usize),
}

pub(super) struct Net {
    pub now: u64,
    pub nodes: Vec<Flooder>,
    pub links: Vec<NetLink>,
    config: LinkStateConfig,
    events: BTreeMap<(u64, u64), Event>,
    wakes: BTreeSet<(usize, u64)>,
    next_event: u64,
    /// Probability that a datagram is lost.
    pub loss: f64,
    rng: u64,
    pub datagrams: usize,
}

/// Test timers: quick holds, short lifetimes (ageing happens within a test).
pub(super) fn config() -> LinkStateConfig {
    LinkStateConfig {
        refresh_interval: Duration::from_secs(3),
        max_age: Duration::from_secs(10),
        retransmit_interval: Duration::from_millis(100),
        hold_initial: Duration::from_millis(200),
        hold_max: Duration::from_secs(2),
        hold_half_life: Duration::from_secs(10),
        ..LinkStateConfig::default()
    }
}

pub(super) fn name(node: usize) -> Origin {
    Origin::new(&format!("gw-{node}")).unwrap()
}

impl Net {
    /// Gateways `0..n` joined by `links` (ends, one-way delay in ms); link ids are positions.
    pub fn new(n: usize, links: &[(usize, usize, u64)], seed: u64) -> Net {
        let links: Vec<NetLink> = links
            .iter()
            .enumerate()
            .map(|(i, &(a, b, delay_ms))| NetLink {
                a,
                b,
                id: LinkId(i as u32),
                delay_ns: delay_ms * MS,
                up: true,
            })
            .collect();
        let mut net = Net {
            now: 0,
            nodes: Vec::new(),
            links,
            config: config(),
            events: BTreeMap::new(),
            wakes: BTreeSet::new(),
            next_event: 0,
            loss: 0.0,
            rng: seed,
            datagrams: 0,
        };
        net.nodes = (0..n).map(|i| net.flooder(i, 0)).collect();
        net
    }

    fn flooder(&self, node: usize, incarnation: u64) -> Flooder {
        Flooder::new(
            self.config,
            name(node),
            TopologyDigest(1),
            incarnation,
            &self.links_of(node),
        )
        .unwrap()
    }

    pub fn links_of(&self, node: usize) -> Vec<LinkId> {
        self.links
            .iter()
            .filter(|l| l.a == node || l.b == node)
            .map(|l| l.id)
            .collect()
    }

    /// Every gateway sees its links as they are: observed, and neighbours over those up.
    pub fn start(&mut self) {
        for node in 0..self.nodes.len() {
            self.bring_up(node);
        }
    }

    fn bring_up(&mut self, node: usize) {
        for link in self.links_of(node) {
            let up = self.links[link.0 as usize].up;
            self.observe(node, link, up, 10.0);
            if up {
                let actions = self.nodes[node].neighbour_up(link, self.now);
                self.apply(node, actions);
            }
        }
    }

    pub fn observe(&mut self, node: usize, link: LinkId, up: bool, rtt_ms: f64) {
        let observation = Observation {
            health: if up {
                RoutingHealth::Up
            } else {
                RoutingHealth::Down
            },
            figures: Figures::quantise(Some(rtt_ms), Some(0.5), Some(0.0), Some(0.1)),
        };
        let actions = self.nodes[node].observe(link, observation, self.now);
        self.apply(node, actions);
    }

    /// Cuts or heals link `i`; both ends see it after their own detection delays.
    pub fn set_link(&mut self, i: usize, up: bool, detect_a_ms: u64, detect_b_ms: u64) {
        self.links[i].up = up;
        let (a, b, id) = (self.links[i].a, self.links[i].b, self.links[i].id);
        let start = self.now;
        let mut ends = [(detect_a_ms, a), (detect_b_ms, b)];
        ends.sort();
        for (delay, node) in ends {
            self.run_until(start + delay * MS);
            self.observe(node, id, up, 10.0);
            if up {
                let actions = self.nodes[node].neighbour_up(id, self.now);
                self.apply(node, actions);
            } else {
                self.nodes[node].neighbour_down(id);
            }
        }
    }

    /// The gateway's agent restarts: a new flooder, new incarnation, links as they are.
    pub fn restart(&mut self, node: usize, incarnation: u64) {
        self.nodes[node] = self.flooder(node, incarnation);
        self.bring_up(node);
    }

    pub fn apply(&mut self, node: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { link, message } => self.send(node, link, &message),
                Action::Wake { at_ns } => {
                    if self.wakes.insert((node, at_ns)) {
                        self.push(at_ns, Event::Wake(node));
                    }
                }
                Action::DatabaseChanged => {}
            }
        }
    }

    fn send(&mut self, from: usize, link: LinkId, message: &Message) {
        self.datagrams += 1;
        let l = &self.links[link.0 as usize];
        let to = if l.a == from { l.b } else { l.a };
        let at = self.now + l.delay_ns;
        if self.unit() < self.loss {
            return;
        }
        let bytes = message.encode();
        self.push(at, Event::Deliver { to, link, bytes });
    }

    fn push(&mut self, at: u64, event: Event) {
        self.next_event += 1;
        self.events.insert((at, self.next_event), event);
    }

    /// splitmix64, as a fraction.
    fn unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Processes the next event; false if there is none.
    fn step(&mut self) -> bool {
        let Some(((at, _), event)) = self.events.pop_first() else {
            return false;
        };
        self.now = self.now.max(at);
        match event {
            Event::Deliver { to, link, bytes } => {
                // A message on a cut link is lost.
                if self.links[link.0 as usize].up {
                    let message = Message::decode(&bytes).expect("our own encoding decodes");
                    let actions = self.nodes[to].handle(link, message, self.now);
                    self.apply(to, actions);
                }
            }
            Event::Wake(node) => {
                self.wakes.remove(&(node, at));
                let actions = self.nodes[node].tick(self.now);
                self.apply(node, actions);
            }
        }
        true
    }

    pub fn run_until(&mut self, t: u64) {
        while self
            .events
            .first_key_value()
            .is_some_and(|((at, _), _)| *at <= t)
        {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Runs until no message is in flight, no timer is due and every record is acknowledged;
    /// false if that does not happen within `limit_ms`.
    pub fn settle(&mut self, limit_ms: u64) -> bool {
        let limit = self.now + limit_ms * MS;
        loop {
            let busy = self
                .events
                .iter()
                .any(|(&(at, _), e)| matches!(e, Event::Deliver { .. }) || at <= self.now);
            if !busy && self.nodes.iter().all(|n| n.unacknowledged() == 0) {
                return true;
            }
            if self.now > limit || !self.step() {
                return false;
            }
        }
    }

    /// Each gateway's database as (origin, sequence number, links) lines.
    pub fn databases(&self) -> Vec<Vec<String>> {
        self.nodes
            .iter()
            .map(|n| {
                n.database()
                    .records()
                    .map(|r| format!("{} #{} {:?}", r.origin(), r.seq(), r.links()))
                    .collect()
            })
            .collect()
    }
}
