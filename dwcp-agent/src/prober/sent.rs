//! `PROBE_SENT`: how many probes the prober has sent on each link, in a BPF array pinned next
//! to the fast path's maps. The agent's link monitor needs these counts for the loss ratio
//! (`1 - replies / sent`, the replies being in `LINK_STATE`); a pinned map hands them over
//! without a socket protocol, survives either process restarting, and `bpftool map dump`
//! shows it like the other maps.

use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, MapData, MapError},
    pin::PinError,
};
use dwcp_common::MAX_LINKS;
use dwcp_dataplane::{PinnedMapError, PinnedMaps};
use thiserror::Error;

use crate::probe::ProbeCounts;

/// File name of the map under the pin directory (no program uses it, so it is created here
/// rather than in the eBPF object).
pub const PROBE_SENT: &str = "PROBE_SENT";

#[derive(Debug, Error)]
pub enum SentMapError {
    #[error(transparent)]
    Pinned(#[from] PinnedMapError),
    #[error("creating the probe counter map: {0}")]
    Create(MapError),
    #[error("pinning the probe counter map at {path}: {source}")]
    Pin { path: PathBuf, source: PinError },
    #[error("{path} is not an array of {MAX_LINKS} counters: {detail}")]
    Layout { path: PathBuf, detail: String },
}

/// Opens `<pin_dir>/PROBE_SENT`, creating and pinning it first if it does not exist (either
/// the prober or the agent may start first).
pub fn open_sent_map(pin_dir: &Path) -> Result<Array<MapData, u64>, SentMapError> {
    let path = pin_dir.join(PROBE_SENT);
    if !path.exists() {
        let map = Array::<MapData, u64>::create(MAX_LINKS, 0).map_err(SentMapError::Create)?;
        match map.pin(&path) {
            Ok(()) => {}
            // The other process pinned its map in between: use that one.
            Err(_) if path.exists() => {}
            Err(source) => return Err(SentMapError::Pin { path, source }),
        }
    }
    let array: Array<MapData, u64> = PinnedMaps::new(pin_dir).map(PROBE_SENT)?;
    if array.len() < MAX_LINKS {
        return Err(SentMapError::Layout {
            path,
            detail: format!("only {} entries", array.len()),
        });
    }
    Ok(array)
}

/// The agent's side: the probe counts of the links it monitors, read from `PROBE_SENT`. The
/// prober runs the re-probe backoff of dead links itself, so switching it here does nothing.
pub struct PinnedProbeCounts {
    links: Vec<u32>,
    sent: Array<MapData, u64>,
}

impl PinnedProbeCounts {
    /// Counts of `links` from the map under `pin_dir`.
    pub fn open(pin_dir: &Path, links: Vec<u32>) -> Result<PinnedProbeCounts, SentMapError> {
        Ok(PinnedProbeCounts {
            links,
            sent: open_sent_map(pin_dir)?,
        })
    }

    /// Replaces the set of links the monitor watches.
    pub fn set_links(&mut self, links: Vec<u32>) {
        self.links = links;
    }
}

impl ProbeCounts for PinnedProbeCounts {
    fn links(&self) -> Vec<u32> {
        self.links.clone()
    }

    fn sent(&self, link_id: u32) -> Option<u64> {
        // A link out of range is not probed; an unreadable map reads as "nothing sent", which
        // keeps the link observed (liveness needs no counts) without inventing loss.
        if link_id >= MAX_LINKS {
            return None;
        }
        Some(self.sent.get(&link_id, 0).unwrap_or(0))
    }

    fn set_reprobe_backoff(&self, _link_id: u32, _dead: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bpffs directory of this test, removed on drop.
    struct PinDir(PathBuf);
    impl PinDir {
        fn new(tag: &str) -> PinDir {
            let p = PathBuf::from(format!(
                "/sys/fs/bpf/dwcp-test-{tag}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&p).unwrap();
            PinDir(p)
        }
    }
    impl Drop for PinDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn prober_and_agent_share_the_counts_through_the_pin() {
        let dir = PinDir::new("sent");
        let mut prober_side = open_sent_map(&dir.0).unwrap();
        prober_side.set(3, 1234u64, 0).unwrap();
        // A second opener (the agent) sees the same map, not a new one.
        let agent = PinnedProbeCounts::open(&dir.0, vec![3, 4]).unwrap();
        assert_eq!(agent.links(), [3, 4]);
        assert_eq!(agent.sent(3), Some(1234));
        assert_eq!(agent.sent(4), Some(0));
        assert_eq!(agent.sent(MAX_LINKS), None);
        prober_side.set(3, 1300u64, 0).unwrap();
        assert_eq!(agent.sent(3), Some(1300));
        // The pin outlives both handles.
        drop(prober_side);
        drop(agent);
        let again = open_sent_map(&dir.0).unwrap();
        assert_eq!(again.get(&3, 0).unwrap(), 1300);
    }

    #[test]
    fn a_foreign_map_at_the_pin_path_is_refused_by_name() {
        let dir = PinDir::new("sentbad");
        let small = Array::<MapData, u64>::create(4, 0).unwrap();
        small.pin(dir.0.join(PROBE_SENT)).unwrap();
        let e = open_sent_map(&dir.0)
            .err()
            .expect("a 4-entry map is refused");
        assert!(
            e.to_string()
                .contains("PROBE_SENT is not an array of 1024 counters"),
            "{e}"
        );
        std::fs::remove_file(dir.0.join(PROBE_SENT)).unwrap();
        let wrong_value = Array::<MapData, u32>::create(MAX_LINKS, 0).unwrap();
        wrong_value.pin(dir.0.join(PROBE_SENT)).unwrap();
        let e = open_sent_map(&dir.0)
            .err()
            .expect("4-byte values are refused");
        assert!(
            e.to_string()
                .contains("PROBE_SENT is not of the expected type"),
            "{e}"
        );
    }
}
