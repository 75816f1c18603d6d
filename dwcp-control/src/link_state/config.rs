//! The timers and thresholds of link-state origination and flooding.
use std::time::Duration;

use thiserror::Error;

/// A record's lifetime travels in a u32 of milliseconds.
pub const MAX_LIFETIME: Duration = Duration::from_millis(u32::MAX as u64);

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkStateConfig {
    /// Our record is re-originated this often even when nothing changed, so it never ages out.
    pub refresh_interval: Duration,
    /// A record not refreshed by its origin within this is removed everywhere (its origin is
    /// gone). Carried in every copy as the remaining lifetime, so copies age out together.
    pub max_age: Duration,
    /// A record a neighbour has not acknowledged is sent again after this. Above the largest
    /// round trip (about 300 ms between antipodes), so a late ack causes no duplicate.
    pub retransmit_interval: Duration,
    /// A link that went down is announced up again after it has been good this long, the
    /// first time; each further down doubles the hold, up to `hold_max`.
    pub hold_initial: Duration,
    pub hold_max: Duration,
    /// The hold halves per `hold_half_life` without a down, back to `hold_initial`.
    pub hold_half_life: Duration,
    /// A link's figures are announced at most this often (a change of health is not limited).
    pub figures_interval: Duration,
    pub thresholds: FigureThresholds,
}

impl Default for LinkStateConfig {
    fn default() -> Self {
        LinkStateConfig {
            refresh_interval: Duration::from_secs(15),
            max_age: Duration::from_secs(60),
            retransmit_interval: Duration::from_millis(400),
            hold_initial: Duration::from_secs(1),
            hold_max: Duration::from_secs(60),
            hold_half_life: Duration::from_secs(30),
            figures_interval: Duration::from_secs(1),
            thresholds: FigureThresholds::default(),
        }
    }
}

/// When a figure has moved enough to be announced: by more than `relative` of the figure
/// announced last and by more than the figure's floor (so noise around small values stays
/// quiet). The same 10 % the state owner applies to its own measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FigureThresholds {
    pub relative: f64,
    pub rtt_floor_us: u32,
    pub jitter_floor_us: u32,
    /// In 1/10,000.
    pub loss_floor: u16,
    /// In 1/10,000.
    pub utilisation_floor: u16,
}

impl Default for FigureThresholds {
    fn default() -> Self {
        FigureThresholds {
            relative: 0.10,
            rtt_floor_us: 1_000,
            jitter_floor_us: 1_000,
            // One probe in a hundred: the loss window's edge miscounts one reply now and then
            // (measured at rest in the 3-region lab: loss flipping between 0 and 0.99 %), and
            // with a floor of 0.1 % every gateway re-announced its links twice a second.
            loss_floor: 100,
            utilisation_floor: 500,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum LinkStateConfigError {
    #[error("{name} must be above zero")]
    Zero { name: &'static str },
    #[error("refresh_interval ({refresh:?}) must be below max_age ({max_age:?}), or records age out between refreshes")]
    RefreshAfterMaxAge {
        refresh: Duration,
        max_age: Duration,
    },
    #[error("max_age ({0:?}) above the {MAX_LIFETIME:?} a record's lifetime can carry")]
    MaxAge(Duration),
    #[error("hold_initial ({initial:?}) above hold_max ({max:?})")]
    Hold { initial: Duration, max: Duration },
    #[error("thresholds.relative must be a finite fraction >= 0, got {0}")]
    Relative(f64),
}

impl LinkStateConfig {
    pub fn validate(&self) -> Result<(), LinkStateConfigError> {
        let positive = [
            ("refresh_interval", self.refresh_interval),
            ("retransmit_interval", self.retransmit_interval),
            ("hold_initial", self.hold_initial),
            ("hold_half_life", self.hold_half_life),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(LinkStateConfigError::Zero { name });
        }
        if self.refresh_interval >= self.max_age {
            return Err(LinkStateConfigError::RefreshAfterMaxAge {
                refresh: self.refresh_interval,
                max_age: self.max_age,
            });
        }
        if self.max_age > MAX_LIFETIME {
            return Err(LinkStateConfigError::MaxAge(self.max_age));
        }
        if self.hold_initial > self.hold_max {
            return Err(LinkStateConfigError::Hold {
                initial: self.hold_initial,
                max: self.hold_max,
            });
        }
        let r = self.thresholds.relative;
        if !(r.is_finite() && r >= 0.0) {
            return Err(LinkStateConfigError::Relative(r));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_rule_is_checked() {
        let ok = LinkStateConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = |edit: fn(&mut LinkStateConfig)| {
            let mut c = ok;
            edit(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(
            bad(|c| c.retransmit_interval = Duration::ZERO),
            LinkStateConfigError::Zero {
                name: "retransmit_interval"
            }
        );
        assert!(matches!(
            bad(|c| c.refresh_interval = c.max_age),
            LinkStateConfigError::RefreshAfterMaxAge { .. }
        ));
        assert!(matches!(
            bad(|c| c.max_age = MAX_LIFETIME + Duration::from_millis(1)),
            LinkStateConfigError::MaxAge(_)
        ));
        assert!(matches!(
            bad(|c| c.hold_max = Duration::from_millis(10)),
            LinkStateConfigError::Hold { .. }
        ));
        assert!(matches!(
            bad(|c| c.thresholds.relative = f64::NAN),
            LinkStateConfigError::Relative(_)
        ));
    }
}
