//! Where the current topology lives. Readers take a snapshot (`Arc<Topology>`) without
//! locking; writers build a new topology and swap it in atomically, so a reader never sees half
//! an update. Behind a trait so an etcd-backed store can replace the in-memory one.
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::error::TopologyError;
use super::model::{Topology, TopologyUpdate};

pub trait TopologyStore: Send + Sync {
    /// The current topology. Cheap: an `Arc` clone.
    fn snapshot(&self) -> Arc<Topology>;

    /// Applies a batch of updates atomically and returns the new generation. A refused batch
    /// leaves the stored topology unchanged.
    fn apply(&self, updates: &[TopologyUpdate]) -> Result<u64, TopologyError>;

    /// Replaces the whole topology (config reload) and returns the new generation, which is
    /// always above the previous one so caches keyed by generation are invalidated.
    fn replace(&self, topology: Topology) -> u64;
}

/// The topology of this process, swapped with `arc-swap`; writers are serialised by a mutex so
/// two concurrent updates cannot both start from the same snapshot and lose one.
pub struct InMemoryTopologyStore {
    current: ArcSwap<Topology>,
    writer: Mutex<()>,
}

impl InMemoryTopologyStore {
    pub fn new(topology: Topology) -> Self {
        InMemoryTopologyStore {
            current: ArcSwap::from_pointee(topology),
            writer: Mutex::new(()),
        }
    }
}

impl TopologyStore for InMemoryTopologyStore {
    fn snapshot(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    fn apply(&self, updates: &[TopologyUpdate]) -> Result<u64, TopologyError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.current.load().apply(updates)?;
        let generation = next.generation();
        self.current.store(Arc::new(next));
        Ok(generation)
    }

    fn replace(&self, topology: Topology) -> u64 {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.current.load().generation() + 1;
        self.current
            .store(Arc::new(topology.with_generation(generation)));
        generation
    }
}
