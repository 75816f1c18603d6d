//! Health check settings: the TOML form (`[[health_check]]` tables) and the checked form.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::HealthError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Http,
}

/// One `[[health_check]]` table of the agent's configuration.
///
/// ```toml
/// [[health_check]]
/// name = "api-eu"
/// region = "eu-west"
/// kind = "http"            # or "tcp"
/// address = "10.1.0.5:8080"
/// path = "/healthz"        # http only, default "/"
/// expect_status = [200]    # http only, default [200]
/// interval_ms = 5000
/// timeout_ms = 2000
/// rise = 2
/// fall = 3
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub name: String,
    pub region: String,
    pub kind: CheckKind,
    pub address: String,
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP `Host` header; default: the address.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub expect_status: Option<Vec<u16>>,
    #[serde(default = "defaults::interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "defaults::rise")]
    pub rise: u32,
    #[serde(default = "defaults::fall")]
    pub fall: u32,
}

mod defaults {
    // The seed's deployment runs checks every 5 s; rise 2 / fall 3 as HAProxy and keepalived.
    pub fn interval_ms() -> u64 {
        5_000
    }
    pub fn timeout_ms() -> u64 {
        2_000
    }
    pub fn rise() -> u32 {
        2
    }
    pub fn fall() -> u32 {
        3
    }
}

/// What a check connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckTarget {
    /// Healthy if a TCP connection is accepted.
    Tcp { addr: SocketAddr },
    /// Healthy if `GET path` answers with one of `expect_status`.
    Http {
        addr: SocketAddr,
        host: String,
        path: String,
        expect_status: Vec<u16>,
    },
}

/// A checked health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckSpec {
    pub name: String,
    pub region: String,
    pub target: CheckTarget,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes before a check is up.
    pub rise: u32,
    /// Consecutive failures before a check is down.
    pub fall: u32,
}

impl HealthCheckSpec {
    /// Checks the settings that do not depend on the target (the names, timing, thresholds).
    pub fn validate(&self) -> Result<(), HealthError> {
        let bad = |problem: String| {
            Err(HealthError::Invalid {
                check: if self.name.is_empty() {
                    "(unnamed)".into()
                } else {
                    self.name.clone()
                },
                problem,
            })
        };
        if self.name.trim().is_empty() {
            return bad("the name is empty".into());
        }
        if self.region.trim().is_empty() {
            return bad("the region is empty".into());
        }
        if self.interval < Duration::from_millis(10) {
            return bad(format!("interval {:?} is below 10 ms", self.interval));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return bad(format!(
                "timeout {:?} must be above 0 and at most the interval {:?}",
                self.timeout, self.interval
            ));
        }
        if self.rise == 0 || self.fall == 0 {
            return bad("rise and fall must be at least 1".into());
        }
        if let CheckTarget::Http {
            host,
            path,
            expect_status,
            ..
        } = &self.target
        {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(format!(
                    "path {path:?} must start with / and contain no space or control character"
                ));
            }
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(format!(
                    "host {host:?} is empty or has a space or control character"
                ));
            }
            if expect_status.is_empty() {
                return bad("expect_status is empty".into());
            }
            if let Some(s) = expect_status.iter().find(|s| !(100..=599).contains(*s)) {
                return bad(format!("expected status {s} is not an HTTP status"));
            }
        }
        Ok(())
    }
}

impl TryFrom<HealthCheckConfig> for HealthCheckSpec {
    type Error = HealthError;

    fn try_from(c: HealthCheckConfig) -> Result<Self, Self::Error> {
        let invalid = |problem: String| HealthError::Invalid {
            check: c.name.clone(),
            problem,
        };
        let addr: SocketAddr = c.address.parse().map_err(|_| {
            invalid(format!(
                "address {:?} is not an IP address with a port",
                c.address
            ))
        })?;
        let target = match c.kind {
            CheckKind::Tcp => {
                if c.path.is_some() || c.host.is_some() || c.expect_status.is_some() {
                    return Err(invalid(
                        "path, host and expect_status apply to http checks only".into(),
                    ));
                }
                CheckTarget::Tcp { addr }
            }
            CheckKind::Http => CheckTarget::Http {
                addr,
                host: c.host.clone().unwrap_or_else(|| c.address.clone()),
                path: c.path.clone().unwrap_or_else(|| "/".into()),
                expect_status: c.expect_status.clone().unwrap_or_else(|| vec![200]),
            },
        };
        let spec = HealthCheckSpec {
            name: c.name,
            region: c.region,
            target,
            interval: Duration::from_millis(c.interval_ms),
            timeout: Duration::from_millis(c.timeout_ms),
            rise: c.rise,
            fall: c.fall,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        health_check: Vec<HealthCheckConfig>,
    }

    fn parse(toml_text: &str) -> Result<HealthCheckSpec, HealthError> {
        let f: File = toml::from_str(toml_text).unwrap();
        f.health_check.into_iter().next().unwrap().try_into()
    }

    #[test]
    fn http_check_from_toml_with_defaults() {
        let s = parse(
            r#"
            [[health_check]]
            name = "api-eu"
            region = "eu-west"
            kind = "http"
            address = "10.1.0.5:8080"
            path = "/healthz"
            "#,
        )
        .unwrap();
        assert_eq!(
            s.target,
            CheckTarget::Http {
                addr: "10.1.0.5:8080".parse().unwrap(),
                host: "10.1.0.5:8080".into(),
                path: "/healthz".into(),
                expect_status: vec![200],
            }
        );
        assert_eq!(
            (s.interval, s.timeout, s.rise, s.fall),
            (Duration::from_secs(5), Duration::from_secs(2), 2, 3)
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let base = r#"
            [[health_check]]
            name = "db"
            region = "us-east"
            kind = "tcp"
        "#;
        let e = parse(&format!("{base}\naddress = \"db.internal:5432\"")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "health check db: address \"db.internal:5432\" is not an IP address with a port"
        );
        let e = parse(&format!(
            "{base}\naddress = \"10.0.0.1:5432\"\ntimeout_ms = 9000"
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "health check db: timeout 9s must be above 0 and at most the interval 5s"
        );
        let e = parse(&format!(
            "{base}\naddress = \"10.0.0.1:5432\"\npath = \"/x\""
        ))
        .unwrap_err();
        assert!(e.to_string().contains("http checks only"), "{e}");
        let e = parse(
            r#"
            [[health_check]]
            name = "web"
            region = "us-east"
            kind = "http"
            address = "10.0.0.1:80"
            path = "/a b"
            "#,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("health check web: path"), "{e}");
        let e = parse(
            r#"
            [[health_check]]
            name = "web"
            region = "us-east"
            kind = "http"
            address = "10.0.0.1:80"
            expect_status = [700]
            "#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "health check web: expected status 700 is not an HTTP status"
        );
    }
}
