//! Path redundancy: each destination has a primary path and up to three secondaries, chosen
//! link-disjoint where the candidates allow. Link events move a destination off a dead path at
//! once; moving to a better path (failback to the primary, away from a degraded one) waits
//! until that path has been stable for a hold-down time, so a flapping link does not bounce
//! the route.
//!
//! Pure logic: the owner feeds it link events and the monotonic time, and acts on the path
//! changes it returns (the route updater reprograms the next-hop groups).

mod policy;
mod selection;

pub use policy::{
    ActivePath, ChangeReason, LinkHealth, PathChange, PathHealth, PathRedundancy, PathRole,
    RedundancyPolicy,
};
pub use selection::{select_path_set, MAX_CANDIDATES};

use thiserror::Error;

/// Underlay link id, as in `LINK_CONFIG` / `LINK_STATE` and the probe header.
pub type LinkId = u32;

/// Secondaries per destination, besides the primary.
pub const MAX_SECONDARIES: usize = 3;

/// One path to a destination, as the routing engine computes it: its id (the VXLAN network
/// identifier it is carried with) and the links it crosses, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PathSpec {
    pub path_id: u32,
    pub links: Vec<LinkId>,
}

/// The paths of one destination: the primary, then the secondaries in order of preference.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathSet {
    pub primary: PathSpec,
    pub secondaries: Vec<PathSpec>,
}

impl PathSet {
    /// Primary first, then the secondaries.
    pub fn iter(&self) -> impl Iterator<Item = &PathSpec> {
        std::iter::once(&self.primary).chain(&self.secondaries)
    }

    /// Checks the set: at most [`MAX_SECONDARIES`] secondaries, unique path ids, every path
    /// non-empty and without a repeated link.
    pub fn validate(&self, destination: &str) -> Result<(), RedundancyError> {
        if self.secondaries.len() > MAX_SECONDARIES {
            return Err(RedundancyError::TooManySecondaries {
                destination: destination.to_string(),
                count: self.secondaries.len(),
            });
        }
        let mut ids = std::collections::BTreeSet::new();
        for p in self.iter() {
            validate_path(destination, p)?;
            if !ids.insert(p.path_id) {
                return Err(RedundancyError::DuplicatePathId {
                    destination: destination.to_string(),
                    path_id: p.path_id,
                });
            }
        }
        Ok(())
    }
}

fn validate_path(destination: &str, p: &PathSpec) -> Result<(), RedundancyError> {
    if p.links.is_empty() {
        return Err(RedundancyError::EmptyPath {
            destination: destination.to_string(),
            path_id: p.path_id,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for l in &p.links {
        if !seen.insert(*l) {
            return Err(RedundancyError::RepeatedLink {
                destination: destination.to_string(),
                path_id: p.path_id,
                link_id: *l,
            });
        }
    }
    Ok(())
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RedundancyError {
    #[error("destination {destination}: no candidate path")]
    NoPaths { destination: String },
    #[error("destination {destination}: {count} secondary paths, at most 3 allowed")]
    TooManySecondaries { destination: String, count: usize },
    #[error("destination {destination}: path {path_id} crosses no link")]
    EmptyPath { destination: String, path_id: u32 },
    #[error("destination {destination}: path {path_id} crosses link {link_id} twice")]
    RepeatedLink {
        destination: String,
        path_id: u32,
        link_id: LinkId,
    },
    #[error("destination {destination}: path id {path_id} is used twice")]
    DuplicatePathId { destination: String, path_id: u32 },
    #[error("unknown destination {0}")]
    UnknownDestination(String),
}
