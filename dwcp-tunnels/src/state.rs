//! What the manager keeps on disk, one directory per tunnel under `<state_dir>/tunnels/`:
//!
//! | file | what |
//! |---|---|
//! | `spec.json` | the spec last asked for — written *before* the kernel is touched, removed *after* teardown, so a crash in between is finished or undone by the next reconcile |
//! | `private.key` | WireGuard private key, base64, mode 0600 |
//! | `private.key.next` | the key a rotation is moving to |
//! | `rotation.json` | the phase of an unfinished rotation |
//! | `peer.json` | a peer key learned from the peer's rotation, overriding the configured one |
//! | `key_exchange.json` | what the key exchange remembers of the peer: the send time of its last accepted request (no replay across restarts) and its last announced key change |
//!
//! Directories are mode 0700 and every file is written atomically with mode 0600.

use std::{
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{
    error::{Result, TunnelError},
    spec::TunnelSpec,
    wireguard::{
        keys::{remove_secret_file, write_secret_file},
        PrivateKey, PublicKey,
    },
};

/// The peer's key as learned from its rotation, while the config still names `replaces`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerOverride {
    pub replaces: PublicKey,
    pub public_key: PublicKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationPhase {
    /// The next key exists; the device still uses the current one.
    Staged,
    /// The device uses the next key; the current one is kept until the handshake proves it.
    Applied,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationState {
    pub phase: RotationPhase,
    pub old_public: PublicKey,
    pub new_public: PublicKey,
}

/// What the key exchange remembers of a tunnel's peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyExchangeState {
    /// The send time of the last request accepted from the peer; a request must be newer.
    pub last_accepted_ms: u64,
    pub announced: Option<Announcement>,
}

impl KeyExchangeState {
    /// Records `sent` if it is newer than the last accepted send time; whether it was.
    pub fn accept_send_time(&mut self, sent: u64) -> bool {
        let newer = sent > self.last_accepted_ms;
        if newer {
            self.last_accepted_ms = sent;
        }
        newer
    }
}

/// A key change the peer announced before switching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub old: PublicKey,
    pub new: PublicKey,
    /// When it came, by this end's clock.
    pub at_unix_ms: u64,
}

impl Announcement {
    /// The change's other key, when `key` is one of its two.
    pub fn other_than(&self, key: PublicKey) -> Option<PublicKey> {
        if key == self.old {
            Some(self.new)
        } else if key == self.new {
            Some(self.old)
        } else {
            None
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct StateStore {
    root: PathBuf,
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TunnelError::io(path, e)),
        _ => Ok(()),
    }
}

fn mkdir_private(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| TunnelError::io(path, e))
}

impl StateStore {
    pub fn open(state_dir: &Path) -> Result<StateStore> {
        let root = state_dir.join("tunnels");
        mkdir_private(state_dir)?;
        mkdir_private(&root)?;
        Ok(StateStore { root })
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn private_key_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("private.key")
    }

    pub fn next_key_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("private.key.next")
    }

    /// Tunnels with state, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(|e| TunnelError::io(&self.root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TunnelError::io(&self.root, e))?;
            if entry.path().join("spec.json").exists() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_json<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| TunnelError::BadFile {
                        path: path.to_path_buf(),
                        detail: format!("unreadable state: {e}"),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TunnelError::io(path, e)),
        }
    }

    /// Writes `value` unless the file already holds exactly it; returns whether it wrote.
    fn write_json<T: Serialize>(&self, name: &str, file: &str, value: &T) -> Result<bool> {
        let dir = self.dir(name);
        mkdir_private(&dir)?;
        let path = dir.join(file);
        let mut text = serde_json::to_vec_pretty(value).expect("state serializes");
        text.push(b'\n');
        if fs::read(&path).ok().as_deref() == Some(text.as_slice()) {
            return Ok(false);
        }
        write_secret_file(&path, &text)?;
        Ok(true)
    }

    pub fn read_spec(&self, name: &str) -> Result<Option<TunnelSpec>> {
        self.read_json(&self.dir(name).join("spec.json"))
    }

    pub fn write_spec(&self, spec: &TunnelSpec) -> Result<bool> {
        self.write_json(&spec.name, "spec.json", spec)
    }

    /// The tunnel's private key, generated (and stored) on first use.
    pub fn private_key(&self, name: &str) -> Result<(PrivateKey, bool)> {
        let path = self.private_key_path(name);
        if path.exists() {
            return Ok((PrivateKey::load(&path)?, false));
        }
        mkdir_private(&self.dir(name))?;
        let key = PrivateKey::generate();
        key.store(&path)?;
        Ok((key, true))
    }

    pub fn next_key(&self, name: &str) -> Result<Option<PrivateKey>> {
        let path = self.next_key_path(name);
        if !path.exists() {
            return Ok(None);
        }
        PrivateKey::load(&path).map(Some)
    }

    pub fn store_next_key(&self, name: &str, key: &PrivateKey) -> Result<()> {
        key.store(&self.next_key_path(name))
    }

    /// Makes the next key the current one (an atomic rename: the old key is gone at once).
    pub fn promote_next_key(&self, name: &str) -> Result<()> {
        let next = self.next_key_path(name);
        let current = self.private_key_path(name);
        fs::rename(&next, &current).map_err(|e| TunnelError::io(&next, e))
    }

    pub fn discard_next_key(&self, name: &str) -> Result<()> {
        remove_secret_file(&self.next_key_path(name))
    }

    pub fn rotation(&self, name: &str) -> Result<Option<RotationState>> {
        self.read_json(&self.dir(name).join("rotation.json"))
    }

    pub fn set_rotation(&self, name: &str, state: &RotationState) -> Result<()> {
        self.write_json(name, "rotation.json", state).map(|_| ())
    }

    pub fn clear_rotation(&self, name: &str) -> Result<()> {
        remove_if_present(&self.dir(name).join("rotation.json"))
    }

    pub fn peer_override(&self, name: &str) -> Result<Option<PeerOverride>> {
        self.read_json(&self.dir(name).join("peer.json"))
    }

    pub fn set_peer_override(&self, name: &str, o: &PeerOverride) -> Result<()> {
        self.write_json(name, "peer.json", o).map(|_| ())
    }

    pub fn clear_peer_override(&self, name: &str) -> Result<()> {
        remove_if_present(&self.dir(name).join("peer.json"))
    }

    /// Nothing recorded yet is the default state.
    pub fn key_exchange(&self, name: &str) -> Result<KeyExchangeState> {
        Ok(self
            .read_json(&self.dir(name).join("key_exchange.json"))?
            .unwrap_or_default())
    }

    /// Written atomically and synced (see `write_secret_file`): an accepted request's send
    /// time is on disk before it is acted on.
    pub fn set_key_exchange(&self, name: &str, state: &KeyExchangeState) -> Result<()> {
        self.write_json(name, "key_exchange.json", state)
            .map(|_| ())
    }

    pub fn clear_key_exchange(&self, name: &str) -> Result<()> {
        remove_if_present(&self.dir(name).join("key_exchange.json"))
    }

    /// Forgets everything about a tunnel; key files are overwritten before unlinking.
    /// `spec.json` goes last, so an interrupted removal is still known as a tunnel.
    pub fn remove(&self, name: &str) -> Result<()> {
        let dir = self.dir(name);
        if !dir.exists() {
            return Ok(());
        }
        remove_secret_file(&self.private_key_path(name))?;
        remove_secret_file(&self.next_key_path(name))?;
        for file in [
            "rotation.json",
            "peer.json",
            "key_exchange.json",
            "spec.json",
        ] {
            remove_if_present(&dir.join(file))?;
        }
        fs::remove_dir_all(&dir).map_err(|e| TunnelError::io(&dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TunnelsFile;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn spec_journal_round_trip_and_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let spec = TunnelsFile::parse(
            "[[tunnel]]\nname = \"vx1\"\n[tunnel.vxlan]\nvni = 5\nlocal = \"192.0.2.1\"\nremote = \"192.0.2.2\"\n",
        )
        .unwrap()
        .tunnels
        .remove(0);
        assert!(store.write_spec(&spec).unwrap());
        assert!(!store.write_spec(&spec).unwrap(), "same spec written twice");
        assert_eq!(store.read_spec("vx1").unwrap(), Some(spec));
        assert_eq!(store.names().unwrap(), vec!["vx1".to_string()]);
        let (key, created) = store.private_key("vx1").unwrap();
        assert!(created);
        let (again, created) = store.private_key("vx1").unwrap();
        assert!(!created);
        assert_eq!(key.public_key(), again.public_key());
        for p in [store.dir("vx1"), dir.path().join("tunnels")] {
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        for f in ["spec.json", "private.key"] {
            let mode = fs::metadata(store.dir("vx1").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        store.remove("vx1").unwrap();
        assert!(!store.dir("vx1").exists());
        assert!(store.names().unwrap().is_empty());
    }

    #[test]
    fn key_exchange_state_starts_empty_and_keeps_what_was_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut state = store.key_exchange("wg1").unwrap();
        assert_eq!(state, KeyExchangeState::default());
        assert!(state.accept_send_time(5));
        assert!(!state.accept_send_time(5), "the same send time twice");
        assert!(!state.accept_send_time(4));
        let (old, new) = (PrivateKey::generate(), PrivateKey::generate());
        let announced = Announcement {
            old: old.public_key(),
            new: new.public_key(),
            at_unix_ms: 7,
        };
        assert_eq!(
            announced.other_than(old.public_key()),
            Some(new.public_key())
        );
        assert_eq!(
            announced.other_than(new.public_key()),
            Some(old.public_key())
        );
        assert_eq!(
            announced.other_than(PrivateKey::generate().public_key()),
            None
        );
        state.announced = Some(announced);
        store.set_key_exchange("wg1", &state).unwrap();
        assert_eq!(store.key_exchange("wg1").unwrap(), state);
        let file = store.dir("wg1").join("key_exchange.json");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        store.clear_key_exchange("wg1").unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        fs::create_dir_all(store.dir("t1")).unwrap();
        fs::write(store.dir("t1").join("spec.json"), "{").unwrap();
        let err = store.read_spec("t1").unwrap_err().to_string();
        assert!(err.contains("t1/spec.json"), "{err}");
    }
}
