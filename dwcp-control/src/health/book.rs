//! The state of every check (rise/fall counting) and the health of each region.

use std::collections::BTreeMap;

use super::{CheckFailure, HealthCheckSpec, HealthError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Neither `rise` successes nor `fall` failures in a row yet.
    Unknown,
    Up,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionState {
    /// No check of the region has a verdict yet.
    Unknown,
    /// No check is down.
    Healthy,
    /// Some checks are up, some down.
    Degraded,
    /// Every check with a verdict is down.
    Down,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RegionHealth {
    pub region: String,
    pub state: RegionState,
    pub up: usize,
    pub down: usize,
    pub unknown: usize,
}

impl RegionHealth {
    /// Share of the checks with a verdict that are up, in [0, 1]; `None` without verdicts.
    pub fn score(&self) -> Option<f64> {
        let judged = self.up + self.down;
        (judged > 0).then(|| self.up as f64 / judged as f64)
    }
}

/// A check changed status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HealthEvent {
    pub check: String,
    pub region: String,
    pub from: CheckStatus,
    pub to: CheckStatus,
    /// The failure that made it go down.
    pub cause: Option<CheckFailure>,
    /// The region's health after the change.
    pub region_health: RegionHealth,
}

#[derive(Clone, Debug)]
struct CheckState {
    spec: HealthCheckSpec,
    status: CheckStatus,
    ok_streak: u32,
    fail_streak: u32,
    last_failure: Option<CheckFailure>,
}

/// Every check's state. Pure: fed with outcomes, returns transitions.
#[derive(Clone, Debug, Default)]
pub struct HealthBook {
    checks: BTreeMap<String, CheckState>,
}

impl HealthBook {
    pub fn new() -> HealthBook {
        HealthBook::default()
    }

    /// Adds a check. An invalid or duplicate one is refused; existing checks are untouched.
    pub fn add(&mut self, spec: HealthCheckSpec) -> Result<(), HealthError> {
        spec.validate()?;
        if self.checks.contains_key(&spec.name) {
            return Err(HealthError::Duplicate(spec.name));
        }
        self.checks.insert(
            spec.name.clone(),
            CheckState {
                spec,
                status: CheckStatus::Unknown,
                ok_streak: 0,
                fail_streak: 0,
                last_failure: None,
            },
        );
        Ok(())
    }

    pub fn specs(&self) -> impl Iterator<Item = &HealthCheckSpec> {
        self.checks.values().map(|c| &c.spec)
    }

    pub fn status(&self, check: &str) -> Option<CheckStatus> {
        self.checks.get(check).map(|c| c.status)
    }

    pub fn last_failure(&self, check: &str) -> Option<&CheckFailure> {
        self.checks.get(check)?.last_failure.as_ref()
    }

    /// Records one outcome of `check`; returns the transition it caused, if any.
    pub fn record(
        &mut self,
        check: &str,
        outcome: Result<(), CheckFailure>,
    ) -> Result<Option<HealthEvent>, HealthError> {
        let c = self
            .checks
            .get_mut(check)
            .ok_or_else(|| HealthError::Unknown(check.to_string()))?;
        let from = c.status;
        match outcome {
            Ok(()) => {
                c.ok_streak += 1;
                c.fail_streak = 0;
                if c.ok_streak >= c.spec.rise {
                    c.status = CheckStatus::Up;
                }
            }
            Err(f) => {
                c.fail_streak += 1;
                c.ok_streak = 0;
                c.last_failure = Some(f);
                if c.fail_streak >= c.spec.fall {
                    c.status = CheckStatus::Down;
                }
            }
        }
        if c.status == from {
            return Ok(None);
        }
        let (to, region) = (c.status, c.spec.region.clone());
        let cause = (to == CheckStatus::Down)
            .then(|| c.last_failure.clone())
            .flatten();
        Ok(Some(HealthEvent {
            check: check.to_string(),
            region_health: self.region(&region),
            region,
            from,
            to,
            cause,
        }))
    }

    /// The health of one region (all zero and `Unknown` for a region without checks).
    pub fn region(&self, region: &str) -> RegionHealth {
        let mut h = RegionHealth {
            region: region.to_string(),
            state: RegionState::Unknown,
            up: 0,
            down: 0,
            unknown: 0,
        };
        for c in self.checks.values().filter(|c| c.spec.region == region) {
            match c.status {
                CheckStatus::Up => h.up += 1,
                CheckStatus::Down => h.down += 1,
                CheckStatus::Unknown => h.unknown += 1,
            }
        }
        h.state = match (h.up, h.down) {
            (0, 0) => RegionState::Unknown,
            (_, 0) => RegionState::Healthy,
            (0, _) => RegionState::Down,
            _ => RegionState::Degraded,
        };
        h
    }

    /// Every region that has checks.
    pub fn regions(&self) -> BTreeMap<String, RegionHealth> {
        self.checks
            .values()
            .map(|c| (c.spec.region.clone(), self.region(&c.spec.region)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::CheckTarget;
    use std::time::Duration;

    fn spec(name: &str, region: &str, rise: u32, fall: u32) -> HealthCheckSpec {
        HealthCheckSpec {
            name: name.into(),
            region: region.into(),
            target: CheckTarget::Tcp {
                addr: "192.0.2.1:80".parse().unwrap(),
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise,
            fall,
        }
    }

    #[test]
    fn rise_and_fall_thresholds() {
        let mut b = HealthBook::new();
        b.add(spec("a", "eu", 2, 3)).unwrap();
        assert_eq!(b.record("a", Ok(())).unwrap(), None);
        let e = b.record("a", Ok(())).unwrap().unwrap();
        assert_eq!((e.from, e.to), (CheckStatus::Unknown, CheckStatus::Up));
        // Two failures, a success, two failures: never three in a row.
        for r in [false, false, true, false, false] {
            let out = if r {
                Ok(())
            } else {
                Err(CheckFailure::Timeout)
            };
            assert_eq!(b.record("a", out).unwrap(), None);
        }
        let e = b.record("a", Err(CheckFailure::Refused)).unwrap().unwrap();
        assert_eq!(e.to, CheckStatus::Down);
        assert_eq!(e.cause, Some(CheckFailure::Refused));
        assert_eq!(e.region_health.state, RegionState::Down);
        assert_eq!(
            b.record("zz", Ok(())).unwrap_err().to_string(),
            "unknown health check zz"
        );
    }

    #[test]
    fn region_state_from_its_checks() {
        let mut b = HealthBook::new();
        b.add(spec("a", "eu", 1, 1)).unwrap();
        b.add(spec("b", "eu", 1, 1)).unwrap();
        b.add(spec("c", "us", 1, 1)).unwrap();
        assert_eq!(b.region("eu").state, RegionState::Unknown);
        b.record("a", Ok(())).unwrap();
        assert_eq!(b.region("eu").state, RegionState::Healthy);
        let e = b.record("b", Err(CheckFailure::Timeout)).unwrap().unwrap();
        assert_eq!(e.region_health.state, RegionState::Degraded);
        assert_eq!(e.region_health.score(), Some(0.5));
        b.record("a", Err(CheckFailure::Timeout)).unwrap();
        assert_eq!(b.region("eu").state, RegionState::Down);
        assert_eq!(b.region("us").state, RegionState::Unknown);
        assert_eq!(b.regions().len(), 2);
    }

    #[test]
    fn duplicate_and_invalid_checks_are_refused() {
        let mut b = HealthBook::new();
        b.add(spec("a", "eu", 1, 1)).unwrap();
        b.record("a", Ok(())).unwrap();
        assert_eq!(
            b.add(spec("a", "us", 1, 1)).unwrap_err(),
            HealthError::Duplicate("a".into())
        );
        assert_eq!(
            b.add(spec("b", "us", 0, 1)).unwrap_err().to_string(),
            "health check b: rise and fall must be at least 1"
        );
        // The first check and its state are intact.
        assert_eq!(b.status("a"), Some(CheckStatus::Up));
        assert_eq!(b.specs().count(), 1);
    }
}
