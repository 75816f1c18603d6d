//! The SPF back-off that follows link-state changes (and every other event) is
//! [`Debounce`]; these tests hold it to RFC 8405's state machine (QUIET,
//! SHORT_WAIT, LONG_WAIT; SPF_TIMER, LEARN_TIMER, HOLDDOWN_TIMER), with the values of the
//! IETF IS-IS YANG model's `ietf-spf-delay` defaults (RFC 9130): INITIAL_SPF_DELAY 50 ms,
//! SHORT_SPF_DELAY 200 ms, LONG_SPF_DELAY 5 s, TIME_TO_LEARN_INTERVAL 500 ms,
//! HOLDDOWN_INTERVAL 10 s.
use std::time::Duration;

use super::{Debounce, DelayState};
use crate::config::DelayConfig;

const MS: u64 = 1_000_000;

fn rfc_values() -> DelayConfig {
    DelayConfig {
        initial: Duration::from_millis(50),
        short: Duration::from_millis(200),
        long: Duration::from_millis(5_000),
        time_to_learn: Duration::from_millis(500),
        holddown: Duration::from_millis(10_000),
    }
}

/// Feeds IGP events at the given times (ms); returns when SPF ran (ms), up to `until`.
fn spf_runs(events: &[u64], until: u64) -> Vec<u64> {
    let mut d = Debounce::new(rfc_values());
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
fn quiet_first_event_runs_after_initial_delay_and_quiet_returns_after_holddown() {
    // Transition 1 (QUIET -> SHORT_WAIT, SPF_TIMER = INITIAL), 7/8 (SPF_TIMER expires),
    // 4/5 (HOLDDOWN_TIMER expires -> QUIET): an event 10 s after the last is first again.
    assert_eq!(spf_runs(&[0, 10_050], 11_000), [50, 10_100]);
}

#[test]
fn events_while_learning_wait_the_short_delay() {
    // Transition 2: IGP event in SHORT_WAIT starts SPF_TIMER with SHORT_SPF_DELAY when it
    // is not running.
    assert_eq!(spf_runs(&[0, 100, 400], 1_000), [50, 300, 600]);
}

#[test]
fn events_batch_into_a_running_spf_timer() {
    // Transition 2: a running SPF_TIMER is left alone; the events are handled by its run.
    assert_eq!(spf_runs(&[0, 10, 20, 49], 1_000), [50]);
    assert_eq!(spf_runs(&[0, 100, 150, 299], 1_000), [50, 300]);
}

#[test]
fn events_past_the_time_to_learn_wait_the_long_delay_until_holddown() {
    // Transition 6 (LEARN_TIMER expires -> LONG_WAIT), 3 (IGP event in LONG_WAIT: LONG),
    // HOLDDOWN_TIMER restarted by each event; 10 s without one -> QUIET, INITIAL again.
    assert_eq!(
        spf_runs(&[0, 100, 600, 6_000, 12_000, 27_001], 30_000),
        [50, 300, 5_600, 11_000, 17_000, 27_051]
    );
}

#[test]
fn states_follow_the_rfc() {
    let mut d = Debounce::new(rfc_values());
    assert_eq!(d.state(), DelayState::Quiet);
    d.event(0);
    assert_eq!(d.state(), DelayState::ShortWait);
    assert!(d.take_due(50 * MS));
    d.event(600 * MS);
    assert_eq!(d.state(), DelayState::LongWait);
    assert_eq!(d.next_deadline(), Some(5_600 * MS));
    assert!(d.take_due(5_600 * MS));
    d.event(15_601 * MS);
    assert_eq!(
        d.next_deadline(),
        Some(15_651 * MS),
        "quiet again: initial delay"
    );
}
