//! `PROBE_KEYS`: each probed link's key, with which the probe sender makes the token of its
//! requests and the underlay program checks the replies (`dwcp_common::probe`).
//!
//! The key is the probes' own, not part of the agent's plan: whichever sender probes a link
//! first (the agent's sender or `dwcp-prober`) draws it from getrandom(2) and inserts it only
//! if the link has none (the first insert wins); every later sender, a restarted one or the
//! agent after the prober, adopts it. A restart therefore never changes the key under replies
//! in flight, and a key lives as long as the pinned maps.

use aya::maps::{HashMap, MapData, MapError};
use dwcp_common::{maps::names, probe::ProbeKey};

use crate::{map_err, DataplaneError, Result};

/// The pinned `PROBE_KEYS` of a running fast path (see [`crate::PinnedMaps::probe_keys`]).
pub struct ProbeKeys(pub(crate) HashMap<MapData, u32, ProbeKey>);

impl ProbeKeys {
    /// Link `link_id`'s key: the one in the map, else a new one.
    pub fn get_or_create(&mut self, link_id: u32) -> Result<ProbeKey> {
        key_of(&mut self.0, link_id)
    }
}

/// `BPF_NOEXIST`: insert only if the key is absent.
const NOEXIST: u64 = 1;

pub(crate) fn key_of(map: &mut HashMap<MapData, u32, ProbeKey>, link_id: u32) -> Result<ProbeKey> {
    match map.get(&link_id, 0) {
        Ok(key) => return Ok(key),
        Err(MapError::KeyNotFound) => {}
        Err(e) => return Err(map_err(names::PROBE_KEYS)(e)),
    }
    let key = random_key()?;
    match map.insert(link_id, key, NOEXIST) {
        Ok(()) => Ok(key),
        // Another sender was first: its key is the link's.
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
            map.get(&link_id, 0).map_err(map_err(names::PROBE_KEYS))
        }
        Err(e) => Err(map_err(names::PROBE_KEYS)(e)),
    }
}

fn random_key() -> Result<ProbeKey> {
    let mut b = [0u8; 16];
    // SAFETY: getrandom(2) writes at most 16 bytes into the buffer we own. Without flags it
    // blocks only until the kernel's pool is first initialised after boot.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(DataplaneError::Random(std::io::Error::last_os_error()));
    }
    let (k0, k1) = b.split_at(8);
    Ok(ProbeKey {
        k0: u64::from_ne_bytes(k0.try_into().expect("8 bytes")),
        k1: u64::from_ne_bytes(k1.try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        not(feature = "privileged"),
        ignore = "privileged: needs root and BPF (--features dwcp-dataplane/privileged)"
    )]
    fn a_link_keeps_the_first_key_drawn_for_it() {
        let mut map = HashMap::<MapData, u32, ProbeKey>::create(16, 0).unwrap();
        let first = key_of(&mut map, 3).unwrap();
        assert_ne!(first, ProbeKey::default());
        // Asked again (a restarted sender): the same key, not a new one.
        assert_eq!(key_of(&mut map, 3).unwrap(), first);
        // Another link: its own key.
        assert_ne!(key_of(&mut map, 4).unwrap(), first);
        // A sender that drew a key too late does not replace the first one.
        let late = random_key().unwrap();
        assert!(map.insert(3, late, NOEXIST).is_err());
        assert_eq!(map.get(&3, 0).unwrap(), first);
    }
}
