//! When to recompute after events: the SPF back-off of RFC 8405. The first event after a
//! quiet period is handled after a short initial delay; events that keep coming are batched
//! with the short delay while the algorithm "learns", and with the long delay once they have
//! kept coming for longer than `time_to_learn` (a storm). A quiet `holddown` resets it.
//!
//! Pure: times are nanoseconds of a monotonic clock passed in, so a replay gives the same
//! decisions as the live run.

use crate::config::DelayConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayState {
    Quiet,
    ShortWait,
    LongWait,
}

#[derive(Clone, Debug)]
pub struct Debounce {
    config: DelayConfig,
    state: DelayState,
    /// When the pending computation runs.
    due_ns: Option<u64>,
    /// ShortWait turns into LongWait at this time.
    learn_until_ns: Option<u64>,
    /// Back to Quiet at this time (moved by each event).
    holddown_until_ns: Option<u64>,
}

fn ns(d: std::time::Duration) -> u64 {
    d.as_nanos() as u64
}

impl Debounce {
    pub fn new(config: DelayConfig) -> Debounce {
        Debounce {
            config,
            state: DelayState::Quiet,
            due_ns: None,
            learn_until_ns: None,
            holddown_until_ns: None,
        }
    }

    pub fn set_config(&mut self, config: DelayConfig) {
        self.config = config;
    }

    pub fn state(&self) -> DelayState {
        self.state
    }

    /// An event that needs a recomputation arrived at `now`.
    pub fn event(&mut self, now: u64) {
        self.advance(now);
        let delay = match self.state {
            DelayState::Quiet => {
                self.state = DelayState::ShortWait;
                self.learn_until_ns = Some(now + ns(self.config.time_to_learn));
                self.config.initial
            }
            DelayState::ShortWait => self.config.short,
            DelayState::LongWait => self.config.long,
        };
        self.holddown_until_ns = Some(now + ns(self.config.holddown));
        // A computation already scheduled keeps its time: events only batch into it.
        if self.due_ns.is_none() {
            self.due_ns = Some(now + ns(delay));
        }
    }

    /// Moves the state machine's own timers up to `now`.
    fn advance(&mut self, now: u64) {
        if self.state == DelayState::ShortWait && self.learn_until_ns.is_some_and(|t| now >= t) {
            self.state = DelayState::LongWait;
            self.learn_until_ns = None;
        }
        if self.holddown_until_ns.is_some_and(|t| now >= t) && self.due_ns.is_none() {
            self.state = DelayState::Quiet;
            self.holddown_until_ns = None;
            self.learn_until_ns = None;
        }
    }

    /// Whether the pending computation is due at `now`; if so it is taken (the caller runs it).
    pub fn take_due(&mut self, now: u64) -> bool {
        self.advance(now);
        if self.due_ns.is_some_and(|t| now >= t) {
            self.due_ns = None;
            self.advance(now);
            return true;
        }
        false
    }

    /// When the pending computation is due. (The learn and hold-down timers need no wake-up:
    /// the state machine catches up with them at the next event.)
    pub fn next_deadline(&self) -> Option<u64> {
        self.due_ns
    }

    pub fn pending(&self) -> bool {
        self.due_ns.is_some()
    }
}

#[cfg(test)]
mod rfc8405;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn cfg() -> DelayConfig {
        DelayConfig {
            initial: Duration::from_millis(0),
            short: Duration::from_millis(50),
            long: Duration::from_millis(1000),
            time_to_learn: Duration::from_millis(500),
            holddown: Duration::from_millis(2000),
        }
    }

    /// Feeds events at the given times (ms) and returns when computations ran (ms), checking
    /// every millisecond up to `until`.
    fn run(events: &[u64], until: u64) -> Vec<u64> {
        let mut d = Debounce::new(cfg());
        let mut runs = Vec::new();
        let mut next = 0;
        for t in 0..=until {
            while next < events.len() && events[next] == t {
                d.event(t * MS);
                next += 1;
            }
            if d.take_due(t * MS) {
                runs.push(t);
            }
        }
        runs
    }

    #[test]
    fn first_event_runs_after_the_initial_delay() {
        assert_eq!(run(&[100], 5000), vec![100]);
    }

    #[test]
    fn events_that_keep_coming_are_batched_short_then_long() {
        // An event every 10 ms for 3 s.
        let events: Vec<u64> = (0..300).map(|i| i * 10).collect();
        let runs = run(&events, 10_000);
        assert_eq!(runs[0], 0, "first at once");
        // Short waits while learning (0..500 ms), long waits after.
        let short: Vec<_> = runs.windows(2).filter(|w| w[1] < 500).collect();
        assert!(short.iter().all(|w| w[1] - w[0] <= 60), "{runs:?}");
        let late: Vec<_> = runs.windows(2).filter(|w| w[0] >= 600).collect();
        assert!(!late.is_empty());
        assert!(late.iter().all(|w| w[1] - w[0] >= 1000), "{runs:?}");
        // The last event is always followed by a computation.
        assert!(*runs.last().unwrap() >= 2990);
        // 300 events, far fewer computations.
        assert!(runs.len() < 20, "{} computations: {runs:?}", runs.len());
    }

    #[test]
    fn quiet_holddown_makes_the_next_event_first_again() {
        let runs = run(&[0, 10, 20, 5000], 8000);
        // 0 at once; 10 and 20 batched into one short wait at 60; 5000 at once (quiet again).
        assert_eq!(runs, vec![0, 60, 5000]);
    }
}
