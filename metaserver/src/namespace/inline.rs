//! Small files held inline: a file's first bytes kept in the namespace itself, replicated
//! by Raft with the rest of it, instead of as a slice on chunkservers. A 4 KiB file then
//! costs one Raft round to write instead of an allocation, six shard files and a commit,
//! and its reader gets the bytes with the slice-map answer. A file stays inline while
//! its writes end within [`INLINE_MAX`] and the cluster holds fewer than
//! [`MAX_INLINE_TOTAL`] inline bytes; a writer that needs more first moves the bytes to
//! a slice ([`Namespace::uninline`]), and the file carries on as slices.

use super::{Content, Namespace};
use lattice_common::chunk_map::SliceRef;
use lattice_common::fs::{Attr, Errno, Timestamp};
use lattice_common::ids::InodeId;
use lattice_common::wire::meta::INLINE_MAX;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Inline bytes the whole namespace may hold: every metaserver keeps them in memory and
/// in every snapshot.
pub const MAX_INLINE_TOTAL: u64 = 256 << 20;

/// A file's bytes `0..bytes.len()` (zeros past them up to its size).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineData {
    pub bytes: Vec<u8>,
}

impl Namespace {
    /// The inline bytes of `ino`, if its data is inline.
    pub fn inline_data(&self, ino: InodeId) -> Result<Option<&InlineData>, Errno> {
        Ok(match &self.get(ino)?.content {
            Content::Inline(d) => Some(d),
            _ => None,
        })
    }

    /// Writes each (offset, bytes), in order, into a file that is inline or has no slices
    /// yet (it becomes inline); EOPNOTSUPP when it cannot be inline.
    pub fn write_inline(
        &mut self,
        ino: InodeId,
        writes: &[(u64, Vec<u8>)],
        now: Timestamp,
    ) -> Result<Attr, Errno> {
        self.is_file(ino)?;
        if self.get(ino)?.nlink == 0 && !self.orphans.contains_key(&ino) {
            return Err(Errno::NOENT);
        }
        let end = writes
            .iter()
            .map(|(at, b)| at.checked_add(b.len() as u64).filter(|&e| e <= INLINE_MAX))
            .try_fold(0, |m, e| e.map(|e| m.max(e)))
            .ok_or(Errno::NOTSUP)?;
        if writes.is_empty() {
            return Err(Errno::INVAL);
        }
        let held = match &self.get(ino)?.content {
            Content::Inline(d) => d.bytes.len() as u64,
            Content::File(chunks) if chunks.is_empty() => 0,
            _ => return Err(Errno::NOTSUP),
        };
        let grows = end.saturating_sub(held);
        if self.inline_bytes.saturating_add(grows) > MAX_INLINE_TOTAL {
            return Err(Errno::NOTSUP);
        }
        self.inline_bytes += grows;
        let inode = self.get_mut(ino)?;
        // Inline already, or a file with no slices that becomes inline.
        let mut d = match std::mem::replace(&mut inode.content, Content::Special) {
            Content::Inline(d) => d,
            _ => InlineData { bytes: Vec::new() },
        };
        if (d.bytes.len() as u64) < end {
            d.bytes.resize(end as usize, 0);
        }
        for (at, b) in writes {
            d.bytes[*at as usize..*at as usize + b.len()].copy_from_slice(b);
        }
        inode.stored = d.bytes.len() as u64;
        inode.content = Content::Inline(d);
        inode.size = inode.size.max(end);
        inode.touch(now);
        self.attr(ino)
    }

    /// Moves the inline bytes of `ino`, if they are still `expect`, to the stored slice
    /// `slice`, which shows exactly them from the file's start (`None`: there are none).
    /// Size and times stay: the file's contents do not change. Compared by value, not by
    /// a version: bytes that changed and changed back are the same bytes, and a version
    /// would start over each time a file becomes inline again.
    pub fn uninline(
        &mut self,
        ino: InodeId,
        expect: &[u8],
        slice: Option<SliceRef>,
    ) -> Result<(), Errno> {
        let Some(d) = self.inline_data(ino)? else {
            return Err(Errno::STALE);
        };
        if d.bytes != expect {
            return Err(Errno::STALE);
        }
        let held = d.bytes.len() as u64;
        let fits = match &slice {
            None => held == 0,
            Some(s) => s.is_valid() && (s.chunk_offset, s.skip, s.len) == (0, 0, held),
        };
        if !fits {
            return Err(Errno::INVAL);
        }
        self.inline_bytes = self.inline_bytes.saturating_sub(held);
        let chunks: BTreeMap<u64, Vec<SliceRef>> =
            slice.map(|s| (0, vec![s])).into_iter().collect();
        self.get_mut(ino)?.content = Content::File(chunks);
        Ok(())
    }

    /// Truncation of an inline file: bytes at or past `size` go.
    pub(super) fn truncate_inline(&mut self, ino: InodeId, size: u64) -> Result<(), Errno> {
        let inode = self.get_mut(ino)?;
        let Content::Inline(d) = &mut inode.content else {
            return Err(Errno::INVAL);
        };
        let cut = (d.bytes.len() as u64).saturating_sub(size);
        d.bytes.truncate(d.bytes.len() - cut as usize);
        inode.stored = d.bytes.len() as u64;
        inode.size = size;
        self.inline_bytes = self.inline_bytes.saturating_sub(cut);
        Ok(())
    }

    /// A hole punched in an inline file: bytes `offset..end` become zeros.
    pub(super) fn punch_inline(
        &mut self,
        ino: InodeId,
        offset: u64,
        end: u64,
        now: Timestamp,
    ) -> Result<(), Errno> {
        let inode = self.get_mut(ino)?;
        let Content::Inline(d) = &mut inode.content else {
            return Err(Errno::INVAL);
        };
        let held = d.bytes.len() as u64;
        let (a, b) = (offset.min(held) as usize, end.min(held) as usize);
        d.bytes[a..b].fill(0);
        inode.touch(now);
        Ok(())
    }
}
