//! A file's bytes as slices: each chunk of file offset holds an ordered list of immutable
//! slices (oldest first); a newer slice covers older ones where they overlap, and bytes no
//! slice covers read as zeros.

use crate::ids::{ChunkserverId, SliceId};
use crate::layout::{SliceLayout, MAX_SLICE_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes of file offset per chunk; no slice crosses a chunk boundary.
pub const CHUNK_SIZE: u64 = MAX_SLICE_BYTES;

/// One slice as its file sees it: `len` bytes of the slice's data, from `skip`, showing at
/// `chunk_offset` in the chunk. Truncation shortens `len`; the stored slice never changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceRef {
    pub slice: SliceId,
    pub layout: SliceLayout,
    /// The server of each shard, by shard index; `None` while a lost shard awaits repair.
    pub placement: Vec<Option<ChunkserverId>>,
    pub chunk_offset: u64,
    pub skip: u64,
    pub len: u64,
}

impl SliceRef {
    /// Whether the reference is internally consistent (checked on everything from the wire).
    pub fn is_valid(&self) -> bool {
        self.len > 0
            && self.layout.check().is_ok()
            && self
                .skip
                .checked_add(self.len)
                .is_some_and(|e| e <= self.layout.data_len)
            && self
                .chunk_offset
                .checked_add(self.len)
                .is_some_and(|e| e <= CHUNK_SIZE)
            && self.placement.len() == self.layout.policy.total_shards()
    }

    pub fn chunk_end(&self) -> u64 {
        self.chunk_offset + self.len
    }
}

/// A run of chunk bytes and where to read them: `Some((i, offset))` is slice `i` of the list
/// from its data offset `offset`; `None` is a hole (zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub source: Option<(usize, u64)>,
}

/// The visible pieces of chunk bytes `start..end`, in order, newest slice on top.
/// Each slice claims the still-uncovered intervals it overlaps; uncovered intervals are
/// kept in a map by start, so a slice touches only what it overlaps: O(n log n) in all.
pub fn resolve(slices: &[SliceRef], start: u64, end: u64) -> Vec<Segment> {
    let mut open: BTreeMap<u64, u64> = BTreeMap::new();
    if start < end {
        open.insert(start, end);
    }
    let mut out = Vec::new();
    for (i, s) in slices.iter().enumerate().rev() {
        if open.is_empty() {
            break;
        }
        let (a, b) = (s.chunk_offset, s.chunk_end());
        // The open interval starting at or before `a` may reach into the slice.
        let first = open.range(..=a).next_back().map_or(a, |(&x, _)| x);
        let overlapping: Vec<(u64, u64)> = open
            .range(first..b)
            .map(|(&x, &y)| (x, y))
            .filter(|&(_, y)| y > a)
            .collect();
        for (x, y) in overlapping {
            open.remove(&x);
            let (lo, hi) = (x.max(a), y.min(b));
            out.push(Segment {
                start: lo,
                end: hi,
                source: Some((i, s.skip + (lo - a))),
            });
            if x < lo {
                open.insert(x, lo);
            }
            if hi < y {
                open.insert(hi, y);
            }
        }
    }
    out.extend(open.into_iter().map(|(start, end)| Segment {
        start,
        end,
        source: None,
    }));
    out.sort_unstable_by_key(|s| s.start);
    out
}

/// Cuts every slice's visible bytes at chunk offset `keep`; returns the slices nothing of
/// which remains visible.
pub fn truncate(slices: &mut Vec<SliceRef>, keep: u64) -> Vec<SliceRef> {
    let mut gone = Vec::new();
    slices.retain_mut(|s| {
        if s.chunk_offset >= keep {
            gone.push(s.clone());
            return false;
        }
        s.len = s.len.min(keep - s.chunk_offset);
        true
    });
    gone
}

/// Removes the slices entirely hidden under newer ones and returns them (to be collected).
/// One resolution of the whole chunk: O(n log n).
pub fn drop_hidden(slices: &mut Vec<SliceRef>) -> Vec<SliceRef> {
    let mut seen = vec![false; slices.len()];
    for seg in resolve(slices, 0, CHUNK_SIZE) {
        if let Some((i, _)) = seg.source {
            seen[i] = true;
        }
    }
    let (kept, hidden): (Vec<_>, Vec<_>) = std::mem::take(slices)
        .into_iter()
        .zip(seen)
        .partition(|(_, seen)| *seen);
    *slices = kept.into_iter().map(|(s, _)| s).collect();
    hidden.into_iter().map(|(s, _)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slice(id: u64, at: u64, len: u64) -> SliceRef {
        SliceRef {
            slice: SliceId(id),
            layout: SliceLayout::new("mirror:1".parse().unwrap(), len + 10, 4096).unwrap(),
            placement: vec![Some(ChunkserverId(1))],
            chunk_offset: at,
            skip: 10,
            len,
        }
    }

    #[test]
    fn newer_slices_cover_older_ones() {
        let slices = vec![slice(1, 0, 100), slice(2, 50, 10)];
        let segs = resolve(&slices, 0, 120);
        let src: Vec<_> = segs.iter().map(|s| (s.start, s.end, s.source)).collect();
        assert_eq!(
            src,
            vec![
                (0, 50, Some((0, 10))),
                (50, 60, Some((1, 10))),
                (60, 100, Some((0, 70))),
                (100, 120, None)
            ]
        );
        let mut two = vec![slice(1, 5, 5), slice(2, 0, 20)];
        assert_eq!(drop_hidden(&mut two), vec![slice(1, 5, 5)]);
        assert_eq!(two, vec![slice(2, 0, 20)]);
    }

    #[test]
    fn truncation_trims_and_drops() {
        let mut slices = vec![slice(1, 0, 100), slice(2, 200, 10)];
        let gone = truncate(&mut slices, 40);
        assert_eq!(gone.len(), 1);
        assert_eq!(slices[0].len, 40);
    }

    proptest! {
        /// Resolution agrees with painting the slices onto a byte map in commit order.
        #[test]
        fn resolve_matches_painting(spans in proptest::collection::vec((0u64..300, 1u64..100), 0..12),
                                    a in 0u64..400, b in 0u64..400) {
            let slices: Vec<SliceRef> = spans.iter().enumerate()
                .map(|(i, &(at, len))| slice(i as u64, at, len)).collect();
            let mut paint: Vec<Option<(usize, u64)>> = vec![None; 400];
            for (i, s) in slices.iter().enumerate() {
                for x in s.chunk_offset..s.chunk_end() {
                    paint[x as usize] = Some((i, s.skip + x - s.chunk_offset));
                }
            }
            let (start, end) = (a.min(b), a.max(b));
            let segs = resolve(&slices, start, end);
            let mut x = start;
            for seg in &segs {
                prop_assert_eq!(seg.start, x);
                for y in seg.start..seg.end {
                    let want = paint[y as usize];
                    let got = seg.source.map(|(i, off)| (i, off + y - seg.start));
                    prop_assert_eq!(got, want);
                }
                x = seg.end;
            }
            prop_assert_eq!(x, end);
        }
    }
}
