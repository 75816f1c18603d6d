//! Re-probe backoff: a dead link is probed less and less often (the interval doubles up to a
//! cap), and at the normal rate again as soon as it answers.

use std::time::Duration;

/// Interval between two probes of one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    /// `cap` below `base` is raised to `base` (no backoff).
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            current: base,
        }
    }

    /// Wait before the next probe. While `dead`, each call doubles the wait up to the cap;
    /// once alive it is the base interval again.
    pub fn next_wait(&mut self, dead: bool) -> Duration {
        self.current = if dead {
            self.current.saturating_mul(2).min(self.cap)
        } else {
            self.base
        };
        self.current
    }

    pub fn current(&self) -> Duration {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_while_dead_up_to_cap_and_resets_when_alive() {
        let mut b = Backoff::new(10 * MS, 100 * MS);
        assert_eq!(b.next_wait(false), 10 * MS);
        let waits: Vec<_> = (0..6).map(|_| b.next_wait(true)).collect();
        assert_eq!(
            waits,
            [20 * MS, 40 * MS, 80 * MS, 100 * MS, 100 * MS, 100 * MS]
        );
        assert_eq!(b.next_wait(false), 10 * MS);
        assert_eq!(b.next_wait(true), 20 * MS);
    }

    #[test]
    fn cap_below_base_means_no_backoff() {
        let mut b = Backoff::new(10 * MS, MS);
        assert_eq!(b.next_wait(true), 10 * MS);
        assert_eq!(b.next_wait(true), 10 * MS);
    }
}
