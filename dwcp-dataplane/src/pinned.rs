//! The pinned maps of a running fast path, opened by name from another process: the daemon's
//! link monitor, `dwcp-prober` and `dwcp maps`. Nothing here loads, creates or pins a map; the
//! fast path's maps are only read through these handles, but for those of the probe sender
//! (`PROBE_KEYS`; the prober's own `PROBE_SENT`, which no program uses).

use std::path::PathBuf;

use aya::maps::{Array, Map, MapData, MapError, MapInfo};
use dwcp_common::{maps::names, LinkConfig, LinkState, NextHop};

use crate::ProbeKeys;
use thiserror::Error;

/// A pinned map that cannot be used, named with its pin.
#[derive(Debug, Error)]
pub enum PinnedMapError {
    #[error("map {map}: cannot open the pin {path}: {source}")]
    Open {
        map: &'static str,
        path: PathBuf,
        source: Box<MapError>,
    },
    #[error("map {map}: the pin {path} is not of the expected type: {source} (pinned by a different dwcp version?)")]
    Type {
        map: &'static str,
        path: PathBuf,
        source: Box<MapError>,
    },
}

/// The maps pinned under one directory (`gateway.pin_dir`).
#[derive(Clone, Debug)]
pub struct PinnedMaps {
    dir: PathBuf,
}

impl PinnedMaps {
    pub fn new(dir: impl Into<PathBuf>) -> PinnedMaps {
        PinnedMaps { dir: dir.into() }
    }

    /// Where `name` is pinned.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The kernel's description of the map pinned as `name` (type, id, size).
    pub fn info(&self, name: &'static str) -> Result<MapInfo, PinnedMapError> {
        let path = self.path(name);
        MapInfo::from_pin(&path).map_err(|e| open_error(name, path, e))
    }

    /// The map pinned as `name`, as the aya type `T` (`Array<MapData, V>`, `HashMap`, ...).
    pub fn map<T: TryFrom<Map, Error = MapError>>(
        &self,
        name: &'static str,
    ) -> Result<T, PinnedMapError> {
        let path = self.path(name);
        let data = MapData::from_pin(&path).map_err(|e| open_error(name, path.clone(), e))?;
        Map::from_map_data(data)
            .and_then(T::try_from)
            .map_err(|source| PinnedMapError::Type {
                map: name,
                path,
                source: Box::new(source),
            })
    }

    /// `LINK_STATE`: the kernel's view of each link, from the probe replies.
    pub fn link_state(&self) -> Result<Array<MapData, LinkState>, PinnedMapError> {
        self.map(names::LINK_STATE)
    }

    /// `NEXTHOPS`: the next hops, and through them the links in use.
    pub fn nexthops(&self) -> Result<Array<MapData, NextHop>, PinnedMapError> {
        self.map(names::NEXTHOPS)
    }

    /// `LINK_CONFIG`: which links are monitored, and their detection settings.
    pub fn link_config(&self) -> Result<Array<MapData, LinkConfig>, PinnedMapError> {
        self.map(names::LINK_CONFIG)
    }

    /// `PROBE_KEYS`: the probed links' keys, for a probe sender.
    pub fn probe_keys(&self) -> Result<ProbeKeys, PinnedMapError> {
        self.map(names::PROBE_KEYS).map(ProbeKeys)
    }
}

fn open_error(map: &'static str, path: PathBuf, source: MapError) -> PinnedMapError {
    PinnedMapError::Open {
        map,
        path,
        source: Box::new(source),
    }
}
