//! Adding and removing data directories while the server runs. A removed directory is
//! emptied first: each of its shards is copied to another directory (verified by its
//! header and checksums as it is read), made durable, and only then dropped.

use super::shard_file::{self, ShardReader};
use super::{layout, Disk, DiskState, Store, StoreError};
use lattice_common::ids::ShardId;
use std::path::{Component, Path};
use tracing::{info, warn};

/// Longest data directory path accepted from an admin.
const MAX_PATH: usize = 4096;

/// What emptying a directory did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub shards: u64,
    pub bytes: u64,
}

fn check_path(path: &Path) -> Result<(), StoreError> {
    let ok = path.is_absolute()
        && path.as_os_str().len() <= MAX_PATH
        && path
            .components()
            .all(|c| !matches!(c, Component::ParentDir));
    match ok {
        true => Ok(()),
        false => Err(StoreError::Invalid(format!(
            "{}: a data directory must be an absolute path without '..'",
            path.display()
        ))),
    }
}

impl Store {
    fn position(&self, path: &Path, state: DiskState) -> Option<usize> {
        self.disks()
            .iter()
            .position(|d| d.root == path && d.state == state)
    }

    /// Starts storing shards in `path` too (making a new or empty directory a data
    /// directory); shards already there are indexed and served. Returns how many it holds.
    /// A directory that is not empty and not a data directory is refused untouched.
    pub fn add_disk(&self, path: &Path) -> Result<u64, StoreError> {
        check_path(path)?;
        // Held throughout, so two adds of one directory cannot both claim it.
        let mut disks = self.disks.write().unwrap_or_else(|p| p.into_inner());
        if disks
            .iter()
            .any(|d| d.root == path && d.state != DiskState::Removed)
        {
            return Err(StoreError::Invalid(format!(
                "{} is already a data directory",
                path.display()
            )));
        }
        let id = layout::claim(path)?;
        // Preparing would empty the live directory's tmp/ under its writes.
        if let Some(twin) = disks
            .iter()
            .find(|d| d.id == id && d.state != DiskState::Removed)
        {
            return Err(StoreError::Invalid(format!(
                "{} is already a data directory, as {}",
                path.display(),
                twin.root.display()
            )));
        }
        layout::prepare(path)?;
        let no = disks.len() as u32;
        self.scan(no, path)?;
        disks.push(Disk {
            root: path.to_path_buf(),
            id,
            state: DiskState::Active,
        });
        drop(disks);
        let shards = self.count_on(no);
        info!(disk = %path.display(), shards, "data directory added");
        Ok(shards)
    }

    fn count_on(&self, disk: u32) -> u64 {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        index.values().filter(|e| e.disk == disk).count() as u64
    }

    /// Moves every shard off `path` to the other directories, then stops using it. Fails
    /// (and keeps using it) if the others lack room.
    pub fn remove_disk(&self, path: &Path) -> Result<Moved, StoreError> {
        let no = self.position(path, DiskState::Active).ok_or_else(|| {
            StoreError::Invalid(format!("{} is not a data directory", path.display()))
        })?;
        let others = self
            .disks()
            .iter()
            .filter(|d| d.state == DiskState::Active)
            .count();
        if others < 2 {
            return Err(StoreError::Invalid(
                "the last data directory cannot be removed; drain the server instead".into(),
            ));
        }
        self.set_state(no, DiskState::Removing);
        match self.empty(no as u32) {
            Ok(moved) => {
                self.set_state(no, DiskState::Removed);
                info!(disk = %path.display(), shards = moved.shards, bytes = moved.bytes, "data directory removed");
                Ok(moved)
            }
            Err(e) => {
                self.set_state(no, DiskState::Active);
                warn!(disk = %path.display(), "removing the data directory failed, it stays in use: {e}");
                Err(e)
            }
        }
    }

    fn set_state(&self, no: usize, state: DiskState) {
        self.disks.write().unwrap_or_else(|p| p.into_inner())[no].state = state;
    }

    fn empty(&self, disk: u32) -> Result<Moved, StoreError> {
        let shards: Vec<ShardId> = {
            let index = self.index.read().unwrap_or_else(|p| p.into_inner());
            index
                .iter()
                .filter(|(_, e)| e.disk == disk)
                .map(|(id, _)| *id)
                .collect()
        };
        let mut moved = Moved::default();
        for shard in shards {
            moved.bytes += self.relocate(shard, disk)?;
            moved.shards += 1;
        }
        Ok(moved)
    }

    /// Copies one shard to another directory and points the index at the copy; returns its
    /// data bytes (0 if it went away meanwhile).
    fn relocate(&self, shard: ShardId, from: u32) -> Result<u64, StoreError> {
        let old = self.shard_path(from, shard);
        let reader = match self.note(ShardReader::open(&old)) {
            Ok(r) => r,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(0)
            }
            Err(e) => return Err(e),
        };
        let layout = reader.header.layout;
        let (mut writer, to) = self.create(shard, layout)?;
        let len = reader.header.shard_len();
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(crate::service::IO_PIECE as u64);
            writer.write(&self.read(&reader, pos, n)?)?;
            pos += n;
        }
        let header = self.note(writer.finish())?;
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        match index.get_mut(&shard) {
            Some(e) if e.disk == from => {
                e.disk = to;
                e.file_bytes = header.file_bytes();
                e.serial = self.next_serial();
            }
            // Deleted or rewritten elsewhere meanwhile: the copy is not needed.
            Some(e) if e.disk == to => return Ok(0),
            _ => {
                drop(index);
                let _ = std::fs::remove_file(self.shard_path(to, shard));
                return Ok(0);
            }
        }
        drop(index);
        self.open.forget(shard);
        if let Err(e) = std::fs::remove_file(&old) {
            warn!(path = %old.display(), "could not remove the old copy: {e}");
        }
        let _ = shard_file::sync_parent(&old);
        Ok(len)
    }
}
