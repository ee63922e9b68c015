//! What makes a directory a data directory, and its layout on disk.
//!
//! A data directory holds a marker file, [`MARKER`], naming the format and a random store id,
//! written durably when the directory is first used. A store deletes files (temporary files
//! at start, shards the metadata no longer names, shards moved to another disk), so a
//! directory that is neither empty nor marked (a home directory, another disk's mount) is
//! refused untouched. A directory from before markers existed, holding only `shards/` and
//! `tmp/`, is recognised and marked. `lost+found` (of a freshly made filesystem) is ignored.

use super::shard_file::{io_error, sync_parent};
use super::{parse_name, StoreError};
use lattice_common::ids::ShardId;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use tracing::{info, warn};

/// The file that marks a directory as a chunkserver data directory.
pub const MARKER: &str = "LATTICEFS";
/// The marker while it is written (renamed into place once durable).
const MARKER_NEW: &str = "LATTICEFS.new";
const TITLE: &str = "LatticeFS chunkserver data directory";
/// The layout version this code reads and writes.
const FORMAT: u32 = 1;
/// A marker longer than this is not ours.
const MARKER_MAX: u64 = 4096;

/// Every new ext2/3/4 filesystem holds one: a freshly made disk counts as empty.
const LOST_FOUND: &str = "lost+found";

pub const SHARDS: &str = "shards";
pub const TMP: &str = "tmp";

/// What a directory turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// A marked data directory, with its store id.
    Marked(u64),
    /// Missing or empty: becomes a data directory.
    Fresh,
    /// A data directory from before markers (only `shards/` and `tmp/`).
    Unmarked,
}

/// Looks at `root` without changing anything; refuses a directory that is not (and cannot
/// become) a data directory.
pub fn inspect(root: &Path) -> Result<Found, StoreError> {
    let marker = root.join(MARKER);
    match std::fs::File::open(&marker) {
        Ok(f) => {
            let mut bytes = Vec::new();
            f.take(MARKER_MAX + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| io_error(&marker, e))?;
            return parse_marker(&bytes)
                .map(Found::Marked)
                .map_err(|why| StoreError::Invalid(format!("{}: {why}", marker.display())));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&marker, e)),
    }
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Found::Fresh),
        Err(e) => return Err(io_error(root, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(root, e))?;
        let name = entry.file_name();
        // Left by a crash while the marker was written, or by mkfs (a disk of its own).
        if name != MARKER_NEW && name != LOST_FOUND {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            names.push((name.to_string_lossy().into_owned(), is_dir));
        }
    }
    let ours = |(name, is_dir): &(String, bool)| *is_dir && (name == SHARDS || name == TMP);
    match names.is_empty() {
        true => Ok(Found::Fresh),
        false if names.iter().all(ours) && names.iter().any(|(n, _)| n == SHARDS) => {
            Ok(Found::Unmarked)
        }
        false => Err(StoreError::Invalid(format!(
            "{} is not empty and has no {MARKER} file: it is not a LatticeFS data directory, \
             so it is not used and nothing in it is touched (give an empty or new directory)",
            root.display()
        ))),
    }
}

/// Makes `root` a data directory if it may be one (see [`inspect`]) and returns its store id.
pub fn claim(root: &Path) -> Result<u64, StoreError> {
    let found = inspect(root)?;
    if let Found::Marked(id) = found {
        return Ok(id);
    }
    if found == Found::Unmarked {
        info!(disk = %root.display(), "a data directory from before markers: marking it");
    }
    create_dir_synced(root)?;
    let id = rand::random::<u64>();
    let new = root.join(MARKER_NEW);
    let text = format!("{TITLE}\nformat {FORMAT}\nid {id:016x}\n");
    let io = |e| io_error(&new, e);
    // A leftover (or a planted symlink) is replaced, never written through.
    match std::fs::remove_file(&new) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&new)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    let marker = root.join(MARKER);
    std::fs::rename(&new, &marker).map_err(io)?;
    sync_parent(&marker)?;
    Ok(id)
}

fn parse_marker(bytes: &[u8]) -> Result<u64, String> {
    let not_ours = || format!("not a {TITLE} marker");
    if bytes.len() as u64 > MARKER_MAX {
        return Err(not_ours());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| not_ours())?;
    let mut lines = text.lines();
    if lines.next() != Some(TITLE) {
        return Err(not_ours());
    }
    let (mut format, mut id) = (None, None);
    for line in lines {
        match line.split_once(' ') {
            Some(("format", v)) => format = v.parse::<u32>().ok(),
            Some(("id", v)) if v.len() == 16 => id = u64::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    match (format, id) {
        (Some(FORMAT), Some(id)) => Ok(id),
        (Some(f), Some(_)) => Err(format!(
            "layout format {f}, but this chunkserver knows only format {FORMAT}"
        )),
        _ => Err(format!("damaged {TITLE} marker (format or id missing)")),
    }
}

/// Creates the layout of a claimed data directory and empties `tmp/` of the temporary files
/// a previous run left (only those: anything else there is left alone).
pub fn prepare(root: &Path) -> Result<(), StoreError> {
    create_dir_synced(&root.join(SHARDS))?;
    let tmp = root.join(TMP);
    create_dir_synced(&tmp)?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| io_error(&tmp, e))? {
        let entry = entry.map_err(|e| io_error(&tmp, e))?;
        let path = entry.path();
        let file = entry.file_type().is_ok_and(|t| t.is_file());
        match file && entry.file_name().to_str().is_some_and(is_temp_name) {
            true => {
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(path = %path.display(), "cannot remove an unfinished write: {e}");
                }
            }
            false => {
                warn!(path = %path.display(), "leaving alone something that is not an unfinished write")
            }
        }
    }
    Ok(())
}

/// The name of a temporary file for a write of `shard` (unique within the process by `n`).
pub fn temp_name(shard: ShardId, n: u64) -> String {
    format!("{}.{}.{}.{n}", shard.slice, shard.index, std::process::id())
}

fn is_temp_name(name: &str) -> bool {
    let mut parts = name.rsplitn(3, '.');
    let (Some(n), Some(pid), Some(shard)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    n.parse::<u64>().is_ok() && pid.parse::<u32>().is_ok() && parse_name(shard).is_some()
}

/// Creates directory `dir` (and missing parents) so that it survives a crash: each new
/// directory's entry is fsynced in its parent. A file's own rename and directory fsync do
/// not make the directory holding it durable.
pub fn create_dir_synced(dir: &Path) -> Result<(), StoreError> {
    let made = match std::fs::create_dir(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_dir_synced(parent)?;
            }
            std::fs::create_dir(dir)
        }
        other => other,
    };
    match made {
        Ok(()) => sync_parent(dir),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_error(dir, e)),
    }
}
