//! File data as slices: committing a written slice, truncating, and reading the slice map.

use super::{Content, Namespace};
use lattice_common::chunk_map::{self, SliceRef, CHUNK_SIZE};
use lattice_common::fs::{Attr, Errno, FileKind, Timestamp, MAX_FILE_SIZE};
use lattice_common::ids::{ChunkserverId, InodeId, SliceId};
use std::collections::BTreeMap;

/// Most slices one chunk may hold before compaction must catch up.
pub const MAX_SLICES_PER_CHUNK: usize = 16_384;
/// Most chunks one slice-map query may ask for.
pub const MAX_CHUNKS_PER_QUERY: u64 = 64;

impl Namespace {
    fn chunks(&self, ino: InodeId) -> Result<&BTreeMap<u64, Vec<SliceRef>>, Errno> {
        match &self.get(ino)?.content {
            Content::File(chunks) => Ok(chunks),
            Content::Dir(_) => Err(Errno::ISDIR),
            Content::Inline(_) => Err(Errno::MEDIUMTYPE),
            _ => Err(Errno::INVAL),
        }
    }

    fn chunks_mut(&mut self, ino: InodeId) -> Result<&mut BTreeMap<u64, Vec<SliceRef>>, Errno> {
        match &mut self.get_mut(ino)?.content {
            Content::File(chunks) => Ok(chunks),
            Content::Dir(_) => Err(Errno::ISDIR),
            Content::Inline(_) => Err(Errno::MEDIUMTYPE),
            _ => Err(Errno::INVAL),
        }
    }

    /// Sets a file's size; data past it is cut away. Returns slices nothing shows any more.
    pub(super) fn truncate(&mut self, ino: InodeId, size: u64) -> Result<Vec<SliceRef>, Errno> {
        if self.inline_data(ino)?.is_some() {
            return self.truncate_inline(ino, size).map(|()| Vec::new());
        }
        let chunks = self.chunks_mut(ino)?;
        let mut released = Vec::new();
        let mut gone_bytes = 0;
        // Chunks wholly past the new end go; the chunk the end falls in is cut.
        let first_gone = size.div_ceil(CHUNK_SIZE);
        for (_, slices) in chunks.split_off(&first_gone) {
            gone_bytes += chunk_map::data_bytes(&slices);
            released.extend(chunk_map::unreferenced(&[], slices));
        }
        if size % CHUNK_SIZE != 0 {
            let last = size / CHUNK_SIZE;
            if let Some(slices) = chunks.get_mut(&last) {
                let before = chunk_map::data_bytes(slices);
                let mut cut = chunk_map::truncate(slices, size % CHUNK_SIZE);
                // A cut can leave an older slice showing nothing any more.
                cut.extend(chunk_map::drop_hidden(slices));
                released.extend(chunk_map::unreferenced(slices, cut));
                gone_bytes += before - chunk_map::data_bytes(slices);
                if slices.is_empty() {
                    chunks.remove(&last);
                }
            }
        }
        let inode = self.get_mut(ino)?;
        inode.size = size;
        inode.stored = inode.stored.saturating_sub(gone_bytes);
        Ok(released)
    }

    /// Adds written slice references on top of chunk `chunk`, in order (each one above
    /// those before it); returns the new attributes and older slices they hide completely.
    /// All or nothing: one bad reference refuses them all.
    pub fn commit_slice(
        &mut self,
        ino: InodeId,
        chunk: u64,
        refs: Vec<SliceRef>,
        now: Timestamp,
    ) -> Result<(Attr, Vec<SliceRef>), Errno> {
        if refs.is_empty() || !refs.iter().all(SliceRef::is_valid) {
            return Err(Errno::INVAL);
        }
        let last_byte = refs.iter().map(SliceRef::chunk_end).max().unwrap_or(0);
        let end = chunk
            .checked_mul(CHUNK_SIZE)
            .and_then(|base| base.checked_add(last_byte))
            .filter(|&end| end <= MAX_FILE_SIZE)
            .ok_or(Errno::FBIG)?;
        if self.get(ino)?.nlink == 0 && !self.orphans.contains_key(&ino) {
            return Err(Errno::NOENT);
        }
        let chunks = self.chunks_mut(ino)?;
        let held = chunks.get(&chunk).map_or(0, Vec::len);
        if held.saturating_add(refs.len()) > MAX_SLICES_PER_CHUNK {
            return Err(Errno::NOSPC);
        }
        let slices = chunks.entry(chunk).or_default();
        let before = chunk_map::data_bytes(slices);
        let new = slices.len();
        slices.extend(refs);
        let hidden = chunk_map::drop_hidden_by(slices, new);
        let released = chunk_map::unreferenced(slices, hidden);
        let after = chunk_map::data_bytes(slices);
        let inode = self.get_mut(ino)?;
        inode.stored = inode.stored.saturating_sub(before) + after;
        inode.size = inode.size.max(end);
        inode.touch(now);
        Ok((self.attr(ino)?, released))
    }

    /// Compaction: replaces the run `old` of chunk `chunk` with `new` (see
    /// [`chunk_map::replace_run`]); returns the slices nothing shows any more.
    pub fn replace_slices(
        &mut self,
        ino: InodeId,
        chunk: u64,
        old: &[SliceRef],
        new: Vec<SliceRef>,
    ) -> Result<Vec<SliceRef>, Errno> {
        if self.get(ino)?.nlink == 0 && !self.orphans.contains_key(&ino) {
            return Err(Errno::NOENT);
        }
        let slices = self.chunks_mut(ino)?.get_mut(&chunk).ok_or(Errno::STALE)?;
        let before = chunk_map::data_bytes(slices);
        let mut replaced = chunk_map::replace_run(slices, old, new).ok_or(Errno::STALE)?;
        replaced.extend(chunk_map::drop_hidden(slices));
        let released = chunk_map::unreferenced(slices, replaced);
        let after = chunk_map::data_bytes(slices);
        let inode = self.get_mut(ino)?;
        inode.stored = inode.stored.saturating_sub(before) + after;
        Ok(released)
    }

    /// Punches a hole: bytes `offset..offset + len` (up to the size) read as zeros and no
    /// longer take space; the size stays. Returns the slices nothing shows any more.
    pub fn punch_hole(
        &mut self,
        ino: InodeId,
        offset: u64,
        len: u64,
        now: Timestamp,
    ) -> Result<(Attr, Vec<SliceRef>), Errno> {
        self.is_file(ino)?;
        let end = offset.saturating_add(len).min(self.get(ino)?.size);
        if end <= offset {
            return Ok((self.attr(ino)?, Vec::new()));
        }
        if self.inline_data(ino)?.is_some() {
            self.punch_inline(ino, offset, end, now)?;
            return Ok((self.attr(ino)?, Vec::new()));
        }
        let range = |chunk: u64| {
            let base = chunk * CHUNK_SIZE;
            (offset.max(base) - base, (end - base).min(CHUNK_SIZE))
        };
        let chunks = self.chunks_mut(ino)?;
        let touched = offset / CHUNK_SIZE..end.div_ceil(CHUNK_SIZE);
        // A slice spanning the hole becomes two references: refuse before changing anything
        // if a chunk would pass its limit.
        for (&chunk, slices) in chunks.range(touched.clone()) {
            let (a, b) = range(chunk);
            let spanning = slices
                .iter()
                .filter(|s| s.chunk_offset < a && b < s.chunk_end())
                .count();
            if slices.len() + spanning > MAX_SLICES_PER_CHUNK {
                return Err(Errno::NOSPC);
            }
        }
        let mut released = Vec::new();
        let mut gone_bytes = 0;
        let mut emptied = Vec::new();
        for (&chunk, slices) in chunks.range_mut(touched) {
            let (a, b) = range(chunk);
            let before = chunk_map::data_bytes(slices);
            let mut gone = chunk_map::punch(slices, a, b);
            // What an older slice showed may have been only the bytes punched out.
            gone.extend(chunk_map::drop_hidden(slices));
            released.extend(chunk_map::unreferenced(slices, gone));
            gone_bytes += before - chunk_map::data_bytes(slices);
            if slices.is_empty() {
                emptied.push(chunk);
            }
        }
        for chunk in emptied {
            chunks.remove(&chunk);
        }
        let inode = self.get_mut(ino)?;
        inode.stored = inode.stored.saturating_sub(gone_bytes);
        inode.touch(now);
        Ok((self.attr(ino)?, released))
    }

    /// `lseek` with `SEEK_DATA` (`data`) or `SEEK_HOLE` from `offset`: the first byte at or
    /// after it that some slice covers, or that none does (the end of the file counts as a
    /// hole). ENXIO at or past the end, or when only holes follow (`SEEK_DATA`).
    pub fn seek(&self, ino: InodeId, offset: u64, data: bool) -> Result<u64, Errno> {
        let size = self.get(ino)?.size;
        if offset >= size {
            return Err(Errno::NXIO);
        }
        if let Some(d) = self.inline_data(ino)? {
            // The inline bytes are data; zeros past them up to the size, a hole.
            let held = d.bytes.len() as u64;
            return match (data, offset < held) {
                (true, true) | (false, false) => Ok(offset),
                (true, false) => Err(Errno::NXIO),
                (false, true) => Ok(held),
            };
        }
        let chunks = self.chunks(ino)?;
        let mut at = offset;
        for (&chunk, slices) in chunks.range(offset / CHUNK_SIZE..) {
            let base = chunk * CHUNK_SIZE;
            if base >= size {
                break;
            }
            if !data && at < base {
                return Ok(at); // a chunk with no slices lies between
            }
            at = at.max(base);
            for (a, b) in chunk_map::data_runs(slices) {
                let (a, b) = (base + a, base + b);
                if b <= at {
                    continue;
                }
                match data {
                    true => return Some(a.max(at)).filter(|&p| p < size).ok_or(Errno::NXIO),
                    false if a > at => return Ok(at),
                    false => at = b,
                }
            }
            if !data && at < base + CHUNK_SIZE {
                return Ok(at.min(size));
            }
        }
        match data {
            true => Err(Errno::NXIO),
            false => Ok(at.min(size)),
        }
    }

    /// The slices of chunks `first..=last` that hold any data.
    pub fn slices(
        &self,
        ino: InodeId,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, Vec<SliceRef>)>, Errno> {
        if last < first || last - first >= MAX_CHUNKS_PER_QUERY {
            return Err(Errno::INVAL);
        }
        Ok(self
            .chunks(ino)?
            .range(first..=last)
            .map(|(&c, s)| (c, s.clone()))
            .collect())
    }

    /// Points shard `index` of `slice` (in chunk `chunk` of `ino`) at `to`, if it is still
    /// placed on `from`: ESTALE when the slice is gone or the shard has moved meanwhile.
    pub fn move_shard(
        &mut self,
        (ino, chunk, slice): (InodeId, u64, SliceId),
        index: usize,
        from: Option<ChunkserverId>,
        to: ChunkserverId,
    ) -> Result<(), Errno> {
        let chunks = self.chunks_mut(ino).map_err(|_| Errno::STALE)?;
        let slices = chunks.get_mut(&chunk).ok_or(Errno::STALE)?;
        let s = slices
            .iter()
            .find(|s| s.slice == slice)
            .ok_or(Errno::STALE)?;
        let others = s
            .placement
            .iter()
            .enumerate()
            .any(|(i, p)| i != index && *p == Some(to));
        match s.placement.get(index) {
            // Two shards of one slice on one server would make one failure cost two.
            Some(_) if others => Err(Errno::INVAL),
            Some(p) if *p == from => {
                // Every reference to the slice (a punched one has two) names its servers.
                for s in slices.iter_mut().filter(|s| s.slice == slice) {
                    if let Some(p) = s.placement.get_mut(index) {
                        *p = Some(to);
                    }
                }
                Ok(())
            }
            Some(_) => Err(Errno::STALE),
            None => Err(Errno::INVAL),
        }
    }

    /// Re-encoding a whole slice: every reference to `old`'s slice in chunk `chunk` shows
    /// the same bytes of `new`'s, if `old` is still there as it was (else ESTALE). Returns
    /// the old slice, which nothing shows any more.
    pub fn swap_slice(
        &mut self,
        ino: InodeId,
        chunk: u64,
        old: &SliceRef,
        new: &SliceRef,
    ) -> Result<Vec<SliceRef>, Errno> {
        let chunks = self.chunks_mut(ino).map_err(|_| Errno::STALE)?;
        let slices = chunks.get_mut(&chunk).ok_or(Errno::STALE)?;
        if !slices.iter().any(|s| s == old) {
            return Err(Errno::STALE);
        }
        for s in slices.iter_mut().filter(|s| s.slice == old.slice) {
            s.slice = new.slice;
            s.layout = new.layout;
            s.placement = new.placement.clone();
        }
        Ok(vec![old.clone()])
    }

    /// How many references chunk `chunk` of `ino` holds to `slice`.
    pub fn references(&self, ino: InodeId, chunk: u64, slice: SliceId) -> usize {
        let chunk = self.chunks(ino).ok().and_then(|c| c.get(&chunk));
        chunk.map_or(0, |slices| {
            slices.iter().filter(|s| s.slice == slice).count()
        })
    }

    /// Every stored slice of every file, once (for status and repair): of a slice a hole
    /// was punched through, its first reference.
    pub fn all_slices(&self) -> impl Iterator<Item = (InodeId, u64, &SliceRef)> {
        self.inodes
            .iter()
            .flat_map(|(&ino, inode)| match &inode.content {
                Content::File(chunks) => chunks
                    .iter()
                    .flat_map(move |(&c, slices)| {
                        let mut seen = std::collections::HashSet::new();
                        slices
                            .iter()
                            .filter(move |s| seen.insert(s.slice))
                            .map(move |s| (ino, c, s))
                    })
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            })
    }

    /// The slice after position `after` = (inode, chunk, index in the chunk's list), in
    /// that order (from the first when `None`), with its position; `None` past the last.
    /// Costs the inodes skipped, not a walk from the start.
    pub fn slice_after(
        &self,
        after: Option<(InodeId, u64, usize)>,
    ) -> Option<((InodeId, u64, usize), &SliceRef)> {
        let first = after.map_or(InodeId(0), |a| a.0);
        for (&ino, inode) in self.inodes.range(first..) {
            let Content::File(chunks) = &inode.content else {
                continue;
            };
            let same_file = after.filter(|a| a.0 == ino);
            for (&chunk, slices) in chunks.range(same_file.map_or(0, |a| a.1)..) {
                let from = match same_file {
                    Some((_, c, i)) if c == chunk => i + 1,
                    _ => 0,
                };
                // A slice several references show counts once, at its first.
                let first_of_its_slice =
                    |i: usize| slices[..i].iter().all(|p| p.slice != slices[i].slice);
                if let Some(i) = (from..slices.len()).find(|&i| first_of_its_slice(i)) {
                    return Some(((ino, chunk, i), &slices[i]));
                }
            }
        }
        None
    }

    /// Every slice of file `ino`, with its chunk.
    pub fn all_slices_of(
        &self,
        ino: InodeId,
    ) -> Result<impl Iterator<Item = (u64, &SliceRef)>, Errno> {
        Ok(self
            .chunks(ino)?
            .iter()
            .flat_map(|(&c, slices)| slices.iter().map(move |s| (c, s))))
    }

    pub fn is_file(&self, ino: InodeId) -> Result<(), Errno> {
        match self.get(ino)?.kind {
            FileKind::File => Ok(()),
            FileKind::Dir => Err(Errno::ISDIR),
            _ => Err(Errno::INVAL),
        }
    }
}
