//! Where reservations live across restarts. Behind a trait so that the shared store (etcd)
//! can replace the local file later.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::model::Reservation;

pub const STORE_VERSION: u32 = 1;

/// Everything the manager persists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    pub version: u32,
    /// Id the next reservation gets; ids are never reused.
    pub next_id: u64,
    pub reservations: Vec<Reservation>,
}

/// The state to store, borrowed from the manager (no copy of every reservation per change).
#[derive(Clone, Debug, Serialize)]
pub struct StateView<'a> {
    pub version: u32,
    pub next_id: u64,
    pub reservations: Vec<&'a Reservation>,
}

pub trait ReservationStore: Send {
    /// The stored state, or `None` if nothing was ever stored. A store that exists but cannot
    /// be read is an error.
    fn load(&mut self) -> Result<Option<StoredState>, StoreError>;
    /// Replaces the stored state. When this returns Ok the state survives a crash.
    fn save(&mut self, state: &StateView<'_>) -> Result<(), StoreError>;
}

/// A JSON snapshot file, replaced atomically: written to `<file>.tmp`, fsynced, renamed over
/// the file, and the directory fsynced, so a crash leaves the old or the new state, never a mix.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `<file>.corrupt-<now_unix_s>`, kept for the operator, so that the
    /// next load starts from nothing; returns the new name.
    pub fn set_aside(&self, now_unix_s: u64) -> Result<PathBuf, StoreError> {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".corrupt-{now_unix_s}"));
        let aside = PathBuf::from(name);
        fs::rename(&self.path, &aside).map_err(|e| self.io(e))?;
        Ok(aside)
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl ReservationStore for FileStore {
    fn load(&mut self) -> Result<Option<StoredState>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let state: StoredState =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STORE_VERSION {
            return Err(StoreError::Version {
                path: self.path.clone(),
                found: state.version,
                expected: STORE_VERSION,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &state.reservations {
            r.check().map_err(corrupt)?;
            if !seen.insert(r.id) {
                return Err(corrupt(format!("reservation {} appears twice", r.id)));
            }
            if r.id.0 >= state.next_id {
                return Err(corrupt(format!(
                    "reservation {} is not below next_id {}",
                    r.id, state.next_id
                )));
            }
        }
        Ok(Some(state))
    }

    fn save(&mut self, state: &StateView<'_>) -> Result<(), StoreError> {
        let mut tmp_name = self.path.clone().into_os_string();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let bytes = serde_json::to_vec_pretty(state).expect("reservations serialise");
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            // The rename is durable only once the directory entry is.
            let dir = match self.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io(e)
        })
    }
}

/// Keeps the state in memory only: for an agent run without persistence (and fast tests of
/// admission). A restart loses everything.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Option<StoredState>,
}

impl MemoryStore {
    /// A store that starts with `reservations` (a mirror's cache).
    pub fn holding(reservations: Vec<Reservation>) -> MemoryStore {
        let next_id = reservations.iter().map(|r| r.id.0 + 1).max().unwrap_or(1);
        MemoryStore {
            state: Some(StoredState {
                version: STORE_VERSION,
                next_id,
                reservations,
            }),
        }
    }
}

impl ReservationStore for MemoryStore {
    fn load(&mut self) -> Result<Option<StoredState>, StoreError> {
        Ok(self.state.clone())
    }

    fn save(&mut self, state: &StateView<'_>) -> Result<(), StoreError> {
        self.state = Some(StoredState {
            version: state.version,
            next_id: state.next_id,
            reservations: state.reservations.iter().map(|r| (*r).clone()).collect(),
        });
        Ok(())
    }
}
