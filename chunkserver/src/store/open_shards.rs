//! Shard files kept open between reads. Opening a shard costs a path walk, an open, a
//! header read and an fstat; a 4 KiB read costs one pread. Shards never change once stored,
//! so an open file stays good until its index entry is replaced: every entry carries a
//! serial, and a kept file is used only while it was opened under the current serial.

use super::shard_file::ShardReader;
use lattice_common::ids::ShardId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Files kept open at most (well under the usual 1024 descriptors per process, which the
/// server also needs for connections and writes).
pub const MAX_OPEN: usize = 256;

struct Kept {
    serial: u64,
    reader: Arc<ShardReader>,
    /// When it was last used (a tick of [`Kept`]'s owner), for evicting the coldest.
    used: u64,
}

#[derive(Default)]
struct Inner {
    kept: HashMap<ShardId, Kept>,
    tick: u64,
}

#[derive(Default)]
pub struct OpenShards {
    inner: Mutex<Inner>,
}

impl OpenShards {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept file of `shard` if it was opened under `serial`.
    pub fn get(&self, shard: ShardId, serial: u64) -> Option<Arc<ShardReader>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let kept = inner.kept.get_mut(&shard).filter(|k| k.serial == serial)?;
        kept.used = tick;
        Some(kept.reader.clone())
    }

    /// Keeps `reader`, opened under `serial`, closing the least recently used file if full.
    pub fn keep(&self, shard: ShardId, serial: u64, reader: Arc<ShardReader>) {
        let mut inner = self.lock();
        inner.tick += 1;
        let used = inner.tick;
        if inner.kept.len() >= MAX_OPEN && !inner.kept.contains_key(&shard) {
            let coldest = inner
                .kept
                .iter()
                .min_by_key(|(_, k)| k.used)
                .map(|(s, _)| *s);
            if let Some(coldest) = coldest {
                inner.kept.remove(&coldest);
            }
        }
        inner.kept.insert(
            shard,
            Kept {
                serial,
                reader,
                used,
            },
        );
    }

    /// Closes the kept file of `shard` (deleted, moved or replaced: its space comes back
    /// only once no descriptor holds it).
    pub fn forget(&self, shard: ShardId) {
        self.lock().kept.remove(&shard);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().kept.len()
    }
}
