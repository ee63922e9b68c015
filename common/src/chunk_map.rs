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

/// Cuts chunk bytes `start..end` out of every slice (a punched hole): a slice inside goes,
/// one reaching in from a side is shortened, and one spanning the range becomes two
/// references to the one stored slice, each showing its side, in its place in the list.
/// Returns the references that went (see [`unreferenced`] for the slices freed).
pub fn punch(slices: &mut Vec<SliceRef>, start: u64, end: u64) -> Vec<SliceRef> {
    let mut kept = Vec::with_capacity(slices.len() + 1);
    let mut gone = Vec::new();
    for s in slices.drain(..) {
        let (a, b) = (s.chunk_offset, s.chunk_end());
        if b <= start || end <= a {
            kept.push(s);
            continue;
        }
        if a < start {
            kept.push(SliceRef {
                len: start - a,
                ..s.clone()
            });
        }
        if end < b {
            kept.push(SliceRef {
                chunk_offset: end,
                skip: s.skip + (end - a),
                len: b - end,
                ..s.clone()
            });
        }
        if start <= a && b <= end {
            gone.push(s);
        }
    }
    *slices = kept;
    gone
}

/// Of references taken out of a chunk, the slices no reference left in it (`slices`)
/// still shows, once each: only these are free to collect. A punched slice has two
/// references, and one going frees nothing.
pub fn unreferenced(slices: &[SliceRef], gone: Vec<SliceRef>) -> Vec<SliceRef> {
    let mut seen: std::collections::BTreeSet<SliceId> = slices.iter().map(|s| s.slice).collect();
    gone.into_iter().filter(|s| seen.insert(s.slice)).collect()
}

/// The chunk ranges some slice covers (data; the rest are holes), merged and in order.
pub fn data_runs(slices: &[SliceRef]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = slices
        .iter()
        .map(|s| (s.chunk_offset, s.chunk_end()))
        .collect();
    spans.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match runs.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => runs.push((a, b)),
        }
    }
    runs
}

/// Bytes of the chunk some slice covers: what the chunk stores, holes excluded.
pub fn data_bytes(slices: &[SliceRef]) -> u64 {
    data_runs(slices).iter().map(|(a, b)| b - a).sum()
}

/// Removes the slices entirely hidden under newer ones and returns them (to be collected).
/// One resolution of the whole chunk: O(n log n).
pub fn drop_hidden(slices: &mut Vec<SliceRef>) -> Vec<SliceRef> {
    let mut hidden = vec![true; slices.len()];
    for seg in resolve(slices, 0, CHUNK_SIZE) {
        if let Some((i, _)) = seg.source {
            hidden[i] = false;
        }
    }
    remove_marked(slices, hidden)
}

/// [`drop_hidden`] after slices were added from index `new` on, to a list that hid
/// nothing before (every change of a chunk map drops what it hides, so every list does):
/// only a slice that an added one overlaps can have become hidden. Each of those is ruled
/// out by lengths alone when the newer slices over it are too short to cover it, so a
/// commit onto a chunk of many slices costs about one pass over them, not a resolution.
pub fn drop_hidden_by(slices: &mut Vec<SliceRef>, new: usize) -> Vec<SliceRef> {
    let hidden: Vec<bool> = (0..slices.len())
        .map(|i| {
            let (a, b) = (slices[i].chunk_offset, slices[i].chunk_end());
            let over = |s: &SliceRef| s.chunk_offset < b && s.chunk_end() > a;
            slices[(i + 1).max(new)..].iter().any(over) && covered(&slices[i + 1..], a, b)
        })
        .collect();
    remove_marked(slices, hidden)
}

/// Removes the slices marked in `hidden` (one mark per slice) and returns them, in order.
fn remove_marked(slices: &mut Vec<SliceRef>, hidden: Vec<bool>) -> Vec<SliceRef> {
    if !hidden.contains(&true) {
        return Vec::new();
    }
    let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(slices)
        .into_iter()
        .zip(hidden)
        .partition(|(_, hidden)| *hidden);
    *slices = kept.into_iter().map(|(s, _)| s).collect();
    gone.into_iter().map(|(s, _)| s).collect()
}

/// Whether `slices` together cover every byte of `a..b`.
fn covered(slices: &[SliceRef], a: u64, b: u64) -> bool {
    let clipped = slices.iter().filter_map(|s| {
        let (x, y) = (s.chunk_offset.max(a), s.chunk_end().min(b));
        (x < y).then_some((x, y))
    });
    // Each span is at most a chunk long and a chunk holds boundedly many: no overflow.
    if clipped.clone().map(|(x, y)| y - x).sum::<u64>() < b - a {
        return false;
    }
    let mut spans: Vec<(u64, u64)> = clipped.collect();
    spans.sort_unstable();
    let mut reach = a;
    for (x, y) in spans {
        if x > reach {
            return false;
        }
        reach = reach.max(y);
    }
    reach >= b
}

/// Slices in a chunk from which compaction is worth it.
pub const COMPACT_AT: usize = 32;
/// Holes up to this long between compacted pieces are written as zeros (only where
/// nothing older lies beneath), so a chunk of scattered small writes still compacts.
const FILL_GAPS_UP_TO: u64 = 64 << 10;

/// Slices of a chunk to rewrite as fewer ones: the newest slices from index `start` on,
/// and the chunk ranges to write, one new slice each. Their bytes are what those slices
/// show among themselves (holes as zeros); the new slices take the run's place in the list,
/// so slices committed meanwhile stay on top.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compaction {
    pub start: usize,
    pub pieces: Vec<(u64, u64)>,
}

/// Which slices to compact, if any. Size-tiered: from the newest slice back, older ones are
/// taken while each is no longer than all taken so far, so over a chunk's life each byte
/// is rewritten about log2(slices) times, not once per compaction. `None` when compaction
/// would not leave fewer slices.
pub fn plan_compaction(slices: &[SliceRef]) -> Option<Compaction> {
    if slices.len() < COMPACT_AT {
        return None;
    }
    let mut start = slices.len();
    let mut taken = 0u64;
    while start > 0 && (taken == 0 || slices[start - 1].len <= taken) {
        start -= 1;
        taken = taken.saturating_add(slices[start].len);
    }
    let plan = compaction_of(slices, start);
    (plan.pieces.len() * 2 <= slices.len() - start).then_some(plan)
}

/// The pieces to write when compacting `slices[start..]`: what the run covers, in
/// contiguous ranges.
pub fn compaction_of(slices: &[SliceRef], start: usize) -> Compaction {
    let run = slices.get(start..).unwrap_or_default();
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    for seg in resolve(run, 0, CHUNK_SIZE) {
        if seg.source.is_none() {
            continue;
        }
        match pieces.last_mut() {
            // Nothing older lies beneath a run that starts the list: gaps may become zeros.
            Some(last) if start == 0 && seg.start - last.1 <= FILL_GAPS_UP_TO => last.1 = seg.end,
            Some(last) if last.1 == seg.start => last.1 = seg.end,
            _ => pieces.push((seg.start, seg.end)),
        }
    }
    Compaction { start, pieces }
}

/// Whether two references show the same bytes of the same slice at the same place (a
/// shard moving to another server does not change that).
pub fn same_view(a: &SliceRef, b: &SliceRef) -> bool {
    (a.slice, a.chunk_offset, a.skip, a.len) == (b.slice, b.chunk_offset, b.skip, b.len)
}

/// Replaces the run `old` (consecutive in `slices`, exactly as given) with `new`, which
/// must lie within the bytes the run covered (or, for a run that starts the list, within
/// its span: nothing older lies beneath). Returns the replaced slices, `None` (nothing
/// changed) when the run is no longer there as it was or `new` would reach elsewhere.
pub fn replace_run(
    slices: &mut Vec<SliceRef>,
    old: &[SliceRef],
    new: Vec<SliceRef>,
) -> Option<Vec<SliceRef>> {
    let first = old.first()?;
    let at = slices.iter().position(|s| same_view(s, first))?;
    let run = slices.get(at..at.checked_add(old.len())?)?;
    if !run.iter().zip(old).all(|(a, b)| same_view(a, b)) {
        return None;
    }
    let covered: Vec<(u64, u64)> = if at == 0 {
        let lo = run.iter().map(|s| s.chunk_offset).min()?;
        let hi = run.iter().map(|s| s.chunk_end()).max()?;
        vec![(lo, hi)]
    } else {
        resolve(run, 0, CHUNK_SIZE)
            .into_iter()
            .filter(|seg| seg.source.is_some())
            .map(|seg| (seg.start, seg.end))
            .collect()
    };
    let inside = |a: u64, b: u64| {
        // `covered` is sorted and its touching intervals are adjacent segments.
        let mut need = a;
        for &(x, y) in &covered {
            if x <= need && need < y {
                need = y;
            }
        }
        need >= b
    };
    let mut sorted: Vec<&SliceRef> = new.iter().collect();
    sorted.sort_by_key(|s| s.chunk_offset);
    let disjoint = sorted
        .windows(2)
        .all(|w| w[0].chunk_end() <= w[1].chunk_offset);
    if new.is_empty() || !disjoint || !new.iter().all(|s| inside(s.chunk_offset, s.chunk_end())) {
        return None;
    }
    let replaced: Vec<SliceRef> = slices.splice(at..at + old.len(), new).collect();
    Some(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Dropping what added slices hide gives what a full resolution gives, commit after
        /// commit, from an empty chunk on.
        #[test]
        fn dropping_by_the_added_slices_matches_a_full_resolution(
            commits in proptest::collection::vec(
                proptest::collection::vec((0u64..300, 1u64..120), 1..4), 1..30)
        ) {
            let mut slices: Vec<SliceRef> = Vec::new();
            let mut id = 0;
            for refs in commits {
                let new = slices.len();
                for (at, len) in refs {
                    id += 1;
                    slices.push(slice(id, at, len));
                }
                let mut full = slices.clone();
                let want = drop_hidden(&mut full);
                let got = drop_hidden_by(&mut slices, new);
                prop_assert_eq!(got, want);
                prop_assert_eq!(&slices, &full);
            }
        }

        /// Data runs and byte counts match a per-byte model of which bytes a slice covers.
        #[test]
        fn data_runs_match_a_byte_model(spans in proptest::collection::vec((0u64..200, 1u64..50), 0..12)) {
            let slices: Vec<SliceRef> = spans.iter().enumerate().map(|(i, &(at, len))| slice(i as u64, at, len)).collect();
            let mut covered = [false; 250];
            for &(at, len) in &spans {
                covered[at as usize..(at + len) as usize].fill(true);
            }
            let runs = data_runs(&slices);
            prop_assert!(runs.windows(2).all(|w| w[0].1 < w[1].0), "runs not merged: {:?}", runs);
            let mut from_runs = [false; 250];
            for &(a, b) in &runs {
                from_runs[a as usize..b as usize].fill(true);
            }
            prop_assert_eq!(covered, from_runs);
            prop_assert_eq!(data_bytes(&slices), covered.iter().filter(|&&c| c).count() as u64);
        }
    }

    #[test]
    fn a_punch_splits_shortens_and_frees_only_what_nothing_shows() {
        let mut slices = vec![slice(1, 0, 100), slice(2, 40, 20), slice(3, 90, 30)];
        let gone = punch(&mut slices, 30, 95);
        assert_eq!(gone, vec![slice(2, 40, 20)]);
        let views: Vec<(u64, u64, u64, u64)> = slices
            .iter()
            .map(|s| (s.slice.0, s.chunk_offset, s.skip, s.len))
            .collect();
        assert_eq!(views, [(1, 0, 10, 30), (1, 95, 105, 5), (3, 95, 15, 25)]);
        assert_eq!(data_runs(&slices), [(0, 30), (95, 120)]);
        // One piece of slice 1 going frees nothing; both going free it once.
        let left = slices.remove(0);
        assert!(unreferenced(&slices, vec![left.clone()]).is_empty());
        let right = slices.remove(0);
        assert_eq!(unreferenced(&slices, vec![left, right]).len(), 1);
    }

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

    /// 20,000 appends of 1000 bytes, compacted whenever the plan says so: the chunk never
    /// holds many slices, its bytes never change, and each byte is rewritten only a few
    /// times (size-tiered), not once per compaction.
    #[test]
    fn appends_stay_compact_with_little_rewriting() {
        let mut slices: Vec<SliceRef> = Vec::new();
        let (mut next, mut rewritten, mut most) = (1u64, 0u64, 0usize);
        for n in 0..20_000u64 {
            slices.push(slice(next, n * 1000, 1000));
            next += 1;
            most = most.max(slices.len());
            let Some(plan) = plan_compaction(&slices) else {
                continue;
            };
            let new: Vec<SliceRef> = plan
                .pieces
                .iter()
                .map(|&(a, b)| {
                    let id = next;
                    next += 1;
                    rewritten += b - a;
                    SliceRef {
                        skip: 0,
                        ..slice(id, a, b - a)
                    }
                })
                .collect();
            let old = slices[plan.start..].to_vec();
            replace_run(&mut slices, &old, new).expect("the run is there");
        }
        let segs = resolve(&slices, 0, 20_000_000);
        assert!(segs.iter().all(|s| s.source.is_some()), "a hole appeared");
        assert_eq!(segs.last().map(|s| s.end), Some(20_000_000));
        assert!(most <= 2 * COMPACT_AT, "{most} slices at once");
        eprintln!("at most {most} slices, {rewritten} bytes rewritten for 20 MB");
        assert!(
            rewritten <= 20 * 20_000_000,
            "{rewritten} bytes rewritten for 20 MB"
        );
    }

    #[test]
    fn a_run_is_replaced_only_as_it_was_and_within_what_it_covered() {
        let mut slices = vec![slice(1, 0, 100), slice(2, 10, 5), slice(3, 20, 5)];
        let new = |id, at, len| SliceRef {
            skip: 0,
            ..slice(id, at, len)
        };
        let old = slices[1..].to_vec();
        // Bytes 15..20 lie between the run's slices, over slice 1: not to be covered.
        assert_eq!(replace_run(&mut slices, &old, vec![new(9, 10, 15)]), None);
        let mut moved = old.clone();
        moved[0].len = 4;
        assert_eq!(replace_run(&mut slices, &moved, vec![new(9, 10, 4)]), None);
        let replaced = replace_run(&mut slices, &old, vec![new(8, 10, 5), new(9, 20, 5)]);
        assert_eq!(replaced, Some(old));
        assert_eq!(slices.len(), 3);
        // A run that starts the list may fill its gaps (nothing older lies beneath).
        let all = slices.clone();
        assert!(replace_run(&mut slices, &all, vec![new(10, 0, 100)]).is_some());
        assert_eq!(slices, vec![new(10, 0, 100)]);
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
