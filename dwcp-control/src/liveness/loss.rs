//! Loss ratio of a link over a sliding window: `1 - received / sent`, where `sent` comes from
//! the sender and `received` from the kernel's reply counter.
//!
//! A probe sent less than one round trip ago cannot have been answered yet. At a steady probe
//! rate that offset cancels out between the window's two ends, but when the rate changes (the
//! window starts afresh after an outage, the backoff ends) the probes in flight would count as
//! lost: a quarter of them 300 ms after a restart at 80 ms RTT. So the sent counter is read
//! `grace` (about one round trip) earlier than the reply counter.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    at_ns: u64,
    sent: u64,
    replies: u64,
}

/// Samples of (time, sent, replies) of one link, kept for the window plus the grace.
#[derive(Clone, Debug)]
pub struct LossWindow {
    window_ns: u64,
    samples: VecDeque<Sample>,
}

impl LossWindow {
    pub fn new(window_ns: u64) -> LossWindow {
        LossWindow {
            window_ns,
            samples: VecDeque::new(),
        }
    }

    /// Forgets everything (after an outage, so its losses do not count against the link).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// Records counters read at `at_ns` and drops samples no longer needed for a window plus
    /// a grace of at most `max_grace_ns`.
    pub fn record(&mut self, at_ns: u64, sent: u64, replies: u64, max_grace_ns: u64) {
        if let Some(last) = self.samples.back() {
            // Counters restart only if the sender or the map was replaced: start over.
            if at_ns < last.at_ns || sent < last.sent || replies < last.replies {
                self.samples.clear();
            }
        }
        self.samples.push_back(Sample {
            at_ns,
            sent,
            replies,
        });
        let keep_from = at_ns.saturating_sub(self.window_ns + max_grace_ns);
        // Keep one sample at or before `keep_from` so the window start stays covered.
        while self.samples.len() > 2 && self.samples[1].at_ns <= keep_from {
            self.samples.pop_front();
        }
    }

    /// Loss ratio in [0, 1] over the window ending at the newest sample, or `None` while fewer
    /// than `min_sent` probes fall in it.
    ///
    /// Both counters are interpolated at the window's edges (the sender and the replies run
    /// at a steady rate), so the window spans its full length even when the polls were
    /// irregular: after a pause of the polls longer than the window, a window cut at the
    /// first sample after the pause would hold a handful of probes, and one probe more or
    /// less would swing the figure by 5 %.
    pub fn loss(&self, grace_ns: u64, min_sent: u64) -> Option<f64> {
        let end = *self.samples.back()?;
        let first = self.samples.front()?;
        // No sent count before the first sample: the window starts a grace after it.
        let start_at = end
            .at_ns
            .saturating_sub(self.window_ns)
            .max(first.at_ns + grace_ns);
        if start_at >= end.at_ns {
            return None;
        }
        let sent_end = self.counter_at(end.at_ns.saturating_sub(grace_ns), |s| s.sent)?;
        let sent_start = self.counter_at(start_at - grace_ns, |s| s.sent)?;
        let sent = sent_end.saturating_sub(sent_start);
        if sent == 0 || sent < min_sent {
            return None;
        }
        let received = end.replies - self.counter_at(start_at, |s| s.replies)?;
        Some((1.0 - received as f64 / sent as f64).clamp(0.0, 1.0))
    }

    /// A counter at `at_ns`, interpolated between the samples around it (taking the sample
    /// before it instead would, after a pause of the polls longer than the grace, count every
    /// probe of the pause as sent in the window while its replies fall before it: a healthy
    /// link would read as 99 % loss).
    fn counter_at(&self, at_ns: u64, counter: impl Fn(&Sample) -> u64) -> Option<u64> {
        let i = self.samples.iter().rposition(|s| s.at_ns <= at_ns)?;
        let before = &self.samples[i];
        match self.samples.get(i + 1) {
            Some(after) if after.at_ns > before.at_ns => {
                let span = (after.at_ns - before.at_ns) as u128;
                let grown = (counter(after) - counter(before)) as u128;
                let part = grown * (at_ns - before.at_ns) as u128 / span;
                Some(counter(before) + part as u64)
            }
            _ => Some(counter(before)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Probes every 10 ms with a fixed RTT; every `lose_every`-th is lost. Samples every 10 ms.
    fn trace(rtt_ns: u64, lose_every: u64, until_ns: u64) -> LossWindow {
        let mut w = LossWindow::new(1_000 * MS);
        let mut t = 0;
        while t <= until_ns {
            // Probes sent at 0, 10, 20 ... ms, up to and including t.
            let sent = t / (10 * MS) + 1;
            // Answered: those sent at or before t - rtt and not lost.
            let answered_upto = if t >= rtt_ns {
                (t - rtt_ns) / (10 * MS) + 1
            } else {
                0
            };
            let lost = if lose_every == 0 {
                0
            } else {
                answered_upto.div_ceil(lose_every)
            };
            w.record(t, sent, answered_upto - lost, 200 * MS);
            t += 10 * MS;
        }
        w
    }

    #[test]
    fn probes_in_flight_after_a_restart_are_not_loss() {
        let w = trace(80 * MS, 0, 300 * MS);
        let with_grace = w.loss(90 * MS, 20).unwrap();
        assert!(with_grace < 0.011, "{with_grace}");
        // Without the grace the probes in flight look lost: this is what the grace is for.
        let without = w.loss(0, 20).unwrap();
        assert!(without > 0.2, "{without}");
    }

    #[test]
    fn ten_percent_loss_is_measured() {
        let w = trace(30 * MS, 10, 3_000 * MS);
        let loss = w.loss(40 * MS, 20).unwrap();
        assert!((loss - 0.10).abs() < 0.015, "{loss}");
    }

    #[test]
    fn too_few_probes_give_no_figure() {
        let w = trace(10 * MS, 0, 50 * MS);
        assert_eq!(w.loss(10 * MS, 20), None);
        assert_eq!(LossWindow::new(MS).loss(0, 1), None);
    }

    #[test]
    fn keeps_only_what_the_window_needs() {
        let w = trace(10 * MS, 0, 10_000 * MS);
        // 1 s window + 200 ms grace at 10 ms samples, plus the boundary sample.
        assert!(w.samples.len() <= 122, "{}", w.samples.len());
    }

    #[test]
    fn a_pause_of_the_polls_is_not_loss() {
        // Probes every 10 ms, RTT 20 ms, every 10th lost; the monitor polls every 10 ms except
        // between 2 s and 5 s (its thread was busy, say).
        let mut w = LossWindow::new(1_000 * MS);
        let mut t = 0;
        // Farthest a figure strays from the true 10 % once the first window is full.
        let mut worst: f64 = 0.0;
        while t <= 6_000 * MS {
            let sent = t / (10 * MS) + 1;
            let answered_upto = if t >= 20 * MS {
                (t - 20 * MS) / (10 * MS) + 1
            } else {
                0
            };
            let received = answered_upto - answered_upto.div_ceil(10);
            if !(2_000 * MS..5_000 * MS).contains(&t) {
                w.record(t, sent, received, 200 * MS);
                if let (Some(l), true) = (w.loss(30 * MS, 20), t > 1_100 * MS) {
                    worst = worst.max((l - 0.10).abs());
                }
            }
            t += 10 * MS;
        }
        assert!(worst < 0.02, "a loss figure {worst} off the true 10 %");
        let last = w.loss(30 * MS, 20).unwrap();
        assert!((last - 0.10).abs() < 0.015, "{last}");
    }

    #[test]
    fn counter_reset_starts_over() {
        let mut w = LossWindow::new(100 * MS);
        w.record(0, 100, 100, 0);
        w.record(10 * MS, 5, 5, 0);
        assert_eq!(w.samples.len(), 1);
    }
}
