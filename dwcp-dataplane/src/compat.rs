//! Checking maps pinned by an earlier agent against the object about to adopt them.
//!
//! The loader re-uses a pinned map by name without looking at it; a pinned map of another
//! type or size (an upgrade that changed a map definition, e.g. the group tables going from a
//! map-in-map to double-buffered slots) would then fail deep in the verifier or in a typed
//! handle with a message that names neither the map nor the cause. This check runs first and
//! names every map that does not fit.

use std::{fmt, path::Path};

use aya::maps::MapInfo;
use dwcp_common::maps::names;

use super::{DataplaneError, Result};

/// What defines whether a pinned map can stand in for the object's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

fn type_name(t: u32) -> String {
    match t {
        1 => "hash".into(),
        2 => "array".into(),
        6 => "per-CPU array".into(),
        11 => "LPM trie".into(),
        12 => "array of maps".into(),
        13 => "hash of maps".into(),
        14 => "devmap".into(),
        25 => "devmap hash".into(),
        t => format!("map type {t}"),
    }
}

impl fmt::Display for MapShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, key {} B, value {} B, {} entries",
            type_name(self.map_type),
            self.key_size,
            self.value_size,
            self.max_entries
        )
    }
}

/// One pinned map that does not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinMismatch {
    pub map: &'static str,
    /// What is pinned, or why it could not be read.
    pub pinned: Result<MapShape, String>,
    pub expected: MapShape,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pinned {
            Ok(p) => write!(
                f,
                "{} is pinned as {p}, this object defines {}",
                self.map, self.expected
            ),
            Err(e) => write!(f, "{} is pinned but cannot be opened ({e})", self.map),
        }
    }
}

/// Every map of `object` pinned under `dir` whose type, key size, value size or size differs
/// from the object's definition. An object that does not parse is left to the loader to
/// report.
pub fn pin_mismatches(object: &[u8], dir: &Path) -> Vec<PinMismatch> {
    let Ok(obj) = aya_obj::Object::parse(object) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names::ALL {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let Some(def) = obj.maps.get(name) else {
            continue;
        };
        let expected = MapShape {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries: def.max_entries(),
        };
        let pinned = MapInfo::from_pin(&path)
            .and_then(|i| {
                Ok(MapShape {
                    map_type: i.map_type()? as u32,
                    key_size: i.key_size(),
                    value_size: i.value_size(),
                    max_entries: i.max_entries(),
                })
            })
            .map_err(|e| e.to_string());
        if pinned.as_ref() != Ok(&expected) {
            out.push(PinMismatch {
                map: name,
                pinned,
                expected,
            });
        }
    }
    out
}

pub(super) fn check_pins(object: &[u8], dir: &Path) -> Result<()> {
    let mismatches = pin_mismatches(object, dir);
    if mismatches.is_empty() {
        return Ok(());
    }
    Err(DataplaneError::IncompatiblePins {
        dir: dir.to_path_buf(),
        mismatches,
    })
}
