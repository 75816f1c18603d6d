//! The link monitor: periodic snapshots of the kernel's per-link state plus the sender's
//! counts, turned into link events (down, up, degraded, recovered) with their reasons.
//!
//! Up/down follows the kernel's rule exactly ([`kernel_usable`]), so the agent never believes
//! a link is in use that the fast path skips, or the reverse, at the time of a snapshot.

use std::{fmt, time::Duration};

use dwcp_common::{LinkConfig, LinkState, LINK_F_MONITORED};
use thiserror::Error;

use super::LossWindow;

/// The fast path's liveness rule: a link carries traffic iff it answered within `detect_ns`
/// and has answered `up_after` times in a row since its last outage.
pub fn kernel_usable(now_ns: u64, state: &LinkState, detect_ns: u64, up_after: u32) -> bool {
    state.last_reply_ns != 0
        && now_ns.saturating_sub(state.last_reply_ns) <= detect_ns
        && state.good_streak >= up_after
}

/// Reads the kernel's per-link measurements. The dataplane implements it on the pinned
/// `LINK_STATE` map; a link never written reads as all zeroes.
pub trait LinkStateSource {
    fn link_state(&self, link_id: u32) -> Result<LinkState, LinkStateReadError>;
}

#[derive(Debug, Error)]
#[error("cannot read the state of link {link_id}: {source}")]
pub struct LinkStateReadError {
    pub link_id: u32,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// What the monitor needs from the probe sender: which links are probed, how many probes
/// each has sent, and a way to slow down the probes of a dead link.
pub trait ProbeCounts {
    fn links(&self) -> Vec<u32>;
    fn sent(&self, link_id: u32) -> Option<u64>;
    fn set_reprobe_backoff(&self, link_id: u32, dead: bool);
}

impl<P: ProbeCounts + ?Sized> ProbeCounts for Box<P> {
    fn links(&self) -> Vec<u32> {
        (**self).links()
    }
    fn sent(&self, link_id: u32) -> Option<u64> {
        (**self).sent(link_id)
    }
    fn set_reprobe_backoff(&self, link_id: u32, dead: bool) {
        (**self).set_reprobe_backoff(link_id, dead)
    }
}

/// Thresholds of the monitor. The defaults are those of issue 3.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MonitorConfig {
    /// Probe interval (the sender's).
    pub interval: Duration,
    /// No reply for `detect_multiplier x interval` means down.
    pub detect_multiplier: u32,
    /// Consecutive good replies before a link that was down is used again (hysteresis).
    pub up_after: u32,
    /// Loss is measured over this sliding window.
    pub loss_window: Duration,
    /// No loss figure (so no loss verdict) until the window holds this many probes.
    pub loss_min_probes: u64,
    /// Loss ratio above which an up link is degraded.
    pub degraded_loss: f64,
    /// Smoothed RTT above which an up link is degraded (links differ, so off by default).
    pub degraded_rtt: Option<Duration>,
    /// RTT jitter above which an up link is degraded (off by default).
    pub degraded_jitter: Option<Duration>,
    /// How often the kernel state is read.
    pub poll_interval: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_millis(10),
            detect_multiplier: 3,
            up_after: 5,
            loss_window: Duration::from_secs(1),
            loss_min_probes: 20,
            degraded_loss: 0.05,
            degraded_rtt: None,
            degraded_jitter: None,
            poll_interval: Duration::from_millis(10),
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum MonitorConfigError {
    #[error("probe interval must be at least 1 ms, got {0:?}")]
    Interval(Duration),
    #[error("detect_multiplier must be at least 1")]
    DetectMultiplier,
    #[error("up_after must be at least 1 (a link needs one reply to be up)")]
    UpAfter,
    #[error("degraded_loss must be in (0, 1], got {0}")]
    DegradedLoss(f64),
    #[error("loss_window ({window:?}) must hold at least loss_min_probes ({min}) probes at the probe interval ({interval:?})")]
    LossWindow {
        window: Duration,
        min: u64,
        interval: Duration,
    },
    #[error("poll_interval must be between 1 ms and the detection time {detect:?}, got {poll:?}")]
    PollInterval { poll: Duration, detect: Duration },
}

impl MonitorConfig {
    pub fn detect_ns(&self) -> u64 {
        self.interval.as_nanos() as u64 * self.detect_multiplier as u64
    }

    pub fn validate(&self) -> Result<(), MonitorConfigError> {
        if self.interval < Duration::from_millis(1) {
            return Err(MonitorConfigError::Interval(self.interval));
        }
        if self.detect_multiplier == 0 {
            return Err(MonitorConfigError::DetectMultiplier);
        }
        if self.up_after == 0 {
            return Err(MonitorConfigError::UpAfter);
        }
        if !(self.degraded_loss > 0.0 && self.degraded_loss <= 1.0) {
            return Err(MonitorConfigError::DegradedLoss(self.degraded_loss));
        }
        let fits = self.loss_window.as_nanos() / self.interval.as_nanos();
        if fits < self.loss_min_probes as u128 {
            return Err(MonitorConfigError::LossWindow {
                window: self.loss_window,
                min: self.loss_min_probes,
                interval: self.interval,
            });
        }
        let detect = Duration::from_nanos(self.detect_ns());
        if self.poll_interval < Duration::from_millis(1) || self.poll_interval > detect {
            return Err(MonitorConfigError::PollInterval {
                poll: self.poll_interval,
                detect,
            });
        }
        Ok(())
    }

    /// The liveness part of a `LINK_CONFIG` entry that makes the kernel apply the same rule
    /// as this monitor (the link's underlay identity comes from `plan::with_link_ends`).
    pub fn link_config(&self) -> LinkConfig {
        LinkConfig {
            flags: LINK_F_MONITORED,
            up_after: self.up_after,
            detect_ns: self.detect_ns(),
            ..Default::default()
        }
    }
}

/// Whether the fast path uses a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    /// Monitoring began less than the detection time plus the hysteresis count ago, and the
    /// link is not usable yet.
    Unknown,
    Up,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum DownReason {
    /// The link answered before and has now been silent longer than the detection time.
    NoReply { silent_ns: u64, detect_ns: u64 },
    /// The link has not answered a single probe since monitoring began.
    NeverReplied { waited_ns: u64 },
    /// The link answers, but not `up_after` probes in a row since its last gap, so the kernel
    /// does not use it.
    Unstable { good_streak: u32, up_after: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum DegradeReason {
    Loss { ratio: f64, threshold: f64 },
    Rtt { srtt_ns: u64, threshold_ns: u64 },
    Jitter { jitter_ns: u64, threshold_ns: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum LinkEventKind {
    /// The fast path no longer uses the link. Clears any degradation.
    Down { reason: DownReason },
    /// The fast path uses the link (again): it answered `good_streak` probes in a row.
    /// `outage_ns` is how long it was down, if it was.
    Up {
        good_streak: u32,
        outage_ns: Option<u64>,
    },
    /// The link is up but worse than a threshold.
    Degraded { reason: DegradeReason },
    /// A degraded link is within all thresholds again.
    Recovered { loss: Option<f64>, srtt_ns: u64 },
}

/// A change of a link's condition, as seen at `at_ns` (`CLOCK_MONOTONIC`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LinkEvent {
    pub link_id: u32,
    pub at_ns: u64,
    #[serde(flatten)]
    pub kind: LinkEventKind,
}

const NS_PER_MS: f64 = 1e6;

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::NoReply {
                silent_ns,
                detect_ns,
            } => write!(
                f,
                "no reply for {:.1} ms (detection time {:.1} ms)",
                *silent_ns as f64 / NS_PER_MS,
                *detect_ns as f64 / NS_PER_MS
            ),
            DownReason::NeverReplied { waited_ns } => write!(
                f,
                "no reply at all in {:.1} ms",
                *waited_ns as f64 / NS_PER_MS
            ),
            DownReason::Unstable {
                good_streak,
                up_after,
            } => write!(
                f,
                "answering, but {good_streak} good probes in a row of the {up_after} needed"
            ),
        }
    }
}

impl fmt::Display for DegradeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DegradeReason::Loss { ratio, threshold } => write!(
                f,
                "loss {:.1} % above {:.1} %",
                ratio * 100.0,
                threshold * 100.0
            ),
            DegradeReason::Rtt {
                srtt_ns,
                threshold_ns,
            } => write!(
                f,
                "smoothed RTT {:.2} ms above {:.2} ms",
                *srtt_ns as f64 / NS_PER_MS,
                *threshold_ns as f64 / NS_PER_MS
            ),
            DegradeReason::Jitter {
                jitter_ns,
                threshold_ns,
            } => write!(
                f,
                "jitter {:.2} ms above {:.2} ms",
                *jitter_ns as f64 / NS_PER_MS,
                *threshold_ns as f64 / NS_PER_MS
            ),
        }
    }
}

impl fmt::Display for LinkEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link {} ", self.link_id)?;
        match &self.kind {
            LinkEventKind::Down { reason } => write!(f, "down: {reason}"),
            LinkEventKind::Up {
                good_streak,
                outage_ns: Some(o),
            } => write!(
                f,
                "up after {good_streak} good probes (down for {:.1} ms)",
                *o as f64 / NS_PER_MS
            ),
            LinkEventKind::Up { good_streak, .. } => {
                write!(f, "up after {good_streak} good probes")
            }
            LinkEventKind::Degraded { reason } => write!(f, "degraded: {reason}"),
            LinkEventKind::Recovered { loss, srtt_ns } => {
                write!(f, "recovered: ")?;
                if let Some(l) = loss {
                    write!(f, "loss {:.1} %, ", l * 100.0)?;
                }
                write!(f, "smoothed RTT {:.2} ms", *srtt_ns as f64 / NS_PER_MS)
            }
        }
    }
}

/// The monitor's current view of a link, for the CLI and metrics.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LinkView {
    pub link_id: u32,
    pub status: LinkStatus,
    pub degraded: Option<DegradeReason>,
    pub loss: Option<f64>,
    pub srtt_ns: u64,
    pub jitter_ns: u64,
    pub sent: u64,
    pub replies: u64,
    pub reprobe_backoff: bool,
}

/// What one observation of a link produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrackerOutput {
    pub events: Vec<LinkEvent>,
    /// `Some(dead)` when the re-probe backoff of the link must be switched.
    pub backoff: Option<bool>,
}

/// The state machine of one link: pure, driven by snapshots with explicit times.
#[derive(Clone, Debug)]
pub struct LinkTracker {
    link_id: u32,
    started_ns: u64,
    status: LinkStatus,
    down_since_ns: Option<u64>,
    degraded: Option<DegradeReason>,
    loss: LossWindow,
    last_loss: Option<f64>,
    last_state: LinkState,
    last_sent: u64,
    backoff: bool,
}

impl LinkTracker {
    pub fn new(link_id: u32, started_ns: u64, config: &MonitorConfig) -> LinkTracker {
        LinkTracker {
            link_id,
            started_ns,
            status: LinkStatus::Unknown,
            down_since_ns: None,
            degraded: None,
            loss: LossWindow::new(config.loss_window.as_nanos() as u64),
            last_loss: None,
            last_state: LinkState::default(),
            last_sent: 0,
            backoff: false,
        }
    }

    pub fn status(&self) -> LinkStatus {
        self.status
    }

    pub fn view(&self) -> LinkView {
        LinkView {
            link_id: self.link_id,
            status: self.status,
            degraded: self.degraded,
            loss: self.last_loss,
            srtt_ns: self.last_state.srtt_ns,
            jitter_ns: self.last_state.jitter_ns,
            sent: self.last_sent,
            replies: self.last_state.replies,
            reprobe_backoff: self.backoff,
        }
    }

    /// Takes a snapshot read at `now_ns`: `sent` from the sender, `state` from the kernel.
    pub fn observe(
        &mut self,
        now_ns: u64,
        sent: u64,
        state: &LinkState,
        config: &MonitorConfig,
    ) -> TrackerOutput {
        let mut out = TrackerOutput::default();
        let detect_ns = config.detect_ns();
        let answered = state.replies > self.last_state.replies;
        let usable = kernel_usable(now_ns, state, detect_ns, config.up_after);
        let link_id = self.link_id;
        let event = |kind| LinkEvent {
            link_id,
            at_ns: now_ns,
            kind,
        };

        match (self.status, usable) {
            (LinkStatus::Up, true) | (LinkStatus::Down, false) => {}
            (_, true) => {
                out.events.push(event(LinkEventKind::Up {
                    good_streak: state.good_streak,
                    outage_ns: self.down_since_ns.map(|d| now_ns.saturating_sub(d)),
                }));
                self.status = LinkStatus::Up;
                self.down_since_ns = None;
                // The outage's losses must not count against the link now that it is back.
                self.loss.clear();
            }
            (LinkStatus::Up, false) => {
                let silent_ns = now_ns.saturating_sub(state.last_reply_ns);
                // A gap shorter than one poll may end before we look: the kernel has then
                // restarted the streak, and that is why the link is not used.
                let reason = if silent_ns > detect_ns {
                    DownReason::NoReply {
                        silent_ns,
                        detect_ns,
                    }
                } else {
                    DownReason::Unstable {
                        good_streak: state.good_streak,
                        up_after: config.up_after,
                    }
                };
                out.events.push(event(LinkEventKind::Down { reason }));
                self.go_down(now_ns);
            }
            (LinkStatus::Unknown, false) => {
                // A healthy link needs the detection time plus the hysteresis count to become
                // usable: only after that is "not usable" news.
                let waited_ns = now_ns.saturating_sub(self.started_ns);
                let startup_ns =
                    detect_ns + config.up_after as u64 * config.interval.as_nanos() as u64;
                if waited_ns > startup_ns {
                    let silent_ns = now_ns.saturating_sub(state.last_reply_ns);
                    let reason = if state.last_reply_ns == 0 {
                        DownReason::NeverReplied { waited_ns }
                    } else if silent_ns > detect_ns {
                        DownReason::NoReply {
                            silent_ns,
                            detect_ns,
                        }
                    } else {
                        DownReason::Unstable {
                            good_streak: state.good_streak,
                            up_after: config.up_after,
                        }
                    };
                    out.events.push(event(LinkEventKind::Down { reason }));
                    self.go_down(now_ns);
                }
            }
        }

        // Re-probe backoff: on while no reply comes within the detection time, off at the
        // first reply so the hysteresis count is reached at the normal probe rate.
        let silent =
            state.last_reply_ns == 0 || now_ns.saturating_sub(state.last_reply_ns) > detect_ns;
        let want_backoff = self.status == LinkStatus::Down && silent && !answered;
        if want_backoff != self.backoff {
            self.backoff = want_backoff;
            out.backoff = Some(want_backoff);
        }

        let grace_ns = self.grace_ns(state, config);
        self.loss
            .record(now_ns, sent, state.replies, 4 * detect_ns + grace_ns);
        self.last_loss = self.loss.loss(grace_ns, config.loss_min_probes);
        if self.status == LinkStatus::Up {
            let verdict = degrade_verdict(self.last_loss, state, config);
            match (self.degraded, verdict) {
                (None, Some(reason)) => {
                    out.events.push(event(LinkEventKind::Degraded { reason }));
                }
                (Some(_), None) => {
                    out.events.push(event(LinkEventKind::Recovered {
                        loss: self.last_loss,
                        srtt_ns: state.srtt_ns,
                    }));
                }
                _ => {}
            }
            self.degraded = verdict;
        }
        self.last_state = *state;
        self.last_sent = sent;
        out
    }

    fn go_down(&mut self, now_ns: u64) {
        self.status = LinkStatus::Down;
        self.down_since_ns = Some(now_ns);
        self.degraded = None;
    }

    /// How long a probe may take to be answered before it counts as lost: a generous round
    /// trip (smoothed RTT plus four jitters, as RFC 6298 does for its timeout) plus one poll.
    fn grace_ns(&self, state: &LinkState, config: &MonitorConfig) -> u64 {
        let rtt = state.srtt_ns + 4 * state.jitter_ns;
        let poll = config.poll_interval.as_nanos() as u64;
        // Bounded so a wild RTT cannot make the window meaningless.
        (rtt + poll).min(4 * config.detect_ns() + poll)
    }
}

fn degrade_verdict(
    loss: Option<f64>,
    state: &LinkState,
    config: &MonitorConfig,
) -> Option<DegradeReason> {
    if let Some(ratio) = loss {
        // Strictly above: the ratio comes from float division (5 of 100 lost is
        // 0.0500000000000000044 here), and a link at the threshold is not over it.
        if ratio > config.degraded_loss + 1e-9 {
            return Some(DegradeReason::Loss {
                ratio,
                threshold: config.degraded_loss,
            });
        }
    }
    if let Some(t) = config.degraded_rtt {
        let threshold_ns = t.as_nanos() as u64;
        if state.srtt_ns > threshold_ns {
            return Some(DegradeReason::Rtt {
                srtt_ns: state.srtt_ns,
                threshold_ns,
            });
        }
    }
    if let Some(t) = config.degraded_jitter {
        let threshold_ns = t.as_nanos() as u64;
        if state.jitter_ns > threshold_ns {
            return Some(DegradeReason::Jitter {
                jitter_ns: state.jitter_ns,
                threshold_ns,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn cfg() -> MonitorConfig {
        MonitorConfig::default()
    }

    /// A link as the kernel would account it: replies every 10 ms while `alive`.
    struct FakeKernel {
        state: LinkState,
        detect_ns: u64,
    }

    impl FakeKernel {
        fn new() -> Self {
            FakeKernel {
                state: LinkState::default(),
                detect_ns: cfg().detect_ns(),
            }
        }
        fn reply(&mut self, at: u64, rtt: u64) {
            if self.state.last_reply_ns == 0 || at - self.state.last_reply_ns > self.detect_ns {
                self.state.good_streak = 0;
            }
            self.state.good_streak += 1;
            self.state.last_reply_ns = at;
            self.state.replies += 1;
            self.state.srtt_ns = rtt;
            self.state.last_rtt_ns = rtt;
        }
    }

    /// Runs a tracker over 10 ms steps from `from` to `to`; `alive(t)` says whether the probe
    /// sent at t is answered. Returns the events.
    fn drive(
        tr: &mut LinkTracker,
        k: &mut FakeKernel,
        sent: &mut u64,
        from: u64,
        to: u64,
        alive: impl Fn(u64) -> bool,
    ) -> Vec<LinkEvent> {
        let mut events = vec![];
        let mut t = from;
        while t < to {
            *sent += 1;
            if alive(t) {
                k.reply(t + MS, MS);
            }
            events.extend(tr.observe(t + 2 * MS, *sent, &k.state, &cfg()).events);
            t += 10 * MS;
        }
        events
    }

    fn kinds(evs: &[LinkEvent]) -> Vec<&'static str> {
        evs.iter()
            .map(|e| match e.kind {
                LinkEventKind::Down { .. } => "down",
                LinkEventKind::Up { .. } => "up",
                LinkEventKind::Degraded { .. } => "degraded",
                LinkEventKind::Recovered { .. } => "recovered",
            })
            .collect()
    }

    #[test]
    fn up_then_down_after_detection_time_then_up_after_hysteresis() {
        let c = cfg();
        let mut tr = LinkTracker::new(7, 0, &c);
        let mut k = FakeKernel::new();
        let mut sent = 0;
        let evs = drive(&mut tr, &mut k, &mut sent, 0, 1000 * MS, |_| true);
        assert_eq!(kinds(&evs), ["up"]);
        // Up exactly when the fifth reply came in (t = 40 ms + 2 ms).
        assert_eq!(evs[0].at_ns, 42 * MS);
        assert_eq!(
            evs[0].kind,
            LinkEventKind::Up {
                good_streak: 5,
                outage_ns: None
            }
        );
        // Cut at 1000 ms: last reply at 991 ms; down once more than 30 ms have passed.
        let evs = drive(&mut tr, &mut k, &mut sent, 1000 * MS, 2000 * MS, |_| false);
        assert_eq!(kinds(&evs), ["down"]);
        assert_eq!(evs[0].at_ns, 1022 * MS);
        assert!(matches!(
            evs[0].kind,
            LinkEventKind::Down {
                reason: DownReason::NoReply { silent_ns, detect_ns: 30_000_000 }
            } if silent_ns == 31 * MS
        ));
        assert_eq!(tr.status(), LinkStatus::Down);
        // Heal at 2000 ms: up at the fifth good reply, not before.
        let evs = drive(&mut tr, &mut k, &mut sent, 2000 * MS, 3000 * MS, |_| true);
        assert_eq!(kinds(&evs), ["up"]);
        assert_eq!(evs[0].at_ns, 2042 * MS);
        assert!(matches!(
            evs[0].kind,
            LinkEventKind::Up { good_streak: 5, outage_ns: Some(o) } if o == 1020 * MS
        ));
    }

    #[test]
    fn silent_link_is_reported_down_once_the_detection_time_has_passed() {
        let c = cfg();
        let mut tr = LinkTracker::new(1, 0, &c);
        let mut k = FakeKernel::new();
        let mut sent = 0;
        let evs = drive(&mut tr, &mut k, &mut sent, 0, 200 * MS, |_| false);
        assert_eq!(kinds(&evs), ["down"]);
        assert!(matches!(
            evs[0].kind,
            LinkEventKind::Down {
                reason: DownReason::NeverReplied { waited_ns }
            } if waited_ns == 82 * MS
        ));
    }

    #[test]
    fn flapping_link_does_not_come_back_until_the_streak_is_long_enough() {
        let c = cfg();
        let mut tr = LinkTracker::new(1, 0, &c);
        let mut k = FakeKernel::new();
        let mut sent = 0;
        drive(&mut tr, &mut k, &mut sent, 0, 500 * MS, |_| true);
        drive(&mut tr, &mut k, &mut sent, 500 * MS, 600 * MS, |_| false);
        // Answers 3 probes out of every 8: never 5 in a row within the detection time.
        let evs = drive(&mut tr, &mut k, &mut sent, 600 * MS, 2000 * MS, |t| {
            (t / (10 * MS)) % 8 < 3
        });
        assert_eq!(kinds(&evs), Vec::<&str>::new());
        assert_eq!(tr.status(), LinkStatus::Down);
    }

    #[test]
    fn loss_above_threshold_is_degraded_and_recovers() {
        let c = cfg();
        let mut tr = LinkTracker::new(3, 0, &c);
        let mut k = FakeKernel::new();
        let mut sent = 0;
        drive(&mut tr, &mut k, &mut sent, 0, 1500 * MS, |_| true);
        // Every 5th probe lost (20 %): never 3 in a row, so the link stays up.
        let evs = drive(&mut tr, &mut k, &mut sent, 1500 * MS, 3000 * MS, |t| {
            !(t / (10 * MS)).is_multiple_of(5)
        });
        assert_eq!(kinds(&evs), ["degraded"]);
        match evs[0].kind {
            LinkEventKind::Degraded {
                reason: DegradeReason::Loss { ratio, threshold },
            } => {
                assert!(ratio > 0.05 && ratio <= 0.2, "{ratio}");
                assert_eq!(threshold, 0.05);
            }
            other => panic!("{other:?}"),
        }
        let v = tr.view();
        assert!((v.loss.unwrap() - 0.2).abs() < 0.02, "{:?}", v.loss);
        let evs = drive(&mut tr, &mut k, &mut sent, 3000 * MS, 5000 * MS, |_| true);
        assert_eq!(kinds(&evs), ["recovered"]);
        assert_eq!(tr.view().degraded, None);
    }

    #[test]
    fn gap_between_two_polls_still_takes_the_link_down() {
        let c = cfg();
        let mut tr = LinkTracker::new(2, 0, &c);
        let mut st = LinkState {
            last_reply_ns: 100 * MS,
            good_streak: 8,
            replies: 8,
            ..Default::default()
        };
        assert_eq!(kinds(&tr.observe(101 * MS, 8, &st, &c).events), ["up"]);
        // The kernel saw a 35 ms gap (streak restarted at 1) that no poll caught.
        st.last_reply_ns = 140 * MS;
        st.good_streak = 1;
        st.replies = 9;
        let out = tr.observe(141 * MS, 12, &st, &c);
        assert_eq!(
            out.events[0].kind,
            LinkEventKind::Down {
                reason: DownReason::Unstable {
                    good_streak: 1,
                    up_after: 5
                }
            }
        );
        assert_eq!(out.backoff, None, "answering: no backoff");
    }

    #[test]
    fn rtt_threshold_degrades() {
        let c = MonitorConfig {
            degraded_rtt: Some(Duration::from_millis(50)),
            ..cfg()
        };
        let mut tr = LinkTracker::new(3, 0, &c);
        let st = LinkState {
            last_reply_ns: 100 * MS,
            good_streak: 10,
            replies: 10,
            srtt_ns: 60 * MS,
            ..Default::default()
        };
        let out = tr.observe(101 * MS, 10, &st, &c);
        assert_eq!(kinds(&out.events), ["up", "degraded"]);
        assert_eq!(
            out.events[1].to_string(),
            "link 3 degraded: smoothed RTT 60.00 ms above 50.00 ms"
        );
    }

    #[test]
    fn backoff_while_silent_and_off_at_the_first_reply() {
        let c = cfg();
        let mut tr = LinkTracker::new(1, 0, &c);
        let mut k = FakeKernel::new();
        let mut sent = 0;
        drive(&mut tr, &mut k, &mut sent, 0, 500 * MS, |_| true);
        let mut sent2 = sent;
        let mut switches = vec![];
        let mut t = 500 * MS;
        while t < 700 * MS {
            sent2 += 1;
            if let Some(b) = tr.observe(t, sent2, &k.state, &c).backoff {
                switches.push((t, b));
            }
            t += 10 * MS;
        }
        assert_eq!(switches, [(530 * MS, true)]);
        k.reply(700 * MS, MS);
        let out = tr.observe(701 * MS, sent2, &k.state, &c);
        assert_eq!(out.backoff, Some(false));
        assert!(out.events.is_empty(), "one reply is not enough to be up");
    }

    #[test]
    fn config_validation_names_the_bad_setting() {
        let bad = MonitorConfig {
            degraded_loss: 1.5,
            ..cfg()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "degraded_loss must be in (0, 1], got 1.5"
        );
        let bad = MonitorConfig {
            up_after: 0,
            ..cfg()
        };
        assert_eq!(bad.validate(), Err(MonitorConfigError::UpAfter));
        let bad = MonitorConfig {
            loss_window: Duration::from_millis(100),
            ..cfg()
        };
        assert!(matches!(
            bad.validate(),
            Err(MonitorConfigError::LossWindow { .. })
        ));
        let bad = MonitorConfig {
            poll_interval: Duration::from_millis(40),
            ..cfg()
        };
        assert!(matches!(
            bad.validate(),
            Err(MonitorConfigError::PollInterval { .. })
        ));
        cfg().validate().unwrap();
        assert_eq!(
            cfg().link_config(),
            LinkConfig {
                flags: LINK_F_MONITORED,
                up_after: 5,
                detect_ns: 30 * MS,
                ..Default::default()
            }
        );
    }

    proptest! {
        /// Whatever the kernel's state does, once the first detection time has passed the
        /// tracker's up/down is the kernel's rule at that instant, and each transition is
        /// reported exactly once.
        #[test]
        fn tracker_agrees_with_the_kernel_rule(
            steps in proptest::collection::vec((1u64..40, any::<bool>(), 0u32..3), 1..200)
        ) {
            let c = cfg();
            let mut tr = LinkTracker::new(1, 0, &c);
            let mut st = LinkState::default();
            let mut now = 0u64;
            let mut sent = 0;
            let mut last_reported: Option<bool> = None;
            for (dt_ms, reply, streak_reset) in steps {
                now += dt_ms * MS;
                sent += 1;
                if reply {
                    // The kernel resets the streak after a gap (or at random, to stress it).
                    if st.last_reply_ns == 0 || now - st.last_reply_ns > c.detect_ns() || streak_reset == 0 {
                        st.good_streak = 0;
                    }
                    st.good_streak += 1;
                    st.last_reply_ns = now;
                    st.replies += 1;
                }
                let observe_at = now + MS;
                let out = tr.observe(observe_at, sent, &st, &c);
                for e in &out.events {
                    match e.kind {
                        LinkEventKind::Up { .. } => {
                            prop_assert_ne!(last_reported, Some(true));
                            last_reported = Some(true);
                        }
                        LinkEventKind::Down { .. } => {
                            prop_assert_ne!(last_reported, Some(false));
                            last_reported = Some(false);
                        }
                        _ => {}
                    }
                }
                let rule = kernel_usable(observe_at, &st, c.detect_ns(), c.up_after);
                match tr.status() {
                    LinkStatus::Up => prop_assert!(rule),
                    LinkStatus::Down => prop_assert!(!rule),
                    LinkStatus::Unknown => {
                        prop_assert!(!rule);
                        // Unknown only during the start-up time.
                        prop_assert!(observe_at <= c.detect_ns() + 5 * 10 * MS);
                    }
                }
            }
        }
    }
}
