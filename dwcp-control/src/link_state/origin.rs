//! Origination: what a gateway announces about its own links, and when. A link that goes down
//! is announced at once; one that comes back only after it has been good for a hold time,
//! which doubles with each further down and decays while the link stays quiet (flap damping,
//! as BGP's and IS-IS's), so a flapping link does not make the whole network recompute.
//! Figures are announced when they have moved enough, at most once per `figures_interval`.
//!
//! [`crate::liveness::Backoff`] is not reused: it forgets everything as soon as a link answers
//! again, and a flapping link answers between its flaps.
use std::collections::BTreeMap;

use crate::topology::{LinkId, RoutingHealth};

use super::config::{FigureThresholds, LinkStateConfig};
use super::record::{Figures, LinkReport};

/// What local liveness says of one of our links now: the health the state owner decides
/// (probes, interface, handshake) and the latest figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub health: RoutingHealth,
    pub figures: Figures,
}

#[derive(Clone, Debug)]
pub(super) struct Originator {
    config: LinkStateConfig,
    links: BTreeMap<LinkId, OwnLink>,
}

#[derive(Clone, Debug)]
struct OwnLink {
    observed: Option<Observation>,
    /// What our record says; `None` until the link is first observed.
    announced: Option<Observation>,
    /// When figures were last announced.
    figures_at_ns: u64,
    /// Since when the link has been good (not down), while it is.
    good_since_ns: Option<u64>,
    /// It went down from good since the last announcement: the next one says down, even if
    /// it is good again by then (a down between two announcements is still a flap).
    down_unannounced: bool,
    hold: Hold,
}

impl Originator {
    /// For the links this gateway terminates.
    pub(super) fn new(config: LinkStateConfig, links: &[LinkId]) -> Originator {
        let own = OwnLink {
            observed: None,
            announced: None,
            figures_at_ns: 0,
            good_since_ns: None,
            down_unannounced: false,
            hold: Hold::new(&config),
        };
        Originator {
            config,
            links: links.iter().map(|&l| (l, own.clone())).collect(),
        }
    }

    pub(super) fn terminates(&self, link: LinkId) -> bool {
        self.links.contains_key(&link)
    }

    /// Takes what liveness says of `link` (which this gateway must terminate). Figures out of
    /// range are clamped as [`Figures::quantise`] would.
    pub(super) fn observe(&mut self, link: LinkId, mut observation: Observation, now_ns: u64) {
        let Some(own) = self.links.get_mut(&link) else {
            return;
        };
        let f = &mut observation.figures;
        f.loss = f.loss.map(|v| v.min(9_999));
        f.utilisation = f.utilisation.map(|v| v.min(10_000));
        let was_good = own.observed.map(|o| o.health != RoutingHealth::Down);
        if observation.health == RoutingHealth::Down {
            if was_good == Some(true) {
                own.hold.down(now_ns, &self.config);
                own.down_unannounced = own
                    .announced
                    .is_some_and(|a| a.health != RoutingHealth::Down);
            }
            own.good_since_ns = None;
        } else if own.good_since_ns.is_none() {
            own.good_since_ns = Some(now_ns);
        }
        own.observed = Some(observation);
    }

    /// Announces what is due by `now_ns`; true if a report changed (re-originate).
    pub(super) fn advance(&mut self, now_ns: u64) -> bool {
        let mut changed = false;
        for own in self.links.values_mut() {
            if own.due_at(&self.config).is_some_and(|t| t <= now_ns) {
                own.announce(now_ns);
                changed = true;
            }
        }
        changed
    }

    /// When [`Originator::advance`] will next change a report.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.links
            .values()
            .filter_map(|own| own.due_at(&self.config))
            .min()
    }

    /// What our record says, by link id; links never observed are left out (no word yet).
    pub(super) fn reports(&self) -> Vec<LinkReport> {
        self.links
            .iter()
            .filter_map(|(&link, own)| {
                own.announced.map(|a| LinkReport {
                    link,
                    health: a.health,
                    figures: a.figures,
                })
            })
            .collect()
    }
}

impl OwnLink {
    /// When the announcement must change, if it must: at once for a down or a change of
    /// health, after the hold for a recovery, after the figures interval for figures that
    /// moved. The first observation is announced at once, whatever it is, and so is the
    /// first recovery of a link down since the start: a gateway's first words on its link
    /// after a start are no flap.
    fn due_at(&self, config: &LinkStateConfig) -> Option<u64> {
        let observed = self.observed?;
        let Some(announced) = self.announced else {
            return Some(0);
        };
        let down = RoutingHealth::Down;
        if observed.health == down || self.down_unannounced {
            return (announced.health != down).then_some(0);
        }
        if announced.health == down {
            // Until the link has once gone down from good, it has not flapped: a link down
            // since the start (its far end not up yet) is announced up as soon as it is.
            let hold = if self.hold.last_down_ns.is_some() {
                self.hold.hold_ns
            } else {
                0
            };
            return self.good_since_ns.map(|t| t.saturating_add(hold));
        }
        if announced.health != observed.health {
            return Some(0);
        }
        moved(&announced.figures, &observed.figures, &config.thresholds)
            .then(|| self.figures_at_ns + config.figures_interval.as_nanos() as u64)
    }

    fn announce(&mut self, now_ns: u64) {
        let Some(observed) = self.observed else {
            return;
        };
        let went_down = std::mem::take(&mut self.down_unannounced);
        self.announced = Some(if observed.health == RoutingHealth::Down || went_down {
            // A dead link's figures mean nothing; leaving them out keeps the record still.
            Observation {
                health: RoutingHealth::Down,
                figures: Figures::default(),
            }
        } else {
            self.figures_at_ns = now_ns;
            observed
        });
    }
}

/// A link's flap damping: how long it must be good before its recovery is announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hold {
    hold_ns: u64,
    last_down_ns: Option<u64>,
}

impl Hold {
    fn new(config: &LinkStateConfig) -> Hold {
        Hold {
            hold_ns: config.hold_initial.as_nanos() as u64,
            last_down_ns: None,
        }
    }

    /// The link went down: the hold of its coming recovery doubles, after halving once per
    /// half-life since the last down; once it has decayed below the initial hold, a down
    /// starts over from it.
    fn down(&mut self, now_ns: u64, config: &LinkStateConfig) {
        let initial = config.hold_initial.as_nanos() as u64;
        if let Some(last) = self.last_down_ns {
            let half_lives = now_ns.saturating_sub(last) / config.hold_half_life.as_nanos() as u64;
            let decayed = self.hold_ns >> half_lives.min(63);
            self.hold_ns = if decayed < initial {
                initial
            } else {
                decayed
                    .saturating_mul(2)
                    .min(config.hold_max.as_nanos() as u64)
            };
        }
        self.last_down_ns = Some(now_ns);
    }
}

/// Whether `new` differs enough from `old` to be announced (or published to the store).
pub(crate) fn moved(old: &Figures, new: &Figures, t: &FigureThresholds) -> bool {
    let moved = |old: Option<u32>, new: Option<u32>, floor: u32| match (old, new) {
        (Some(o), Some(n)) => {
            f64::from(o.abs_diff(n)) > (f64::from(o) * t.relative).max(f64::from(floor))
        }
        (None, None) => false,
        _ => true,
    };
    let wide = |v: Option<u16>| v.map(u32::from);
    moved(old.rtt_us, new.rtt_us, t.rtt_floor_us)
        || moved(old.jitter_us, new.jitter_us, t.jitter_floor_us)
        || moved(wide(old.loss), wide(new.loss), t.loss_floor.into())
        || moved(
            wide(old.utilisation),
            wide(new.utilisation),
            t.utilisation_floor.into(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;
    const L: LinkId = LinkId(4);

    fn config() -> LinkStateConfig {
        LinkStateConfig {
            hold_initial: Duration::from_secs(1),
            hold_max: Duration::from_secs(8),
            hold_half_life: Duration::from_secs(30),
            ..LinkStateConfig::default()
        }
    }

    fn obs(health: RoutingHealth, rtt_ms: f64) -> Observation {
        Observation {
            health,
            figures: Figures::quantise(Some(rtt_ms), Some(1.0), Some(0.0), Some(0.3)),
        }
    }

    fn up(rtt_ms: f64) -> Observation {
        obs(RoutingHealth::Up, rtt_ms)
    }

    fn down() -> Observation {
        obs(RoutingHealth::Down, 0.0)
    }

    fn announced(o: &Originator) -> Option<RoutingHealth> {
        o.reports().first().map(|r| r.health)
    }

    /// A link at rest whose loss estimate flips by one probe in a hundred (0 and 0.99 %) is
    /// not re-announced; a loss of 5 % is.
    #[test]
    fn one_probe_of_loss_noise_is_no_move_and_real_loss_is() {
        let t = FigureThresholds::default();
        let with_loss = |loss: f64| Figures::quantise(Some(50.0), Some(1.0), Some(loss), Some(0.3));
        assert!(!moved(&with_loss(0.0), &with_loss(0.0099), &t));
        assert!(!moved(&with_loss(0.0099), &with_loss(0.0), &t));
        assert!(moved(&with_loss(0.0), &with_loss(0.05), &t));
    }

    /// Observes `observation` at `at_ms` and announces what is due then.
    fn step(o: &mut Originator, at_ms: u64, observation: Observation) -> bool {
        o.observe(L, observation, at_ms * MS);
        o.advance(at_ms * MS)
    }

    #[test]
    fn the_first_word_is_at_once_and_unknown_links_say_nothing() {
        let mut o = Originator::new(config(), &[L, LinkId(9)]);
        assert!(o.reports().is_empty());
        assert_eq!(o.next_due(), None);
        o.observe(LinkId(5), up(10.0), 0);
        assert!(!o.advance(0), "not ours");
        assert!(step(&mut o, 0, up(10.0)));
        assert_eq!(o.reports().len(), 1, "link 9 never observed");
        assert_eq!(o.reports()[0].figures.rtt_us, Some(10_000));
    }

    /// A down that is over before the next announcement (the task that announces was late)
    /// is still announced, and the recovery held: it was a flap.
    #[test]
    fn a_down_over_before_it_was_announced_is_announced_and_its_recovery_held() {
        let mut o = Originator::new(config(), &[L]);
        step(&mut o, 0, up(10.0));
        o.observe(L, down(), 5_000 * MS);
        assert!(step(&mut o, 5_200, up(10.0)), "the down is announced");
        assert_eq!(announced(&o), Some(RoutingHealth::Down));
        assert_eq!(o.next_due(), Some(6_200 * MS), "up after the 1 s hold");
        assert!(o.advance(6_200 * MS));
        assert_eq!(announced(&o), Some(RoutingHealth::Up));
        // A degraded spell over before the next announcement is no flap: nothing to say.
        o.observe(L, obs(RoutingHealth::Degraded, 10.0), 7_000 * MS);
        assert!(!step(&mut o, 7_100, up(10.0)));
        assert_eq!(announced(&o), Some(RoutingHealth::Up));
    }

    #[test]
    fn down_is_at_once_and_up_after_the_hold() {
        let mut o = Originator::new(config(), &[L]);
        step(&mut o, 0, up(10.0));
        assert!(step(&mut o, 5_000, down()), "down at once");
        assert_eq!(announced(&o), Some(RoutingHealth::Down));
        assert_eq!(o.reports()[0].figures, Figures::default());
        assert!(!step(&mut o, 5_100, up(10.0)));
        assert_eq!(
            o.next_due(),
            Some(6_100 * MS),
            "good for the 1 s hold first"
        );
        assert!(!o.advance(6_099 * MS));
        assert!(o.advance(6_100 * MS));
        assert_eq!(announced(&o), Some(RoutingHealth::Up));
    }

    #[test]
    fn a_link_down_since_the_start_comes_up_at_once_and_is_held_after_its_first_flap() {
        let mut o = Originator::new(config(), &[L]);
        assert!(step(&mut o, 0, down()), "the far end is not up yet");
        assert_eq!(announced(&o), Some(RoutingHealth::Down));
        assert!(step(&mut o, 300, up(10.0)), "no flap: up at once");
        assert_eq!(announced(&o), Some(RoutingHealth::Up));
        assert!(step(&mut o, 500, down()));
        assert!(!step(&mut o, 600, up(10.0)));
        assert_eq!(o.next_due(), Some(1_600 * MS), "a flap: the 1 s hold");
    }

    #[test]
    fn a_recovery_cut_short_starts_the_hold_again() {
        let mut o = Originator::new(config(), &[L]);
        step(&mut o, 0, up(10.0));
        step(&mut o, 100, down());
        step(&mut o, 200, up(10.0));
        step(&mut o, 700, down());
        step(&mut o, 800, up(10.0));
        // Second down within the half-life: a 2 s hold from 800 ms.
        assert_eq!(o.next_due(), Some(2_800 * MS));
        assert!(!o.advance(2_799 * MS));
        assert!(o.advance(2_800 * MS));
    }

    #[test]
    fn a_flapping_link_is_held_longer_up_to_the_cap_and_the_hold_decays() {
        let mut o = Originator::new(config(), &[L]);
        step(&mut o, 0, up(10.0));
        let mut t = 1_000;
        let mut holds = Vec::new();
        for _ in 0..6 {
            step(&mut o, t, down());
            step(&mut o, t + 10, up(10.0));
            let due = o.next_due().unwrap() / MS;
            holds.push(due - (t + 10));
            assert!(o.advance(due * MS));
            t = due + 100;
        }
        assert_eq!(holds, [1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
        // 60 s (two half-lives) without a down: 8 s decays to 2 s, and this down doubles it.
        t += 60_000;
        step(&mut o, t, down());
        step(&mut o, t, up(10.0));
        assert_eq!(o.next_due(), Some((t + 4_000) * MS));
        // Five half-lives later the hold is back to the initial one.
        t += 150_000;
        step(&mut o, t, down());
        step(&mut o, t, up(10.0));
        assert_eq!(o.next_due(), Some((t + 1_000) * MS));
    }

    #[test]
    fn health_changes_between_up_and_degraded_are_at_once() {
        let mut o = Originator::new(config(), &[L]);
        step(&mut o, 0, up(10.0));
        assert!(step(&mut o, 10, obs(RoutingHealth::Degraded, 10.0)));
        assert_eq!(announced(&o), Some(RoutingHealth::Degraded));
        assert!(step(&mut o, 20, up(10.0)));
    }

    #[test]
    fn figures_go_out_when_they_moved_enough_at_most_once_a_second() {
        let mut o = Originator::new(config(), &[L]);
        step(&mut o, 0, up(100.0));
        // 5 % and 0.9 ms moves: noise.
        assert!(!step(&mut o, 2_000, up(105.0)));
        assert_eq!(o.next_due(), None);
        let mut s = Originator::new(config(), &[L]);
        step(&mut s, 0, up(5.0));
        assert!(!step(&mut s, 2_000, up(5.9)), "below the 1 ms floor");
        // 20 %: announced, but not twice within a second.
        assert!(step(&mut o, 2_100, up(120.0)));
        assert_eq!(o.reports()[0].figures.rtt_us, Some(120_000));
        assert!(!step(&mut o, 2_500, up(150.0)));
        assert_eq!(o.next_due(), Some(3_100 * MS));
        assert!(o.advance(3_100 * MS));
        assert_eq!(o.reports()[0].figures.rtt_us, Some(150_000));
        // A figure appearing or vanishing is a move.
        let mut no_loss = up(150.0);
        no_loss.figures.loss = None;
        assert!(step(&mut o, 5_000, no_loss));
    }

    #[test]
    fn out_of_range_figures_are_clamped() {
        let mut o = Originator::new(config(), &[L]);
        let mut bad = up(1.0);
        bad.figures.loss = Some(60_000);
        bad.figures.utilisation = Some(60_000);
        step(&mut o, 0, bad);
        let f = o.reports()[0].figures;
        assert_eq!((f.loss, f.utilisation), (Some(9_999), Some(10_000)));
    }
}
