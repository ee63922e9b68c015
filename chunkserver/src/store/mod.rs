//! Shard storage on one or more local directories ("disks").
//!
//! Layout of a disk: the marker file `LATTICEFS` (see `layout`),
//! `shards/<xx>/<slice id as 16 hex digits>.<shard index>` where `xx` is the low byte of the
//! slice id, and `tmp/` for writes in progress (emptied at start). Paths are built from
//! integer ids only, so nothing a peer sends can name a file elsewhere.

mod disks;
mod layout;
mod open_shards;
pub mod shard_file;

use bytes::Bytes;
use lattice_common::ids::{ShardId, SliceId};
use lattice_common::layout::SliceLayout;
use lattice_common::wire::{DiskStatus, HealthCounters, ShardInfo};
use open_shards::OpenShards;
use shard_file::{ShardHeader, ShardReader, ShardWriter};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shard {0} not found")]
    NotFound(ShardId),
    #[error("corrupt shard: {0}")]
    Corrupt(String),
    #[error("no disk has room ({0})")]
    NoSpace(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A read of one piece (at most 1 MiB) slower than this counts as a slow operation.
const SLOW_READ: std::time::Duration = std::time::Duration::from_secs(1);
/// Making a shard durable (fsync, rename, directory fsync) slower than this is slow.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Counters that predict a failing server, reported in status.
#[derive(Default)]
pub struct Health {
    pub io_errors: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub slow_ops: AtomicU64,
}

impl Health {
    pub fn snapshot(&self) -> HealthCounters {
        HealthCounters {
            io_errors: self.io_errors.load(Ordering::Relaxed),
            checksum_errors: self.checksum_errors.load(Ordering::Relaxed),
            slow_ops: self.slow_ops.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiskState {
    Active,
    /// Being emptied: gets no new shards.
    Removing,
    /// Emptied and forgotten; kept so disk numbers stay stable.
    Removed,
}

struct Disk {
    root: PathBuf,
    /// The store id in its marker (one directory reached by two paths is one disk).
    id: u64,
    state: DiskState,
}

impl Disk {
    fn shard_path(&self, shard: ShardId) -> PathBuf {
        self.root
            .join(layout::SHARDS)
            .join(format!("{:02x}", shard.slice.0 & 0xff))
            .join(format!("{}.{}", shard.slice, shard.index))
    }

    fn tmp_path(&self, shard: ShardId) -> PathBuf {
        static NONCE: AtomicU64 = AtomicU64::new(0);
        let n = NONCE.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(layout::TMP)
            .join(layout::temp_name(shard, n))
    }

    /// (total, free) bytes of the filesystem under this disk.
    fn space(&self) -> Result<(u64, u64), StoreError> {
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| shard_file::io_error(&self.root, e.into()))?;
        let frag = st.fragment_size();
        Ok((st.blocks() * frag, st.blocks_available() * frag))
    }
}

#[derive(Clone, Copy)]
struct Entry {
    disk: u32,
    layout: SliceLayout,
    file_bytes: u64,
    stored_secs: u64,
    /// Unique to this entry (a replaced or moved shard gets a new one): a file kept open
    /// under another serial is stale.
    serial: u64,
}

/// Faults to inject, for testing how the cluster copes with a failing server. Off unless
/// configured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Fraction (0..=1) of shard reads that fail as if the disk returned EIO.
    pub read_error_rate: f64,
}

pub struct Store {
    disks: RwLock<Vec<Disk>>,
    index: RwLock<BTreeMap<ShardId, Entry>>,
    /// Bytes each disk keeps free for the filesystem's own needs.
    reserve: u64,
    pub health: Health,
    faults: Faults,
    /// Held while a shard bucket directory is created, so no write lands in one before it
    /// is durable.
    buckets: Mutex<()>,
    open: OpenShards,
    serials: AtomicU64,
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_name(name: &str) -> Option<ShardId> {
    let (slice, index) = name.split_once('.')?;
    if slice.len() != 16 {
        return None;
    }
    let slice = u64::from_str_radix(slice, 16).ok()?;
    let index = index.parse::<u16>().ok()?;
    Some(ShardId::new(SliceId(slice), index))
}

impl Store {
    /// Opens the given directories (making new or empty ones data directories) and indexes
    /// the shards they hold. Refuses, before changing anything, a directory that is not
    /// empty and not a data directory.
    pub fn open(roots: &[PathBuf], reserve: u64, faults: Faults) -> Result<Store, StoreError> {
        if roots.is_empty() {
            return Err(StoreError::Invalid(
                "at least one data directory is needed".into(),
            ));
        }
        for root in roots {
            layout::inspect(root)?;
        }
        let mut disks: Vec<Disk> = Vec::new();
        for root in roots {
            let id = layout::claim(root)?;
            if let Some(twin) = disks.iter().find(|d| d.id == id) {
                return Err(StoreError::Invalid(format!(
                    "{} and {} are the same data directory",
                    twin.root.display(),
                    root.display()
                )));
            }
            layout::prepare(root)?;
            disks.push(Disk {
                root: root.clone(),
                id,
                state: DiskState::Active,
            });
        }
        let store = Store {
            disks: RwLock::new(disks),
            index: RwLock::new(BTreeMap::new()),
            reserve,
            health: Health::default(),
            faults,
            buckets: Mutex::new(()),
            open: OpenShards::default(),
            serials: AtomicU64::new(0),
        };
        for (i, root) in roots.iter().enumerate() {
            store.scan(i as u32, root)?;
        }
        Ok(store)
    }

    fn disks(&self) -> std::sync::RwLockReadGuard<'_, Vec<Disk>> {
        self.disks.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shard_path(&self, disk: u32, shard: ShardId) -> PathBuf {
        self.disks()[disk as usize].shard_path(shard)
    }

    /// Indexes the shards of one prepared data directory; shards already indexed from
    /// another directory are left alone.
    fn scan(&self, disk_no: u32, root: &std::path::Path) -> Result<(), StoreError> {
        let shards = root.join(layout::SHARDS);
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let mut found = 0u64;
        for sub in std::fs::read_dir(&shards).map_err(|e| shard_file::io_error(&shards, e))? {
            let sub = sub.map_err(|e| shard_file::io_error(&shards, e))?.path();
            let Ok(files) = std::fs::read_dir(&sub) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                let name = file.file_name();
                let Some(id) = name.to_str().and_then(parse_name) else {
                    warn!(path = %path.display(), "ignoring a file that is not a shard");
                    continue;
                };
                match ShardReader::open(&path) {
                    Ok(r) if r.header.shard == id => {
                        if index.contains_key(&id) {
                            warn!(path = %path.display(), "shard also on another disk; ignoring this copy");
                            continue;
                        }
                        let modified = file.metadata().and_then(|m| m.modified());
                        let entry = Entry {
                            disk: disk_no,
                            layout: r.header.layout,
                            file_bytes: r.header.file_bytes(),
                            stored_secs: modified.map_or(0, unix_secs),
                            serial: self.next_serial(),
                        };
                        index.insert(id, entry);
                        found += 1;
                    }
                    Ok(r) => {
                        warn!(path = %path.display(), header = %r.header.shard, "file name and header disagree; ignoring")
                    }
                    Err(e) => {
                        self.health.checksum_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(path = %path.display(), "unreadable shard: {e}");
                    }
                }
            }
        }
        info!(disk = %root.display(), shards = found, "disk indexed");
        Ok(())
    }

    /// Counts a failure in the health counters on its way out.
    fn note<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Err(StoreError::Corrupt(_)) => {
                self.health.checksum_errors.fetch_add(1, Ordering::Relaxed)
            }
            Err(StoreError::Io { .. }) => self.health.io_errors.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        r
    }

    /// Starts writing a shard on the disk with the most free space that can hold it.
    pub fn create(
        &self,
        shard: ShardId,
        layout: SliceLayout,
    ) -> Result<(ShardWriter, u32), StoreError> {
        if shard.index.0 as usize >= layout.policy.total_shards() {
            return Err(StoreError::Invalid(format!(
                "shard index {} outside policy {}",
                shard.index, layout.policy
            )));
        }
        let header = ShardHeader::new(shard, layout);
        let need = header.file_bytes() + self.reserve;
        let mut best: Option<(u32, u64)> = None;
        for (i, disk) in self.disks().iter().enumerate() {
            if disk.state != DiskState::Active {
                continue;
            }
            match disk.space() {
                Ok((_, free)) if free >= need && best.is_none_or(|(_, f)| free > f) => {
                    best = Some((i as u32, free))
                }
                Ok(_) => {}
                Err(e) => warn!(disk = %disk.root.display(), "cannot read free space: {e}"),
            }
        }
        let (disk_no, _) = best.ok_or_else(|| {
            StoreError::NoSpace(format!(
                "{} bytes needed for shard {shard}",
                header.file_bytes()
            ))
        })?;
        let (dest, tmp) = {
            let disk = &self.disks()[disk_no as usize];
            (disk.shard_path(shard), disk.tmp_path(shard))
        };
        if let Some(bucket) = dest.parent() {
            let _one = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            layout::create_dir_synced(bucket)?;
        }
        let writer = self.note(ShardWriter::create(header, tmp, dest))?;
        Ok((writer, disk_no))
    }

    /// Makes a finished write durable and visible; replaces an older copy of the same shard.
    pub fn commit(&self, writer: ShardWriter, disk: u32) -> Result<ShardInfo, StoreError> {
        let started = std::time::Instant::now();
        let header = self.note(writer.finish())?;
        self.timed(started, SLOW_COMMIT);
        let entry = Entry {
            disk,
            layout: header.layout,
            file_bytes: header.file_bytes(),
            stored_secs: unix_secs(std::time::SystemTime::now()),
            serial: self.next_serial(),
        };
        let old = self
            .index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(header.shard, entry);
        self.open.forget(header.shard);
        if let Some(old) = old.filter(|o| o.disk != disk) {
            let _ = std::fs::remove_file(self.shard_path(old.disk, header.shard));
        }
        Ok(info(header.shard, entry))
    }

    fn entry(&self, shard: ShardId) -> Result<Entry, StoreError> {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .copied()
            .ok_or(StoreError::NotFound(shard))
    }

    fn next_serial(&self) -> u64 {
        self.serials.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a shard afresh, reading and checking its header from disk (as scrub must).
    pub fn open_reader(&self, shard: ShardId) -> Result<ShardReader, StoreError> {
        let entry = self.entry(shard)?;
        let path = self.shard_path(entry.disk, shard);
        self.note(ShardReader::open(&path))
    }

    /// A reader of a shard, kept open for the next read. Its header was checked when it
    /// was opened; every read still verifies the bytes and checksums it reads from disk.
    pub fn reader(&self, shard: ShardId) -> Result<Arc<ShardReader>, StoreError> {
        let entry = self.entry(shard)?;
        if let Some(kept) = self.open.get(shard, entry.serial) {
            return Ok(kept);
        }
        let path = self.shard_path(entry.disk, shard);
        let reader = Arc::new(self.note(ShardReader::open(&path))?);
        // Kept only if the entry is still the one opened (not deleted or replaced meanwhile).
        if self
            .entry(shard)
            .is_ok_and(|now| now.serial == entry.serial)
        {
            self.open.keep(shard, entry.serial, reader.clone());
        }
        Ok(reader)
    }

    /// Reads a verified range through an open reader, counting failures.
    pub fn read(&self, reader: &ShardReader, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        if self.faults.read_error_rate > 0.0 && rand::random::<f64>() < self.faults.read_error_rate
        {
            let injected = std::io::Error::other("injected read error (--inject-read-errors)");
            return self.note(Err(shard_file::io_error(&reader.path, injected)));
        }
        let started = std::time::Instant::now();
        let r = self.note(reader.read(offset, len));
        self.timed(started, SLOW_READ);
        r
    }

    /// Counts an operation that took longer than `limit` as slow (a failing disk often
    /// slows down before it errs).
    fn timed(&self, started: std::time::Instant, limit: std::time::Duration) {
        if started.elapsed() > limit {
            self.health.slow_ops.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn delete(&self, shard: ShardId) -> Result<bool, StoreError> {
        let removed = self
            .index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard);
        self.open.forget(shard);
        let Some(entry) = removed else {
            return Ok(false);
        };
        let path = self.shard_path(entry.disk, shard);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => self.note(Err(shard_file::io_error(&path, e))),
        }
    }

    pub fn stat(&self, shard: ShardId) -> Result<ShardInfo, StoreError> {
        Ok(info(shard, self.entry(shard)?))
    }

    /// Up to `limit` shards after `after`, and whether more follow.
    pub fn list(&self, after: Option<ShardId>, limit: usize) -> (Vec<ShardInfo>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let lower = after.map_or(Unbounded, Excluded);
        let mut iter = index.range((lower, Unbounded));
        let page = iter
            .by_ref()
            .take(limit)
            .map(|(id, e)| info(*id, *e))
            .collect();
        (page, iter.next().is_some())
    }

    pub fn shard_count(&self) -> usize {
        self.index.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn disk_status(&self) -> Vec<DiskStatus> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let disks = self.disks();
        let mut status: Vec<DiskStatus> = disks
            .iter()
            .map(|d| {
                let (total, free) = d.space().unwrap_or_default();
                DiskStatus {
                    path: d.root.display().to_string(),
                    total_bytes: total,
                    free_bytes: free.saturating_sub(self.reserve),
                    ..Default::default()
                }
            })
            .collect();
        for e in index.values() {
            let d = &mut status[e.disk as usize];
            d.shards += 1;
            d.shard_bytes += e.file_bytes;
        }
        status
            .into_iter()
            .zip(disks.iter())
            .filter(|(_, d)| d.state != DiskState::Removed)
            .map(|(s, _)| s)
            .collect()
    }
}

fn info(shard: ShardId, e: Entry) -> ShardInfo {
    ShardInfo {
        shard,
        layout: e.layout,
        disk: e.disk,
        file_bytes: e.file_bytes,
        stored_secs: e.stored_secs,
    }
}

#[cfg(test)]
mod tests;
