//! Tokio tasks: one per check runs it at its interval and reports the outcome to one
//! aggregator, which owns the [`HealthBook`] and publishes events and region health.

use std::collections::BTreeMap;

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{run_check, HealthBook, HealthCheckSpec, HealthError, HealthEvent, RegionHealth};

/// The running checks. Dropping it stops them.
#[derive(Debug)]
pub struct HealthMonitor {
    tasks: Vec<JoinHandle<()>>,
    regions: watch::Receiver<BTreeMap<String, RegionHealth>>,
}

impl HealthMonitor {
    /// Validates every check, then starts them (nothing starts if one is invalid or two share
    /// a name). Transitions go to `events`; must run inside a tokio runtime.
    pub fn spawn(
        specs: Vec<HealthCheckSpec>,
        events: mpsc::Sender<HealthEvent>,
    ) -> Result<HealthMonitor, HealthError> {
        let mut book = HealthBook::new();
        for s in specs {
            book.add(s)?;
        }
        let (regions_tx, regions) = watch::channel(book.regions());
        let (outcome_tx, mut outcome_rx) = mpsc::channel(64);
        let mut tasks = Vec::new();
        for spec in book.specs().cloned() {
            let tx = outcome_tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(spec.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let outcome = run_check(&spec.target, spec.timeout).await.map(|_| ());
                    if tx.send((spec.name.clone(), outcome)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        drop(outcome_tx);
        tasks.push(tokio::spawn(async move {
            while let Some((name, outcome)) = outcome_rx.recv().await {
                let Ok(Some(ev)) = book.record(&name, outcome) else {
                    continue;
                };
                match &ev.cause {
                    Some(cause) => tracing::warn!(
                        check = %ev.check, region = %ev.region, %cause,
                        "health check {:?} -> {:?}, region {:?}", ev.from, ev.to, ev.region_health.state
                    ),
                    None => tracing::info!(
                        check = %ev.check, region = %ev.region,
                        "health check {:?} -> {:?}, region {:?}", ev.from, ev.to, ev.region_health.state
                    ),
                }
                regions_tx.send_replace(book.regions());
                // Nobody listening for events is fine: the region health still updates.
                let _ = events.send(ev).await;
            }
        }));
        Ok(HealthMonitor { tasks, regions })
    }

    /// Every region's health, updated at each transition.
    pub fn regions(&self) -> watch::Receiver<BTreeMap<String, RegionHealth>> {
        self.regions.clone()
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{CheckFailure, CheckStatus, CheckTarget, RegionState};
    use std::{
        net::SocketAddr,
        sync::{
            atomic::{AtomicU8, Ordering},
            Arc,
        },
        time::Duration,
    };
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    const SERVE_OK: u8 = 0;
    const SERVE_503: u8 = 1;
    const SERVE_NOTHING: u8 = 2;

    /// A tiny HTTP responder whose behaviour the test switches: 200, 503, or accept and then
    /// say nothing (a hung service).
    async fn responder(mode: Arc<AtomicU8>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mode = mode.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = 0;
                    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    let answer: &[u8] = match mode.load(Ordering::Relaxed) {
                        SERVE_OK => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        SERVE_503 => {
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let _ = s.write_all(answer).await;
                });
            }
        });
        addr
    }

    fn spec(name: &str, target: CheckTarget) -> HealthCheckSpec {
        HealthCheckSpec {
            name: name.into(),
            region: "eu-west".into(),
            target,
            // Generous for a loopback server, so a loaded build machine does not flip a check.
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(250),
            rise: 2,
            fall: 2,
        }
    }

    /// Waits for the next event (bounded, so a broken monitor fails instead of hanging).
    async fn next(rx: &mut mpsc::Receiver<HealthEvent>) -> HealthEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no health event within 10 s")
            .unwrap()
    }

    #[tokio::test]
    async fn region_health_follows_real_servers() {
        let mode = Arc::new(AtomicU8::new(SERVE_OK));
        let web = responder(mode.clone()).await;
        let db = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let db_addr = db.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let monitor = HealthMonitor::spawn(
            vec![
                spec(
                    "web",
                    CheckTarget::Http {
                        addr: web,
                        host: "web".into(),
                        path: "/healthz".into(),
                        expect_status: vec![200],
                    },
                ),
                spec("db", CheckTarget::Tcp { addr: db_addr }),
            ],
            tx,
        )
        .unwrap();
        let regions = monitor.regions();
        assert_eq!(regions.borrow()["eu-west"].state, RegionState::Unknown);

        let mut ups = [next(&mut rx).await, next(&mut rx).await];
        ups.sort_by(|a, b| a.check.cmp(&b.check));
        assert!(ups.iter().all(|e| e.to == CheckStatus::Up));
        assert_eq!(ups[1].check, "web");
        assert_eq!(regions.borrow()["eu-west"].state, RegionState::Healthy);

        // The web service answers 503: down after two failures, region degraded.
        mode.store(SERVE_503, Ordering::Relaxed);
        let e = next(&mut rx).await;
        assert_eq!((e.check.as_str(), e.to), ("web", CheckStatus::Down));
        assert_eq!(
            e.cause,
            Some(CheckFailure::BadStatus {
                got: 503,
                expected: vec![200]
            })
        );
        assert_eq!(e.region_health.state, RegionState::Degraded);

        mode.store(SERVE_OK, Ordering::Relaxed);
        let e = next(&mut rx).await;
        assert_eq!((e.check.as_str(), e.to), ("web", CheckStatus::Up));

        // Now it stops answering altogether, and the database goes away: region down.
        mode.store(SERVE_NOTHING, Ordering::Relaxed);
        drop(db);
        let mut downs = [next(&mut rx).await, next(&mut rx).await];
        downs.sort_by(|a, b| a.check.cmp(&b.check));
        assert_eq!(downs[0].cause, Some(CheckFailure::Refused));
        assert_eq!(downs[1].cause, Some(CheckFailure::Timeout));
        assert_eq!(regions.borrow()["eu-west"].state, RegionState::Down);
    }

    #[tokio::test]
    async fn nothing_starts_when_a_check_is_bad() {
        let (tx, _rx) = mpsc::channel(1);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let e = HealthMonitor::spawn(
            vec![
                spec("a", CheckTarget::Tcp { addr }),
                spec("a", CheckTarget::Tcp { addr }),
            ],
            tx,
        )
        .unwrap_err();
        assert_eq!(e, HealthError::Duplicate("a".into()));
    }
}
